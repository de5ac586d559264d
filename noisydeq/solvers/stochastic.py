"""Stochastic unrolling: Robbins–Monro with Polyak window averaging (paper Eq. 7 and 53).

The paper prints the update as z ← (1 + α) z − α f(z) (Eq. 7) and z ← z − α f(z) (Eq. 53);
both signs are typos — neither has the fixed point z = E[f(z)] as a stable point. The
Robbins–Monro iteration for the root of E[f(z)] − z is the damped form used here,

    z_{k+1} = (1 − α_k) z_k + α_k f(z_k + ε),   α_k = α₀ / (k + 1)^γ,

and the returned solution is the mean of the last ``window`` iterates z_k (Eq. 53 averages
all M iterates; the paper's §3.2 restricts it to a window of width w). γ = 0 is the fixed α
the paper reports works in practice; γ ∈ (1/2, 1] gives the classical convergence
guarantees.
"""

from __future__ import annotations

from torch import Tensor

from noisydeq.solvers.stop import Window
from noisydeq.specs.solver import SolverSpec


class Stochastic:
    """Damped step with a decaying step size; estimate = window mean of the iterates."""

    def __init__(self, spec: SolverSpec, x0: Tensor) -> None:
        self.alpha0 = spec.alpha0
        self.gamma = spec.gamma

    def alpha(self, k: int) -> float:
        """α_k = α₀ / (k + 1)^γ."""
        return self.alpha0 / float(k + 1) ** self.gamma

    def estimate(self, k: int, x: Tensor, fx: Tensor, window: Window | None) -> Tensor:
        assert window is not None
        return window.mean_x()

    def select(self, rows: Tensor) -> None:
        """No per-sample state (the window holds the average)."""

    def step(
        self, k: int, x: Tensor, fx: Tensor, active: Tensor, g: Tensor | None = None
    ) -> Tensor:
        a = self.alpha(k)
        return (1.0 - a) * x + a * fx
