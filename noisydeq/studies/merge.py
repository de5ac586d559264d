"""Finished studies read back, alone or several as one, for redrawing their figures.

A seed (or a model) run as its own ``noisydeq study`` lands in its own run directory; a
figure over all of them needs their per-seed rows in one table. :func:`load_studies` reads
each run's ``results.csv`` (checked against its ``SHA256SUMS``) and ``study.toml`` (its
signature), refuses runs of different tasks and rows that two runs both hold (the same
model, seed, training SNR, size, budget, test solver and test SNR: a mean over them would
count one model twice), and returns the rows in run order. :func:`merged_spec` gives the
spec whose grid the figures read (the sizes of all runs). The seed aggregate is then
:func:`noisydeq.studies.summary.summarise` of the merged rows, as for one run.

Note that a study generates its task from its first seed, so seed 1 run alone trains and
tests on other data than seed 1 run beside seed 0: merged runs vary data and weights.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from noisydeq import store
from noisydeq.errors import CorruptArtefact, NoisyDEQError
from noisydeq.results import CSV_READERS
from noisydeq.specs.study import StudySpec
from noisydeq.studies.rundir import ROW_IDENTITY, StudyDir

#: text columns of a study's results.csv; every other column not in :data:`INT_COLUMNS`
#: is a float (``inf`` / ``nan`` spelled out): those a study writes are :data:`FLOAT_COLUMNS`
TEXT_COLUMNS = ("task", "model", "kind", "cell", "shift_name", "budget", "solver",
                "solver_name", "noise_site", "metric")
INT_COLUMNS = ("width", "depth", "params", "seed", "max_iter", "n", "iterations_run")
FLOAT_COLUMNS = ("train_snr_db", "shift", "test_snr_db", "value", "position_acc",
                 "mean_steps", "converged_frac", "diverged_frac", "eval_seconds",
                 "train_seconds")
#: the columns of a study's results.csv and their types (:func:`noisydeq.load_results`)
COLUMNS: dict[str, str] = {**dict.fromkeys(TEXT_COLUMNS, "str"),
                           **dict.fromkeys(INT_COLUMNS, "int"),
                           **dict.fromkeys(FLOAT_COLUMNS, "float")}


@dataclass
class FinishedStudy:
    """One finished study's run directory: its recorded spec, name and typed rows."""

    path: Path
    spec: StudySpec
    name: str
    rows: list[dict[str, Any]]


def is_study(path: str | Path) -> bool:
    """Whether ``path`` is a study's run directory (it holds a ``study.toml``)."""
    return (Path(path) / "study.toml").is_file()


def _typed(value: str, column: str) -> Any:
    """A cell of column ``column`` as :func:`noisydeq.results.read_csv` reads it (an empty
    one, a column a row lacked when written, a missing value); a column not in
    :data:`COLUMNS` is a float."""
    return CSV_READERS[COLUMNS.get(column, "float")](value)


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The typed rows of a study's ``results.csv`` (digest checked)."""
    store.verify_listed(path)
    text = store.read_text(path, "results.csv")
    rows = []
    for i, raw in enumerate(csv.DictReader(io.StringIO(text)), start=2):
        try:
            rows.append({c: _typed(v, c) for c, v in raw.items()})
        except (TypeError, ValueError):
            raise CorruptArtefact(path, f"line {i} is not a study row") from None
    missing = [c for c in ROW_IDENTITY if rows and c not in rows[0]]
    if missing:
        raise CorruptArtefact(path, f"has no column {', '.join(missing)}")
    return rows


def load_study(path: str | Path, what: str = "plot") -> FinishedStudy:
    """A finished study's run directory; one line (led by ``what``) when it is not one."""
    p = Path(path)
    if not is_study(p) or not (p / "results.csv").is_file():
        raise NoisyDEQError(f"{what}: {p} is not a finished study run directory (needs "
                            "study.toml and results.csv)")
    run = StudyDir(p)
    spec = run.read_spec()
    name = run.read_meta().get("study", "") if run.meta_path.is_file() else ""
    return FinishedStudy(p, spec, str(name or p.name), read_rows(p / "results.csv"))


def _where(key: tuple) -> str:
    return ", ".join(f"{c} {v!r}" for c, v in zip(ROW_IDENTITY, key, strict=True))


def load_studies(paths: Sequence[str | Path], what: str = "plot") -> list[FinishedStudy]:
    """The finished studies at ``paths``, checked to be mergeable (see the module
    docstring): one task, no row held twice."""
    if not paths:
        raise NoisyDEQError(f"{what}: no run directory given")
    resolved = [Path(p).resolve() for p in paths]
    for i, p in enumerate(resolved):
        if p in resolved[:i]:
            raise NoisyDEQError(f"{what}: {paths[i]} is given twice")
    studies = [load_study(p, what) for p in paths]
    first = studies[0]
    seen: dict[tuple, Path] = {}
    for s in studies:
        if s.spec.task != first.spec.task:
            raise NoisyDEQError(f"{what}: {first.path} is a {first.spec.task} study and "
                                f"{s.path} a {s.spec.task} one; only studies of one task "
                                "are drawn together")
        for r in s.rows:
            key = tuple("nan" if c == "shift" and r[c] != r[c] else r[c]
                        for c in ROW_IDENTITY)
            if key in seen:
                raise NoisyDEQError(f"{what}: {seen[key]} and {s.path} both hold the row of "
                                    f"{_where(key)} (a mean would count that model twice)")
            seen[key] = s.path
    return studies


def merged_spec(studies: Sequence[FinishedStudy]) -> StudySpec:
    """The first study's spec with the sizes of all of them (what the figures read)."""
    first = studies[0].spec
    shifts = sorted({float(v) for s in studies for v in s.spec.shifts})
    return first.model_copy(update={"shifts": shifts})


def merged_rows(studies: Sequence[FinishedStudy]) -> list[dict[str, Any]]:
    return [r for s in studies for r in s.rows]
