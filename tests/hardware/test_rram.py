"""RRAM vs aihwkit: Wan-2022 conductance statistics, AnalogLinear outputs, calibration."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from noisydeq import hardware as hw
from noisydeq.errors import NoisyDEQError
from noisydeq.hardware.presets import RRAMSpec
from noisydeq.hardware.rram import program_weights, wan2022_noise_model
from noisydeq.noise import NoiseStream, measured_snr_db

# Wan et al. (2022) fit, σ(g) in µS as a polynomial in g/g_max (published in aihwkit's
# ReRamWan2022NoiseModel; highest order first): facts the test checks against.
FIT = {
    1.0: [-16.815, 45.393, -43.853, 16.030, 0.348],
    86400.0: [-16.458, 47.095, -50.773, 22.086, 0.701],
    172800.0: [-11.934, 37.062, -43.507, 20.274, 0.782],
}
G_MAX = 40.0


def sigma_fit(g: torch.Tensor, t: float) -> torch.Tensor:
    u = g / G_MAX
    out = torch.zeros_like(g)
    for c in FIT[t]:
        out = out * u + c
    return out


def _bins(g: torch.Tensor, err: torch.Tensor, edges: torch.Tensor):
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        m = (g >= lo) & (g < hi)
        yield g[m], err[m]


@pytest.mark.parametrize("t", [1.0, 86400.0, 172800.0])
def test_conductance_error_matches_wan2022_fit(t: float) -> None:
    """std(g_prog − g_target) vs g_target within 5% of the fit: aihwkit direct and our path."""
    spec = RRAMSpec(t_inference_s=t)
    # (1) aihwkit's noise model on conductances directly (away from the clamp at 0)
    model = wan2022_noise_model(spec)
    g = torch.linspace(2.0, G_MAX, 400).repeat(500)
    torch.manual_seed(0)
    g_t = model.apply_drift_noise_to_conductance(g, g, t)
    # (2) our chip path: positive weights w in [0, 1] -> G+ = 40 w, G- = 0 (its error is a
    # half-normal of std σ(0) after the clamp at 0); read-out back through the converter.
    w = torch.linspace(0.05, 1.0, 400).repeat(500).reshape(500, 400)
    w_prog, w_t = program_weights(w, spec, 1.0, seed=7)
    # the converter maps max|W_prog| (not max|W|) to g_max when reading back at t
    g_ours = (w_t * G_MAX / w_prog.abs().max()).reshape(-1)
    target = (w * G_MAX).reshape(-1)
    sigma0 = float(sigma_fit(torch.zeros(1), t))
    edges = torch.linspace(2.0, G_MAX, 9)
    for gb, eb in _bins(g, g_t - g, edges):
        want = sigma_fit(gb, t).pow(2).mean().sqrt()
        assert abs(float(eb.std() / want) - 1) < 0.05, (t, float(gb.mean()))
    for gb, eb in _bins(target, g_ours - target, edges):
        want = (sigma_fit(gb, t).pow(2).mean() + sigma0**2 * (1 - 2 / math.pi)).sqrt()
        assert abs(float(eb.std() / want) - 1) < 0.05, (t, float(gb.mean()))


def _aihwkit_layer(weight: torch.Tensor):
    from aihwkit.inference.compensation.drift import GlobalDriftCompensation
    from aihwkit.inference.converter.conductance import SinglePairConductanceConverter
    from aihwkit.inference.noise.reram import ReRamWan2022NoiseModel
    from aihwkit.nn import AnalogLinear
    from aihwkit.simulator.configs import TorchInferenceRPUConfig

    cfg = TorchInferenceRPUConfig()
    conv = SinglePairConductanceConverter(g_max=G_MAX)
    cfg.noise_model = ReRamWan2022NoiseModel(g_converter=conv)
    cfg.drift_compensation = GlobalDriftCompensation()
    cfg.mapping.weight_scaling_omega = 1.0  # max|W| -> 1 on the tile, as our mapping
    layer = AnalogLinear(weight.shape[1], weight.shape[0], bias=False, rpu_config=cfg)
    layer.set_weights(weight)
    return layer.eval()


def test_programmed_weights_identical_to_aihwkit_program_analog_weights() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(64, 48, bias=False)
    layer = hw.get_device("rram-wan2022").deploy(lin)
    ana = _aihwkit_layer(lin.weight.detach())
    torch.manual_seed(layer.static_seed)
    ana.program_analog_weights()
    tile = next(ana.analog_tiles())
    w = lin.weight.detach()
    ours, _ = program_weights(w / w.abs().max(), layer.spec, 1.0, layer.static_seed)
    assert torch.equal(tile.programmed_weights, ours)


@pytest.mark.parametrize(
    "preset,t", [("rram-wan2022", 1.0), ("rram-wan2022-1day", 86400.0)]
)
def test_output_statistics_match_aihwkit_analoglinear(preset: str, t: float) -> None:
    """Mean error and error std of our fused layer vs aihwkit's AnalogLinear (same W, x).

    aihwkit's bound management acts on the whole batch, ours per vector: aihwkit is fed one
    vector at a time so both apply it per vector. Two chips each, 467×467, 64 vectors.
    """
    n, batch = 467, 64
    torch.manual_seed(0)
    lin = nn.Linear(n, n, bias=False)
    x = torch.rand(batch, n) * 2 - 1
    exact = lin(x).detach()
    stats = {"aihwkit": [], "ours": []}
    for chip in range(2):
        ana = _aihwkit_layer(lin.weight.detach())
        torch.manual_seed(1000 + chip)
        ana.program_analog_weights()
        ana.drift_analog_weights(t)
        with torch.no_grad():
            ya = torch.cat([ana(x[i : i + 1]) for i in range(batch)])
            yo = hw.get_device(preset).new_chip(chip).deploy(lin)(x)
        for key, y in (("aihwkit", ya), ("ours", yo)):
            err = y - exact
            stats[key].append((float(err.mean()), float(err.std()), measured_snr_db(exact, y)))
    a = torch.tensor(stats["aihwkit"]).mean(0)
    o = torch.tensor(stats["ours"]).mean(0)
    assert abs(float(o[1] / a[1]) - 1) < 0.05  # error std within 5 %
    assert abs(float(o[0] - a[0])) < 0.05 * float(a[1])  # mean error (bias) alike
    assert abs(float(o[2] - a[2])) < 0.4  # SNR (dB)


@pytest.mark.parametrize("width", [64, 256])
def test_calibration_hits_target_on_fresh_inputs(width: int) -> None:
    torch.manual_seed(width)
    lin = nn.Linear(width, width)
    for target in (0.0, 10.0, 20.0, 30.0):
        layer = hw.get_device("rram-wan2022").at_snr(target).new_chip(3).deploy(lin)
        hw.set_measure(layer, True)
        hw.set_stream(layer, NoiseStream.from_seed(99))
        x = torch.rand(512, width) * 2 - 1  # same distribution as calibration, fresh draw
        with torch.no_grad():
            layer(x)
        measured = hw.layer_snr_report(layer)[""]
        assert abs(measured - target) < 0.5, (width, target, measured)


def test_native_snr_and_ceiling() -> None:
    dev = hw.get_device("rram-wan2022")
    native, ceiling = dev.native_snr_db(), dev.max_snr_db()
    assert 15.0 < native < ceiling  # 21.2 dB measured on the 467x467 reference
    later = hw.get_device("rram-wan2022-1day").native_snr_db()
    assert later < native  # more conductance spread after 1 day
    with pytest.raises(NoisyDEQError, match=r"maximum 3\d\.\d\d dB"):
        dev.at_snr(45.0)


def test_invalid_rram_values_are_one_clear_error() -> None:
    with pytest.raises(NoisyDEQError, match="t_inference_s.*1 \\(1 s\\), 86400"):
        hw.spec_from_dict({"kind": "rram", "t_inference_s": 3600})
    with pytest.raises(NoisyDEQError, match="adc_bits"):
        hw.spec_from_dict({"kind": "rram", "adc_bits": 0})
    with pytest.raises(NoisyDEQError, match="did you mean 'out_noise'"):
        hw.spec_from_dict({"kind": "rram", "out_nosie": 0.1})


def test_noise_scale_zero_leaves_only_quantisation() -> None:
    torch.manual_seed(1)
    lin = nn.Linear(32, 16, bias=False)
    layer = hw.get_device("rram-wan2022").deploy(lin)
    x = torch.rand(8, 32) * 2 - 1
    with torch.no_grad():
        y = layer.device_output(x, (0.0, 0.0))
    # worst case: DAC error n·dq/2 + ADC error dy/2 (normalised units), times the largest
    # bound-management reduction (16), the input scale and max|W|
    bound = (32 * (2 / 126) / 2 + (24 / 510) / 2) * 16
    bound = bound * x.abs().amax(1, keepdim=True) * lin.weight.abs().max()
    err = (y - lin(x)).abs()
    assert (err <= bound).all() and float(err.detach().max()) > 0
