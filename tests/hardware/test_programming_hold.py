"""Hardware-aware training with the chip programmed once per epoch's chip and noise scale
(``TrainSpec.device_programming = "epoch"``): the first programming is the per-step one,
every later weight version's chip is its W / max|W| plus that programming's error
(closed form, exactly), a new chip programs a new error, the default path is unchanged,
a resumed run ends with the same weights and the gradient stays straight-through."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from noisydeq.config import TrainSpec
from noisydeq.hardware import get_device
from noisydeq.hardware.controls import device_layers
from noisydeq.noise import NoiseStream
from noisydeq.train_device import _deploy, _on_chip
from tests.hardware.hold_helpers import digits_mlp, small_net, train_step


def _fresh(layer, s: float):
    """The rram chip (W_t, α) programmed from scratch with the layer's current weights."""
    state = (layer.hold_programming, layer._held_error, layer._chips, layer._draw)
    layer.hold_programming, layer._held_error = False, type(layer._held_error)()
    layer._chips, layer._draw = type(layer._chips)(), None
    try:
        return layer.chip(s)
    finally:
        layer.hold_programming, layer._held_error, layer._chips, layer._draw = state


def _unit(layer) -> torch.Tensor:
    w = layer.matrix().detach()
    return w / w.abs().max()


@pytest.mark.parametrize("s", [1.0, 0.3])
def test_rram_held_programming_is_current_weights_plus_the_first_error(s) -> None:
    held = get_device("rram", chip=1).deploy(small_net())
    per_step = get_device("rram", chip=1).deploy(small_net())
    for layer in device_layers(held).values():
        layer.hold_programming = True
    first = {}
    for name, layer in device_layers(held).items():
        w_t, alpha = layer.chip(s)
        ref = device_layers(per_step)[name].chip(s)
        assert torch.equal(w_t, ref[0]) and alpha == ref[1]  # the first: programmed in full
        err = layer.held_error(s)
        assert err.shape == (2, *w_t.shape) and not err.requires_grad
        assert torch.equal(err[1], w_t - _unit(layer))
        first[name] = err.clone()
    for k in range(3):
        train_step(held, k)
        train_step(per_step, k)
        for name, layer in device_layers(held).items():
            w_t, alpha = layer.chip(s)
            assert torch.equal(layer.held_error(s), first[name])  # held while weights train
            assert torch.equal(w_t, _unit(layer) + first[name][1])  # closed form, exactly
            # α is measured on the held chip: W_prog = W/max|W| + the held W_prog error
            pair = _unit(layer) + first[name]
            assert alpha == layer._drift_alpha(pair, s, float(w_t.square().mean().sqrt()),
                                               float(pair[0].abs().max()))
            fresh = _fresh(layer, s)[0]
            assert not torch.equal(w_t, fresh)  # the default would have reprogrammed it
            other = device_layers(per_step)[name]
            assert torch.equal(other.chip(s)[0], _fresh(other, s)[0])  # default: every step


def test_photonic_held_encoding_is_current_weights_plus_the_first_error() -> None:
    held = get_device("photonic", chip=2).deploy(small_net())
    per_step = get_device("photonic", chip=2).deploy(small_net())
    sigma = 0.05
    for layer in device_layers(held).values():
        layer.hold_programming = True
    first = {}
    for name, layer in device_layers(held).items():
        t = layer.transmissions(sigma)[0]
        assert torch.equal(t, device_layers(per_step)[name].transmissions(sigma)[0])
        first[name] = layer.held_error(sigma).clone()
        assert torch.equal(first[name], t - _unit(layer))
    train_step(held, 0)
    train_step(per_step, 0)
    for name, layer in device_layers(held).items():
        t, t_abs, t_mean = layer.transmissions(sigma)
        want = (_unit(layer) + first[name]).clamp(-1.0, 1.0)
        assert torch.equal(t, want) and torch.equal(t_abs, want.abs())
        assert torch.equal(t_mean, want.abs().mean(dim=1))
        assert not torch.equal(t, device_layers(per_step)[name].transmissions(sigma)[0])


@pytest.mark.parametrize("device", ["rram", "photonic"])
def test_training_holds_the_error_per_chip_and_a_new_chip_programs_its_own(device) -> None:
    spec = TrainSpec(device=device, device_programming="epoch")
    net = _deploy(small_net(), spec, 0)
    x = torch.rand(32, 12)
    assert all(layer.hold_programming for layer in device_layers(net).values())
    net(x)  # the epoch's first programming
    s = {"rram": 1.0, "photonic": get_device("photonic").spec.weight_error_std}[device]
    errs = {n: layer.held_error(s).clone() for n, layer in device_layers(net).items()}
    train_step(net, 0)
    net(x)
    assert all(torch.equal(layer.held_error(s), errs[n])
               for n, layer in device_layers(net).items())
    _on_chip(net, spec, 5, x)  # next epoch's chip: a new programming with the current weights
    net(x)
    for name, layer in device_layers(net).items():
        assert layer.hold_programming
        assert not torch.equal(layer.held_error(s), errs[name])
        if device == "rram":
            assert torch.equal(layer.chip(s)[0], _fresh(layer, s)[0])


def test_default_path_is_unchanged_and_holds_nothing() -> None:
    net = _deploy(small_net(), TrainSpec(device="rram"), 0)
    x = torch.rand(8, 12)
    net(x)
    train_step(net, 0)
    net(x)
    for layer in device_layers(net).values():
        assert not layer.hold_programming and layer.held_error(1.0) is None
        assert torch.equal(layer.chip(1.0)[0], _fresh(layer, 1.0)[0])


def test_resumed_held_training_ends_with_the_same_weights(tmp_path) -> None:
    from noisydeq.tasks import load_task
    from noisydeq.train import train_model

    task = load_task("digits", seed=0)
    spec = TrainSpec(epochs=3, batch_size=32, max_train_samples=128, device="rram",
                     device_programming="epoch", device_drift_alpha="epoch")

    def model() -> nn.Module:
        return digits_mlp(3)

    ref = train_model(model(), task, spec)

    def stop(epoch, record):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_model(model(), task, spec, out_dir=tmp_path, on_epoch=stop)
    resumed = train_model(model(), task, spec, out_dir=tmp_path)
    assert resumed.start_epoch == 2
    for k, v in ref.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[k], v), k


def test_gradient_stays_straight_through_to_the_device_layers_digital_weights() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 48), nn.Tanh(), nn.Linear(48, 10))
    net = get_device("rram", chip=3).deploy(model, digital_layers=["2"])
    a = net[0]
    a.hold_programming = True
    x = torch.rand(16, 64) * 2 - 1
    a.stream = NoiseStream.from_seed(7, samples=torch.arange(16))
    a(x)  # the first programming
    train_step(a, 1)  # new weights: the held path
    for p in net.parameters():
        p.grad = None
    a.stream = NoiseStream.from_seed(7, samples=torch.arange(16))
    ya = a(x)
    ya.retain_grad()
    out = net[2](torch.tanh(ya))
    nn.functional.cross_entropy(out, torch.arange(16) % 10).backward()
    assert torch.allclose(a.weight.grad, ya.grad.T @ x, atol=1e-6)
    assert torch.allclose(a.bias.grad, ya.grad.sum(0), atol=1e-6)
    assert not a.held_error(1.0).requires_grad and a.held_error(1.0).grad is None
    assert type(net[2]) is nn.Linear and net[2].weight.grad is not None
