"""Gradient methods for a solved fixed point z* = f(z*) (paper App. C; separate from solvers).

``attach_gradient(f, z_star, spec) -> z`` returns a tensor whose value is one step of f from
the (detached) solution and whose autograd graph is the chosen method's:

* ``ift`` — implicit function theorem. z = f(z*) is recorded once; a hook on z replaces the
  incoming gradient v = ∂L/∂z by the solution u of the linear fixed point u = J_fᵀ u + v
  (J_f = ∂f/∂z at z*), solved with ``spec.backward_solver`` using vector–Jacobian products of
  the same recorded call. Back-propagating u through f(z*) then gives
  ∂L/∂θ = v (I − J_f)⁻¹ ∂f/∂θ, the exact implicit gradient.
* ``phantom`` — ``phantom_steps`` damped steps z ← (1 − λ) z + λ f(z) from z* with autograd
  (paper App. C: K = 9, λ = 0.5).
* ``jfb`` — Jacobian-free backprop: the single step z = f(z*).
* ``bptt`` — not attached afterwards: run the forward solve with
  :func:`noisydeq.solvers.solve_with_grad` (``unroll``/``stochastic``); its ``Solution.z``
  already carries the graph. Passing ``bptt`` here is an error that says so.

The ``ift`` backward solve never records per-iteration traces (its
:class:`~noisydeq.solvers.Solution` is used for ``z`` and ``diverged`` only), whatever
``backward_solver.traces`` says: the same iterates and stops, without the trace work.

``backward_method``: ``fixed-point`` (the solve above), ``gmres`` (the same linear system
(I − J_fᵀ) u = v by GMRES, :mod:`noisydeq.solvers.krylov`) or ``fallback``: the fixed-point
solve, then GMRES on the rows (samples) it left unconverged only, started from their
fixed-point iterate (a diverged row from the solve's start), :func:`gmres_fallback`. Where
every row converged the fallback does nothing (the fixed-point result, bit for bit).
:func:`tally_backward` counts, while active, the rows of every ``ift`` backward solve, those
re-solved by the fallback and those that still missed the tolerance.

Skipping stopped samples: given ``f_rows`` (f on some rows, as for
:func:`~noisydeq.solvers.solve`) and at least :data:`ROW_SKIP_MIN_FEATURES` elements of z
per sample, the ``ift`` backward solve drops the samples whose solve stopped like the
forward loop, its vector–Jacobian products made on f recorded again on the rows still
running (:class:`RowGraph`, with the noise of the full-batch call replayed); the GMRES
fallback on the unconverged rows likewise. The gradient is bit-identical to the
full-batch solve's.

``ift`` can warm-start its backward solve: pass an :class:`AdjointStart` and each solve
starts near the adjoint u of the previous one on a batch of the same shape (else from v),
then stores its own — for successive solves at nearby points (the steps of an attack).

A stochastic f draws fresh noise at each call; ``ift`` and ``jfb`` call it once, ``phantom``
``phantom_steps`` times. The ambient grad mode is respected and nothing else: under
``torch.no_grad()`` the same value is returned without a graph, and with grad enabled the
graph is built whatever the module's train/eval mode (so attacks on an eval-mode DEQ get
gradients with respect to the input).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from noisydeq.errors import NoisyDEQError
from noisydeq.noise import DrawTape, ReplayMismatch, record_draws, replay_draws, row_subset
from noisydeq.solvers.krylov import gmres
from noisydeq.solvers.loop import MIN_ROWS, padded_active_rows
from noisydeq.solvers.registry import solve
from noisydeq.solvers.solution import Solution, describe
from noisydeq.specs.base import coerce
from noisydeq.specs.solver import GradientSpec, SolverSpec

#: fewest elements per sample of z for which the ``ift`` backward solve skips stopped
#: samples (with ``f_rows``): a row's share of an iteration (its vector–Jacobian product
#: and Anderson step, ∝ D² for a dense cell) must outweigh what skipping costs (the working
#: set's gathers, a recording of f per set). Measured on CPU, one thread
#: (docs/robustness-attack-cost.md): at D = 128 an iteration is fixed cost (PGD-10 on the
#: mnist10k DEQ w=128 1.03×, the digits training step b64 1.08× with skipping), at D = 222
#: skipping saves 5-15 % of a warm attack. Bitwise the same gradient either way.
ROW_SKIP_MIN_FEATURES = 192


def as_gradient_spec(spec: GradientSpec | dict[str, Any] | None) -> GradientSpec:
    """Accept a :class:`GradientSpec`, a dict (validated strictly) or None (defaults)."""
    return coerce(GradientSpec, spec, "gradient")


class AdjointStart:
    """Warm start of the ``ift`` backward solve u = J_fᵀ u + v from the previous one.

    The solution is linear in v, u = (I − J_fᵀ)⁻¹ v; for a nearby point (J_f barely moved)
    the start u_prev + (v − v_prev) keeps the previous solution and adds the new right-hand
    side's change at first order. Rows whose previous solve diverged start from v.
    """

    def __init__(self) -> None:
        self.u: Tensor | None = None
        self.v: Tensor | None = None
        self.ok: Tensor | None = None  # (B,) rows whose solve did not diverge

    def reset(self) -> None:
        self.u = self.v = self.ok = None

    def start(self, v: Tensor) -> Tensor:
        """u⁰ for the right-hand side ``v``: v, or the warm guess where one is stored."""
        if self.u is None or self.v is None or self.ok is None or self.u.shape != v.shape:
            return v
        guess = self.u + (v - self.v)
        return torch.where(self.ok.reshape(-1, *([1] * (v.ndim - 1))), guess, v)

    def store(self, u: Tensor, v: Tensor, diverged: Tensor) -> None:
        """Keep the solution ``u`` of the right-hand side ``v`` for the next solve."""
        self.u, self.v, self.ok = u.detach(), v.detach(), ~diverged.to(u.device)


@dataclass
class BackwardTally:
    """Rows (samples) of the ``ift`` backward solves made while :func:`tally_backward` was
    active: ``rows`` solved, ``fallback`` re-solved by GMRES (``backward_method``
    ``fallback``), ``unconverged`` that missed the tolerance in the end (or diverged),
    ``solves`` backward solves."""

    solves: int = 0
    rows: int = 0
    fallback: int = 0
    unconverged: int = 0


_TALLIES: list[BackwardTally] = []


@contextmanager
def tally_backward() -> Iterator[BackwardTally]:
    """Count the ``ift`` backward solves' rows (:class:`BackwardTally`) made inside."""
    tally = BackwardTally()
    _TALLIES.append(tally)
    try:
        yield tally
    finally:
        _TALLIES.remove(tally)


