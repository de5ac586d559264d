"""DEQ gradient estimators for attacks (closer-look paper §2.1, §4, §5.1): callables
``x -> logits`` whose autograd graph with respect to x is the estimator's.

* ``backprop`` — the model as it is (an FFW; a DEQ with its own gradient method).
* ``exact`` — the implicit-function-theorem gradient at the fixed point (their Eq. 2),
  :func:`noisydeq.solvers.attach_gradient` with ``ift``; its backward solve to rel 1e-6,
  or to ``btol`` where the spec sets one, by Anderson on u = J_fᵀu + v with GMRES on the
  same linear system for the inputs Anderson left unconverged (default, ``fallback``), by
  Anderson alone (``bsolver=fixed-point``) or by GMRES alone (``bsolver=gmres``).
* ``phantom`` — k damped unroll steps from z* (their Eq. 4-6).
* ``unrolled`` — the same unroll from an intermediate state z_n of the forward solve
  (Eq. 13-16); ``unrolled-ensemble`` averages the logits of the unrolls of every state
  z_1 … z_N, so its gradient is the mean of theirs (Eq. 17 applied to unrolling).
* ``adjoint`` / ``adjoint-ensemble`` — the simultaneous adjoint
  (:mod:`noisydeq.attacks.adjoint`).

Final-state estimators (``exact``, ``phantom``, ``backprop`` on a DEQ) warm-start each
solve from the fixed point of the previous call on a batch of the same shape — the PGD
iterate moves by at most α per step, so its fixed point is close (Gurumurthy et al. 2021
fold the attack into the solver for the same reason). Intermediate-state estimators always
solve from z⁰ = 0: their states are those of the defended model's own forward pass.
Ensembles take the loss gradient at the averaged logits (what autograd hands back), the
head's Jacobian at each state.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import Tensor, nn

from noisydeq.attacks.adjoint import SimultaneousAdjoint
from noisydeq.attacks.spec import EstimatorSpec
from noisydeq.attacks.trajectory import predict, record_states
from noisydeq.errors import NoisyDEQError
from noisydeq.noise import Noise
from noisydeq.solvers import attach_gradient, solve
from noisydeq.solvers.gradients import AdjointStart
from noisydeq.specs.solver import GradientSpec

#: points after which a warm-started solve's ``mean_rel`` stop may stop a sample (Eq. 54
#: over the points available; a cold solve waits for its full window)
WARM_MIN_WINDOW = 1


def is_deq(model: nn.Module) -> bool:
    return getattr(model, "kind", None) == "deq"


@contextmanager
def gradient_method(model: nn.Module, spec: GradientSpec | None):
    """Use ``spec`` as the DEQ's gradient method for the duration (restored after)."""
    if spec is None:
        yield
        return
    saved = model.gradient
    model.gradient = spec
    try:
        yield
    finally:
        model.gradient = saved


class FinalState:
    """Logits of the model's solution with the gradient of ``gradient`` (None: the model's).

    Warm (a DEQ whose gradient is not ``bptt``): each call after the first solves from the
    previous call's fixed point, lets the ``mean_rel`` stop rule stop as soon as Eq. 54 holds
    over the points evaluated so far (:data:`WARM_MIN_WINDOW`; a cold solve must fill its
    window first), and starts an ``ift`` backward solve from the previous call's adjoint.
    Both solves keep their tolerance; only the start and the earliest stop change. The first
    call (and every call after :meth:`reset`) is the model's own forward, unchanged.
    """

    def __init__(self, model: nn.Module, noise: Noise | None = None,
                 gradient: GradientSpec | None = None, warm: bool = True,
                 generator: torch.Generator | None = None) -> None:
        self.model, self.noise, self.gradient = model, noise, gradient
        self.generator = generator  # random solver thresholds (a DEQ training with them)
        self.warm = warm and is_deq(model)
        self._z: Tensor | None = None
        self._adjoint = AdjointStart()
        self.solves = 0  # f-evaluations spent in forward solves (for benchmarks)

    def reset(self) -> None:
        """Forget the warm-start state (next call solves from z⁰ = 0, and v)."""
        self._z = None
        self._adjoint.reset()

    def __call__(self, x: Tensor) -> Tensor:
        if not is_deq(self.model):
            return self.model(x, self.noise)
        grad = self.gradient if self.gradient is not None else self.model.gradient
        if not self.warm or grad.name == "bptt":
            with gradient_method(self.model, self.gradient):
                out = self.model(x, self.noise, return_solution=True, generator=self.generator)
            self.solves += int(out.solution.steps.sum())
            return out.logits
        return self._warm(x, grad)

    def _warm(self, x: Tensor, grad: GradientSpec) -> Tensor:
        """The model's forward (inject, solve, attach the gradient, head) with warm starts."""
        model = self.model
        xt = model.inject(x, self.noise)
        f = model.cell_fn(xt, self.noise)
        z0 = self._z if self._z is not None and self._z.shape == xt.shape else None
        fresh = z0 is None
        if fresh:
            z0 = model.initial_state(xt)
            self._adjoint.reset()
        f_rows = model.cell_fn_rows(xt, self.noise)
        sol = solve(f, z0.to(xt), model.active_solver(), generator=self.generator,
                    f_rows=f_rows, min_window=None if fresh else WARM_MIN_WINDOW)
        model.last_solution = sol
        self.solves += int(sol.steps.sum())
        ok = ~sol.diverged.reshape(-1, *([1] * (sol.z.ndim - 1)))
        self._z = torch.where(ok, sol.z, torch.zeros_like(sol.z)).detach()
        z_star = sol.z.detach()
        z = attach_gradient(f, z_star, grad, self._adjoint, f_rows) \
            if torch.is_grad_enabled() else z_star
        return predict(model, z)


