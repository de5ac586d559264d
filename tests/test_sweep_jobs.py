"""Parallel sweep evaluation: worker processes give the table of one single-threaded process."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from noisydeq.config import SweepSpec, build
from noisydeq.errors import NoisyDEQError
from noisydeq.runtime import job_count
from noisydeq.sweep import resolve_jobs, run_sweep

SPEC = dict(task="digits", device="rram", snr_db="0,6,12,inf", depths=[1, 3], chips=2,
            hidden=16, epochs=1, max_train_samples=200, max_rows=800)


@pytest.mark.slow
def test_two_processes_equal_one_single_threaded_process(tmp_path, monkeypatch):
    spec = build(SweepSpec, SPEC)
    one = run_sweep(spec, tmp_path / "one", progress=False, plots=False, threads="1", jobs=1)
    two = run_sweep(spec, tmp_path / "two", progress=False, plots=False, jobs=2)
    assert one.computed_cells == two.computed_cells == 4 * 2 * 2  # models x chips x chunks
    assert two.rows == one.rows
    # and it resumes: nothing left to compute, same table
    again = run_sweep(spec, tmp_path / "two", progress=False, plots=False, jobs=2)
    assert again.computed_cells == 0 and again.rows == one.rows
    # other test batches and level chunks in two processes: the same table, byte for byte
    # (noise keyed by test-sample index)
    rechunked = build(SweepSpec, {**SPEC, "max_rows": 100})
    three = run_sweep(rechunked, tmp_path / "three", progress=False, plots=False, jobs=2)
    assert three.computed_cells == 4 * 2 * 4 and three.rows == one.rows
    # resumed with that max_rows, two cells (of two pairs) lost: the workers and the parent
    # compute the levels of those cells only, every other level served from the old chunks
    from noisydeq import store

    cells = {store.read_signed_json(p)["key"]: p for p in (tmp_path / "two" / "cells").iterdir()}
    lost = [p for k, p in sorted(cells.items()) if k.split("|")[4] == "0,6"][:2]
    for p in lost:
        p.unlink()
    four = run_sweep(rechunked, tmp_path / "two", progress=False, plots=False, jobs=2)
    assert four.computed_cells == 2 * 2 and four.rows == one.rows


@pytest.mark.slow
def test_workers_exit_cleanly_without_leaking_semaphores(tmp_path):
    """Workers that finished run their exit handlers (no SIGTERM): a worker killed while
    exiting left its tqdm lock registered, and Python warned of a leaked semaphore."""
    script = (
        "import json, sys\n"
        "from noisydeq.config import SweepSpec, build\n"
        "from noisydeq.sweep import run_sweep\n"
        "spec = build(SweepSpec, json.loads(sys.argv[1]))\n"
        "run_sweep(spec, sys.argv[2], progress=True, plots=False, jobs=2)\n"
    )
    for i in range(2):  # the leak was intermittent (2 runs in 3)
        done = subprocess.run(
            [sys.executable, "-c", script, json.dumps(SPEC), str(tmp_path / f"run{i}")],
            capture_output=True, text=True, timeout=600,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert "leaked" not in done.stderr, done.stderr[-2000:]


def test_job_count_parsing(monkeypatch):
    monkeypatch.delenv("NOISYDEQ_JOBS", raising=False)
    assert job_count("3") == 3 and job_count(2) == 2 and job_count("auto") >= 1
    monkeypatch.setenv("NOISYDEQ_JOBS", "5")
    assert job_count(None) == 5
    for bad in ("0", "-1", "x", "1.5"):
        with pytest.raises(NoisyDEQError, match="jobs"):
            job_count(bad)


def test_parallel_only_where_workers_can_rebuild_the_models():
    spec = build(SweepSpec, SPEC)
    assert resolve_jobs(4, spec, pending_pairs=3) == 3  # at most one per pending pair
    assert resolve_jobs(4, spec, pending_pairs=8, parallel_ok=False) == 1  # models passed in
    assert resolve_jobs("auto", spec, pending_pairs=0) == 1


@pytest.mark.slow
def test_a_worker_keys_cells_as_the_driver_and_refuses_to_disagree(tmp_path):
    """A spawned worker's cells are saved under its keys: it takes the driver's content
    digest, and stops in one line when its code or the models it found in the cache are
    not the driver's (before: a package edited mid-sweep gave cells under keys the driver
    never read, 'chip N was not written')."""
    import dataclasses

    from noisydeq.results import RunDir
    from noisydeq.runtime import num_threads
    from noisydeq.sweep.hardware import Hardware
    from noisydeq.sweep.plan import CellRunner, family_models
    from noisydeq.sweep.write import DriverFacts, worker_runner
    from noisydeq.tasks import load_task

    spec = build(SweepSpec, {**SPEC, "depths": [1], "chips": 1})
    run_sweep(spec, tmp_path / "run", progress=False, plots=False, jobs=1)  # the cache
    with num_threads(1):
        task = load_task(spec.task, seed=spec.data_seed)
        models = family_models(spec, task, progress=False)
        driver = CellRunner(spec, task, RunDir(tmp_path / "run"), Hardware(spec),
                            torch.device("cpu"))
        facts = DriverFacts.of(driver, models)
        runner, found = worker_runner(spec, str(tmp_path / "run"), facts)
        assert [runner.key(sm, 0, [0.0]) for sm in found] == \
            [driver.key(sm, 0, [0.0]) for sm in models]
        other = dataclasses.replace(facts, content="0" * 20)
        runner, found = worker_runner(spec, str(tmp_path / "run"), other)
        assert runner.content == other.content  # the driver's digest, not its own
        with pytest.raises(NoisyDEQError, match="code changed since the sweep started"):
            worker_runner(spec, str(tmp_path / "run"), dataclasses.replace(facts, code="x"))
        wrong = dataclasses.replace(facts, model_hashes=("0" * 16, *facts.model_hashes[1:]))
        with pytest.raises(NoisyDEQError, match="other weights for .* than the sweep loaded"):
            worker_runner(spec, str(tmp_path / "run"), wrong)


def test_the_driver_fingerprints_the_code_once(tmp_path, monkeypatch):
    """The content digest and the facts a parallel sweep's workers check carry one code
    fingerprint, computed once (it reads every module of the package): the same value,
    not two reads that an edit between them could split."""
    import noisydeq.hardware.calibration_store as store_mod
    from noisydeq.results import RunDir
    from noisydeq.sweep.hardware import Hardware
    from noisydeq.sweep.plan import CellRunner
    from noisydeq.sweep.write import DriverFacts
    from tests.sweep_helpers import toy_models, toy_spec, toy_task

    calls = []
    real = store_mod.code_fingerprint
    monkeypatch.setattr(store_mod, "code_fingerprint",
                        lambda *kind: calls.append(kind) or real(*kind))
    task = toy_task()
    spec = toy_spec(device="ideal", noise_site="signal", snr_db="0,inf", chips=1)
    driver = CellRunner(spec, task, RunDir(tmp_path / "run"), Hardware(spec),
                        torch.device("cpu"))
    facts = DriverFacts.of(driver, toy_models(task))
    assert calls == [("sweep",)] and facts.code == real("sweep")
    assert facts.content == driver.content


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="kill -9 and /proc")
def test_a_killed_parent_leaves_nothing_for_the_resource_tracker(tmp_path):
    """kill -9 (or a closed terminal's SIGHUP) gives the parent no chance to clean up: with
    a multiprocessing queue for the work and one for the results, Python's resource tracker
    then warned 'There appear to be 6 leaked semaphore objects' on the run's stderr. The
    processes share only pipes now: nothing is registered, so nothing is reported."""
    import os
    import signal
    import time
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "NOISYDEQ_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(root),
           "NOISYDEQ_PROGRESS": "lines", "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "noisydeq.cli", "sweep", "--device", "rram", "--snr",
            "0:30:5", "--depths", "1", "--chips", "2", "--epochs", "1", "--set", "hidden=8",
            "--set", "max_train_samples=64", "--set", "max_test_samples=40",
            "--set", "max_rows=40", "--threads", "1"]
    subprocess.run([*args, "--jobs", "1", "--quiet", "--out", str(tmp_path / "first")],
                   env=env, check=True, capture_output=True, timeout=600)  # the models
    err, run = tmp_path / "err.txt", tmp_path / "run"
    with open(err, "w") as fh:
        proc = subprocess.Popen([*args, "--jobs", "2", "--out", str(run)], env=env,
                                stdout=subprocess.DEVNULL, stderr=fh, start_new_session=True)
    while proc.poll() is None and not list((run / "cells").glob("*.json")):
        time.sleep(0.01)
    assert proc.poll() is None, err.read_text()  # killed mid-run, the worker alive
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    for _ in range(500):  # the worker and any resource tracker end with their parent
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.01)
    text = err.read_text()
    assert "leaked" not in text and "resource_tracker" not in text, text


def _failing_setup(spec, out_dir, facts):
    """A worker's set-up that meets a bad input (spawned workers import it by name)."""
    raise ValueError("bad input in the worker")


@pytest.mark.slow
def test_a_worker_error_is_one_line_and_leaves_no_process_or_semaphore(tmp_path, monkeypatch):
    """A worker that fails reports one line; the parent stops the others, and neither it
    nor anything else made a multiprocessing semaphore (what the resource tracker warns of
    when a process ends without releasing it)."""
    import multiprocessing as mp
    from multiprocessing import synchronize
    from types import SimpleNamespace

    from noisydeq.sweep.jobs import run_parallel

    made: list[str] = []
    real = synchronize.SemLock.__init__

    def spy(self, *args, **kwargs):
        made.append(type(self).__name__)
        real(self, *args, **kwargs)

    monkeypatch.setattr(synchronize.SemLock, "__init__", spy)
    cells: list[str] = []
    runner = SimpleNamespace(run_dir=SimpleNamespace(path=tmp_path),
                             run_pair=lambda sm, chip, on_cell, todo=None: on_cell(
                                 1, f"{chip}", 0.1))
    models = [SimpleNamespace(params=10)]
    with pytest.raises(NoisyDEQError, match="sweep worker failed: ValueError: bad input"):
        run_parallel(build(SweepSpec, SPEC), runner, models, [(0, c) for c in range(3)], 2,
                     lambda n, key, seconds: cells.append(key), _failing_setup)
    assert sorted(cells) == ["0", "1", "2"]  # the parent's own pairs were still saved
    assert mp.active_children() == [] and made == [], made
