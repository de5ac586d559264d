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
- the table's own columns typed as the command that wrote the table declares them
  (:func:`declared_columns`), one type per column name whatever the run or command:
  ``int`` columns are ``int64`` (pandas' nullable ``Int64`` where a cell is empty or a run
  of the frame lacks the column), ``float`` columns ``float64`` (``inf``/``nan`` as
  written, an empty cell ``nan``), ``bool`` columns (a sweep's ``native``) ``bool``
  (nullable ``boolean`` where a value is missing), ``str`` columns pandas' text dtype
  (``str`` from pandas 3, ``object`` before: what its ``read_csv`` gives); a
  column no command declares (a table of another version) is typed by its values:
  numbers when every cell is one, else text. The ``config.toml`` fields keep their TOML
  types the same way (``Int64`` / ``boolean`` where a run lacks the field).

pandas is an optional dependency (``pip install pandas``); without it the call is one line
saying so.
"""

from __future__ import annotations

import csv
import io
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from noisydeq import store
from noisydeq.errors import CorruptArtefact, NoisyDEQError

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


def declared_columns() -> dict[str, str]:
    """Every column a ``results.csv`` writer declares, name → ``str``/``int``/``float``/
    ``bool``, from the writers' own declarations: the sweep's (``noisydeq sweep`` / ``run``
    and the device sweeps of ``lyapunov``: :data:`noisydeq.results.SWEEP_TABLE_COLUMNS`),
    ``noisydeq attack``'s and ``adversarial``'s (:data:`noisydeq.attacks.runner.ATTACK_COLUMNS`
    and ``POSITION_COLUMNS``), ``noisydeq certify``'s (:data:`noisydeq.analysis.certified.
    COLUMNS`) and ``noisydeq study``'s (:data:`noisydeq.studies.merge.COLUMNS`). A name two
    writers declare with two types is refused (one type per column name)."""
    from noisydeq.results import SWEEP_TABLE_COLUMNS

    out = dict(SWEEP_TABLE_COLUMNS)
    return _merge(out, _other_tables())


def _other_tables() -> dict[str, dict[str, str]]:
    """The declarations of the tables other than a sweep's (their modules import torch:
    read only when a table holds a column a sweep does not)."""
    from noisydeq.analysis.certified import COLUMNS as CERTIFY_COLUMNS
    from noisydeq.attacks.runner import ATTACK_COLUMNS, POSITION_COLUMNS
    from noisydeq.studies.merge import COLUMNS as STUDY_COLUMNS

    return {"attack": {**ATTACK_COLUMNS, **POSITION_COLUMNS}, "certify": CERTIFY_COLUMNS,
            "study": STUDY_COLUMNS}


def _merge(out: dict[str, str], tables: dict[str, dict[str, str]]) -> dict[str, str]:
    for table, columns in tables.items():
        for name, kind in columns.items():
            if out.setdefault(name, kind) != kind:
                raise NoisyDEQError(f"load_results: column {name} is declared {out[name]} and "
                                    f"{kind} ({table}'s table)")
    return out


def _types_for(header: list[str]) -> dict[str, str]:
    """The declared type of each column of ``header`` that a writer declares."""
    from noisydeq.results import SWEEP_TABLE_COLUMNS

    known = SWEEP_TABLE_COLUMNS if set(header) <= set(SWEEP_TABLE_COLUMNS) \
        else declared_columns()
    return {c: known[c] for c in header if c in known}


def _typed_column(pd: Any, values: list[str], kind: str, path: Path, name: str) -> Any:
    """One declared column (its cells from line 2 on) as a pandas Series of its type (the
    module docstring); a cell that is not of the type is one error naming line and column."""
    from noisydeq.results import read_cell

    if kind == "str":
        return pd.Series(values, dtype=_text(pd))
    out = [read_cell(v, kind, path, i + 2, name) for i, v in enumerate(values)]
    if kind == "float":
        return pd.Series(out, dtype="float64")
    missing = any(v is None for v in out)
    if kind == "int":
        return pd.Series(out, dtype="Int64" if missing else "int64")
    return pd.Series(out, dtype="boolean" if missing else "bool")


def _text(pd: Any) -> Any:
    """pandas' own dtype for text (``str`` from pandas 3, ``object`` before): the one its
    ``read_csv`` and ``read_parquet`` give."""
    return pd.Series(["text"]).dtype


def _by_value(pd: Any, values: list[str]) -> Any:
    """A column no writer declares: numbers when every cell converts, else text."""
    text = pd.Series(values, dtype=_text(pd))
    converted = pd.to_numeric(text, errors="coerce")
    return converted if converted.notna().sum() == text.notna().sum() else text


def _table(pd: Any, run: Path) -> Any:
    """A run's table (digest checked) as a DataFrame with its columns typed."""
    path = run / RESULTS
    store.verify_listed(path)
    text = store.read_text(path, RESULTS)
    records = list(csv.reader(io.StringIO(text)))
    if not records:
        return pd.DataFrame()
    header, body = records[0], records[1:]
    for i, r in enumerate(body):
        if len(r) != len(header):
            raise CorruptArtefact(path, f"line {i + 2} has {len(r)} cells, the header "
                                  f"{len(header)}")
    types = _types_for(header)
    columns = {}
    for j, name in enumerate(header):
        values = [r[j] for r in body]
        columns[name] = _typed_column(pd, values, types[name], path, name) \
            if name in types else _by_value(pd, values)
    return pd.DataFrame(columns, columns=header)


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


def _spec_column(pd: Any, value: Any, n: int) -> Any:
    """A ``config.toml`` field as a column of ``n`` rows, of its TOML type."""
    if isinstance(value, bool):
        return pd.Series([value] * n, dtype="bool")
    if isinstance(value, int):
        return pd.Series([value] * n, dtype="int64")
    if isinstance(value, float):
        return pd.Series([value] * n, dtype="float64")
    return pd.Series([value] * n, dtype=_text(pd) if isinstance(value, str) else None)


def _settle(pd: Any, frame: Any) -> Any:
    """After concatenation: an ``Int64`` / ``boolean`` column without a missing value
    ``int64`` / ``bool``, a ``Float64`` one (an int field of one run, a float of another)
    ``float64``."""
    for name in frame.columns:
        dtype = str(frame[name].dtype)
        if dtype in ("Int64", "boolean") and not frame[name].isna().any():
            frame[name] = frame[name].astype("int64" if dtype == "Int64" else "bool")
        elif dtype == "Float64":
            frame[name] = frame[name].astype("float64")
    return frame


def load_results(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> Any:
    """One tidy ``pandas.DataFrame`` of the results of every run named by ``paths``.

    Each column has one type whatever run or command it came from (the module docstring):
    the type the command that writes the table declares (:func:`declared_columns`) —
    ``int64`` (``Int64`` where a value is missing), ``float64`` with ``inf``/``nan``,
    ``bool`` (``boolean`` where a value is missing), text — and, for a column no command
    declares, the type its values give."""
    pd = _pandas()
    frames = []
    for run in find_runs(paths):
        frame = _table(pd, run)
        header = list(frame.columns)
        for name, value in _spec_fields(run, header).items():
            frame[name] = _spec_column(pd, value, len(frame))
        frame.insert(0, "run_path", str(run))
        frame.insert(0, "run", run.name)
        frames.append(frame)
    nullable = {"int64": "Int64", "bool": "boolean"}
    for f in frames:  # an int / bool column some run lacks: nullable, not float / object
        for c in f.columns:
            if str(f[c].dtype) in nullable and any(c not in g.columns for g in frames):
                f[c] = f[c].astype(nullable[str(f[c].dtype)])
    return _settle(pd, pd.concat(frames, ignore_index=True, sort=False))
