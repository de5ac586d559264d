"""Interval arithmetic of interval bound propagation (IBP; Gowal et al. 2018, Wei & Kolter
2022 Eq. 2.3) through explicit layers, with optional uncertain weights and additive error.

An :class:`Interval` holds elementwise bounds lo ≤ x ≤ hi of a batch-first tensor.

* Affine layers use the midpoint–radius form: for x = μ ± ρ and weights W ± Δ (Δ ≥ 0, the
  device envelope), W'x ∈ Wμ ± (|W|ρ + Δ(|μ| + ρ)) (Rump's interval matrix product; with
  Δ = 0 it is exactly Eq. 2.3's ``W₊x̄ + W₋x̲``). An additive error bound ±e (dynamic device
  noise) widens the result.
* Per-feature affine maps (BatchNorm in eval mode or with given batch statistics) use the
  sign of the scale; monotone activations map the end points; SiLU's minimum is handled.
* Average pooling has non-negative weights: it maps the end points.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from noisydeq.errors import NoisyDEQError

#: x where SiLU(x) = x·sigmoid(x) is smallest (root of 1 + x(1 − sigmoid(x)) = 0)
SILU_ARGMIN = -1.2784645427610738


@dataclass
class Interval:
    """Elementwise bounds ``lo ≤ x ≤ hi`` of a batch-first tensor."""

    lo: Tensor
    hi: Tensor

    @classmethod
    def box(cls, x: Tensor, eps: float, clip: tuple[float, float] | None = (0.0, 1.0)
            ) -> Interval:
        """The ℓ∞ ball of radius ``eps`` around ``x``, intersected with ``clip`` (the valid
        input range; None = no intersection)."""
        lo, hi = x - eps, x + eps
        if clip is not None:
            lo, hi = lo.clamp(clip[0], clip[1]), hi.clamp(clip[0], clip[1])
        return cls(lo, hi)

    @property
    def mid(self) -> Tensor:
        return (self.hi + self.lo) / 2

    @property
    def rad(self) -> Tensor:
        return (self.hi - self.lo) / 2

    def map(self, fn) -> Interval:
        """Apply an elementwise non-decreasing ``fn`` (or a reshape) to both ends."""
        return Interval(fn(self.lo), fn(self.hi))

    def add(self, t: Tensor) -> Interval:
        return Interval(self.lo + t, self.hi + t)

    def widen(self, e: Tensor | float) -> Interval:
        """[lo − e, hi + e] (an additive error bound |ε| ≤ e)."""
        return Interval(self.lo - e, self.hi + e)

    def abs_max(self) -> Tensor:
        """Per-sample max |x| over all features (B,)."""
        big = torch.maximum(self.lo.abs(), self.hi.abs())
        return big.reshape(big.shape[0], -1).amax(dim=1)

    def contains(self, x: Tensor, tol: float = 0.0) -> Tensor:
        """(B,) bool: every feature of sample b of ``x`` lies in the interval (± ``tol``)."""
        ok = (x >= self.lo - tol) & (x <= self.hi + tol)
        return ok.reshape(ok.shape[0], -1).all(dim=1)


def conv_args(module: nn.Module) -> dict:
    """stride / padding / dilation of a Conv2d (or of a deployed conv layer)."""
    if isinstance(module, nn.Conv2d):
        if module.groups != 1 or isinstance(module.padding, str):
            raise NoisyDEQError("certify: convolutions need groups=1 and integer padding")
        return {"stride": module.stride, "padding": module.padding, "dilation": module.dilation}
    conv = getattr(module, "conv", None)
    if conv:  # a DeviceLayer keeps the conv arguments of the layer it replaced
        return dict(conv)
    raise NoisyDEQError(f"certify: cannot read the convolution of {type(module).__name__}")


def is_conv(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) or getattr(module, "op", None) == "conv2d"


def linear_op(module: nn.Module, x: Tensor, weight: Tensor) -> Tensor:
    """The layer's product with ``weight`` (no bias)."""
    if is_conv(module):
        return F.conv2d(x, weight, None, **conv_args(module))
    return F.linear(x, weight)


def affine(module: nn.Module, iv: Interval, delta: Tensor | None = None,
           err: Tensor | None = None) -> Interval:
    """Interval of ``module(x)`` (Linear/Conv2d, digital or deployed) for x in ``iv``,
    weights in W ± ``delta``, plus an additive error bound ``err`` (broadcast to the output).
    """
    w, b = module.weight, module.bias
    mu, rho = iv.mid, iv.rad
    centre = linear_op(module, mu, w)
    radius = linear_op(module, rho, w.abs())
    if delta is not None:
        radius = radius + linear_op(module, mu.abs() + rho, delta)
    if err is not None:
        radius = radius + err
    if b is not None:
        shape = (1, -1) + (1,) * (centre.ndim - 2)
        centre = centre + b.reshape(shape)
    return Interval(centre - radius, centre + radius)


def scale_shift(iv: Interval, s: Tensor, t: Tensor) -> Interval:
    """Interval of s ⊙ x + t (per-feature s, t broadcast over x)."""
    a, b = s * iv.lo, s * iv.hi
    return Interval(torch.minimum(a, b) + t, torch.maximum(a, b) + t)


def bn_affine(bn: nn.Module, clean: Tensor) -> tuple[Tensor, Tensor]:
    """(s, t) with BN(x) = s ⊙ x + t, shaped to broadcast over ``clean``.

    Training mode: the statistics of the clean batch ``clean`` (what the layer normalises the
    clean batch with; the bounds are computed with the same, as in Gowal et al. and Shi et
    al.); eval mode: the running statistics.
    """
    dims = [0] + list(range(2, clean.ndim))
    if bn.training or bn.running_mean is None:
        mean = clean.mean(dim=dims)
        var = clean.var(dim=dims, unbiased=False)
    else:
        mean, var = bn.running_mean, bn.running_var
    s = torch.rsqrt(var + bn.eps)
    if bn.weight is not None:
        s = s * bn.weight
    t = -mean * s + (bn.bias if bn.bias is not None else 0.0)
    shape = (1, -1) + (1,) * (clean.ndim - 2)
    return s.reshape(shape), t.reshape(shape)


def activation(name: str, iv: Interval) -> Interval:
    """Interval of a scalar activation (``relu``, ``identity``, ``tanh``, ``silu``)."""
    if name == "relu":
        return iv.map(torch.relu)
    if name == "identity":
        return iv
    if name == "tanh":
        return iv.map(torch.tanh)
    if name == "silu":
        lo_v, hi_v = F.silu(iv.lo), F.silu(iv.hi)
        floor = torch.full_like(iv.lo, F.silu(torch.tensor(SILU_ARGMIN)).item())
        inside = (iv.lo <= SILU_ARGMIN) & (iv.hi >= SILU_ARGMIN)
        lo = torch.where(inside, floor, torch.minimum(lo_v, hi_v))
        return Interval(lo, torch.maximum(lo_v, hi_v))
    raise NoisyDEQError(f"certify: no interval rule for activation '{name}'")
