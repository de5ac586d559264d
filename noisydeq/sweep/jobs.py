"""Parallel sweep evaluation: (model, chip) pairs shared by the process and spawned workers.

Every pair's cells are independent and deterministic (chips, noise and calibration are
seeded by the pair), so the table does not depend on which process computed a cell.
Workers are spawned (not forked: torch's thread pools are not fork-safe), load the task and
the trained family from the cache the parent just filled, ask the parent for pairs one at a
time (largest models first, for balance) and send each finished cell's rows back; the parent
evaluates pairs too and is the only process that writes the run directory (one writer per
run directory: :mod:`noisydeq.results`). Each process uses one torch thread
(:func:`noisydeq.sweep.plan.resolve_jobs`). A worker's error ends the sweep with its one-line
message; finished cells are kept, and a sweep killed mid-way resumes as a sequential one.

Process hygiene: a worker dies with its parent, whatever killed the parent (kill -9
included) — on Linux through ``PR_SET_PDEATHSIG``, everywhere through a thread that waits
on the parent's sentinel (:func:`multiprocessing.parent_process`) and ends the worker when
it fires. Workers ignore SIGINT (Ctrl-C reaches the whole process group; the parent
handles it); SIGINT / SIGTERM in the parent stop the workers (terminate, join) and close the
pipes. The processes share only pipes — no multiprocessing queue, lock or semaphore, in the
parent or a worker (its progress-bar lock is a thread lock) — so whatever stops the parent
(kill -9, a closed terminal's SIGHUP) or a worker, Python's resource tracker has nothing to
warn of (with two queues it warned of 6 leaked semaphores).
"""

from __future__ import annotations

import collections
import multiprocessing as mp
import os
import pickle
import queue
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from noisydeq.errors import NoisyDEQError
from noisydeq.specs.sweep import SweepSpec

_DONE, _CELL, _ERROR, _NEXT = "done", "cell", "error", "next"
_PR_SET_PDEATHSIG = 1
#: a worker's set-up: (spec, run dir, the driver's facts) -> (cell runner, models); given
#: by the sweep, so this module imports nothing of it (noisydeq.sweep.write imports this
#: one); the facts (:class:`noisydeq.sweep.write.DriverFacts`) are what the worker checks
#: itself against
Setup = Callable[[SweepSpec, str, Any], tuple[Any, Sequence[Any]]]


@contextmanager
def _main_left_alone() -> Iterator[None]:
    """While workers start: Python's spawn runs the parent's ``__main__`` again in each
    worker (as ``__mp_main__``, from its ``__file__`` or ``__spec__``) — a user's script
    whose ``run_sweep`` call is not under ``if __name__ == "__main__":`` ran that sweep
    again in every worker, which waited for the parent's lock on the run directory for
    ever. A worker needs noisydeq alone (its target and ``setup`` live in noisydeq; the
    models come from the cache), so the parent's main module is hidden from the
    preparation data while :meth:`Process.start` reads it, and restored."""
    main = sys.modules.get("__main__")
    if main is None:
        yield
        return
    hidden = {k: main.__dict__.pop(k) for k in ("__file__",) if k in main.__dict__}
    spec = getattr(main, "__spec__", None)
    if spec is not None:
        main.__spec__ = None
    try:
        yield
    finally:
        main.__dict__.update(hidden)
        if spec is not None:
            main.__spec__ = spec


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


