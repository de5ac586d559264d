"""The shared solve loop: evaluate f, apply per-sample stop rules, freeze stopped samples.

Every method (unroll, anderson, broyden, stochastic) only proposes the next point; this loop
owns stopping (paper Eq. 54 and App. E.3), divergence, masking and traces, so the rules are
identical for all solvers. Samples that stopped are frozen with ``torch.where``.

Skipping stopped samples. Given ``f_rows(z_rows, rows)`` (f on the rows ``rows`` of the
batch) and no autograd, f is evaluated on the active rows only, inside
:func:`noisydeq.noise.row_subset`: noise streams draw the active rows only, each the
numbers of its own address (counter-based, :mod:`noisydeq.rng`), so every sample gets the
numbers of a full-batch evaluation and the solution is unchanged (architecture.md). Once
half of the rows the loop carries have stopped, it drops them (a *working set*: the
method's per-sample state, the averaging window, thresholds and results are gathered), so
residuals, windows and steps also cost O(active rows). Every method is per-sample
(Anderson's and Broyden's histories are per sample), so the stale f(z) kept for a stopped
row is never read for an active one. In a noisy sweep the low-SNR samples run to the
threshold while the rest stop after about 10 steps: most of the work was on stopped rows.
Small subsets are padded with stopped rows to :data:`MIN_ROWS` (matmul rounding). Without
``f_rows`` f sees the full batch every iteration. Per iteration there are one or two host
syncs (“how many samples are active?”, and their indices when some stopped); traces stay
on device.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

import torch
from torch import Tensor

from noisydeq.errors import NoisyDEQError
from noisydeq.noise import STABLE_ROWS, row_subset
from noisydeq.scalars import const
from noisydeq.solvers.draws import Draws
from noisydeq.solvers.solution import TRACE_KEYS, Solution, describe, empty_traces
from noisydeq.solvers.stop import Window, blowup_scale, thresholds
from noisydeq.specs.solver import SolverSpec

#: fewest rows f is evaluated on when stopped samples are skipped (padded with stopped
#: rows, whose f(z) is never read): see :data:`noisydeq.noise.STABLE_ROWS`
MIN_ROWS = STABLE_ROWS


class Method(Protocol):
    """A solver's update rule on flattened (B, D) tensors."""

    def estimate(self, k: int, x: Tensor, fx: Tensor, window: Window | None) -> Tensor: ...

    def step(
        self, k: int, x: Tensor, fx: Tensor, active: Tensor, g: Tensor | None = None
    ) -> Tensor:
        """The next point; ``g`` = fx − x (detached) when the loop has it, else None."""
        ...

    def select(self, rows: Tensor) -> None:
        """Keep only the per-sample state of ``rows`` (the solve dropped the others)."""


def padded_active_rows(active: Tensor) -> Tensor:
    """Indices (ascending) of the active rows, padded with the first stopped rows up to
    :data:`MIN_ROWS` (as many as there are)."""
    rows = active.nonzero().squeeze(1)
    if rows.numel() < MIN_ROWS:
        pad = (~active).nonzero().squeeze(1)[: MIN_ROWS - rows.numel()]
        rows = torch.cat([rows, pad]).sort().values
    return rows


