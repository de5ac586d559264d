"""Cluster: the Ray backend's cells per second and per-cell overhead against ``--jobs``.

One small sweep of ≥ 200 cells (digits, rram, 2 depths × DEQ/FFW, 13 chips, 8 SNR levels
in chunks of 2 on 96 test samples: 4 × 13 × 4 = 208 cells) is run four times into fresh run
directories with the family cached beforehand: ``--jobs 1 --threads 1``, ``--jobs 2``, and
``--backend ray`` on a local cluster (127.0.0.1) of 1 and of 2 CPUs (cluster start-up and the
workers' first import are timed apart and not counted). The calibration cache is emptied
before each timed run: every run calibrates its chips, as Ray workers always do. Every
run's table must equal the first (the check).

Rows: Ray's driver overhead per cell (ms: (T_ray,1 − T_jobs,1) / cells, one evaluation
process each, so the difference is what Ray adds: serialising, scheduling, returning rows),
its 2-worker speed-up over 1 worker (target ≥ 1.6), and the driver's write rate (cells it
can save per second: ``RunDir.save_cell`` of a real cell, repeated) — where the driver
becomes the bottleneck. ``python -m benchmarks.cluster`` prints the numbers as JSON (for
docs/scaling.md).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import Row
from noisydeq.cluster import Backend
from noisydeq.config import SweepSpec, build
from noisydeq.results import RunDir
from noisydeq.sweep import run_sweep

TARGET_SPEEDUP = 1.6
SPEC = dict(task="digits", device="rram", snr_db=[0, 5, 10, 15, 20, 25, 30, math.inf],
            depths=[1, 3], hidden=32, epochs=1, max_train_samples=300, chips=13,
            max_test_samples=96, max_rows=192)


def _timed(fn: Any) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def measure(spec_data: dict[str, Any] | None = None) -> dict[str, Any]:
    """Seconds of each backend on the benchmark sweep, its cells, and the driver's write
    rate; raises if a table differs from ``--jobs 1``'s."""
    import ray

    spec = build(SweepSpec, spec_data or SPEC)
    out: dict[str, Any] = {"load_avg_start": [round(v, 2) for v in os.getloadavg()]}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        old = os.environ.get("NOISYDEQ_CACHE")
        os.environ["NOISYDEQ_CACHE"] = str(root / "cache")
        try:
            run_sweep(spec, root / "warm", progress=False, plots=False, threads="1", jobs=1)
            calib = root / "cache" / "calibration"
            shutil.rmtree(calib)  # every timed run calibrates its chips (Ray workers do)
            secs, ref = _timed(lambda: run_sweep(spec, root / "jobs1", progress=False,
                                                 plots=False, threads="1", jobs=1))
            out["cells"] = ref.computed_cells
            out["jobs1_s"] = secs
            shutil.rmtree(calib)
            secs, res = _timed(lambda: run_sweep(spec, root / "jobs2", progress=False,
                                                 plots=False, jobs=2))
            out["jobs2_s"], ok = secs, res.rows == ref.rows
            for n in (1, 2):
                start, _ = _timed(lambda n=n: ray.init(
                    address="local", num_cpus=n, include_dashboard=False,
                    object_store_memory=100 * 2**20, log_to_driver=False,
                    logging_level="error"))
                out[f"ray{n}_startup_s"] = start
                try:
                    # workers import torch and noisydeq once: warm them on a 1-pair sweep
                    small = build(SweepSpec, {**(spec_data or SPEC), "chips": 1,
                                              "depths": [1], "kinds": ["ffw"]})
                    run_sweep(small, root / f"ray{n}-warm", progress=False, plots=False,
                              backend=Backend("ray"))
                    shutil.rmtree(calib, ignore_errors=True)
                    secs, res = _timed(lambda n=n: run_sweep(
                        spec, root / f"ray{n}", progress=False, plots=False,
                        backend=Backend("ray")))
                    out[f"ray{n}_s"], ok = secs, ok and res.rows == ref.rows
                finally:
                    ray.shutdown()
            out["tables_equal"] = ok
            out["driver_cells_per_s"] = _write_rate(ref.run_dir.path, root / "writes")
            from noisydeq import store

            cell = next(RunDir(ref.run_dir.path).cells.iterdir())
            out["task_overhead_ms"] = task_overhead_ms(
                store.read_signed_json(cell, "cell")["rows"])
        finally:
            if old is None:
                os.environ.pop("NOISYDEQ_CACHE", None)
            else:
                os.environ["NOISYDEQ_CACHE"] = old
    out["load_avg_end"] = [round(v, 2) for v in os.getloadavg()]
    return out


