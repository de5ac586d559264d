"""Upper bounds on the noise sensitivity ‖dz^m/dξ_i‖ (paper Eq. 12, additive noise).

Eq. 12 as printed, with L the Lipschitz constant of σ (tanh: L = 1):

* DEQ: η Σ_{k=0}^{m-1} L^{k+1} ρ(W)^k, and for the fixed point (m → ∞) η L / (1 − L ρ(W))
  when L ρ(W) < 1 (infinite otherwise);
* FFW: η Σ_{k=0}^{m-1} L^{k+1} ρ(W_k⋯W₁), the empty product (k = 0) having ρ = 1.

The paper calls these loose. Because ρ(A) ≤ ‖A‖₂ and the σ' factors sit between the matrices
(Eq. 21, 40), Eq. 12 with ρ is a heuristic, not a guaranteed bound. The *norm* versions
below replace ρ(W)^k by ‖W‖₂^k and ρ(W_k⋯W₁) by the product of the layer norms along the
path the noise actually takes (Eq. 40: the trailing layers W_{m-1}⋯W_{m-k}); they hold for
every sample and are what the tests check against the measured sensitivity.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor


def _geometric(ratio: float, eta: float, lip: float, m: int | None) -> float:
    if m is None:
        return math.inf if lip * ratio >= 1 else eta * lip / (1 - lip * ratio)
    return eta * sum(lip ** (k + 1) * ratio**k for k in range(m))


def deq_bound_paper(rho: float, eta: float, lip: float = 1.0, m: int | None = None) -> float:
    """Eq. 12 (DEQ) with ρ(W); ``m=None`` is the fixed-point limit."""
    return _geometric(rho, eta, lip, m)


def ffw_bound_paper(
    product_rhos: Sequence[float], depth: int, eta: float, lip: float = 1.0
) -> float:
    """Eq. 12 (FFW): η Σ_{k=0}^{depth-1} L^{k+1} ρ(W_k⋯W₁), ``product_rhos[k-1]`` = ρ(W_k⋯W₁)."""
    rhos = [1.0, *product_rhos]
    if len(rhos) < depth:
        raise ValueError(f"need {depth - 1} product radii, got {len(product_rhos)}")
    return eta * sum(lip ** (k + 1) * rhos[k] for k in range(depth))


def spectral_norm(W: Tensor) -> float:
    """‖W‖₂, the largest singular value."""
    return float(torch.linalg.matrix_norm(W.detach().double(), ord=2))


def deq_bound_norm(W: Tensor, eta: float, lip: float = 1.0, m: int | None = None) -> float:
    """Guaranteed bound: Eq. 12 (DEQ) with ‖W‖₂ for ρ(W) (valid since ‖diag(σ')‖ ≤ L)."""
    return _geometric(spectral_norm(W), eta, lip, m)


def ffw_bound_norm(path: Sequence[Tensor], eta: float, lip: float = 1.0) -> float:
    """Guaranteed bound for an FFW whose noise derivative passes through ``path``.

    ``path`` are the matrices that multiply a noise-dependent state, first to last (m − 1
    of them for m layers: the first layer acts on z⁰ = 0 or on the clean x̃). By Eq. 40,
    ‖dz^m/dξ_i‖ ≤ η Σ_{k=0}^{m-1} L^{k+1} Π_{j=m-k}^{m-1} ‖W_j‖₂ (trailing k matrices).
    """
    norms = [spectral_norm(W) for W in path]
    total, acc = lip, 1.0
    for k in range(1, len(norms) + 1):
        acc *= norms[-k]
        total += lip ** (k + 1) * acc
    return eta * total
