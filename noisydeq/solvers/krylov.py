"""GMRES for the IFT backward linear system (I − J_fᵀ) u = v, batched per sample (App. C).

The implicit gradient needs u = (I − J_fᵀ)⁻¹ v (paper App. C; closer-look paper Eq. 3). A
fixed-point method iterates u ← J_fᵀ u + v, which converges only where the spectral radius
ρ(J_f) < 1 and slows as ρ → 1 (the Neumann series). The system is linear, so a Krylov
method solves it directly: GMRES (Saad & Schultz 1986) picks, after j products with J_fᵀ,
the u in u⁰ + span{r⁰, A r⁰, …, A^{j−1} r⁰} (A = I − J_fᵀ, r⁰ = v − A u⁰) with the smallest
residual ‖v − A u‖. Its residual never grows, and it converges wherever A is nonsingular
— also where ρ(J_f) ≥ 1 and the fixed-point iteration diverges.

Batched: every sample has its own system (rows never mix); each iteration makes one
vector–Jacobian product for the whole batch and orthogonalises it against the sample's
basis (classical Gram–Schmidt, with a second pass where the first cancelled most of the
vector, which keeps the basis orthogonal to working precision); each sample's (j+1)×j
least-squares problem is updated by one Givens rotation in float64. No restart:
``max_iter`` products after the initial residual's, so the basis takes B·(max_iter+1)·D numbers.
A sample stops when ``stop`` (``rel``: ‖r‖/‖f(u)‖, the fixed-point rule ‖f(u) − u‖/‖f(u)‖ with
f(u) = J_fᵀu + v = u + r; ``abs``: ‖r‖) is below ``tol``; like the fixed-point solvers it
returns f(u) (one free step). The residual is the Arnoldi recurrence's (equal to v − A u in
exact arithmetic), so a stop costs no extra product.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from noisydeq.errors import NoisyDEQError
from noisydeq.solvers.batched import coefs, combine
from noisydeq.solvers.solution import Solution, describe, empty_traces
from noisydeq.specs.solver import SolverSpec

KRYLOV_STOPS = ("abs", "rel")
#: a second Gram–Schmidt pass when the first left less than this share of ‖w‖ (Kahan's
#: "twice is enough" criterion, Parlett 1980 §6.9); the batch takes it when any running
#: sample needs it
REORTH = 0.5 ** 0.5


def _matvec(m: Tensor, x: Tensor) -> Tensor:
    """(B, n) = M_b x_b for the small float64 matrices (a multiply-sum: 2x faster than a
    batched GEMV at these sizes on CPU)."""
    return (m * x.unsqueeze(1)).sum(dim=2)


def gmres(jt: Callable[[Tensor], Tensor], v: Tensor, u0: Tensor, spec: SolverSpec) -> Solution:
    """Solve (I − J_fᵀ) u = v per sample from ``u0``; ``jt(p)`` = J_fᵀ p (shaped like v).

    ``spec``: ``max_iter`` (products with J_fᵀ after the one for the initial residual),
    ``tol`` and ``stop`` (``abs`` or ``rel``); its other fields do not apply. Returns a
    :class:`Solution` whose ``steps`` count the products per sample (the initial one
    included), ``converged`` the samples that met the rule, ``diverged`` those with a
    non-finite or singular step (they return the last finite f(u), else ``u0``).
    """
    if spec.stop not in KRYLOV_STOPS:
        raise NoisyDEQError(
            f"gmres: stop '{spec.stop}' is not available (allowed: {', '.join(KRYLOV_STOPS)})"
        )
    shape = v.shape
    b = shape[0]
    vf = v.reshape(b, -1)
    dt, dev = vf.dtype, vf.device
    m = spec.max_iter

    def apply(p: Tensor) -> Tensor:  # A p = p − J_fᵀ p
        return p - jt(p.reshape(shape)).reshape(b, -1)

    u0f = u0.reshape(b, -1).to(dt)
    r0 = vf - apply(u0f)
    beta = r0.norm(dim=1)
    tiny = torch.finfo(dt).tiny
    tol = spec.tol

    def met(r_norm: Tensor, fu: Tensor) -> Tensor:
        if spec.stop == "abs":
            return r_norm < tol
        return r_norm < tol * fu.norm(dim=1)

    basis = torch.empty(b, m + 1, vf.shape[1], dtype=dt, device=dev)
    basis[:, 0] = r0 / beta.clamp_min(tiny)[:, None]
    # The least-squares problem min ‖β e₁ − H y‖ by Givens rotations, their product kept
    # as a dense matrix Q (a new Hessenberg column is rotated by one batched product, not
    # j sequential ones): Q H = R upper triangular, Q β e₁ = g, residual |g_{j+1}|. R⁻¹ is
    # grown a column at a time, so y = R⁻¹ g is one product, and f(u) = u + r = u⁰ + V c
    # with c = (y, 0) + Qᵀ(0, …, g_{j+1}); ‖f(u)‖² = ‖u⁰‖² + 2 c·Vᵀu⁰ + ‖c‖². u itself is
    # formed once, at the end, from each sample's c at its stop.
    f64 = {"dtype": torch.float64, "device": dev}
    q = torch.eye(m + 1, **f64).expand(b, m + 1, m + 1).clone()
    rinv = torch.zeros(b, m, m, **f64)
    g = torch.zeros(b, m + 1, **f64)
    g[:, 0] = beta.double()
    vtu0 = torch.zeros(b, m + 1, **f64)  # Vᵀ u⁰
    vtu0[:, 0] = (basis[:, 0] * u0f).sum(dim=1).double()
    u0sq = u0f.double().pow(2).sum(dim=1)
    c_stop = torch.zeros(b, m + 1, **f64)
    c_stop[:, 0] = g[:, 0]  # f(u⁰) = u⁰ + r⁰
    ok0 = torch.isfinite(beta)
    diverged = ~ok0
    converged = ok0 & met(beta, u0f + r0)
    active = ok0 & ~converged
    steps = torch.ones(b, dtype=torch.long, device=dev)
    n_iter = 1
    tol64 = torch.tensor(tol, **f64)
    for j in range(m):
        if not bool(active.any()):
            break
        vj = basis[:, : j + 1]
        w = apply(basis[:, j])
        n_iter += 1
        w_norm = w.norm(dim=1)
        h = coefs(vj, w)
        w = w - combine(h, vj)
        hn = w.norm(dim=1)
        if bool((active & (hn < REORTH * w_norm)).any()):  # cancellation: a second pass
            h2 = coefs(vj, w)
            w = w - combine(h2, vj)
            h = h + h2
            hn = w.norm(dim=1)
        nxt = w / hn.clamp_min(tiny)[:, None]
        basis[:, j + 1] = nxt
        vtu0[:, j + 1] = (nxt * u0f).sum(dim=1).double()
        col = torch.cat([h.double(), hn.double()[:, None]], dim=1)  # (B, j+2)
        t = _matvec(q[:, : j + 2, : j + 2], col)
        a, e = t[:, j], t[:, j + 1]
        rho = torch.hypot(a, e)
        safe = rho > 0
        rho_s = torch.where(safe, rho, 1.0)
        cs = torch.where(safe, a / rho_s, 1.0)
        sn = torch.where(safe, e / rho_s, 0.0)
        qj, qn = q[:, j, : j + 2].clone(), q[:, j + 1, : j + 2].clone()
        q[:, j, : j + 2] = cs[:, None] * qj + sn[:, None] * qn
        q[:, j + 1, : j + 2] = cs[:, None] * qn - sn[:, None] * qj
        gj = g[:, j].clone()
        g[:, j] = cs * gj
        g[:, j + 1] = -sn * gj
        # R⁻¹ of [[R, t], [0, ρ]] is [[R⁻¹, −R⁻¹ t / ρ], [0, 1/ρ]]
        if j:
            top = _matvec(rinv[:, :j, :j], t[:, :j])
            rinv[:, :j, j] = -top / rho_s[:, None]
        rinv[:, j, j] = 1.0 / rho_s
        y = _matvec(rinv[:, : j + 1, : j + 1], g[:, : j + 1])
        c = g[:, j + 1, None] * q[:, j + 1, : j + 2]  # β e₁ − H y = Qᵀ (0, …, g_{j+1})
        c[:, : j + 1] += y
        fsq = u0sq + 2.0 * (c * vtu0[:, : j + 2]).sum(dim=1) + c.pow(2).sum(dim=1)
        r_abs = g[:, j + 1].abs()
        ok = torch.isfinite(r_abs) & torch.isfinite(fsq) & safe
        upd = active & ok
        steps = steps + active.long()
        diverged = diverged | (active & ~ok)
        if spec.stop == "abs":
            hit = r_abs < tol64
        else:
            hit = r_abs.pow(2) < tol64.pow(2) * fsq
        c_stop[:, : j + 2] = torch.where(upd[:, None], c, c_stop[:, : j + 2])
        newly = upd & hit
        converged = converged | newly
        active = upd & ~newly
    u = u0f + combine(c_stop[:, : n_iter].to(dt), basis[:, : n_iter])
    bad = ~torch.isfinite(u).all(dim=1)
    diverged = diverged | bad
    u = torch.where(bad[:, None], u0f, u)
    return Solution(z=u.reshape(shape), steps=steps, converged=converged, diverged=diverged,
                    trace=empty_traces(b, dev, dt), n_iter=n_iter,
                    reason=describe(converged, diverged))