def _echo(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return rows


def task_overhead_ms(rows: list[dict[str, Any]], n: int = 200) -> float:
    """Ray's cost per cell without its computation (ms): ``n`` tasks that return one real
    cell's rows on a local 1-CPU cluster, submitted together and collected one by one as
    the driver does (:func:`noisydeq.sweep.ray_cells.run_on_ray`); workers started and
    warm before the clock starts."""
    import ray

    ray.init(address="local", num_cpus=1, include_dashboard=False,
             object_store_memory=100 * 2**20, log_to_driver=False, logging_level="error")
    try:
        fn = ray.remote(_echo).options(num_cpus=1)
        ray.get([fn.remote(rows) for _ in range(10)])
        t0 = time.perf_counter()
        futures = [fn.remote(rows) for _ in range(n)]
        while futures:
            done, futures = ray.wait(futures, num_returns=1)
            ray.get(done[0])
        return 1000 * (time.perf_counter() - t0) / n
    finally:
        ray.shutdown()


def _write_rate(run_path: Path, scratch: Path, n: int = 200) -> float:
    """Cells per second the driver saves (a real cell's record, written ``n`` times)."""
    from noisydeq import store

    cell = next(RunDir(run_path).cells.iterdir())
    record = store.read_signed_json(cell, "cell")
    shutil.copytree(run_path, scratch)
    dst = RunDir(scratch)
    t0 = time.perf_counter()
    for i in range(n):
        dst.save_cell(f"{record['key']}#{i}", record["rows"], record.get("layers", []))
    return n / (time.perf_counter() - t0)


def bench_cluster() -> list[Row]:
    """The benchmark rows (empty without Ray)."""
    try:
        import ray  # noqa: F401
    except ImportError:  # pragma: no cover - the ray extra is not installed
        return []
    m = measure()
    cells = m["cells"]
    return [
        Row("cluster", f"Ray vs --jobs 1, one process ({cells} cells, ms per cell)",
            1000 * m["ray1_s"] / cells, 1000 * m["jobs1_s"] / cells,
            m["ray1_s"] / m["jobs1_s"], unit="ms", check="tables equal",
            ok=m["tables_equal"], extra=m),
        Row("cluster", "Ray driver overhead per cell (ms, no computation)",
            m["task_overhead_ms"], math.nan, math.nan, unit="ms"),
        Row("cluster", "Ray 2 workers vs 1 worker speed-up", m["ray2_s"], m["ray1_s"],
            m["ray1_s"] / m["ray2_s"], TARGET_SPEEDUP, higher_is_better=True,
            extra={"jobs2_speedup": m["jobs1_s"] / m["jobs2_s"]}),
        Row("cluster", "driver writes (cells/s)", m["driver_cells_per_s"], math.nan, math.nan,
            unit="cells/s"),
    ]


if __name__ == "__main__":
    if sys.argv[1:] == ["--overhead"]:  # the overhead alone, on a 1-level cell's rows
        row = {"task": "digits", "model_id": "deq-d1-w32-s0-tinf", "value": 0.5}
        result: dict[str, Any] = {"task_overhead_ms": task_overhead_ms([dict(row)] * 2)}
    else:
        result = measure()
    json.dump(result, sys.stdout, indent=2)
    print()
