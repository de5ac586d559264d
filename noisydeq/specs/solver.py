"""Solver and gradient specs of a DEQ (paper App. B-C, Eq. 7/53-55; App. E.3), with the
paper's and the LyaDEQ's default solvers."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, SerializerFunctionWrapHandler, model_serializer, model_validator

from noisydeq import limits
from noisydeq.specs.base import StrictModel


class SolverSpec(StrictModel):
    """A fixed-point solver and its stop rule (paper App. B, Eq. 7/53-54; App. E.3).

    ``name``: ``unroll`` (damped iteration z ← (1−tau) z + tau f(z)), ``anderson`` (memory
    ``m``, regularisation ``lam``, mixing ``beta``), ``broyden`` (limited memory ``m``,
    default ``max_iter``), ``stochastic`` (Robbins–Monro z ← (1−α_k) z + α_k f(z),
    α_k = alpha0/(k+1)^gamma, returns the mean of the last ``window`` iterates).
    ``stop``: ``abs`` ‖f(z)−z‖, ``rel`` ‖f(z)−z‖/‖f(z)‖, ``mean_rel`` (Eq. 54, relative
    residual of the ``window``-averaged iterate), each per sample against ``tol``.
    ``random_threshold``: each sample's iteration cap is drawn uniformly in 1..max_iter.
    ``diverge_factor``: a sample whose residual exceeds this factor times
    max(initial residual, ‖f(z0)‖, 1) is flagged diverged. ``traces=False`` skips the
    per-iteration residual traces (the stop rule is still evaluated) and, unless the stop
    rule or the solver needs it, the Eq. 54 window the ``mean_rel`` trace is computed from.
    """

    name: Literal["unroll", "anderson", "broyden", "stochastic"] = "anderson"
    max_iter: int = Field(default=30, ge=1, le=limits.MAX_ITER)
    tol: float = Field(default=1e-3, gt=0.0)
    stop: Literal["abs", "rel", "mean_rel"] = "rel"
    window: int = Field(default=5, ge=1, le=limits.MAX_ITER)
    tau: float = Field(default=1.0, gt=0.0, le=1.0)
    m: int | None = Field(default=None, ge=1, le=1000)
    lam: float = Field(default=1e-4, ge=0.0)
    beta: float = Field(default=1.0, gt=0.0, le=1.0)
    alpha0: float = Field(default=0.5, gt=0.0, le=1.0)
    gamma: float = Field(default=0.0, ge=0.0, le=1.0)
    random_threshold: bool = False
    diverge_factor: float = Field(default=1e6, gt=1.0)
    traces: bool = True

    @model_validator(mode="after")
    def _window_fits(self) -> SolverSpec:
        if self.window > self.max_iter:
            raise ValueError(
                f"window ({self.window}) must not exceed max_iter ({self.max_iter})"
            )
        return self

    def memory(self) -> int:
        """History size: ``m`` if set, else 5 for anderson and ``max_iter`` for broyden."""
        if self.m is not None:
            return self.m
        return self.max_iter if self.name == "broyden" else 5


def lyapunov_solver() -> SolverSpec:
    """The LyaDEQ's forward solver: Anderson acceleration (Chu et al. 2024), memory 5, relative
    residual 1e-4 within 40 iterations, no per-iteration traces."""
    return SolverSpec(name="anderson", max_iter=40, tol=1e-4, stop="rel", window=1,
                      traces=False)


def paper_solver(train: bool, noisy: bool = False) -> SolverSpec:
    """The paper's MNIST / 1-D regression solvers (Table 1).

    Train: unrolling, threshold 60, ε = 1e-3 with stop ``rel`` — or ε = 0.05 with
    ``mean_rel`` (Eq. 54) when training with noise. Test: unrolling, 60, ε = 0.05,
    ``mean_rel``. The paper does not print the averaging window. With unrolling the windowed
    residual telescopes to ‖z_k − z_{k−w}‖/(w‖z̄‖), so its noise floor falls as 1/w
    (docs/analysis.md: on an MNIST DEQ, w · floor ≈ 1.1 · rel floor at 10-20 dB and ≈ 1.7 at
    0 dB, where the rel floor is 1.08). Test: w = 40, the smallest window whose floor is
    below 0.05 at 0 dB, the lowest inference SNR of the paper's Fig. 1a-c, and that still fits
    the threshold (measured on a digits family: every sample converges at 0 dB and above).
    Training with noise: w = 10, which lets an untrained width-32 or -128 cell stop at 10 dB
    (≈ 17-27 steps; 20 dB: ≈ 12) without making every training solve take ≥ 40 steps.
    """
    if train and not noisy:
        return SolverSpec(name="unroll", max_iter=60, tol=1e-3, stop="rel")
    return SolverSpec(name="unroll", max_iter=60, tol=0.05, stop="mean_rel",
                      window=10 if train else 40)


def _default_backward_solver() -> SolverSpec:
    return SolverSpec(name="anderson", max_iter=40, tol=1e-6, stop="rel", window=1)


class GradientSpec(StrictModel):
    """How the backward pass of a DEQ is made (separate from the forward solver).

    ``ift``: implicit function theorem, the linear fixed point g = J_fᵀ g + ∂L/∂z* solved
    with ``backward_solver``; ``phantom``: ``phantom_steps`` damped steps
    z ← (1−phantom_lambda) z + phantom_lambda f(z) from z* (paper App. C: 9 and 0.5);
    ``jfb``: one step z = f(z*); ``bptt``: autograd through the forward unroll.
    ``backward_method`` (``ift``): ``fixed-point`` iterates u ← J_fᵀ u + ∂L/∂z* with
    ``backward_solver``'s method; ``gmres`` solves the same linear system (I − J_fᵀ) u =
    ∂L/∂z* by GMRES (:mod:`noisydeq.solvers.krylov`) within ``backward_solver.max_iter``
    products, to its ``tol`` under its ``stop`` rule (``abs`` or ``rel``); ``fallback``
    runs the fixed-point solve and re-solves only the rows (inputs) it left unconverged by
    GMRES, started from their fixed-point iterate (no extra work where every row converged).
    """

    name: Literal["ift", "phantom", "jfb", "bptt"] = "ift"
    phantom_steps: int = Field(default=9, ge=1, le=limits.MAX_ITER)
    phantom_lambda: float = Field(default=0.5, gt=0.0, le=1.0)
    backward_solver: SolverSpec = Field(default_factory=_default_backward_solver)
    backward_method: Literal["fixed-point", "gmres", "fallback"] = "fixed-point"

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Leaves out ``backward_method`` while it is the default: the field came after
        models were cached, and every earlier cache key (a dump of this spec) must hold."""
        data = handler(self)
        if self.backward_method == "fixed-point":
            data.pop("backward_method", None)
        return data

    @model_validator(mode="after")
    def _gmres_stop(self) -> GradientSpec:
        if self.backward_method != "fixed-point" and self.backward_solver.stop == "mean_rel":
            raise ValueError(f"backward_method '{self.backward_method}' (GMRES) stops on "
                             "'abs' or 'rel', not backward_solver.stop 'mean_rel'")
        return self


class JacobianRegSpec(StrictModel):
    """Jacobian regulariser weight·‖J_f‖²_F/d (Hutchinson, ``n_samples`` probes).

    ``stop_epoch``: the regulariser is switched off from this epoch on (None = never).
    """

    weight: float = Field(default=0.0, ge=0.0)
    stop_epoch: int | None = Field(default=None, ge=0, le=limits.MAX_EPOCHS)
    n_samples: int = Field(default=1, ge=1, le=1000)
