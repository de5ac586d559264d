"""Model-level interval bounds and margin certificates (Wei & Kolter 2022 §2-3, App. B).

:func:`bounds` runs the clean forward of a model and, alongside it, interval bound
propagation of the ε-box around the input: through the explicit layers
(:mod:`noisydeq.certify.interval`), through a monotone DEQ by its interval equilibrium
(:mod:`noisydeq.certify.fixed_point`), and finally into lower bounds on the logit margins
logit_y − logit_j with the last linear layer *elided* (Gowal et al. 2018; App. B): the
output BN, the pooling and the head are one affine map T, and the margin c_jᵀT(z) is
bounded directly, which is tighter than bounding the logits first. A sample is certified
when every margin bound is positive (Eq. 2.1).

Supported models: ``mondeq`` (``ibp``/``lben`` always; ``mon`` when I − |W| is PD — see
:mod:`noisydeq.certify.checks`), ``ffw_relu`` and the tanh ``ffw`` (explicit networks:
plain IBP). With an :class:`~noisydeq.certify.envelope_types.Envelope` each device-mapped
layer's weights are uncertain (W ± Δ) and its reads may add a bounded error; the bounds then
hold for every chip in the envelope (for a DEQ: every equilibrium of such a chip).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from noisydeq.certify.envelope_types import Envelope, LayerEnvelope
from noisydeq.certify.fixed_point import interval_equilibrium
from noisydeq.certify.interval import (
    Interval,
    activation,
    affine,
    bn_affine,
    is_conv,
    scale_shift,
)
from noisydeq.errors import NoisyDEQError


@dataclass
class Bounds:
    """Clean logits, margin lower bounds (B, K) (+inf at the true class) and details."""

    logits: Tensor
    margins: Tensor
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def certified(self) -> Tensor:
        """(B,) bool: every margin bound is positive."""
        return (self.margins > 0).all(dim=1)

    def worst_logits(self) -> Tensor:
        """Worst-case logits −margin_j (0 at the true class) for the IBP loss."""
        return -torch.where(torch.isinf(self.margins), torch.zeros_like(self.margins),
                            self.margins)


class _Layers:
    """Envelope look-up by module (names as in ``model.named_modules()``)."""

    def __init__(self, model: nn.Module, envelope: Envelope | None) -> None:
        self.names = {id(m): n for n, m in model.named_modules()}
        self.envelope = envelope

    def get(self, module: nn.Module) -> LayerEnvelope | None:
        if self.envelope is None:
            return None
        return self.envelope.layer(self.names.get(id(module), ""))

    def affine(self, module: nn.Module, iv: Interval) -> Interval:
        le = self.get(module)
        if le is None:
            return affine(module, iv)
        err = le.dyn_bound(iv.abs_max(), 4 if is_conv(module) else 2)
        return affine(module, iv, le.delta, err)


def elided_margins(head: nn.Module, iv: Interval, y: Tensor, *, scale: Tensor | None = None,
                   shift: Tensor | None = None, layers: _Layers | None = None) -> Tensor:
    """Lower bounds (B, K) on logit_y − logit_j for features in ``iv`` (already pooled),
    logits = head(s ⊙ f + t) with the optional per-feature affine (s, t) folded into the
    head. +inf at j = y. A head inside the envelope has rows W_j ± Δ_j and read error ±e_j.
    """
    w, b = head.weight, head.bias
    if scale is not None:
        if b is None:
            b = torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
        b = b + w @ shift.reshape(-1)
        w = w * scale.reshape(1, -1)
    le = None if layers is None else layers.get(head)
    c = w[y][:, None, :] - w[None, :, :]  # (B, K, n) rows of the margins
    off = (b[y][:, None] - b[None, :]) if b is not None else 0.0
    mu, rho = iv.mid, iv.rad
    lb = torch.einsum("bkn,bn->bk", c, mu) - torch.einsum("bkn,bn->bk", c.abs(), rho) + off
    if le is not None:
        dlt = le.delta if scale is None else le.delta * scale.reshape(1, -1).abs()
        spread = dlt[y][:, None, :] + dlt[None, :, :]
        lb = lb - torch.einsum("bkn,bn->bk", spread, mu.abs() + rho)
        if le.dyn is not None:
            # the head reads s⊙f + t (digital BN before it): its max |input|
            big = torch.maximum((iv.lo * (scale if scale is not None else 1.0)).abs(),
                                (iv.hi * (scale if scale is not None else 1.0)).abs())
            if shift is not None:
                big = big + shift.reshape(1, -1).abs()
            e = le.dyn[None, :] * big.amax(dim=1, keepdim=True)
            lb = lb - (e[torch.arange(len(y)), y][:, None] + e)
    return lb.masked_fill(torch.nn.functional.one_hot(y, w.shape[0]).bool(), torch.inf)


def _injection(model: nn.Module, x: Tensor, iv: Interval, layers: _Layers) -> Interval:
    """Interval of act(BN(U x)) (the shared first layer of mondeq and ffw_relu); BN's
    statistics are those of the clean batch in training mode (recomputed, no side effect)."""
    proj = model.proj
    a_iv = layers.affine(proj.U, iv)
    if proj.bn is not None:
        s, t = bn_affine(proj.bn, proj.U(proj.shaped(x)))
        a_iv = scale_shift(a_iv, s, t)
    return activation(proj.act_name, a_iv)


def _head_affine(model: nn.Module, z: Tensor, iv: Interval) -> tuple[nn.Module, Interval,
                                                                        Tensor | None,
                                                                        Tensor | None]:
    """(linear head, pooled interval, s, t) of head(pool(BN(z)))."""
    bn = getattr(model, "out_bn", None)
    s = t = None
    if bn is not None:
        s, t = bn_affine(bn, z)
    head = model.head
    if isinstance(head, nn.Linear) or hasattr(head, "weight"):
        if s is not None:
            s, t = s.reshape(-1), t.reshape(-1)
        return head, iv, s, t
    pooled = iv.map(lambda u: head.pool(u).flatten(1))
    if s is not None:
        p = head.pool.output_size
        n = p * p if isinstance(p, int) else p[0] * p[1]
        s = s.reshape(-1).repeat_interleave(n)
        t = t.reshape(-1).repeat_interleave(n)
    return head.linear, pooled, s, t


def _mondeq(model, x, y, iv, layers, info, margin) -> tuple[Tensor, Tensor]:
    out = model(x, return_solution=True)
    v_iv = _injection(model, x, iv, layers).add(model.cell.bias)
    le = layers.get(model.cell.M) if model.cell.param != "mon" else None
    eq = interval_equilibrium(model, v_iv, layer_env=le, margin=margin)
    info.update(solution=out.solution, interval=eq)
    head, piv, s, t = _head_affine(model, out.z, eq.z)
    return out.logits, elided_margins(head, piv, y, scale=s, shift=t, layers=layers)


def _relu_ffw(model, x, y, iv, layers, info) -> tuple[Tensor, Tensor]:
    """Clean pass (layer by layer, as the model's forward) and interval pass together."""
    z = model.proj(x)
    z_iv = _injection(model, x, iv, layers)
    for layer in model.layers:
        a = layer.W(z)
        a_iv = layers.affine(layer.W, z_iv)
        if layer.bn is not None:
            s, t = bn_affine(layer.bn, a)
            a_iv = scale_shift(a_iv, s, t)
            a = layer.bn(a)
        z, z_iv = torch.relu(a), a_iv.map(torch.relu)
    head, piv, s, t = _head_affine(model, z, z_iv)
    return model.head(z), elided_margins(head, piv, y, scale=s, shift=t, layers=layers)


def _act_name(proj: nn.Module) -> str:
    from noisydeq.models.cells import INPUT_ACTS

    name = getattr(proj, "act_name", None)
    if name is None:
        name = next((k for k, fn in INPUT_ACTS.items() if fn is proj.act), "")
    return name


def _tanh_ffw(model, x, y, iv, layers, info) -> tuple[Tensor, Tensor]:
    logits = model(x)
    proj = model.proj
    xt = activation(_act_name(proj), layers.affine(proj.U, iv))
    if model.form == "eq57":
        z = Interval(torch.zeros_like(xt.lo), torch.zeros_like(xt.hi))
        inj = xt
    else:
        z, inj = xt, Interval(torch.zeros_like(xt.lo), torch.zeros_like(xt.hi))
    for layer in model.layers:
        a = layers.affine(layer.W, z)
        z = Interval(a.lo + inj.lo, a.hi + inj.hi).map(torch.tanh)
    head = model.head
    if not isinstance(head, nn.Linear):
        z = z.map(lambda u: head.pool(u).flatten(1))
        head = head.linear
    return logits, elided_margins(head, z, y, layers=layers)


def bounds(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    *,
    envelope: Envelope | None = None,
    clip: tuple[float, float] | None = (0.0, 1.0),
    margin: float | None = None,
) -> Bounds:
    """Clean logits and elided margin bounds of ``model`` for the ε-box around ``x``
    (intersected with ``clip``), labels ``y``; ``margin``: the interval margin μ of a DEQ
    (computed when None; pass it to avoid recomputing per batch). Gradients flow when grad
    is enabled (IBP training). Unsupported models: one clear line
    (:func:`noisydeq.certify.checks.check_certifiable`)."""
    if eps < 0:
        raise NoisyDEQError(f"eps: must be ≥ 0, got {eps:g}")
    kind = getattr(model, "kind", None)
    layers = _Layers(model, envelope)
    info: dict[str, Any] = {}
    if kind == "mondeq":
        xs = model.proj.shaped(x)
        iv = Interval.box(xs, eps, clip)
        logits, margins = _mondeq(model, x, y, iv, layers, info, margin)
    elif kind == "ffw_relu":
        iv = Interval.box(model.proj.shaped(x), eps, clip)
        logits, margins = _relu_ffw(model, x, y, iv, layers, info)
    elif kind == "ffw" and hasattr(model, "layers"):
        xs = x
        if hasattr(model.proj, "in_shape") and xs.ndim == 2:
            xs = xs.reshape(xs.shape[0], *model.proj.in_shape)
        logits, margins = _tanh_ffw(model, xs, y, Interval.box(xs, eps, clip), layers, info)
    else:
        from noisydeq.certify.checks import check_certifiable

        check_certifiable(model)
        raise NoisyDEQError(f"certify: no interval rule for model kind {kind!r}")
    return Bounds(logits, margins, info)
