"""Calibration inside the noisy network, on the default digits family's DEQ (width 287) and
FFW (depth 5): every layer's in-network SNR is within 0.5 dB of its target; the clean
calibration is not (so the test can fail)."""

from __future__ import annotations

import math

import pytest
import torch

from noisydeq import hardware as hw
from noisydeq.config import FamilySpec
from noisydeq.families import train_family
from noisydeq.hardware.in_network import calibrate_in_network, measure_in_network
from noisydeq.hardware.modes import TARGET_PART
from noisydeq.hardware.parts import Parts
from noisydeq.tasks import load_task

LEVELS = [0.0, 10.0, 20.0, 30.0]


@pytest.fixture(scope="module")
def family():
    """The default family's depth-5 pair (quick preset), from the session's model cache."""
    task = load_task("digits", seed=0)
    fam = train_family(FamilySpec(depths=[5]), task)
    return task, {m.kind: m.model for m in fam.members}


def _deviations(
    model, task, device, *, rounds: int | None = None, levels: list[float] = LEVELS,
    report: list | None = None,
) -> dict[tuple[float, str], float]:
    """Measured minus nominal SNR of the mode's part, per (level, layer), inside the network:
    averaged over four fresh noise draws on the calibration inputs (independent of the
    calibration's own draws)."""
    dep = device.deploy(model).eval()
    x = task.x_train[:512]
    kw = {} if rounds is None else {"rounds": rounds}  # default: the sweeps' rounds
    rep = calibrate_in_network(dep, x, levels, seed=device.chip_seed, **kw)
    if report is not None:
        report.append(rep)
    sums: dict[tuple[float, str], Parts] = {}
    for seed in (101, 102, 103, 104):
        for level, layers in measure_in_network(dep, x, levels, seed=seed).items():
            for name, parts in layers.items():
                sums.setdefault((level, name), Parts())
                sums[(level, name)] += parts
    part = TARGET_PART[device.noise_mode]
    return {k: p.db(part) - k[0] for k, p in sums.items() if not math.isnan(p.db(part))}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["rram-wan2022", "photonic", "snr-additive"])
@pytest.mark.parametrize("kind", ["deq", "ffw"])
def test_in_network_snr_within_half_a_db_of_nominal(family, name, kind) -> None:
    task, models = family
    torch.manual_seed(0)
    device = hw.get_device(name).new_chip(1)
    dev = _deviations(models[kind], task, device)
    assert len({layer for _, layer in dev}) >= 3  # every layer with signal is checked
    worst = max(dev.items(), key=lambda kv: abs(kv[1]))
    assert abs(worst[1]) < 0.5, worst


@pytest.mark.slow
def test_clean_calibration_misses_inside_the_network(family) -> None:
    """Calibrated on clean activations only (0 rounds), a deep FFW's layers miss their target
    inside the noisy network by more than 0.5 dB: what the in-network rounds correct."""
    task, models = family
    dev = _deviations(models["ffw"], task, hw.get_device("rram-wan2022").new_chip(1), rounds=0)
    assert max(abs(v) for v in dev.values()) > 0.5


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["deq", "ffw"])
def test_dense_grid_takes_about_one_forward_per_level_and_stays_within_half_a_db(
    family, kind
) -> None:
    """On a 1 dB grid (as the sweeps' default 0:30) each level starts from the previous
    level's in-network correction: most levels take one noisy forward (two rounds of every
    level took 2 per level) and every layer still meets its target inside the network."""
    task, models = family
    levels = [float(v) for v in range(8)]  # the low end, where the correction is largest
    reports: list = []
    dev = _deviations(models[kind], task, hw.get_device("rram-wan2022").new_chip(2),
                      levels=levels, report=reports)
    assert len({lv for lv, _ in dev}) == len(levels)
    worst = max(dev.items(), key=lambda kv: abs(kv[1]))
    assert abs(worst[1]) < 0.5, worst
    assert reports[0].forwards <= len(levels) + 3, reports[0]


