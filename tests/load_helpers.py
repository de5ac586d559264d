"""``noisydeq.load_results`` checks shared by the tests of every command that writes a
``results.csv``: each column of a run's table has the type its writer declares."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

import noisydeq
from noisydeq.loading import declared_columns, find_runs


def dtypes(pd) -> dict[str, str]:
    """The pandas dtype of each declared type (text: what this pandas' read_csv gives)."""
    return {"int": "int64", "float": "float64", "bool": "bool",
            "str": str(pd.Series(["text"]).dtype)}


def assert_loads_declared(path: str | Path):
    """Load every run below ``path``: each column of each table is declared by its writer
    and has the declared dtype; a run's ``results.parquet``, read by pandas, is the same
    frame. Returns the frame of all the runs."""
    pd = pytest.importorskip("pandas")
    want, types = dtypes(pd), declared_columns()
    runs = find_runs(path)
    assert runs
    for run in runs:
        with open(run / "results.csv", newline="") as fh:
            header = next(csv.reader(fh))
        assert [c for c in header if c not in types] == [], run
        df = noisydeq.load_results(run)
        got = {c: str(df[c].dtype) for c in header}
        assert got == {c: want[types[c]] for c in header}, run
        if (run / "results.parquet").is_file():
            pd.testing.assert_frame_equal(df[header], pd.read_parquet(run / "results.parquet"))
    return noisydeq.load_results(path)
