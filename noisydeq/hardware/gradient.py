"""Straight-through gradients of a device layer (architecture.md, Devices).

The forward of a :class:`~noisydeq.hardware.layer.DeviceLayer` is the device's output; its
backward is the one of the exact layer (paper Eq. 1 trained hardware-aware), and with
:func:`noisydeq.hardware.controls.set_scaled_gradient` (hardware-aware training) it also
carries the growth of the device error with the weights' and inputs' scale
(:func:`straight_through`, :func:`target_scale`, the fused :class:`PeakScaledLinear` of
RRAM/photonic Linear layers, whose scale is :func:`input_peaks` times max|W|).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from noisydeq.scalars import const


def straight_through(exact: Tensor, device_out: Tensor, scale: Tensor | None = None) -> Tensor:
    """Value of ``device_out`` with the gradient of ``exact`` plus, with ``scale``, that of
    the device error's scale (the *scaled* straight-through estimator).

    The device output is y = W x + e. Plain straight-through (``scale=None``) treats the
    error e as a constant: right for noise whose size does not depend on W or x (additive
    noise at a fixed η). Where e is proportional to a differentiable per-vector scale s(W, x)
    at fixed knobs and draws (a signal-proportional noise: the ``snr`` channel's ‖Wx‖, an
    RRAM or photonic read's max|W|·max|x|), the forward is y = W x + e·s/sg(s) (sg: stop
    gradient; the value is unchanged, s/sg(s) = 1), so the gradient also carries
    e·∇s/s — the reparameterisation gradient of paper Eq. 3-4's noise, whose std follows
    the signal (:func:`noisydeq.noise.multiplicative` lets gradients flow through it too).
    Without it the optimiser never sees that a larger weight or input scale raises the
    noise with the signal, and trains for the exact layer instead. At a target SNR the
    layer's forward passes :func:`target_scale` of s (the knob follows the signal, as
    calibration sets it).

    ``device_out`` is a fresh tensor outside autograd; it is overwritten (one allocation
    fewer per forward). ``scale`` broadcasts against it; where sg(s) = 0 the error is kept
    as a constant.
    """
    if not exact.requires_grad and (scale is None or not scale.requires_grad):
        return device_out
    err = device_out.sub_(exact.detach())
    if scale is None or not scale.requires_grad:
        return exact + err
    held = scale.detach()
    ratio = torch.where(held > 0, scale / torch.where(held > 0, held, 1.0), 1.0)
    return torch.addcmul(exact, err, ratio)


def target_scale(exact: Tensor, scale: Tensor | None) -> Tensor:
    """The error scale of a layer calibrated to a target SNR: s_b = f_b · RMS(Wx) / RMS(f)
    over the batch, f the scale at fixed knobs (``scale``; None: a constant, e.g. the
    additive channel's η).

    Calibration sets the knobs so that the noise power is the signal power over the SNR on
    the layer's calibration inputs: knob ∝ RMS(Wx)/RMS(f) there. A gradient at fixed
    knobs lets the optimiser raise the signal against a noise floor that calibration (the
    next epoch's, and the evaluation's) raises with it; this one follows the calibration,
    with the batch (training data, like the calibration inputs) in their place. It is
    exact for the ``snr`` channels (multiplicative: s = ‖Wx_b‖ up to a constant;
    additive: η ∝ RMS(Wx)) and keeps s homogeneous of degree 1 in W and x."""
    signal = exact.square().mean().sqrt()
    if scale is None:
        return signal
    return scale * (signal / scale.square().mean().sqrt())


def _scale_grad(grad: Tensor, err: Tensor, x: Tensor, w: Tensor) -> tuple[Tensor, ...]:
    """∂L/∂s_b = g_b·err_b/s_b of s_b = max|W| · max|x_b| (Linear rows; 0 where s_b = 0),
    with |x| (rows), max|x_b|, |W| and max|W|."""
    rows = x.reshape(-1, x.shape[-1])
    size = rows.abs()
    peak = size.amax(dim=-1, keepdim=True)
    size_w = w.abs()
    w_max = size_w.amax()
    scale = peak * w_max
    dot = (grad.reshape(-1, err.shape[-1]) * err.reshape(-1, err.shape[-1])).sum(
        dim=-1, keepdim=True)
    # where s_b = 0 the quotient is inf or nan and not taken (constants: noisydeq.scalars)
    c = torch.where(scale > const(0.0, scale), dot / scale, const(0.0, scale))
    return c, size, peak, size_w, w_max


def add_peak_terms(grad: Tensor, err: Tensor, x: Tensor, w: Tensor, grad_x: Tensor | None,
                   grad_w: Tensor | None) -> None:
    """Add the scale's share of ∂L/∂x and ∂L/∂W to ``grad_x`` / ``grad_w`` in place, for
    s_b = max|W| · max|x_b| (Linear rows): ∂L/∂s_b sent to the largest |x_b| and |W|,
    split over ties as ``amax``'s backward splits it (sign · [top] · share)."""
    c, size, peak, size_w, w_max = _scale_grad(grad, err, x, w)
    rows = x.reshape(-1, x.shape[-1])
    if grad_x is not None:
        top = _is_top(size, peak)
        coef = c * w_max / top.sum(dim=-1, keepdim=True, dtype=c.dtype)  # exact counts
        grad_x.add_((rows.sign() * top * coef).reshape(grad_x.shape))
    if grad_w is not None:
        top_w = _is_top(size_w, w_max)
        grad_w.add_(w.sign() * top_w * ((c * peak).sum() / top_w.sum(dtype=c.dtype)))


def _is_top(size: Tensor, peak: Tensor) -> Tensor:
    """``size == peak`` as 1.0 / 0.0 in ``size``'s dtype: the values a bool mask takes in
    the products and counts above (sign · 1.0 or sign · 0.0, zeros' signs included), made
    by a float-output comparison. A bool mask in float arithmetic takes torch's
    mixed-dtype path: on a 128×128 layer the compare, product and count cost 11, 17 and
    13 µs against 3, 6 and 2 µs (torch 2.13 CPU, one thread)."""
    return torch.eq(size, peak, out=torch.empty_like(size))


class PeakScaledLinear(torch.autograd.Function):
    """A Linear device layer's training forward as one autograd node: the value
    ``W x + (y − W x) + b`` (``y`` the device read, without bias) and the gradient of
    :func:`straight_through` with s = max|W| · max|x| per input vector
    (:meth:`DeviceLayer.peak_scale`, RRAM and photonic): the exact layer's
    g·W, gᵀx and Σg, plus the scale's share (:func:`add_peak_terms`).

    The same values as building ``exact + err·s/sg(s) + b`` from autograd's own nodes
    (linear, amax, add; ``tests/test_hwaware.py`` checks it bit for bit), with one node
    instead of seven and no graph of s: fewer tensor operations per training step.
    ``y`` is a fresh tensor outside autograd; it is overwritten."""

    @staticmethod
    def forward(ctx: Any, y: Tensor, x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
        exact = F.linear(x, w)
        err = y.sub_(exact)
        out = exact.add_(err) if b is None else torch.add(exact, err).add_(b)
        ctx.save_for_backward(err, x, w)
        ctx.has_bias = b is not None
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[None, Tensor | None, Tensor | None,
                                                   Tensor | None]:
        err, x, w = ctx.saved_tensors
        # only the gradients this backward pass uses (a DEQ's implicit backward asks for
        # ∂/∂z alone at every iteration: no gᵀx, no W share, no Σg there), as autograd's
        # own linear backward skips them
        # (next_functions has no entry for a None bias)
        nodes = [node for node, _ in ctx.next_functions[1:4]]
        need_x, need_w, need_b = (need and _engine_runs(node) for need, node in zip(
            ctx.needs_input_grad[1:4], nodes + [None] * (3 - len(nodes)), strict=True))
        # autograd's linear backward, then the scale's share added
        grad_x = grad.mm(w) if need_x else None
        grad_w = grad.t().mm(x) if need_w else None
        add_peak_terms(grad, err, x, w, grad_x, grad_w)
        grad_b = None
        if need_b and ctx.has_bias:
            grad_b = grad.sum(0)
        return None, grad_x, grad_w, grad_b


def _engine_runs(node: Any) -> bool:
    """Whether the running backward pass will use the gradient sent to ``node`` (the next
    node of an input): False where ``torch.autograd.grad`` asks for other inputs only.
    Where torch cannot tell (a leaf that ``autograd.grad`` captures), True."""
    if node is None:
        return False
    try:
        return bool(torch._C._will_engine_execute_node(node))
    except (RuntimeError, AttributeError):
        return True


def input_peaks(x: Tensor, op: str, conv: Mapping[str, Any] | None = None,
                kernel: Sequence[int] = ()) -> Tensor:
    """max |x| of every input vector of a layer's input ``x``, shaped to broadcast against
    its output: Linear (..., 1); Conv (B, 1, *out) — the largest |x| of each ``kernel``
    patch over all input channels (max pooling with the convolution's stride, padding and
    dilation ``conv``; zero padding never wins over |x| ≥ 0)."""
    if op == "linear":
        return x.abs().amax(dim=-1, keepdim=True)
    conv = conv or {}
    pad = [p for p in reversed(conv["padding"]) for _ in (0, 1)]  # F.pad: last dim first
    peak = F.pad(x.abs().amax(dim=1, keepdim=True), pad)
    pool = F.max_pool1d if op == "conv1d" else F.max_pool2d
    return pool(peak, kernel_size=tuple(kernel), stride=conv["stride"],
                dilation=conv["dilation"])
