"""Noise sensitivity E_ξ |dz*/dξ_i| of a DEQ fixed point and an FFW's last layer (paper §3.3).

The noise vector ξ ~ N(0, I) is drawn once and injected at *every* iteration (DEQ) or layer
(FFW), as in the paper's derivation (App. A.1.1: "ξ is sampled once and remains fixed").
Additive noise enters as η ξ (Eq. 8/10, 13, 32); multiplicative noise as G(s) ξ with G
proportional to the norm of the perturbed signal (Eq. 22-23, 41-42; the scale follows the
package's SNR convention, :func:`noisydeq.noise.multiplicative_noise_std`).

* DEQ (Eq. 9, 14-21, 24-31): the recursion for dz^m/dξ_i converges, at the fixed point
  z* = f(z*, ξ), to the implicit-function-theorem solution
  dz*/dξ = (I − ∂f/∂z)⁻¹ ∂f/∂ξ,
  computed exactly here: both Jacobians by autograd, then one batched linear solve.
* FFW (Eq. 11, 33-40, 43-48): dz_m/dξ by reverse-mode autograd through all layers.

The per-sample sensitivity is the mean over noise dimensions i of ‖dz*/dξ_i‖₂ (the norm the
bounds of Eq. 12 control); the mean absolute entry is reported too. Averages run over noise
samples × inputs, with their standard error.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from noisydeq.analysis.jacobians import CellFn, jacobians
from noisydeq.errors import NoisyDEQError

FFWFn = Callable[[Tensor, Tensor], Tensor]
"""forward(ξ, c) -> z_m: an FFW's last hidden layer with ξ injected at every layer."""


@dataclass
class FixedPoint:
    """A polished fixed point z* = f(z*, ξ, c) per sample, with its relative residual."""

    z: Tensor
    residual: Tensor
    converged: Tensor


def fixed_point(
    fn: CellFn, z0: Tensor, xi: Tensor, ctx: Tensor, *, tol: float = 1e-9,
    unroll: int = 50, newton: int = 30,
) -> FixedPoint:
    """Solve z = f(z, ξ, c) to a relative residual ‖f(z)−z‖/‖f(z)‖ < ``tol`` per sample (Eq. 1).

    ``unroll`` plain iterations warm-start, then Newton steps z ← z − (I − J_z)⁻¹ (z − f(z))
    with the exact Jacobian (quadratic convergence near z*, also where ρ(J_z) ≥ 1 and plain
    iteration would not converge), halving the step while the residual grows. The noise ξ
    is fixed, so the map is deterministic.
    """
    with torch.no_grad():
        z = z0.clone()
        for _ in range(unroll):
            z = fn(z, xi, ctx)
    z = z.detach()

    def residual(zz: Tensor) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            fz = fn(zz, xi, ctx)
        r = (fz - zz).flatten(1).norm(dim=1) / fz.flatten(1).norm(dim=1).clamp_min(1e-30)
        return fz, r

    fz, res = residual(z)
    eye = torch.eye(z.shape[1], dtype=z.dtype, device=z.device)
    for _ in range(newton):
        active = res >= tol
        if not bool(active.any()):
            break
        (jz,) = jacobians(fn, z, xi, ctx, wrt=(0,))
        step = torch.linalg.solve(eye - jz, (z - fz).unsqueeze(-1)).squeeze(-1)
        step = torch.where(active[:, None], step, torch.zeros_like(step))
        t = torch.ones_like(res)
        for _ in range(30):
            z_new = z - t[:, None] * step
            fz_new, res_new = residual(z_new)
            worse = active & ~(res_new <= res)
            if not bool(worse.any()):
                break
            t = torch.where(worse, t / 2, t)
        better = ~worse | ~active
        z = torch.where(better[:, None], z_new, z)
        fz = torch.where(better[:, None], fz_new, fz)
        res = torch.where(better, res_new, res)
    finite = torch.isfinite(res)
    return FixedPoint(z=z, residual=res, converged=finite & (res < tol))


def deq_noise_jacobian(fn: CellFn, z_star: Tensor, xi: Tensor, ctx: Tensor) -> Tensor:
    """dz*/dξ = (I − ∂f/∂z)⁻¹ ∂f/∂ξ at the fixed point (IFT limit of Eq. 9 / Eq. 25), (B, d, d).

    Column i is dz*/dξ_i. Exact: autograd Jacobians and one batched linear solve.
    """
    jz, jxi = jacobians(fn, z_star, xi, ctx, wrt=(0, 1))
    eye = torch.eye(jz.shape[-1], dtype=jz.dtype, device=jz.device)
    return torch.linalg.solve(eye - jz, jxi)


def ffw_noise_jacobian(forward: FFWFn, xi: Tensor, ctx: Tensor) -> Tensor:
    """dz_m/dξ through every layer of an FFW (Eq. 11, 34, 44), (B, d_out, d), exact autograd."""

    def row(x1: Tensor, c1: Tensor) -> Tensor:
        return forward(x1.unsqueeze(0), c1.unsqueeze(0)).squeeze(0)

    return torch.func.vmap(torch.func.jacrev(row, argnums=0))(xi, ctx)