def _record(sol: Solution, fallback: int) -> None:
    if not _TALLIES:
        return
    missed = int((~sol.converged).sum())
    for t in _TALLIES:
        t.solves += 1
        t.rows += int(sol.converged.numel())
        t.fallback += fallback
        t.unconverged += missed


class RowGraph:
    """Vector–Jacobian products uᵀJ_f(z*) on some rows (samples) of the batch.

    Starts from the full-batch recorded call z = f(z_in) of :func:`_ift`. Asked for fewer
    rows than it holds, or rows it does not hold (:meth:`focus`), it records f again on
    those rows of z* only — ``f_rows(z*[rows], rows)`` inside
    :func:`~noisydeq.noise.row_subset`, its noise replayed from ``tape`` (the full call's
    draws, :class:`~noisydeq.noise.DrawTape`), so the same map. The backward solve asks once
    per working set of its loop (``whole_set``: a recording each time the set halves, not
    each iteration); sets have at least :data:`~noisydeq.solvers.loop.MIN_ROWS` rows
    (matmul rounding). A product on some of the rows it holds is made with zero cotangents
    on the others (rows never mix: the contract of ``f_rows``). Where the replay finds
    other draws than the recording (an f whose noise does not come from a
    :class:`~noisydeq.noise.NoiseStream`), it keeps the graph it has — the full-batch
    products, never another map. ``recorded`` counts the recordings.
    """

    def __init__(self, f_rows: Callable[[Tensor, Tensor], Tensor], z0: Tensor, z_in: Tensor,
                 z: Tensor, tape: DrawTape | None) -> None:
        self.f_rows, self.z0, self.tape = f_rows, z0, tape
        self.batch = z0.shape[0]
        self.z_in, self.z = z_in, z
        self.rows: Tensor | None = None  # the batch rows of (z_in, z); None: all
        self.where: Tensor | None = None  # (B,) position of each batch row in rows, or −1
        self.replayable = tape is not None
        self.recorded = 0

    def held(self) -> int:
        return self.batch if self.rows is None else self.rows.numel()

    def focus(self, rows: Tensor) -> None:
        """Record f on ``rows`` (ascending) when they are fewer than the rows held, or not
        all held; call inside ``row_subset(rows, …)``."""
        if rows is self.rows:  # (the loop passes one tensor per working set)
            return
        have = self.held()
        outside = self.where is not None and bool((self.where.index_select(0, rows) < 0).any())
        if not outside and (rows.numel() >= have or not self.replayable):
            return
        if not self.replayable or rows.numel() < MIN_ROWS:
            raise ValueError("RowGraph.focus: rows that cannot be recorded")
        assert self.tape is not None
        try:
            with torch.enable_grad(), replay_draws(self.tape):
                z_in = self.z0.index_select(0, rows).requires_grad_(True)
                z = self.f_rows(z_in, rows)
        except ReplayMismatch:
            if outside:
                raise
            self.replayable = False
            return
        self.z_in, self.z, self.rows = z_in, z, rows
        where = torch.full((self.batch,), -1, dtype=torch.long, device=rows.device)
        self.where = where.index_copy_(0, rows, torch.arange(rows.numel(), device=rows.device))
        self.recorded += 1

    def vjp(self, u: Tensor, rows: Tensor | None = None) -> Tensor:
        """uᵀJ_f on the batch rows ``rows`` (None: every row held); ``u`` has their rows."""
        if rows is None or rows.numel() == self.held():
            (ju,) = torch.autograd.grad(self.z, self.z_in, u, retain_graph=True)
            return ju
        loc = rows if self.where is None else self.where.index_select(0, rows)
        if self.where is not None and bool((loc < 0).any()):
            raise ValueError("RowGraph.vjp: rows outside the recorded ones")
        full = u.new_zeros((self.held(), *u.shape[1:])).index_copy_(0, loc, u)
        (ju,) = torch.autograd.grad(self.z, self.z_in, full, retain_graph=True)
        return ju.index_select(0, loc)


