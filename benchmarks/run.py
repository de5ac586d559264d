"""Run the benchmark suite: ``python -m benchmarks.run`` (``make bench``).

Prints one table of ratios (ours vs peer or bound, measured in this run), writes the
rows and the machine description to ``benchmarks/results.json`` and a report to
``benchmarks/RESULTS.md`` (both atomically). ``--only`` picks areas, ``--quick`` shrinks
every benchmark (a smoke run); either one writes to ``benchmarks/partial/`` instead
(git-ignored), so only a full run replaces the committed results.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import Row, format_table, machine_info
from noisydeq.store import atomic_write_text

AREAS = ("main_job", "sweep", "peer", "solvers", "devices", "rng", "training", "attacks",
         "hwaware", "cluster", "scaling")
HERE = Path(__file__).resolve().parent


def _run_area(area: str, quick: bool, work: Path, state: dict[str, Any],
              peer_grid: str = "small") -> list[Row]:
    if area == "main_job":
        from benchmarks.main_job import bench_help, bench_main_job

        rows, cache = bench_main_job(work, timeout=480.0)
        state["cache"] = cache
        return rows + bench_help(repeat=3 if quick else 7)
    if area == "sweep":
        from benchmarks.sweep import bench_sweep
        from noisydeq.config import SweepSpec, build

        # the default sweep on one chip instance (3 in the CLI) to bound the suite's time
        spec = build(SweepSpec, {"chips": 1, "depths": [1, 7]} if quick else {"chips": 1})
        return bench_sweep(spec, cache=state.get("cache"))
    if area == "peer":  # the plain aihwkit script instead of `noisydeq sweep`
        from benchmarks.peer_sweep import bench_peer

        return bench_peer(work, peer_grid, repeat=1 if quick else 3)
    if area == "solvers":
        from benchmarks.solvers import bench_solvers

        if quick:
            return bench_solvers(cells=("fig4",), repeat=1)
        return bench_solvers(repeat={"fig4": 15, "mnist467": 5})
    if area == "devices":
        from benchmarks.devices import bench_devices

        return bench_devices(repeat=5 if quick else 20)
    if area == "rng":
        from benchmarks.rng import bench_rng

        return bench_rng(repeat=5 if quick else 20)
    if area == "training":
        from benchmarks.training import bench_training

        return bench_training(steps=3 if quick else 10, repeat=1 if quick else 3)
    if area == "hwaware":
        from benchmarks.hwaware import bench_hwaware

        return bench_hwaware(steps=5 if quick else 10, repeat=2 if quick else 7)
    if area == "attacks":
        from benchmarks.attacks import bench_attacks

        return bench_attacks(quick=quick)
    if area == "scaling":  # exponents of time vs width, batch and batched SNR levels
        from benchmarks.scaling import bench_scaling

        if quick:
            return bench_scaling(widths=(64, 128, 256), batches=(16, 64, 256), levels=(1, 2, 4),
                                 repeat=2, level_rows=64)
        return bench_scaling()
    if area == "cluster":  # the Ray backend (no rows without the ray extra)
        from benchmarks.cluster import bench_cluster

        return bench_cluster()
    raise ValueError(area)


def _markdown(rows: list[Row], info: dict[str, Any], seconds: float, quick: bool) -> str:
    met = [r.met for r in rows if r.met is not None]
    checks = [r.ok for r in rows if r.ok is not None]
    lines = [
        "# Benchmark results",
        "",
        f"Latest run of `.venv/bin/python -m benchmarks.run`{' --quick' if quick else ''} "
        f"(`make bench`), {info['date']}, {seconds:.0f} s in all.",
        "",
        f"- machine: {info['cores']} cores, {info['cpu']}; torch {info['torch']} with "
        f"{info['torch_threads']} intra-op threads per process (noisydeq's thread rule, "
        f"$NOISYDEQ_THREADS), Python {info['python']}",
        f"- peers: torchdeq {info.get('torchdeq')}, aihwkit {info.get('aihwkit')}",
        f"- load average at start / end: {info['load_avg_start']} / {info['load_avg_end']} "
        "(the machine is shared; only the ratios are comparable between runs)",
        f"- targets met: {sum(met)}/{len(met)}; correctness checks passed: "
        f"{sum(checks)}/{len(checks)}",
        "",
        "Ratio = ours / peer for times (≤ target is good); for the sweep and peer rows it is "
        "the speed-up or the fraction of the measured matmul peak (≥ target is good); for the "
        "scaling rows it is the fitted exponent of time vs size, next to the expected one "
        "(target a range or a bound). Times "
        "are the best of N interleaved runs (solvers, devices, training; the median and range "
        "of the per-pair ratios in `check`), the median of 3 interleaved repetitions (peer: "
        "the plain aihwkit script, spread, CPU time and load in `check`) or single runs "
        "(sweep, main job). `check` is the fast path's answer checked against the reference "
        "path. Where the time of each missed row goes: the profiles below (this run); what "
        "limits each missed target: [README.md](README.md) and the sections after the table.",
        "",
        format_table(rows, markdown=True),
        "",
        *_profile_section(rows),
        "## Solver details (f-evaluations, final noiseless residual, distance to z0*)",
        "",
        "| case | steps ours / torchdeq | rel. residual ours / torchdeq | "
        "dist. to z0* ours / torchdeq |",
        "|---|---|---|---|",
    ]
    for r in rows:
        if r.area != "solvers":
            continue
        e = r.extra
        qo, qp = e["quality_ours"], e["quality_torchdeq"]
        lines.append(f"| {r.name} | {e['steps_ours']} / {e['steps_torchdeq']} | "
                     f"{qo['res_max']:.1e} / {qp['res_max']:.1e} | "
                     f"{qo['dist_mean']:.3f} / {qp['dist_mean']:.3f} |")
    return "\n".join(lines) + "\n"


def _profile_section(rows: list[Row]) -> list[str]:
    """The generated "where the time goes" table: every missed row that carries a profile."""
    from benchmarks.profiles import format_profile

    prof_rows = [r for r in rows if r.met is False and r.extra.get("profile")]
    if not prof_rows:
        return []
    lines = [
        "## Where the time goes in the rows that miss (profiles of this run)",
        "",
        "Extra, untimed runs of each side of every missed row that can be profiled "
        "(`benchmarks/profiles.py`). Device, solver and training rows and the digital DEQ "
        "forward: `torch.profiler`, self time of the torch operations by kind, each kind's "
        "least over N runs (as the rows' times are best of N; the profiler clocks wall time), "
        "and `outside torch ops` = the run's wall time minus all operations (Python, dispatch, "
        "the profiler's own cost). Sweep, peer and main-job rows: cProfile with a CPU-time "
        "clock, self time by the file that spends it (a torch function or method counts for "
        "the caller's file, operators such as `@` for the function that uses them; `GEMM` = "
        "the matmul calls wherever made; `autograd` includes the backward pass's operations; "
        "the main job's profile is one process, `--jobs 1`). cProfile adds ~1 µs to every "
        "Python call, so it inflates Python-heavy categories; on a shared machine the shares "
        "are more robust than the seconds. A row's `GEMM` share is its matmul floor.",
        "",
        "| row | ratio (target) | ours | peer / bound | ours: largest self times |",
        "|---|---|---|---|---|",
    ]
    for r in prof_rows:
        ours = r.extra["profile"]
        peer = r.extra.get("profile_peer")
        tgt = r.target_text
        top = ", ".join(f"{name} {frac * 100:.0f} %" for name, _s, frac in ours["top"][:4])
        cells = [f"{r.area}: {r.name}", f"{r.ratio:.2f} ({tgt})", format_profile(ours),
                 format_profile(peer) if peer else "—", top]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return lines + [""]


#: RESULTS.md below this line is written by hand (separate runs, profiles); a run keeps it
KEEP_MARKER = ("<!-- `make bench` regenerates everything above this line and keeps the "
               "sections below (separate runs, written by hand) -->")


def _kept_sections(path: str) -> str:
    """The hand-written tail of an existing report (from :data:`KEEP_MARKER` on), or ''."""
    p = Path(path)
    if not p.is_file():
        return ""
    text = p.read_text(encoding="utf-8")
    at = text.find(KEEP_MARKER)
    return "" if at < 0 else "\n" + text[at:]


def _clean(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    ap.add_argument("--only", default=",".join(AREAS),
                    help=f"comma list of areas ({', '.join(AREAS)})")
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    ap.add_argument("--peer-grid", choices=("small", "levels", "main"), default="small",
                    help="grid of the peer-script area: small (digits, depths 1, 4 levels, "
                         "2 chips), levels (the same with 0:30) or main (the main job's: "
                         "depths 1,3,5,7, 0:30, 3 chips)")
    ap.add_argument("--json", default=None,
                    help="JSON output path (default: benchmarks/results.json for a full run, "
                         "benchmarks/partial/results.json with --only or --quick)")
    ap.add_argument("--markdown", default=None,
                    help="Markdown report path ('' = none; default as for --json, RESULTS.md)")
    args = ap.parse_args(argv)
    areas = [a.strip() for a in args.only.split(",") if a.strip()]
    bad = [a for a in areas if a not in AREAS]
    if bad:
        print(f"benchmarks: error: --only: unknown area(s) {', '.join(bad)} "
              f"(allowed: {', '.join(AREAS)})", file=sys.stderr)
        return 2
    full = not args.quick and set(areas) == set(AREAS)
    out_dir = HERE if full else HERE / "partial"
    if args.json is None:
        args.json = str(out_dir / "results.json")
    if args.markdown is None:
        args.markdown = str(out_dir / "RESULTS.md")
    # the package's thread rule (one torch thread per process unless $NOISYDEQ_THREADS says
    # otherwise): the rows measure what the commands run, whatever torch's default is
    from noisydeq.runtime import thread_plan

    torch.set_num_threads(thread_plan(None)[1])
    info = machine_info()
    info["date"] = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    print(f"noisydeq benchmarks — {info['cpu']}, {info['cores']} cores, "
          f"torch {info['torch']} ({info['torch_threads']} threads), load {info['load_avg_start']}",
          flush=True)
    t_start = time.perf_counter()
    rows: list[Row] = []
    state: dict[str, Any] = {}
    area_seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="noisydeq-bench-") as tmp:
        for area in areas:
            t0 = time.perf_counter()
            print(f"[{area}] running ...", flush=True)
            new = _run_area(area, args.quick, Path(tmp), state, args.peer_grid)
            area_seconds[area] = time.perf_counter() - t0
            print(format_table(new) + f"\n[{area}] {area_seconds[area]:.0f} s\n", flush=True)
            rows += new
    seconds = time.perf_counter() - t_start
    info["load_avg_end"] = [round(v, 2) for v in __import__("os").getloadavg()]
    info["area_seconds"] = area_seconds
    print(format_table(rows))
    print(f"total {seconds:.0f} s")
    payload = {"machine": info, "seconds": seconds, "quick": args.quick,
               "rows": [r.as_dict() for r in rows], "torch_threads": torch.get_num_threads()}
    atomic_write_text(args.json, json.dumps(_clean(payload), indent=2) + "\n")
    if args.markdown:
        atomic_write_text(args.markdown, _markdown(rows, info, seconds, args.quick)
                          + _kept_sections(args.markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