def _worker(setup: bytes, spec: SweepSpec, out_dir: str, conn: Any) -> None:
    """Worker process: ask the parent for pairs over ``conn`` (its end of a pipe) and
    evaluate them until the parent answers None, with the runner and models that ``setup``
    (a pickled pair of a :data:`Setup` and the driver's facts) builds from ``(spec,
    out_dir, facts)``; cells go back as ``(cell, key, (rows, layers, seconds))``
    (``seconds``: its CPU time, for the time left)."""
    _die_with_parent()
    from tqdm import tqdm

    tqdm.set_lock(threading.RLock())  # no semaphore: a stopped worker leaks nothing
    try:
        import torch

        torch.set_num_threads(1)
        build, facts = pickle.loads(setup)
        runner, models = build(spec, out_dir, facts)
        held: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]] = {}

        def keep(key: str, rows: list[dict[str, Any]], layers: list[dict[str, Any]]) -> None:
            held[key] = (rows, layers)

        def send(_n: int, key: str, seconds: float) -> None:  # the cell, with its CPU time
            rows, layers = held.pop(key)
            conn.send((_CELL, key, (rows, layers, seconds)))

        while True:
            conn.send((_NEXT, None, None))
            if (item := conn.recv()) is None:
                break
            i, chip, chunks = item
            runner.run_pair(models[i], chip, send, todo=chunks, save=keep)
        conn.send((_DONE, None, None))
    except Exception as exc:  # reported by the parent as one line
        conn.send((_ERROR, f"{type(exc).__name__}: {exc}".splitlines()[0], None))
    finally:
        conn.close()


def _serve(conns: list[Any], take: Callable[[], tuple[int, int] | None],
           inbox: queue.SimpleQueue[tuple[str, Any, Any]],
           on_arrival: Callable[[str, float | None], None] | None = None) -> None:
    """The parent's thread that answers the workers: the next pair to one that asks
    (``take``), everything else into ``inbox`` for the main thread, which alone writes
    the run directory; ``on_arrival(key, seconds)`` hears of each cell at once (the time
    left), not when the main thread is next free. Ends when every worker's pipe has
    closed."""
    try:
        _answer(conns, take, inbox, on_arrival)
    except Exception as exc:  # noqa: BLE001 - never a silent end: the workers would wait
        inbox.put((_ERROR, f"{type(exc).__name__}: {exc}".splitlines()[0], None))


def _answer(conns: list[Any], take: Callable[[], tuple[int, int] | None],
            inbox: queue.SimpleQueue[tuple[str, Any, Any]],
            on_arrival: Callable[[str, float | None], None] | None) -> None:
    """:func:`_serve`'s loop."""
    from multiprocessing.connection import wait

    live = list(conns)
    while live:
        try:
            ready = wait(live)
        except (OSError, ValueError):  # the parent closed a pipe: the sweep is over
            return
        for conn in ready:
            try:
                kind, a, b = conn.recv()
            except (EOFError, OSError):  # the worker ended (or the parent closed its end)
                live.remove(conn)
                continue
            if kind == _NEXT:
                try:
                    conn.send(take())
                except OSError:  # the worker is gone; the main thread finds out
                    live.remove(conn)
            else:
                if kind == _CELL and on_arrival is not None:
                    on_arrival(a, b[2])
                inbox.put((kind, a, b))