def gmres_fallback(jt: Callable[[Tensor], Tensor], v: Tensor, u0: Tensor, sol: Solution,
                   spec: SolverSpec, graph: RowGraph | None = None) -> tuple[Solution, int]:
    """Re-solve by GMRES the rows of the fixed-point solve ``sol`` (of u = J_fᵀu + v from
    ``u0``) that did not converge, only those: each from its iterate ``sol.z`` (a diverged
    row from ``u0``), to ``spec``'s tolerance within its ``max_iter`` products. ``jt`` acts
    on the whole batch (rows never mix), so a product is made on the batch with zero rows
    elsewhere; with a :class:`RowGraph` ``graph``, on f recorded on those rows (padded to
    :data:`~noisydeq.solvers.loop.MIN_ROWS` with converged ones) instead, when they are
    fewer than the rows it holds. Returns the merged :class:`Solution` (``steps``: fixed-point
    plus GMRES products per row) and the number of rows re-solved; ``sol`` itself where all
    converged.
    """
    missed = ~sol.converged
    n = int(missed.sum())
    if n == 0:
        return sol, 0
    rows = missed.nonzero().squeeze(1)
    div = sol.diverged.reshape(-1, *([1] * (v.ndim - 1)))
    start = torch.where(div, u0, sol.z).index_select(0, rows)
    full = torch.zeros_like(v)

    def jt_rows(p: Tensor) -> Tensor:
        full.index_copy_(0, rows, p)
        return jt(full).index_select(0, rows)

    if graph is not None:
        padded = padded_active_rows(missed)
        with row_subset(padded, graph.batch, missed.index_select(0, padded)):
            graph.focus(padded)

        def jt_rows(p: Tensor) -> Tensor:  # noqa: F811 (the row-graph products)
            return graph.vjp(p, rows)

    sub = gmres(jt_rows, v.index_select(0, rows), start, spec)
    converged = sol.converged.index_copy(0, rows, sub.converged)
    diverged = sol.diverged.index_copy(0, rows, sub.diverged)
    steps = sol.steps.index_add(0, rows, sub.steps)
    merged = Solution(z=sol.z.index_copy(0, rows, sub.z), steps=steps, converged=converged,
                      diverged=diverged, trace=sol.trace, n_iter=sol.n_iter + sub.n_iter,
                      reason=describe(converged, diverged))
    return merged, n


