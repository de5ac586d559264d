"""Limited-memory ("good") Broyden's method for g(z) = f(z) − z = 0, per sample (App. B).

The inverse Jacobian of g is approximated as B = −I + Σ_l u_l v_lᵀ (start: −I, i.e. the
first step is a plain fixed-point step). After a step Δx with residual change Δg, the
rank-one update that makes B Δg = Δx and changes B least in the direction Δxᵀ B is

    vᵀ = Δxᵀ B,   u = (Δx − B Δg) / (vᵀ Δg),

and the next point is x − B g. At most ``m`` rank-one terms are kept (default
m = max_iter); when the memory is full the approximation restarts from −I. (Overwriting
only the oldest term, as torchdeq does, is unsafe: every later u_l was built on top of it,
and on a contractive linear problem with m = 10 that variant diverged.) Each sample has
its own terms; an update with a zero, tiny or non-finite denominator is skipped for that
sample (frozen samples have Δx = 0), and a non-finite step falls back to the plain step
f(x), so a NaN input cannot break the batch.
"""

from __future__ import annotations

import torch
from torch import Tensor

from noisydeq.solvers.batched import coefs, combine
from noisydeq.solvers.stop import Window
from noisydeq.specs.solver import SolverSpec


class Broyden:
    """Good Broyden with ``m`` stored rank-one corrections per sample.

    ``U`` and ``V`` are stored (B, L, D); the mat-vecs are batched row-vector products
    (:mod:`noisydeq.solvers.batched`). A step needs two of them, not three: with
    B' = B + u vᵀ the new step is B' g = B g + u (vᵀ g), and B Δg = B g − (B g)_prev
    reuses the previous step's product, so only B g and Δxᵀ B are formed. Rows never
    mix, so a NaN in one sample cannot reach another; updates and steps are masked with
    ``torch.where``.
    """

    def __init__(self, spec: SolverSpec, x0: Tensor) -> None:
        b, d = x0.shape
        self.L = spec.memory()
        kw = {"dtype": x0.dtype, "device": x0.device}
        # only the first min(count, L) slots are ever read: no need to zero the memory
        # (at L = max_iter = 100, B = 256, D = 467 that is 96 MB per solve)
        self.U = torch.empty(b, self.L, d, **kw)
        self.V = torch.empty(b, self.L, d, **kw)
        self.count = 0
        self.prev_x: Tensor | None = None
        self.prev_g: Tensor | None = None
        self.prev_bg: Tensor | None = None  # B g of the previous step (B as it was then)

    def _used(self) -> int:
        return min(self.count, self.L)

    def matvec(self, y: Tensor) -> Tensor:
        """B y = −y + Σ u_l (v_lᵀ y)."""
        n = self._used()
        if n == 0:
            return -y
        return combine(coefs(self.V[:, :n], y), self.U[:, :n]) - y

    def rmatvec(self, y: Tensor) -> Tensor:
        """yᵀ B = −yᵀ + Σ (yᵀ u_l) v_lᵀ."""
        n = self._used()
        if n == 0:
            return -y
        return combine(coefs(self.U[:, :n], y), self.V[:, :n]) - y

    def estimate(self, k: int, x: Tensor, fx: Tensor, window: Window | None) -> Tensor:
        return x

    def select(self, rows: Tensor) -> None:
        """Keep the corrections and last point of the samples ``rows``."""
        self.U = self.U.index_select(0, rows)
        self.V = self.V.index_select(0, rows)
        if self.prev_x is not None and self.prev_g is not None:
            self.prev_x = self.prev_x.index_select(0, rows)
            self.prev_g = self.prev_g.index_select(0, rows)
        if self.prev_bg is not None:
            self.prev_bg = self.prev_bg.index_select(0, rows)

    def step(
        self, k: int, x: Tensor, fx: Tensor, active: Tensor, g: Tensor | None = None
    ) -> Tensor:
        if g is None:  # fx − x, unless the caller (the solve loop) has it
            g = fx - x
        bg = self.matvec(g)  # B g with the current B
        if self.prev_x is not None and self.prev_g is not None and self.prev_bg is not None:
            dx = x - self.prev_x
            dg = g - self.prev_g
            vT = self.rmatvec(dx)
            den = (vT * dg).sum(dim=1)
            u = (dx - (bg - self.prev_bg)) / den[:, None]  # B Δg = B g − B g_prev
            scale = vT.norm(dim=1) * dg.norm(dim=1)
            # den > 1e-12·scale also rejects NaN; a non-finite u or v shows in its sum
            ok = active & (den.abs() > 1e-12 * scale) & torch.isfinite(u.sum(1) + vT.sum(1))
            okc = ok[:, None]
            u = torch.where(okc, u, torch.zeros_like(u))
            vT = torch.where(okc, vT, torch.zeros_like(vT))
            if self.count == self.L:  # memory full: restart from B = −I (see module doc)
                self.count = 0
                bg = -g
            slot = self.count
            self.U[:, slot] = u
            self.V[:, slot] = vT
            self.count += 1
            bg = bg + u * (vT * g).sum(dim=1, keepdim=True)  # B' g = B g + u (vᵀ g)
        self.prev_x, self.prev_g, self.prev_bg = x, g, bg
        x_new = x - bg
        good = torch.isfinite(x_new.sum(1))
        return torch.where(good[:, None], x_new, fx)
