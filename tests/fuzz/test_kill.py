"""kill -9 at random moments of a real sweep (training, calibration, evaluation, writing;
``--jobs 1`` and ``--jobs 2``), clean stops (SIGTERM, Ctrl-C) and two identical sweeps
started together: no row lost or duplicated, the table equals an uninterrupted run's, and
no process of the run outlives its parent by more than 2 s (the issue's bound).

Each chain of runs shares one run directory and one model cache; every run of a chain is
killed once its *phase* shows on disk (a file written by that run), after a seeded random
delay, then the next run resumes. The moments are random within their phase.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from noisydeq import store
from noisydeq.results import read_csv

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")]

ROOT = Path(__file__).resolve().parents[2]
ARGS = ["sweep", "--device", "rram", "--snr", "0,10,inf", "--depths", "1", "--chips", "2",
        "--epochs", "3", "--set", "hidden=16", "--set", "max_train_samples=256",
        "--set", "max_test_samples=60", "--set", "max_rows=60", "--threads", "1", "--quiet"]
CELLS = 2 * 2 * 3  # models x chips x SNR levels (one level per cell)
GRACE_S = 2.0  # the bound on a process outliving its killed parent


def launch(root: Path, jobs: int, new_session: bool = False) -> subprocess.Popen:
    env = {**os.environ, "NOISYDEQ_CACHE": str(root / "cache"), "PYTHONPATH": str(ROOT)}
    env.pop("NOISYDEQ_DEBUG", None)
    log = open(root / f"log-{time.monotonic_ns()}.txt", "w")  # noqa: SIM115 - closed by the OS
    return subprocess.Popen(
        [sys.executable, "-m", "noisydeq.cli", *ARGS, "--jobs", str(jobs), "--out",
         str(root / "run")], cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=new_session, preexec_fn=_terminal_signals)


def _terminal_signals() -> None:
    """SIGINT as in an interactive terminal: a test run from a background job (``make test &``)
    inherits SIGINT ignored, and a Python child then never sees Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, state) of a live process, None when gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return int(fields[1]), fields[0]


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (workers, the resource tracker)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit() and (st := _stat(int(d))) is not None:
            children.setdefault(st[0], []).append(int(d))
    out, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def alive(pid: int) -> bool:
    st = _stat(pid)
    return st is not None and st[1] != "Z"


def outlived(pids: list[int]) -> float:
    """Seconds until every process of ``pids`` is gone (at most a little over GRACE_S)."""
    t0 = time.monotonic()
    while any(alive(p) for p in pids) and time.monotonic() - t0 < GRACE_S + 0.5:
        time.sleep(0.005)
    return time.monotonic() - t0


def newer(paths: list[Path], since: float) -> list[Path]:
    out = []
    for p in paths:
        try:
            if p.stat().st_mtime >= since:
                out.append(p)
        except OSError:
            pass
    return out


def phase_trigger(phase: str, root: Path, since: float, rng: random.Random) -> Callable[[], bool]:
    """When a run launched at ``since`` (wall clock) is in ``phase``, judged from disk."""
    run, cache = root / "run", root / "cache"
    if phase == "startup":
        at = time.monotonic() + rng.uniform(0.2, 1.5)
        return lambda: time.monotonic() >= at
    if phase == "training":
        return lambda: bool(newer(list(cache.glob("models/*/resume.safetensors")), since))
    if phase == "calibration":
        return lambda: bool(newer(list(cache.glob("calibration/*.json")), since))
    if phase == "evaluation":
        start = len(list(run.glob("cells/*.json")))
        k = rng.randint(1, 3)
        return lambda: len(list(run.glob("cells/*.json"))) >= min(start + k, CELLS - 1)
    if phase == "writing":
        return lambda: bool(newer([run / "results.csv"], since))
    raise AssertionError(phase)


def kill_in(phase: str, root: Path, jobs: int, rng: random.Random) -> dict | None:
    """Run the sweep and kill -9 it in ``phase``; None when it finished first."""
    since = time.time()
    proc = launch(root, jobs)
    trigger = phase_trigger(phase, root, since - 0.01, rng)
    while proc.poll() is None and not trigger():
        time.sleep(0.005)
    if proc.poll() is not None:
        return None
    time.sleep(0 if phase == "startup" else rng.uniform(0, 0.25))
    kids = descendants(proc.pid)
    t_kill = time.monotonic()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    waited = outlived(kids)
    return {"phase": phase, "jobs": jobs, "after_s": round(t_kill, 2), "children": len(kids),
            "outlived_s": waited if kids else 0.0,
            "alive": [p for p in kids if alive(p)], "rc": proc.returncode}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run's table (its own cache)."""
    root = tmp_path_factory.mktemp("reference")
    proc = launch(root, jobs=1)
    assert proc.wait(timeout=600) == 0
    return (root / "run" / "results.csv").read_bytes()


