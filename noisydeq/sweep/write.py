"""Write: the driver of a sweep, the only writer of its run directory.

:func:`run_sweep` validates everything, opens (or resumes) the run directory, plans the
missing cells, evaluates them in this process or with spawned workers
(:mod:`noisydeq.sweep.jobs`, whose rows come back here to be saved), and writes the table,
the per-layer table, the figures and the digests.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from noisydeq.cluster import Backend
from noisydeq.convergence import stop_rule
from noisydeq.errors import NoisyDEQError
from noisydeq.results import RunDir, table_columns
from noisydeq.runtime import (
    cache_root,
    check_cache,
    num_threads,
    read_only_cache,
    resolve_torch_device,
    thread_plan,
)
from noisydeq.specs.sweep import SweepSpec, is_native
from noisydeq.sweep.base import SweepModel
from noisydeq.sweep.hardware import Hardware
from noisydeq.sweep.plan import CellRunner, ModelProvider, family_models, resolve_jobs


@dataclass
class SweepResult:
    """What :func:`run_sweep` produced."""

    rows: list[dict[str, Any]]
    run_dir: RunDir
    native_snr_db: float
    computed_cells: int
    skipped_cells: int
    figures: list[Path] = field(default_factory=list)
    #: static / dynamic / total native SNR of the device's reference MVM (dB)
    native_parts: dict[str, float] = field(default_factory=dict)
    #: what this run added to the grids its run directory held (empty: a new run or a
    #: resume; :func:`noisydeq.extension.added_grids`)
    extended: dict[str, Any] = field(default_factory=dict)
    #: model id → its test solver's stop rule in words (:func:`noisydeq.convergence
    #: .stop_rule`; '' for a feed-forward model), for the end-of-run convergence lines
    stop_rules: dict[str, str] = field(default_factory=dict)
    #: cells of the run directory computed again because other inputs computed them —
    #: other code, weights or data (:meth:`~noisydeq.sweep.plan.CellRunner.superseded`)
    superseded_cells: int = 0
    #: cell files outside the plan deleted at the end of the run (:meth:`~noisydeq.sweep
    #: .plan.CellRunner.prune`)
    pruned_cells: int = 0

    @property
    def path(self) -> Path:
        """The run directory (``noisydeq.load_results(result.path)`` reads its table)."""
        return self.run_dir.path

    def __repr__(self) -> str:  # a notebook shows this: the rows are in ``rows`` / the CSV
        return (f"SweepResult(path={str(self.path)!r}, rows={len(self.rows)}, "
                f"computed_cells={self.computed_cells}, skipped_cells={self.skipped_cells}, "
                f"figures={len(self.figures)})")


@dataclass(frozen=True)
class DriverFacts:
    """What a spawned worker must agree with the driver on before it computes a cell (the
    worker's cells are saved under its keys): the cells' content digest, the package's
    code and every model's weights digest."""

    content: str
    code: str
    model_hashes: tuple[str, ...]

    @classmethod
    def of(cls, runner: CellRunner, models: Sequence[SweepModel]) -> DriverFacts:
        # the code fingerprint the runner's content digest was made with (computed once)
        return cls(runner.content, runner.code, tuple(runner.model_hash(sm) for sm in models))


def worker_runner(spec: SweepSpec, out_dir: str,
                  facts: DriverFacts) -> tuple[CellRunner, list[SweepModel]]:
    """A spawned worker's runner and models (:func:`noisydeq.sweep.jobs.run_parallel`): the
    task and the family reloaded from the cache the parent filled, the run directory
    ``out_dir`` (the parent writes it; the worker sends its cells back), the cells keyed by
    the driver's content digest. Refused in one line when the worker runs other code or
    found other models than the driver (its cells would carry the driver's keys): a
    package edited during the sweep, a cache entry replaced."""
    from noisydeq.hardware.calibration_store import code_fingerprint
    from noisydeq.tasks import load_task

    if code_fingerprint("sweep") != facts.code:
        raise NoisyDEQError("the noisydeq code changed since the sweep started: run the "
                            "command again (the cells finished so far hold the earlier "
                            "code in their keys, so they are computed again; edits to "
                            "comments and docstrings do not count as a change)")
    task = load_task(spec.task, data_dir=spec.data_dir, seed=spec.data_seed)
    models = family_models(spec, task, progress=False)
    runner = CellRunner(spec, task, RunDir(out_dir), Hardware(spec),
                        resolve_torch_device(spec.torch_device), content=facts.content,
                        code=facts.code)
    found = tuple(runner.model_hash(sm) for sm in models)
    if found != facts.model_hashes:
        which = next((f"weights for {sm.model_id}" for sm, a, b in zip(
            models, found, facts.model_hashes, strict=False) if a != b),
            f"{len(found)} models for the {len(facts.model_hashes)}")
        raise NoisyDEQError(f"the model cache holds other {which} than the sweep loaded "
                            "(the cache changed during the sweep; run it again)")
    return runner, models


def run_sweep(
    spec: SweepSpec,
    out_dir: str | Path,
    *,
    task: Any = None,
    models: Sequence[SweepModel] | ModelProvider | None = None,
    progress: bool = True,
    on_cell: Callable[[int], None] | None = None,
    plots: bool = True,
    title: str = "",
    threads: str | int | None = None,
    jobs: int | str | None = None,
    backend: Backend | None = None,
    echo: Callable[[str], None] | None = None,
    prune: bool | None = None,
) -> SweepResult:
    """Run (or resume) the sweep ``spec`` into ``out_dir``; returns the tidy table.

    ``task`` / ``models`` default to ``noisydeq.tasks.load_task`` and the trained family of
    ``noisydeq.families``; tests pass their own. ``on_cell(n)`` is called after the n-th cell
    computed in this process is saved (used to test interruption). ``threads``: the torch
    thread counts of training and evaluation (:func:`noisydeq.runtime.thread_plan`; ``None``
    reads ``$NOISYDEQ_THREADS``), each phase's restored after it. ``jobs``: evaluation
    processes (:func:`resolve_jobs`; ``None`` reads ``$NOISYDEQ_JOBS``, default ``auto``).
    ``backend``: :class:`noisydeq.cluster.Backend` (default local: ``jobs`` processes);
    with Ray, family members train as Ray tasks (:mod:`noisydeq.family_tasks`) and cells
    are evaluated as Ray tasks (:mod:`noisydeq.sweep.ray_cells`) — the same table; the
    cluster is joined (or started) before anything is written, and left at the end.
    ``echo``: where the notes before the work go (default standard error): resuming, the
    cells its files hold from other code, weights or data (their keys hold all three, so
    they are computed again) are counted in one line each, and each old file is removed
    once its cell is written again (:meth:`~noisydeq.sweep.plan.CellRunner.superseded`).
    ``prune``: once every cell is written, delete the cell files no cell of the plan reads,
    with a line saying how many and why (:meth:`~noisydeq.sweep.plan.CellRunner.prune`);
    default (None) when the models come from the spec (``models`` not given, or
    :func:`family_models`): the plan is then the spec's whole grid. Given models may be a
    part of what a run directory holds, so their sweep keeps every other file unless
    ``prune=True``.

    Everything is validated before anything is written; the run directory is locked for
    the whole run (a second sweep on the same ``out_dir`` waits for this one).
    """
    from noisydeq.specs.task_names import check_run_data_dir

    # the spec's data directory: the commands' one rule (exists; a task that reads files)
    check_run_data_dir(spec.data_dir, [spec.task], "the sweep's")
    train_threads, eval_threads = thread_plan(threads)
    torch_device = resolve_torch_device(spec.torch_device)
    if task is None:
        from noisydeq.tasks import load_task

        task = load_task(spec.task, data_dir=spec.data_dir, seed=spec.data_seed)
    # the cell files outside the plan go at the end when the plan is the spec's whole grid
    whole_plan = prune if prune is not None else models is None or models is family_models
    run_dir = RunDir(out_dir)
    # an existing run directory: its grids and these (refused, naming the field, when
    # another field differs), so the checks below see the whole extended sweep
    spec = run_dir.union(spec)
    hardware = Hardware(spec)  # validates the device before anything is written
    read_only = False
    if models is None:
        from noisydeq.families import check_sweep_families

        # the models, calibrations and chips go to the cache: writable, or one line; a
        # read-only one serves a run that finds every entry it needs there (checked below)
        check_cache(reading=True)
        read_only = read_only_cache()
        # presets, overrides, memory (in each evaluation process): before any write
        pairs = spec.family_count() * len(spec.depths) * len(spec.kinds) * spec.chips
        local = 1 if backend is not None and backend.ray else resolve_jobs(jobs, spec, pairs)
        check_sweep_families(spec, task, local)
    backend = backend or Backend()
    loaded = None
    if read_only:  # every entry found and the models loaded, or one line naming the
        # first entry the cache lacks: before the run directory (and a Ray cluster)
        from noisydeq.sweep.cached import check_read_only_sweep

        loaded = check_read_only_sweep(spec, out_dir, task, hardware, torch_device,
                                       train_threads=train_threads, eval_threads=eval_threads,
                                       jobs=jobs, ray=backend.ray, progress=progress)
    joined = False
    if backend.ray:  # unreachable: one line, before anything is written
        from noisydeq.cluster import connect

        joined = connect(backend)
    try:
        # the figures' title is recorded: `noisydeq plot` redraws them with it
        fresh = not run_dir.open(spec, {"title": title} if title else None)
        if run_dir.spec != spec:  # another writer extended it meanwhile: the cache's
            loaded = None  # models of the grown spec are loaded (or refused) once open
        spec = run_dir.spec
        try:
            return _run_open(spec, run_dir, task, hardware, models, progress, on_cell, plots,
                             title, train_threads, eval_threads, torch_device, jobs, fresh,
                             backend, echo or _stderr, whole_plan, loaded)
        finally:
            run_dir.close()
    finally:
        if joined:
            from noisydeq.cluster import disconnect

            disconnect()


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _run_open(
    spec: SweepSpec, run_dir: RunDir, task: Any, hardware: Hardware,
    models: Sequence[SweepModel] | ModelProvider | None, progress: bool,
    on_cell: Callable[[int], None] | None, plots: bool, title: str,
    train_threads: int | None, eval_threads: int | None, torch_device: torch.device,
    jobs: int | str | None, fresh: bool, backend: Backend,
    echo: Callable[[str], None] = print, prune: bool = False,
    loaded: list[SweepModel] | None = None,
) -> SweepResult:
    """The body of :func:`run_sweep` once its run directory is open and locked
    (``fresh``: created by this run; ``prune``: delete the cell files outside the plan at
    the end; ``loaded``: the family's models, loaded from a read-only cache before the
    directory was opened)."""
    from noisydeq.progress import TimeLeft, set_time_left
    from noisydeq.progress import progress as progress_bar

    if models is None:
        models = family_models if loaded is None else loaded
    # worker processes can rebuild the models only when they come from the family cache
    models_from_cache = models is family_models or models is loaded
    if models is family_models and backend.ray:  # members not yet cached train as Ray tasks
        from noisydeq.family_tasks import train_sweep_families_on_ray

        train_sweep_families_on_ray(spec, task, progress)
        train_threads = 1  # Ray tasks train with one thread: load those cache entries
    if callable(models):
        with num_threads(train_threads):
            models = models(spec, task, progress)
    models = list(models)

    runner = CellRunner(spec, task, run_dir, hardware, torch_device)
    pairs = [(i, chip) for i, sm in enumerate(models) for chip in range(spec.chips)]
    todo = {p: runner.missing(models[p[0]], p[1]) for p in pairs}
    runner.rechunked(models, todo)  # chunks that cells of another max_rows hold: served
    pending = [p for p in pairs if todo[p]]
    for line in runner.superseded(models, todo):  # before any work
        echo(line)
    superseded = len(run_dir.superseded)
    if pending:  # unreachable targets: one line, before any cell (a new run dir is removed)
        try:
            with num_threads(eval_threads):
                hardware.check_reachable([models[i] for i in sorted({i for i, _ in pending})],
                                         runner.calib_x)
        except NoisyDEQError:
            if fresh:
                run_dir.discard()
            raise
    n_jobs = 1 if backend.ray else resolve_jobs(jobs, spec, len(pending),
                                                parallel_ok=models_from_cache)
    total = len(pairs) * len(runner.chunks)
    bar = progress_bar(total=total, desc="sweep", unit="cells", disable=not progress,
                       initial=total - sum(len(t) for t in todo.values()))
    computed = 0
    # the time left: a cost model of the (model, chip) pairs, learned from the CPU seconds
    # of the finished ones by kind and size (the first cell of a pair, which programs and
    # calibrates its chip, is most of it; parallel runs take the largest models first, so
    # a mean over finished pairs overstated the rest): progress.TimeLeft
    pair_of = {runner.key(models[i], chip, levels): (i, chip)
               for i, chip in pending for levels in todo[(i, chip)]}
    cells_left = {p: len(todo[p]) for p in pending}
    left = TimeLeft({p: (models[p[0]].kind, float(models[p[0]].params),
                         len(todo[p]) / len(runner.chunks)) for p in pending}, workers=n_jobs)
    set_time_left(bar, left)

    parallel = not backend.ray and n_jobs > 1
    lock = threading.Lock()

    def account(key: str, seconds: float | None) -> None:
        """A cell is done (a parallel run: as it arrives, from the thread that receives
        the workers' cells — the driver's main thread saves it when its own cell ends)."""
        pair = pair_of.get(key)
        if pair is not None:
            with lock:
                left.spend(pair, seconds)
                cells_left[pair] -= 1
                if cells_left[pair] == 0:
                    left.finish(pair)

    def cell_done(_n: int, key: str, seconds: float | None = None) -> None:
        nonlocal computed
        computed += 1
        if not parallel:
            account(key, seconds)
        bar.update(1)
        if on_cell is not None:
            on_cell(computed)

    if backend.ray:
        from noisydeq.sweep.ray_cells import run_on_ray

        run_on_ray(runner, task, models, todo, cell_done)
    elif n_jobs > 1:
        from noisydeq.sweep.jobs import run_parallel

        with num_threads(1):  # every process evaluates with one thread (see resolve_jobs)
            run_parallel(spec, runner, models, pending, n_jobs, cell_done, worker_runner,
                         DriverFacts.of(runner, models), on_arrival=account, todo=todo)
    else:
        with num_threads(eval_threads):
            for i, chip in pending:
                runner.run_pair(models[i], chip, cell_done, todo[(i, chip)])
    all_rows: list[dict[str, Any]] = []
    all_layers: list[dict[str, Any]] = []
    at = {s: i for i, s in enumerate(spec.snr_db)}  # chunks of an extended run: grid order
    for sm in models:
        for chip in range(spec.chips):
            rows_here: list[dict[str, Any]] = []
            layers_here: list[dict[str, Any]] = []
            native_here: tuple[list[dict[str, Any]], list[dict[str, Any]]] = ([], [])
            for levels in runner.chunks:
                found = runner.take(sm, chip, levels)
                if found is None:
                    raise NoisyDEQError(f"sweep: cell {sm.model_id} chip {chip} was not written")
                if is_native(levels[0]):  # its cell: the native level alone
                    native_here = found
                    continue
                rows_here.extend(found[0])
                layers_here.extend(found[1])
            rows_here.sort(key=lambda r: at[r["snr_db"]])
            layers_here.sort(key=lambda r: at[r["snr_db"]])
            if spec.snr_native:  # the table's native column; the native row after the grid's
                rows_here = [{**r, "native": False} for r in rows_here]
                rows_here += [{**r, "native": True} for r in native_here[0]]
            all_rows += rows_here
            all_layers += layers_here + native_here[1]
    skipped = total - computed
    bar.close()
    run_dir.write_table(all_rows, table_columns(spec))
    if all_layers:
        run_dir.write_layer_table(all_layers)
    pruned, lines = runner.prune(models) if prune else (0, [])
    for line in lines:
        echo(line)
    result = SweepResult(all_rows, run_dir, hardware.native_snr_db(), computed, skipped,
                         native_parts=hardware.native_parts(), extended=dict(run_dir.added),
                         superseded_cells=superseded, pruned_cells=pruned)
    result.stop_rules = {sm.model_id: stop_rule(sm.model) for sm in models}
    if plots and all_rows:
        from noisydeq.figure_cache import cached_figures

        def draw() -> list[Path]:
            from noisydeq.plots import plot_sweep  # matplotlib: only when drawing

            return plot_sweep(all_rows, run_dir.figures, spec, result.native_snr_db,
                              title=title)

        # the same rows, spec, native SNR and title (and code): the figures of the cache
        inputs = {"figures": "sweep", "rows": all_rows, "spec": spec,
                  "native_snr_db": result.native_snr_db, "title": title}
        result.figures = cached_figures(inputs, run_dir.figures, draw, cache_root())
    run_dir.seal(result.figures)
    return result
