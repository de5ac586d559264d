"""Noise modes: which knob a target moves, static SNR against aihwkit, snr closed forms,
reachable ranges both ways, layers without signal."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from noisydeq import hardware as hw
from noisydeq.config import SweepSpec, build
from noisydeq.errors import NoisyDEQError
from noisydeq.hardware.calibration import check_reachable
from noisydeq.hardware.parts import combine_db
from noisydeq.hardware.presets import SNRSpec
from noisydeq.hardware.snr import SNRDevice
from noisydeq.noise import NoiseStream
from noisydeq.sweep import Hardware

LEVELS = [0.0, 10.0, 20.0, 30.0]
NOISY = ["rram-wan2022", "photonic", "snr"]


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(24, 64), nn.Tanh(), nn.Linear(64, 48))


def _chip_knobs(name: str, mode: str, levels=LEVELS) -> tuple[nn.Module, dict]:
    """The MLP on chip 2 of ``name`` through the sweep's own adapter: knobs per layer/level."""
    spec = build(SweepSpec, dict(device=name, noise_mode=mode, snr_db=levels, chips=1))
    x = torch.rand(256, 24) * 2 - 1
    deployed = Hardware(spec).chip(_mlp(), seed=0, chip=2, calib_x=x)
    return deployed, {n: [layer.control_for(s) for s in levels]
                      for n, layer in hw.device_layers(deployed).items()}


@pytest.mark.parametrize("name", NOISY)
def test_dynamic_mode_programs_each_chip_once(name: str) -> None:
    """dynamic: the programmed weights W_chip are bit-identical at every level of a sweep."""
    deployed, knobs = _chip_knobs(name, "dynamic")
    for lname, layer in hw.device_layers(deployed).items():
        statics = {k[0] for k in knobs[lname]}
        assert statics == {layer.native_knobs()[0]}, lname
        chips = [layer.chip_matrix(k[0]) for k in knobs[lname]]
        assert all(torch.equal(chips[0], c) for c in chips[1:])
        assert len({k[1] for k in knobs[lname]}) == len(LEVELS)  # the reads change
    if name == "rram-wan2022":  # the programmed conductances themselves (aihwkit's draw)
        layer = hw.device_layers(deployed)["0"]
        w_t = [layer.chip(k[0])[0] for k in knobs["0"]]
        assert all(torch.equal(w_t[0], w) for w in w_t[1:])


@pytest.mark.parametrize("name", NOISY)
def test_static_mode_keeps_the_reads(name: str) -> None:
    """static: the read-noise knob (hence its std) is the native one at every level, while
    the static SNR spans the grid and the chips differ. (From 5 dB: a photonic transmission
    error is clipped to [0, 1], so its static SNR floor is ~1 dB on these weights.)"""
    levels = [5.0, 10.0, 20.0, 30.0]
    deployed, knobs = _chip_knobs(name, "static", levels)
    for lname, layer in hw.device_layers(deployed).items():
        dynamic = {k[1] for k in knobs[lname]}
        assert dynamic == {layer.native_knobs()[1]}, lname
        if name == "rram-wan2022":
            stds = {k[1] * layer.spec.out_noise for k in knobs[lname]}
            assert stds == {layer.spec.out_noise}
        x = layer.calibration_inputs()
        statics = [layer.measure_parts(k, x, dynamic=False).static_db for k in knobs[lname]]
        if lname == "0":  # its inputs are the network's: the same clean and in the network
            assert statics == pytest.approx(levels, abs=0.3)
        assert statics == sorted(statics)
        assert not torch.equal(layer.chip_matrix(knobs[lname][0][0]),
                               layer.chip_matrix(knobs[lname][-1][0]))


