"""The run directory of a sweep: resolved config, provenance, resumable cell log, tidy table.

Layout of ``<out>/``::

    config.toml        the resolved SweepSpec (what produced the results)
    meta.json          seed, package versions (python, torch, aihwkit, numpy, noisydeq), start time
    identity.json      what the run's identity holds beyond config.toml: the resolved device
                       spec (a preset's content, not its path)
    cells/<key>.json   one file per finished (model, chip, SNR-chunk) cell, written atomically
    results.csv        the tidy table (one row per model × chip × SNR), written atomically
    results.parquet    the same table, typed (pyarrow)
    layers.csv         device noise: each device layer's measured static / dynamic / total SNR
                       per model × chip × SNR (LAYER_COLUMNS)
    figures/           plots (PNG + SVG)

Resume: a cell file appears only once its cell is complete (temp file + fsync + rename), so a
killed run leaves either the whole cell or nothing. Re-running the same config skips every
cell whose file exists. A run directory created by a *different* config — or by the same
config whose device preset has changed since (identity by content) — is refused with one
clear error (results of two configs are never mixed); cell keys carry a digest of the
device content, data, models and code too, so a stale cell is never reused.
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
    "noise_mode": "str",
    "static_snr_db": "float",
    "dynamic_snr_db": "float",
    "total_snr_db": "float",
    "chip": "int",
    "metric": "str",
    "value": "float",
    "n_samples": "int",
    "mean_steps": "float",
    "converged_frac": "float",
    "diverged_frac": "float",
}

#: per-layer table of a device-noise sweep (layers.csv), in CSV order
LAYER_COLUMNS: dict[str, str] = {
    "model_id": "str",
    "chip": "int",
    "noise_mode": "str",
    "snr_db": "float",
    "layer": "str",
    "static_snr_db": "float",
    "dynamic_snr_db": "float",
    "total_snr_db": "float",
}

# Fields of SweepSpec that do not change results (excluded from the run-dir identity).
RUNTIME_ONLY = frozenset({"batched"})


def device_identity(spec: SweepSpec) -> dict[str, Any]:
    """The resolved device spec of ``spec.device`` (a preset's content, not its name or
    path): what identifies the device a sweep ran on."""
    from noisydeq.hardware.presets import load_spec

    return json.loads(load_spec(spec.device).model_dump_json())


def spec_identity(spec: SweepSpec) -> dict[str, Any]:
    """The part of ``spec`` that determines the results (used to match a run directory),
    with the device's resolved content under ``device_spec``."""
    data = json.loads(spec.model_dump_json())
    out = {k: v for k, v in data.items() if k not in RUNTIME_ONLY}
    out["device_spec"] = device_identity(spec)
    return out


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
    """A sweep's run directory (see module docstring)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.cells = self.path / "cells"
        self.figures = self.path / "figures"
        self.config_path = self.path / "config.toml"
        self.identity_path = self.path / "identity.json"
        self.meta_path = self.path / "meta.json"
        self.layers_path = self.path / "layers.csv"
        self.csv_path = self.path / "results.csv"
        self.parquet_path = self.path / "results.parquet"

    def open(self, spec: SweepSpec, extra_meta: dict[str, Any] | None = None) -> bool:
        """Create the directory for ``spec`` or check it matches; True when resuming."""
        existing = None
        if self.config_path.is_file():
            try:
                existing = loads_toml(SweepSpec, self.config_path.read_text(encoding="utf-8"))
            except NoisyDEQError:
                raise NoisyDEQError(
                    f"--out {self.path}: holds an unreadable config.toml; choose another --out"
                ) from None
            old, new = spec_identity(existing), spec_identity(spec)
            old["device_spec"] = self._stored_device(new["device_spec"])
            diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            if "device_spec" in diff:  # name the preset fields that changed
                a, b = old["device_spec"], new["device_spec"]
                fields = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
                diff[diff.index("device_spec")] = "device preset " + ", ".join(fields)
            if diff:
                raise NoisyDEQError(
                    f"--out {self.path}: holds a sweep with a different config "
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
        if existing is None or not self.identity_path.is_file():
            identity = {"device_spec": device_identity(spec)}
            atomic_write_text(self.identity_path, json.dumps(identity, indent=2) + "\n")
        meta = {
            "seeds": spec.seeds,
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

    def _stored_device(self, current: dict[str, Any]) -> dict[str, Any]:
        """The device spec recorded when the run began (``current`` for run directories
        made before it was recorded: their cell keys differ from today's anyway)."""
        try:
            return json.loads(self.identity_path.read_text(encoding="utf-8"))["device_spec"]
        except (OSError, ValueError, KeyError, TypeError):
            return current

    def discard(self) -> None:
        """Remove what :meth:`open` created in a new run directory that holds no cell yet
        (a sweep refused after opening it leaves nothing behind)."""
        if self.cells.is_dir() and any(self.cells.iterdir()):
            return
        for p in (self.config_path, self.identity_path, self.meta_path):
            p.unlink(missing_ok=True)
        for d in (self.cells, self.path):
            try:
                d.rmdir()
            except OSError:
                pass

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

    def save_cell(
        self, key: str, rows: Sequence[dict[str, Any]],
        layers: Sequence[dict[str, Any]] = (),
    ) -> None:
        """Record a finished cell durably (atomic write with fsync); ``layers``: its
        per-layer rows (:data:`LAYER_COLUMNS`)."""
        record = {"key": key, "rows": list(rows)}
        if layers:
            record["layers"] = list(layers)
        text = json.dumps(record, allow_nan=True)
        atomic_write_bytes(self.cell_path(key), text.encode())

    def load_cell_layers(self, key: str) -> list[dict[str, Any]]:
        """The per-layer rows of a finished cell (empty when it has none)."""
        try:
            data = json.loads(self.cell_path(key).read_text(encoding="utf-8"),
                              parse_constant=_parse_constant)
        except (OSError, ValueError):
            return []
        return data.get("layers", []) if data.get("key") == key else []

    # --------------------------------------------------------------- final table

    def write_table(self, rows: Iterable[dict[str, Any]]) -> tuple[Path, Path]:
        """Write the tidy table as CSV and Parquet, each atomically."""
        rows = list(rows)
        atomic_write_bytes(self.csv_path, table_to_csv(rows).encode())
        atomic_write_bytes(self.parquet_path, table_to_parquet(rows))
        return self.csv_path, self.parquet_path

    def write_layer_table(self, rows: Iterable[dict[str, Any]]) -> Path:
        """Write the per-layer table (``layers.csv``) atomically."""
        atomic_write_bytes(self.layers_path, table_to_csv(list(rows), LAYER_COLUMNS).encode())
        return self.layers_path


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


def table_to_csv(rows: Sequence[dict[str, Any]], columns: dict[str, str] | None = None) -> str:
    """CSV text of the tidy table (``inf`` / ``nan`` spelled out; floats round-trip exactly)."""
    columns = COLUMNS if columns is None else columns
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow([_fmt(r[c], t) for c, t in columns.items()])
    return buf.getvalue()


def read_csv(
    path: str | os.PathLike, columns: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """Read a results CSV (or, with ``columns=LAYER_COLUMNS``, a layers.csv) into typed rows."""
    columns = COLUMNS if columns is None else columns
    conv = {"str": str, "int": int, "float": float}
    with open(path, newline="", encoding="utf-8") as fh:
        return [
            {c: conv[columns[c]](v) for c, v in row.items()} for row in csv.DictReader(fh)
        ]


def table_to_parquet(rows: Sequence[dict[str, Any]]) -> bytes:
    """Parquet bytes of the tidy table with explicit column types."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    types = {"str": pa.string(), "int": pa.int64(), "float": pa.float64()}
    schema = pa.schema([(c, types[t]) for c, t in COLUMNS.items()])
    table = pa.table({c: [r[c] for r in rows] for c in COLUMNS}, schema=schema)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()
