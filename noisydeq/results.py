"""The run directory of a sweep: resolved config, provenance, resumable cell log, tidy table.

Layout of ``<out>/``::

    config.toml        the resolved SweepSpec (what produced the results), digest line first
    meta.json          seed, package versions (python, torch, aihwkit, numpy, noisydeq), start time
    cells/<key>.json   one file per finished (model, chip, SNR-chunk) cell, written atomically
    results.csv        the tidy table (one row per model × chip × SNR), written atomically
    results.parquet    the same table, typed (pyarrow)
    figures/           plots (PNG + SVG)
    SHA256SUMS         digests of the table, config, meta and figures (``sha256sum -c``)
    .noisydeq.lock     the writer's lock (one writer per run directory)

Resume: a cell file appears only once its cell is complete (temp file + fsync + rename), so a
killed run leaves either the whole cell or nothing. Re-running the same config skips every
cell whose file exists. A run directory created by a *different* config is refused with one
clear error (results of two configs are never mixed).

Integrity (:mod:`noisydeq.store`): ``config.toml``, ``meta.json`` and every cell carry their
SHA-256 digest, and a cell's rows are checked against the rows its key promises (count,
columns, types, model, chip, SNR levels, no duplicates); a file that fails is refused with
its name, never used. One process writes a run directory at a time: :meth:`RunDir.open`
takes its lock (a second sweep on the same ``--out`` waits) and nothing is created before
the directory, its config and its meta data are checked.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import platform
import shutil
import time
from collections.abc import Iterable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from noisydeq import store
from noisydeq.config import SweepSpec, dumps_toml, loads_toml
from noisydeq.errors import CorruptArtefact, NoisyDEQError

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

# Fields of SweepSpec that do not change results (excluded from the run-dir identity):
# noise is keyed by test-sample index, so batching and chunking give the same table.
RUNTIME_ONLY = frozenset({"batched", "max_rows"})


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


CELL_FORMAT = "noisydeq-cell/2"
_CONVERT = {"str": (str,), "int": (int,), "float": (float, int)}


def check_rows(rows: Any, path: Path, expect: Sequence[dict[str, Any]] | None = None) -> None:
    """Rows of a cell: a list of rows with exactly the :data:`COLUMNS` and their types, and
    (``expect``) as many as expected, in order, matching the expected values."""
    if not isinstance(rows, list):
        raise CorruptArtefact(path, "holds no list of rows")
    if expect is not None and len(rows) != len(expect):
        raise CorruptArtefact(path, f"holds {len(rows)} rows, its cell has {len(expect)}")
    seen = set()
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or set(row) != set(COLUMNS):
            cols = sorted(set(row) ^ set(COLUMNS)) if isinstance(row, dict) else "not a row"
            raise CorruptArtefact(path, f"row {i} has the wrong columns ({cols})")
        for col, kind in COLUMNS.items():
            v = row[col]
            if isinstance(v, bool) or not isinstance(v, _CONVERT[kind]):
                raise CorruptArtefact(path, f"row {i}: {col} = {v!r} is not a {kind}")
        ident = (row["model_id"], row["chip"], row["snr_db"])
        if ident in seen:
            raise CorruptArtefact(path, f"row {i} duplicates {ident}")
        seen.add(ident)
        for col, want in (expect[i] if expect is not None else {}).items():
            if row[col] != want:
                raise CorruptArtefact(path, f"row {i}: {col} = {row[col]!r}, its cell is {want!r}")


class RunDir:
    """A sweep's run directory (see module docstring); a context manager that releases
    its lock on exit."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.cells = self.path / "cells"
        self.figures = self.path / "figures"
        self.config_path = self.path / "config.toml"
        self.meta_path = self.path / "meta.json"
        self.csv_path = self.path / "results.csv"
        self.parquet_path = self.path / "results.parquet"
        self.lock = store.DirLock(self.path, "--out")

    def _refuse(self, err: NoisyDEQError) -> NoisyDEQError:
        return NoisyDEQError(f"--out {self.path}: {err}; choose another --out or delete it")

    def read_config(self) -> SweepSpec:
        """The run's recorded spec, digest checked (one line naming the file otherwise)."""
        try:
            text = store.read_text(self.config_path, "config.toml")
            body = store.verify_text(text, self.config_path)
        except NoisyDEQError as err:
            raise self._refuse(err) from None
        try:
            return loads_toml(SweepSpec, body, where=str(self.config_path))
        except NoisyDEQError as err:
            raise self._refuse(NoisyDEQError(f"holds a sweep this version cannot read ({err})")
                               ) from None

    def read_meta(self) -> dict[str, Any]:
        """``meta.json``, digest checked."""
        try:
            return store.read_signed_json(self.meta_path, "meta.json")
        except NoisyDEQError as err:
            raise self._refuse(err) from None

    def check(self, spec: SweepSpec) -> SweepSpec | None:
        """Refuse, writing nothing, an ``--out`` that cannot hold ``spec``'s run; returns
        the spec recorded there (None for a new run)."""
        store.check_out_dir(self.path)
        existing = None
        if self.config_path.exists():
            existing = self.read_config()
            old, new = spec_identity(existing), spec_identity(spec)
            diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            if diff:
                raise NoisyDEQError(
                    f"--out {self.path}: its config.toml holds a sweep with a different "
                    f"config (differs in: {', '.join(diff)}); choose another --out"
                )
        elif self.cells.exists() or self.csv_path.exists():
            raise NoisyDEQError(
                f"--out {self.path}: holds results without a config.toml; choose another --out"
            )
        if self.meta_path.exists():
            self.read_meta()
        return existing

    def open(self, spec: SweepSpec, extra_meta: dict[str, Any] | None = None) -> bool:
        """Lock the directory for ``spec`` (waiting for another writer), create it or check
        it matches; True when resuming. Everything is checked before anything is written;
        :meth:`close` (or leaving ``with``) releases the lock."""
        self.check(spec)
        created = not self.path.exists()
        self.lock.acquire()
        try:
            existing = self.check(spec)  # again: another writer may have finished meanwhile
            for d in (self.path, self.cells, self.figures):
                store.clean_stale_temps(d, locked=True)
            if existing is None:
                store.atomic_write_text(self.config_path, store.sign_text(dumps_toml(spec)))
            meta = {
                "seeds": spec.seeds,
                "config_hash": spec_hash(spec),
                "versions": package_versions(),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                **(extra_meta or {}),
            }
            if self.meta_path.exists():
                old = self.read_meta()
                meta["started"] = old.get("started", meta["started"])
                resumed = old.get("resumed", 0)
                meta["resumed"] = (resumed if isinstance(resumed, int) else 0) + 1
            store.write_signed_json(self.meta_path, json.loads(json.dumps(meta, default=str)),
                                    indent=2)
            self.cells.mkdir(exist_ok=True)
        except BaseException:
            self.close()
            if created:
                shutil.rmtree(self.path, ignore_errors=True)
            raise
        return existing is not None

    def close(self) -> None:
        """Release the lock taken by :meth:`open`."""
        self.lock.release()

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ cell log

    @staticmethod
    def cell_file_name(key: str) -> str:
        return hashlib.sha256(key.encode()).hexdigest()[:20] + ".json"

    def cell_path(self, key: str) -> Path:
        return self.cells / self.cell_file_name(key)

    def load_cell(
        self, key: str, expect: Sequence[dict[str, Any]] | None = None
    ) -> list[dict[str, Any]] | None:
        """Rows of a finished cell, or None when it has not been written.

        The file's digest, format, key and rows (:func:`check_rows`, against ``expect``)
        are checked; a file that fails is a :class:`CorruptArtefact` naming it.
        """
        p = self.cell_path(key)
        if not p.exists():
            return None
        try:
            data = store.read_signed_json(p, "cell file")
            if data.get("format") != CELL_FORMAT:
                raise CorruptArtefact(p, f"has format {data.get('format')!r}, not {CELL_FORMAT}")
            if data.get("key") != key:
                raise CorruptArtefact(p, f"belongs to cell {data.get('key')!r}, not {key!r}")
            check_rows(data.get("rows"), p, expect)
        except CorruptArtefact as err:
            raise CorruptArtefact(p, f"{err.reason}; delete it to compute that cell again"
                                  ) from None
        return data["rows"]

    def save_cell(self, key: str, rows: Sequence[dict[str, Any]]) -> None:
        """Record a finished cell durably (atomic write with fsync, digest embedded)."""
        store.write_signed_json(self.cell_path(key),
                                {"format": CELL_FORMAT, "key": key, "rows": list(rows)})

    # --------------------------------------------------------------- final table

    def write_table(self, rows: Iterable[dict[str, Any]]) -> tuple[Path, Path]:
        """Write the tidy table as CSV and Parquet, each atomically (the digest list is
        dropped first and rewritten by :meth:`seal`)."""
        rows = list(rows)
        check_rows(rows, self.csv_path)  # columns, types, no duplicated (model, chip, SNR)
        store.remove_manifest(self.path)
        store.atomic_write_bytes(self.csv_path, table_to_csv(rows).encode())
        store.atomic_write_bytes(self.parquet_path, table_to_parquet(rows))
        return self.csv_path, self.parquet_path

    def seal(self, figures: Iterable[Path] = ()) -> Path:
        """Write ``SHA256SUMS`` over the table, config, meta data and ``figures``."""
        files = [self.csv_path, self.parquet_path, self.config_path, self.meta_path, *figures]
        return store.write_manifest(self.path, [f for f in files if f.is_file()])


def _fmt(value: Any, kind: str) -> str:
    if kind == "float":
        v = float(value)
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    return str(value)


def table_to_csv(rows: Sequence[dict[str, Any]]) -> str:
    """CSV text of the tidy table (``inf`` / ``nan`` spelled out; floats round-trip exactly)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    for r in rows:
        w.writerow([_fmt(r[c], t) for c, t in COLUMNS.items()])
    return buf.getvalue()


def read_csv(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read a run's results CSV back into typed rows (checked against its ``SHA256SUMS``)."""
    store.verify_listed(path)
    conv = {"str": str, "int": int, "float": float}
    with open(path, newline="", encoding="utf-8") as fh:
        return [
            {c: conv[COLUMNS[c]](v) for c, v in row.items()} for row in csv.DictReader(fh)
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
