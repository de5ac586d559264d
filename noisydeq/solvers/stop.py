"""Per-sample stop rules (paper App. B, Eq. 54), divergence flags and random thresholds (E.3).

Residuals are measured per sample on flattened (B, D) tensors:

* ``abs``  = ‖f(z) − z‖,
* ``rel``  = ‖f(z) − z‖ / ‖f(z)‖,
* ``mean_rel`` (Eq. 54) = ‖f(z̃) − z̃‖ / ‖f(z̃)‖ with z̃ the mean of the last ``w`` evaluated
  points. To avoid an extra f evaluation per iteration, f(z̃) is approximated by the mean of
  the f(z_i) already computed for those points; this is exact for affine f and accurate to
  second order in the spread of the window otherwise. For a stochastic f it is also the
  natural estimate of E[f(z̃)]. Until ``w`` points exist the mean is over those available
  (the trace shows it) but ``mean_rel`` may only stop a sample once its window is full
  (or holds ``min_window`` points, when a warm-started solve asks for that).
"""

from __future__ import annotations

from collections import deque

import torch
from torch import Tensor

from noisydeq.errors import NoisyDEQError
from noisydeq.scalars import const
from noisydeq.solvers.draws import Draws
from noisydeq.specs.solver import SolverSpec


class Window:
    """The last ``w`` residuals g_i = f(z_i) − z_i and images f(z_i) (for Eq. 53-54).

    The window keeps g and f rather than z and f: Eq. 54's numerator is then a sum of
    residuals, not a difference of two large sums, and the solve loop's g is reused.
    Running sums make each push O(B·D) whatever ``w`` is; they are recomputed exactly from
    the stored tensors every ``w`` pushes so rounding cannot accumulate. When autograd
    records the pushed tensors (``bptt`` through ``stochastic``) only out-of-place
    operations are used; otherwise the sums are the window's own tensors, updated and
    recounted in place (no allocation per push). :meth:`select` keeps some rows
    (a solve dropping its stopped samples).
    """

    def __init__(self, w: int) -> None:
        self.w = w
        self.gs: deque[Tensor] = deque(maxlen=w)
        self.fs: deque[Tensor] = deque(maxlen=w)
        self.sum_g: Tensor | None = None
        self.sum_f: Tensor | None = None
        self._owned = False  # the sums are tensors of this window (may be updated in place)
        self.pushes = 0

    @staticmethod
    def _tracked(*ts: Tensor | None) -> bool:
        """Whether autograd records operations on these tensors (then no in-place updates)."""
        return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in ts)

    def _total(self, ts: deque[Tensor], into: Tensor | None, tracked: bool) -> Tensor:
        """Sum of the stored tensors. Untracked, it is written into ``into`` when that is a
        sum this window owns (a recount then allocates nothing)."""
        if tracked:
            out = ts[0]
            for t in list(ts)[1:]:
                out = out + t
            return out
        out = into.copy_(ts[0]) if into is not None and self._owned else ts[0].clone()
        for t in list(ts)[1:]:
            out.add_(t)
        return out

    def push(self, x: Tensor, fx: Tensor, g: Tensor | None = None) -> None:
        """Add the point ``x`` and its image ``fx``; ``g`` = fx − x if the caller has it
        (ignored when autograd records ``x`` or ``fx``: the window's g must carry the graph)."""
        self.pushes += 1
        old = (self.gs[0], self.fs[0]) if self.full else ()
        tracked = self._tracked(x, fx, self.sum_g, self.sum_f, *old)
        if g is None or tracked:
            g = fx - x
        recount = self.sum_g is None or self.sum_f is None or self.pushes % self.w == 0
        self.gs.append(g)
        self.fs.append(fx)
        if recount or self.w == 1:
            if self.w == 1:
                self.sum_g, self.sum_f, self._owned = g, fx, False
            else:
                self.sum_g = self._total(self.gs, self.sum_g, tracked)
                self.sum_f = self._total(self.fs, self.sum_f, tracked)
                # tracked, a sum of one tensor is that tensor; otherwise a new one
                self._owned = not tracked or len(self.gs) > 1
            return
        assert self.sum_g is not None and self.sum_f is not None
        if tracked:
            if old:
                self.sum_g = self.sum_g - old[0] + g
                self.sum_f = self.sum_f - old[1] + fx
            else:
                self.sum_g = self.sum_g + g
                self.sum_f = self.sum_f + fx
            self._owned = True
            return
        if not self._owned:  # never update a caller's tensor in place
            self.sum_g, self.sum_f, self._owned = self.sum_g.clone(), self.sum_f.clone(), True
        if old:
            self.sum_g.sub_(old[0])
            self.sum_f.sub_(old[1])
        self.sum_g.add_(g)
        self.sum_f.add_(fx)

    def select(self, rows: Tensor) -> None:
        """Keep the rows ``rows`` of every stored residual, image and sum."""
        self.gs = deque((t.index_select(0, rows) for t in self.gs), maxlen=self.w)
        self.fs = deque((t.index_select(0, rows) for t in self.fs), maxlen=self.w)
        if self.sum_g is not None and self.sum_f is not None:
            self.sum_g = self.sum_g.index_select(0, rows)
            self.sum_f = self.sum_f.index_select(0, rows)
            self._owned = True

    @property
    def full(self) -> bool:
        return len(self.gs) == self.w

    def mean_x(self) -> Tensor:
        """z̃: mean of the stored points (the Polyak average of Eq. 7/53 over the window)."""
        assert self.sum_g is not None and self.sum_f is not None
        return (self.sum_f - self.sum_g) / len(self.gs)

    def mean_rel(self) -> Tensor:
        """Eq. 54 with f(z̃) ≈ mean of the stored f(z_i) (exact for affine f)."""
        assert self.sum_g is not None and self.sum_f is not None
        # the 1/n of both means cancels; tiny as a tensor (a Python float is cast per call)
        tiny = const(torch.finfo(self.sum_f.dtype).tiny, self.sum_f)
        return self.sum_g.norm(dim=1) / (self.sum_f.norm(dim=1) + tiny)


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
    spec: SolverSpec, batch: int, device: torch.device,
    generator: torch.Generator | Draws | None,
) -> Tensor:
    """(B,) long iteration caps: ``max_iter`` each, or uniform in 1..max_iter (paper E.3).

    ``generator``: a :class:`Draws` source such as :class:`~noisydeq.noise.NoiseStream` (a
    sample's cap is then a function of its own address, whatever the batch) or a
    ``torch.Generator``.
    """
    if not spec.random_threshold:
        return torch.full((batch,), spec.max_iter, dtype=torch.long, device=device)
    if generator is None:
        raise NoisyDEQError(
            "solver.random_threshold: needs a generator (pass generator=..., a NoiseStream "
            "or a torch.Generator) so the random caps are seeded"
        )
    if not isinstance(generator, torch.Generator):  # a NoiseStream
        u = generator.rand((batch,), torch.float64, device)
        return (u * spec.max_iter).long().clamp_(max=spec.max_iter - 1).add_(1)
    caps = torch.randint(
        1, spec.max_iter + 1, (batch,), generator=generator, device=generator.device
    )
    return caps.to(device)
