"""The ℓ∞ / ℓ2 geometry of a PGD step (Madry et al. 2018): ascent direction, projection
onto the ε-ball around x, random start, and the box [lo, hi] of valid inputs.

All functions are per sample (batch first, any trailing shape). The ℓ2 forms follow
torchattacks' ``PGDL2`` (normalised gradient, radial projection, random start of uniform
radius in a uniform direction) so both give the same iterates for the same start.

Random draws come from a :class:`~noisydeq.noise.NoiseStream` (counter-based: a sample's
numbers are a function of the seed, its row and how many draws it made, whatever else is
in the batch) or a ``torch.Generator`` (:func:`draw`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from noisydeq.noise import NoiseStream

#: where an attack's random numbers come from (``None``: torch's global generator)
Source = NoiseStream | torch.Generator | None

#: added to per-sample norms before dividing (torchattacks uses 1e-10)
TINY = 1e-10


def _norms(t: Tensor) -> Tensor:
    """Per-sample ℓ2 norms shaped to broadcast against ``t``."""
    n = t.reshape(t.shape[0], -1).norm(dim=1)
    return n.reshape(-1, *([1] * (t.ndim - 1)))


def direction(grad: Tensor, norm: str) -> Tensor:
    """Steepest ascent direction of unit ``norm``: sign(g) (ℓ∞) or g/‖g‖₂ (ℓ2)."""
    if norm == "linf":
        return grad.sign()
    return grad / (_norms(grad) + TINY)


def project(delta: Tensor, eps: float, norm: str) -> Tensor:
    """Closest point to ``delta`` in the ε-ball: clamp (ℓ∞) or radial shrink (ℓ2)."""
    if norm == "linf":
        return delta.clamp(-eps, eps)
    n = _norms(delta)
    return delta * torch.clamp(eps / (n + TINY), max=1.0) if eps > 0 else torch.zeros_like(delta)


def draw(source: Source, kind: str, shape: Sequence[int], like: Tensor) -> Tensor:
    """A ``randn`` / ``rand`` tensor of ``shape`` (batch first) with ``like``'s dtype and
    device, from ``source``."""
    if isinstance(source, NoiseStream):
        fn = source.randn if kind == "randn" else source.rand
        return fn(tuple(shape), like.dtype, like.device)
    fn = torch.randn if kind == "randn" else torch.rand
    return fn(tuple(shape), generator=source, dtype=like.dtype, device=like.device)


def random_start(x: Tensor, eps: float, norm: str, generator: Source) -> Tensor:
    """A random δ in the ε-ball: uniform in the cube (ℓ∞) or uniform radius and direction (ℓ2)."""
    if norm == "linf":  # (2u − 1)·ε, in place on the fresh draw (same rounding)
        return draw(generator, "rand", x.shape, x).mul_(2).sub_(1).mul_(eps)
    d = draw(generator, "randn", x.shape, x)
    r = draw(generator, "rand", (x.shape[0],), x)
    r = r.reshape(-1, *([1] * (x.ndim - 1)))
    return d * (r / (_norms(d) + TINY) * eps)


def clip_box(x: Tensor, box: tuple[float, float] | None) -> Tensor:
    """``x`` clamped to the valid input range (``None``: unbounded)."""
    return x if box is None else x.clamp(box[0], box[1])
