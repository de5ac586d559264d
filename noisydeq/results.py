"""The run directory of a sweep: resolved config, provenance, resumable cell log, tidy table.

Layout of ``<out>/``::

    config.toml        the resolved SweepSpec (what produced the results), digest line first
    meta.json          seed, package versions (python, torch, aihwkit, numpy, noisydeq), start time,
                       the figures' title when the run has one (an experiment's)
    identity.json      what the run's identity holds beyond config.toml: the resolved device
                       spec (a preset's content, not its path)
    cells/<key>.json   one file per finished (model, chip, SNR-chunk) cell, written atomically
    results.csv        the tidy table (one row per model × chip × SNR), written atomically
    results.parquet    the same table, typed (pyarrow)
    layers.csv         device noise: each device layer's measured static / dynamic / total SNR
                       per model × chip × SNR (LAYER_COLUMNS)
    figures/           plots (PNG + SVG)
    SHA256SUMS         digests of the table, config, meta and figures (``sha256sum -c``)
    .noisydeq.lock     the writer's lock (one writer per run directory)

Resume: a cell file appears only once its cell is complete (temp file + fsync + rename), so a
killed run leaves either the whole cell or nothing. Re-running the same config skips every
cell whose file exists. Extending (:mod:`noisydeq.extension`): the same sweep with more
SNR levels, chips, seeds, depths or kinds grows the run into the union of the grids —
``config.toml`` rewritten, the extension recorded in ``meta.json`` (``extensions``), only the
new cells computed and the tables, figures and digests rewritten over all cells. A run
directory created by a config that differs in any other field — or by the same
config whose device preset has changed since (identity by content) — is refused with one
clear error (results of two configs are never mixed); cell keys carry a digest of the
device content, data, models and code too, so a stale cell is never reused.

Integrity (:mod:`noisydeq.store`): ``config.toml``, ``meta.json``, ``identity.json`` and
every cell carry their SHA-256 digest, and a cell's rows are checked against the rows its
key promises (count, columns, types, model, chip, SNR levels, no duplicates); a file that
fails is refused with its name, never used. One process writes a run directory at a time:
:meth:`RunDir.open` takes its lock (a second sweep on the same ``--out`` waits) and nothing
is created before the directory, its config and its meta data are checked.

Length (about 500 lines): one idea, the sweep run directory — its files, their integrity
checks against the rows a cell key promises, and the writers of its tables (CSV, Parquet),
which every reader of a run uses together.
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
from collections.abc import Callable, Collection, Iterable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

from noisydeq import events, fingerprint, store
from noisydeq.errors import CorruptArtefact, NoisyDEQError
from noisydeq.extension import GROWABLE, added_grids, history_entry, union_spec
from noisydeq.specs.base import build
from noisydeq.specs.device_presets import preset_content
from noisydeq.specs.sweep import SweepSpec
from noisydeq.specs.toml import dumps_toml, parse_toml

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

#: hardware-aware training columns, after :data:`COLUMNS` in a sweep that names training
#: devices (``train_device``): the device a model was trained on (``none``: digitally), the
#: SNR it was calibrated to (``nan``: native, or digital) and the training noise mode
TRAIN_DEVICE_COLUMNS: dict[str, str] = {
    "train_device": "str",
    "train_device_snr_db": "float",
    "train_noise_mode": "str",
}


#: the native level's column, last in the table of a sweep whose grid holds ``native``:
#: True on the row of the device at its own knobs (its ``snr_db``: the device's native SNR
#: of the swept part), False on the grid's rows (CSV ``True`` / ``False``, Parquet bool)
NATIVE_COLUMNS: dict[str, str] = {"native": "bool"}

#: every column a sweep's table may hold, with its type (the tables read back by
#: :func:`read_csv` and :func:`noisydeq.load_results`)
SWEEP_TABLE_COLUMNS: dict[str, str] = {**COLUMNS, **TRAIN_DEVICE_COLUMNS, **NATIVE_COLUMNS}


def columns_for(spec: Any) -> dict[str, str]:
    """The results columns of a sweep ``spec``'s cells: :data:`COLUMNS`, plus
    :data:`TRAIN_DEVICE_COLUMNS` when it trains on devices."""
    if getattr(spec, "train_device", None):
        return {**COLUMNS, **TRAIN_DEVICE_COLUMNS}
    return COLUMNS


def table_columns(spec: Any) -> dict[str, str]:
    """The columns of a sweep ``spec``'s table (``results.csv``): :func:`columns_for`, plus
    :data:`NATIVE_COLUMNS` when its grid holds the native level (a cell's rows have no
    such column: a run extended by ``native`` reads the cells it holds as they are)."""
    if getattr(spec, "snr_native", False):
        return {**columns_for(spec), **NATIVE_COLUMNS}
    return columns_for(spec)


#: columns that identify a row of a sweep's table (no two rows share them)
IDENTITY: tuple[str, ...] = ("model_id", "chip", "snr_db")
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
#: columns that identify a row of the per-layer table
LAYER_IDENTITY: tuple[str, ...] = ("model_id", "chip", "snr_db", "layer")

# Fields of SweepSpec that do not change results (excluded from the run-dir identity):
# noise is keyed by test-sample index, so batching and chunking give the same table.
RUNTIME_ONLY = frozenset({"batched", "max_rows"})


def device_identity(spec: SweepSpec) -> dict[str, Any]:
    """The resolved device spec of ``spec.device`` (a preset's content, not its name or
    path): what identifies the device a sweep ran on."""
    return preset_content(spec.device)


def spec_identity(spec: Any) -> dict[str, Any]:
    """The part of ``spec`` that determines the results (used to match a run directory);
    for a sweep, with the device's resolved content under ``device_spec``."""
    data = json.loads(spec.model_dump_json())
    for optional in ("monotone", "lyapunov", "transfer_from"):  # unset: earlier identities stay
        if data.get(optional) is None:
            data.pop(optional, None)
    out = {k: v for k, v in data.items() if k not in RUNTIME_ONLY}
    if isinstance(spec, SweepSpec) and spec.data_seed == spec.seeds[0]:
        # the split drawn by the first seed, as before data_seed existed: earlier identities
        # (default run directories, resumes) stay; any other data seed is another run
        out.pop("data_seed", None)
    if isinstance(spec, SweepSpec):
        out["device_spec"] = device_identity(spec)
        if spec.train_device:  # trained on devices: their resolved content too
            out["train_device_specs"] = {
                d: preset_content(d) for d in spec.train_device if d != "none"}
    return out


