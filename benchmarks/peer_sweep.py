"""Peer: ``noisydeq sweep`` against the plain aihwkit script a researcher writes instead.

The peer is :mod:`benchmarks.peers.aihwkit_sweep` (aihwkit ``AnalogLinear`` layers, a
Python loop over models, SNR levels and chips, per-point calibration by bisection of
aihwkit's noise knobs). Both run the same grid on the same trained family (trained once,
untimed, into a private ``$NOISYDEQ_CACHE``), the same test set, with one thread per
process (``OMP_NUM_THREADS=1``; the sweep with ``--jobs 1 --threads 1``). Four conditions,
the sides of each interleaved in every repetition (the side that goes first rotates):

* ``process, calibrating`` — a fresh process as a user runs it (imports, data, models from
  the cache): the sweep with an empty calibration cache, once with its default in-network
  calibration and once with ``--set calibration=clean`` (what the peer does: each layer on
  its clean activations), the peer bisecting every point;
* ``process, warm`` — the same with the knobs cached: the sweep's calibration cache from
  an untimed first run, the peer's ``--knobs`` file from its untimed first run;
* ``in-process, calibrating`` / ``in-process, warm`` — the same inside this process with
  imports, task and models already loaded (``run_sweep(..., plots=False)`` against
  :func:`benchmarks.peers.aihwkit_sweep.run`): the engines without start-up.

The CLI sweep also writes its figures (the peer writes one JSON): that is in its time.
Ratios are peer / sweep (speed-ups, higher is better) of the medians; the spread is the
min–max of the per-repetition ratios; the CPU time (user + system, this process and its
children) is reported next to them, since on a loaded machine wall time is mostly waiting.
Targets (issue 17): warm ≥ 4×, calibrating ≥ 3×.

Checks: the sweep's warm table equals its calibrating one, the peer's warm accuracies equal
its calibrating ones (both deterministic); and where the two noise implementations are
*matched* — every layer's total SNR as realised in the test forward agrees within 1 dB —
their accuracies agree (:mod:`benchmarks.peers.matching`). The peer meters its layers in its
untimed first run (``--measure``), the sweep in its ``layers.csv``. Unmatched points are
reported with their SNR gap, not judged: the peer calibrates each layer on clean
activations, which inside a noisy network at low SNR realises another SNR than the target
(the reason the sweep calibrates in-network, docs/devices.md).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import Row
from benchmarks.main_job import run_once
from benchmarks.peers.matching import (
    MATCH_DB,
    compare_accuracy,
    peer_accuracies,
    peer_layer_snr,
    snr_gaps,
    sweep_accuracies,
    sweep_layer_snr,
)

ROOT = Path(__file__).resolve().parent.parent
TARGETS = {"warm": 4.0, "calibrating": 3.0}
#: the default grid fits a loaded 2-core machine in a few minutes; ``levels`` the main job's
#: 31 levels on the small family; ``main`` the main job's grid
GRIDS = {
    "small": {"snr": "0,10,20,30", "chips": 2, "depths": "1"},
    "levels": {"snr": "0:30", "chips": 2, "depths": "1"},
    "main": {"snr": "0:30", "chips": 3, "depths": "1,3,5,7"},
}
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _sweep_args(grid: dict[str, Any]) -> list[str]:
    return ["sweep", "--device", "rram", "--snr", grid["snr"], "--depths", grid["depths"],
            "--chips", str(grid["chips"]), "--jobs", "1", "--threads", "1"] + _epochs(grid)


def _epochs(grid: dict[str, Any]) -> list[str]:
    """``--epochs N`` where the grid sets the family's training epochs (tests: 1)."""
    return ["--epochs", str(grid["epochs"])] if grid.get("epochs") is not None else []


