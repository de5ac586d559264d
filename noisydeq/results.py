"""The run directory of a sweep: resolved config, provenance, resumable cell log, tidy table.

Layout of ``<out>/``::

    config.toml        the resolved SweepSpec (what produced the results)
    meta.json          seed, package versions (python, torch, aihwkit, numpy, noisydeq), start time
    cells/<key>.json   one file per finished (model, chip, SNR-chunk) cell, written atomically
    results.csv        the tidy table (one row per model × chip × SNR), written atomically
    results.parquet    the same table, typed (pyarrow)
    figures/           plots (PNG + SVG)

Resume: a cell file appears only once its cell is complete (temp file + fsync + rename), so a
killed run leaves either the whole cell or nothing. Re-running the same config skips every
cell whose file exists. A run directory created by a *different* config is refused with one
clear error (results of two configs are never mixed).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import platform
import tempfile
import time
from collections.abc import Iterable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from noisydeq.config import SweepSpec, atomic_write_bytes, atomic_write_text, dumps_toml, loads_toml
from noisydeq.errors import NoisyDEQError

# Tidy-table schema: column name -> type ("str", "int", "float"). Order is the CSV order.
COLUMNS: dict[str, str] = {
    "task": "str",
    "model_id": "str",
    "kind": "str",
    "depth": "int",
    "width": "int",
    "params": "int",
    "seed": "int",
    "train_snr_db": "float",
    "device": "str",
    "noise_site": "str",
    "snr_db": "float",
    "measured_snr_db": "float",
    "chip": "int",
    "metric": "str",
    "value": "float",
    "n_samples": "int",
    "mean_steps": "float",
    "converged_frac": "float",
    "diverged_frac": "float",
}

# Fields of SweepSpec that do not change results (excluded from the run-dir identity).
RUNTIME_ONLY = frozenset({"batched"})


def spec_identity(spec: SweepSpec) -> dict[str, Any]:
    """The part of ``spec`` that determines the results (used to match a run directory)."""
    data = json.loads(spec.model_dump_json())
    return {k: v for k, v in data.items() if k not in RUNTIME_ONLY}


def spec_hash(spec: SweepSpec) -> str:
    """Short stable hash of :func:`spec_identity` (names default run directories)."""
    text = json.dumps(spec_identity(spec), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def package_versions() -> dict[str, str]:
    """Versions of the packages that shape the numbers."""
    out = {"python": platform.python_version()}
    for name in ("torch", "aihwkit", "numpy", "noisydeq", "pyarrow"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def check_writable(out: Path) -> None:
    """Fail early (before any work) when ``out`` cannot be created or written."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=out, prefix=".write-test.")
        os.close(fd)
        os.unlink(tmp)
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise NoisyDEQError(f"--out {out}: cannot write there ({reason})") from None


