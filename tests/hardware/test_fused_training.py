"""The fused training forward of RRAM/photonic Linear layers (one autograd node,
:class:`noisydeq.hardware.gradient.PeakScaledLinear`) against the graph it replaces, bit for
bit: ``exact + err·s/sg(s) + b`` with the scale's share in its own node (the previous
implementation, kept here as the reference), and against finite differences of the
device output along the scale (same draws)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from noisydeq.hardware import get_device, set_scaled_gradient
from noisydeq.hardware.gradient import _scale_grad
from noisydeq.noise import NoiseStream


class _ScaleShare(torch.autograd.Function):
    """The previous implementation's node: value ``err``, backward the scale's share."""

    @staticmethod
    def forward(ctx: Any, err: Tensor, x: Tensor, w: Tensor) -> Tensor:
        ctx.save_for_backward(err, x, w)
        return err.view_as(err)

    @staticmethod
    def backward(ctx: Any, grad: Tensor):
        err, x, w = ctx.saved_tensors
        c, size, peak, _, w_max = _scale_grad(grad, err, x, w)
        top = size == peak  # dense: sign · [top] · coef, split over ties
        coef = c * w_max / top.sum(dim=-1, keepdim=True, dtype=c.dtype)
        gx = (x.sign() * top * coef).reshape(x.shape)
        top_w = w.abs() == w_max
        gw = w.sign() * top_w * ((c * peak).sum() / top_w.sum(dtype=c.dtype))
        return None, gx, gw


def _reference(layer, x: Tensor, y: Tensor) -> Tensor:
    """The graph the fused node replaces: linear, subtraction, scale node, bias add."""
    exact = F.linear(x, layer.weight)
    out = exact + _ScaleShare.apply(y.sub_(exact.detach()), x, layer.weight)
    return out if layer.bias is None else out + layer.bias.reshape(1, -1)


def _output(layer, xr, fused: bool):
    """The layer's training output through the fused node, or through the reference graph
    on the same device read."""
    if fused:
        return layer(xr)
    with torch.no_grad():
        y = layer.device_output(xr, layer.resolve_controls(xr.shape[0]))
    return _reference(layer, xr, y)


@pytest.mark.parametrize("name", ["rram", "photonic"])
@pytest.mark.parametrize("x_grad", [True, False])
def test_fused_training_node_equals_the_graph_it_replaces(name, x_grad):
    torch.manual_seed(2)
    lin = nn.Linear(40, 24)
    layer = get_device(name, chip=5).deploy(lin)
    set_scaled_gradient(layer)
    x = (torch.rand(33, 40) * 2 - 1).clamp(-0.9, 0.9)  # ties at ±0.9
    x[4] = 0.0  # a zero vector: no scale gradient
    g = torch.randn(33, 24)
    got = []
    for fused in (True, False):
        layer.weight.grad = layer.bias.grad = None
        xr = x.clone().requires_grad_(x_grad)
        layer.stream = NoiseStream.from_seed(1, samples=torch.arange(33))
        out = _output(layer, xr, fused)
        if fused:
            assert type(out.grad_fn).__name__ == "PeakScaledLinearBackward"
        (g * out).sum().backward()
        got.append((out.detach(), layer.weight.grad, layer.bias.grad, xr.grad))
    for a, b in zip(*got, strict=True):
        assert (a is None and b is None) or torch.equal(a, b)


@pytest.mark.parametrize("name", ["rram", "photonic"])
def test_fused_training_gradient_matches_finite_differences_along_the_scale(name):
    """With the draws fixed, the device read of c·W is c times that of W (normalised
    weights and inputs), so d/dc of L(c·W) at c = 1 is what the scaled gradient predicts:
    ⟨∂L/∂W, W⟩ — checked against a central difference of the device's own outputs."""
    torch.manual_seed(3)
    layer = get_device(name, chip=2).deploy(nn.Linear(30, 20, bias=False)).double()
    set_scaled_gradient(layer)
    x = torch.rand(16, 30, dtype=torch.float64) * 2 - 1
    g = torch.randn(16, 20, dtype=torch.float64)
    w0 = layer.weight.detach().clone()

    def loss(c: float) -> float:
        with torch.no_grad():
            layer.weight.copy_(w0 * c)
            layer.stream = NoiseStream.from_seed(4, samples=torch.arange(16))
            return float((g * layer(x)).sum())

    h = 1e-3
    numeric = (loss(1 + h) - loss(1 - h)) / (2 * h)
    with torch.no_grad():
        layer.weight.copy_(w0)
    layer.weight.grad = None
    layer.stream = NoiseStream.from_seed(4, samples=torch.arange(16))
    (g * layer(x)).sum().backward()
    predicted = float((layer.weight.grad * w0).sum())
    assert abs(numeric - predicted) <= 1e-6 * max(1.0, abs(predicted))


@pytest.mark.parametrize("name", ["rram", "photonic"])
def test_fused_training_node_twice_differentiable_as_before(name):
    """A Jacobian penalty differentiates the input gradient again (``create_graph``): the
    fused node's backward is built from differentiable operations, so the second
    derivative equals the replaced graph's."""
    torch.manual_seed(6)
    layer = get_device(name, chip=1).deploy(nn.Linear(20, 16))
    set_scaled_gradient(layer)
    x = torch.rand(9, 20) * 2 - 1
    v = torch.randn(9, 16)
    got = []
    for fused in (True, False):
        layer.weight.grad = layer.bias.grad = None
        xr = x.clone().requires_grad_(True)
        layer.stream = NoiseStream.from_seed(2, samples=torch.arange(9))
        out = _output(layer, xr, fused)
        (gx,) = torch.autograd.grad((v * out).sum(), xr, create_graph=True)
        gx.square().sum().backward()
        got.append(layer.weight.grad.clone())
    assert torch.allclose(got[0], got[1], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", ["rram", "photonic"])
def test_fused_node_computes_only_the_gradients_the_pass_asks_for(name, monkeypatch):
    """A DEQ's implicit backward asks ``autograd.grad`` for ∂/∂z alone at every iteration:
    the fused node then skips gᵀx, the weight's scale share and Σg (as autograd's linear
    does), and its ∂/∂x is the full backward's bit for bit; asked for the weight alone, it
    computes the full backward's ∂/∂W."""
    import noisydeq.hardware.gradient as gradient

    seen: list[tuple[bool, bool]] = []
    add = gradient.add_peak_terms

    def spy(grad, err, x, w, grad_x, grad_w):
        seen.append((grad_x is not None, grad_w is not None))
        add(grad, err, x, w, grad_x, grad_w)

    monkeypatch.setattr(gradient, "add_peak_terms", spy)
    torch.manual_seed(4)
    layer = get_device(name, chip=3).deploy(nn.Linear(24, 16))
    set_scaled_gradient(layer)
    x = torch.rand(10, 24) * 2 - 1
    g = torch.randn(10, 16)

    def out(xr):
        layer.stream = NoiseStream.from_seed(5, samples=torch.arange(10))
        return (g * layer(xr)).sum()

    xr = x.clone().requires_grad_(True)
    out(xr).backward()
    full = (xr.grad, layer.weight.grad.clone(), layer.bias.grad.clone())
    assert seen.pop() == (True, True)
    xr = x.clone().requires_grad_(True)
    (gx,) = torch.autograd.grad(out(xr), xr)
    assert seen.pop() == (True, False) and torch.equal(gx, full[0])
    (gw,) = torch.autograd.grad(out(x.clone().requires_grad_(True)), layer.weight)
    assert seen.pop() == (False, True) and torch.equal(gw, full[1])
