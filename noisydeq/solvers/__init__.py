"""Fixed-point solvers, stop rules, the Solution record and gradient methods (paper App. B, C).

Public API (docs/architecture.md): ``solve``, ``solve_with_grad``, ``Solution``,
``attach_gradient``, ``jacobian_frobenius_hutchinson``.
"""

from noisydeq.solvers.gradients import attach_gradient
from noisydeq.solvers.jacobian import jacobian_frobenius_hutchinson
from noisydeq.solvers.registry import SOLVERS, register, solve, solve_with_grad
from noisydeq.solvers.solution import Solution

__all__ = [
    "SOLVERS",
    "Solution",
    "attach_gradient",
    "jacobian_frobenius_hutchinson",
    "register",
    "solve",
    "solve_with_grad",
]
