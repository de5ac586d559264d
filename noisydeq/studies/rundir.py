"""The run directory of a study, written and checked by the rules of :mod:`noisydeq.store`.

Layout (:mod:`noisydeq.studies.runner`): ``study.toml`` (the resolved spec, signed with a
``# sha256`` line), ``meta.json`` (signed), ``models/<id>/`` (checkpoints, each with its own
digest and lock), ``cells/<id>.json`` (the rows of one evaluated model and the code that
evaluated it, signed), ``results.csv`` / ``summary.csv`` / ``figures/`` (listed with their
digests in ``SHA256SUMS``). Every file is written atomically. The directory is locked
(:class:`noisydeq.store.DirLock`) from :meth:`StudyDir.open` to :meth:`StudyDir.close`, so a
second ``noisydeq study`` on the same ``--out`` waits instead of interleaving its writes.
A file that fails its digest or structure check is refused in one line naming it
(:class:`~noisydeq.errors.CorruptArtefact`), never silently reused.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from noisydeq import store
from noisydeq.errors import CorruptArtefact, NoisyDEQError
from noisydeq.results import (
    LockedDir,
    package_versions,
    read_recorded_spec,
)
from noisydeq.specs.study import StudySpec
from noisydeq.specs.toml import dumps_toml

#: format tag of a study's cell file
CELL_FORMAT = "noisydeq-study-cell/1"
#: the columns that identify a row within one model's cell (checked on load)
ROW_IDENTITY = ("model", "seed", "train_snr_db", "shift", "budget", "solver", "test_snr_db")


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return bool(a == b)


class StudyDir(LockedDir):
    """A study's run directory (see the module docstring); a context manager that releases
    its lock on exit."""

    #: an evaluation records the code that computed it: one of other code (or written
    #: before evaluations recorded it) is not served, the model is evaluated again
    records_code = True
    code_kind = "studies"  # the code its computation reaches (noisydeq.fingerprint)

    def __init__(self, path: str | Path) -> None:
        super().__init__(path)
        self.spec_path = self.path / "study.toml"
        self.cells = self.path / "cells"
        self.models = self.path / "models"
        self.figures = self.path / "figures"

    def read_spec(self) -> StudySpec:
        """The recorded study, digest checked."""
        return read_recorded_spec(self.path, self.spec_path, StudySpec, "study")

    def check(self, spec: StudySpec) -> bool:
        """Refuse, writing nothing, an ``--out`` that cannot hold ``spec``'s study (one
        that cannot be written: :func:`~noisydeq.store.open_for_writing`); True when it
        already holds it (a resume)."""
        if self.spec_path.exists():
            a, b = self.read_spec().model_dump(mode="json"), spec.model_dump(mode="json")
            diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            if diff:
                raise NoisyDEQError(f"--out {self.path}: holds a study with a different config "
                                    f"(differs in: {', '.join(diff)}); choose another --out")
            self.recorded_meta()
            return True
        if self.path.is_dir() and any(p.name != store.LOCK_FILE for p in self.path.iterdir()):
            raise NoisyDEQError(f"--out {self.path}: exists and holds no study.toml; "
                                "choose another --out")
        return False

    def open(self, spec: StudySpec, name: str) -> bool:
        """Lock the directory (waiting for another writer), create it for ``spec`` or check
        that it holds the same study; True when resuming. Checked before anything is
        written; :meth:`close` (or leaving ``with``) releases the lock."""
        # unsealed on opening, as a sweep's run: a resume that writes a cell (and so
        # meta.json) and then stops must not leave the old SHA256SUMS over the new files
        opening = store.open_for_writing(self.lock, lambda: self.check(spec),
                                         temps=(self.cells, self.figures))
        with opening as (resumed, _created):
            if not resumed:
                store.atomic_write_text(self.spec_path, store.sign_text(dumps_toml(spec)))
            meta: dict[str, Any] = {"study": name, "versions": package_versions(),
                                    "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                    "resumed": 0}
            self.write_meta(meta, self.recorded_meta())  # a resume: with its first cell
            self.cells.mkdir(exist_ok=True)
        return resumed

    # ------------------------------------------------------------------ cells

    def cell_path(self, key: str) -> Path:
        return self.cells / f"{key}.json"

    def load_cell(self, key: str, expect: Sequence[dict[str, Any]]) -> list[dict[str, Any]] | None:
        """The rows of an evaluated model, or None when none were written or other
        noisydeq code evaluated it (noted in :attr:`other_code`). The digest,
        format, key and each row's identity (``expect``: :data:`ROW_IDENTITY` values, in
        order) are checked; a file that fails is a :class:`CorruptArtefact` naming it."""
        p = self.cell_path(key)
        data = self._read_cell(key)
        if data is None or self._other_code(key, data):
            return None
        return self._rows(p, data, expect)

    def served_weights(self, key: str, expect: Sequence[dict[str, Any]]) -> str | None:
        """The weights digest for which :meth:`load_cell` serves cell ``key``: the one it
        records, when this code (or, with :attr:`keep_other_code`, any) computed it; None
        when there is none (no cell, one of other code, or one that records no weights —
        with :attr:`keep_other_code` served whatever the weights, not named here). Checked
        as :meth:`load_cell` checks it; nothing noted. A study model trained on Ray is
        evaluated there only when its weights are not these."""
        p = self.cell_path(key)
        data = self._read_cell(key)
        if data is None or not self.records_code:
            return None
        found = data.get("weights")
        if not isinstance(found, str) or not (data.get("code") == self.code
                                               or self.keep_other_code):
            return None
        self._rows(p, data, expect)
        return found

    def _read_cell(self, key: str) -> dict[str, Any] | None:
        """Cell ``key``'s record (digest, format and key checked), None when none was
        written."""
        p = self.cell_path(key)
        if not p.exists():
            return None
        try:
            data = store.read_signed_json(p, "cell file")
            if data.get("format") != CELL_FORMAT:
                raise CorruptArtefact(p, f"has format {data.get('format')!r}, not {CELL_FORMAT}")
            if data.get("key") != key:
                raise CorruptArtefact(p, f"belongs to {data.get('key')!r}, not {key!r}")
        except CorruptArtefact as err:
            raise self._delete_it(p, err) from None
        return data

    @staticmethod
    def _delete_it(p: Path, err: CorruptArtefact) -> CorruptArtefact:
        return CorruptArtefact(p, f"{err.reason}; delete it to evaluate that model again")

    def _rows(self, p: Path, data: dict[str, Any], expect: Sequence[dict[str, Any]]
              ) -> list[dict[str, Any]]:
        """The rows of the cell record ``data`` (file ``p``), each row's identity checked
        against ``expect``."""
        try:
            rows = data.get("rows")
            if not isinstance(rows, list) or len(rows) != len(expect):
                n = len(rows) if isinstance(rows, list) else "no list of"
                raise CorruptArtefact(p, f"holds {n} rows, its model has {len(expect)}")
            for i, (row, want) in enumerate(zip(rows, expect, strict=True)):
                if not isinstance(row, dict):
                    raise CorruptArtefact(p, f"row {i} is not a row")
                for col, v in want.items():
                    if col not in row or not _same(row[col], v):
                        raise CorruptArtefact(p, f"row {i}: {col} = {row.get(col)!r}, "
                                              f"expected {v!r}")
            columns = data.get("columns")
            if isinstance(columns, list) and all(isinstance(c, str) for c in columns):
                if any(set(r) != set(columns) for r in rows):
                    raise CorruptArtefact(p, "holds rows whose columns are not its columns")
                rows = [{c: r[c] for c in columns} for r in rows]
        except CorruptArtefact as err:
            raise self._delete_it(p, err) from None
        return rows

    def save_cell(self, key: str, rows: Sequence[dict[str, Any]]) -> None:
        """Record an evaluated model durably (atomic write, digest embedded)."""
        self.cell_written()
        # the rows' column order (a signed record sorts their keys): a served cell's rows
        # keep it, so results.csv is the same file as the run's that computed them
        columns = list(rows[0]) if rows else []
        store.write_signed_json(self.cell_path(key),
                                {"format": CELL_FORMAT, "key": key, "rows": list(rows),
                                 "columns": columns, **self.code_record(key)})

    # ----------------------------------------------------------------- tables

    def write_tables(self, rows: Sequence[dict[str, Any]], summary: Sequence[dict[str, Any]]
                     ) -> tuple[Path, Path]:
        """``results.csv`` and ``summary.csv``, each atomically, in a run :meth:`open` has
        unsealed (its digest list is written again by :meth:`seal`)."""
        from noisydeq.figures import write_csv

        return write_csv(self.path / "results.csv", rows), write_csv(
            self.path / "summary.csv", summary)

    def seal(self, figures: Iterable[Path] = ()) -> Path:
        """``SHA256SUMS`` over the tables, spec, meta data and ``figures``."""
        files = [self.path / "results.csv", self.path / "summary.csv", self.spec_path,
                 self.meta_path, *figures]
        return store.write_manifest(self.path, [f for f in files if f.is_file()])
