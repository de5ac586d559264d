"""The "swept:" line a sweep prints says what its level moved on that device: the ``snr``
presets have no static noise (static SNR ∞), so a physical-mode sweep of them moves the
dynamic noise only, while rram and photonic have both parts (the line used to tell every
device that static noise shrinks above native)."""

from __future__ import annotations

import math

import pytest

from noisydeq.results import read_csv
from noisydeq.summary import MODE_TEXT, no_static_noise, swept_description
from tests.cli_helpers import run_cli


@pytest.mark.parametrize("device,has_static", [("snr", False), ("rram", True),
                                               ("photonic", True)])
def test_the_swept_line_matches_the_static_noise_the_device_measured(
        device, has_static, tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, err = run_cli(
        ["sweep", "--device", device, "--snr", "0,10,inf", "--depths", "1", "--chips", "1",
         "--epochs", "1", "--kinds", "deq", "--threads", "1", "--out", str(out)], capsys)
    assert code == 0, err
    rows = read_csv(out / "results.csv")
    finite = [r for r in rows if math.isfinite(r["snr_db"])]
    # the rows themselves: static SNR ∞ everywhere on snr, finite at every finite level else
    assert all((r["static_snr_db"] == math.inf) != has_static for r in finite), finite
    (line,) = [ln for ln in (stdout + err).splitlines() if ln.startswith("swept:")]
    assert line == swept_description(rows)
    assert ("static and dynamic noise shrink together" in line) == has_static, line
    assert ("no static noise (static SNR ∞)" in line) != has_static, line
    assert line.startswith(f"swept: device {device}, noise mode physical: total SNR")


def test_no_static_noise_needs_a_finite_level_that_measured_none():
    rows = [{"snr_db": 0.0, "static_snr_db": math.inf}, {"snr_db": math.inf,
                                                          "static_snr_db": math.inf}]
    assert no_static_noise(rows)
    assert not no_static_noise([{**rows[0], "static_snr_db": 30.0}, rows[1]])
    assert not no_static_noise(rows[1:])  # only the noiseless level: nothing says
    assert not no_static_noise([{"snr_db": 0.0}])  # no column: nothing says
    dev = {"noise_site": "device", "device": "x"}
    for mode in ("dynamic", "both"):
        line = swept_description([{**r, **dev, "noise_mode": mode} for r in rows])
        assert "no static noise" in line and MODE_TEXT[mode] not in line
    # static mode adds a static part to any device: its text stays
    assert swept_description([{**r, **dev, "noise_mode": "static"} for r in rows]).endswith(
        MODE_TEXT["static"])
