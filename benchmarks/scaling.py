"""Scaling: how time grows with width, batch and the number of batched SNR levels.

Each row fits the exponent p of t ∝ xᵖ by least squares on log t vs log x and puts it next
to the exponent the work predicts:

* **width** — one call at batch 256 for w ∈ {128, 256, 512, 1024}: a deployed w×w device
  layer (``snr`` at a calibrated 20 dB, ``rram`` native, as in :mod:`benchmarks.devices`)
  and a digital DEQ forward solve (input 64 → w, unroll with a fixed 20 iterations: the
  tolerance is never met). The GEMM is b·w² multiply-adds, everything else b·w: expected 2
  where the GEMM dominates.
* **batch** — the same layers and solve at w = 512 for b ∈ {16, 32, …, 512}: expected 1.
* **SNR levels** — the sweep's batched evaluation (:func:`noisydeq.sweep.evaluate_cell`:
  K levels stacked along the batch, cut as the sweep cuts them: cells of ≤ ``max_rows``
  rows, a cell's levels in one forward) of a
  DEQ (64 → 256, the same fixed 20 iterations, signal-site model noise, ideal weights) on
  360 inputs (the size of the digits test set) for K ∈ {1, 2, 4, 8, 16}: linear work in K,
  so an exponent below 1 is what batching saves per level (fixed per-forward costs shared).
  Check: the batched statistics equal the per-point loop's (``batched=False``) at the
  largest K, whose time is in the check too.

Timing: every repetition times each size once, sizes interleaved (load changes hit all of
them); each timing is the mean of enough back-to-back calls to last ≳ 20 ms. The row's value
is the exponent fitted to the per-size medians; its spread is that fit's standard error and
the range of the exponents fitted to each repetition alone; the check adds the exponent of
the two largest sizes alone (closest to the asymptotic one) and the per-size medians.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from benchmarks.common import Row

WIDTHS = (128, 256, 512, 1024)
BATCHES = (16, 32, 64, 128, 256, 512)
LEVELS = (1, 2, 4, 8, 16)
#: targets: the fitted exponent within [low, high] (width, batch) or ≤ high (levels)
TARGET_WIDTH = (1.6, 2.2)
TARGET_BATCH = (0.8, 1.1)
TARGET_LEVELS = 1.0
SOLVE_ITERS = 20


def fit_exponent(xs: Sequence[float], ts: Sequence[float]) -> tuple[float, float]:
    """(p, standard error of p) of the least-squares line log t = p·log x + c."""
    if len(xs) != len(ts) or len(xs) < 2:
        raise ValueError("fit_exponent needs ≥ 2 (x, t) pairs of equal length")
    if min(xs) <= 0 or min(ts) <= 0:
        raise ValueError("fit_exponent needs positive x and t")
    lx = [math.log(x) for x in xs]
    lt = [math.log(t) for t in ts]
    mx, mt = statistics.fmean(lx), statistics.fmean(lt)
    sxx = sum((a - mx) ** 2 for a in lx)
    if sxx == 0:
        raise ValueError("fit_exponent needs at least two distinct x")
    p = sum((a - mx) * (b - mt) for a, b in zip(lx, lt, strict=True)) / sxx
    if len(xs) < 3:
        return p, math.nan
    resid = [b - mt - p * (a - mx) for a, b in zip(lx, lt, strict=True)]
    return p, math.sqrt(sum(r * r for r in resid) / (len(xs) - 2) / sxx)


def interleaved_times(
    calls: dict[int, Callable[[], Any]], repeat: int, min_seconds: float = 0.02
) -> dict[int, list[float]]:
    """Seconds per call of each ``calls[x]``, ``repeat`` times each, sizes interleaved.

    After one untimed call per size, each size gets the number of back-to-back calls that
    lasts ≳ ``min_seconds``; a timing is their mean.
    """
    inner: dict[int, int] = {}
    for x, fn in calls.items():
        fn()
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        inner[x] = max(1, min(200, math.ceil(min_seconds / max(dt, 1e-6))))
    out: dict[int, list[float]] = {x: [] for x in calls}
    for _ in range(repeat):
        for x, fn in calls.items():
            t0 = time.perf_counter()
            for _ in range(inner[x]):
                fn()
            out[x].append((time.perf_counter() - t0) / inner[x])
    return out


def _fmt_t(t: float) -> str:
    return f"{t * 1e3:.2f} ms" if t < 1 else f"{t:.2f} s"


def scaling_row(
    name: str, var: str, times: dict[int, list[float]], expected: float,
    target: tuple[float | None, float], check: str = "", ok: bool | None = None,
) -> Row:
    """A row: the exponent fitted to the medians, the expected one as the bound."""
    xs = sorted(times)
    med = [statistics.median(times[x]) for x in xs]
    p, se = fit_exponent(xs, med)
    reps = len(times[xs[0]])
    per_rep = [fit_exponent(xs, [times[x][i] for x in xs])[0] for i in range(reps)]
    raw = ", ".join(f"{var}{x}: {_fmt_t(t)}" for x, t in zip(xs, med, strict=True))
    top = fit_exponent(xs[-2:], med[-2:])[0]  # the largest sizes' step, nearest asymptote
    spread = (f"p = {p:.2f} ± {se:.2f} (fit s.e.); per repetition {min(per_rep):.2f}–"
              f"{max(per_rep):.2f} (n={reps}); {var}{xs[-2]}→{xs[-1]} alone {top:.2f}; "
              f"medians {raw}")
    low, high = target
    return Row("scaling", name, p, expected, p, high, target_low=low, unit="",
               check=spread + (f"; {check}" if check else ""), ok=ok,
               extra={"x": xs, "median_seconds": med, "times": {str(x): times[x] for x in xs},
                      "exponent_stderr": se, "exponent_per_repetition": per_rep,
                      "exponent_top_step": top})


def _deq(in_features: int, width: int, out: int = 10) -> nn.Module:
    from noisydeq.config import SolverSpec
    from noisydeq.models import DEQ

    # stop "abs" at a tolerance no float32 residual reaches: exactly SOLVE_ITERS iterations
    solver = SolverSpec(name="unroll", max_iter=SOLVE_ITERS, tol=1e-30, stop="abs")
    return DEQ(in_features, width, out, solver=solver, test_solver=solver).eval()


def _layer_calls(
    kind: str, sizes: Sequence[tuple[int, int]], by: str
) -> dict[int, Callable[[], Any]]:
    """One no-grad callable per (width, batch), keyed by the width (``by="w"``) or the
    batch: a deployed layer or a DEQ forward solve."""
    from benchmarks.devices import _deployed

    calls: dict[int, Callable[[], Any]] = {}
    for i, (w, b) in enumerate(sizes):
        torch.manual_seed(i)
        g = torch.Generator().manual_seed(100 + i)
        if kind == "deq":
            model = _deq(64, w)
            x = torch.rand(b, 64, generator=g)
        else:
            model = _deployed(kind, nn.Linear(w, w))
            x = torch.rand(b, w, generator=g) * 2 - 1
            with torch.no_grad():
                model(x)  # calibration and chip programming happen here, untimed

        def call(m: nn.Module = model, x: torch.Tensor = x) -> Any:
            with torch.no_grad():
                return m(x)

        calls[w if by == "w" else b] = call
    return calls


def bench_levels(
    levels: Sequence[int] = LEVELS, n: int = 360, width: int = 256, repeat: int = 5
) -> Row:
    """The sweep's batched evaluation of K stacked SNR levels vs K (and vs a per-point loop)."""
    from noisydeq.config import SweepSpec, build
    from noisydeq.sweep import SweepModel, level_chunks
    from noisydeq.sweep.evaluate import evaluate_cell
    from noisydeq.sweep.hardware import Hardware

    torch.manual_seed(0)
    model = _deq(64, width)
    sm = SweepModel(model, "deq", 1, width, model.parameter_count(), 0, math.inf)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(n, 64, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    grids = {k: [30.0 * i / max(1, max(levels) - 1) for i in range(k)] for k in levels}
    chunking: dict[int, list[int]] = {}
    limit = [0]

    def runner(k: int, batched: bool = True) -> Callable[[], Any]:
        spec = build(SweepSpec, {"task": "digits", "device": "ideal", "noise_site": "signal",
                                 "snr_db": grids[k], "chips": 1, "depths": [1]})
        hw = Hardware(spec)
        # as the sweep cuts them: ≤ spec.max_rows (4096) rows per forward
        rows, chunks = level_chunks(grids[k], n, spec.max_rows)
        chunking[k] = [len(c) for c in chunks]
        limit[0] = spec.max_rows
        return lambda: [st for c in chunks for st in evaluate_cell(
            sm, model, x, y, c, 0, spec, hw, True, rows, batched)]

    times = interleaved_times({k: runner(k) for k in levels}, repeat, min_seconds=0.0)
    kmax = max(levels)
    batched, per_point = runner(kmax), runner(kmax, batched=False)
    t_b: list[float] = []
    t_pp: list[float] = []
    res: dict[str, Any] = {}
    for _ in range(max(1, repeat // 2)):  # interleaved pairs
        for key, fn, out in (("b", batched, t_b), ("p", per_point, t_pp)):
            t0 = time.perf_counter()
            res[key] = fn()
            out.append(time.perf_counter() - t0)
    sb, sp = res["b"], res["p"]
    same = all(a.scores == b.scores and a.step_counts == b.step_counts
               for a, b in zip(sb, sp, strict=True))
    check = (f"K={kmax} batched {_fmt_t(statistics.median(t_b))} vs per-point loop "
             f"{_fmt_t(statistics.median(t_pp))} "
             f"({statistics.median(t_pp) / statistics.median(t_b):.2f}x); "
             f"batched stats == per-point: {same}; levels per cell (max_rows "
             f"{limit[0]}): " + (", ".join(f"K{k}: {'+'.join(map(str, c))}"
                                      for k, c in chunking.items() if len(c) > 1)
                                 or "all in one")
             + "; a cell's levels in one forward")
    return scaling_row(
        f"sweep evaluation time vs SNR levels batched (DEQ 64-{width}, {n} inputs, "
        f"{SOLVE_ITERS} iterations, K = {min(levels)}…{kmax})", "K", times, 1.0,
        (None, TARGET_LEVELS), check=check, ok=same)


def bench_scaling(
    widths: Sequence[int] = WIDTHS, batches: Sequence[int] = BATCHES,
    levels: Sequence[int] = LEVELS, batch: int = 256, width: int = 512,
    kinds: Sequence[str] = ("snr", "rram", "deq"), repeat: int = 5, level_rows: int = 360,
    level_width: int = 256,
) -> list[Row]:
    """Rows: exponent of time vs width and vs batch per kind, and vs batched SNR levels."""
    label = {"snr": "snr layer (20 dB)", "rram": "rram layer",
             "deq": f"DEQ forward solve (64-w, {SOLVE_ITERS} iterations)"}
    rows = []
    for kind in kinds:
        t = interleaved_times(_layer_calls(kind, [(w, batch) for w in widths], "w"), repeat)
        rows.append(scaling_row(
            f"{label[kind]} time vs width {min(widths)}…{max(widths)}, b{batch} "
            "(expected w²: GEMM-bound)", "w", t, 2.0, TARGET_WIDTH))
    for kind in kinds:
        t = interleaved_times(_layer_calls(kind, [(width, b) for b in batches], "b"), repeat)
        rows.append(scaling_row(
            f"{label[kind]} time vs batch {min(batches)}…{max(batches)}, w{width} "
            "(expected linear)", "b", t, 1.0, TARGET_BATCH))
    rows.append(bench_levels(levels, level_rows, level_width, repeat))
    return rows