def column_norms(jac: Tensor) -> Tensor:
    """Per sample: mean over i of ‖dz/dξ_i‖₂ (columns of a (B, d_out, d) Jacobian)."""
    return jac.norm(dim=1).mean(dim=1)


@dataclass
class Sensitivity:
    """E_ξ |dz*/dξ_i| over noise samples × inputs: per-sample values and summary statistics.

    ``per_sample``: (N,) mean over i of ‖dz*/dξ_i‖₂; ``abs_entry``: (N,) mean |∂z_j/∂ξ_i|.
    ``n_failed``: DEQ samples whose fixed point did not converge (excluded).
    """

    kind: str
    per_sample: Tensor
    abs_entry: Tensor
    n_failed: int = 0

    @property
    def n(self) -> int:
        return int(self.per_sample.numel())

    @property
    def mean(self) -> float:
        return float(self.per_sample.mean())

    @property
    def sem(self) -> float:
        """Standard error of :attr:`mean` (sample std / √n)."""
        if self.n < 2:
            return math.inf
        return float(self.per_sample.std(unbiased=True) / math.sqrt(self.n))

    @property
    def rse(self) -> float:
        """Relative standard error sem / mean."""
        m = abs(self.mean)
        return math.inf if m == 0 else self.sem / m

    def check_precision(self, precision: float, what: str = "sensitivity") -> None:
        """Raise when the relative standard error exceeds ``precision`` (too few samples)."""
        if self.rse > precision:
            need = (
                "more"
                if not math.isfinite(self.rse)
                else f"about {math.ceil(self.n * (self.rse / precision) ** 2)}"
            )
            raise NoisyDEQError(
                f"samples: {self.n} samples give a relative standard error of "
                f"{self.rse:.3g} for the {what} ({self.kind}), above the requested precision "
                f"{precision:g}; use {need} samples (--samples) or a looser --precision"
            )


def draw_noise(rows: int, width: int, generator: torch.Generator, like: Tensor) -> Tensor:
    """ξ ~ N(0, I), (rows, width), from an explicit generator (seeded, reproducible)."""
    return torch.randn(
        (rows, width), generator=generator, dtype=like.dtype, device=like.device
    )


def check_samples(n_noise: int) -> int:
    """Number of noise samples: at least 2 to estimate a standard error."""
    if isinstance(n_noise, bool) or not isinstance(n_noise, int) or n_noise < 2:
        raise NoisyDEQError(f"samples: need at least 2 noise samples, got {n_noise!r}")
    return n_noise


def _chunks(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def deq_sensitivity(
    fn: CellFn, ctx: Tensor, width: int, *, n_noise: int = 100,
    generator: torch.Generator, chunk: int = 64, tol: float = 1e-9,
) -> Sensitivity:
    """E_ξ |dz*/dξ_i| of a DEQ over ``n_noise`` draws of ξ per input row of ``ctx`` (Eq. 9).

    ``fn(z, ξ, c)`` is the noisy cell, ``ctx`` (N, ...) the per-input context. Each
    (input, ξ) pair gets its own fixed point (solved with :func:`fixed_point`) and exact
    dz*/dξ. Pairs whose fixed point does not converge are excluded and counted.
    """
    check_samples(n_noise)
    ctx_all = ctx.repeat_interleave(n_noise, dim=0)
    xi_all = draw_noise(ctx_all.shape[0], width, generator, ctx)
    per, absd, failed = [], [], 0
    for sl in _chunks(ctx_all.shape[0], chunk):
        c, xi = ctx_all[sl], xi_all[sl]
        z0 = torch.zeros((c.shape[0], width), dtype=ctx.dtype, device=ctx.device)
        fp = fixed_point(fn, z0, xi, c, tol=tol)
        ok = fp.converged
        failed += int((~ok).sum())
        if not bool(ok.any()):
            continue
        jac = deq_noise_jacobian(fn, fp.z[ok], xi[ok], c[ok])
        per.append(column_norms(jac).detach())
        absd.append(jac.abs().mean(dim=(1, 2)).detach())
    if not per:
        raise NoisyDEQError(
            "DEQ fixed point: no sample converged; the cell may have no stable fixed point "
            "at this noise level (try a smaller --eta / larger --snr)"
        )
    return Sensitivity("deq", torch.cat(per), torch.cat(absd), failed)


def ffw_sensitivity(
    forward: FFWFn, ctx: Tensor, width: int, *, n_noise: int = 100,
    generator: torch.Generator, chunk: int = 256,
) -> Sensitivity:
    """E_ξ |dz_m/dξ_i| of an FFW's last hidden layer over ``n_noise`` draws of ξ per input."""
    check_samples(n_noise)
    ctx_all = ctx.repeat_interleave(n_noise, dim=0)
    xi_all = draw_noise(ctx_all.shape[0], width, generator, ctx)
    per, absd = [], []
    for sl in _chunks(ctx_all.shape[0], chunk):
        jac = ffw_noise_jacobian(forward, xi_all[sl], ctx_all[sl])
        per.append(column_norms(jac).detach())
        absd.append(jac.abs().mean(dim=(1, 2)).detach())
    return Sensitivity("ffw", torch.cat(per), torch.cat(absd), 0)