def test_physical_mode_moves_reads_below_native_and_both_above() -> None:
    deployed, knobs = _chip_knobs("rram-wan2022", "physical", [0.0, 10.0, 30.0])
    for lname, layer in hw.device_layers(deployed).items():
        native = layer.measure_parts(layer.native_knobs()).total_db
        assert 10.0 < native < 30.0
        (s0, r0), (s10, r10), (s30, r30) = knobs[lname]
        assert s0 == s10 == 1.0 and r0 > r10 > 1.0  # only the reads degrade below native
        assert s30 == r30 < 1.0  # above it programming and reads improve together
    _, both = _chip_knobs("rram-wan2022", "both", [0.0, 30.0])
    assert all(k[0] == k[1] for ks in both.values() for k in ks)  # one joint scale


@pytest.mark.parametrize("preset,chip", [("rram-wan2022", 0), ("rram-wan2022-1day", 3)])
def test_rram_static_snr_equals_aihwkit_programmed_weights(preset: str, chip: int) -> None:
    """The static SNR we measure equals the one of the weights aihwkit's Wan-2022 noise model
    programs and drifts for the same seed, read out with the exact drift compensation
    (mean |W_prog| / mean |W_t|, the identity read-out), within 0.1 dB."""
    from noisydeq.hardware.rram import wan2022_noise_model

    torch.manual_seed(chip)
    lin = nn.Linear(200, 150)
    x = torch.rand(512, 200) * 2 - 1
    layer = hw.get_device(preset).new_chip(chip).deploy(lin)
    ours = layer.measure_parts(layer.native_knobs(), x, dynamic=False).static_db
    w = lin.weight.detach()
    wmax = w.abs().max()
    model = wan2022_noise_model(layer.spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(layer.static_seed)
        w_prog, nu = model.apply_programming_noise(w / wmax)
        w_t = model.apply_drift_noise(w_prog, nu, layer.spec.t_inference_s)
    alpha = w_prog.abs().mean() / w_t.abs().mean()
    exact = x @ w.T
    theirs = 10 * math.log10(float(exact.pow(2).sum() / (x @ (alpha * wmax * w_t).T - exact)
                                   .pow(2).sum()))
    assert abs(ours - theirs) < 0.1, (ours, theirs)
    assert 10 < ours < 30  # a real programming error, not a trivial match


def _db(lin: float) -> float:
    return 10 * math.log10(lin)


NATIVE = -_db(10 ** -1.5 + 10 ** -2.0)  # static 15 dB and dynamic 20 dB: 13.81 dB in all


@pytest.mark.parametrize(
    "mode,target,static,dynamic",
    [("physical", None, 15.0, 20.0), ("dynamic", 5.0, 15.0, 5.0), ("static", 10.0, 10.0, 20.0),
     ("both", 8.0, 15.0 + 8.0 - NATIVE, 20.0 + 8.0 - NATIVE),
     ("physical", 8.0, 15.0, -_db(10 ** -0.8 - 10 ** -1.5)),
     ("physical", 18.0, 15.0 + 18.0 - NATIVE, 20.0 + 18.0 - NATIVE)],
)
def test_snr_device_parts_match_closed_forms(mode, target, static, dynamic) -> None:
    """snr device with a per-chip weight error (static 15 dB) and 20 dB output noise: the
    measured static, dynamic and total SNR on fresh inputs vs 1/total = 1/static + 1/dynamic
    (both, and physical above native: the two parts shifted alike; physical below native:
    static kept)."""
    spec = SNRSpec(snr_db=20.0, static_snr_db=15.0)
    torch.manual_seed(5)
    lin = nn.Linear(96, 256, bias=False)
    device = SNRDevice(spec, chip_seed=1).with_mode(mode)
    layer = (device if target is None else device.at_snr(target)).deploy(lin)
    hw.set_measure(layer, True)
    hw.set_stream(layer, NoiseStream.from_seed(4))
    with torch.no_grad():
        layer(torch.rand(1024, 96) * 2 - 1)  # same distribution as calibration, fresh draw
    got = hw.layer_snr_parts(layer)[""]
    total = combine_db(static, dynamic)
    if target is not None and mode in ("both", "physical"):
        assert total == pytest.approx(target, abs=1e-9)  # the closed form meets the target
    assert got["static"] == pytest.approx(static, abs=0.2)
    assert got["dynamic"] == pytest.approx(dynamic, abs=0.2)
    assert got["total"] == pytest.approx(total, abs=0.2)


@pytest.mark.parametrize("mode", ["physical", "dynamic", "static", "both"])
def test_targets_outside_the_range_are_refused_both_ways(mode: str) -> None:
    dev = hw.get_device("rram-wan2022", noise_mode=mode)
    lo, hi = dev.snr_range()
    assert math.isfinite(lo) and lo < 0 < 30 < hi
    with pytest.raises(NoisyDEQError, match=rf"below .* noise mode '{mode}'.*minimum"):
        dev.at_snr(lo - 5)
    if math.isfinite(hi) and hi < 90:
        with pytest.raises(NoisyDEQError, match=r"above .*maximum \d+\.\d\d dB"):
            dev.at_snr(hi + 5)
    dev.at_snr(min(max(lo + 1, 0.0), hi - 1))  # inside: fine


def test_unknown_noise_mode_suggests() -> None:
    with pytest.raises(NoisyDEQError, match="did you mean 'static'"):
        hw.get_device("rram-wan2022", noise_mode="statc")
    with pytest.raises(NoisyDEQError, match="noise_mode.*did you mean 'dynamic'"):
        build(SweepSpec, {"noise_mode": "dynamc"})
    with pytest.raises(NoisyDEQError, match="applies|sets part of a device"):
        build(SweepSpec, {"noise_site": "signal", "noise_mode": "static"})


@pytest.mark.parametrize("name", NOISY)
def test_layer_without_signal_has_a_defined_rule(name: str) -> None:
    """All-zero inputs (a default FFW's first layer) or zero weights: no SNR (nan, never
    -inf), native knobs, no error at any target; the rest of the model is calibrated."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 8))
    with torch.no_grad():
        model[2].weight.zero_()
    dep = hw.get_device(name).at_snr(10.0).deploy(model)
    hw.calibrate(dep, torch.rand(128, 16))
    layers = hw.device_layers(dep)
    assert layers["2"].resolve_controls(4) == layers["2"].native_knobs()
    assert all(math.isnan(v) for v in layers["2"].snr_range())
    zeros = hw.get_device(name).at_snr(10.0).deploy(nn.Linear(16, 32))
    hw.calibrate(zeros, torch.zeros(64, 16))
    assert zeros.resolve_controls(4) == zeros.native_knobs()
    hw.set_measure(dep, True)
    with torch.no_grad():
        out = dep(torch.rand(64, 16))
    assert torch.isfinite(out).all()
    parts = hw.layer_snr_parts(dep)
    assert all(math.isnan(v) for v in parts["2"].values())
    assert abs(parts["0"]["total"] - 10.0) < 1.0


def test_check_reachable_formats_any_value() -> None:
    for reach, word in [((math.nan, math.nan), "undefined"), ((-math.inf, 3.0), "above"),
                        ((5.0, math.inf), "below"), ((-20.0, 30.0), "above")]:
        target = 40.0 if word != "below" else 0.0
        with pytest.raises(NoisyDEQError) as err:
            check_reachable(target, reach, "layer 'x'", "dynamic")
        msg = str(err.value)
        assert word in msg and "-inf" not in msg.replace("-inf dB", "") and "\n" not in msg
    check_reachable(12.0, (-math.inf, math.inf), "layer 'x'")  # nothing to refuse
    # the advice names no field: the target came from --snr, --device-snr, a preset's
    # snr_db or at_snr(); it said "choose snr_db <= 32.7" to a user who typed --snr 50
    with pytest.raises(NoisyDEQError, match=r"; choose a target <= 29\.9 dB$"):
        check_reachable(50.0, (-27.33, 29.99), "device 'rram'")
    with pytest.raises(NoisyDEQError, match=r"; choose a target >= -27\.3 dB$"):
        check_reachable(-40.0, (-27.33, 29.99), "device 'rram'")