def spec_hash(spec: Any) -> str:
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


#: 3: cells carry their per-layer SNR rows (``layers``)
CELL_FORMAT = "noisydeq-cell/3"
_CONVERT = {"str": (str,), "int": (int,), "float": (float, int), "bool": (bool,)}


def check_rows(rows: Any, path: Path, expect: Sequence[dict[str, Any]] | None = None,
               columns: dict[str, str] = COLUMNS,
               identity: Sequence[str] = IDENTITY) -> None:
    """Rows of a cell: a list of rows with exactly the ``columns`` (default: a sweep's
    :data:`COLUMNS`) and their types, no two alike in ``identity``, and (``expect``) as
    many as expected, in order, matching the expected values."""
    if not isinstance(rows, list):
        raise CorruptArtefact(path, "holds no list of rows")
    if expect is not None and len(rows) != len(expect):
        raise CorruptArtefact(path, f"holds {len(rows)} rows, its cell has {len(expect)}")
    seen = set()
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or set(row) != set(columns):
            cols = sorted(set(row) ^ set(columns)) if isinstance(row, dict) else "not a row"
            raise CorruptArtefact(path, f"row {i} has the wrong columns ({cols})")
        for col, kind in columns.items():
            v = row[col]
            if isinstance(v, bool) != (kind == "bool") or not isinstance(v, _CONVERT[kind]):
                raise CorruptArtefact(path, f"row {i}: {col} = {v!r} is not a {kind}")
        ident = tuple(row[c] for c in identity)
        if ident in seen:
            raise CorruptArtefact(path, f"row {i} duplicates {ident}")
        seen.add(ident)
        for col, want in (expect[i] if expect is not None else {}).items():
            if row[col] != want:
                raise CorruptArtefact(path, f"row {i}: {col} = {row[col]!r}, its cell is {want!r}")


def refuse_out(out: Path, err: NoisyDEQError) -> NoisyDEQError:
    """``err`` as the one-line refusal of the run directory ``out`` given as ``--out``."""
    return NoisyDEQError(f"--out {out}: {err}; choose another --out or delete it")


def read_recorded_spec(out: Path, path: Path, spec_cls: type, what: str,
                       refuse: Callable[[Path, NoisyDEQError], NoisyDEQError] = refuse_out
                       ) -> Any:
    """The ``spec_cls`` recorded at ``path`` (TOML signed with a ``# sha256`` line) in the run
    directory ``out``, digest checked; a missing, corrupt or unreadable file is refused in
    one line (``refuse``: naming ``--out`` by default; ``what`` names the run's kind: sweep,
    study, ...)."""
    try:
        body = store.verify_text(store.read_text(path, path.name), path)
    except NoisyDEQError as err:
        raise refuse(out, err) from None
    try:
        data = parse_toml(body, str(path))
        fields = getattr(spec_cls, "model_fields", {})
        if "data_seed" in fields and "seeds" in fields and "data_seed" not in data:
            # recorded before data_seed existed: the first seed drew the split
            seeds = data.get("seeds", [0])
            data["data_seed"] = seeds[0] if isinstance(seeds, list) and seeds else 0
        return build(spec_cls, data, where=str(path))
    except NoisyDEQError as err:
        raise refuse(out, NoisyDEQError(
            f"holds a {what} this version cannot read ({err})")) from None


