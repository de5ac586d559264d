"""The resumable run directory of ``noisydeq certify``: one signed cell per (model, ε).

Layout of ``<out>/`` (the sweep's rules, :class:`noisydeq.results.RunDir`)::

    meta.json        the certify settings, the models' labels, the file names of the cells
                     of the run's grid, package versions, start time (signed)
    cells/<h>.json   the rows (one per envelope) of one model at one radius, with the code
                     and the weights digest that computed them (signed, written atomically)
    results.csv      the table over the cells of this run's grid, and results.parquet
    figures/         certified_vs_eps (an experiment's files beside: table2.md, ...)
    SHA256SUMS       digests of the tables, meta.json and figures (``sha256sum -c``)

A cell's key holds what its rows depend on: the model's label and weights digest
(:func:`noisydeq.store.init_hash`), the radius, a digest of the test inputs and labels, and
the settings (envelope: the device preset's content, chip, coverage, k, dynamic, read-noise
K; PGD steps, restarts and seed; clipping; batch size). The digital row of a model at a
radius (envelope ``none``: exact weights) depends on no envelope setting, so it has a
*digital cell* of its own, keyed by the settings with the envelope ones at their defaults
(:data:`ENVELOPE_FIELDS`) — the very cell a run without ``--device`` writes. A run with a
device keeps one cell per (model, ε) holding the digital row and the envelope's (its key
unchanged by the digital cells), and writes the digital cell beside it when it computes
that row: another device, chip or coverage on the same ``--out`` computes only the
envelope rows, the digital ones served from their cells. A rerun serves every cell it finds
and computes the others, so an interrupted run (Ctrl-C between cells) resumes where it
stopped, another ε grid computes only its new radii, and a served cell keeps the
``seconds`` the run that computed it measured: a resume that computes nothing leaves every
file byte for byte as it was. A cell computed by other noisydeq code is computed again (one
line says how many); a damaged cell file is refused in one line naming it, as a sweep's is
(deleting it computes that cell again), before the table is touched. On Ray the workers
compute the missing cells and this process alone writes.

Cells of other radii, models or settings than a run's stay (a run asking for them again
serves them) but are never read into its table; the run's last line counts them, and
``prune=True`` (``noisydeq certify --prune``) removes them once its table is written —
with a line saying how many. Nothing is removed otherwise; a file in ``cells/`` that is no
readable cell is left as it is either way, in a line of its own.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from noisydeq import store
from noisydeq.analysis.certified import COLUMNS, Plan, model_label
from noisydeq.errors import NoisyDEQError
from noisydeq.results import RunDir, other_code_note, package_versions

#: what names a certify run in its ``meta.json`` (and a cell key's first field)
RUN_KIND = "certify"
#: the columns no two rows of one cell share
IDENTITY = ("model_id", "envelope", "eps")
#: the ``meta.json`` entry listing the file names of the cells of the run's grid (its
#: digital cells too): ``noisydeq runs`` counts them complete or missing, the others as of
#: no current grid (:mod:`noisydeq.commands.runs`, which reads it without this module)
GRID = "grid_cells"


class CertifyDir(RunDir):
    """A certify run directory (module docstring): the sweep's cell store and lock, no
    ``config.toml`` — each cell's key holds the settings, so any grid may share ``--out``."""

    what = "certify run"
    records_code = True  # a cell of other code is computed again
    code_kind = "certify"  # the code its computation reaches (noisydeq.fingerprint)
    growable = ()
    columns = COLUMNS
    identity = IDENTITY

    def check_out(self) -> dict[str, Any] | None:
        """Refuse, writing nothing, an ``--out`` that cannot be written, holds another
        command's run (a sweep's or an attack's: its ``config.toml``) or a ``meta.json``
        that is not a certify run's; returns that ``meta.json`` (None: none yet)."""
        store.check_out_dir(self.path)
        if self.config_path.exists():
            raise NoisyDEQError(f"--out {self.path}: holds a run of another command "
                                "(config.toml); choose another --out")
        old = self.recorded_meta()
        if old is not None and old.get("run") != RUN_KIND:
            raise NoisyDEQError(f"--out {self.path}: its meta.json is not a certify run's; "
                                "choose another --out")
        return old

    def open_run(self, meta: dict[str, Any]) -> bool:
        """Lock the directory (waiting for another writer) and record ``meta`` (a resume
        whose meta data differs only in its count and versions writes it with its first
        cell); True when resuming."""
        opening = store.open_for_writing(self.lock, self.check_out,
                                         temps=(self.cells, self.figures))
        with opening as (old, created):  # unsealed until this run seals again
            full = {"run": RUN_KIND, **meta, "versions": package_versions(),
                    "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            self.write_meta(full, old)
            self.cells.mkdir(exist_ok=True)
        self.created = created
        return old is not None

    def others(self, keys: set[str], prune: bool) -> tuple[int, int]:
        """The cell files of ``cells/`` that no key in ``keys`` reads — cells of other
        radii, models, settings or an older cell format —, removed with ``prune``; and the
        files there that are no readable cell (left as they are). Call it locked."""
        known = {self.cell_file_name(k) for k in keys}
        cells, unreadable = self.stray_cells(known)
        if prune:
            for path, _ in cells:
                store.remove_file(path)
        other = len(cells)
        return other, unreadable

    def served(self, key: str, expect: Sequence[dict[str, Any]]
               ) -> list[dict[str, Any]] | None:
        """The rows of cell ``key`` (in :data:`COLUMNS` order), None when it is to be
        computed: not written, or computed by other code (noted). A damaged file is
        refused in one line naming it (:class:`~noisydeq.errors.CorruptArtefact`: delete
        it to compute that cell again), never used."""
        rows = self.load_cell(key, expect)
        return None if rows is None else [{c: r[c] for c in COLUMNS} for r in rows]


def inputs_digest(x: torch.Tensor, y: torch.Tensor) -> str:
    """Digest of the test inputs and labels certified."""
    h = hashlib.blake2b(digest_size=10)
    store.hash_tensor(h, x, "x")
    store.hash_tensor(h, y, "y")
    return h.hexdigest()


#: the CertifySpec fields that shape only a device envelope: a digital row depends on none
ENVELOPE_FIELDS = ("device", "chip", "coverage", "k", "dynamic", "read_k")


def digital_spec(spec: Any) -> Any:
    """``spec`` with its envelope settings (:data:`ENVELOPE_FIELDS`) at their defaults: what
    the digital rows' cells are keyed by (a run without ``--device``'s own spec: an envelope
    setting without a device is refused, :func:`~noisydeq.specs.certify.check_device_options`)."""
    fields = type(spec).model_fields
    return spec.model_copy(update={f: fields[f].get_default(call_default_factory=True)
                                   for f in ENVELOPE_FIELDS})


def settings_digest(spec: Any) -> str:
    """Digest of what a cell's rows depend on besides its model, radius and inputs: the
    settings of ``spec`` but its ε grid and ``n_test`` (the inputs digest holds the
    samples), the device by its preset's content."""
    from noisydeq.specs.device_presets import preset_content

    data = spec.model_dump(mode="json", exclude={"eps", "n_test"})
    if spec.device is not None:
        data["device"] = preset_content(spec.device)
    return store.config_hash(data)


@dataclass
class CertifyCell:
    """One model (index ``i`` of the run's members) at one radius. ``digital``: the key of
    its digital cell when this cell holds envelope rows too (a run with a device; None: the
    cell is the digital one); ``served``: the digital rows taken from that cell, when this
    one is computed (then only its envelope rows are)."""

    i: int
    eps: float
    key: str
    weights: str
    expect: list[dict[str, Any]]
    digital: str | None = None
    served: list[dict[str, Any]] = field(default_factory=list)

    @property
    def first(self) -> int:
        """The index of the first plan (envelope) this cell computes."""
        return len(self.served)


def plan_cells(members: Sequence[Any], plans: Sequence[list[Plan]], x: torch.Tensor,
               y: torch.Tensor, spec: Any) -> list[CertifyCell]:
    """The cells of the run, in the table's order (model, then ε; a cell's rows: one per
    envelope, the digital row first)."""
    inputs, settings = inputs_digest(x, y), settings_digest(spec)
    digital = settings_digest(digital_spec(spec))
    out = []
    for i, (m, pl) in enumerate(zip(members, plans, strict=True)):
        label, weights = model_label(m), store.init_hash(m.model)
        envs = ["none" if p.envelope is None else p.envelope.label for p in pl]
        for eps in spec.eps:
            head = f"{RUN_KIND}|{label}|{weights}|{float(eps)!r}|{inputs}"
            expect = [{"model_id": label, "eps": float(eps), "envelope": e} for e in envs]
            if len(pl) == 1:  # the digital row alone: the digital cell
                out.append(CertifyCell(i, float(eps), f"{head}|{digital}", weights, expect))
            else:
                out.append(CertifyCell(i, float(eps), f"{head}|{settings}", weights, expect,
                                       digital=f"{head}|{digital}"))
    return out


@dataclass
class CertifyResult:
    rows: list[dict[str, Any]]
    files: list[Path]
    computed: int = 0
    served: int = 0
    other_code: int = 0
    cells: list[CertifyCell] = field(default_factory=list)
    #: of the ``computed`` cells, those whose digital rows were served from their digital
    #: cells (only their envelope rows computed)
    digital_served: int = 0
    #: cell files of ``cells/`` no cell of this run reads (other radii, models, settings,
    #: an older format): kept, or removed when ``pruned``; files there that are no cell
    other_cells: int = 0
    pruned: bool = False
    unreadable: int = 0


def rows_of(cells: Sequence[CertifyCell], plans: Sequence[list[Plan]],
            found: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The table's rows in the order of a run that certified everything here (member,
    envelope, ε)."""
    by_model: dict[int, list[CertifyCell]] = {}
    for c in cells:
        by_model.setdefault(c.i, []).append(c)
    return [found[c.key][p] for i, cs in by_model.items() for p in range(len(plans[i]))
            for c in cs]


def certify_run(
    members: Sequence[Any], plans: Sequence[list[Plan]], x: torch.Tensor, y: torch.Tensor,
    spec: Any, out: Path, write: Callable[[list[dict[str, Any]]], list[Path]], *,
    echo: Callable[[str], None] | None = None, backend: Any = None,
    meta: dict[str, Any] | None = None, prune: bool = False,
    notes: Callable[[str], None] | None = None,
) -> CertifyResult:
    """Certify ``members`` (``plans`` from :func:`~noisydeq.analysis.certified.plan`) into
    the run directory ``out`` (module docstring), serving the cells it holds; then, still
    holding its lock, ``write(rows)`` (atomic writers: the tables and figures, returning
    their paths) and ``SHA256SUMS`` over them and ``meta.json``. ``backend``: a Ray
    :class:`~noisydeq.cluster.Backend` computes the missing cells there (its session
    joined by the caller). ``prune``: then remove the cell files no cell of this run reads
    (:meth:`CertifyDir.others`; counted in :attr:`CertifyResult.other_cells` either way).
    ``echo``: progress lines; ``notes`` (default ``echo``): the line on cells of other code
    computed again, which a quiet run still says."""
    from noisydeq.analysis.certify_ray import certify_cells

    cells = plan_cells(members, plans, x, y, spec)
    keys = {c.key for c in cells} | {c.digital for c in cells if c.digital is not None}
    with CertifyDir(out) as rd:
        # what ``noisydeq runs`` tells this run by, without loading a model: the models'
        # labels and the file names of the cells of this grid (digital cells too)
        rd.open_run({"settings": spec.model_dump(mode="json"),
                     "models": list(dict.fromkeys(model_label(m) for m in members)),
                     GRID: sorted(rd.cell_file_name(k) for k in keys), **(meta or {})})
        rd.weights.update({c.key: c.weights for c in cells})
        rd.weights.update({c.digital: c.weights for c in cells if c.digital is not None})
        found: dict[str, list[dict[str, Any]]] = {}
        todo = []
        for c in {c.key: c for c in cells}.values():  # a radius given twice: one cell
            got = rd.served(c.key, c.expect)
            if got is not None:
                found[c.key] = got
                continue
            if c.digital is not None:  # its digital row may be served: not computed again
                c.served = rd.served(c.digital, c.expect[:1]) or []
            todo.append(c)
        note = other_code_note(rd.other_code, len(keys), rd.path,  # digital cells too
                               recorded="their code and weights")
        say = notes or echo  # notes: the lines a quiet run still says (cells of other code)
        if note and say is not None:
            say(note)

        def saved(cell: CertifyCell, rows: list[dict[str, Any]]) -> None:
            rows = [{c: r[c] for c in COLUMNS} for r in rows]
            if cell.digital is not None and not cell.served:  # its digital row: for any
                rd.save_cell(cell.digital, rows[:1])         # other envelope's run too
            rows = cell.served + rows
            rd.save_cell(cell.key, rows)
            found[cell.key] = rows

        certify_cells(members, plans, x, y, spec, todo, saved, echo, backend)
        rows = rows_of(cells, plans, found)  # the manifest went with open_run: unsealed
        files = write(rows)
        files.append(store.write_manifest(rd.path, [*files, rd.meta_path]))
        other, unreadable = rd.others(keys, prune)
    return CertifyResult(rows, files, len(todo), len(found) - len(todo),
                         len(rd.other_code), cells, sum(bool(c.served) for c in todo),
                         other, prune, unreadable)


def cells_line(result: CertifyResult, out: Path) -> str:
    """What a run computed and what it served (and of the computed cells, those whose
    digital rows were served: another envelope of the models and radii it holds)."""
    line = (f"cells: {result.computed} computed, {result.served} served from {out}"
            if result.served else f"cells: {result.computed} computed")
    if result.digital_served:
        line += (f" ({result.digital_served} of the computed only in their envelope rows: "
                 f"the digital rows served from {out})")
    n, cells = result.other_cells, Path(out) / "cells"
    files = f"{n} cell file{'s' * (n != 1)}"
    if n and result.pruned:
        line += (f"\nremoved {files} from {cells} that no cell of this run reads (other "
                 "radii, models or settings, or an older cell format)")
    elif n:
        line += (f"\nnote: {files} in {cells} {'belong' if n != 1 else 'belongs'} to no cell "
                 "of this run (other radii, models or settings, or an older cell format): "
                 "never in its table, kept so that a run asking for "
                 f"{'them serves them' if n != 1 else 'it serves it'}; --prune removes "
                 f"{'them' if n != 1 else 'it'}")
    if result.unreadable:
        k = result.unreadable
        line += (f"\nnote: {k} file{'s' * (k != 1)} in {cells} {'are' if k != 1 else 'is'} "
                 "no readable cell file of this noisydeq: left as "
                 f"{'they are' if k != 1 else 'it is'} (never read)")
    return line


def check_out(out: Path) -> None:
    """:meth:`CertifyDir.check_out` without taking the lock (before any work)."""
    CertifyDir(out).check_out()
