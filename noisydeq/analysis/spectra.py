"""Eigen-spectra of the DEQ's W and of FFW products W_m…W₁, and the Jacobian's spectral radius.

Paper §3.3 (after Eq. 11): the DEQ's sensitivity grows with ρ(W)^m, the FFW's with
ρ(W_m…W₁); Fig. 2a and Fig. 13 (right) show the eigenvalue histograms. The Jacobian
J = ∂f/∂z at the fixed point (J = diag(1 − z*²) W for the tanh cell, Eq. 57) decides local
stability; its spectral radius is estimated matrix-free by a batched power method.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from noisydeq.errors import NoisyDEQError


def eigenvalues(W: Tensor) -> Tensor:
    """Complex eigenvalues of a square matrix (computed in float64)."""
    if W.ndim != 2 or W.shape[0] != W.shape[1]:
        raise NoisyDEQError(f"eigenvalues: need a square matrix, got shape {tuple(W.shape)}")
    return torch.linalg.eigvals(W.detach().double())


def spectral_radius(W: Tensor) -> float:
    """ρ(W) = max |λ| (Eq. 12)."""
    return float(eigenvalues(W).abs().max())


def products(weights: Sequence[Tensor]) -> list[Tensor]:
    """Leading products P_k = W_k⋯W₁ for k = 1..m (paper §3.3, Eq. 12), float64."""
    out: list[Tensor] = []
    acc: Tensor | None = None
    for W in weights:
        W = W.detach().double()
        acc = W if acc is None else W @ acc
        out.append(acc)
    return out


def product_spectral_radii(weights: Sequence[Tensor]) -> list[float]:
    """[ρ(W₁), ρ(W₂W₁), …, ρ(W_m⋯W₁)]."""
    return [spectral_radius(P) for P in products(weights)]


@dataclass
class PowerResult:
    """Spectral radius estimates per sample, whether each met the tolerance, iterations run."""

    rho: Tensor
    converged: Tensor
    iterations: int


def power_spectral_radius(
    apply: Callable[[Tensor], Tensor], v0: Tensor, *, max_iter: int = 1000,
    window: int = 20, tol: float = 1e-4,
) -> PowerResult:
    """Batched power method for ρ(J) with only products v ↦ J v (rows are samples).

    The estimate is the geometric mean of the growth ‖J v‖/‖v‖ over the last ``window``
    normalised steps, exp(mean log‖J v_k‖): exact after the transient for a dominant real
    eigenvalue and for a dominant complex pair acting as a scaled rotation (where the
    plain Rayleigh ratio oscillates). A sample has converged when two consecutive windows
    agree within ``tol`` relative; iteration stops when all have or at ``max_iter``.
    """
    if window < 1 or max_iter < 2 * window:
        raise NoisyDEQError(
            f"power method: need window >= 1 and max_iter >= 2*window, got {window}, {max_iter}"
        )
    v = v0 / v0.flatten(1).norm(dim=1).clamp_min(1e-300).reshape(-1, *[1] * (v0.ndim - 1))
    logs: list[Tensor] = []
    b = v.shape[0]
    rho = torch.full((b,), math.nan, dtype=v.dtype, device=v.device)
    converged = torch.zeros(b, dtype=torch.bool, device=v.device)
    it = 0
    with torch.no_grad():
        for it in range(1, max_iter + 1):
            w = apply(v)
            n = w.flatten(1).norm(dim=1)
            logs.append(torch.log(n.clamp_min(1e-300)))
            v = w / n.clamp_min(1e-300).reshape(-1, *[1] * (w.ndim - 1))
            if it >= 2 * window and it % window == 0:
                last = torch.stack(logs[-window:]).mean(0)
                prev = torch.stack(logs[-2 * window : -window]).mean(0)
                rho = torch.exp(last)
                converged = (torch.exp(last - prev) - 1).abs() <= tol
                if bool(converged.all()):
                    break
    if it < 2 * window or it % window != 0:  # final estimate from the last full window
        rho = torch.exp(torch.stack(logs[-window:]).mean(0))
    return PowerResult(rho=rho, converged=converged, iterations=it)


def jacobian_spectral_radius(
    jvp: Callable[[Tensor], Tensor], shape: Sequence[int], generator: torch.Generator,
    dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu", **kw,
) -> PowerResult:
    """ρ(∂f/∂z) at a point, from a batched JVP (see :func:`noisydeq.analysis.jacobians.jvp_fn`).

    The random start vector is drawn from ``generator`` (seeded, reproducible).
    """
    v0 = torch.randn(tuple(shape), generator=generator, dtype=dtype, device=device)
    return power_spectral_radius(jvp, v0, **kw)
