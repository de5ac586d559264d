"""Hardware-aware training with the photonic ADC gain measured once per chip
(``TrainSpec.device_adc_gain = "epoch"``) instead of at every step: held while the weights
train, measured afresh on a new chip or new calibration inputs, its own cache key, and the
default path unchanged."""

from __future__ import annotations

import torch

from noisydeq.config import TrainSpec
from noisydeq.hardware import get_device
from noisydeq.hardware.controls import device_layers
from noisydeq.train_device import _deploy, _on_chip
from tests.hardware.hold_helpers import (
    small_net,
    train_step,
)

_net, _train_step = small_net, train_step


def _measured(layer) -> float:
    """The ADC gain measured from scratch with the layer's current weights."""
    hold, cache = layer.hold_adc_gain, layer._adc
    layer.hold_adc_gain, layer._adc = False, None
    try:
        return layer.adc_scale()
    finally:
        layer.hold_adc_gain, layer._adc = hold, cache


def test_held_gain_stays_while_weights_train_and_the_default_remeasures() -> None:
    held = get_device("photonic", chip=1).deploy(_net())
    per_step = get_device("photonic", chip=1).deploy(_net())
    for layer in device_layers(held).values():
        layer.hold_adc_gain = True
    first = {n: layer.adc_scale() for n, layer in device_layers(held).items()}
    for k in range(3):
        _train_step(held, k)
        _train_step(per_step, k)
        for name, layer in device_layers(held).items():
            assert layer.adc_scale() == first[name]  # held
            other = device_layers(per_step)[name]
            assert other.adc_scale() == _measured(other)  # default: every weight version
            assert _measured(layer) != first[name]  # the weights did move the gain
    layer = device_layers(held)["0"]
    layer.calib_x = torch.rand(64, 12) * 2 - 1  # new calibration inputs: measured again
    assert layer.adc_scale() == _measured(layer)


def test_training_holds_the_gain_per_chip_and_the_validation_chip_measures_its_own() -> None:
    spec = TrainSpec(device="photonic", device_adc_gain="epoch")
    net = _deploy(_net(), spec, 0)
    x = torch.rand(32, 12)
    gains = {n: layer.adc_scale() for n, layer in device_layers(net).items()}
    _train_step(net, 0)
    assert {n: layer.adc_scale() for n, layer in device_layers(net).items()} == gains
    _on_chip(net, spec, 5, x)  # next epoch's chip: measured with the current weights
    for layer in device_layers(net).values():
        assert layer.hold_adc_gain and layer.adc_scale() == _measured(layer)
