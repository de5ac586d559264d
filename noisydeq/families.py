"""Depth-matched DEQ / FFW families, trained once and cached by a hash of what defines them.

For each FFW depth n the family holds FFW(n layers of ``hidden`` units) and a DEQ whose one
cell has ``matched_width(n, hidden)`` units, so both have the same number of hidden weights
(paper App. E.1: 128, 223, 288, 340, 386, 427, 467 for n = 1, 3, …, 13); both share the task's
input projection x̃ = act(U x) and output head shapes (Eq. 57). Members are initialised from
``derive_seed(seed, kind, depth)`` and trained with :func:`noisydeq.train.train_model`.

Cache: ``$NOISYDEQ_CACHE`` (default ``platformdirs.user_cache_dir("noisydeq")``) /
``models/<hash>/``, where ``<hash>`` is :func:`noisydeq.store.config_hash` of the member's full
training config (:func:`noisydeq.train_config.run_config`: model spec, initial-weight hash, resolved
train spec with noise and device, task name + seed + data fingerprint, torch device type,
package and torch versions, training schema). A second call with the same inputs loads the
weights instead of training; a member killed mid-training resumes from its last epoch.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from noisydeq.errors import NoisyDEQError
from noisydeq.noise import derive_seed
from noisydeq.runtime import cache_root, read_only_cache
from noisydeq.specs.base import build
from noisydeq.specs.device_presets import HELD_QUANTITIES, check_held
from noisydeq.specs.family import FamilySpec
from noisydeq.specs.model import MONOTONE_KINDS, ModelSpec
from noisydeq.specs.sweep import SweepSpec
from noisydeq.specs.training import TrainSpec
from noisydeq.store import config_hash
from noisydeq.tasks.base import Task
from noisydeq.train import TrainResult, train_model
from noisydeq.train_config import training_config


@dataclass
class Member:
    """One trained family member and its record."""

    kind: str
    depth: int
    width: int
    params: int
    model: nn.Module
    result: TrainResult
    cached: bool

    @property
    def key(self) -> str:
        return self.result.config_hash


@dataclass
class Family:
    """The trained members of a :class:`FamilySpec`, DEQ and FFW per depth."""

    spec: FamilySpec
    task_name: str
    members: list[Member] = field(default_factory=list)
    seconds: float = 0.0

    def get(self, kind: str, depth: int) -> Member:
        """The member of ``kind`` matched to FFW ``depth``."""
        for m in self.members:
            if m.kind == kind and m.depth == depth:
                return m
        raise KeyError((kind, depth))

    @property
    def trained_seconds(self) -> float:
        """Training time spent in this call (cached members count 0; a resumed member
        counts this call's part, not its earlier runs')."""
        return sum(m.result.run_seconds for m in self.members if not m.cached)


def member_spec(spec: FamilySpec, task: Task, kind: str, depth: int) -> ModelSpec:
    """The :class:`ModelSpec` of one member (a DEQ is matched to the FFW depth; a LyaDEQ has
    ``hidden`` units and the family's Lyapunov settings). ``spec.cell`` gives the cell and its
    options (``noisydeq.models.extra.fit_to_task`` checks them against the task).

    The family's ``ffw_form`` enters FFW members only: a DEQ's spec (and cache key) does not
    depend on the form of the FFW it is compared with.
    """
    from noisydeq.models.extra import fit_to_task

    data: dict[str, Any] = {
        "kind": kind, "in_features": task.in_features, "out_features": task.out_features,
        "width": spec.hidden, "depth": depth, "matched": True, "input_act": spec.input_act,
        **fit_to_task(spec.cell.fields(), task),
    }
    if kind == "ffw" and spec.ffw_form is not None:
        data["ffw_form"] = spec.ffw_form
    if kind in MONOTONE_KINDS and spec.monotone is not None:
        data["monotone"] = spec.monotone
    if kind == "lyadeq":
        data["lyapunov"] = spec.lyapunov
    return build(ModelSpec, data, where="family member")


def build_member(mspec: ModelSpec, seed: int) -> nn.Module:
    """A freshly initialised member; the global RNG is forked so callers are unaffected."""
    from noisydeq.models import build_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, mspec.kind, mspec.depth, mspec.width) % (2**63))
        return build_model(mspec)


def prepared_member(
    spec: FamilySpec, task: Task, kind: str, depth: int, root: Path, dev: torch.device
) -> tuple[nn.Module, TrainSpec, Path]:
    """(initialised model, its train spec, its cache entry ``root/<config hash>``) of one
    member: the single place a member's cache key is made (training and lookup agree)."""
    model = build_member(member_spec(spec, task, kind, depth), spec.seed)
    tspec = spec.train_spec(kind)
    return model, tspec, root / config_hash(training_config(model, task, tspec, dev))


def cached_member(
    spec: FamilySpec, task: Task, kind: str, depth: int, *,
    cache_dir: str | os.PathLike | None = None, torch_device: str | torch.device | None = None,
) -> tuple[nn.Module, TrainSpec, str, str | None]:
    """(one member's initial model, its train spec, its cache entry — the name
    :func:`train_family` trains it under, its config hash — and the weights digest
    (:func:`noisydeq.store.init_hash`) of the finished model that entry holds, None when it
    holds none), without training the member or loading it into a model: only its initial
    model is built, for the key. The checkpoint is read with its SHA-256 digest and config
    hash checked; one that fails counts as none (:func:`train_family` reports it and trains
    the member again)."""
    from noisydeq.train import finished_weights

    dev = torch.device(torch_device) if torch_device is not None else torch.device("cpu")
    model, tspec, entry = prepared_member(spec, task, kind, depth,
                                          cache_root(cache_dir) / "models", dev)
    return model, tspec, entry.name, finished_weights(entry, entry.name)


def cached_weights(
    spec: FamilySpec, task: Task, kind: str, depth: int, *,
    cache_dir: str | os.PathLike | None = None, torch_device: str | torch.device | None = None,
) -> tuple[str, str | None]:
    """(a member's cache entry, the weights digest of the finished model it holds or None):
    :func:`cached_member` without the initial model."""
    _, _, entry, weights = cached_member(spec, task, kind, depth, cache_dir=cache_dir,
                                         torch_device=torch_device)
    return entry, weights


def require_members(specs: Iterable[FamilySpec], task: Task, *,
                    cache_dir: str | os.PathLike | None = None,
                    torch_device: str | torch.device | None = None) -> None:
    """Refuse in one line (:func:`noisydeq.runtime.cache_lacks`) the first member of the
    families ``specs`` (in :func:`train_family`'s order) whose cache entry holds no finished
    model: what a command checks before it writes anything when the cache is read-only
    (:func:`noisydeq.runtime.read_only_cache`), training being out of the question. Only
    initial models are built, for the keys (under the caller's thread count, which is part
    of them); a damaged model is refused when it is loaded, before the command writes."""
    from noisydeq.runtime import cache_lacks
    from noisydeq.train import MODEL_FILE

    dev = torch.device(torch_device) if torch_device is not None else torch.device("cpu")
    root = cache_root(cache_dir) / "models"
    for spec in specs:
        for depth in spec.depths:
            for kind in spec.kinds:
                model, _, entry = prepared_member(spec, task, kind, depth, root, dev)
                if not (entry / MODEL_FILE).is_file():
                    raise cache_lacks("model", f"{kind} d{depth} w{model.width} seed {spec.seed}",
                                      entry, cache_dir)


def train_family(
    spec: FamilySpec,
    task: Task | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    torch_device: str | torch.device | None = None,
    quiet: bool = True,
    log: Any = None,
) -> Family:
    """Train (or load from the cache) every member of ``spec``; FFW and DEQ per depth.

    ``task`` defaults to ``load_task(spec.task, spec.data_dir, spec.data_seed)``. ``log(text)``
    receives one line per member (trained / loaded, metric, seconds). A read-only cache
    (:func:`noisydeq.runtime.read_only_cache`) serves a family it holds whole; else the
    first member it lacks is refused in one line (:func:`require_members`) before any is
    loaded.
    """
    from noisydeq.specs.task_names import check_run_data_dir

    # the spec's data directory: the commands' one rule (exists; a task that reads files)
    check_run_data_dir(spec.data_dir, [spec.task], "the family's")
    t0 = time.perf_counter()
    if task is None:
        from noisydeq.tasks import load_task

        task = load_task(spec.task, data_dir=spec.data_dir, seed=spec.data_seed)
    dev = torch.device(torch_device) if torch_device is not None else torch.device("cpu")
    if read_only_cache(cache_dir):  # every member cached, or one line naming the first not
        require_members([spec], task, cache_dir=cache_dir, torch_device=dev)
    root = cache_root(cache_dir) / "models"
    family = Family(spec=spec, task_name=task.name)
    from noisydeq.progress import progress

    jobs = [(d, k) for d in spec.depths for k in spec.kinds]
    bar = progress(jobs, desc="family", unit="models", disable=quiet)
    for depth, kind in bar:
        model, tspec, entry = prepared_member(spec, task, kind, depth, root, dev)
        name = f"{kind} d{depth} w{model.width}"
        bar.set_postfix_str(name)
        result = train_model(model, task, tspec, out_dir=entry, torch_device=dev, quiet=quiet,
                             desc=name)
        params = sum(p.numel() for p in result.model.parameters())
        family.members.append(Member(kind, depth, int(model.width), params, result.model,
                                     result, cached=result.loaded))
        if log is not None:
            how = "cached" if result.loaded else result.trained_in()
            log(f"{name}: {task.metric_name} {result.test_metric:.4f} ({how})")
    bar.close()
    family.seconds = time.perf_counter() - t0
    return family


def member_matrices(kind: str, depth: int, hidden: int, in_features: int,
                    out_features: int) -> tuple[int, list[tuple[int, int]]]:
    """(width, the (n_out, n_in) of every weight matrix) of an MLP family member, without
    building it (Eq. 57): U, the hidden layers or the DEQ cell, the output head — the layers
    a device deploys."""
    from noisydeq.models.matching import matched_width

    if kind in ("ffw", "ffw_relu"):
        width, hidden_layers = hidden, depth
    elif kind == "lyadeq":  # never matched; the Eq. 7 cell's two layers (ICNN not counted)
        width, hidden_layers = hidden, 2
    else:
        width, hidden_layers = matched_width(depth, hidden), 1
    return width, [(width, in_features), *[(width, width)] * hidden_layers,
                   (out_features, width)]


def member_size(kind: str, depth: int, hidden: int, in_features: int,
                out_features: int) -> tuple[int, int]:
    """(width, parameter count) of an MLP family member, without building it: its
    :func:`member_matrices`, the hidden layers' (or the DEQ cell's) biases and the head's."""
    width, matrices = member_matrices(kind, depth, hidden, in_features, out_features)
    hidden_biases = (len(matrices) - 2) * width
    return width, sum(o * i for o, i in matrices) + hidden_biases + out_features


def check_sweep_families(sweep: SweepSpec, task: Task, jobs: int = 1) -> None:
    """Validate what a sweep's families need before anything is written: each (seed,
    training SNR) family spec, each member's model spec (its cell fits the task), the
    training spec of each kind, and whether the sweep fits into memory with ``jobs``
    evaluation processes (:func:`sweep_memory`, :func:`noisydeq.limits.check_memory`)."""
    from noisydeq import limits

    check_training_devices(sweep)
    batch = 1
    built: dict[tuple[str, int], nn.Module] = {}  # the first family's members (digital_layers)
    for seed, _tsnr, _dev, _dsnr, fspec in sweep_family_specs(sweep):
        for kind in fspec.kinds:
            batch = max(batch, fspec.train_spec(kind).batch_size)
            for depth in fspec.depths:
                mspec = member_spec(fspec, task, kind, depth)
                if sweep.digital_layers and seed == sweep.seeds[0]:
                    from noisydeq.hardware.base import check_digital_layers

                    model = build_member(mspec, seed)
                    check_digital_layers(model, sweep.digital_layers)
                    built.setdefault((kind, depth), model)
    sizes = [member_size(k, d, sweep.hidden, task.in_features, task.out_features)
             for d in sweep.depths for k in sweep.kinds]
    width, params = max(sizes, key=lambda s: s[1])
    each = f" in each of {jobs} processes" if jobs > 1 else ""
    limits.check_memory(
        sweep_memory(sweep, task, batch, jobs, built),
        f"sweep: its largest model (width {width}, {params:,} parameters){each}",
        sweep.torch_device,
        ("lower --jobs, " if jobs > 1 else "lower ") + "--depths, hidden or max_rows",
    )


def sweep_memory(sweep: SweepSpec, task: Task, batch: int = 1, jobs: int = 1,
                 members: Mapping[tuple[str, int], nn.Module] | None = None) -> int:
    """Estimated peak bytes of a sweep (``batch``: its largest training batch) evaluated by
    ``jobs`` processes (:func:`noisydeq.sweep.plan.resolve_jobs`). Every process holds the
    task's tensors and every family's weights (a worker loads them from the cache) and
    evaluates one member at a time on one forward of rows
    (:func:`noisydeq.limits.model_bytes`) with, on an RRAM device, the chips its device
    layers keep (:func:`held_chip_bytes`: the in-memory chip cache and the chips kept for
    the on-disk one; layers in ``digital_layers`` hold none); the driver alone trains, on
    ``batch`` rows. ``members``: the first family's members by (kind, depth), where the
    caller has built them (:func:`check_sweep_families`), for :func:`device_matrices`."""
    from noisydeq import limits

    n_test = len(task.x_test)
    if sweep.max_test_samples is not None:
        n_test = min(n_test, sweep.max_test_samples)
    rows = max(1, min(n_test, sweep.max_rows))
    rows *= min(len(sweep.snr_db), max(1, sweep.max_rows // rows))  # levels stacked
    scales = programmed_scales(sweep)
    driver, worker, resident = 0, 0, 0
    for d in sweep.depths:
        for k in sweep.kinds:
            w, p = member_size(k, d, sweep.hidden, task.in_features, task.out_features)
            resident += p
            chips = held_chip_bytes(device_matrices(
                sweep, task, k, d, (members or {}).get((k, d))), scales) if scales else 0
            driver = max(driver, limits.model_bytes(p, max(rows, batch), w) + chips)
            worker = max(worker, limits.model_bytes(p, rows, w) + chips)
    families = sweep.family_count()
    data = sum(t.nbytes for t in (task.x_train, task.y_train, task.x_test, task.y_test))
    held = data + limits.FLOAT * families * resident
    return jobs * held + driver + (jobs - 1) * worker


def device_matrices(sweep: SweepSpec, task: Task, kind: str, depth: int,
                    model: nn.Module | None = None) -> list[tuple[int, int]]:
    """(n_out, n_in) of each layer of a member that a sweep deploys on its device: the
    member's :func:`member_matrices` less the layers ``digital_layers`` keep digital (with
    everything inside them, as :meth:`noisydeq.hardware.base.Device.deploy` does), read off
    ``model`` (the member of the sweep's first family; built here when None)."""
    _, matrices = member_matrices(kind, depth, sweep.hidden, task.in_features,
                                  task.out_features)
    if not sweep.digital_layers:
        return matrices
    from noisydeq.hardware.base import check_digital_layers, mappable_names

    if model is None:
        fspec = next(sweep_family_specs(sweep))[-1]
        model = build_member(member_spec(fspec, task, kind, depth), sweep.seeds[0])
    keep = check_digital_layers(model, sweep.digital_layers)
    left = list(matrices)
    for name in mappable_names(model):
        if any(name == k or name.startswith(f"{k}.") or not k for k in keep):
            weight = model.get_submodule(name).weight
            shape = (int(weight.shape[0]), int(weight[0].numel()))
            if shape in left:
                left.remove(shape)
    return left


def programmed_scales(sweep: SweepSpec) -> int:
    """Noise scales one RRAM layer programs a chip at while a sweep evaluates one (model,
    chip) pair, at most (one search per level and layer): under device noise, each finite
    level's search for its static knob (:class:`noisydeq.hardware.calibration.KnobTable`:
    the quarter-decade grid between the knob's bounds, then at most
    :data:`~noisydeq.hardware.calibration.SEARCH_STEPS` probes per level, and the level's
    knob itself) and the two bounds of the reach check; else the native knob alone; 0 off
    an RRAM device."""
    from noisydeq.hardware.calibration import SEARCH_STEPS, TABLE_STEP
    from noisydeq.hardware.rram import S_MAX, S_MIN
    from noisydeq.specs.device_presets import load_spec

    if load_spec(sweep.device).kind != "rram":
        return 0
    levels = len({float(s) for s in sweep.snr_db if math.isfinite(s)})
    if sweep.noise_site != "device" or not levels:
        return 1
    grid = math.ceil(math.log(S_MAX / S_MIN) / TABLE_STEP) + 2  # and the clamped ends
    return grid + levels * (SEARCH_STEPS + 1) + 2


def held_chip_bytes(matrices: list[tuple[int, int]], scales: int) -> int:
    """Most bytes of programmed chips the RRAM layers of one deployed model (``matrices``:
    each one's (n_out, n_in)) hold when each programs ``scales`` noise scales: per layer the
    chips its in-memory cache keeps (:data:`~noisydeq.hardware.rram.CHIP_CACHE_BYTES`, at
    least :data:`~noisydeq.hardware.rram.CHIP_CACHE_MIN`) and, with the on-disk chip cache
    on, those kept to be written (:data:`~noisydeq.hardware.chip_store.LAYER_BYTES` of W_t)
    which the in-memory cache has dropped — each chip holding the storage it was programmed
    in: a small layer's (W_prog, W_t) pair, a large one's W_t alone."""
    from noisydeq import limits
    from noisydeq.hardware import chip_store
    from noisydeq.hardware.rram import CHIP_CACHE_BYTES, CHIP_CACHE_MIN

    total = 0
    for n_out, n_in in matrices:
        w = limits.FLOAT * n_out * n_in
        storage = 2 * w if 2 * w * CHIP_CACHE_MIN <= CHIP_CACHE_BYTES else w
        in_memory = max(CHIP_CACHE_MIN, CHIP_CACHE_BYTES // storage)
        shelf = chip_store.LAYER_BYTES // w if chip_store.enabled() else 0
        total += min(scales, in_memory + shelf) * storage
    return total


def check_training_devices(sweep: SweepSpec) -> None:
    """Each training device of ``sweep`` exists and reaches each training SNR in the
    training noise mode (its reference MVM), one line otherwise — before anything runs;
    ``train_adc_gain = "epoch"`` needs one that measures an ADC gain,
    ``train_drift_alpha = "epoch"`` one with a drift compensation, ``train_programming =
    "epoch"`` one with programming noise (:data:`~noisydeq.specs.device_presets.
    HELD_QUANTITIES`, :func:`~noisydeq.specs.device_presets.check_held`)."""
    from noisydeq.hardware import get_device, load_spec

    devices = []
    for dev, dsnr in sweep.training_devices():
        if dev is None:
            continue
        try:
            load_spec(dev)
            get_device(dev, snr_db=dsnr, noise_mode=sweep.train_noise_mode)
        except NoisyDEQError as err:
            raise NoisyDEQError(f"train_device: {err}") from None
        devices.append(dev)
    for key, held in HELD_QUANTITIES.items():
        if getattr(sweep, held.sweep_field) == "epoch":
            check_held(key, devices, held.sweep_field)


def sweep_family_specs(
    sweep: SweepSpec,
) -> Iterator[tuple[int, float, str | None, float | None, FamilySpec]]:
    """(seed, training SNR, training device, its SNR, family spec) of every family a sweep
    trains, in the sweep's order (seeds, then training SNRs, then training devices)."""
    for seed in sweep.seeds:
        for tsnr in sweep.train_snr_db:
            for dev, dsnr in sweep.training_devices():
                yield seed, tsnr, dev, dsnr, family_spec_for_sweep(sweep, seed, tsnr, dev, dsnr)


def family_spec_for_sweep(
    sweep: SweepSpec, seed: int, train_snr_db: float, train_device: str | None = None,
    train_device_snr_db: float | None = None,
) -> FamilySpec:
    """The :class:`FamilySpec` one (seed, training SNR, training device and its SNR) of a
    :class:`SweepSpec` needs (``train_device`` None: trained digitally)."""
    train: dict[str, Any] = {}
    if train_device is not None:
        if train_device_snr_db is not None:
            train["device_snr_db"] = train_device_snr_db
        if sweep.train_noise_mode != "physical":
            train["device_noise_mode"] = sweep.train_noise_mode
        if sweep.digital_layers:
            train["digital_layers"] = list(sweep.digital_layers)
        for key, held in HELD_QUANTITIES.items():
            if getattr(sweep, held.sweep_field) == "epoch" and held.has(train_device):
                train[key] = "epoch"
        if sweep.train_calibration != "epoch" and train_device_snr_db is not None:
            train["device_calibration"] = sweep.train_calibration
    if sweep.epochs is not None:
        train["epochs"] = sweep.epochs
    if sweep.max_train_samples is not None:
        train["max_train_samples"] = sweep.max_train_samples
    if sweep.test_solver is not None:
        train["test_solver"] = sweep.test_solver
    return build(
        FamilySpec,
        {"task": sweep.task, "data_dir": sweep.data_dir, "depths": sweep.depths,
         "kinds": sweep.kinds, "hidden": sweep.hidden, "input_act": sweep.input_act,
         "seed": seed, "data_seed": sweep.data_seed, "train_preset": sweep.train_preset,
         "train": train,
         "train_snr_db": math.inf if train_snr_db is None else train_snr_db,
         "train_site": sweep.train_site, "ffw_form": sweep.ffw_form,
         "snr_scale": sweep.snr_scale, "monotone": sweep.monotone,
         "lyapunov": sweep.lyapunov, "cell": sweep.cell, "device": train_device},
        where="sweep",
    )