def read_recorded_meta(out: Path, path: Path) -> dict[str, Any]:
    """The run directory ``out``'s signed ``meta.json`` at ``path``, digest checked."""
    try:
        return store.read_signed_json(path, "meta.json")
    except NoisyDEQError as err:
        raise refuse_out(out, err) from None


def resumed_meta(meta: dict[str, Any], old: dict[str, Any]) -> None:
    """Carry a reopened run's recorded ``meta.json`` (``old``) into the new ``meta``: the
    first opening's ``started`` and the number of resumes, one more."""
    meta["started"] = old.get("started", meta["started"])
    resumed = old.get("resumed", 0)
    meta["resumed"] = (resumed if isinstance(resumed, int) else 0) + 1


#: what a sweep's note adds: the files of the cells it computes again do not stay behind
REPLACED = "; each old file is removed once its cell is written again"


def other_code_note(found: dict[str, str | None], total: int, out: Path, *,
                    what: str = "cells", kept: bool = False, flag: str = "",
                    tail: str = "", recorded: str = "their code") -> str:
    """The line a resumed run prints when ``found`` (key → recorded code, None: not
    recorded) of its ``total`` ``what`` in ``out`` were computed by other noisydeq code: they
    are computed again — or, ``kept`` (``flag`` given), served — so the table never mixes
    two codes' results unsaid; '' for none. ``flag``: the option that keeps them; ``tail``:
    what else happens to them (:data:`REPLACED`); ``recorded``: what cells record (those
    written before, counted as None in ``found``)."""
    if not found:
        return ""
    n, unknown = len(found), sum(c is None for c in found.values())
    older = (f" ({'all' if unknown == n else unknown} of them before cells recorded "
             f"{recorded})" if unknown else "")
    head = f"note: {n} of {total} {what} in {out} were computed by other noisydeq code{older}"
    if kept:
        return f"{head}; kept ({flag}): the table mixes their results with this code's"
    keep = f"; {flag} keeps them instead" if flag else ""
    return (f"{head}: they are computed again (edits to comments and docstrings do not count "
            f"as a change{keep}){tail}")


def other_weights_note(found: dict[str, Any], total: int, out: Path, *,
                       what: str = "cells", flag: str = "", tail: str = "") -> str:
    """The line a resumed run prints when ``found`` (key → recorded weights digest) of its
    ``total`` ``what`` in ``out`` were computed on other weights of their model (a family
    retrained under the same ids): they are computed again, even where ``flag`` keeps other
    code's cells — results of other weights are not this model's; '' for none."""
    if not found:
        return ""
    keep = f" ({flag} keeps other code's cells, never other weights')" if flag else ""
    return (f"note: {len(found)} of {total} {what} in {out} were computed on other weights "
            f"of their model: they are computed again{keep}{tail}")


_Dir = TypeVar("_Dir", bound="LockedDir")


