"""Operator-splitting maps for monotone ReLU DEQs, solved by the shared solver loop.

A monotone DEQ z = relu(W z + v) with I − W ⪰ m·I (Winston & Kolter 2020) is the zero of
the sum of the monotone operators (I − W)z − v and ∂f (f the indicator of z ≥ 0, whose
resolvent is the ReLU). Its splitting solvers (Wei & Kolter 2022, App. A-B) are fixed-point
iterations of one *map*, so they run through :func:`noisydeq.solvers.solve` with any
registered method (``unroll`` = the plain splitting iteration, ``anderson`` = the paper's
"forward-backward with Anderson acceleration"), with the shared stop rules, divergence
flags, traces and ``Solution`` record. The registry's methods only ever see a map f; the
splitting is a property of the map, so no new solver method is needed:

* forward–backward (Eq. A.1 / A.3):  f_α(z) = relu((1 − α) z + α (W z + v)), state z.
  Its fixed points are those of z = relu(W z + v) for every α > 0 (Lemma A.1: coordinates
  with positive pre-activation agree, the others are 0 in both). It converges for
  α < 2m/‖I − W‖² (strongly monotone and Lipschitz).
* Peaceman–Rachford (Winston & Kolter 2020, Alg. 1): state u with z = relu(u),
  T(u) = 2 R(2 relu(u) − u + α v) − (2 relu(u) − u), R = (I + α(I − W))⁻¹ — converges for
  every α > 0 but needs the linear resolvent R (a dense LU factorisation, or conjugate
  gradients on the normal equations for a convolution), so it is a digital solver.

``solve_splitting`` returns a ``Solution`` whose ``z`` is the DEQ state in every case (for
Peaceman–Rachford, relu of the returned u).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import Tensor

from noisydeq.errors import NoisyDEQError
from noisydeq.solvers import Solution, solve
from noisydeq.specs.solver import SolverSpec

Map = Callable[[Tensor], Tensor]
SPLITTINGS = ("fb", "pr")


def forward_backward(pre: Map, alpha: float) -> Map:
    """f_α(z) = relu((1 − α) z + α (W z + v)) (Eq. A.1); ``pre(z)`` = W z + v (the cell's
    pre-activation, where a noisy cell also draws its state and signal noise)."""
    if alpha == 1.0:
        return lambda z: torch.relu(pre(z))
    return lambda z: torch.relu((1.0 - alpha) * z + alpha * pre(z))


def peaceman_rachford(resolvent: Map, v: Tensor, alpha: float) -> Map:
    """T(u) = 2 R(2 relu(u) − u + α v) − (2 relu(u) − u) (Winston & Kolter, Alg. 1);
    ``resolvent(r)`` = (I + α(I − W))⁻¹ r."""

    def step(u: Tensor) -> Tensor:
        half = 2.0 * torch.relu(u) - u
        return 2.0 * resolvent(half + alpha * v) - half

    return step


def dense_resolvent(weight: Tensor, alpha: float) -> Map:
    """r ↦ (I + α(I − W))⁻¹ r for a dense W (one LU factorisation, reused every step)."""
    n = weight.shape[0]
    eye = torch.eye(n, dtype=weight.dtype, device=weight.device)
    lu, piv = torch.linalg.lu_factor((1.0 + alpha) * eye - alpha * weight)

    def apply(r: Tensor) -> Tensor:
        flat = r.reshape(r.shape[0], -1)
        return torch.linalg.lu_solve(lu, piv, flat.T).T.reshape(r.shape)

    return apply


def cg_resolvent(linear: Map, linear_t: Map, alpha: float, tol: float = 1e-10,
                 max_iter: int = 500) -> Map:
    """r ↦ (I + α(I − W))⁻¹ r by conjugate gradients on the normal equations AᵀA x = Aᵀ r,
    A = (1 + α) I − α W (per sample; for convolutional W, which has no cheap factorisation).
    A is well conditioned: its symmetric part is ⪰ (1 + α m) I."""

    def a(x: Tensor) -> Tensor:
        return (1.0 + alpha) * x - alpha * linear(x)

    def at(x: Tensor) -> Tensor:
        return (1.0 + alpha) * x - alpha * linear_t(x)

    def dot(p: Tensor, q: Tensor) -> Tensor:
        return (p * q).reshape(p.shape[0], -1).sum(1).reshape(-1, *([1] * (p.ndim - 1)))

    def apply(r: Tensor) -> Tensor:
        x = r.clone()
        res = at(r - a(x))
        p = res.clone()
        rr = dot(res, res)
        stop = tol * tol * dot(at(r), at(r)).clamp(min=torch.finfo(r.dtype).tiny)
        for _ in range(max_iter):
            if bool((rr <= stop).all()):
                break
            ap = at(a(p))
            step = rr / dot(p, ap).clamp(min=torch.finfo(r.dtype).tiny)
            x = x + step * p
            res = res - step * ap
            rr_new = dot(res, res)
            p = res + (rr_new / rr.clamp(min=torch.finfo(r.dtype).tiny)) * p
            rr = rr_new
        return x

    return apply


def check_splitting(name: str, alpha: float) -> None:
    """Validate a splitting name and its step α (one line naming the field)."""
    if name not in SPLITTINGS:
        raise NoisyDEQError(
            f"monotone.splitting: unknown splitting '{name}' (allowed: {', '.join(SPLITTINGS)})"
        )
    if not alpha > 0 or (name == "fb" and alpha > 1.0):
        allowed = "(0, 1]" if name == "fb" else "(0, inf)"
        raise NoisyDEQError(f"monotone.alpha: must lie in {allowed} for '{name}', got {alpha}")


def solve_splitting(
    name: str,
    alpha: float,
    pre: Map,
    z0: Tensor,
    spec: SolverSpec,
    *,
    resolvent: Map | None = None,
    v: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Solution:
    """Solve z = relu(W z + v) from ``z0`` by splitting ``name`` (``fb``/``pr``) with
    ``spec``'s method, stop rule and cap; ``pre(z)`` = W z + v. Peaceman–Rachford also needs
    ``resolvent`` and the injection ``v`` (and starts from u = ``z0``). Returns a
    ``Solution`` whose ``z`` is the DEQ state (relu of u for Peaceman–Rachford).
    """
    check_splitting(name, alpha)
    if name == "fb":
        return solve(forward_backward(pre, alpha), z0, spec, generator=generator)
    if resolvent is None or v is None:
        raise NoisyDEQError("monotone.splitting: 'pr' needs the resolvent of W and v")
    sol = solve(peaceman_rachford(resolvent, v, alpha), z0, spec, generator=generator)
    return dataclasses.replace(sol, z=torch.relu(sol.z))
