"""``sensitivity``, ``spectrum`` and ``solvers`` on a sweep run dir use that run's device,
noise mode and chips (the models as programmed on each chip), say so, and ``--device ideal``
gives the digital analysis back."""

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from analysis_family import make_family, rows, run, tiny_sweep  # noqa: E402

from noisydeq.analysis import probe  # noqa: E402
from noisydeq.analysis.family import load_family  # noqa: E402
from noisydeq.analysis.on_device import chip_model, resolve  # noqa: E402
from tests.cli_helpers import one_line_error  # noqa: E402


@pytest.fixture(scope="module")
def device_run(tmp_path_factory):
    """A tiny photonic sweep (digits, depths 1,3, device noise at 10 dB and ∞, two chips)."""
    with tiny_sweep(tmp_path_factory.mktemp("devsweep"), "--depths", "1,3", "--snr",
                    "10,inf", "--chips", "2", "--device", "photonic") as run_dir:
        yield run_dir


@pytest.mark.slow
def test_spectrum_runs_on_the_runs_chips_and_ideal_is_the_digital_model(device_run, capsys,
                                                                           tmp_path):
    code, out, err = run(["spectrum", "--family", str(device_run), "--inputs", "2"], capsys)
    assert code == 0, err
    assert "device: photonic, noise mode physical, chips 0-1, native" in err
    table = rows(device_run / "analysis" / "spectrum" / "spectrum.csv")
    assert {(r["device"], r["noise_mode"], r["chip"]) for r in table} == {
        ("photonic", "physical", "0"), ("photonic", "physical", "1")}
    code, out, err = run(["spectrum", "--family", str(device_run), "--inputs", "2",
                          "--device", "ideal", "--out", str(tmp_path / "ideal")], capsys)
    assert code == 0, err
    assert "device: none (digital weights)" in err
    ideal = rows(tmp_path / "ideal" / "spectrum.csv")
    assert {r["device"] for r in ideal} == {"ideal"}
    # independent: ρ(W) of the loaded digital DEQs, by torch's eigensolver
    members = {(m.kind, m.depth): m for m in load_family(device_run)}
    for r in ideal:
        if r["kind"] == "deq":
            w = probe.deq_weight(members[("deq", int(r["depth"]))].model).double()
            assert float(r["rho"]) == pytest.approx(
                float(torch.linalg.eigvals(w).abs().max()), rel=1e-6)
    # each chip's programmed weights move ρ, by a few per cent (the device's static error),
    # and the two chips differ
    rho = {(r["kind"], r["depth"], r["chip"]): float(r["rho"]) for r in table}
    for r in ideal:
        k, d = r["kind"], r["depth"]
        for chip in ("0", "1"):
            assert rho[(k, d, chip)] != float(r["rho"])
            assert rho[(k, d, chip)] == pytest.approx(float(r["rho"]), rel=0.1)
    assert rho[("deq", "1", "0")] != rho[("deq", "1", "1")]


@pytest.mark.slow
def test_chip_models_are_the_sweeps_chips(device_run):
    """The chip view's weights are W_chip of the sweep's deployment (same seed, chip), seeded:
    the same chip twice is the same model, another chip another one."""
    from noisydeq import hardware
    from noisydeq.noise import derive_seed

    on = resolve(device_run, None, None, None)
    assert on is not None and on.chips == (0, 1) and on.snr_db is None
    m = next(m for m in load_family(device_run) if m.kind == "deq" and m.depth == 3)
    a, b, c = (chip_model(m.model, on, m.seed, k) for k in (1, 1, 0))
    assert torch.equal(a.cell.W.weight, b.cell.W.weight)
    assert not torch.equal(a.cell.W.weight, c.cell.W.weight)
    assert not torch.equal(a.cell.W.weight, m.model.cell.W.weight)
    # the sweep's chip 1 (Hardware.chip seeds the chip as derive_seed(seed, "chip", 1)) run
    # without dynamic noise computes W_chip x: the chip view's layer gives the same MVM
    dev = hardware.get_device("photonic", noise_mode="physical")
    layer = hardware.device_layers(dev.new_chip(derive_seed(m.seed, "chip", 1)).deploy(
        m.model))["cell.W"]
    x = torch.randn(5, layer.weight.shape[1], generator=torch.Generator().manual_seed(0))
    static = layer.native_knobs()[0]
    assert torch.allclose(layer.chip_output(x.double(), (static, 0.0)).float(),
                          x @ a.cell.W.weight.T, atol=1e-5)
    # calibrated to the run's 10 dB: still that chip, the static knob the calibration found
    on10 = resolve(device_run, None, 1, 10.0)
    assert on10.chips == (0,) and "calibrated to 10 dB" in on10.describe()


def test_bad_device_options_are_one_line(tmp_path, capsys):
    fam = make_family(tmp_path / "fam", depths=(1,))
    code, _out, err = run(["spectrum", "--family", str(fam), "--chips", "2"], capsys)
    one_line_error(code, err, "--chips/--device-snr", "--device")
    code, _out, err = run(["spectrum", "--family", str(fam), "--device", "photonic",
                           "--device-snr", "inf"], capsys)
    one_line_error(code, err, "--device-snr", "finite")
    code, _out, err = run(["solvers", "--device", "photonic"], capsys)
    one_line_error(code, err, "--family")
    # a family without a run: digital unless a device is named; named, it is used
    code, _out, err = run(["spectrum", "--family", str(fam), "--inputs", "0", "--device",
                           "photonic", "--chips", "1", "--out", str(tmp_path / "o")], capsys)
    assert code == 0, err
    assert "device: photonic, noise mode physical, chip 0, native" in err
    assert {r["chip"] for r in rows(tmp_path / "o" / "spectrum.csv")} == {"0"}
    assert not math.isnan(float(rows(tmp_path / "o" / "spectrum.csv")[0]["rho"]))