class LockedDir:
    """A run directory written by one process at a time: ``path``, its signed ``meta.json``
    (:attr:`meta_path`; a LyaDEQ experiment has none) and its ``--out`` lock
    (:class:`noisydeq.store.DirLock`), taken by a subclass's ``open``
    (:func:`noisydeq.store.open_for_writing`) and released by :meth:`close`; a context
    manager that releases the lock on exit."""

    #: whether each cell file records the code that computed it (``code``: :attr:`code`)
    #: and a cell of other code — or one written before cells recorded it — is not served
    #: unless :attr:`keep_other_code` (:meth:`_other_code`; the sweep's cells hold the code
    #: in their keys instead)
    records_code: bool = False
    #: the kind of code fingerprint the cells record (:data:`noisydeq.fingerprint.KINDS`:
    #: the modules their computation can reach, so an edit elsewhere — a command's
    #: message — keeps them; ``package``: every module)
    code_kind: str = "package"

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.lock = store.DirLock(self.path, "--out")
        self.meta_path = self.path / "meta.json"
        #: serve cells of other code (the run's ``--keep-other-code``) instead of treating
        #: them as missing
        self.keep_other_code = False
        #: the cells found computed by other code: key → the code they record (None: a
        #: cell written before cells recorded their code)
        self.other_code: dict[str, str | None] = {}
        #: key → the weights digest (:func:`noisydeq.store.init_hash`) of the model a cell
        #: is computed on, where the caller knows it: recorded with the code; a cell that
        #: records other weights is never served (not even with :attr:`keep_other_code`:
        #: its results are another model's), one that records none (written before cells
        #: recorded them) counts as a cell of unknown code
        self.weights: dict[str, str] = {}
        #: the cells found computed on other weights: key → the digest they record
        self.other_weights: dict[str, str] = {}
        self._code: str | None = None
        #: a resume's ``meta.json``, written with its first cell (:meth:`write_meta`)
        self._pending_meta: dict[str, Any] | None = None

    @property
    def code(self) -> str:
        """This process's :func:`~noisydeq.fingerprint.code_fingerprint` of kind
        :attr:`code_kind` (read once)."""
        if self._code is None:
            self._code = fingerprint.code_fingerprint(self.code_kind)
        return self._code

    @code.setter
    def code(self, value: str) -> None:
        """The code a caller already fingerprinted (a sweep's: the one its keys hold)."""
        self._code = value

    def code_record(self, key: str = "") -> dict[str, str]:
        """What a cell file records of the code that computed it and, when :attr:`weights`
        knows cell ``key``'s model, of its weights (empty unless :attr:`records_code`)."""
        if not self.records_code:
            return {}
        weights = self.weights.get(key)
        return {"code": self.code, **({"weights": weights} if weights else {})}

    def _other_code(self, key: str, data: dict[str, Any]) -> bool:
        """Whether the cell ``key`` (its checked record ``data``) is not served because
        it was computed on other weights than :attr:`weights` gives it (noted in
        :attr:`other_weights`; never kept) or by other code (noted in :attr:`other_code`;
        kept with :attr:`keep_other_code`)."""
        if not self.records_code:
            return False
        weights, found = self.weights.get(key), data.get("weights")
        if weights is not None and isinstance(found, str) and found != weights:
            self.other_weights[key] = found
            return True
        # no weights recorded (written before cells recorded them): unknown code too
        unknown = weights is not None and not isinstance(found, str)
        code = data.get("code")
        if code == self.code and not unknown:
            return False
        self.other_code[key] = code if isinstance(code, str) and not unknown else None
        return not self.keep_other_code

    def read_meta(self) -> dict[str, Any]:
        """``meta.json``, digest checked (a damaged one refused in one line naming it)."""
        return read_recorded_meta(self.path, self.meta_path)

    def recorded_meta(self) -> dict[str, Any] | None:
        """``meta.json`` as :meth:`read_meta` reads it; None when there is none yet."""
        return self.read_meta() if self.meta_path.exists() else None

    #: what a resume changes in ``meta.json`` by itself: its count of resumes and the
    #: package versions it runs with
    RESUME_KEYS = ("resumed", "versions")

    def write_meta(self, meta: dict[str, Any], old: dict[str, Any] | None) -> None:
        """Write ``meta`` as ``meta.json`` (signed) when opening the directory, ``old``
        being the one recorded (:meth:`recorded_meta`; None: none yet), whose start time
        and count of resumes, one more, ``meta`` takes (:func:`resumed_meta`). A resume
        whose meta data differs from ``old`` only in :data:`RESUME_KEYS` waits for its first
        cell (:meth:`cell_written`): a resume that computes nothing leaves ``meta.json`` —
        and so ``SHA256SUMS`` — byte for byte as it was, with the counts and versions of the
        runs that computed."""
        if old is not None:
            resumed_meta(meta, old)
        meta = json.loads(json.dumps(meta, default=str))
        self._pending_meta = None
        def lasting(d: dict[str, Any]) -> dict[str, Any]:
            return {k: v for k, v in d.items() if k not in self.RESUME_KEYS}

        if old is not None and lasting(meta) == lasting(old):
            self._pending_meta = meta
            return
        store.write_signed_json(self.meta_path, meta, indent=2)

    def cell_written(self) -> None:
        """A cell is about to be written: a resume's ``meta.json`` is written first, once
        (:meth:`write_meta`)."""
        if self._pending_meta is not None:
            meta, self._pending_meta = self._pending_meta, None
            store.write_signed_json(self.meta_path, meta, indent=2)

    def close(self) -> None:
        """Release the lock taken by ``open``."""
        self.lock.release()

    def __enter__(self: _Dir) -> _Dir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RunDir(LockedDir):
    """A sweep's run directory (see module docstring); a context manager that releases
    its lock on exit.

    Subclasses reuse the layout for other resumable grids by setting ``spec_cls`` (the
    spec recorded in ``config.toml``, named ``what`` in messages), ``columns`` (the tidy
    table's schema) and ``identity`` (the columns no two rows share).
    """

    spec_cls: type = SweepSpec
    what: str = "sweep"
    #: spec fields the run may grow in (:mod:`noisydeq.extension`); none for other grids
    growable: tuple[str, ...] = GROWABLE
    columns: dict[str, str] = COLUMNS
    identity: tuple[str, ...] = IDENTITY

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__(path)
        self.cells = self.path / "cells"
        #: key → the files of cells this one replaces (the same model, chip and levels
        #: computed from other inputs: other code, weights or data), removed once it is
        #: written (:meth:`save_cell`; a sweep finds them: :meth:`noisydeq.sweep.plan
        #: .CellRunner.superseded`)
        self.superseded: dict[str, list[Path]] = {}
        self.figures = self.path / "figures"
        self.config_path = self.path / "config.toml"
        self.identity_path = self.path / "identity.json"
        self.layers_path = self.path / "layers.csv"
        self.csv_path = self.path / "results.csv"
        self.parquet_path = self.path / "results.parquet"

    def _refuse(self, err: NoisyDEQError) -> NoisyDEQError:
        return refuse_out(self.path, err)

    def read_config(self) -> Any:
        """The run's recorded spec, digest checked (one line naming the file otherwise)."""
        return read_recorded_spec(self.path, self.config_path, self.spec_cls, self.what)

    def check(self, spec: Any) -> Any:
        """Refuse, writing nothing, an ``--out`` that cannot hold ``spec``'s run; returns
        the spec recorded there (None for a new run)."""
        store.check_out_dir(self.path)
        existing = None
        if self.config_path.exists():
            existing = self.read_config()
            old, new = spec_identity(existing), spec_identity(spec)
            if "device_spec" in new:
                old["device_spec"] = self._stored_device(new["device_spec"])
            diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            if "device_spec" in diff:  # name the preset fields that changed
                a, b = old["device_spec"], new["device_spec"]
                fields = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
                diff[diff.index("device_spec")] = "device preset " + ", ".join(fields)
            diff = [k for k in diff if k not in self.growable]  # grows: union_spec
            if diff:
                grows = (f"; a run directory grows only in {', '.join(self.growable)}"
                         if self.growable else "")
                article = "an" if self.what[:1] in "aeiou" else "a"
                raise NoisyDEQError(
                    f"--out {self.path}: its config.toml holds {article} {self.what} with a "
                    f"different config (differs in: {', '.join(diff)}){grows}; choose another --out"
                )
        elif self.cells.exists() or self.csv_path.exists():
            raise NoisyDEQError(
                f"--out {self.path}: holds results without a config.toml; choose another --out"
            )
        self.recorded_meta()
        return existing

    def union(self, spec: Any) -> Any:
        """The spec a run of ``spec`` in this directory runs: ``spec`` itself for a new run
        directory, else the union of its grids and the recorded ones
        (:func:`~noisydeq.extension.union_spec`); refused, writing nothing, like
        :meth:`check`."""
        return self._recorded_and_union(spec)[1]

    def _recorded_and_union(self, spec: Any) -> tuple[Any, Any]:
        """The spec recorded here (:meth:`check`; None for a new run) and :meth:`union`'s."""
        existing = self.check(spec)
        if existing is None or not self.growable:
            return existing, spec
        return existing, union_spec(existing, spec)

    def extensions(self) -> list[dict[str, Any]]:
        """The extensions recorded in ``meta.json`` (oldest first; empty for none)."""
        if not self.meta_path.exists():
            return []
        found = self.read_meta().get("extensions", [])
        return found if isinstance(found, list) else []

    def _stored_device(self, current: dict[str, Any]) -> dict[str, Any]:
        """The device spec recorded when the run began (``identity.json``, digest checked;
        ``current`` for a run directory that has none yet)."""
        if not self.identity_path.exists():
            return current
        try:
            data = store.read_signed_json(self.identity_path, "identity.json")
        except NoisyDEQError as err:
            raise self._refuse(err) from None
        if not isinstance(data.get("device_spec"), dict):
            raise self._refuse(CorruptArtefact(self.identity_path, "holds no device_spec"))
        return data["device_spec"]

    def open(self, spec: Any, extra_meta: dict[str, Any] | None = None) -> bool:
        """Lock the directory for ``spec`` (waiting for another writer), create it or check
        it matches; True when resuming. A sweep asking for more of the :attr:`growable`
        grids extends the run: ``config.toml`` becomes the union spec (:attr:`spec`) and
        ``meta.json``'s ``extensions`` records what was added (:attr:`added`). Everything is
        checked before anything is written; :meth:`close` (or leaving ``with``) releases
        the lock."""
        asked = spec
        # unsealed by the opening: a resumed run is no longer the sealed one (meta.json
        # changes below), so a resume that stops reads as partial, not damaged
        with store.open_for_writing(self.lock, lambda: self._recorded_and_union(asked),
                                    temps=(self.cells, self.figures)) as (checked, created):
            existing, spec = checked
            added: dict[str, Any] = {}
            if existing is not None and self.growable:
                added = added_grids(existing, spec)
            history = self.extensions()
            if added:
                history.append(history_entry(added))
            if existing is None:
                store.atomic_write_text(self.config_path, store.sign_text(dumps_toml(spec)))
            if isinstance(spec, SweepSpec) and (existing is None
                                                or not self.identity_path.is_file()):
                store.write_signed_json(self.identity_path,
                                        {"device_spec": device_identity(spec)}, indent=2)
            meta = {
                "seeds": getattr(spec, "seeds", [getattr(spec, "seed", None)]),
                "config_hash": spec_hash(spec),
                "versions": package_versions(),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                **(extra_meta or {}),
            }
            old = self.recorded_meta()
            if old is not None and isinstance(old.get("title"), str):
                meta.setdefault("title", old["title"])  # a resume without one keeps it
            if history:
                meta["extensions"] = history
            # the history first: a run killed between the two writes recomputes nothing
            # it holds (level_groups), only records the extension again
            self.write_meta(meta, old)
            if added:
                store.atomic_write_text(self.config_path, store.sign_text(dumps_toml(spec)))
            self.cells.mkdir(exist_ok=True)
        self.created = created
        #: the spec this run runs (the union of the recorded and the asked grids) and what
        #: this opening added to the recorded one (:func:`~noisydeq.extension.added_grids`)
        self.spec, self.added = spec, added
        return existing is not None

    def discard(self) -> None:
        """Remove a run directory that :meth:`open` created in this run and that holds no
        cell yet (a sweep refused after opening it leaves nothing behind); call it while
        holding the lock."""
        if not getattr(self, "created", False):
            return
        if self.cells.is_dir() and any(self.cells.iterdir()):
            return
        self.close()
        shutil.rmtree(self.path, ignore_errors=True)

    # ------------------------------------------------------------------ cell log

    @staticmethod
    def cell_file_name(key: str) -> str:
        return hashlib.sha256(key.encode()).hexdigest()[:20] + ".json"

    def cell_path(self, key: str) -> Path:
        return self.cells / self.cell_file_name(key)

    def stray_cells(self, known: Collection[str]
                    ) -> tuple[list[tuple[Path, dict[str, Any]]], int]:
        """The files of ``cells/`` whose names are not in ``known`` (file names, as
        :meth:`cell_file_name` gives them), in name order: those that are cells this
        package wrote (a digest that checks, a string key and a ``noisydeq-cell/`` format
        of any version), each with its record; and how many are no readable cell (damaged,
        or not a cell file). Nothing is removed or written: what a prune removes and what it
        says is its caller's."""
        cells: list[tuple[Path, dict[str, Any]]] = []
        unreadable = 0
        for path in sorted(self.cells.glob("*.json")):
            if path.name in known:
                continue
            try:
                record = store.read_signed_json(path, "cell file")
            except NoisyDEQError:
                record = {}
            if not (isinstance(record.get("key"), str)
                    and str(record.get("format", "")).startswith("noisydeq-cell/")):
                unreadable += 1  # not a cell this package wrote (or damaged): left alone
                continue
            cells.append((path, record))
        return cells, unreadable

    def load_cell(
        self, key: str, expect: Sequence[dict[str, Any]] | None = None, *,
        columns: dict[str, str] | None = None, identity: Sequence[str] | None = None,
    ) -> list[dict[str, Any]] | None:
        """Rows of a finished cell, or None when it has not been written.

        The file's digest, format, key and rows (:func:`check_rows`, against ``expect``,
        with the table's ``columns`` and ``identity`` unless a cell of another schema
        names its own) are checked; a file that fails is a :class:`CorruptArtefact`
        naming it.
        """
        data = self._read_cell(key, expect, columns, identity)
        return None if data is None else data["rows"]

    def load_cell_and_layers(
        self, key: str, expect: Sequence[dict[str, Any]] | None = None,
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]] | None:
        """Rows and per-layer rows (:data:`LAYER_COLUMNS`; empty when it has none) of a
        finished cell from one read of its file, both checked as :meth:`load_cell` checks
        the rows; None when it has not been written."""
        data = self._read_cell(key, expect, None, None, layers=True)
        return None if data is None else (data["rows"], data.get("layers", []))

    def _read_cell(
        self, key: str, expect: Sequence[dict[str, Any]] | None,
        columns: dict[str, str] | None, identity: Sequence[str] | None, layers: bool = False,
    ) -> dict[str, Any] | None:
        """The checked record of cell ``key`` (its per-layer rows too with ``layers``)."""
        p = self.cell_path(key)
        if not p.exists():
            return None
        try:
            data = store.read_signed_json(p, "cell file")
            if data.get("format") != CELL_FORMAT:
                raise CorruptArtefact(p, f"has format {data.get('format')!r}, not {CELL_FORMAT}")
            if data.get("key") != key:
                raise CorruptArtefact(p, f"belongs to cell {data.get('key')!r}, not {key!r}")
            if self._other_code(key, data):
                return None
            check_rows(data.get("rows"), p, expect, columns or self.columns,
                       self.identity if identity is None else identity)
            if layers:
                check_rows(data.get("layers", []), p, columns=LAYER_COLUMNS,
                           identity=LAYER_IDENTITY)
        except CorruptArtefact as err:
            raise CorruptArtefact(p, f"{err.reason}; delete it to compute that cell again"
                                  ) from None
        return data

    def save_cell(
        self, key: str, rows: Sequence[dict[str, Any]],
        layers: Sequence[dict[str, Any]] = (),
    ) -> None:
        """Record a finished cell durably (atomic write with fsync, digest embedded);
        ``layers``: its per-layer rows (:data:`LAYER_COLUMNS`)."""
        record: dict[str, Any] = {"format": CELL_FORMAT, "key": key, "rows": list(rows),
                                  "code": self.code, **self.code_record(key)}
        if layers:
            record["layers"] = list(layers)
        path = self.cell_path(key)
        self.cell_written()
        store.write_signed_json(path, record)
        for old in self.superseded.pop(key, []):  # replaced: unreachable from now on
            if old != path:
                store.remove_file(old)
        if events.active():
            events.emit("cell", run=str(self.path), key=key, rows=len(record["rows"]),
                        values=[{"model": r.get("model_id"), "chip": r.get("chip"),
                                 "metric": r.get("metric"), "snr_db": r.get("snr_db"),
                                 "value": r.get("value")} for r in record["rows"]])

    # --------------------------------------------------------------- final table

    def write_table(self, rows: Iterable[dict[str, Any]],
                    columns: dict[str, str] | None = None) -> tuple[Path, Path]:
        """Write the tidy table as CSV and Parquet, each atomically (the digest list is
        dropped first and rewritten by :meth:`seal`); ``columns``: the table's, when they
        are not the cells' (:attr:`columns`; a sweep's native column, :func:`table_columns`)."""
        rows = list(rows)
        columns = self.columns if columns is None else columns
        # columns, types, no duplicated identity (a sweep: model, chip, SNR)
        check_rows(rows, self.csv_path, columns=columns, identity=self.identity)
        store.remove_manifest(self.path)
        store.atomic_write_bytes(self.csv_path, table_to_csv(rows, columns).encode())
        store.atomic_write_bytes(self.parquet_path, table_to_parquet(rows, columns))
        return self.csv_path, self.parquet_path

    def write_layer_table(self, rows: Iterable[dict[str, Any]]) -> Path:
        """Write the per-layer table (``layers.csv``) atomically."""
        rows = list(rows)
        check_rows(rows, self.layers_path, columns=LAYER_COLUMNS,
                   identity=LAYER_IDENTITY)
        store.atomic_write_bytes(self.layers_path, table_to_csv(rows, LAYER_COLUMNS).encode())
        return self.layers_path

    def seal(self, figures: Iterable[Path] = (), extra: Iterable[Path] = ()) -> Path:
        """Write ``SHA256SUMS`` over the tables, config, identity, meta data, ``figures`` and
        any ``extra`` file of the run."""
        files = [self.csv_path, self.parquet_path, self.layers_path, self.config_path,
                 self.identity_path, self.meta_path, *extra, *figures]
        return store.write_manifest(self.path, [f for f in files if f.is_file()])


