"""Parallel sweep evaluation: (model, chip) pairs shared by the process and spawned workers.

Every pair's cells are independent and deterministic (chips, noise and calibration are
seeded by the pair), so the table does not depend on which process computed a cell.
Workers are spawned (not forked: torch's thread pools are not fork-safe), load the task and
the trained family from the cache the parent just filled, take pairs from a shared queue
(largest models first, for balance) and send each finished cell's rows back; the parent
evaluates pairs too and is the only process that writes the run directory (one writer per
run directory: :mod:`noisydeq.results`). Each process uses one torch thread
(:func:`noisydeq.sweep.plan.resolve_jobs`). A worker's error ends the sweep with its one-line
message; finished cells are kept, and a sweep killed mid-way resumes as a sequential one.

Process hygiene: a worker dies with its parent, whatever killed the parent (kill -9
included) — on Linux through ``PR_SET_PDEATHSIG``, everywhere through a thread that waits
on the parent's sentinel (:func:`multiprocessing.parent_process`) and ends the worker when
it fires. Workers ignore SIGINT (Ctrl-C reaches the whole process group; the parent
handles it); SIGINT / SIGTERM in the parent stop the workers (terminate, join) and close the
queues; a worker holds no semaphore of its own (its progress-bar lock is a thread lock),
so however it is stopped nothing leaks.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import queue
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from noisydeq.errors import NoisyDEQError
from noisydeq.specs.sweep import SweepSpec

_DONE, _CELL, _ERROR = "done", "cell", "error"
_PR_SET_PDEATHSIG = 1
#: a worker's set-up: (spec, run dir, the driver's facts) -> (cell runner, models); given
#: by the sweep, so this module imports nothing of it (noisydeq.sweep.write imports this
#: one); the facts (:class:`noisydeq.sweep.write.DriverFacts`) are what the worker checks
#: itself against
Setup = Callable[[SweepSpec, str, Any], tuple[Any, Sequence[Any]]]


def _die_with_parent() -> None:
    """Make this (spawned) process end when its parent does, however the parent ends."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):  # pragma: no cover - no prctl: the watch below
            pass
    parent = mp.parent_process()
    if parent is None:  # pragma: no cover - not started by multiprocessing
        return

    def watch() -> None:
        from multiprocessing.connection import wait

        wait([parent.sentinel])
        os._exit(1)  # the parent is gone: nobody will read what this worker computes

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _worker(setup: bytes, spec: SweepSpec, out_dir: str, work: Any, results: Any) -> None:
    """Worker process: evaluate pairs from ``work`` until its end marker with the runner and
    models that ``setup`` (a pickled pair of a :data:`Setup` and the driver's facts) builds
    from ``(spec, out_dir, facts)``; cells go back to the parent as ``(cell, key, (rows,
    layers))``."""
    _die_with_parent()
    from tqdm import tqdm

    tqdm.set_lock(threading.RLock())  # no semaphore: a stopped worker leaks nothing
    try:
        import torch

        torch.set_num_threads(1)
        build, facts = pickle.loads(setup)
        runner, models = build(spec, out_dir, facts)

        def send(key: str, rows: list[dict[str, Any]], layers: list[dict[str, Any]]) -> None:
            results.put((_CELL, key, (rows, layers)))

        while (item := work.get()) is not None:
            i, chip = item
            runner.run_pair(models[i], chip, lambda *_: None, save=send)
        results.put((_DONE, None, None))
    except Exception as exc:  # reported by the parent as one line
        results.put((_ERROR, f"{type(exc).__name__}: {exc}".splitlines()[0], None))


def run_parallel(
    spec: SweepSpec,
    runner: Any,
    models: Sequence[Any],
    pairs: Sequence[tuple[int, int]],
    jobs: int,
    on_cell: Callable[[int, str], None],
    setup: Setup,
    facts: Any = None,
) -> None:
    """Evaluate ``pairs`` with this process and ``jobs - 1`` spawned workers; each worker
    builds its runner and models with ``setup`` (a module-level function, sent by name:
    :func:`noisydeq.sweep.write.worker_runner`). It travels pickled and is unpickled — which imports
    its module, torch included — only after the worker has tied its life to the parent's.
    ``facts`` travel to every worker's ``setup`` (what it must agree with the parent on),
    pickled with it for the same reason (their class lives in the sweep's modules)."""
    ctx = mp.get_context("spawn")
    work, results = ctx.Queue(), ctx.Queue()
    order = sorted(pairs, key=lambda p: -models[p[0]].params)  # big models first
    for p in order:
        work.put(p)
    n_workers = jobs - 1
    for _ in range(jobs):
        work.put(None)
    blob = pickle.dumps((setup, facts))
    procs = [ctx.Process(target=_worker, args=(blob, spec, str(Path(runner.run_dir.path)),
                                                work, results), daemon=True)
             for _ in range(n_workers)]
    finished = 0

    def drain(wait: float | None = None) -> None:
        """Save the cells the workers sent and count the finished workers: all queued
        messages, or (``wait``) the next within ``wait`` seconds."""
        nonlocal finished
        while True:
            try:
                kind, a, b = results.get(timeout=wait) if wait else results.get_nowait()
            except queue.Empty:
                return
            if kind == _CELL:
                runner.run_dir.save_cell(a, *b)  # the parent is the run directory's writer
                on_cell(1, a)
            elif kind == _DONE:
                finished += 1
            else:
                raise NoisyDEQError(f"sweep worker failed: {a}")
            if wait:
                return

    def own_cell(n: int, key: str) -> None:
        on_cell(n, key)
        drain()  # save the workers' cells as they come, not only between pairs

    try:
        # workers start with SIGINT ignored (inherited across exec; Python keeps it so):
        # Ctrl-C reaches the whole process group, and the parent alone handles it
        ignore = threading.current_thread() is threading.main_thread()
        before = signal.signal(signal.SIGINT, signal.SIG_IGN) if ignore else None
        try:
            for p in procs:
                p.start()
        finally:
            if before is not None:
                signal.signal(signal.SIGINT, before)
        while (item := work.get()) is not None:
            i, chip = item
            runner.run_pair(models[i], chip, own_cell)
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
            if p.pid is None:
                continue
            # a worker that reported done is exiting: let it run its exit handlers (they
            # release the semaphores it registered, e.g. tqdm's lock); stop the others now
            p.join(timeout=10 if finished == n_workers else 0)
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
            if p.is_alive():  # pragma: no cover - ignored SIGTERM
                p.kill()
                p.join()
        for q in (work, results):  # release the queues' locks (no leaked semaphores)
            q.close()
            q.join_thread()
