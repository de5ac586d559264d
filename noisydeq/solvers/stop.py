"""Per-sample stop rules (paper App. B, Eq. 54), divergence flags and random thresholds (E.3).

Residuals are measured per sample on flattened (B, D) tensors:

* ``abs``  = ‖f(z) − z‖,
* ``rel``  = ‖f(z) − z‖ / ‖f(z)‖,
* ``mean_rel`` (Eq. 54) = ‖f(z̃) − z̃‖ / ‖f(z̃)‖ with z̃ the mean of the last ``w`` evaluated
  points. To avoid an extra f evaluation per iteration, f(z̃) is approximated by the mean of
  the f(z_i) already computed for those points; this is exact for affine f and accurate to
  second order in the spread of the window otherwise. For a stochastic f it is also the
  natural estimate of E[f(z̃)]. Until ``w`` points exist the mean is over those available
  (the trace shows it) but ``mean_rel`` may only stop a sample once its window is full.
"""

from __future__ import annotations

from collections import deque

import torch
from torch import Tensor

from noisydeq.config import SolverSpec
from noisydeq.errors import NoisyDEQError


def residuals(x: Tensor, fx: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(abs, rel, ‖f(z)‖) per sample for flattened (B, D) tensors."""
    tiny = torch.finfo(x.dtype).tiny
    res = (fx - x).norm(dim=1)
    fn = fx.norm(dim=1)
    return res, res / (fn + tiny), fn


class Window:
    """The last ``w`` evaluated points z_i and their images f(z_i) (for Eq. 53-54).

    Running sums make each push O(B·D) whatever ``w`` is; they are recomputed exactly from
    the stored tensors every ``w`` pushes so rounding cannot accumulate. Under autograd
    (``bptt`` through ``stochastic``) only out-of-place operations are used; otherwise the
    sums are updated in place (no allocation per push). :meth:`select` keeps some rows
    (a solve dropping its stopped samples).
    """

    def __init__(self, w: int) -> None:
        self.w = w
        self.xs: deque[Tensor] = deque(maxlen=w)
        self.fs: deque[Tensor] = deque(maxlen=w)
        self.sum_x: Tensor | None = None
        self.sum_f: Tensor | None = None
        self.pushes = 0

    @staticmethod
    def _total(ts: deque[Tensor]) -> Tensor:
        if torch.is_grad_enabled():
            out = ts[0]
            for t in list(ts)[1:]:
                out = out + t
            return out
        out = ts[0].clone()
        for t in list(ts)[1:]:
            out.add_(t)
        return out

    def push(self, x: Tensor, fx: Tensor) -> None:
        self.pushes += 1
        if self.sum_x is None or self.sum_f is None or self.pushes % self.w == 0:
            self.xs.append(x)
            self.fs.append(fx)
            self.sum_x = self._total(self.xs) if self.w > 1 else x
            self.sum_f = self._total(self.fs) if self.w > 1 else fx
            return
        if torch.is_grad_enabled():
            if self.full:
                self.sum_x = self.sum_x - self.xs[0] + x
                self.sum_f = self.sum_f - self.fs[0] + fx
            else:
                self.sum_x = self.sum_x + x
                self.sum_f = self.sum_f + fx
        else:  # the sums are the window's own tensors here (w > 1: made by _total)
            if self.full:
                self.sum_x.sub_(self.xs[0])
                self.sum_f.sub_(self.fs[0])
            self.sum_x.add_(x)
            self.sum_f.add_(fx)
        self.xs.append(x)
        self.fs.append(fx)

    def select(self, rows: Tensor) -> None:
        """Keep the rows ``rows`` of every stored point, image and sum."""
        self.xs = deque((t.index_select(0, rows) for t in self.xs), maxlen=self.w)
        self.fs = deque((t.index_select(0, rows) for t in self.fs), maxlen=self.w)
        if self.sum_x is not None and self.sum_f is not None:
            self.sum_x = self.sum_x.index_select(0, rows)
            self.sum_f = self.sum_f.index_select(0, rows)

    @property
    def full(self) -> bool:
        return len(self.xs) == self.w

    def mean_x(self) -> Tensor:
        """z̃: mean of the stored points (the Polyak average of Eq. 7/53 over the window)."""
        assert self.sum_x is not None
        return self.sum_x / len(self.xs)

    def mean_rel(self) -> Tensor:
        """Eq. 54 with f(z̃) ≈ mean of the stored f(z_i) (exact for affine f)."""
        assert self.sum_x is not None and self.sum_f is not None
        return residuals(self.sum_x, self.sum_f)[1]  # the 1/n of both means cancels


def blowup_scale(spec: SolverSpec, res0: Tensor, fnorm0: Tensor) -> Tensor:
    """Per-sample residual above which a sample counts as diverged.

    ``diverge_factor · max(‖f(z0) − z0‖, ‖f(z0)‖, 1)``; non-finite starting values give a
    finite scale (those samples are flagged by the finiteness check instead).
    """
    base = torch.maximum(
        torch.nan_to_num(res0, nan=1.0, posinf=1.0), torch.nan_to_num(fnorm0, nan=1.0, posinf=1.0)
    )
    return spec.diverge_factor * base.clamp(min=1.0)


def thresholds(
    spec: SolverSpec, batch: int, device: torch.device, generator: torch.Generator | None
) -> Tensor:
    """(B,) long iteration caps: ``max_iter`` each, or uniform in 1..max_iter (paper E.3)."""
    if not spec.random_threshold:
        return torch.full((batch,), spec.max_iter, dtype=torch.long, device=device)
    if generator is None:
        raise NoisyDEQError(
            "solver.random_threshold: needs a torch.Generator (pass generator=...) "
            "so the random caps are seeded"
        )
    caps = torch.randint(
        1, spec.max_iter + 1, (batch,), generator=generator, device=generator.device
    )
    return caps.to(device)