def _fmt(value: Any, kind: str) -> str:
    if kind == "float":
        return repr(float(value))  # shortest round-trip text; spells inf, -inf and nan
    return str(value)


def table_to_csv(rows: Sequence[dict[str, Any]], columns: dict[str, str] | None = None) -> str:
    """CSV text of the tidy table (``inf`` / ``nan`` spelled out; floats round-trip exactly);
    ``columns`` (name → ``str``/``int``/``float``) defaults to the sweep's :data:`COLUMNS`."""
    columns = COLUMNS if columns is None else columns
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow([_fmt(r[c], t) for c, t in columns.items()])
    return buf.getvalue()


def _read_float(text: str) -> float:
    """A float column's CSV text (``repr``, ``inf`` / ``nan`` spelled out); an empty cell
    is ``nan``."""
    return math.nan if text == "" else float(text)


def _read_int(text: str) -> int | None:
    """An int column's CSV text; an empty cell is None."""
    return None if text == "" else int(text)


def _read_bool(text: str) -> bool | None:
    """A bool column's CSV text (``True`` / ``False``, as :func:`table_to_csv` writes it);
    an empty cell is None."""
    if text == "":
        return None
    if text not in ("True", "False"):
        raise ValueError(f"{text!r} is not True or False")
    return text == "True"


