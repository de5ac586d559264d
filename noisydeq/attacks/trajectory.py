"""The intermediate states z_1 … z_N of a DEQ's forward solve (closer-look paper Eq. 1, §4-5).

The solve is the model's own (its active solver, from z⁰ = 0 unless given), run without
gradient while recording the points at which f is evaluated. For sample b, which stopped
after ``steps_b`` f-evaluations:

* z_n (1 ≤ n < steps_b) is the point of the (n+1)-th evaluation — for plain unrolling
  z_n = f(z_{n−1}), for Broyden the n-th quasi-Newton iterate;
* z_n for n ≥ steps_b is the solution the model returns (its prediction's state).

These are the states the early-state and ensemble-state defences predict with and the
unrolled-intermediate / simultaneous-adjoint estimators start from.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from noisydeq.noise import Noise
from noisydeq.solvers import Solution, solve


@dataclass
class States:
    """Recorded points of one solve; see the module docstring for their meaning."""

    points: list[Tensor]  # inputs of the f-evaluations: points[0] = z⁰
    solution: Solution
    xt: Tensor  # the injection x̃ the solve used (no graph)

    @property
    def n_max(self) -> int:
        """N: the largest number of f-evaluations any sample made."""
        return len(self.points)

    def at(self, n: int) -> Tensor:
        """z_n per sample (n ≥ 1; past a sample's stop: its solution)."""
        z = self.solution.z
        if n >= self.n_max:
            return z
        steps = self.solution.steps.to(z.device)
        done = (steps <= n).reshape(-1, *([1] * (z.ndim - 1)))
        return torch.where(done, z, self.points[n])

    def mean(self) -> Tensor:
        """Per-sample mean of z_1 … z_{steps_b} (the ensemble-state defence, §5.2)."""
        z = self.solution.z
        steps = self.solution.steps.to(z.device).clamp(min=1)
        total = torch.zeros_like(z)
        for n in range(1, self.n_max):
            total = total + self.at(n)
        # states n ≥ steps_b all equal the solution: count it once per sample
        extra = (self.n_max - steps).to(z.dtype).reshape(-1, *([1] * (z.ndim - 1)))
        total = total - extra.clamp(min=0) * z + z
        return total / steps.to(z.dtype).reshape(-1, *([1] * (z.ndim - 1)))


def record_states(model: nn.Module, x: Tensor, noise: Noise | None = None,
                  z0: Tensor | None = None) -> States:
    """Solve the model's fixed point for ``x`` (no gradient), keeping every point evaluated."""
    points: list[Tensor] = []
    with torch.no_grad():
        xt = model.inject(x, noise)
        f = model.cell_fn(xt, noise)

        def recording(z: Tensor) -> Tensor:
            points.append(z.detach().clone())
            return f(z)

        start = model.initial_state(xt) if z0 is None else z0.detach()
        sol = solve(recording, start, model.active_solver())
    return States(points=points, solution=sol, xt=xt)


def predict(model: nn.Module, z: Tensor) -> Tensor:
    """Logits of a hidden state: head(pool(z))."""
    return model.head(model.pool(z))
