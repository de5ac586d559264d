"""Plan: which models (the trained families, :func:`family_models`), which cells (the
level chunks of every (model, chip) pair and which of them a run directory still lacks:
:class:`CellRunner`), and how many processes evaluate them (:func:`resolve_jobs`).

:meth:`CellRunner.run_pair` computes a pair's missing cells (:mod:`noisydeq.sweep.evaluate`)
and hands each one's rows to a ``save`` callback: the run directory in the driver, the
pipe to the driver in a worker process.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from noisydeq.extension import level_groups
from noisydeq.results import RunDir
from noisydeq.runtime import job_count, resolve_torch_device
from noisydeq.specs.sweep import NATIVE_LEVEL, SweepSpec, is_native
from noisydeq.sweep.base import CELL_VERSION, CellKey, SweepModel, fmt_db, level_chunks
from noisydeq.sweep.evaluate import evaluate_cell, layer_rows, stats_rows
from noisydeq.sweep.hardware import Hardware

#: training inputs every layer is calibrated on (the first ones of the task's training set)
CALIBRATION_INPUTS = 512

ModelProvider = Callable[[SweepSpec, Any, bool], list[SweepModel]]


def family_models(spec: SweepSpec, task: Any, progress: bool = True) -> list[SweepModel]:
    """Trained (or cached) depth-matched families, one per (seed, training SNR) of ``spec``.

    Uses :func:`noisydeq.families.train_family`; members come back in depth order, DEQ then
    FFW, as evaluated and tabulated.
    """
    from noisydeq.families import sweep_family_specs, train_family

    log = None
    if progress:
        from noisydeq.progress import write

        log = write
    out = []
    for seed, tsnr, dev, dsnr, fspec in sweep_family_specs(spec):
        family = train_family(fspec, task, torch_device=spec.torch_device,
                              quiet=not progress, log=log)
        members = sorted(family.members, key=lambda m: (m.depth, m.kind))
        out += [
            SweepModel(m.model, m.kind, m.depth, m.width, m.params, seed, tsnr, dev, dsnr)
            for m in members
        ]
    return out


def _test_tensors(task: Any, spec: SweepSpec, torch_device: torch.device) -> tuple[Tensor, Tensor]:
    x, y = task.x_test, task.y_test
    if spec.max_test_samples is not None:
        x, y = x[: spec.max_test_samples], y[: spec.max_test_samples]
    return x.to(torch_device), y.to(torch_device)


def resolve_jobs(
    jobs: int | str | None, spec: SweepSpec, pending_pairs: int, parallel_ok: bool = True
) -> int:
    """Evaluation processes for a sweep: :func:`noisydeq.runtime.job_count` of ``jobs``.

    ``auto`` (default) = one process per CPU core, at most one per pending (model, chip)
    pair. Cells are independent and deterministic, so any number of processes gives the
    same table — but with more than one, *every* process evaluates with one torch thread
    (so a cell is computed alike by whichever process takes it), which equals
    ``--jobs 1 --threads 1``: the thread count changes floating-point rounding. On this
    2-core machine one process with two threads evaluated the default sweep in 20 s, two
    single-threaded processes in 13 s: the per-level device reads are many small
    operations, which two threads barely share. Parallel evaluation needs models that a
    worker can load (the family cache) and the CPU; otherwise one process is used.
    """
    n = job_count(jobs)
    if not parallel_ok or resolve_torch_device(spec.torch_device).type != "cpu":
        return 1
    return max(1, min(n, pending_pairs))


class CellRunner:
    """Evaluates the cells of (model, chip) pairs and saves them into the run directory."""

    def __init__(
        self, spec: SweepSpec, task: Any, run_dir: RunDir | None, hardware: Hardware,
        torch_device: torch.device, *, groups: list[list[float]] | None = None,
        content: str | None = None, code: str | None = None,
    ) -> None:
        """``run_dir`` None: a runner without a run directory (a Ray worker's, which only
        computes: :mod:`noisydeq.sweep.ray_cells`); it is given the driver's calibration
        ``groups`` and cell ``content`` digest instead of reading them. ``code``: the
        sweep's :func:`~noisydeq.fingerprint.code_fingerprint` (kind ``sweep``) when the
        caller has it (a worker, after checking it is the driver's); else computed here,
        once, for the content digest and what the driver tells its workers
        (:attr:`code`)."""
        from noisydeq.hardware.calibration_store import code_fingerprint

        self.code = code_fingerprint("sweep") if code is None else code
        self.spec, self.run_dir, self.hardware = spec, run_dir, hardware
        from noisydeq.results import columns_for

        if run_dir is not None:
            run_dir.columns = columns_for(spec)
            run_dir.code = self.code  # what its cell files record: the code their keys hold
        self.torch_device = torch_device
        self.task_name = task.name
        self.x, self.y = _test_tensors(task, spec, torch_device)
        self.classification = task.kind == "classification"
        self.metric = "accuracy" if self.classification else "mse"
        # the grid the run began with and each extension's new levels are chunked apart,
        # so the cells an extended run already holds keep their keys (noisydeq.extension)
        self.chunks: list[list[float]] = []
        if groups is None:
            assert run_dir is not None
            groups = level_groups(spec.snr_db, run_dir.extensions())
        hardware.level_groups = groups or [[]]  # [[]]: the native level alone
        for group in hardware.level_groups:
            self.rows_per_batch, chunks = level_chunks(group, self.x.shape[0], spec.max_rows)
            self.chunks += chunks
        #: the native level: a chunk of its own, after the grid's (the grid's cells keep
        #: their keys whether or not the sweep asks for it); its rows' snr_db
        self.native_db: float | None = None
        if spec.snr_native:
            self.chunks.append([NATIVE_LEVEL])
            self.native_db = hardware.native_row_db()
        calib_x = getattr(task, "x_train", None)
        self.calib_x = None if calib_x is None else calib_x[:CALIBRATION_INPUTS].to(torch_device)
        self.content = self._content() if content is None else content
        self._model_hashes: dict[int, str] = {}
        #: saved cells :meth:`missing` read, until :meth:`take` hands them on: key ->
        #: (rows, per-layer rows)
        self._saved: dict[str, tuple[list[dict], list[dict]]] = {}
        #: the names of the cell files of another chunking of the levels this run took
        #: rows from (:meth:`rechunked`), kept by :meth:`prune`
        self.served_from: set[str] = set()

    def _content(self) -> str:
        """Digest of every input of a cell's results besides the model and its place: the
        resolved device spec (not its path), noise mode, calibration, the test and
        calibration data and the sweep's code (:func:`~noisydeq.hardware.calibration_store
        .code_fingerprint` of kind ``sweep``: the modules the sweep package can import)."""
        import hashlib

        from noisydeq.results import device_identity
        from noisydeq.store import hash_tensor

        h = hashlib.blake2b(digest_size=10)
        h.update(repr((device_identity(self.spec), self.spec.swept_mode, self.spec.calibration,
                       self.code)).encode())
        for t in (self.x, self.y, self.calib_x):
            if t is not None:
                hash_tensor(h, t.detach().cpu())
        return h.hexdigest()

    def model_hash(self, sm: SweepModel) -> str:
        """Digest of a model's weights (part of its cells' keys), computed once."""
        from noisydeq.store import init_hash

        mh = self._model_hashes.get(id(sm.model))
        if mh is None:
            mh = self._model_hashes[id(sm.model)] = init_hash(sm.model)
        return mh

    def cell_key(self, sm: SweepModel, chip: int, levels: Sequence[float]) -> CellKey:
        """The fields of a cell's key: version, model id and weights digest, chip, levels
        and :meth:`_content`."""
        return CellKey.of(sm.model_id, self.model_hash(sm), chip, levels, self.content)

    def key(self, sm: SweepModel, chip: int, levels: Sequence[float]) -> str:
        """Cell key, the text of :meth:`cell_key` (:class:`~noisydeq.sweep.base.CellKey`)."""
        return self.cell_key(sm, chip, levels).to_key()

    def expected(self, sm: SweepModel, chip: int, levels: Sequence[float]) -> list[dict]:
        """What the rows of a cell must say (everything but the measured values)."""
        fixed = {"task": self.task_name, "model_id": sm.model_id, "kind": sm.kind,
                 "depth": int(sm.depth), "width": int(sm.width), "params": int(sm.params),
                 "seed": int(sm.seed), "train_snr_db": float(sm.train_snr_db),
                 "device": self.spec.device, "noise_site": self.spec.noise_site,
                 "noise_mode": self.spec.swept_mode,
                 "chip": int(chip), "metric": self.metric, "n_samples": int(self.x.shape[0]),
                 **{k: v for k, v in sm.training_columns(self.spec).items()
                    if not (isinstance(v, float) and math.isnan(v))}}
        return [{**fixed, "snr_db": self.row_level(s)} for s in levels]

    def row_level(self, level: float) -> float:
        """The ``snr_db`` a level's rows carry: the level, or for the native level the
        device's native SNR of the swept part (:meth:`Hardware.native_row_db`)."""
        if is_native(level):
            assert self.native_db is not None
            return self.native_db
        return float(level)

    def load(self, sm: SweepModel, chip: int, levels: Sequence[float]) -> list[dict] | None:
        """The saved rows of a cell (checked against :meth:`expected`), or None."""
        found = self._read(sm, chip, levels)
        return None if found is None else found[0]

    def _read(self, sm: SweepModel, chip: int,
              levels: Sequence[float]) -> tuple[list[dict], list[dict]] | None:
        """A saved cell's rows and per-layer rows, both checked, from one read of its file."""
        return self.run_dir.load_cell_and_layers(self.key(sm, chip, levels),
                                                 self.expected(sm, chip, levels))

    def missing(self, sm: SweepModel, chip: int) -> list[list[float]]:
        """The level chunks of (sm, chip) not yet saved in the run directory; the saved
        ones are kept for :meth:`take` (the run directory is locked: they stay as read)."""
        todo = []
        for levels in self.chunks:
            found = self._read(sm, chip, levels)
            if found is None:
                todo.append(levels)
            else:
                self._saved[self.key(sm, chip, levels)] = found
        return todo

    def rechunked(self, models: Sequence[SweepModel],
                  todo: dict[tuple[int, int], list[list[float]]]) -> int:
        """Take out of ``todo`` ((model index, chip) → the level chunks :meth:`missing`
        gave) the chunks whose every level a saved cell of another chunking holds — a run
        of another ``max_rows``, whose rows are these, bitwise (noise keyed by test-sample
        index: the docstring of :mod:`noisydeq.sweep`) — and keep their rows for
        :meth:`take`; returns how many. Such a cell counts when it has the same model,
        weights, chip and inputs (content: code, device, data) and its rows pass the
        checks of a cell read for its own key; its file is then kept by :meth:`prune`
        (:attr:`served_from`)."""
        if not any(todo.values()):
            return 0
        others = self._other_cells(models)
        reads: dict[str, tuple[list[dict], list[dict]] | None] = {}  # each file read once
        served = 0
        for (i, chip), chunks in todo.items():
            sm = models[i]
            group = others.get((sm.model_id, self.model_hash(sm), int(chip), self.content))
            if not group:
                continue
            for levels in list(chunks):
                found = self._from_cells(sm, chip, levels, group, reads)
                if found is not None:
                    chunks.remove(levels)
                    self._saved[self.key(sm, chip, levels)] = found
                    served += 1
        return served

    def _other_cells(self, models: Sequence[SweepModel]
                     ) -> dict[tuple[str, str, int, str], list[tuple[CellKey, Path]]]:
        """The readable cell files of this cell version outside the plan of ``models``, by
        (model id, weights, chip, content), with their keys: cells of other level chunks
        among them."""
        from noisydeq.results import CELL_FORMAT

        rd = self.run_dir
        assert rd is not None
        found: dict[tuple[str, str, int, str], list[tuple[CellKey, Path]]] = {}
        if not rd.cells.is_dir():
            return found
        known = {rd.cell_file_name(self.key(sm, chip, levels)) for sm in models
                 for chip in range(self.spec.chips) for levels in self.chunks}
        for path, record in rd.stray_cells(known)[0]:  # no readable cell: served from never
            old = CellKey.from_key(record["key"])
            if old is None or old.version != CELL_VERSION or record.get("format") != CELL_FORMAT:
                continue
            found.setdefault((old.model_id, old.weights, old.chip, old.content),
                             []).append((old, path))
        return found

    def _from_cells(self, sm: SweepModel, chip: int, levels: Sequence[float],
                    group: list[tuple[CellKey, Path]],
                    reads: dict[str, tuple[list[dict], list[dict]] | None]
                    ) -> tuple[list[dict], list[dict]] | None:
        """The rows and per-layer rows of cell (sm, chip, ``levels``) taken level by level
        from the cells of ``group`` (:meth:`rechunked`), each read and checked as
        :meth:`_read` reads a cell (``reads``: key → what a read gave, None for a damaged
        file, kept across calls); None unless every level is found, once."""
        from noisydeq.errors import NoisyDEQError

        value = {fmt_db(s): s for chunk in self.chunks for s in chunk}
        want = [fmt_db(s) for s in levels]
        rows: dict[str, list[dict]] = {}
        layers: dict[str, list[dict]] = {}
        used: list[str] = []
        for old, path in group:
            texts = old.levels.split(",")
            if not set(texts) & (set(want) - set(rows)) or not set(texts) <= set(value):
                continue
            key = old.to_key()
            if key not in reads:
                try:
                    reads[key] = self.run_dir.load_cell_and_layers(
                        key, self.expected(sm, chip, [value[t] for t in texts]))
                except NoisyDEQError:  # damaged: the chunk is computed, the file left alone
                    reads[key] = None
            found = reads[key]
            if found is None:
                continue
            for t in set(texts) & (set(want) - set(rows)):
                rows[t] = [r for r in found[0] if fmt_db(r["snr_db"]) == t]
                layers[t] = [r for r in found[1] if fmt_db(r["snr_db"]) == t]
            used.append(path.name)
        if set(rows) != set(want) or any(len(rows[t]) != 1 for t in want):
            return None
        self.served_from.update(used)
        return [rows[t][0] for t in want], [r for t in want for r in layers[t]]

    def take(self, sm: SweepModel, chip: int,
             levels: Sequence[float]) -> tuple[list[dict], list[dict]] | None:
        """A saved cell's rows and per-layer rows for the table: as :meth:`missing` found
        it, else (computed since) read once now; None when it was never saved."""
        found = self._saved.pop(self.key(sm, chip, levels), None)
        return found if found is not None else self._read(sm, chip, levels)

    def superseded(self, models: Sequence[SweepModel],
                   todo: dict[tuple[int, int], list[list[float]]]) -> list[str]:
        """The lines saying why cells of the run directory are computed again: for each
        missing cell (``todo``: (model index, chip) → its missing level chunks) whose
        model, chip and levels a cell file of other inputs holds — other code (or a file
        written before cells recorded it), other weights of the model, other data — that
        file is registered in the run directory's ``superseded`` (removed once the cell is
        written again, :meth:`noisydeq.results.RunDir.save_cell`) and counted in one
        line per reason. Files of no missing cell are left as they are."""
        from noisydeq.errors import NoisyDEQError
        from noisydeq.results import REPLACED, other_code_note, other_weights_note
        from noisydeq.store import read_signed_json

        rd = self.run_dir
        assert rd is not None
        pending = {new.slot: new for (i, chip), chunks in todo.items() for levels in chunks
                   for new in [self.cell_key(models[i], chip, levels)]}
        if not pending or not rd.cells.is_dir():
            return []
        known = {rd.cell_file_name(self.key(sm, chip, levels)) for sm in models
                 for chip in range(self.spec.chips) for levels in self.chunks}
        code: dict[str, str | None] = {}
        weights: dict[str, str | None] = {}
        data: set[str] = set()
        for path in sorted(rd.cells.glob("*.json")):
            if path.name in known:
                continue
            try:
                record = read_signed_json(path, "cell file")
            except NoisyDEQError:  # not a readable cell: no cell's, left alone
                continue
            old = CellKey.from_key(record["key"]) if isinstance(record.get("key"), str) \
                else None
            new = None if old is None else pending.get(old.slot)
            if old is None or new is None:
                continue
            key = new.to_key()
            rd.superseded.setdefault(key, []).append(path)
            made_by = record.get("code")
            if made_by != self.code:
                code[key] = made_by if isinstance(made_by, str) else None
            elif old.weights != new.weights:
                weights[key] = old.weights
            else:
                data.add(key)
        total = len(models) * self.spec.chips * len(self.chunks)
        lines = [other_code_note(code, total, rd.path, tail=REPLACED),
                 other_weights_note({k: w for k, w in weights.items() if k not in code},
                                    total, rd.path, tail=REPLACED)]
        data -= code.keys() | weights.keys()
        if data:
            lines.append(f"note: {len(data)} of {total} cells in {rd.path} were computed on "
                         f"other test or calibration data: they are computed again{REPLACED}")
        return [line for line in lines if line]

    def prune(self, models: Sequence[SweepModel]) -> tuple[int, list[str]]:
        """Delete the cell files of the run directory that no cell of this sweep's plan
        (``models`` × chips × level chunks) reads, once every cell of the plan is written;
        returns the lines saying how many and why (none when there were none).

        Such a file is never read — the table is built from the plan's cells only
        (:meth:`take`) — and no resume of this run directory asks for it: a run directory
        only grows (:func:`~noisydeq.extension.union_spec`), so every grid it was asked for
        is part of the plan. What leaves files outside it: cells of an older cell format,
        of models the sweep no longer holds (an id that changed, e.g. a width), of another
        chunking of the SNR levels (another ``max_rows``: their rows are the plan cells'
        rows, cut differently) and files a recompute replaced but was stopped before
        removing (:meth:`superseded`). A file that is no readable cell is left as it is
        and counted in a line of its own. Call it with the directory locked."""
        from noisydeq import store
        from noisydeq.results import CELL_FORMAT

        rd = self.run_dir
        assert rd is not None
        if not rd.cells.is_dir():
            return 0, []
        keys = [self.cell_key(sm, chip, levels) for sm in models
                for chip in range(self.spec.chips) for levels in self.chunks]
        # and the cells of another chunking this run's table took rows from
        known = {rd.cell_file_name(k.to_key()) for k in keys} | self.served_from
        slots = {k.slot for k in keys}
        ids = {sm.model_id for sm in models}
        why = {"format": "of an older cell format", "models": "of models the sweep no "
               "longer holds", "chips": "of chips the sweep does not hold",
               "chunks": "of another chunking of the SNR levels (another max_rows; the "
               "plan's cells hold their rows)", "replaced": "replaced by the plan's cell of "
               "the same model, chip and levels (a recompute stopped before removing them)"}
        found: dict[str, int] = {}
        cells, unreadable = rd.stray_cells(known)
        for path, record in cells:
            key = record["key"]
            old = CellKey.from_key(key)
            if record["format"] != CELL_FORMAT or old is None or old.version != CELL_VERSION:
                reason = "format"
            elif old.model_id not in ids:
                reason = "models"
            elif old.chip not in range(self.spec.chips):
                reason = "chips"
            elif old.slot not in slots:
                reason = "chunks"
            else:
                reason = "replaced"
            store.remove_file(path)
            found[reason] = found.get(reason, 0) + 1
        lines = []
        n = sum(found.values())
        if n:
            parts = "; ".join(f"{found[r]} {text}" for r, text in why.items() if r in found)
            lines.append(f"note: removed {n} cell file{'s' * (n != 1)} from {rd.cells} that "
                         f"no cell of this sweep reads ({parts}); results.csv never held "
                         "them, and a run directory only grows, so no resume of it reads "
                         "them")
        if unreadable:
            lines.append(f"note: {unreadable} file{'s' * (unreadable != 1)} in {rd.cells} "
                         f"{'are' if unreadable != 1 else 'is'} no readable cell file of "
                         "this noisydeq: left as "
                         f"{'they are' if unreadable != 1 else 'it is'} (never read)")
        return n, lines

    def run_pair(
        self, sm: SweepModel, chip: int, on_cell: Callable[[int, str, float], None],
        todo: list[list[float]] | None = None,
        save: Callable[[str, list[dict[str, Any]], list[dict[str, Any]]], None] | None = None,
    ) -> None:
        """Compute and save the missing cells of ``sm`` on chip ``chip``, calling
        ``on_cell(1, key, seconds)`` after each (``seconds``: this process's CPU time for
        the cell, the first cell's with the chip's programming and calibration: what the
        sweep's time left learns its costs from; ``todo``: the level chunks
        :meth:`missing` gave, when the caller already asked; ``save(key, rows, layers)``:
        where a finished cell goes, default the run directory — a worker process hands it
        to the driver instead)."""
        save = self.run_dir.save_cell if save is None else save
        todo = self.missing(sm, chip) if todo is None else todo
        if not todo:
            return
        since = time.process_time()
        sm.model.to(self.torch_device).eval()
        deployed = self.hardware.chip(sm.model, sm.seed, chip, self.calib_x)
        for levels in todo:
            stats = evaluate_cell(
                sm, deployed, self.x, self.y, levels, chip, self.spec, self.hardware,
                self.classification, self.rows_per_batch, self.spec.batched,
            )
            shown = [self.row_level(s) for s in levels]
            rows = stats_rows(sm, stats, shown, chip, self.spec, self.task_name, self.metric)
            key = self.key(sm, chip, levels)
            save(key, rows, layer_rows(sm, stats, shown, chip, self.spec))
            on_cell(1, key, time.process_time() - since)
            since = time.process_time()  # on_cell's own work (a driver saving workers'
            # cells) is not this pair's
        self.hardware.store_chips(deployed)
