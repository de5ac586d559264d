"""Run a study: train each named model once per (seed, training SNR), evaluate the grid.

Run directory (``out``, :class:`~noisydeq.studies.rundir.StudyDir`: locked while written,
every file atomic and digest-checked)::

    study.toml        the resolved StudySpec, signed (a run dir of another config is refused)
    meta.json         package versions, start time, resumes (signed)
    models/<id>/      model.safetensors + model.json (and resume.safetensors while training),
                      one per model id ``<name>-s<seed>-t<train SNR>``; the analysis
                      commands take the run dir as ``--family``
    cells/<id>.json   the evaluated rows of one model and the code that evaluated them
                      (signed), written when complete
    results.csv       one row per model × test size × budget × test solver × test SNR
    summary.csv       mean, std, min and max over seeds of every row group
    figures/          extrapolation curves, iteration budgets, metric vs SNR / parameters
    SHA256SUMS        digests of the tables, spec, meta data and figures

Training resumes per epoch (:func:`noisydeq.train.train_model`) and finished models are
loaded, not retrained; evaluated models are not re-evaluated, nor loaded: a cell is served
when it records the weights digest read from its model's checkpoint and this code — other
noisydeq code (:func:`~noisydeq.fingerprint.code_fingerprint`; comments and docstrings do
not count) or other weights (a model trained again since) have its model evaluated again,
and one log line per reason says how many (the checkpoints, like the model cache, are kept
across code versions; :func:`run_study`). Weights are initialised from
``derive_seed(seed, "study", name)``; the task (and every shifted test set) is generated
from the first seed, so all models see the same data. Test noise and random test-solver caps
are counter-based, keyed by (seed, model, training SNR, test set, test SNR, sample, cell
call): every budget and test solver of a model meets the same draws (common random
numbers), whatever ``eval_batch`` is.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from noisydeq.errors import NoisyDEQError
from noisydeq.noise import derive_seed
from noisydeq.results import other_code_note, other_weights_note
from noisydeq.specs.base import build
from noisydeq.specs.model import ModelSpec
from noisydeq.specs.study import StudyModel, StudySpec
from noisydeq.studies.evaluate import score
from noisydeq.studies.rundir import StudyDir
from noisydeq.summary import fmt_db


def model_spec(model: StudyModel, task: Any) -> ModelSpec:
    """The :class:`ModelSpec` of a study's ``model`` for ``task`` (in/out sizes, input
    shape; a cell that does not fit the task is one line)."""
    from noisydeq.models.extra import fit_to_task

    fields = fit_to_task(model.model, task)
    return build(ModelSpec, {"kind": model.kind, "in_features": task.in_features,
                             "out_features": task.out_features, **fields},
                 where=f"model ({model.kind})")


def model_id(name: str, seed: int, train_snr_db: float) -> str:
    return f"{name}-s{seed}-t{fmt_db(train_snr_db)}"


@dataclass
class StudyResult:
    """Rows, summary and files of a finished study."""

    rows: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    out: Path
    figures: list[Path] = field(default_factory=list)
    trained: int = 0
    loaded: int = 0
    #: evaluations served from the run directory, their models neither trained nor loaded
    served: int = 0
    seconds: float = 0.0


def load_study_task(spec: StudySpec) -> Any:
    """The study's task (first seed), with every requested test size validated up front."""
    from noisydeq.tasks import load_task

    task = load_task(spec.task, data_dir=spec.data_dir, seed=spec.seeds[0], **spec.task_options)
    if spec.shifts:
        check = getattr(task, "check", None)
        if getattr(task, "make", None) is None:
            raise NoisyDEQError(f"shifts: task '{spec.task}' has no test sets at other sizes")
        for s in spec.shifts:
            check(s)
    if "scaled" in spec.budgets and not getattr(task, "per_position", False):
        raise NoisyDEQError("budgets: 'scaled' needs a task whose inputs grow with the problem "
                            "size (prefix_sums, mazes)")
    return task


def _test_sets(spec: StudySpec, task: Any) -> list[tuple[float | None, Any, Any]]:
    if not spec.shifts:
        return [(getattr(task, "train_shift", None), task.x_test, task.y_test)]
    return [(float(s), *task.shifted(s, spec.n_shift)) for s in spec.shifts]


def _build(spec: StudySpec, name: str, task: Any, seed: int):
    from noisydeq.models import build_model

    mspec = model_spec(spec.models[name], task)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "study", name) % (2**63))
        return build_model(mspec)


