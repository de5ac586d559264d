"""Damped fixed-point unrolling z ← (1 − τ) z + τ f(z) (τ = 1: plain iteration, paper Eq. 2)."""

from __future__ import annotations

from torch import Tensor

from noisydeq.solvers.stop import Window
from noisydeq.specs.solver import SolverSpec


class Unroll:
    """One damped Picard step per iteration; the estimate is f of the last point."""

    def __init__(self, spec: SolverSpec, x0: Tensor) -> None:
        self.tau = spec.tau

    def estimate(self, k: int, x: Tensor, fx: Tensor, window: Window | None) -> Tensor:
        return fx

    def select(self, rows: Tensor) -> None:
        """No per-sample state."""

    def step(
        self, k: int, x: Tensor, fx: Tensor, active: Tensor, g: Tensor | None = None
    ) -> Tensor:
        if self.tau == 1.0:
            return fx
        return (1.0 - self.tau) * x + self.tau * fx
