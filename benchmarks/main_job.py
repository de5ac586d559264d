"""Main job: cold and warm wall time of the README's first command, as a user runs it.

``noisydeq sweep --device rram --snr 0:30`` in a subprocess (the installed console script,
``--quiet``):

* cold — fresh ``$NOISYDEQ_CACHE`` and fresh ``--out``: trains the default depth-matched
  family (digits, quick preset), then evaluates it;
* warm — the same cache (family already trained), fresh ``--out``: evaluation only.

The bound is the target itself (issue 17: 20 s cold, 5 s warm). Check: the warm run's table equals
the cold run's (the cached family gives the same results, the sweep is deterministic).
The cache directory is kept and handed to the sweep benchmark (same trained models).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import Row

#: issue 17's targets (cold ≤ 20 s with the venv present, warm ≤ 5 s; issue 16 had 120 s / 20 s)
TARGETS = {"cold": 20.0, "warm": 5.0}
COMMAND = ["sweep", "--device", "rram", "--snr", "0:30"]


def noisydeq_exe() -> list[str]:
    """The installed ``noisydeq`` console script next to this interpreter (or -m fallback)."""
    exe = Path(sys.executable).with_name("noisydeq")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "noisydeq.cli"]


def run_once(cache: Path, out: Path, args: list[str], timeout: float) -> tuple[float, int, str]:
    """(seconds, return code, last stderr line) of one ``noisydeq`` run."""
    env = {**os.environ, "NOISYDEQ_CACHE": str(cache)}
    if out.exists():
        shutil.rmtree(out)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(noisydeq_exe() + args + ["--out", str(out), "--quiet"], env=env,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return time.perf_counter() - t0, -1, f"timed out after {timeout:g} s"
    tail = (proc.stderr.strip().splitlines() or [""])[-1]
    return time.perf_counter() - t0, proc.returncode, tail


def bench_main_job(
    workdir: Path, args: list[str] | None = None, timeout: float = 600.0
) -> tuple[list[Row], Path]:
    """Rows for the cold and warm runs; returns them and the (kept) cache directory."""
    args = list(args or COMMAND)
    cache = workdir / "cache"
    if cache.exists():
        shutil.rmtree(cache)
    results = {}
    for phase in ("cold", "warm"):
        results[phase] = run_once(cache, workdir / f"out-{phase}", args, timeout)
    tables = [workdir / f"out-{p}" / "results.csv" for p in ("cold", "warm")]
    same = all(t.exists() for t in tables) and tables[0].read_bytes() == tables[1].read_bytes()
    rows = []
    for phase, (secs, rc, tail) in results.items():
        ok = rc == 0 and same
        check = "warm table == cold table" if rc == 0 else f"exit {rc}: {tail}"
        rows.append(Row("main job", f"noisydeq {' '.join(args)} ({phase})", secs,
                        TARGETS[phase], secs / TARGETS[phase], 1.0, check=check, ok=ok,
                        extra={"seconds": secs, "returncode": rc, "bound_s": TARGETS[phase]}))
    if rows[-1].met is False and rows[-1].extra["returncode"] == 0:
        prof = profile_warm(cache, workdir / "out-profiled", args, timeout)
        if prof is not None:
            rows[-1].extra["profile"] = prof
    return rows, cache


def profile_warm(cache: Path, out: Path, args: list[str], timeout: float) -> dict | None:
    """cProfile breakdown of one more warm run (untimed), in one process: ``--jobs 1
    --threads 1``, since cProfile does not follow the worker processes ``--jobs auto``
    starts (so the profiled run does the work of every worker in sequence). None if the
    run fails."""
    from benchmarks.profiles import profile_file

    dump = out.with_suffix(".pstats")
    env = {**os.environ, "NOISYDEQ_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    if out.exists():
        shutil.rmtree(out)
    cmd = [sys.executable, "-m", "benchmarks.profile_run", str(dump), "noisydeq.cli", *args,
           "--jobs", "1", "--threads", "1", "--out", str(out), "--quiet"]
    try:
        proc = subprocess.run(cmd, env=env, cwd=Path(__file__).resolve().parents[1],
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    if proc.returncode != 0 or not dump.is_file():
        return None
    prof = profile_file(str(dump))
    prof["command"] = "noisydeq " + " ".join(args) + " --jobs 1 --threads 1 (warm, cProfile)"
    return prof


def bench_help(repeat: int = 7) -> list[Row]:
    """``noisydeq --help`` against ``python -c pass`` (the same interpreter), interleaved.

    Target: at most 0.3 s above the bare interpreter, i.e. median(help) ≤ median(pass) +
    0.3 s (ratio ≤ 1 with the peer taken as median(pass) + 0.3 s). Spread: min–max of the
    repetitions. Check: the help lists the commands and exits 0."""
    import statistics

    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    runs: dict[str, list[float]] = {"help": [], "pass": []}
    cmds = {"help": noisydeq_exe() + ["--help"], "pass": [sys.executable, "-c", "pass"]}
    ok = True
    for i in range(repeat + 1):  # the first round warms the file cache, untimed
        for what, cmd in cmds.items():
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
            dt = time.perf_counter() - t0
            if what == "help":
                ok = ok and proc.returncode == 0 and "sweep" in proc.stdout
            if i:
                runs[what].append(dt)
    med = {k: statistics.median(v) for k, v in runs.items()}
    bound = med["pass"] + 0.3
    spread = {k: f"{min(v):.2f}-{max(v):.2f}" for k, v in runs.items()}
    return [Row("main job", "noisydeq --help vs python -c pass + 0.3 s (median)", med["help"],
                bound, med["help"] / bound, 1.0,
                check=f"help lists commands; spread help {spread['help']} s, pass "
                      f"{spread['pass']} s", ok=ok,
                extra={"help_s": runs["help"], "pass_s": runs["pass"]})]
