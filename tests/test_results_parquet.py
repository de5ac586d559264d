"""The Parquet table is built from Arrow buffers (no pandas import): the same bytes as
pyarrow's own conversion of the same columns."""

from __future__ import annotations

import math
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from noisydeq.results import COLUMNS, table_to_parquet

TYPES = {"str": pa.string(), "int": pa.int64(), "float": pa.float64()}


def reference(rows, columns):
    """The previous writer: ``pa.table`` on Python lists."""
    schema = pa.schema([(c, TYPES[t]) for c, t in columns.items()])
    table = pa.table({c: [r[c] for r in rows] for c in columns}, schema=schema)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def sample_rows(n):
    values = {"str": lambda i: ["deq-d1-w128", "ffw-é", "", "x" * 40][i % 4],
              "int": lambda i: (i * 7919) % 1000 - 3,
              "float": lambda i: [0.5, math.inf, -math.inf, math.nan, 1e-300, -0.0][i % 6] + i}
    return [{c: values[t](i) for c, t in COLUMNS.items()} for i in range(n)]


@pytest.mark.parametrize("n", [0, 1, 5, 1000])
def test_same_bytes_as_pyarrow_conversion(n):
    rows = sample_rows(n)
    assert table_to_parquet(rows) == reference(rows, COLUMNS)


def test_nulls_kept():
    columns = {"name": "str", "count": "int", "value": "float"}
    rows = [{"name": None, "count": None, "value": None}, {"name": "a", "count": 2, "value": 1.5}]
    blob = table_to_parquet(rows, columns)
    assert blob == reference(rows, columns)
    back = pq.read_table(pa.BufferReader(blob)).to_pylist()
    assert back == rows


def test_round_trip_values():
    rows = sample_rows(12)
    back = pq.read_table(pa.BufferReader(table_to_parquet(rows))).to_pylist()
    for got, want in zip(back, rows, strict=True):
        for c in COLUMNS:
            a, b = got[c], want[c]
            assert (isinstance(a, float) and math.isnan(a) and math.isnan(b)) or a == b


def test_no_pandas_import():
    code = ("import sys; from noisydeq.results import table_to_parquet, COLUMNS; "
            "rows = [{c: {'str': 'a', 'int': 1, 'float': 0.5}[t] for c, t in COLUMNS.items()}]; "
            "table_to_parquet(rows); print('pandas' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "False"