def run_loop(
    f: Callable[[Tensor], Tensor],
    z0: Tensor,
    spec: SolverSpec,
    make_method: Callable[[SolverSpec, Tensor], Method],
    generator: torch.Generator | Draws | None = None,
    needs_window: bool = False,
    f_rows: Callable[[Tensor, Tensor], Tensor] | None = None,
    min_window: int | None = None,
    whole_set: bool = False,
) -> Solution:
    """Iterate ``make_method(spec, x0)`` from ``z0`` until every sample stopped.

    ``f_rows`` (optional): f on a subset of rows, used to skip stopped samples (module
    docstring); only without autograd, as the frozen rows would otherwise lose their graph.
    ``whole_set``: call ``f_rows`` on the whole working set (its stopped rows as padding)
    instead of its active rows, so that it sees new rows only when the set shrinks (an
    ``f_rows`` with a set-up cost per set of rows: the ``ift`` backward solve's, which
    records f on them, :class:`noisydeq.solvers.gradients.RowGraph`).
    ``min_window`` (optional): the number of points after which ``mean_rel`` may stop a
    sample (default: a full window of ``spec.window``; see :func:`noisydeq.solvers.solve`).
    """
    shape = z0.shape
    batch = shape[0]

    def checked(out: Tensor, want: tuple[int, ...]) -> Tensor:
        if not isinstance(out, Tensor) or out.shape != want:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise NoisyDEQError(
                f"solver: f(z) must return a tensor shaped like z {want}, got {got}"
            )
        return out.reshape(want[0], -1)

    flat = len(shape) == 2

    def ff(x: Tensor) -> Tensor:
        if flat:  # already (B, D): no reshapes (a view costs a dispatch)
            out = f(x)
            return out if isinstance(out, Tensor) and out.shape == shape else checked(
                out, tuple(shape))
        return checked(f(x.reshape(shape)), tuple(shape))

    skip_stopped = f_rows is not None and not torch.is_grad_enabled()

    x = z0.reshape(batch, -1)
    dev, dt = x.device, x.dtype
    # the per-sample caps exist only with random thresholds (else every cap is max_iter)
    caps = thresholds(spec, batch, dev, spec_generator(generator)) \
        if spec.random_threshold else None
    n_max = spec.max_iter if caps is None else int(caps.max())
    method = make_method(spec, x)
    use_window = needs_window or spec.stop == "mean_rel" or spec.traces
    window = Window(spec.window) if use_window else None
    fill = spec.window if min_window is None else max(1, min(min_window, spec.window))

    # The working set: the batch rows `rows` (None: all of them) that the loop still
    # carries. Per-iteration work is on the working set only; the full-batch results are
    # written back (`out`) when the set shrinks and at the end.
    rows: Tensor | None = None
    active = torch.ones(batch, dtype=torch.bool, device=dev)
    converged = torch.zeros_like(active)
    diverged = torch.zeros_like(active)
    steps = torch.zeros(batch, dtype=torch.long, device=dev)
    z_est = x
    out: dict[str, Tensor] = {}
    trace_buf = torch.empty((n_max, 3, batch), dtype=dt, device=dev) if spec.traces else None
    need_rel = spec.traces or spec.stop == "rel"
    tiny = const(torch.finfo(dt).tiny, x)  # (cached 0-dim tensors: no cast per call)
    scale: Tensor | None = None
    n_iter = 0
    n_active = batch
    fx: Tensor | None = None
    tol_c = const(spec.tol, x)  # (a Python float is cast at every compare)
    all_active = True  # every row of the working set is active

    def evaluate(x: Tensor, fx: Tensor | None) -> Tensor:
        """f on the active rows of the working set (padded to MIN_ROWS with stopped ones)."""
        m = x.shape[0]
        if fx is None or f_rows is None or (rows is None and n_active == m):
            return ff(x)
        if whole_set:
            if rows is None:
                return ff(x)
            want = (m, *shape[1:])
            with row_subset(rows, batch, None if n_active == m else active):
                return checked(f_rows(x.reshape(want), rows), want)
        # (a set of at most MIN_ROWS rows is evaluated whole, its stopped rows as padding)
        local = padded_active_rows(active) if n_active < m else None
        real = active.index_select(0, local) if n_active < MIN_ROWS else None
        sel = x if local is None else x.index_select(0, local)
        glob = local if rows is None else (rows if local is None else rows[local])
        want = (sel.shape[0], *shape[1:])
        with row_subset(glob, batch, real):
            new = checked(f_rows(sel.reshape(want), glob), want)
        return new if local is None else fx.index_copy(0, local, new)

    def write_back(copy: bool = False) -> None:
        """Copy the working set's results into the full-batch results (``copy``: as new
        tensors, when the working set is still the full batch and is about to shrink)."""
        results = {"z": z_est, "steps": steps, "converged": converged, "diverged": diverged}
        for key, val in results.items():
            if rows is None:
                out[key] = val.clone() if copy else val
            else:
                out[key].index_copy_(0, rows, val)

    pending = 0  # iterations not yet added to ``steps`` (every row active in them)
    for k in range(n_max):
        fx = evaluate(x, fx) if skip_stopped else ff(x)
        n_iter = k + 1
        xd = x.detach() if x.requires_grad else x
        fd = fx.detach() if fx.requires_grad else fx
        gd = fd - xd
        gd_exact = not (x.requires_grad or fx.requires_grad)
        res = gd.norm(dim=1)
        if need_rel or scale is None:
            fnorm = fd.norm(dim=1)
            rel = res / (fnorm + tiny)
        if scale is None:
            scale = blowup_scale(spec, res, fnorm)
        if window is not None:
            window.push(x, fx, gd)
            mrel = window.mean_rel().detach()
        # NaN/inf in z or f(z) make res NaN/inf, and NaN <= scale is False: one comparison
        # flags non-finite values and blow-up alike.
        ok = res <= scale
        if spec.stop == "abs":
            met: Tensor | None = res < tol_c
        elif spec.stop == "rel":
            met = rel < tol_c
        elif window is not None and len(window.gs) >= fill:
            met = mrel < tol_c
        else:
            met = None
        m = x.shape[0]
        if all_active and not spec.random_threshold:
            # every row of the working set was active: upd = ok, and the row stays active
            # unless it diverged or met the tolerance. When none did (most iterations),
            # diverged, converged and active are unchanged and each step count grows by 1.
            still = ok if met is None else ok > met  # ok & ~met for booleans
            n_active = int(still.sum())
            upd = ok
            # the step counts grow by one per iteration: counted here and added to the
            # tensor (this loop's own, never handed out before the end) when a row stops
            pending += 1
            if n_active < m:
                steps.add_(pending)
                pending = 0
                diverged = diverged | ~ok
                if met is not None:
                    converged = converged | (ok & met)
                active = still
        else:
            if pending:
                steps.add_(pending)
                pending = 0
            upd = active & ok
            if met is None:
                met = torch.zeros_like(active)
            steps = steps + active
            diverged = diverged | (active ^ upd)
            newly = upd & met
            converged = converged | newly
            active = upd ^ newly
            if caps is not None:
                active = active & (caps > k + 1)
            n_active = int(active.sum())
        # every row still active: every row was updated and none stopped, so the masked
        # updates below would copy everything (a broadcast torch.where costs several
        # elementwise passes on CPU): take the new tensors as they are
        all_active = n_active == m
        estimate = method.estimate(k, x, fx, window)
        z_est = estimate if all_active else torch.where(upd[:, None], estimate, z_est)
        if trace_buf is not None:  # one write per iteration (TRACE_KEYS order)
            if rows is None:
                torch.stack((res, rel, mrel), out=trace_buf[k])
            else:
                trace_buf[k].index_copy_(1, rows, torch.stack((res, rel, mrel)))
        if n_active == 0:
            break
        # the residual g is passed only where it equals fx − x as the method would form it
        # (no autograd recording x or fx: a detached g would cut the bptt graph)
        x_next = method.step(k, x, fx, active, gd if gd_exact else None)
        x = x_next if all_active else torch.where(active[:, None], x_next, x)
        if skip_stopped and m > MIN_ROWS and n_active <= m // 2:
            # drop the stopped rows from the working set (keep MIN_ROWS for padding)
            keep = padded_active_rows(active)
            write_back(copy=True)
            rows = keep if rows is None else rows[keep]
            x, fx, z_est = x[keep], fx[keep], z_est[keep]
            active, steps = active[keep], steps[keep]
            converged, diverged = converged[keep], diverged[keep]
            scale = scale[keep]
            if caps is not None:
                caps = caps[keep]
            method.select(keep)
            if window is not None:
                window.select(keep)
            all_active = n_active == keep.numel()  # (padding rows are stopped ones)
    if pending:
        steps.add_(pending)
    write_back()
    z_out, steps = out["z"], out["steps"]
    converged, diverged = out["converged"], out["diverged"]

    if trace_buf is not None:
        # entries after a sample stopped are NaN (its z was frozen)
        after = torch.arange(n_iter, device=dev)[:, None] >= steps[None, :]
        buf = trace_buf[:n_iter].masked_fill(after[:, None, :], math.nan)
        trace = {key: buf[:, i] for i, key in enumerate(TRACE_KEYS)}
    else:
        trace = empty_traces(batch, dev, dt)
    return Solution(
        z=z_out.reshape(shape),
        steps=steps,
        converged=converged,
        diverged=diverged,
        trace=trace,
        n_iter=n_iter,
        reason=describe(converged, diverged),
    )


def spec_generator(
    generator: torch.Generator | Draws | None,
) -> torch.Generator | Draws | None:
    """Validate the optional generator argument (a NoiseStream or a torch.Generator)."""
    if generator is not None and not (
        isinstance(generator, torch.Generator)
        or (hasattr(generator, "rand") and hasattr(generator, "randn"))
    ):
        raise NoisyDEQError(
            "solver: generator must be a noisydeq NoiseStream or a torch.Generator, "
            f"got {type(generator).__name__}"
        )
    return generator
