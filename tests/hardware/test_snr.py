"""SNR device: realised SNR equals the target at every width; additive variant."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from noisydeq import hardware as hw
from noisydeq.noise import NoiseStream


@pytest.mark.parametrize("width", [16, 128, 1024])
def test_multiplicative_snr_within_03_db(width: int) -> None:
    torch.manual_seed(width)
    lin = nn.Linear(64, width)
    x = torch.randn(512, 64)
    for target in (-10.0, 0.0, 10.0, 20.0, 30.0, 40.0):
        layer = hw.get_device("snr").at_snr(target).deploy(lin)
        hw.set_measure(layer, True)
        hw.set_stream(layer, NoiseStream.from_seed(int(target) + 100))
        with torch.no_grad():
            layer(x)
        assert abs(hw.layer_snr_report(layer)[""] - target) < 0.3, (width, target)


def test_additive_snr_calibrated_then_fixed_std() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(32, 64, bias=False)
    layer = hw.get_device("snr-additive").at_snr(10.0).deploy(lin)
    hw.set_measure(layer, True)
    with torch.no_grad():
        x = torch.rand(2048, 32) * 2 - 1  # calibration distribution
        layer(x)
        assert abs(hw.layer_snr_report(layer)[""] - 10.0) < 0.3
        e1 = layer(x) - lin(x)
        e2 = layer(3 * x) - lin(3 * x)  # signal x9 in power, same noise std
    assert abs(float(e2.std() / e1.std()) - 1) < 0.05
    assert abs(hw.layer_snr_report(layer)[""] - (10.0 + 20 * 0.4771)) < 0.3
