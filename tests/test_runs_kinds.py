"""``noisydeq runs`` says what each run directory is: an attack run was listed as a sweep
(a digital one on device ``ideal``, noise site ``device``: neither was asked for) and a
LyaDEQ experiment's device sweeps as free-standing sweeps."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent / "analysis"))
from analysis_family import make_family  # noqa: E402

import noisydeq  # noqa: E402
from noisydeq import store  # noqa: E402
from noisydeq.analysis.lyapunov_experiment import load_experiment  # noqa: E402
from noisydeq.cli import cli as main  # noqa: E402
from noisydeq.specs.toml import dumps_toml  # noqa: E402
from tests.cli_helpers import run_cli  # noqa: E402

ATTACK = ["--attacks", "pgd-eps", "--eps", "0,0.3", "--pgd-steps", "2", "--samples", "4",
          "--val-samples", "0", "--quiet"]


def test_runs_name_attacks_and_lyapunov_sweeps(tmp_path, capsys):
    family = make_family(tmp_path / "family", depths=(1,))
    root = tmp_path / "runs"
    for name, extra in (("digital", []), ("noisy", ["--noise-site", "signal", "--snr", "0"])):
        code, _, err = run_cli(["attack", "--family", str(family), *ATTACK, *extra, "--out",
                                str(root / name)], capsys)
        assert code == 0, err
    # a LyaDEQ experiment's device sweep: <experiment>/device/<device>-<group>, the
    # experiment's config (signed, as ExperimentDir writes it) naming its device table
    code, _, err = run_cli(["sweep", "--device", "snr", "--snr", "0", "--depths", "1",
                            "--chips", "1", "--epochs", "1", "--kinds", "deq", "--quiet",
                            "--out", str(root / "plain")], capsys)
    assert code == 0, err
    exp = root / "lya"
    shutil.copytree(root / "plain", exp / "device" / "snr-lyadeq")
    spec = load_experiment(Path(noisydeq.__file__).parent / "experiments"
                           / "lyapunov-device.toml")
    store.atomic_write_text(exp / "config.toml", store.sign_text(dumps_toml(spec)))
    res = CliRunner().invoke(main, ["runs", str(root), "--json"])
    assert res.exit_code == 0, res.output
    by = {Path(i["run"]).name: i for i in json.loads(res.output)}
    assert sorted(by) == ["digital", "noisy", "plain", "snr-lyadeq"]
    assert by["digital"]["kind"] == by["noisy"]["kind"] == "attack"
    assert by["digital"]["device"] is None and by["digital"]["noise_site"] is None
    assert (by["noisy"]["device"], by["noisy"]["noise_site"]) == ("ideal", "signal")
    assert by["plain"]["kind"] == "sweep" and "experiment" not in by["plain"]
    assert by["snr-lyadeq"]["kind"] == "lyapunov sweep"
    assert by["snr-lyadeq"]["experiment"] == str(exp)
    assert all(i["status"] == "finished" for i in by.values()), by
    table = CliRunner().invoke(main, ["runs", str(root)]).output.splitlines()
    head = table[0].split()
    assert head[:3] == ["run", "kind", "status"]
    digital = next(ln for ln in table if ln.startswith(str(root / "digital")))
    cells = digital.split()
    assert cells[1] == "attack" and cells[head.index("device")] == "-"
    assert cells[head.index("noise_site")] == "-"
    assert f"{exp / 'device' / 'snr-lyadeq'}: lyapunov sweep of the experiment in {exp}" \
        in table