def _grid(spec: StudySpec, model: Any, sets: list) -> tuple[bool, list, dict]:
    """(DEQ?, budgets, named test solvers) a model is evaluated over."""
    deq = getattr(model, "kind", None) == "deq"
    solvers = (spec.test_solvers or {"trained": None}) if deq else {"-": None}
    budgets = spec.budgets if deq and hasattr(model, "budget") else ["train"]
    return deq, budgets, solvers


def expected_rows(spec: StudySpec, name: str, model: Any, seed: int, train_snr_db: float,
                  sets: list) -> list[dict[str, Any]]:
    """The identity (:data:`~noisydeq.studies.rundir.ROW_IDENTITY`) of every row
    :func:`evaluate_model` writes for this model, in order (checked when a cell is loaded)."""
    deq, budgets, solvers = _grid(spec, model, sets)
    return [{"model": name, "seed": seed, "train_snr_db": train_snr_db,
             "shift": math.nan if shift is None else float(shift),
             "budget": budget if deq else "-", "solver": sname if deq else "-",
             "test_snr_db": snr}
            for shift, _x, _y in sets for budget in budgets for sname in solvers
            for snr in spec.test_snrs(train_snr_db)]


def evaluate_model(
    spec: StudySpec, name: str, model: Any, seed: int, train_snr_db: float, task: Any,
    sets: list, params: int, train_seconds: float,
) -> list[dict[str, Any]]:
    """Rows of one trained model over test sets × budgets × test solvers × test SNRs."""
    from noisydeq.models.budget import IterationBudget

    deq, budgets, solvers = _grid(spec, model, sets)
    classification = task.kind == "classification"
    trained_test = getattr(model, "test_solver", None) or getattr(model, "solver", None)
    rows = []
    for shift, x, y in sets:
        for budget in budgets:
            for sname, solver in solvers.items():
                test_solver = solver if solver is not None else trained_test
                if deq:
                    model.test_solver = test_solver
                    scaled = budget == "scaled" and spec.budget is not None
                    if hasattr(model, "budget"):
                        model.budget = IterationBudget(
                            train_size=task.train_shift, exponent=spec.budget.exponent,
                            cap=spec.budget.cap) if scaled else None
                    cap = model.budget.max_iter(test_solver.max_iter, shift) if (
                        scaled and model.budget is not None) else test_solver.max_iter
                else:
                    cap = int(getattr(model, "depth", 1))
                for snr in spec.test_snrs(train_snr_db):
                    # common random numbers: every budget and test solver of a model sees
                    # the same draws per (test set, test SNR, sample, cell call)
                    s = score(model, x, y, classification=classification,
                              noise=spec.noise(snr), batch=spec.eval_batch,
                              seed=derive_seed(seed, name, "test", fmt_db(train_snr_db),
                                               shift, fmt_db(snr)))
                    rows.append({
                        "task": task.name, "model": name, "kind": model.kind,
                        "cell": getattr(getattr(model, "spec", None), "cell", "?"),
                        "width": int(model.width), "depth": int(model.depth),
                        "params": params, "seed": seed, "train_snr_db": train_snr_db,
                        "shift_name": getattr(task, "shift_name", "none"),
                        "shift": math.nan if shift is None else float(shift),
                        "budget": budget if deq else "-", "max_iter": int(cap),
                        "solver": sname if deq else "-",
                        "solver_name": test_solver.name if deq else "-",
                        "noise_site": spec.noise_site, "test_snr_db": snr,
                        "metric": task.metric_name, **s, "train_seconds": train_seconds,
                    })
    if deq:
        model.test_solver = trained_test
    return rows


#: trains and evaluates the jobs elsewhere (a Ray cluster), the driver writing each model
#: and cell: (spec, task, sets, run dir, jobs, say) -> {model id: (rows, trained?)}
RemoteModels = Callable[[StudySpec, Any, list, StudyDir, list["ModelJob"],
                         Callable[[str], None]], dict[str, tuple[list[dict[str, Any]], bool]]]


@dataclass
class ModelJob:
    """One (model name, seed, training SNR) of a study: its id and what is missing."""

    name: str
    seed: int
    train_snr_db: float
    train: bool  # no finished checkpoint (of this config) in the run directory
    #: the config hash its checkpoint is keyed with (:func:`_keyed_model`, the resume's)
    config_hash: str = ""
    #: a model trained in this run: the weights digest its cell is served for
    #: (:meth:`~noisydeq.studies.rundir.StudyDir.served_weights`; None: none is) — the
    #: model is evaluated only when its trained weights are other
    serve: str | None = None


