"""A test-time iteration budget that grows with the problem size (paper App. D.4).

A convolutional cell moves information by one kernel radius per iteration, so the number of
iterations a DEQ needs to reach its fixed point grows with the input: linearly with the
length of a bit string (a prefix parity depends on every earlier bit), and up to the area of
a maze (a path can wind through most cells). Extrapolation needs the solver's cap to grow
with it (Bansal et al.'s "thinking longer"): the cap of the solver a model was trained and
tested with at ``train_size`` becomes

    max_iter(size) = clip(⌈max_iter · (size / train_size)^exponent⌉, 1, cap)

with ``exponent`` 1 for strings and 2 for mazes (size = length or side). The averaging window
of ``mean_rel`` shrinks with a cap below it. Everything else in the solver is unchanged.
"""

from __future__ import annotations

import math

from pydantic import Field

from noisydeq.specs.base import StrictModel
from noisydeq.specs.solver import SolverSpec


class IterationBudget(StrictModel):
    """max_iter ∝ (size / ``train_size``)^``exponent``, at most ``cap`` (None = no cap)."""

    train_size: float = Field(gt=0)
    exponent: float = Field(default=1.0, ge=0.0)
    cap: int | None = Field(default=None, ge=1)

    def max_iter(self, base: int, size: float) -> int:
        """The scaled iteration cap for an input of ``size`` given the training cap ``base``."""
        n = math.ceil(base * (float(size) / self.train_size) ** self.exponent - 1e-9)
        if self.cap is not None:
            n = min(n, self.cap)
        return max(1, n)

    def solver_for(self, spec: SolverSpec, size: float) -> SolverSpec:
        """``spec`` with its ``max_iter`` (and, if needed, ``window``) scaled to ``size``."""
        n = self.max_iter(spec.max_iter, size)
        if n == spec.max_iter:
            return spec
        return spec.model_copy(update={"max_iter": n, "window": min(spec.window, n)})
