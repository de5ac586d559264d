"""A sweep served by a read-only cache (:func:`noisydeq.runtime.read_only_cache`): a lab's
shared cache on a read-only mount, a colleague's directory without write permission.

A sweep writes three kinds of entry into the cache — trained models, calibrated knobs,
programmed chips — and its table into its own run directory. From a read-only cache it runs
when the cache holds every entry it needs, and is refused in one line naming the first one
it lacks (:func:`noisydeq.runtime.cache_lacks`) before anything is written, its run
directory included: :func:`check_read_only_sweep` names each entry as the run would look it
up — the members' keys (:func:`noisydeq.families.require_members`), then, for every (model,
chip) pair with a cell to compute, its calibration entries (one per level group) and its
programmed-chips entry, keyed with the thread count the pair is evaluated with — and loads
the models (read without their lock: :func:`noisydeq.train.train_model`), which the run then
uses. A resumed or extended run directory counts: only the pairs with cells missing need
entries, calibrated by the level groups the opened run will have.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from noisydeq.runtime import cache_lacks, cache_root, num_threads
from noisydeq.specs.sweep import SweepSpec
from noisydeq.sweep.base import SweepModel
from noisydeq.sweep.hardware import Hardware
from noisydeq.sweep.plan import CellRunner, family_models, resolve_jobs


def check_read_only_sweep(
    spec: SweepSpec, out_dir: str | Path, task: Any, hardware: Hardware,
    torch_device: torch.device, *, train_threads: int | None, eval_threads: int | None,
    jobs: int | str | None, ray: bool = False, progress: bool = True,
) -> list[SweepModel]:
    """The models of the sweep ``spec`` (its run directory ``out_dir``, not yet opened),
    loaded from the read-only cache after every entry the run needs was found there; else
    the one line naming the first it lacks. Writes nothing."""
    from noisydeq.families import require_members, sweep_family_specs

    with num_threads(1 if ray else train_threads):  # Ray members train with one thread
        require_members([f for *_, f in sweep_family_specs(spec)], task,
                        torch_device=spec.torch_device)
        models = family_models(spec, task, progress)
    if not hardware.direct:
        _require_device_entries(spec, out_dir, task, hardware, torch_device, models,
                                eval_threads, jobs, ray)
    return models


def _groups(spec: SweepSpec, run_dir: Any) -> list[list[float]]:
    """The calibration groups of the run directory once this sweep has opened it
    (:meth:`noisydeq.results.RunDir.open`: the extension it adds is recorded then)."""
    from noisydeq.extension import added_grids, history_entry, level_groups, union_spec

    history = run_dir.extensions()
    existing = run_dir.check(spec)
    if existing is not None and run_dir.growable:
        added = added_grids(existing, union_spec(existing, spec))
        if added:
            history.append(history_entry(added))
    return level_groups(spec.snr_db, history)


def _require_device_entries(
    spec: SweepSpec, out_dir: str | Path, task: Any, hardware: Hardware,
    torch_device: torch.device, models: list[SweepModel], eval_threads: int | None,
    jobs: int | str | None, ray: bool,
) -> None:
    """Refuse the first calibration or programmed-chips entry a pair with cells to compute
    would look up and the cache lacks."""
    from noisydeq.results import RunDir

    run_dir = RunDir(out_dir)
    there = run_dir.path.is_dir()
    runner = CellRunner(spec, task, run_dir if there else None, hardware, torch_device,
                        groups=_groups(spec, run_dir))
    pairs = [(i, chip) for i in range(len(models)) for chip in range(spec.chips)]
    if there:
        todo = {p: runner.missing(models[p[0]], p[1]) for p in pairs}
        runner.rechunked(models, todo)
    else:
        todo = {p: list(runner.chunks) for p in pairs}
    pending = [p for p in pairs if todo[p]]
    if not pending:
        return
    grid = [s for group in hardware.level_groups for s in group if math.isfinite(s)]
    if spec.noise_site == "device" and grid:
        # the driver's range check programs chip 0 of each model with the evaluation's
        # thread count (noisydeq.sweep.write: check_reachable) and keeps its chips
        with num_threads(eval_threads):
            for i in sorted({i for i, _ in pending}):
                _require_pair(spec, hardware, models[i], 0, runner.calib_x, calibrated=False)
    n_jobs = 1 if ray else resolve_jobs(jobs, spec, len(pending))
    # evaluated with one thread in a parallel or Ray run (the thread count is in the keys)
    with num_threads(1 if ray or n_jobs > 1 else eval_threads):
        for i, chip in pending:
            _require_pair(spec, hardware, models[i], chip, runner.calib_x, calibrated=True)


def _require_pair(spec: SweepSpec, hardware: Hardware, sm: SweepModel, chip: int,
                  calib_x: torch.Tensor | None, *, calibrated: bool) -> None:
    """The calibration entries (``calibrated``) and the programmed-chips entry of model
    ``sm`` on ``chip``, as :meth:`Hardware.chip` looks them up under this thread count."""
    from noisydeq.hardware import chip_store
    from noisydeq.hardware.calibration_store import entry_name
    from noisydeq.hardware.controls import device_layers
    from noisydeq.noise import derive_seed

    root = cache_root()
    device = hardware.device.new_chip(derive_seed(sm.seed, "chip", chip))
    was = sm.model.training
    sm.model.eval()  # as a pair is evaluated: the mode is part of a calibration key
    try:
        deployed = device.deploy(sm.model, digital_layers=spec.digital_layers).eval()
        if not device_layers(deployed):
            return
        levels = [[s for s in group if math.isfinite(s)] for group in hardware.level_groups]
        if calibrated and spec.noise_site == "device":
            for group in (g for g in levels if g):  # a group without finite levels: none
                name = entry_name(sm.model, device, calib_x, group, spec.calibration)
                path = root / "calibration" / name
                if not path.is_file():
                    span = ",".join(f"{s:g}" for s in group)
                    raise cache_lacks("calibration", f"{sm.model_id} chip {chip} at {span} dB",
                                      path)
        if not chip_store.enabled() or not (any(levels) or spec.snr_native):
            return  # noise-free chips are never stored
        cache = chip_store.ChipCache(deployed, device, root)
        storable = any(layer.n_out * layer.n_in * 4 <= chip_store.LAYER_BYTES
                       for layer in cache.layers.values())
        if storable and not cache.path.is_file():
            raise cache_lacks("programmed chips", f"{sm.model_id} chip {chip}", cache.path)
    finally:
        sm.model.train(was)
