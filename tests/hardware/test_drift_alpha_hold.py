"""Hardware-aware training with the rram drift-compensation α measured once per chip and
noise scale (``TrainSpec.device_drift_alpha = "epoch"``) instead of with every step's
programmed chip: held while the weights train, measured afresh on a new chip, its own
cache key, the chip otherwise the per-step one, and the default path unchanged."""

from __future__ import annotations

import pytest
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


def _measured(layer, s: float) -> tuple[torch.Tensor, float]:
    """(W_t, α) of the chip programmed from scratch with the layer's current weights."""
    hold, held, chips = layer.hold_drift_alpha, layer._held_alpha, layer._chips
    layer.hold_drift_alpha, layer._held_alpha, layer._chips = False, {}, type(chips)()
    try:
        return layer.chip(s)
    finally:
        layer.hold_drift_alpha, layer._held_alpha, layer._chips = hold, held, chips


@pytest.mark.parametrize("s", [1.0, 0.3])
def test_held_alpha_stays_while_weights_train_and_the_default_remeasures(s) -> None:
    held = get_device("rram", chip=1).deploy(_net())
    per_step = get_device("rram", chip=1).deploy(_net())
    for layer in device_layers(held).values():
        layer.hold_drift_alpha = True
    first = {n: layer.chip(s)[1] for n, layer in device_layers(held).items()}
    for k in range(3):
        _train_step(held, k)
        _train_step(per_step, k)
        for name, layer in device_layers(held).items():
            w_t, alpha = layer.chip(s)
            w_ref, alpha_ref = _measured(layer, s)
            assert alpha == first[name] and alpha_ref != first[name]  # held; weights moved α
            assert torch.equal(w_t, w_ref)  # the chip itself is reprogrammed as before
            other = device_layers(per_step)[name]
            assert other.chip(s)[1] == _measured(other, s)[1]  # default: every version


def test_training_holds_alpha_per_chip_and_a_new_chip_measures_its_own() -> None:
    spec = TrainSpec(device="rram", device_drift_alpha="epoch")
    net = _deploy(_net(), spec, 0)
    x = torch.rand(32, 12)
    alphas = {n: layer.chip(1.0)[1] for n, layer in device_layers(net).items()}
    _train_step(net, 0)
    assert {n: layer.chip(1.0)[1] for n, layer in device_layers(net).items()} == alphas
    _on_chip(net, spec, 5, x)  # next epoch's chip: measured with the current weights
    for layer in device_layers(net).values():
        assert layer.hold_drift_alpha and layer.chip(1.0)[1] == _measured(layer, 1.0)[1]
