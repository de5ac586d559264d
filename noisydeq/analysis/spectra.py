"""Eigen-spectra of the DEQ's W and of FFW products W_m…W₁, and the Jacobian's spectral radius.

Paper §3.3 (after Eq. 11): the DEQ's sensitivity grows with ρ(W)^m, the FFW's with
ρ(W_m…W₁); Fig. 2a and Fig. 13 (right) show the eigenvalue histograms. The Jacobian
J = ∂f/∂z at the fixed point (J = diag(1 − z*²) W for the tanh cell, Eq. 57) decides local
stability; its spectral radius is estimated matrix-free by a batched block power method.
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


def _apply_columns(apply: Callable[[Tensor], Tensor], Q: Tensor) -> Tensor:
    """J Q for a block (B, d, p), one batched product per column."""
    return torch.stack([apply(Q[..., j]) for j in range(Q.shape[-1])], dim=-1)


def power_spectral_radius(
    apply: Callable[[Tensor], Tensor], v0: Tensor, *, max_iter: int = 1000,
    check: int = 5, tol: float = 1e-4,
) -> PowerResult:
    """Batched block power method (subspace iteration) for ρ(J) from products v ↦ J v.

    ``v0`` is (B, d, p): p start vectors per sample (rows are samples). Each step forms
    J Q, takes the Ritz values (eigenvalues of Qᵀ J Q) and re-orthonormalises; the estimate
    is the largest Ritz modulus. A block of p ≥ 2 captures a dominant complex pair, where a
    single-vector power iteration only oscillates. A sample has converged when its estimate
    changed by at most ``tol`` (relative) over the last ``check`` steps; iteration stops when
    all have or at ``max_iter``.
    """
    if v0.ndim != 3:
        raise NoisyDEQError(f"power method: start block must be (B, d, p), got {tuple(v0.shape)}")
    if check < 1 or max_iter < check:
        raise NoisyDEQError(
            f"power method: need check >= 1 and max_iter >= check, got {check}, {max_iter}"
        )
    Q = torch.linalg.qr(v0).Q
    b = v0.shape[0]
    rho = torch.full((b,), math.nan, dtype=v0.dtype, device=v0.device)
    prev = rho.clone()
    converged = torch.zeros(b, dtype=torch.bool, device=v0.device)
    it = 0
    with torch.no_grad():
        for it in range(1, max_iter + 1):
            JQ = _apply_columns(apply, Q)
            ritz = torch.linalg.eigvals(Q.transpose(1, 2) @ JQ)
            rho = ritz.abs().amax(dim=1).to(v0.dtype)
            Q = torch.linalg.qr(JQ).Q
            if it % check == 0:
                converged = (rho - prev).abs() <= tol * rho.abs().clamp_min(1e-300)
                prev = rho
                if bool(converged.all()):
                    break
    return PowerResult(rho=rho, converged=converged, iterations=it)


def jacobian_spectral_radius(
    jvp: Callable[[Tensor], Tensor], shape: Sequence[int], generator: torch.Generator,
    dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu", block: int = 4,
    **kw,
) -> PowerResult:
    """ρ(∂f/∂z) at a point, from a batched JVP (see :func:`noisydeq.analysis.jacobians.jvp_fn`).

    ``shape`` is (B, d); a random start block of ``block`` vectors per sample is drawn from
    ``generator`` (seeded, reproducible).
    """
    b, d = tuple(shape)
    p = max(1, min(block, d))
    v0 = torch.randn((b, d, p), generator=generator, dtype=dtype, device=device)
    return power_spectral_radius(jvp, v0, **kw)
