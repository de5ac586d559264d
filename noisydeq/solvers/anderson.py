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

import math

import torch
from torch import Tensor

from noisydeq.scalars import const
from noisydeq.solvers.batched import coefs, combine
from noisydeq.solvers.stop import Window
from noisydeq.specs.solver import SolverSpec


class Anderson:
    """Anderson mixing with memory ``m``, relative regularisation ``lam``, mixing ``beta``."""

    def __init__(self, spec: SolverSpec, x0: Tensor) -> None:
        b, d = x0.shape
        self.m = spec.memory()
        self.lam = spec.lam
        self.beta = spec.beta
        kw = {"dtype": x0.dtype, "device": x0.device}
        # only the slots already written are read (F, G: the first n; the Gram matrix:
        # its leading n×n block), so the histories need no zeroing (2 × 2.4 MB at
        # B = 256, m = 5, D = 467: a zero fill cost as much as two solver steps)
        self.F = torch.empty(b, self.m, d, **kw)
        self.G = torch.empty(b, self.m, d, **kw)
        self.gram = torch.empty(b, self.m, self.m, **kw)
        self.ones = torch.ones(b, self.m, 1, **kw)
        #: the plain step's weights (slot j alone) for n stored slots, plain[n - 1][j]:
        #: made by the first step that needs them (:meth:`_plain`), not by every solve
        self.plain: list[tuple[Tensor, ...]] | None = None
        # cached 0-dim constants (noisydeq.scalars: the same values, no tensor per solve)
        self.tiny = const(torch.finfo(x0.dtype).tiny, x0)
        self.lam_c = const(self.lam, x0)
        self._views()

    def _views(self) -> None:
        """Per-slot views of the histories, made once (a step on small tensors costs about
        as much per indexing operation as per product): slot j of F and G, row, column and
        diagonal entry j of the Gram matrix, Gᵀ for the full-memory product."""
        self.F_slot = self.F.unbind(1)
        self.G_slot = self.G.unbind(1)
        self.Gt = self.G.transpose(1, 2)
        self.gram_row = self.gram.unbind(1)
        self.gram_col = self.gram.unbind(2)
        self.gram_diag = self.gram.diagonal(dim1=1, dim2=2).unbind(1)

    def estimate(self, k: int, x: Tensor, fx: Tensor, window: Window | None) -> Tensor:
        return fx

    def _plain(self, n: int, j: int, like: Tensor) -> Tensor:
        """The plain step's weights for ``n`` stored slots: slot ``j`` alone (n,)."""
        if self.plain is None:
            eye = torch.eye(self.m, dtype=like.dtype, device=like.device)
            self.plain = [eye[:, :k].unbind(0) for k in range(1, self.m + 1)]
        return self.plain[n - 1][j]

    def select(self, rows: Tensor) -> None:
        """Keep the histories of the samples ``rows``."""
        for name in ("F", "G", "gram", "ones"):
            setattr(self, name, getattr(self, name).index_select(0, rows))
        self._views()

    def step(
        self, k: int, x: Tensor, fx: Tensor, active: Tensor, g: Tensor | None = None
    ) -> Tensor:
        # Rows never mix: a NaN sample only spoils its own (frozen) history. The mixing
        # needs only F and G: x_i + β g_i = f_i − (1 − β) g_i. ``g``: fx − x when the
        # caller has it (the solve loop computes it for the residual).
        j = k % self.m
        n = min(k + 1, self.m)
        if g is None:
            g = fx - x
        self.F_slot[j].copy_(fx)
        self.G_slot[j].copy_(g)
        if n == self.m:  # the whole memory: the prepared views (same products as coefs)
            row = torch.bmm(g.unsqueeze(1), self.Gt).squeeze(1)  # (B, m)
            self.gram_row[j].copy_(row)
            self.gram_col[j].copy_(row)
            H, ones, F = self.gram, self.ones, self.F
        else:
            row = coefs(self.G[:, :n], g)  # (B, n)
            self.gram[:, j, :n] = row
            self.gram[:, :n, j] = row
            H, ones, F = self.gram[:, :n, :n], self.ones[:, :n], self.F[:, :n]
        # The stored matrix is H + diag(λ diag(H) + tiny) itself: only slot j's diagonal
        # entry changes this step (bit-identical to regularising the whole block anew).
        hjj = row[:, j]
        torch.add(hjj, hjj * self.lam_c + self.tiny, out=self.gram_diag[j])
        # A singular system (LU info > 0: an exactly zero pivot) divides by zero in the
        # solve, so its α is not finite: the finiteness check alone flags it as well.
        a = torch.linalg.solve_ex(H, ones)[0].squeeze(2)
        a = a / a.sum(dim=1, keepdim=True)
        sums = a.sum(dim=1, keepdim=True)  # a row's weights are usable where theirs is finite
        # On CPU (where a host read is free) one read tells whether every row's sum is
        # finite — a sum over the rows' sums is finite only then (a non-finite term keeps
        # any IEEE sum non-finite) — and the selection, which would copy a unchanged, is
        # skipped; the plain weights are made on first need. Elsewhere: no host read.
        if a.device.type != "cpu" or not math.isfinite(float(sums.sum())):
            a = torch.where(torch.isfinite(sums), a, self._plain(n, j, a))
        mixed = torch.bmm(a.unsqueeze(1), F).squeeze(1)  # combine(a, F)
        if self.beta == 1.0:
            return mixed
        return mixed - (1.0 - self.beta) * combine(a, self.G[:, :n])