class Unrolled:
    """Unroll k damped steps from state z_n (or every state, averaging the logits)."""

    def __init__(self, model: nn.Module, noise: Noise | None = None, *, k: int = 5,
                 lam: float = 0.5, state: int | None = None, ensemble: bool = False) -> None:
        self.model, self.noise = model, noise
        self.k, self.lam, self.state, self.ensemble = k, lam, state, ensemble

    def reset(self) -> None:
        pass

    def _unroll(self, f, z: Tensor) -> Tensor:
        for _ in range(self.k):
            z = (1.0 - self.lam) * z + self.lam * f(z)
        return predict(self.model, z)

    def __call__(self, x: Tensor) -> Tensor:
        states = record_states(self.model, x.detach(), self.noise)
        xt = self.model.inject(x, self.noise)
        f = self.model.cell_fn(xt, self.noise)
        if not self.ensemble:
            z = states.solution.z if self.state is None else states.at(self.state)
            return self._unroll(f, z)
        total = None
        for n in range(1, states.n_max + 1):
            logits = self._unroll(f, states.at(n))
            total = logits if total is None else total + logits
        return total / states.n_max


#: what a query attack (Square, alone or as AutoAttack's last part) queries: the model's own
#: forward, every solve from z⁰ = 0 — not a gradient estimator's (a warm start from the
#: previous query's fixed point, stopped early under a loose stop, or an unroll from z_n
#: would change the function queried)
QUERY_ESTIMATOR = EstimatorSpec(name="backprop", warm=False)


def query_view(estimator, model: nn.Module) -> AttackModule:
    """The :class:`AttackModule` a query attack runs on: ``model``'s own cold forward under
    ``estimator``'s noise (:data:`QUERY_ESTIMATOR`)."""
    noise = getattr(estimator, "noise", None)
    return AttackModule(make_estimator(model, QUERY_ESTIMATOR, noise), model)


def make_estimator(model: nn.Module, spec: EstimatorSpec, noise: Noise | None = None):
    """The callable ``x -> logits`` of ``spec`` for ``model`` (see module docstring)."""
    name = spec.name
    if not is_deq(model):
        if name != "backprop":
            raise NoisyDEQError(
                f"estimator '{name}': only for DEQs; a {getattr(model, 'kind', 'model')} is "
                "differentiated by backprop"
            )
        return FinalState(model, noise)
    if name == "backprop":
        return FinalState(model, noise, None, spec.warm)
    if name == "exact":
        grad = GradientSpec(name="ift")
        if spec.btol is not None:
            grad.backward_solver = grad.backward_solver.model_copy(update={"tol": spec.btol})
        grad.backward_method = spec.backward_method()
        return FinalState(model, noise, grad, spec.warm)
    if name == "phantom":
        grad = GradientSpec(name="phantom", phantom_steps=spec.k, phantom_lambda=spec.lam)
        return FinalState(model, noise, grad, spec.warm)
    if name in ("unrolled", "unrolled-ensemble"):
        return Unrolled(model, noise, k=spec.k, lam=spec.lam, state=spec.state,
                        ensemble=name == "unrolled-ensemble")
    adj = SimultaneousAdjoint(model, noise, beta=spec.beta, state=spec.state,
                              ensemble=name == "adjoint-ensemble")
    adj.reset = lambda: None  # type: ignore[attr-defined]
    return adj


class AttackModule(nn.Module):
    """An ``nn.Module`` view of an estimator for torchattacks: image-shaped inputs
    (B, C, H, W) in, the estimator's logits out (inputs are flattened for the model)."""

    def __init__(self, estimator, model: nn.Module) -> None:
        super().__init__()
        self.estimator = estimator
        self.inner = model  # registered so torchattacks finds a parameter (its device)
        # torchattacks restores the mode it found after an attack: a fresh module is in
        # training mode, which would switch a DEQ to its training solver afterwards
        self.train(model.training)

    def forward(self, x: Tensor) -> Tensor:
        return self.estimator(x.reshape(x.shape[0], -1))
