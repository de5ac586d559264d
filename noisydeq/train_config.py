"""The config of a training run (:mod:`noisydeq.train`): everything that determines its
weights, hashed as the model cache's key, and the spec's settings a model takes.

:func:`run_config` records the model (its ``ModelSpec`` and shapes), the initial-weight
hash, the training spec (:func:`spec_dump`: unset fields added later, :data:`LATE_OPTIONAL`,
are left out so earlier hashes hold), the task's fingerprint, versions and, for
device-in-the-loop runs, the training device's resolved content and gradient estimator
(:data:`DEVICE_GRADIENT`) and, for adversarial runs that select their epoch, the robust
rule of the selection (:data:`SELECTION_RULE`). :func:`apply_overrides` gives a DEQ the
spec's solvers, gradient and Jacobian regulariser.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from noisydeq import __version__
from noisydeq.attacks.robust import RULE as ROBUST_RULE
from noisydeq.errors import NoisyDEQError
from noisydeq.specs.device_presets import preset_content
from noisydeq.specs.training import TrainSpec
from noisydeq.store import init_hash
from noisydeq.tasks.base import Task

#: bump when the training procedure changes what a given config produces (cache key).
#: 2: counter-based random draws (data order, noise, thresholds, probes by epoch and sample)
#: 3: the torch intra-op thread count is part of the config (it changes the rounding of
#:    parallel reductions, so the weights); ``--threads auto`` is now one thread
TRAIN_SCHEMA = 3
#: device-in-the-loop runs only (their config carries it; digital caches are unchanged):
#: the gradient estimator through the device layers. "scaled-straight-through": the device
#: error's growth with max|W|·max|x| (rram, photonic) or ‖Wx‖ (snr) is differentiated
#: (noisydeq.hardware.gradient.straight_through); device-trained models cached before it (plain
#: straight-through, no such key) are retrained
DEVICE_GRADIENT = "scaled-straight-through"
#: adversarial runs with checkpoint selection only (their config carries it; every other
#: cache is unchanged): the rule that counts a validation sample as robust
#: (right clean *and* attacked). Models selected before it (attacked input only, no such
#: key) are retrained, not reused
SELECTION_RULE = ROBUST_RULE


#: spec fields added after caches were keyed: left out of a config while unset (None), so
#: every earlier config keeps its hash
LATE_OPTIONAL = ("monotone", "ibp", "adversarial", "random_state", "optimizer",
                 "device_noise_mode", "digital_layers", "device_adc_gain",
                 "device_drift_alpha", "spectral_cap", "device_programming",
                 "device_calibration")


def spec_dump(spec: Any) -> dict[str, Any]:
    """``spec.model_dump()`` without the unset :data:`LATE_OPTIONAL` fields."""
    data = spec.model_dump(mode="python")
    for key in LATE_OPTIONAL:
        if key in data and data[key] is None:
            del data[key]
    return data


def describe_model(model: nn.Module) -> dict[str, Any]:
    """What defines a model's architecture: its ``ModelSpec`` when it has one, plus shapes."""
    desc: dict[str, Any] = {"class": f"{type(model).__module__}.{type(model).__qualname__}"}
    spec = getattr(model, "spec", None)
    if spec is not None and hasattr(spec, "model_dump"):
        desc["spec"] = spec_dump(spec)
    for attr in ("kind", "width", "depth"):
        if hasattr(model, attr):
            desc[attr] = getattr(model, attr)
    desc["shapes"] = {k: list(v.shape) for k, v in model.state_dict().items()}
    return desc


def run_config(
    model: nn.Module, task: Task, spec: TrainSpec, torch_device: torch.device
) -> dict[str, Any]:
    """The full resolved config of a training run: everything that determines its weights."""
    return {
        "schema": TRAIN_SCHEMA,
        "model": describe_model(model),
        "init": init_hash(model),
        "train": spec_dump(spec),
        "task": {
            "name": task.name,
            "seed": task.seed,
            "fingerprint": task.fingerprint,
            "n_train": len(task.x_train),
            # generated tasks: the arguments that regenerate the data (absent for the others,
            # so their config hashes are unchanged)
            **({"options": dict(task.options)} if getattr(task, "options", None) else {}),
        },
        "torch_device": torch_device.type,
        # intra-op threads while training: parallel reductions round differently
        "threads": torch.get_num_threads(),
        "versions": {"noisydeq": __version__, "torch": torch.__version__.split("+")[0]},
        # the training device's resolved content (not its name or path): a changed preset
        # is another training run, never a stale cache entry; and the gradient estimator
        **({"device_spec": preset_content(spec.device), "device_gradient": DEVICE_GRADIENT}
           if spec.device is not None else {}),
        **({"selection": SELECTION_RULE} if selects(spec) else {}),
    }


def training_config(
    model: nn.Module, task: Task, spec: TrainSpec, torch_device: torch.device
) -> dict[str, Any]:
    """The :func:`run_config` a training run of ``model`` keys its checkpoint with: ``spec``'s
    overrides applied to ``model`` first (:func:`apply_overrides`, as training applies
    them). The one place a run's config is made: :func:`noisydeq.train.train_model` and
    every caller that predicts its checkpoint's config hash (a study's resume and its Ray
    driver, :func:`noisydeq.studies.runner._keyed_model`) call it, so the keys cannot
    diverge. Computed under the torch thread count the run trains with (the config holds
    it)."""
    apply_overrides(model, spec)
    return run_config(model, task, spec, torch_device)


def selects(spec: TrainSpec) -> bool:
    """Whether the run keeps the epoch of best validation robust accuracy
    (:mod:`noisydeq.adversarial.selection`)."""
    adv = getattr(spec, "adversarial", None)
    return adv is not None and adv.val_fraction > 0


def apply_overrides(model: nn.Module, spec: TrainSpec) -> None:
    """Give a DEQ the spec's training/test solver, gradient and Jacobian regulariser."""
    is_deq = getattr(model, "kind", None) == "deq"
    pairs = {"solver": spec.solver, "test_solver": spec.test_solver,
             "gradient": spec.gradient, "jac_reg": spec.jac_reg}
    for attr, value in pairs.items():
        if value is None:
            continue
        if is_deq or hasattr(model, attr):  # e.g. an FFW with a per-layer Jacobian regulariser
            setattr(model, attr, value)
        elif getattr(model, "kind", None) != "ffw":  # FFWs skip family-wide DEQ settings
            raise NoisyDEQError(f"train.{attr}: only a DEQ model takes a {attr} setting")
    check = getattr(model, "check_solvers", None)  # e.g. a LyaDEQ: settings it cannot use
    if callable(check):
        check()
