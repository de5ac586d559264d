"""Skipping stopped samples (``f_rows``): same solution, fewer rows evaluated."""

from __future__ import annotations

import pytest
import torch

from noisydeq.config import NoiseSpec, SolverSpec
from noisydeq.models import DEQ
from noisydeq.noise import Noise, NoiseStream, subset_rows
from noisydeq.solvers import solve, solve_with_grad
from noisydeq.solvers.loop import MIN_ROWS, run_loop
from noisydeq.solvers.registry import SOLVERS
from noisydeq.solvers.stop import Window

LEVELS = (0.0, 6.0, 20.0, 40.0)  # SNR blocks: low levels run to the threshold, high ones stop
ROWS = 24  # rows per block


def _problem(seed: int = 0):
    torch.manual_seed(seed)
    deq = DEQ(8, 32, 4).eval()
    x = torch.randn(ROWS, 8, generator=torch.Generator().manual_seed(seed)).repeat(len(LEVELS), 1)
    snr = torch.tensor(LEVELS).repeat_interleave(ROWS)
    return deq, x, snr


def _noise(snr: torch.Tensor) -> Noise:
    seeds = [11 * (k + 1) for k in range(len(LEVELS))]
    stream = NoiseStream.from_blocks(seeds, [ROWS] * len(LEVELS))
    return Noise(NoiseSpec(site="signal"), stream, snr_db=snr)


def _solve(deq, x, snr, spec, skip: bool, rows_seen: list[int]):
    xt = deq.inject(x)
    noise = _noise(snr)
    f = deq.cell_fn(xt, noise)

    def f_full(z):
        rows_seen.append(z.shape[0])
        return f(z)

    def f_rows(z, rows):
        rows_seen.append(z.shape[0])
        return deq.cell_fn_rows(xt, noise)(z, rows)

    return solve(f_full, torch.zeros_like(xt), spec, f_rows=f_rows if skip else None)


@pytest.mark.parametrize("name", ["unroll", "anderson", "broyden", "stochastic"])
def test_skipping_stopped_rows_gives_the_same_solution(name, monkeypatch):
    shrinks: list[int] = []
    original = Window.select
    monkeypatch.setattr(Window, "select",
                        lambda self, rows: shrinks.append(rows.numel()) or original(self, rows))
    deq, x, snr = _problem()
    spec = SolverSpec(name=name, max_iter=40, tol=0.05, stop="mean_rel", window=5,
                      traces=True)
    seen_full: list[int] = []
    seen_skip: list[int] = []
    full = _solve(deq, x, snr, spec, False, seen_full)
    skip = _solve(deq, x, snr, spec, True, seen_skip)
    assert torch.equal(full.z, skip.z)
    assert torch.equal(full.steps, skip.steps)
    assert torch.equal(full.converged, skip.converged)
    assert torch.equal(full.diverged, skip.diverged)
    for key in full.trace:  # residual traces too (NaN after a sample stopped)
        torch.testing.assert_close(full.trace[key], skip.trace[key], rtol=0, atol=0,
                                   equal_nan=True)
    # the stopped samples were really skipped: fewer rows evaluated in all
    assert len(seen_full) == len(seen_skip)
    assert sum(seen_skip) < 0.9 * sum(seen_full)
    assert min(seen_skip) >= MIN_ROWS
    assert shrinks and min(shrinks) <= x.shape[0] // 2  # the working set shrank
    # every row was evaluated exactly as often as its step count (padding aside)
    assert sum(seen_full) == full.n_iter * x.shape[0]


def test_skipped_solution_equals_each_block_solved_alone():
    """A block's rows get the numbers of a run of that block alone (batched = per-point)."""
    deq, x, snr = _problem(1)
    spec = SolverSpec(name="unroll", max_iter=40, tol=0.05, stop="mean_rel", window=5)
    together = _solve(deq, x, snr, spec, True, [])
    for k, level in enumerate(LEVELS):
        sl = slice(k * ROWS, (k + 1) * ROWS)
        xt = deq.inject(x[sl])
        stream = NoiseStream.from_blocks([11 * (k + 1)], [ROWS])
        noise = Noise(NoiseSpec(site="signal"), stream, snr_db=snr[sl])
        alone = solve(deq.cell_fn(xt, noise), torch.zeros_like(xt), spec,
                      f_rows=deq.cell_fn_rows(xt, noise))
        assert torch.equal(alone.z, together.z[sl]), level
        assert torch.equal(alone.steps, together.steps[sl]), level


def test_gradient_recording_solves_ignore_f_rows():
    deq, x, snr = _problem()
    xt = deq.inject(x)
    seen: list[int] = []

    def f_rows(z, rows):  # pragma: no cover - must not be called
        seen.append(z.shape[0])
        return deq.cell_fn_rows(xt)(z, rows)

    spec = SolverSpec(name="unroll", max_iter=40, tol=1e-3, stop="rel")
    sol = solve_with_grad(deq.cell_fn(xt), torch.zeros_like(xt), spec)
    assert sol.z.requires_grad
    assert int(sol.steps.min()) < int(sol.steps.max())  # some samples stopped early
    with torch.enable_grad():
        run_loop(deq.cell_fn(xt), torch.zeros_like(xt), spec, SOLVERS["unroll"], f_rows=f_rows)
    assert seen == []


@torch.no_grad()
def test_deq_forward_skips_stopped_rows_and_matches_full_evaluation():
    deq, x, snr = _problem(2)
    deq.solver = SolverSpec(name="unroll", max_iter=40, tol=0.05, stop="mean_rel", window=5)
    out_skip = deq(x, _noise(snr), return_solution=True)
    calls: list[int] = []
    original = deq.cell_fn_rows
    deq.cell_fn_rows = lambda xt, noise=None: (  # type: ignore[method-assign]
        lambda z, rows: calls.append(z.shape[0]) or original(xt, noise)(z, rows)
    )
    deq(x, _noise(snr), return_solution=True)
    assert calls and min(calls) < x.shape[0]
    # the full-batch reference: the same solve without f_rows
    xt = deq.inject(x)
    noise = _noise(snr)
    ref = solve(deq.cell_fn(xt, noise), torch.zeros_like(xt), deq.active_solver())
    assert torch.equal(out_skip.solution.z, ref.z)
    assert torch.equal(out_skip.logits, deq.head(ref.z))


def test_subset_rows_outside_a_subset_is_the_identity():
    t = torch.arange(5.0)
    assert subset_rows(t, 3) is t