def _notes(run: StudyDir, total: int, say: Callable[[str], None],
           said: set[str]) -> None:
    """Say, one line per reason (:func:`~noisydeq.results.other_weights_note`,
    :func:`~noisydeq.results.other_code_note`), how many of the ``total`` model evaluations
    ``run`` found of other weights or code and not yet ``said`` (updated): the local and the
    Ray run's words."""
    weights = {k: v for k, v in run.other_weights.items() if k not in said}
    code = {k: v for k, v in run.other_code.items() if k not in said}
    for note in (other_weights_note(weights, total, run.path, what="model evaluations"),
                 other_code_note(code, total, run.path, what="model evaluations",
                                 recorded="their code and weights")):
        if note:
            say(note)
    said.update(weights, code)


def _keyed_model(spec: StudySpec, name: str, task: Any, seed: int, train_snr_db: float,
                 dev: torch.device) -> tuple[Any, Any, str]:
    """(initial model, train spec, the config hash :func:`noisydeq.train.train_model` checks
    its checkpoint against) of one study model — through the function training keys its
    checkpoint with (:func:`noisydeq.train_config.training_config`: its overrides applied),
    under the torch thread count it trains with (the hash holds it). The local resume and
    the Ray driver (:attr:`ModelJob.config_hash`) both use it."""
    from noisydeq.store import config_hash
    from noisydeq.train_config import training_config

    model = _build(spec, name, task, seed)
    tspec = spec.train_spec(name, seed, train_snr_db)
    return model, tspec, config_hash(training_config(model, task, tspec, dev))


