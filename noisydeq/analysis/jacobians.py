"""Per-sample Jacobians of batched cell functions (autograd, ``torch.func``).

The analyses differentiate a cell f(z, ξ, c) — state z, noise vector ξ, per-sample context c
(usually the input injection x̃) — one sample at a time. Every function here takes a batched
callable (rows are samples) and returns per-sample Jacobians by running ``jacrev`` under
``vmap``, each row seen by the callable as a batch of one, so code written for batches
(noise scaled per sample, ``nn.Linear``) works unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

CellFn = Callable[[Tensor, Tensor, Tensor], Tensor]
"""f(z, ξ, c) -> z', all batched along dim 0."""


def _row(fn: CellFn) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    """The single-sample version of a batched callable (adds and drops a batch dim of 1)."""

    def g(z: Tensor, xi: Tensor, ctx: Tensor) -> Tensor:
        return fn(z.unsqueeze(0), xi.unsqueeze(0), ctx.unsqueeze(0)).squeeze(0)

    return g


def jacobians(
    fn: CellFn, z: Tensor, xi: Tensor, ctx: Tensor, wrt: tuple[int, ...] = (0, 1),
    chunk_size: int | None = None,
) -> tuple[Tensor, ...]:
    """Per-sample Jacobians ∂f/∂z and/or ∂f/∂ξ, each (B, d_out, d_in).

    ``wrt`` picks the arguments (0 = z, 1 = ξ). Exact (reverse-mode autograd), no finite
    differences.
    """
    jac = torch.func.jacrev(_row(fn), argnums=wrt)
    out = torch.func.vmap(jac, chunk_size=chunk_size)(z, xi, ctx)
    return tuple(out)


def jvp_fn(fn: CellFn, z: Tensor, xi: Tensor, ctx: Tensor) -> Callable[[Tensor], Tensor]:
    """v ↦ J_z v at (z, ξ, c) for a batch of tangents v (B, d): one forward-mode JVP per call.

    Used by the power method (Jacobian spectral radius at the fixed point) so the d×d
    Jacobian is never formed.
    """
    z = z.detach()

    def apply(v: Tensor) -> Tensor:
        return torch.func.jvp(lambda zz: fn(zz, xi, ctx), (z,), (v,))[1]

    return apply
