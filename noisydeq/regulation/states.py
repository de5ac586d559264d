"""Intermediate states of a DEQ's dynamics in training and evaluation (regulation paper
§3.3 and §5.4).

* Eq. 10: the training loss at a random intermediate state, E_{i ~ U[1, N]} L(h(z[i]), y).
  Each sample draws its own i (the solver's per-sample random threshold, App. E.3 of the
  main paper) and its state z[i] is the solver's estimate after i iterations from z⁰ = 0,
  differentiated *exactly*: autograd through the i iterations (``bptt``) — not the phantom
  tail of a few damped steps from z[i] that the paper's code uses. This needs a solver
  autograd can run through (``unroll``, ``stochastic``).
* Eq. 12-13: P, the share of inputs whose clean prediction has lower entropy than the
  perturbed one, and ΔH, the mean entropy difference clean − perturbed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torch import Tensor, nn

from noisydeq.errors import NoisyDEQError
from noisydeq.noise import Noise
from noisydeq.solvers.registry import GRAD_SOLVERS
from noisydeq.specs.optimizer import RandomStateSpec
from noisydeq.specs.solver import GradientSpec, SolverSpec

#: a tolerance no residual reaches: the solver runs every sample to its drawn threshold
NEVER = 1e-300


@contextmanager
def temporarily(model: nn.Module, **attrs: Any) -> Iterator[nn.Module]:
    """Set attributes of ``model`` for the duration (restored after)."""
    saved = {k: getattr(model, k) for k in attrs}
    for k, v in attrs.items():
        setattr(model, k, v)
    try:
        yield model
    finally:
        for k, v in saved.items():
            setattr(model, k, v)


def random_state_solver(model: nn.Module, spec: RandomStateSpec) -> SolverSpec:
    """The training solver run to a per-sample threshold i ~ U[1, N] with no early stop."""
    check_random_state(model)
    base: SolverSpec = model.solver
    n = spec.states or base.max_iter
    return base.model_copy(update={
        "max_iter": n, "random_threshold": True, "stop": "abs", "tol": NEVER,
        "window": min(base.window, n), "traces": False,
    })


def check_random_state(model: nn.Module) -> None:
    """One line when the Eq. 10 loss cannot be computed exactly for ``model``."""
    kind = getattr(model, "kind", None)
    if kind != "deq":
        raise NoisyDEQError(
            f"train.random_state: the random-intermediate-state loss (Eq. 10) needs a DEQ; "
            f"a {kind or type(model).__name__} model has no solver states"
        )
    name = model.solver.name
    if name not in GRAD_SOLVERS:
        raise NoisyDEQError(
            f"train.random_state: the exact loss back-propagates through the solver's "
            f"iterations, which needs the training solver to be one of "
            f"{', '.join(GRAD_SOLVERS)}; this DEQ trains with '{name}'"
        )


def random_state_forward(model: nn.Module, x: Tensor, noise: Noise | None,
                         generator: Any, spec: RandomStateSpec
                         ) -> tuple[Tensor, Tensor | None, Tensor]:
    """(logits of z[i], Jacobian-regulariser term or None, the thresholds i) for a batch.

    ``generator`` draws the thresholds (one per sample, uniform in 1…N): a counter-based
    :class:`~noisydeq.noise.NoiseStream` keyed by sample, or a ``torch.Generator``.
    """
    solver = random_state_solver(model, spec)
    with temporarily(model, solver=solver, gradient=GradientSpec(name="bptt")):
        out = model(x, noise, return_solution=True, generator=generator)
    return out.logits, out.jac_loss, out.solution.steps


def entropy_shift(h_clean: Tensor, h_adv: Tensor) -> tuple[float, float]:
    """(P in %, ΔH) of Eq. 12-13 from per-sample entropies of clean and perturbed inputs."""
    h_clean, h_adv = h_clean.double(), h_adv.double()
    p = float((h_clean < h_adv).double().mean()) * 100.0
    return p, float((h_clean - h_adv).mean())
