"""Photonic device: shot/thermal slopes, closed-form single-output SNR, calibration, energy."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from noisydeq import hardware as hw
from noisydeq.errors import NoisyDEQError
from noisydeq.hardware.photonic import PhotonicDevice
from noisydeq.hardware.presets import PhotonicSpec
from noisydeq.noise import NoiseStream

Q, KB, H, C = 1.602176634e-19, 1.380649e-23, 6.62607015e-34, 299792458.0
CLEAN = dict(dac_bits=24, adc_bits=24, adc_full_scale=1e3, shot_noise="exact")


def _layer(n: int = 128, **kw) -> hw.DeviceLayer:
    torch.manual_seed(0)
    return PhotonicDevice(PhotonicSpec(**{**CLEAN, **kw})).deploy(nn.Linear(n, n, bias=False))


def _slope(layer: hw.DeviceLayer, p1: float, p2: float) -> float:
    snr1, snr2 = layer.measured_snr_at((0.0, p1)), layer.measured_snr_at((0.0, p2))
    return (snr2 - snr1) / math.log10(p2 / p1)


def test_shot_limited_snr_rises_10_db_per_decade() -> None:
    layer = _layer(load_resistance_ohm=1e15, dark_current_a=0.0, rin_db_per_hz=-250.0)
    assert abs(_slope(layer, 1e-9, 1e-8) - 10.0) < 1.0


def test_thermal_limited_snr_rises_20_db_per_decade() -> None:
    layer = _layer(rin_db_per_hz=-250.0)
    assert abs(_slope(layer, 1e-8, 1e-7) - 20.0) < 1.0


def test_single_output_snr_matches_closed_form() -> None:
    n, rows, p = 64, 4000, 2e-6
    torch.manual_seed(3)
    lin = nn.Linear(n, 4, bias=False)
    spec = PhotonicSpec(**CLEAN, rin_db_per_hz=-140.0, dark_current_a=1e-6)
    layer = PhotonicDevice(spec).deploy(lin)
    x = torch.rand(n) * 2 - 1
    xs = x.repeat(rows, 1)
    with torch.no_grad():
        y = layer._mvm(xs, (0.0, p), NoiseStream.from_seed(5))[:, 0]
    w = lin.weight.detach()[0]
    t = w / lin.weight.detach().abs().max()
    xh = x / x.abs().max()
    prod = (xh * t).double()
    i_plus = spec.responsivity_a_per_w * p * prod.clamp(min=0).sum()
    i_minus = spec.responsivity_a_per_w * p * (-prod).clamp(min=0).sum()
    b = spec.bandwidth_hz
    var = (
        2 * Q * (i_plus + i_minus + 2 * spec.dark_current_a) * b
        + 4 * KB * spec.temperature_k * b / spec.load_resistance_ohm
        + 10 ** (spec.rin_db_per_hz / 10) * b * (i_plus**2 + i_minus**2)
    )
    closed = 10 * math.log10(float((i_plus - i_minus) ** 2 / var))
    clean = float(w @ x)
    measured = 10 * math.log10(clean**2 / float((y.double() - clean).pow(2).mean()))
    assert abs(measured - closed) < 0.5, (measured, closed)


def test_fast_shot_estimate_close_to_exact() -> None:
    fast = _layer(shot_noise="fast", load_resistance_ohm=1e15, rin_db_per_hz=-250.0)
    exact = _layer(load_resistance_ohm=1e15, rin_db_per_hz=-250.0)
    assert abs(fast.measured_snr_at((0.0, 1e-8)) - exact.measured_snr_at((0.0, 1e-8))) < 0.5


@pytest.mark.parametrize("target", [0.0, 10.0, 20.0, 30.0])
def test_calibration_hits_target_on_fresh_inputs(target: float) -> None:
    torch.manual_seed(1)
    lin = nn.Linear(128, 96)
    layer = hw.get_device("photonic").at_snr(target).deploy(lin)
    hw.set_measure(layer, True)
    with torch.no_grad():
        layer(torch.rand(512, 128) * 2 - 1)
    assert abs(hw.layer_snr_report(layer)[""] - target) < 0.5


def test_operating_point_energy_and_photons() -> None:
    dev = hw.get_device("photonic")
    op10, op20 = dev.operating_point(10.0), dev.operating_point(20.0)
    assert op20["power_per_mac_w"] > op10["power_per_mac_w"]
    for op in (op10, op20):
        e = op["power_per_mac_w"] / 1e10
        assert op["energy_per_mac_j"] == pytest.approx(e)
        assert op["photons_per_mac"] == pytest.approx(e * 1550e-9 / (H * C))
    native = dev.native_snr_db()
    assert 15 < native < dev.max_snr_db()
    with pytest.raises(NoisyDEQError, match="maximum"):
        dev.at_snr(60.0)


@pytest.mark.parametrize(
    "bad,field",
    [
        ({"power_per_mac_w": -1e-3}, "power_per_mac_w"),
        ({"temperature_k": 0.0}, "temperature_k"),
        ({"adc_bits": 0}, "adc_bits"),
        ({"dac_bits": 0}, "dac_bits"),
        ({"wavelenght_nm": 1310}, "did you mean 'wavelength_nm'"),
    ],
)
def test_invalid_photonic_values(bad: dict, field: str) -> None:
    with pytest.raises(NoisyDEQError, match=field):
        hw.spec_from_dict({"kind": "photonic", **bad})


def test_static_weight_error_fixed_per_chip() -> None:
    spec = PhotonicSpec(weight_error_std=0.05)
    lin = nn.Linear(16, 8)
    t0 = PhotonicDevice(spec, chip_seed=0).deploy(lin).transmissions()[0]
    t0b = PhotonicDevice(spec, chip_seed=0).deploy(lin).transmissions()[0]
    t1 = PhotonicDevice(spec, chip_seed=1).deploy(lin).transmissions()[0]
    assert torch.equal(t0, t0b) and not torch.equal(t0, t1)
