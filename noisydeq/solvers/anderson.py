"""Anderson acceleration (type II) for z = f(z), per sample and batched (paper App. B).

With the last n ≤ m points x_i and residuals g_i = f(x_i) − x_i, the next point is

    x_new = Σ_i α_i (x_i + β g_i),   α = argmin ‖Σ α_i g_i‖² + λ Σ α_i² ‖g_i‖²  s.t. Σ α_i = 1,

solved in closed form: α ∝ (H + λ diag(H))⁻¹ 1 with H = G Gᵀ (the Lagrange condition
of the constrained least squares). The n×n Gram matrix is updated one row per iteration
(O(B·m·D) instead of O(B·m²·D)) and the small SPD systems are solved batched with
``torch.linalg.solve_ex``, which never raises: a NaN, inf or singular system falls back
to the plain step x + β g for that sample only. The regulariser is relative to each
diagonal entry (Levenberg–Marquardt style), so it is scale-free: it neither swamps the
Gram matrix as the residuals shrink (an absolute λ, as in torchdeq, turns Anderson into
plain averaging near the solution and stalls at tight tolerances) nor lets an old large
residual set the scale for the recent small ones.
"""

from __future__ import annotations

import torch
from torch import Tensor

from noisydeq.config import SolverSpec
from noisydeq.solvers.stop import Window


class Anderson:
    """Anderson mixing with memory ``m``, relative regularisation ``lam``, mixing ``beta``."""

    def __init__(self, spec: SolverSpec, x0: Tensor) -> None:
        b, d = x0.shape
        self.m = spec.memory()
        self.lam = spec.lam
        self.beta = spec.beta
        kw = {"dtype": x0.dtype, "device": x0.device}
        self.X = torch.zeros(b, self.m, d, **kw)
        self.G = torch.zeros(b, self.m, d, **kw)
        self.gram = torch.zeros(b, self.m, self.m, **kw)

    def estimate(self, k: int, x: Tensor, fx: Tensor, window: Window | None) -> Tensor:
        return fx

    def step(self, k: int, x: Tensor, fx: Tensor, active: Tensor) -> Tensor:
        j = k % self.m
        n = min(k + 1, self.m)
        xs = x  # rows never mix: a NaN sample only spoils its own (frozen) history
        g = fx - x
        self.X[:, j] = xs
        self.G[:, j] = g
        Gn = self.G[:, :n]
        row = torch.bmm(Gn, g.unsqueeze(2)).squeeze(2)  # (B, n)
        self.gram[:, j, :n] = row
        self.gram[:, :n, j] = row
        H = self.gram[:, :n, :n]
        diag = torch.diagonal(H, dim1=1, dim2=2)
        reg = self.lam * diag + torch.finfo(x.dtype).tiny
        H = H + torch.diag_embed(reg)
        ones = torch.ones(H.shape[0], n, 1, dtype=x.dtype, device=x.device)
        sol, info = torch.linalg.solve_ex(H, ones)
        a = sol.squeeze(2)
        a = a / a.sum(dim=1, keepdim=True)
        ok = (info == 0) & torch.isfinite(a.sum(dim=1))
        fallback = torch.zeros_like(a)
        fallback[:, j] = 1.0
        a = torch.where(ok[:, None], a, fallback)
        mix = self.X[:, :n] + self.beta * Gn
        return torch.bmm(a.unsqueeze(1), mix).squeeze(1)
