"""Results as a tidy ``pandas.DataFrame``: one run directory, many, or a folder of them.

>>> import noisydeq
>>> df = noisydeq.load_results("runs/")            # every run below runs/
>>> df.groupby(["kind", "depth", "snr_db"])["value"].agg(["mean", "std"])

Each row of a run's ``results.csv`` (checked against the run's ``SHA256SUMS``) becomes a
row of the frame, with three more kinds of column so that rows of different runs stay
apart and explain themselves:

- ``run``: the run directory's name, ``run_path``: its path;
- every scalar field of the run's ``config.toml`` (digest checked) that the table does not
  already hold, under its own name (e.g. ``ffw_form``, ``snr_scale``, ``train_preset``,
  ``epochs``); a field whose value is a list or table is left out (it is what the rows
  enumerate, e.g. ``depths``);
- the table's own columns keep their types (integers, floats with ``inf``/``nan``; a
  sweep's ``native`` column, when its grid held the native level, is boolean).

pandas is an optional dependency (``pip install pandas``); without it the call is one line
saying so.
"""

from __future__ import annotations

import csv
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from noisydeq import store
from noisydeq.errors import NoisyDEQError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

RESULTS = "results.csv"
CONFIG = "config.toml"


def _pandas() -> Any:
    try:
        import pandas
    except ModuleNotFoundError:
        raise NoisyDEQError("load_results needs pandas: pip install pandas") from None
    return pandas


def find_runs(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """Run directories named by ``paths``: a run directory, its ``results.csv``, or a folder
    searched recursively for them (sorted, each once)."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    runs: list[Path] = []
    for p in map(Path, paths):
        if p.is_file() and p.name == RESULTS:
            found = [p.parent]
        elif (p / RESULTS).is_file():
            found = [p]
        elif p.is_dir():
            found = sorted(r.parent for r in p.rglob(RESULTS))
        else:
            raise NoisyDEQError(f"load_results: {p} is not a run directory, a {RESULTS} or a "
                                "folder holding run directories")
        if not found:
            raise NoisyDEQError(f"load_results: no {RESULTS} under {p} (has its run finished?)")
        runs += [r for r in found if r not in runs]
    return runs


def _rows(run: Path) -> tuple[list[str], list[dict[str, Any]], bool]:
    """Header and rows of a run's table, and whether they are typed (the sweep schema is;
    the tables of other commands are typed by value afterwards)."""
    from noisydeq.results import COLUMNS, NATIVE_COLUMNS, TRAIN_DEVICE_COLUMNS, read_csv

    path = run / RESULTS
    store.verify_listed(path)
    text = store.read_text(path, RESULTS)
    header = next(csv.reader([text.splitlines()[0]])) if text else []
    if header in (list(COLUMNS), [*COLUMNS, *NATIVE_COLUMNS],
                  [*COLUMNS, *TRAIN_DEVICE_COLUMNS, *NATIVE_COLUMNS]):
        return header, read_csv(path), True
    return header, [dict(r) for r in csv.DictReader(text.splitlines())], False


def read_run_config(run: Path) -> dict[str, Any]:
    """A run directory's ``config.toml`` as a plain table, digest checked (one
    :class:`NoisyDEQError` naming the file when it is damaged or not TOML)."""
    path = run / CONFIG
    body = store.verify_text(store.read_text(path, CONFIG), path)
    try:
        return tomllib.loads(body)
    except tomllib.TOMLDecodeError as err:
        raise NoisyDEQError(f"{path}: not TOML ({err})") from None


def _spec_fields(run: Path, table_columns: Iterable[str]) -> dict[str, Any]:
    if not (run / CONFIG).is_file():
        return {}
    spec = read_run_config(run)
    taken = set(table_columns)
    return {k: v for k, v in spec.items()
            if k not in taken and isinstance(v, (str, int, float, bool))}


def load_results(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> Any:
    """One tidy ``pandas.DataFrame`` of the results of every run named by ``paths``."""
    pd = _pandas()
    frames = []
    for run in find_runs(paths):
        header, rows, typed = _rows(run)
        frame = pd.DataFrame(rows, columns=header)
        if not typed:  # the tables of other commands: numbers as numbers
            for col in frame.columns:
                converted = pd.to_numeric(frame[col], errors="coerce")
                if converted.notna().sum() == frame[col].notna().sum():
                    frame[col] = converted
        for name, value in _spec_fields(run, header).items():
            frame[name] = value
        frame.insert(0, "run_path", str(run))
        frame.insert(0, "run", run.name)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True, sort=False)
