"""The resumable run directory of ``noisydeq certify``: one signed cell per (model, ε).

Layout of ``<out>/`` (the sweep's rules, :class:`noisydeq.results.RunDir`)::

    meta.json        the certify settings, package versions, start time (signed)
    cells/<h>.json   the rows (one per envelope) of one model at one radius, with the code
                     and the weights digest that computed them (signed, written atomically)
    results.csv      the table over the cells of this run's grid, and results.parquet
    figures/         certified_vs_eps (an experiment's files beside: table2.md, ...)
    SHA256SUMS       digests of the tables, meta.json and figures (``sha256sum -c``)

A cell's key holds what its rows depend on: the model's label and weights digest
(:func:`noisydeq.store.init_hash`), the radius, a digest of the test inputs and labels, and
the settings (envelope: the device preset's content, chip, coverage, k, dynamic, read-noise
K; PGD steps, restarts and seed; clipping; batch size). A rerun serves every cell it finds
and computes the others, so an interrupted run (Ctrl-C between cells) resumes where it
stopped, another ε grid computes only its new radii, and a served cell keeps the
``seconds`` the run that computed it measured: a resume that computes nothing leaves every
file byte for byte as it was. A cell computed by other noisydeq code is computed again (one
line says how many); a damaged cell file is refused in one line naming it, as a sweep's is
(deleting it computes that cell again), before the table is touched. On Ray the workers
compute the missing cells and this process alone writes.
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


class CertifyDir(RunDir):
    """A certify run directory (module docstring): the sweep's cell store and lock, no
    ``config.toml`` — each cell's key holds the settings, so any grid may share ``--out``."""

    what = "certify run"
    records_code = True  # a cell of other code is computed again
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
    """One model (index ``i`` of the run's members) at one radius."""

    i: int
    eps: float
    key: str
    weights: str
    expect: list[dict[str, Any]]


def plan_cells(members: Sequence[Any], plans: Sequence[list[Plan]], x: torch.Tensor,
               y: torch.Tensor, spec: Any) -> list[CertifyCell]:
    """The cells of the run, in the table's order (model, then ε; a cell's rows: one per
    envelope)."""
    inputs, settings = inputs_digest(x, y), settings_digest(spec)
    out = []
    for i, (m, pl) in enumerate(zip(members, plans, strict=True)):
        label, weights = model_label(m), store.init_hash(m.model)
        envs = ["none" if p.envelope is None else p.envelope.label for p in pl]
        for eps in spec.eps:
            key = f"{RUN_KIND}|{label}|{weights}|{float(eps)!r}|{inputs}|{settings}"
            expect = [{"model_id": label, "eps": float(eps), "envelope": e} for e in envs]
            out.append(CertifyCell(i, float(eps), key, weights, expect))
    return out


@dataclass
class CertifyResult:
    rows: list[dict[str, Any]]
    files: list[Path]
    computed: int = 0
    served: int = 0
    other_code: int = 0
    cells: list[CertifyCell] = field(default_factory=list)


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
    meta: dict[str, Any] | None = None,
) -> CertifyResult:
    """Certify ``members`` (``plans`` from :func:`~noisydeq.analysis.certified.plan`) into
    the run directory ``out`` (module docstring), serving the cells it holds; then, still
    holding its lock, ``write(rows)`` (atomic writers: the tables and figures, returning
    their paths) and ``SHA256SUMS`` over them and ``meta.json``. ``backend``: a Ray
    :class:`~noisydeq.cluster.Backend` computes the missing cells there (its session
    joined by the caller)."""
    from noisydeq.analysis.certify_ray import certify_cells

    cells = plan_cells(members, plans, x, y, spec)
    with CertifyDir(out) as rd:
        rd.open_run({"settings": spec.model_dump(mode="json"), **(meta or {})})
        rd.weights.update({c.key: c.weights for c in cells})
        found: dict[str, list[dict[str, Any]]] = {}
        todo = []
        for c in {c.key: c for c in cells}.values():  # a radius given twice: one cell
            got = rd.served(c.key, c.expect)
            if got is None:
                todo.append(c)
            else:
                found[c.key] = got
        note = other_code_note(rd.other_code, len(cells), rd.path,
                               recorded="their code and weights")
        if note and echo is not None:
            echo(note)

        def saved(cell: CertifyCell, rows: list[dict[str, Any]]) -> None:
            rows = [{c: r[c] for c in COLUMNS} for r in rows]
            rd.save_cell(cell.key, rows)
            found[cell.key] = rows

        certify_cells(members, plans, x, y, spec, todo, saved, echo, backend)
        rows = rows_of(cells, plans, found)  # the manifest went with open_run: unsealed
        files = write(rows)
        files.append(store.write_manifest(rd.path, [*files, rd.meta_path]))
    return CertifyResult(rows, files, len(todo), len(found) - len(todo),
                         len(rd.other_code), cells)


def cells_line(result: CertifyResult, out: Path) -> str:
    """What a run computed and what it served."""
    return (f"cells: {result.computed} computed, {result.served} served from {out}"
            if result.served else f"cells: {result.computed} computed")


def check_out(out: Path) -> None:
    """:meth:`CertifyDir.check_out` without taking the lock (before any work)."""
    CertifyDir(out).check_out()
