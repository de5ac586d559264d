"""An empty cell of a declared CSV column reads as a missing value, for every table a
command writes: ``results.read_csv`` raised ``ValueError: could not convert string to
float: ''`` (an older sweep table left a digitally trained model's ``train_device_snr_db``
empty; a study's writer leaves empty a column a row lacks), and a study's own reader
called such a table "not a study row". ``load_results`` already read them as missing;
now both use one reading (``results.CSV_READERS``)."""

from __future__ import annotations

import math

import pytest

import noisydeq
from noisydeq import store
from noisydeq.errors import CorruptArtefact
from noisydeq.figures import csv_text
from noisydeq.results import (
    CSV_READERS,
    LAYER_COLUMNS,
    SWEEP_TABLE_COLUMNS,
    read_csv,
    table_to_csv,
)


def declarations() -> dict[str, tuple[dict[str, str], object, bool]]:
    """Every table a command writes as CSV: its declared columns, its writer and whether
    it is a run's ``results.csv`` (what ``load_results`` reads)."""
    from noisydeq.analysis.certified import COLUMNS as CERTIFY
    from noisydeq.attacks.runner import ATTACK_COLUMNS, POSITION_COLUMNS, WHITEBOX_COLUMNS
    from noisydeq.studies.merge import COLUMNS as STUDY

    return {
        "sweep": (SWEEP_TABLE_COLUMNS, table_to_csv, True),
        "layers": (LAYER_COLUMNS, table_to_csv, False),
        "attack": ({**ATTACK_COLUMNS, **POSITION_COLUMNS}, table_to_csv, True),
        "whitebox": (WHITEBOX_COLUMNS, table_to_csv, False),
        "certify": (CERTIFY, table_to_csv, True),
        "study": (STUDY, lambda rows, columns: csv_text(rows), True),
    }


SAMPLES = {"str": ["a b", ""], "int": [3, -1], "float": [0.1, math.inf, math.nan, -2.5e-300],
           "bool": [True, False]}
MISSING = {"str": "", "int": None, "float": math.nan, "bool": None}


def _rows(columns: dict[str, str]) -> list[dict]:
    """Four rows of every declared kind's sample values (inf, nan, empty text included)."""
    return [{c: SAMPLES[k][i % len(SAMPLES[k])] for c, k in columns.items()}
            for i in range(4)]


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


def _sealed(tmp_path, name: str, text: str):
    run = tmp_path / name
    run.mkdir()
    path = run / ("results.csv" if name.endswith("-results") else f"{name}.csv")
    path.write_text(text, encoding="utf-8")
    store.write_manifest(run, [path])
    return path


@pytest.mark.parametrize("table", list(declarations()))
def test_every_declared_table_round_trips_with_empty_cells(table, tmp_path):
    columns, writer, is_results = declarations()[table]
    rows = _rows(columns)
    text = writer(rows, columns)
    # one more row as a table of an earlier version holds it: every cell left empty
    header, *body = text.splitlines()
    text = "\n".join([header, *body, ",".join("" for _ in columns)]) + "\n"
    path = _sealed(tmp_path, f"{table}-results" if is_results else table, text)
    back = read_csv(path, columns)
    assert len(back) == 5
    for want, got in zip(rows, back[:4], strict=True):
        assert all(_same(want[c], got[c]) for c in columns), (want, got)
    assert all(_same(back[4][c], MISSING[k]) for c, k in columns.items()), back[4]
    if not is_results:
        return
    pd = pytest.importorskip("pandas")
    df = noisydeq.load_results(path.parent)
    for c, k in columns.items():
        col = df[c]
        assert str(col.dtype) == {"int": "Int64", "bool": "boolean", "float": "float64"}.get(
            k, str(col.dtype)), (c, col.dtype)
        if k != "str":
            assert col.isna().tolist()[4] and not col.isna().tolist()[0], c
    # floats as pandas reads them itself (an independent reader of the same text)
    floats = [c for c, k in columns.items() if k == "float"]
    pd.testing.assert_frame_equal(df[floats], pd.read_csv(path)[floats])


def test_a_study_row_without_a_column_reads_back_missing(tmp_path):
    """The study's writer itself leaves a cell empty (a row without the column: a cell of
    earlier code kept); its reader and ``read_csv`` read it as missing."""
    from noisydeq.studies.merge import COLUMNS, read_rows

    full = _rows(COLUMNS)[0]
    short = {c: v for c, v in full.items() if c not in ("position_acc", "iterations_run")}
    path = _sealed(tmp_path, "study-results", csv_text([full, short]))
    for back in (read_rows(path), read_csv(path, COLUMNS)):
        assert math.isnan(back[1]["position_acc"]) and back[1]["iterations_run"] is None
        assert back[1]["value"] == full["value"] and back[0]["iterations_run"] == 3


def test_the_readers_cover_every_declared_kind():
    kinds = {k for columns, _, _ in declarations().values() for k in columns.values()}
    assert kinds == set(CSV_READERS)


def test_a_bad_cell_or_an_undeclared_column_is_one_error(tmp_path):
    columns = SWEEP_TABLE_COLUMNS
    lines = table_to_csv(_rows(columns), columns).splitlines()
    cells = lines[2].split(",")
    cells[list(columns).index("chip")] = "two"
    bad = _sealed(tmp_path, "bad-results", "\n".join([lines[0], lines[1], ",".join(cells)]))
    with pytest.raises(CorruptArtefact, match="line 3: column chip holds 'two', not an int"):
        read_csv(bad)
    other = _sealed(tmp_path, "other-results", "family,value\nx,1.0\n")
    with pytest.raises(CorruptArtefact, match="has column family, which its table does not"):
        read_csv(other)