#: how a declared column's CSV text reads back (``str``/``int``/``float``/``bool``, the
#: kinds :func:`table_to_csv` writes): :func:`read_csv` and :func:`noisydeq.load_results`.
#: An empty cell — a value its writer left out: the training-device SNR of a digitally
#: trained model in a table of an earlier version, a column a study's row lacks
#: (:func:`noisydeq.figures.csv_text`) — is a missing value: ``nan`` (float), None (int,
#: bool); a text cell reads as written, empty included (``noisydeq certify``'s ``param`` of
#: a model without one: its Parquet table holds the same empty text).
CSV_READERS: dict[str, Callable[[str], Any]] = {"str": str, "int": _read_int,
                                                 "float": _read_float, "bool": _read_bool}


def read_cell(text: str, kind: str, path: str | os.PathLike, line: int, column: str) -> Any:
    """One declared cell of a CSV table (:data:`CSV_READERS`); a cell that is not of its
    ``kind`` is one :class:`CorruptArtefact` naming ``path``, ``line`` and ``column``."""
    try:
        return CSV_READERS[kind](text)
    except ValueError:
        raise CorruptArtefact(Path(path), f"line {line}: column {column} holds {text!r}, not "
                              f"a{'n' if kind == 'int' else ''} {kind}") from None