def finish(root: Path, jobs: int) -> None:
    proc = launch(root, jobs)
    assert proc.wait(timeout=600) == 0


def check_table(root: Path, reference: bytes) -> None:
    run = root / "run"
    rows = read_csv(run / "results.csv")  # digest-checked
    keys = [(r["model_id"], r["chip"], r["snr_db"]) for r in rows]
    assert len(keys) == len(set(keys)) == CELLS  # nothing lost, nothing duplicated
    assert (run / "results.csv").read_bytes() == reference
    assert len(store.verify_manifest(run)) >= 4
    assert not [p for p in run.rglob("*.tmp")], "stale temporary files left"


PHASES = ["startup", "training", "calibration", "evaluation", "writing"]


def test_kill_9_at_random_moments(tmp_path, reference):
    rng = random.Random(14)
    kills: list[dict] = []
    chain = 0
    while len(kills) < 20 and chain < 8:
        jobs = 1 + chain % 2
        root = tmp_path / f"chain{chain}"
        root.mkdir()
        for phase in PHASES:
            k = kill_in(phase, root, jobs, rng)
            if k is not None:
                kills.append(k)
        finish(root, jobs)
        check_table(root, reference)
        chain += 1
    print("\nkills:", [(k["phase"], k["jobs"], k["children"], round(k["outlived_s"], 3))
                       for k in kills])
    assert len(kills) >= 20
    assert all(k["rc"] == -signal.SIGKILL for k in kills)
    assert not [k for k in kills if k["alive"]], kills
    assert max(k["outlived_s"] for k in kills) <= GRACE_S
    assert {k["phase"] for k in kills} == set(PHASES)
    assert {k["jobs"] for k in kills if k["children"]} >= {2}  # workers were there to kill


def _wait_for_cells(root: Path, proc: subprocess.Popen, n: int) -> None:
    while proc.poll() is None and len(list((root / "run").glob("cells/*.json"))) < n:
        time.sleep(0.01)
    assert proc.poll() is None


@pytest.mark.parametrize("how", ["SIGTERM", "Ctrl-C"])
def test_clean_stop_then_resume(tmp_path, reference, how):
    """SIGTERM to the parent, or SIGINT to the whole process group (Ctrl-C in a terminal):
    every process ends, nothing leaks, one line says how to resume — and resuming works."""
    proc = launch(tmp_path, jobs=2, new_session=True)
    _wait_for_cells(tmp_path, proc, 2)
    kids = descendants(proc.pid)
    if how == "SIGTERM":
        proc.send_signal(signal.SIGTERM)
    else:
        os.killpg(proc.pid, signal.SIGINT)
    rc = proc.wait(timeout=60)
    assert outlived(kids) <= GRACE_S
    log = max(tmp_path.glob("log-*.txt"), key=lambda p: p.stat().st_mtime).read_text()
    assert rc == (143 if how == "SIGTERM" else 130), log
    assert "Traceback" not in log and "leaked" not in log, log
    lines = [ln for ln in log.splitlines() if ln.strip()]
    assert len(lines) == 1 and "run the same command again to resume: noisydeq sweep" in lines[0]
    finish(tmp_path, jobs=2)
    check_table(tmp_path, reference)


def test_two_identical_sweeps_started_together(tmp_path, reference):
    """Both exit cleanly (the second waits for the first's lock, then finds every cell
    done); the table equals a single run's."""
    procs = [launch(tmp_path, jobs=1), launch(tmp_path, jobs=1)]
    codes = [p.wait(timeout=600) for p in procs]
    logs = [p.read_text() for p in sorted(tmp_path.glob("log-*.txt"))]
    assert codes == [0, 0], logs
    assert sorted("cells: 12 computed" in log for log in logs) == [False, True], logs
    assert sum("cells: 0 computed, 12 resumed" in log for log in logs) == 1, logs
    check_table(tmp_path, reference)
