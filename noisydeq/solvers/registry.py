"""Solver registry and the public entry points ``solve`` / ``solve_with_grad``.

``solve(f, z0, spec, generator=None) -> Solution`` finds z = f(z) (or z = E[f(z)] for a
stochastic f, paper Eq. 6) without building an autograd graph; gradients are attached
afterwards by :mod:`noisydeq.solvers.gradients`. ``solve_with_grad`` runs ``unroll`` or
``stochastic`` with autograd recording every step: that is the ``bptt`` gradient method.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from noisydeq.errors import NoisyDEQError
from noisydeq.solvers.anderson import Anderson
from noisydeq.solvers.broyden import Broyden
from noisydeq.solvers.draws import Draws
from noisydeq.solvers.loop import Method, run_loop
from noisydeq.solvers.solution import Solution
from noisydeq.solvers.stochastic import Stochastic
from noisydeq.solvers.unroll import Unroll
from noisydeq.specs.base import coerce
from noisydeq.specs.solver import SolverSpec

SOLVERS: dict[str, Callable[[SolverSpec, Tensor], Method]] = {
    "unroll": Unroll,
    "anderson": Anderson,
    "broyden": Broyden,
    "stochastic": Stochastic,
}
GRAD_SOLVERS = ("unroll", "stochastic")


def register(name: str, factory: Callable[[SolverSpec, Tensor], Method]) -> None:
    """Register a solver method factory under ``name``."""
    SOLVERS[name] = factory


def as_spec(spec: SolverSpec | dict[str, Any] | None) -> SolverSpec:
    """Accept a :class:`SolverSpec`, a plain dict (validated strictly) or None (defaults)."""
    return coerce(SolverSpec, spec, "solver")


def _check_z0(z0: Tensor) -> None:
    if not isinstance(z0, Tensor) or not z0.is_floating_point() or z0.ndim < 1 or z0.shape[0] < 1:
        what = (
            f"{z0.dtype} tensor of shape {tuple(z0.shape)}"
            if isinstance(z0, Tensor)
            else type(z0).__name__
        )
        raise NoisyDEQError(
            f"solver: z0 must be a floating tensor with a batch dimension, got {what}"
        )


def _run(
    f: Callable[[Tensor], Tensor],
    z0: Tensor,
    spec: SolverSpec,
    generator: torch.Generator | Draws | None,
    f_rows: Callable[[Tensor, Tensor], Tensor] | None = None,
    min_window: int | None = None,
    whole_set: bool = False,
) -> Solution:
    if spec.name not in SOLVERS:
        raise NoisyDEQError(
            f"solver.name: '{spec.name}' is not available (allowed: {', '.join(SOLVERS)})"
        )
    return run_loop(
        f, z0, spec, SOLVERS[spec.name], generator, needs_window=spec.name == "stochastic",
        f_rows=f_rows, min_window=min_window, whole_set=whole_set,
    )


def solve(
    f: Callable[[Tensor], Tensor],
    z0: Tensor,
    spec: SolverSpec | dict[str, Any] | None = None,
    *,
    generator: torch.Generator | Draws | None = None,
    f_rows: Callable[[Tensor, Tensor], Tensor] | None = None,
    min_window: int | None = None,
    whole_set: bool = False,
) -> Solution:
    """Solve z = f(z) per sample from ``z0`` with ``spec`` (paper Eq. 2, 6-7, 53-54), no grad.

    ``f`` maps a batch-first tensor to one of the same shape. ``f_rows(z_rows, rows)``
    (optional) is f on the rows ``rows`` of the batch; with it, samples that stopped are no
    longer evaluated (:mod:`noisydeq.solvers.loop`), with the same result. ``generator``
    (a :class:`~noisydeq.noise.NoiseStream`, or a ``torch.Generator``) seeds the random
    thresholds of ``spec.random_threshold`` (App. E.3). ``min_window``: let ``mean_rel``
    stop a sample once this many points are in its window (Eq. 54 over the points
    available) instead of a full window — for a solve warm-started from a nearby fixed
    point (attacks), which may already be converged. A partial window averages fewer draws
    of a stochastic f, so its Eq. 54 is larger in expectation than a full window's: noise
    alone does not make it stop sooner (E‖ḡ‖² = ‖E g‖² + tr Cov(g)/n). ``whole_set``:
    ``f_rows`` sees the loop's working set, not only its active rows
    (:func:`~noisydeq.solvers.loop.run_loop`).
    """
    spec = as_spec(spec)
    _check_z0(z0)
    with torch.no_grad():
        return _run(f, z0.detach(), spec, generator, f_rows, min_window, whole_set)


def solve_with_grad(
    f: Callable[[Tensor], Tensor],
    z0: Tensor,
    spec: SolverSpec | dict[str, Any] | None = None,
    *,
    generator: torch.Generator | Draws | None = None,
) -> Solution:
    """Like :func:`solve` but records autograd through every step (the ``bptt`` gradient).

    Only ``unroll`` and ``stochastic`` can be differentiated this way; ``Solution.z`` then
    carries the graph of the whole unroll (frozen samples stop contributing when they stop).
    """
    spec = as_spec(spec)
    _check_z0(z0)
    if spec.name not in GRAD_SOLVERS:
        raise NoisyDEQError(
            f"solver.name: bptt needs a differentiable solver "
            f"(allowed: {', '.join(GRAD_SOLVERS)}), got '{spec.name}'"
        )
    with torch.enable_grad():
        return _run(f, z0, spec, generator)