def attach_gradient(
    f: Callable[[Tensor], Tensor],
    z_star: Tensor,
    spec: GradientSpec | dict[str, Any] | None = None,
    adjoint: AdjointStart | None = None,
    f_rows: Callable[[Tensor, Tensor], Tensor] | None = None,
) -> Tensor:
    """Return z = (one or more steps of f from z*) with the graph of ``spec.name`` (App. C).

    ``adjoint``: warm-start state of the ``ift`` backward solve (ignored by other methods).
    ``f_rows(z_rows, rows)``: f on the rows ``rows`` of the batch (as for
    :func:`~noisydeq.solvers.solve`; rows never mix, noise from
    :class:`~noisydeq.noise.NoiseStream` s); with it the ``ift`` backward solve skips the
    samples that stopped (:class:`RowGraph`), with the same gradient. Ignored by the
    other methods.
    """
    spec = as_gradient_spec(spec)
    z0 = z_star.detach()
    if spec.name == "bptt":
        raise NoisyDEQError(
            "gradient.name: 'bptt' differentiates the forward unroll itself; solve with "
            "noisydeq.solvers.solve_with_grad instead of attach_gradient"
        )
    if spec.name == "jfb":
        return f(z0)
    if spec.name == "phantom":
        lam = spec.phantom_lambda
        z = z0
        for _ in range(spec.phantom_steps):
            z = (1.0 - lam) * z + lam * f(z)
        return z
    if not torch.is_grad_enabled():  # inference: same value, no graph to build
        return f(z0)
    return _ift(f, z0, spec, adjoint, f_rows)


def _ift(f: Callable[[Tensor], Tensor], z0: Tensor, spec: GradientSpec,
         adjoint: AdjointStart | None = None,
         f_rows: Callable[[Tensor, Tensor], Tensor] | None = None) -> Tensor:
    """z = f(z*) with a backward hook solving u = J_fᵀ u + v (implicit function theorem)."""
    z_in = z0.clone().requires_grad_(True)
    tape: DrawTape | None = None
    if z0[0].numel() < ROW_SKIP_MIN_FEATURES:
        f_rows = None
    if f_rows is None:
        z = f(z_in)
    else:
        with record_draws() as tape:
            z = f(z_in)
    if not z.requires_grad:  # f has no trainable dependence: nothing to correct
        return z
    bspec = spec.backward_solver
    if bspec.traces:  # the hook reads z and diverged only: traces would cost 5-7 % per step
        bspec = bspec.model_copy(update={"traces": False})
    busy = [False]

    def hook(v: Tensor) -> Tensor:
        if busy[0]:  # the vector-Jacobian products below must not re-enter the hook
            return v
        busy[0] = True
        try:

            def jt(u: Tensor) -> Tensor:
                (ju,) = torch.autograd.grad(z, z_in, u, retain_graph=True)
                return ju

            def vjp_step(u: Tensor) -> Tensor:
                return jt(u) + v

            v0 = v.detach()
            u0 = v0 if adjoint is None else adjoint.start(v0)
            graph = None if f_rows is None else RowGraph(f_rows, z0, z_in, z, tape)

            v_rows: list[Tensor] = [v0, v0]  # (rows, v0 on them) of the last call

            def vjp_rows(u: Tensor, rows: Tensor) -> Tensor:
                assert graph is not None  # (called by the loop inside row_subset(rows))
                graph.focus(rows)
                if v_rows[0] is not rows:
                    v_rows[:] = [rows, v0.index_select(0, rows)]
                return graph.vjp(u, rows) + v_rows[1]

            fell = 0
            if spec.backward_method == "gmres":
                sol = gmres(jt, v0, u0, bspec)
            else:
                sol = solve(vjp_step, u0, bspec, f_rows=None if graph is None else vjp_rows,
                            whole_set=True)
                if spec.backward_method == "fallback":
                    sol, fell = gmres_fallback(jt, v0, u0, sol, bspec, graph)
            _record(sol, fell)
            if adjoint is not None:
                adjoint.store(sol.z, v0, sol.diverged)
            return sol.z
        finally:
            busy[0] = False

    z.register_hook(hook)
    return z