class RunDir:
    """A sweep's run directory (see module docstring).

    Subclasses reuse the layout for other resumable grids by setting ``spec_cls`` (the
    spec recorded in ``config.toml``) and ``columns`` (the tidy-table schema).
    """

    spec_cls: type = SweepSpec
    columns: dict[str, str] = COLUMNS

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.cells = self.path / "cells"
        self.figures = self.path / "figures"
        self.config_path = self.path / "config.toml"
        self.meta_path = self.path / "meta.json"
        self.csv_path = self.path / "results.csv"
        self.parquet_path = self.path / "results.parquet"

    def open(self, spec: Any, extra_meta: dict[str, Any] | None = None) -> bool:
        """Create the directory for ``spec`` or check it matches; True when resuming."""
        existing = None
        if self.config_path.is_file():
            try:
                existing = loads_toml(self.spec_cls, self.config_path.read_text(encoding="utf-8"))
            except NoisyDEQError:
                raise NoisyDEQError(
                    f"--out {self.path}: holds an unreadable config.toml; choose another --out"
                ) from None
            old, new = spec_identity(existing), spec_identity(spec)
            diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            if diff:
                raise NoisyDEQError(
                    f"--out {self.path}: holds a run with a different config "
                    f"(differs in: {', '.join(diff)}); choose another --out"
                )
        elif self.path.exists() and any(p.name != "figures" for p in self.path.iterdir()):
            if self.cells.exists() or self.csv_path.exists():
                raise NoisyDEQError(
                    f"--out {self.path}: holds results without a config.toml; choose another --out"
                )
        check_writable(self.path)
        self.cells.mkdir(exist_ok=True)
        if existing is None:
            atomic_write_text(self.config_path, dumps_toml(spec))
        meta = {
            "seeds": getattr(spec, "seeds", [getattr(spec, "seed", None)]),
            "config_hash": spec_hash(spec),
            "versions": package_versions(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **(extra_meta or {}),
        }
        if self.meta_path.is_file():
            old_meta = json.loads(self.meta_path.read_text(encoding="utf-8"))
            meta["started"] = old_meta.get("started", meta["started"])
            meta["resumed"] = old_meta.get("resumed", 0) + 1
        atomic_write_text(self.meta_path, json.dumps(meta, indent=2, default=str) + "\n")
        return existing is not None

    # ------------------------------------------------------------------ cell log

    @staticmethod
    def cell_file_name(key: str) -> str:
        return hashlib.sha256(key.encode()).hexdigest()[:20] + ".json"

    def cell_path(self, key: str) -> Path:
        return self.cells / self.cell_file_name(key)

    def load_cell(self, key: str) -> list[dict[str, Any]] | None:
        """Rows of a finished cell, or None when it has not been written (or is not ours)."""
        p = self.cell_path(key)
        if not p.is_file():
            return None
        try:
            data = json.loads(p.read_text(encoding="utf-8"), parse_constant=_parse_constant)
        except (OSError, ValueError):
            return None  # unreadable: recompute (writes are atomic, so this is not expected)
        if data.get("key") != key:
            return None
        return data["rows"]

    def save_cell(self, key: str, rows: Sequence[dict[str, Any]]) -> None:
        """Record a finished cell durably (atomic write with fsync)."""
        text = json.dumps({"key": key, "rows": list(rows)}, allow_nan=True)
        atomic_write_bytes(self.cell_path(key), text.encode())

    # --------------------------------------------------------------- final table

    def write_table(self, rows: Iterable[dict[str, Any]]) -> tuple[Path, Path]:
        """Write the tidy table as CSV and Parquet, each atomically."""
        rows = list(rows)
        atomic_write_bytes(self.csv_path, table_to_csv(rows, self.columns).encode())
        atomic_write_bytes(self.parquet_path, table_to_parquet(rows, self.columns))
        return self.csv_path, self.parquet_path


def _parse_constant(name: str) -> float:
    return {"Infinity": math.inf, "-Infinity": -math.inf, "NaN": math.nan}[name]


def _fmt(value: Any, kind: str) -> str:
    if kind == "float":
        v = float(value)
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    return str(value)


def table_to_csv(rows: Sequence[dict[str, Any]], columns: dict[str, str] = COLUMNS) -> str:
    """CSV text of the tidy table (``inf`` / ``nan`` spelled out; floats round-trip exactly)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow([_fmt(r[c], t) for c, t in columns.items()])
    return buf.getvalue()


def read_csv(path: str | os.PathLike, columns: dict[str, str] = COLUMNS) -> list[dict[str, Any]]:
    """Read a results CSV back into typed rows."""
    conv = {"str": str, "int": int, "float": float}
    with open(path, newline="", encoding="utf-8") as fh:
        return [
            {c: conv[columns[c]](v) for c, v in row.items()} for row in csv.DictReader(fh)
        ]


def table_to_parquet(rows: Sequence[dict[str, Any]], columns: dict[str, str] = COLUMNS) -> bytes:
    """Parquet bytes of the tidy table with explicit column types."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    types = {"str": pa.string(), "int": pa.int64(), "float": pa.float64()}
    schema = pa.schema([(c, types[t]) for c, t in columns.items()])
    table = pa.table({c: [r[c] for r in rows] for c in columns}, schema=schema)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()