def run_parallel(
    spec: SweepSpec,
    runner: Any,
    models: Sequence[Any],
    pairs: Sequence[tuple[int, int]],
    jobs: int,
    on_cell: Callable[[int, str, float | None], None],
    setup: Setup,
    facts: Any = None,
    on_arrival: Callable[[str, float | None], None] | None = None,
    todo: Mapping[tuple[int, int], list[list[float]]] | None = None,
) -> None:
    """Evaluate ``pairs`` with this process and ``jobs - 1`` spawned workers — each pair's
    level chunks ``todo`` gives (the driver's plan: a chunk it serves from cells of another
    chunking is not computed again), else the ones its run directory lacks; each worker
    builds its runner and models with ``setup`` (a module-level function, sent by name:
    :func:`noisydeq.sweep.write.worker_runner`). It travels pickled and is unpickled — which imports
    its module, torch included — only after the worker has tied its life to the parent's.
    ``facts`` travel to every worker's ``setup`` (what it must agree with the parent on),
    pickled with it for the same reason (their class lives in the sweep's modules).
    ``on_arrival(key, seconds)`` hears of every cell, the parent's own and the workers', as
    soon as it is done (from a thread of the parent for the workers'; ``on_cell`` comes
    when the main thread has saved it, which waits for the parent's own cell to end).

    Pairs are handed out one at a time, largest models first, to whichever process asks
    (the parent between its own pairs, a worker through its pipe, answered at once by a
    thread of the parent). Only pipes join the processes: no queue, lock or semaphore, so
    nothing is left for Python's resource tracker to warn about however the parent ends
    (kill -9 and a hang-up included: two queues left 6 semaphores registered)."""
    ctx = mp.get_context("spawn")
    order = collections.deque(sorted(pairs, key=lambda p: -models[p[0]].params))
    order_lock = threading.Lock()

    def take() -> tuple[int, int, list[list[float]] | None] | None:
        with order_lock:
            if not order:
                return None
            i, chip = order.popleft()
            return i, chip, None if todo is None else todo[(i, chip)]

    n_workers = jobs - 1
    blob = pickle.dumps((setup, facts))
    ends = [ctx.Pipe() for _ in range(n_workers)]
    procs = [ctx.Process(target=_worker, args=(blob, spec, str(Path(runner.run_dir.path)),
                                                child), daemon=True)
             for _, child in ends]
    inbox: queue.SimpleQueue[tuple[str, Any, Any]] = queue.SimpleQueue()
    server: threading.Thread | None = None
    finished = 0

    def drain(wait: float | None = None) -> None:
        """Save the cells the workers sent and count the finished workers: all received
        messages, or (``wait``) the next within ``wait`` seconds."""
        nonlocal finished
        while True:
            try:
                kind, a, b = inbox.get(timeout=wait) if wait else inbox.get_nowait()
            except queue.Empty:
                return
            if kind == _CELL:
                rows, layers, seconds = b
                runner.run_dir.save_cell(a, rows, layers)  # the parent is the writer
                on_cell(1, a, seconds)
            elif kind == _DONE:
                finished += 1
            else:
                raise NoisyDEQError(f"sweep worker failed: {a}")
            if wait:
                return

    def own_cell(n: int, key: str, seconds: float | None = None) -> None:
        if on_arrival is not None:
            on_arrival(key, seconds)
        on_cell(n, key, seconds)
        drain()  # save the workers' cells as they come, not only between pairs

    try:
        # workers start with SIGINT ignored (inherited across exec; Python keeps it so):
        # Ctrl-C reaches the whole process group, and the parent alone handles it
        ignore = threading.current_thread() is threading.main_thread()
        before = signal.signal(signal.SIGINT, signal.SIG_IGN) if ignore else None
        try:
            with _main_left_alone():
                for p in procs:
                    p.start()
        finally:
            if before is not None:
                signal.signal(signal.SIGINT, before)
        for _, child in ends:
            child.close()  # the worker holds it now: its end closing means the worker ended
        server = threading.Thread(target=_serve, name="noisydeq-sweep-jobs", daemon=True,
                                  args=([c for c, _ in ends], take, inbox, on_arrival))
        server.start()
        while (item := take()) is not None:
            i, chip, chunks = item
            runner.run_pair(models[i], chip, own_cell, todo=chunks)
            drain()
        while finished < n_workers:
            drain(wait=1.0)
            if finished < n_workers and not any(p.is_alive() for p in procs):
                if server is not None:
                    server.join(timeout=5)  # what the workers sent before they ended
                drain()
                if finished < n_workers:
                    raise NoisyDEQError("sweep worker ended without finishing its cells "
                                        "(run the command again to resume)")
    finally:
        with order_lock:
            order.clear()  # a worker that asks now is told to stop
        for p in procs:
            if p.pid is None:
                continue
            # a worker that reported done is exiting: let it run its exit handlers; stop
            # the others now
            p.join(timeout=10 if finished == n_workers else 0)
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
            if p.is_alive():  # pragma: no cover - ignored SIGTERM
                p.kill()
                p.join()
        for _, child in ends:
            child.close()
        if server is not None:  # every worker is gone: their pipes read as closed
            server.join(timeout=5)
        for conn, _ in ends:
            conn.close()