def _peer_cmd(grid: dict[str, Any], out: Path, knobs: Path, warm: bool) -> list[str]:
    cmd = [sys.executable, "-m", "benchmarks.peers.aihwkit_sweep", "--snr", grid["snr"],
           "--depths", grid["depths"], "--chips", str(grid["chips"]), "--threads", "1",
           "--out", str(out)] + _epochs(grid)
    return cmd + (["--knobs", str(knobs)] if warm else ["--save-knobs", str(knobs)])


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and its waited-for children so far: on a
    loaded machine wall time is mostly waiting for a core, CPU time is the work."""
    import resource

    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + kids.ru_utime + kids.ru_stime


def _run_peer(cmd: list[str], cache: Path, timeout: float) -> tuple[float, int, str]:
    env = {**os.environ, **ONE_THREAD, "NOISYDEQ_CACHE": str(cache)}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)
    tail = (proc.stderr.strip().splitlines() or [""])[-1]
    return time.perf_counter() - t0, proc.returncode, tail


def _in_process(grid: dict[str, Any], work: Path, cache: Path) -> dict[str, Any]:
    """Callables running each side in this process (task and models loaded once)."""
    import torch

    from benchmarks.peers import aihwkit_sweep as peer
    from benchmarks.sweep import private_cache
    from noisydeq.config import SweepSpec, build
    from noisydeq.specs.noise import snr_list
    from noisydeq.sweep import run_sweep

    torch.set_num_threads(1)
    depths = [int(d) for d in grid["depths"].split(",")]
    spec = build(SweepSpec, {"device": "rram", "snr_db": grid["snr"], "depths": depths,
                             "chips": grid["chips"], "epochs": grid.get("epochs")})
    with private_cache(cache):  # the family the CLI trained
        loaded = peer.load_family("digits", depths, 0, "deq,ffw", grid.get("epochs"))
    levels = snr_list(grid["snr"])
    warm_cache = work / "inproc-warm-cache"
    count = [0]

    def sweep(warm: bool, calibration: str = "network") -> list[dict[str, Any]]:
        count[0] += 1
        s = spec.model_copy(update={"calibration": calibration})
        with private_cache(warm_cache if warm else work / f"inproc-cal-{count[0]}"):
            return run_sweep(s, work / f"inproc-out-{count[0]}", task=loaded[0],
                             models=loaded[1], progress=False, plots=False, threads="1",
                             jobs=1).rows

    knobs: dict[str, Any] = {}

    def peer_run(warm: bool) -> list[dict[str, Any]]:
        rows, got = peer.run(levels, grid["chips"], depths, knobs_in=knobs if warm else None,
                             loaded=loaded)
        if not warm:
            knobs.update(got)
        return rows

    return {"sweep": sweep, "sweep-clean": lambda warm: sweep(warm, "clean"),
            "peer": peer_run, "prepare": lambda: (sweep(True), peer_run(False))}


#: (where, phase): the sides timed together, interleaved; a calibrating sweep runs with its
#: default in-network calibration and with clean calibration (what the peer does)
CONDITIONS = {
    ("process", "calibrating"): ("sweep", "sweep-clean", "peer"),
    ("process", "warm"): ("sweep", "peer"),
    ("in-process", "calibrating"): ("sweep", "sweep-clean", "peer"),
    ("in-process", "warm"): ("sweep", "peer"),
}


def _fail(msg: str) -> list[Row]:
    return [Row("peer", "noisydeq sweep vs aihwkit peer script", math.nan, math.nan, math.nan,
                check=msg, ok=False)]


def bench_peer(work: Path, grid_name: str | dict[str, Any] = "small", repeat: int = 3,
               timeout: float = 1800.0) -> list[Row]:
    """Rows: peer script / sweep time (process and in-process; warm and calibrating).

    ``grid_name``: a key of :data:`GRIDS` or such a dict (``snr``, ``chips``, ``depths``,
    optional ``epochs``)."""
    grid = GRIDS[grid_name] if isinstance(grid_name, str) else grid_name
    cache = work / "peer-cache"  # models + the sweep's calibration: what warm runs read
    saved = {k: os.environ.get(k) for k in ONE_THREAD}
    os.environ.update(ONE_THREAD)  # this process's in-process runs, and what it spawns
    try:
        return _bench(work, grid, cache, repeat, timeout)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _bench(work: Path, grid: dict[str, Any], cache: Path, repeat: int,
           timeout: float) -> list[Row]:
    shutil.rmtree(cache, ignore_errors=True)
    # untimed: train the family into the cache, fill the warm calibration cache and knobs
    _, rc, tail = run_once(cache, work / "sweep-train", _sweep_args(grid), timeout)
    if rc != 0:
        return _fail(f"sweep exit {rc}: {tail}")
    peer_knobs = work / "peer-knobs.json"
    _, rc, tail = _run_peer(_peer_cmd(grid, work / "peer-train.json", peer_knobs, False)
                            + ["--measure"], cache, timeout)
    if rc != 0:
        return _fail(f"peer exit {rc}: {tail}")
    inproc = _in_process(grid, work, cache)
    inproc["prepare"]()
    times: dict[tuple[str, str, str], list[float]] = {}
    cpu: dict[tuple[str, str, str], list[float]] = {}
    acc: dict[tuple[str, str], Any] = {}
    realised: dict[str, Any] = {"peer": peer_layer_snr(
        json.loads((work / "peer-train.json").read_text())["rows"])}
    bad: list[str] = []
    n = 0
    for rep in range(repeat):
        for (where, phase), sides in CONDITIONS.items():
            warm = phase == "warm"
            order = sides[rep % len(sides):] + sides[:rep % len(sides)]  # rotate who leads
            for side in order:
                n += 1
                tag = f"{where}-{phase}-{side}-{rep}"
                c0 = cpu_seconds()
                if where == "in-process":
                    t0 = time.perf_counter()
                    inproc[side](warm)
                    dt = time.perf_counter() - t0
                elif side.startswith("sweep"):
                    use = cache
                    if not warm:  # the same models, an empty calibration cache
                        use = work / f"cache-{n}"
                        shutil.copytree(cache / "models", use / "models")
                    args = _sweep_args(grid) + (["--set", "calibration=clean"]
                                                if side == "sweep-clean" else [])
                    dt, rc, tail = run_once(use, work / tag, args, timeout)
                    if use != cache:
                        shutil.rmtree(use, ignore_errors=True)
                    if rc != 0:
                        bad.append(f"{tag}: exit {rc}: {tail}")
                    elif rep == 0:
                        acc[(phase, side)] = sweep_accuracies(work / tag / "results.csv")
                        realised[side] = sweep_layer_snr(work / tag / "layers.csv")
                else:
                    out = work / f"{tag}.json"
                    dt, rc, tail = _run_peer(_peer_cmd(grid, out, peer_knobs, warm), cache,
                                             timeout)
                    if rc != 0:
                        bad.append(f"{tag}: exit {rc}: {tail}")
                    elif rep == 0:
                        acc[(phase, side)] = peer_accuracies(json.loads(out.read_text())["rows"])
                times.setdefault((where, phase, side), []).append(dt)
                cpu.setdefault((where, phase, side), []).append(cpu_seconds() - c0)
    load = [round(v, 2) for v in os.getloadavg()]
    if bad:
        return _fail("; ".join(bad))
    profiles = _profiles(grid, work, cache, peer_knobs, inproc, timeout)
    cmp = {s: compare_accuracy(acc[("calibrating", s)], acc[("calibrating", "peer")],
                               snr_gaps(realised[s], realised["peer"]))
           for s in ("sweep", "sweep-clean")}
    same = {s: acc[("warm", s)] == acc[("calibrating", s)] for s in ("sweep", "peer")}
    label = f"digits rram {grid['snr']} dB x {grid['chips']} chips, depths {grid['depths']}"
    notes = {}
    for side, v in cmp.items():
        judged = [c for c in v if c["ok"] is not None]
        free = [c for c in v if c["ok"] is None]
        text = (f"{len(judged)}/{len(v)} points matched (every layer's realised SNR within "
                f"{MATCH_DB:g} dB of the peer's)")
        if judged:
            worst = max(judged, key=lambda c: abs(c["delta"]) - c["tol"])
            text += (f", accuracy there max |Δ| {max(abs(c['delta']) for c in judged):.3f} "
                     f"(closest to its tolerance: {worst['model_id']} {worst['snr_db']:g} dB, "
                     f"Δ {worst['delta']:+.3f}, tol {worst['tol']:.3f})")
        if free:
            levels = ", ".join(f"{v:g}" for v in sorted({c["snr_db"] for c in free}))
            deltas = [c["delta"] for c in free]
            text += (f"; unmatched at {levels} dB (SNR gap up to "
                     f"{max(c['snr_gap'] for c in free):.1f} dB, accuracy Δ "
                     f"{min(deltas):+.3f}..{max(deltas):+.3f})")
        notes[side] = text
    rows = []
    for (where, phase), sides in CONDITIONS.items():
        p = times[(where, phase, "peer")]
        for side in sides[:-1]:
            s = times[(where, phase, side)]
            per_rep = [b / a for a, b in zip(s, p, strict=True)]
            cs, cp = cpu[(where, phase, side)], cpu[(where, phase, "peer")]
            cpu_ratio = statistics.median(cp) / statistics.median(cs)
            what = "noisydeq sweep" + (" --set calibration=clean" if side == "sweep-clean"
                                       else "")
            eq = ("warm == calibrating tables" if all(same.values()) else
                  f"warm == calibrating: sweep {same['sweep']}, peer {same['peer']}")
            check = (f"ratio spread {min(per_rep):.2f}-{max(per_rep):.2f} (n={repeat}); CPU "
                     f"time {statistics.median(cs):.1f} vs {statistics.median(cp):.1f} s, ratio "
                     f"{cpu_ratio:.2f}; load {load}; {notes[side]}; {eq}")
            row = Row("peer", f"{where} {phase}: {what} vs aihwkit peer script ({label})",
                      statistics.median(s), statistics.median(p),
                      statistics.median(p) / statistics.median(s), TARGETS[phase],
                      higher_is_better=True, check=check,
                      ok=all(c["ok"] is not False for c in cmp[side])
                      and any(c["ok"] for c in cmp[side]) and all(same.values()),
                      extra={"sweep_s": s, "peer_s": p, "ratios": per_rep,
                             "sweep_cpu_s": cs, "peer_cpu_s": cp, "cpu_ratio": cpu_ratio,
                             "load_end": load, "grid": grid, "warm_equals": same,
                             "accuracy": cmp[side]})
            if row.met is False and (where, phase, side) in profiles:
                row.extra["profile"] = profiles[(where, phase, side)]
                row.extra["profile_peer"] = profiles.get((where, phase, "peer"))
            rows.append(row)
    return rows


def _profiles(grid: dict[str, Any], work: Path, cache: Path, peer_knobs: Path,
              inproc: dict[str, Any], timeout: float) -> dict[tuple[str, str, str], Any]:
    """One more, untimed run of every (where, phase, side) under cProfile: in-process with
    :func:`benchmarks.profiles.profile_call`, a fresh process with ``python -m
    benchmarks.profile_run`` (its breakdown includes the imports). A failed run has no
    profile."""
    from benchmarks.profiles import profile_call, profile_file

    out: dict[tuple[str, str, str], Any] = {}
    for (where, phase), sides in CONDITIONS.items():
        warm = phase == "warm"
        for side in sides:
            key = (where, phase, side)
            if where == "in-process":
                out[key] = profile_call(lambda f=inproc[side], w=warm: f(w))
                continue
            dump = work / f"prof-{phase}-{side}.pstats"
            prefix = [sys.executable, "-m", "benchmarks.profile_run", str(dump)]
            if side.startswith("sweep"):
                use = cache
                if not warm:
                    use = work / f"prof-cache-{side}"
                    shutil.copytree(cache / "models", use / "models")
                cmd = prefix + ["noisydeq.cli"] + _sweep_args(grid) + (
                    ["--set", "calibration=clean"] if side == "sweep-clean" else []) + [
                    "--out", str(work / f"prof-out-{phase}-{side}"), "--quiet"]
                _, rc, _ = _run_peer(cmd, use, timeout)
            else:
                knobs = peer_knobs if warm else work / "prof-peer-knobs.json"
                cmd = _peer_cmd(grid, work / f"prof-{phase}-peer.json", knobs, warm)
                _, rc, _ = _run_peer(prefix + cmd[2:], cache, timeout)  # cmd: python -m M
            if rc == 0 and dump.is_file():
                out[key] = profile_file(str(dump))
    return out


def profile(grid_name: str = "small", top: int = 25) -> None:
    """cProfile of one in-process calibrating and warm run of each side (print only)."""
    import cProfile
    import pstats

    with tempfile.TemporaryDirectory(prefix="noisydeq-peer-prof-") as tmp:
        work = Path(tmp)
        cache = work / "cache"
        run_once(cache, work / "train", _sweep_args(GRIDS[grid_name]), 1800.0)
        inproc = _in_process(GRIDS[grid_name], work, cache)
        inproc["prepare"]()
        for side in ("sweep", "sweep-clean", "peer"):
            for warm in (False, True):
                prof = cProfile.Profile()
                t0 = time.perf_counter()
                prof.runcall(inproc[side], warm)
                print(f"\n=== {side} {'warm' if warm else 'calibrating'}: "
                      f"{time.perf_counter() - t0:.2f} s")
                pstats.Stats(prof).sort_stats("cumulative").print_stats(top)


def main(argv: list[str] | None = None) -> int:
    import argparse

    from benchmarks.common import format_table

    ap = argparse.ArgumentParser(prog="python -m benchmarks.peer_sweep",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--grid", choices=sorted(GRIDS), default="small")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--profile", action="store_true", help="cProfile both sides instead")
    args = ap.parse_args(argv)
    if args.repeat < 1:
        print("peer_sweep: error: --repeat must be at least 1", file=sys.stderr)
        return 2
    if args.profile:
        profile(args.grid)
        return 0
    with tempfile.TemporaryDirectory(prefix="noisydeq-peer-") as tmp:
        rows = bench_peer(Path(tmp), args.grid, args.repeat)
    print(format_table(rows))
    for r in rows[:2]:
        print(r.name)
        for c in r.extra.get("accuracy", []):
            verdict = {True: "ok", False: "DIFFERENT", None: "not matched"}[c["ok"]]
            print(f"  {c['model_id']:<22} {c['snr_db']:>5g} dB  sweep {c['sweep']:.3f}  "
                  f"peer {c['peer']:.3f}  Δ {c['delta']:+.3f}  tol {c['tol']:.3f}  "
                  f"SNR gap {c['snr_gap']:.2f} dB  {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