def read_csv(
    path: str | os.PathLike, columns: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """Read a run's results CSV (or, with ``columns=LAYER_COLUMNS``, its layers.csv) back
    into typed rows (checked against its ``SHA256SUMS``): an empty cell is a missing value
    (:data:`CSV_READERS`); a column ``columns`` does not declare, or a cell not of its type,
    is one :class:`CorruptArtefact` naming the file."""
    columns = SWEEP_TABLE_COLUMNS if columns is None else columns
    store.verify_listed(path)
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        unknown = [c for c in reader.fieldnames or [] if c not in columns]
        if unknown:
            raise CorruptArtefact(Path(path), f"has column {unknown[0]}, which its table "
                                  "does not declare (a table of another command or version)")
        return [{c: read_cell(v, columns[c], path, line, c) for c, v in row.items()}
                for line, row in enumerate(reader, start=2)]


def _arrow_column(values: Sequence[Any], kind: str) -> Any:
    """One column of the Parquet table as an Arrow array without nulls, built from its
    buffers: ``pa.array`` imports pandas to check whether the values are a pandas object
    (~0.3 s, the only use of pandas in a sweep); the array, and so the file, is the same
    (tests/test_results_parquet.py)."""
    import numpy as np
    import pyarrow as pa

    n = len(values)
    if any(v is None for v in values):  # nulls: pyarrow's own conversion
        return pa.array(values, type={"str": pa.string(), "int": pa.int64(),
                                      "bool": pa.bool_()}.get(kind, pa.float64()))
    if kind == "bool":  # bit-packed, least significant bit first
        bits = np.packbits(np.array(values, dtype=bool), bitorder="little")
        return pa.Array.from_buffers(pa.bool_(), n, [None, pa.py_buffer(bits)])
    if kind == "str":
        data = [v.encode("utf-8") for v in values]
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum([len(b) for b in data], out=offsets[1:])
        if offsets[-1] >= 2**31:  # beyond 32-bit offsets: pyarrow's own conversion
            return pa.array(values, type=pa.string())
        return pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(
            offsets.astype(np.int32)), pa.py_buffer(b"".join(data))])
    typed = np.array(values, dtype=np.int64 if kind == "int" else np.float64)
    return pa.Array.from_buffers(pa.int64() if kind == "int" else pa.float64(), n,
                                 [None, pa.py_buffer(typed)])


def table_to_parquet(rows: Sequence[dict[str, Any]], columns: dict[str, str] | None = None
                     ) -> bytes:
    """Parquet bytes of the tidy table with explicit column types (``columns`` as for
    :func:`table_to_csv`)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = COLUMNS if columns is None else columns
    types = {"str": pa.string(), "int": pa.int64(), "float": pa.float64(),
             "bool": pa.bool_()}
    schema = pa.schema([(c, types[t]) for c, t in columns.items()])
    table = pa.Table.from_arrays([_arrow_column([r[c] for r in rows], t)
                                  for c, t in columns.items()], schema=schema)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()