def test_anchor_levels_run_the_low_end_and_every_spacing_db() -> None:
    from noisydeq.hardware.in_network import DENSE_BELOW_DB, anchor_levels

    grid = [float(v) for v in range(31)]
    assert DENSE_BELOW_DB == 5.0
    assert anchor_levels(grid, 5.0) == [0, 1, 2, 3, 4, 5, 10, 15, 20, 25, 30]
    assert anchor_levels(grid, 0.0) == grid
    assert anchor_levels([0.0, 10.0, 20.0, 30.0], 5.0) == [0, 10, 20, 30]
    assert anchor_levels([6.0, 8.0, 9.0, 10.0, 12.0], 5.0) == [6, 12]
    assert anchor_levels([-3.0, 7.0, 8.0], 5.0) == [-3, 7, 8]
    assert anchor_levels([], 5.0) == []


@pytest.mark.slow
def test_interpolated_levels_agree_with_running_every_level(family) -> None:
    """On the main job's 1 dB grid the anchored estimator (every level below 5 dB, then
    every 5 dB, the levels between interpolated) sets knobs within 0.3 dB — in clean SNR on
    each layer's calibration inputs — of running every level through the network, with at
    most half the noisy forwards."""
    task, models = family
    levels = [float(v) for v in range(31)]
    x = task.x_train[:512]
    knobs, forwards = {}, {}
    for spacing in (0.0, 5.0):
        device = hw.get_device("rram-wan2022").new_chip(3)
        dep = device.deploy(models["deq"]).eval()
        rep = calibrate_in_network(dep, x, levels, seed=device.chip_seed, spacing=spacing)
        knobs[spacing] = {n: layer.calibrated_controls()
                          for n, layer in hw.device_layers(dep).items()}
        forwards[spacing] = rep.forwards
        layers = hw.device_layers(dep)
    assert forwards[5.0] <= forwards[0.0] / 2, forwards
    worst = 0.0
    for name, layer in layers.items():
        xc = layer.calibration_inputs()
        for level in levels:
            a = layer.measure_parts(knobs[0.0][name][level], xc).total_db
            b = layer.measure_parts(knobs[5.0][name][level], xc).total_db
            if math.isfinite(a):
                worst = max(worst, abs(a - b))
    assert worst < 0.3, worst


def _mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))


def test_a_model_never_deployed_is_refused_in_one_line() -> None:
    """No device layer at all: the model was never deployed, and calibrating it is a
    mistake (it used to return an empty report without a word)."""
    from noisydeq.errors import NoisyDEQError

    model = _mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(NoisyDEQError, match=r"the Sequential has no device layer \(it was "
                       r"never deployed\): deploy it first") as err:
        calibrate_in_network(model, torch.rand(16, 6), [10.0])
    assert "\n" not in str(err.value)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    with pytest.raises(NoisyDEQError, match="never deployed"):  # whatever the levels
        calibrate_in_network(model, torch.rand(16, 6), [math.inf])


def test_a_model_deployed_with_every_layer_digital_is_told_in_one_warning(capsys) -> None:
    """``deploy(digital_layers=...)`` naming every layer is a choice docs/devices.md allows
    (the named modules stay exact): calibrating it runs, does nothing and says so once;
    with one layer on the device it calibrates that layer without a word."""
    x = torch.rand(16, 6)
    device = hw.get_device("rram")
    digital = device.deploy(_mlp(), digital_layers=["0", "2"]).eval()
    capsys.readouterr()
    report = calibrate_in_network(digital, x, [10.0], rounds=0)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("noisydeq: warning: calibrate_in_network:")
    assert "every layer of the Sequential was kept digital" in err
    assert "(digital_layers: 0, 2)" in err and "nothing to calibrate" in err
    assert report.levels == [10.0]
    assert torch.equal(digital(x), _mlp()(x))  # exact, as deployed
    one = device.deploy(_mlp(), digital_layers=["2"]).eval()
    capsys.readouterr()
    calibrate_in_network(one, x, [10.0], rounds=0)
    assert capsys.readouterr().err == ""
    assert 10.0 in one[0]._controls
    alone = device.deploy(torch.nn.Linear(6, 3), digital_layers=[""])
    capsys.readouterr()
    calibrate_in_network(alone, x, [10.0], rounds=0)
    assert "(digital_layers: the model itself)" in capsys.readouterr().err
