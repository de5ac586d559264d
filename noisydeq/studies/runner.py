"""Run a study: train each named model once per (seed, training SNR), evaluate the grid.

Run directory (``out``)::

    study.toml        the resolved StudySpec (a run dir of another config is refused)
    meta.json         package versions, start time, resumes
    models/<id>/      model.safetensors + model.json (and resume.safetensors while training),
                      one per model id ``<name>-s<seed>-t<train SNR>``; the analysis
                      commands take the run dir as ``--family``
    cells/<id>.json   the evaluated rows of one model, written atomically when complete
    results.csv       one row per model × test size × budget × test solver × test SNR
    summary.csv       mean, std, min and max over seeds of every row group
    figures/          extrapolation curves, iteration budgets, metric vs SNR / parameters

Training resumes per epoch (:func:`noisydeq.train.train_model`) and finished models are
loaded, not retrained; evaluated models are not re-evaluated. Weights are initialised from
``derive_seed(seed, "study", name)``; the task (and every shifted test set) is generated
from the first seed, so all models see the same data.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from noisydeq.config import atomic_write_text, dumps_toml, loads_toml
from noisydeq.errors import NoisyDEQError
from noisydeq.noise import derive_seed
from noisydeq.studies.evaluate import score
from noisydeq.studies.spec import StudySpec


def fmt_db(v: float) -> str:
    return "inf" if math.isinf(v) else f"{v:g}"


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
    seconds: float = 0.0


class StudyDir:
    """The run directory of a study (see the module docstring)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.spec_path = self.path / "study.toml"
        self.cells = self.path / "cells"
        self.models = self.path / "models"
        self.figures = self.path / "figures"

    def open(self, spec: StudySpec, name: str) -> None:
        """Create the directory for ``spec`` or check that it holds the same study."""
        from noisydeq.results import check_writable, package_versions

        if self.spec_path.is_file():
            try:
                old = loads_toml(StudySpec, self.spec_path.read_text(encoding="utf-8"))
            except NoisyDEQError:
                raise NoisyDEQError(f"--out {self.path}: holds an unreadable study.toml; "
                                    "choose another --out") from None
            a, b = old.model_dump(mode="json"), spec.model_dump(mode="json")
            diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            if diff:
                raise NoisyDEQError(f"--out {self.path}: holds a study with a different config "
                                    f"(differs in: {', '.join(diff)}); choose another --out")
        elif self.path.exists() and any(self.path.iterdir()):
            raise NoisyDEQError(f"--out {self.path}: exists and holds no study.toml; "
                                "choose another --out")
        check_writable(self.path)
        self.cells.mkdir(exist_ok=True)
        if not self.spec_path.is_file():
            atomic_write_text(self.spec_path, dumps_toml(spec))
        meta_path = self.path / "meta.json"
        meta = {"study": name, "versions": package_versions(),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "resumed": 0}
        if meta_path.is_file():
            old_meta = json.loads(meta_path.read_text(encoding="utf-8"))
            meta["started"] = old_meta.get("started", meta["started"])
            meta["resumed"] = int(old_meta.get("resumed", 0)) + 1
        atomic_write_text(meta_path, json.dumps(meta, indent=2) + "\n")

    def load_cell(self, key: str) -> list[dict[str, Any]] | None:
        p = self.cells / f"{key}.json"
        if not p.is_file():
            return None
        data = json.loads(p.read_text(encoding="utf-8"))
        return data["rows"] if data.get("key") == key else None

    def save_cell(self, key: str, rows: list[dict[str, Any]]) -> None:
        atomic_write_text(self.cells / f"{key}.json",
                          json.dumps({"key": key, "rows": rows}, allow_nan=True))


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

    mspec = spec.models[name].spec(task)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "study", name) % (2**63))
        return build_model(mspec)


def evaluate_model(
    spec: StudySpec, name: str, model: Any, seed: int, train_snr_db: float, task: Any,
    sets: list, params: int, train_seconds: float,
) -> list[dict[str, Any]]:
    """Rows of one trained model over test sets × budgets × test solvers × test SNRs."""
    from noisydeq.models.budget import IterationBudget

    deq = getattr(model, "kind", None) == "deq"
    classification = task.kind == "classification"
    trained_test = getattr(model, "test_solver", None) or getattr(model, "solver", None)
    solvers = (spec.test_solvers or {"trained": None}) if deq else {"-": None}
    budgets = spec.budgets if deq and hasattr(model, "budget") else ["train"]
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
                    s = score(model, x, y, classification=classification,
                              noise=spec.noise(snr), batch=spec.eval_batch,
                              seed=derive_seed(seed, name, "test", fmt_db(train_snr_db),
                                               shift, budget, sname, fmt_db(snr)))
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


def run_study(
    spec: StudySpec, out: str | Path, *, name: str = "study", progress: bool = False,
    log: Callable[[str], None] | None = None, plots: bool = True, title: str = "",
) -> StudyResult:
    """Train and evaluate every model of ``spec`` into ``out`` (resumable); see the module."""
    from noisydeq.runtime import resolve_torch_device
    from noisydeq.train import train_model

    t0 = time.perf_counter()
    say = log or (lambda _s: None)
    dev = resolve_torch_device(spec.torch_device)
    task = load_study_task(spec)  # validates sizes before anything is written
    for m in spec.models.values():
        m.spec(task)  # a model that does not fit the task: one line, before writing
    run = StudyDir(out)
    run.open(spec, name)
    sets = _test_sets(spec, task)
    rows: list[dict[str, Any]] = []
    trained = loaded = 0
    for mname in spec.models:
        for seed in spec.seeds:
            for tsnr in spec.train_snr_db:
                mid = model_id(mname, seed, tsnr)
                model = _build(spec, mname, task, seed)
                res = train_model(model, task, spec.train_spec(mname, seed, tsnr),
                                  out_dir=run.models / mid, torch_device=dev,
                                  quiet=not progress, desc=mid)
                trained += not res.loaded
                loaded += res.loaded
                say(f"{mid}: {task.metric_name} {res.test_metric:.4g} "
                    f"({'loaded' if res.loaded else f'trained in {res.seconds:.1f} s'})")
                cell = run.load_cell(mid)
                if cell is None:
                    params = sum(p.numel() for p in res.model.parameters())
                    cell = evaluate_model(spec, mname, res.model, seed, tsnr, task, sets,
                                          params, res.seconds)
                    run.save_cell(mid, cell)
                    say(f"{mid}: evaluated {len(cell)} rows in "
                        f"{sum(r['eval_seconds'] for r in cell):.1f} s")
                rows.extend(cell)
    from noisydeq.analysis.outputs import write_csv
    from noisydeq.studies.summary import summarise

    summary = summarise(rows)
    write_csv(run.path / "results.csv", rows)
    write_csv(run.path / "summary.csv", summary)
    result = StudyResult(rows, summary, run.path, trained=trained, loaded=loaded)
    if plots:
        from noisydeq.studies.plots import plot_study

        result.figures = plot_study(summary, spec, run.figures, title=title or name)
    result.seconds = time.perf_counter() - t0
    return result
