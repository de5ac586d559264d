"""Parallel sweep evaluation: (model, chip) pairs shared by the process and spawned workers.

Every pair's cells are independent and deterministic (chips, noise and calibration are
seeded by the pair), and every process saves its cells atomically into the run
directory, so the table does not depend on which process computed a cell, and a sweep
killed mid-way resumes as a sequential one does. Workers are spawned (not forked: torch's
thread pools are not fork-safe), load the task and the trained family from the cache the
parent just filled, take pairs from a shared queue (largest models first, for balance)
and report each finished cell; the parent evaluates pairs too while it waits. Each process
uses one torch thread (:func:`noisydeq.sweep.resolve_jobs`). A worker's error ends the
sweep with its one-line message; finished cells are kept.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from noisydeq.config import SweepSpec
from noisydeq.errors import NoisyDEQError

_DONE, _CELL, _ERROR = "done", "cell", "error"


def _worker(spec: SweepSpec, out_dir: str, work: Any, results: Any) -> None:
    """Worker process: evaluate pairs from ``work`` until its end marker."""
    try:
        torch.set_num_threads(1)
        from noisydeq.results import RunDir
        from noisydeq.runtime import resolve_torch_device
        from noisydeq.sweep import CellRunner, Hardware, family_models
        from noisydeq.tasks import load_task

        task = load_task(spec.task, data_dir=spec.data_dir, seed=spec.seeds[0])
        models = family_models(spec, task, progress=False)
        runner = CellRunner(spec, task, RunDir(out_dir), Hardware(spec),
                            resolve_torch_device(spec.torch_device))
        while (item := work.get()) is not None:
            i, chip = item
            runner.run_pair(models[i], chip, lambda _n: results.put((_CELL, None)))
        results.put((_DONE, None))
    except KeyboardInterrupt:
        pass
    except Exception as exc:  # reported by the parent as one line
        results.put((_ERROR, f"{type(exc).__name__}: {exc}".splitlines()[0]))


def run_parallel(
    spec: SweepSpec,
    runner: Any,
    models: Sequence[Any],
    pairs: Sequence[tuple[int, int]],
    jobs: int,
    on_cell: Callable[[int], None],
) -> None:
    """Evaluate ``pairs`` with this process and ``jobs - 1`` spawned workers."""
    ctx = mp.get_context("spawn")
    work, results = ctx.Queue(), ctx.Queue()
    order = sorted(pairs, key=lambda p: -models[p[0]].params)  # big models first
    for p in order:
        work.put(p)
    n_workers = jobs - 1
    for _ in range(jobs):
        work.put(None)
    procs = [ctx.Process(target=_worker, args=(spec, str(Path(runner.run_dir.path)), work,
                                                results), daemon=True)
             for _ in range(n_workers)]
    for p in procs:
        p.start()
    finished = 0

    def drain(wait: float | None = None) -> None:
        """Handle the workers' messages: all queued ones, or (``wait``) the next within
        ``wait`` seconds."""
        nonlocal finished
        while True:
            try:
                kind, payload = results.get(timeout=wait) if wait else results.get_nowait()
            except queue.Empty:
                return
            if kind == _CELL:
                on_cell(1)
            elif kind == _DONE:
                finished += 1
            else:
                raise NoisyDEQError(f"sweep worker failed: {payload}")
            if wait:
                return

    try:
        while (item := work.get()) is not None:
            i, chip = item
            runner.run_pair(models[i], chip, on_cell)
            drain()
        while finished < n_workers:
            drain(wait=1.0)
            if finished < n_workers and not any(p.is_alive() for p in procs):
                drain()
                if finished < n_workers:
                    raise NoisyDEQError("sweep worker ended without finishing its cells "
                                        "(run the command again to resume)")
    finally:
        for p in procs:
            # a worker that reported done is exiting: let it run its exit handlers (they
            # release the semaphores it registered, e.g. tqdm's lock); stop the others now
            p.join(timeout=10 if finished == n_workers else 0)
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
        for q in (work, results):  # release the queues' locks (no leaked semaphores)
            q.close()
            q.join_thread()
