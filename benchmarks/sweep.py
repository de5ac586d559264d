"""Sweep: the batched evaluation phase vs a per-point loop, and throughput vs matmul peak.

The default sweep (``SweepSpec()``: digits, rram, SNR 0:30, depths 1,3,5,7, DEQ + FFW) is
evaluated on its trained family (the main-job benchmark's cache, or trained here) twice with
the same models and seeds:

* batched — the engine's default: the 31 SNR levels stacked along the batch (one forward
  per model × chip carrying every level, block noise streams);
* per-point — the naive loop over SNR points: one forward per level (``batched = False``),
  everything else identical.

Check: both tables are equal (same seeds ⇒ same metrics, steps, convergence), except the
measured SNR of DEQ rows, which must agree within 1 dB (see :func:`compare_tables`).
Throughput: every MVM of the batched run is counted by a global forward hook
(2·rows·n_in·n_out per Linear or device-layer call) and divided by its wall time; the bound
is this machine's float32 matmul peak measured in the same run (best of a 2048³ ``torch.mm``).
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks.common import Row, ratio
from noisydeq.config import SweepSpec, build
from noisydeq.sweep import SweepModel, run_sweep

TARGET_SPEEDUP = 5.0
TARGET_PEAK_FRACTION = 0.4


def matmul_peak_gflops(n: int = 2048, repeat: int = 5) -> float:
    """Best float32 GFLOP/s of an n×n×n ``torch.mm`` on this machine, now."""
    a, b = torch.rand(n, n), torch.rand(n, n)
    torch.mm(a, b)
    best = math.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


class FlopCounter:
    """Counts the multiply-adds of every Linear (or deployed Linear) forward, as 2 FLOP each."""

    def __init__(self) -> None:
        self.flops = 0
        self.handle: Any = None

    def _hook(self, module: nn.Module, inputs: tuple, out: Any) -> None:
        w = getattr(module, "weight", None)
        if w is None or not isinstance(out, torch.Tensor) or w.ndim != 2:
            return
        if isinstance(module, nn.Linear) or getattr(module, "op", None) == "linear":
            rows = inputs[0].numel() // w.shape[1]
            self.flops += 2 * rows * w.shape[0] * w.shape[1]

    def __enter__(self) -> FlopCounter:
        self.handle = nn.modules.module.register_module_forward_hook(self._hook)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.handle.remove()


def default_models(spec: SweepSpec, cache: Path | None) -> tuple[Any, list[SweepModel]]:
    """The task and the trained family of ``spec`` (from ``cache`` when given)."""
    from noisydeq.sweep import family_models
    from noisydeq.tasks import load_task

    old = os.environ.get("NOISYDEQ_CACHE")
    if cache is not None:
        os.environ["NOISYDEQ_CACHE"] = str(cache)
    try:
        task = load_task(spec.task, data_dir=spec.data_dir, seed=spec.seeds[0])
        return task, family_models(spec, task, progress=False)
    finally:
        if cache is not None:
            if old is None:
                os.environ.pop("NOISYDEQ_CACHE", None)
            else:
                os.environ["NOISYDEQ_CACHE"] = old


def compare_tables(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> tuple[bool, float]:
    """(every column but ``measured_snr_db`` equal, largest measured-SNR difference in dB).

    The measured SNR is a meter over the MVMs actually run; DEQ solves skip stopped
    samples in both paths, so it agrees to rounding (the sums are accumulated in another
    order).
    """
    if len(a) != len(b):
        return False, math.inf
    same, worst = True, 0.0
    for ra, rb in zip(a, b, strict=True):
        same &= all(ra[k] == rb[k] for k in ra if k != "measured_snr_db")
        ma, mb = ra["measured_snr_db"], rb["measured_snr_db"]
        if math.isfinite(ma) and math.isfinite(mb):
            worst = max(worst, abs(ma - mb))
        elif ma != mb:
            worst = math.inf
    return same, worst


@contextmanager
def private_cache(path: Path) -> Iterator[None]:
    """``$NOISYDEQ_CACHE`` pointed at ``path`` (models are passed in: only calibration)."""
    before = os.environ.get("NOISYDEQ_CACHE")
    os.environ["NOISYDEQ_CACHE"] = str(path)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("NOISYDEQ_CACHE", None)
        else:
            os.environ["NOISYDEQ_CACHE"] = before


def bench_sweep(
    spec: SweepSpec | None = None, task: Any = None, models: list[SweepModel] | None = None,
    cache: Path | None = None, peak: float | None = None,
) -> list[Row]:
    """Rows: batched vs per-point evaluation time; batched GFLOP/s vs the matmul peak."""
    spec = spec or build(SweepSpec, {})
    if models is None:
        task, models = default_models(spec, cache)
    peak = peak if peak is not None else matmul_peak_gflops()
    times, tables = {}, {}
    flops = 0
    with tempfile.TemporaryDirectory(prefix="noisydeq-bench-sweep-") as tmp:
        for mode in ("batched", "per-point"):
            s = spec.model_copy(update={"batched": mode == "batched"})
            # each mode calibrates its chips itself (a shared calibration cache would hand
            # the second mode the first one's controls for free)
            with private_cache(Path(tmp) / f"{mode}-cache"), FlopCounter() as fc:
                t0 = time.perf_counter()
                res = run_sweep(s, Path(tmp) / mode, task=task, models=models, progress=False,
                                plots=False)
                times[mode] = time.perf_counter() - t0
            tables[mode] = res.rows
            if mode == "batched":
                flops = fc.flops
    same, snr_diff = compare_tables(tables["batched"], tables["per-point"])
    ok = same and snr_diff < 1.0
    speedup = ratio(times["per-point"], times["batched"])
    gflops = flops / times["batched"] / 1e9
    label = (f"{spec.device} snr {len(spec.snr_db)} levels x {spec.chips} chips x "
             f"{len(models)} models")
    return [
        Row("sweep", f"batched vs per-point loop ({label})", times["batched"],
            times["per-point"], speedup, TARGET_SPEEDUP, higher_is_better=True,
            check=f"tables equal (measured SNR within {snr_diff:.2f} dB)", ok=ok,
            extra={"seconds_batched": times["batched"], "seconds_per_point": times["per-point"],
                   "n_rows": len(tables["batched"])}),
        Row("sweep", "batched sweep GFLOP/s vs float32 matmul peak", gflops, peak,
            gflops / peak, TARGET_PEAK_FRACTION, higher_is_better=True, unit="GFLOP/s",
            extra={"flop": flops, "peak_gflops": peak}),
    ]