def run_study(
    spec: StudySpec, out: str | Path, *, name: str = "study", progress: bool = False,
    log: Callable[[str], None] | None = None, plots: bool = True, title: str = "",
    backend: Any = None, remote: RemoteModels | None = None,
) -> StudyResult:
    """Train and evaluate every model of ``spec`` into ``out`` (resumable); see the module.

    ``backend``: a :class:`noisydeq.cluster.Backend` (default: this process); with Ray its
    cluster is joined before anything is written and ``remote``
    (:func:`noisydeq.studies.ray_models.run_on_ray`) trains and evaluates each model whose
    checkpoint or cell is missing as one Ray task, this process writing both.

    A resume knows which evaluations are served before any model is trained or loaded: a
    finished model's weights digest is read from its checkpoint in ``models/<id>/``
    (:func:`noisydeq.train.finished_weights`: SHA-256 digest and config hash checked), and
    its cell is served when it records these weights and this code. Only the models whose
    evaluation is computed are loaded (or trained: one without a finished checkpoint, whose
    cell is judged once its weights are known — a model's checkpoint is part of the run
    directory, never skipped). Evaluations not served for other code or other weights are
    counted in one line per reason, local and Ray alike (:func:`_notes`)."""
    from contextlib import nullcontext

    from noisydeq.cluster import Backend, session
    from noisydeq.runtime import num_threads, resolve_torch_device
    from noisydeq.specs.task_names import check_run_data_dir
    from noisydeq.store import init_hash
    from noisydeq.train import MODEL_FILE, TrainResult, finished_weights, train_model

    # the spec's data directory: the commands' one rule (exists; a task that reads files)
    check_run_data_dir(spec.data_dir, [spec.task], "the study's")
    t0 = time.perf_counter()
    say = log or (lambda _s: None)
    dev = resolve_torch_device(spec.torch_device)
    task = load_study_task(spec)  # validates sizes before anything is written
    for m in spec.models.values():
        model_spec(m, task)  # a model that does not fit the task: one line, before writing
    sets = _test_sets(spec, task)
    backend = backend or Backend()
    if backend.ray and remote is None:
        raise NoisyDEQError("run_study: --backend ray needs the Ray model runner "
                            "(noisydeq.studies.ray_models.run_on_ray)")
    rows: list[dict[str, Any]] = []
    trained = loaded = served = 0
    keys = [(mname, seed, tsnr) for mname in spec.models for seed in spec.seeds
            for tsnr in spec.train_snr_db]
    with session(backend), StudyDir(out) as run:
        run.open(spec, name)
        cells: dict[str, list[dict[str, Any]]] = {}
        todo: dict[str, Any] = {}  # model id → its initial model or, loaded, its result
        hashes: dict[str, str] = {}  # model id → its checkpoint's config hash
        judged: set[str] = set()  # cells whose weights were known when read
        # Ray tasks train with one thread (noisydeq.studies.ray_models): their config hash
        with num_threads(1) if backend.ray else nullcontext():
            for mname, seed, tsnr in keys:  # what the run serves, before any model is loaded
                mid = model_id(mname, seed, tsnr)
                model, tspec, chash = _keyed_model(spec, mname, task, seed, tsnr, dev)
                weights = finished_weights(run.models / mid, chash)
                todo[mid], hashes[mid] = model, chash
                if weights is None and (run.models / mid / MODEL_FILE).is_file():
                    # damaged (trained again) or of another config (refused in one line)
                    res = train_model(model, task, tspec, out_dir=run.models / mid,
                                      torch_device=dev, quiet=not progress, desc=mid)
                    trained += not res.loaded
                    loaded += res.loaded
                    todo[mid] = res
                    weights = init_hash(res.model)
                if weights is None:  # no finished model: its cell is judged once trained
                    continue
                run.weights[mid] = weights
                judged.add(mid)
                done = run.load_cell(mid, expected_rows(spec, mname, model, seed, tsnr, sets))
                if done is None:
                    continue
                cells[mid] = done
                res = todo.pop(mid)
                if isinstance(res, TrainResult):  # loaded (or trained) above: said, not served
                    say(f"{mid}: {task.metric_name} {res.test_metric:.4g} "
                        f"({'loaded' if res.loaded else res.trained_in()})")
                else:
                    served += 1
        said: set[str] = set()
        _notes(run, len(keys), say, said)
        if backend.ray:
            assert remote is not None
            # a model without a finished checkpoint is trained on Ray and evaluated there
            # unless its weights are the ones its cell is served for (as a local run
            # decides); a finished one is loaded by the driver and sent
            jobs = []
            for mname, seed, tsnr in keys:
                mid = model_id(mname, seed, tsnr)
                if mid not in todo:
                    continue
                fresh = mid not in run.weights
                serve = run.served_weights(mid, expected_rows(
                    spec, mname, todo[mid], seed, tsnr, sets)) if fresh else None
                jobs.append(ModelJob(mname, seed, tsnr, fresh, hashes[mid], serve))
            for mid, (got, fresh) in remote(spec, task, sets, run, jobs, say).items():
                cells[mid] = got
                trained += fresh
                loaded += not fresh
        for mname, seed, tsnr in keys:
            mid = model_id(mname, seed, tsnr)
            if mid in cells:
                rows.extend(cells[mid])
                continue
            res = todo.pop(mid)
            if not isinstance(res, TrainResult):  # the initial model: load or train it
                res = train_model(res, task, spec.train_spec(mname, seed, tsnr),
                                  out_dir=run.models / mid, torch_device=dev,
                                  quiet=not progress, desc=mid)
                trained += not res.loaded
                loaded += res.loaded
            say(f"{mid}: {task.metric_name} {res.test_metric:.4g} "
                f"({'loaded' if res.loaded else res.trained_in()})")
            expect = expected_rows(spec, mname, res.model, seed, tsnr, sets)
            cell = None
            if mid not in judged:  # trained here: served only on the weights it records
                run.weights[mid] = init_hash(res.model)
                cell = run.load_cell(mid, expect)
            if cell is None:
                params = sum(p.numel() for p in res.model.parameters())
                cell = evaluate_model(spec, mname, res.model, seed, tsnr, task, sets,
                                      params, res.seconds)
                run.save_cell(mid, cell)
                say(f"{mid}: evaluated {len(cell)} rows in "
                    f"{sum(r['eval_seconds'] for r in cell):.1f} s")
            rows.extend(cell)
        _notes(run, len(keys), say, said)  # cells of models trained here, judged since
        from noisydeq.studies.summary import summarise

        summary = summarise(rows)
        run.write_tables(rows, summary)
        result = StudyResult(rows, summary, run.path, trained=trained, loaded=loaded,
                             served=served)
        if plots:
            from noisydeq.figure_cache import cached_figures
            from noisydeq.runtime import cache_root

            def draw() -> list[Path]:
                from noisydeq.studies.plots import plot_study  # matplotlib: only when drawing

                return plot_study(summary, spec, run.figures, title=title or name)

            # the same summary, spec and title (and code): the figures of the cache
            inputs = {"figures": "study", "summary": summary, "spec": spec,
                      "title": title or name}
            result.figures = cached_figures(inputs, run.figures, draw, cache_root())
        run.seal(result.figures)
    result.seconds = time.perf_counter() - t0
    return result
