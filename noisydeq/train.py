"""Training one model: Adam, seeded mini-batches, training noise, device in the loop, resume.

``train_model(model, task, spec)`` minimises the task loss (cross-entropy on the softmax head
of Table 1, or MSE for App. D.1) plus, for a DEQ with a Jacobian regulariser, its weighted
Hutchinson estimate of ‖J_f(z*)‖²_F (Table 1: weight 1.0). Training noise (paper Sec. 4.1:
signal noise at 0 dB or 10 dB, Eq. 3-4) is passed to the model as a :class:`~noisydeq.noise.Noise`
with its own seeded stream, so a DEQ draws fresh noise at every solver iteration (Eq. 6).
With ``spec.device`` the model is deployed on that hardware model and trained through its
noisy MVMs (hardware-aware training); the digital weights are what is saved.

Randomness comes only from generators derived from ``spec.seed`` (data order, training noise,
the device's dynamic noise and chip, the solver's random threshold): the same seed gives the
same weights on CPU. With ``out_dir`` the state after every epoch (weights, Adam moments,
generator states, history) is written atomically to ``resume.safetensors``; running again
with the same config continues from it and ends with the same weights as an uninterrupted
run. The finished model is ``model.safetensors`` + ``model.json`` (config, hash, metrics).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from noisydeq import __version__, store
from noisydeq.config import TrainSpec
from noisydeq.errors import NoisyDEQError
from noisydeq.noise import Noise, NoiseStream, derive_seed, seeded_generator
from noisydeq.tasks.base import Task

#: bump when the training procedure changes what a given config produces (cache key)
TRAIN_SCHEMA = 1
MODEL_FILE = "model.safetensors"
RESUME_FILE = "resume.safetensors"
EVAL_BATCH = 1024


@dataclass
class TrainResult:
    """A trained model and its record: per-epoch history, clean test metric, config + hash."""

    model: nn.Module
    config: dict[str, Any]
    config_hash: str
    history: list[dict[str, float]] = field(default_factory=list)
    test_metric: float = math.nan
    metric_name: str = ""
    seconds: float = 0.0
    path: Path | None = None
    start_epoch: int = 0
    loaded: bool = False


# ------------------------------------------------------------------------- config


def init_hash(model: nn.Module) -> str:
    """Hash of a model's current weights (identifies its initialisation in the config)."""
    h = hashlib.blake2b(digest_size=10)
    for name, t in sorted(model.state_dict().items()):
        store.hash_tensor(h, t, name)
    return h.hexdigest()


def describe_model(model: nn.Module) -> dict[str, Any]:
    """What defines a model's architecture: its ``ModelSpec`` when it has one, plus shapes."""
    desc: dict[str, Any] = {"class": f"{type(model).__module__}.{type(model).__qualname__}"}
    spec = getattr(model, "spec", None)
    if spec is not None and hasattr(spec, "model_dump"):
        desc["spec"] = spec.model_dump(mode="python")
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
        "train": spec.model_dump(mode="python"),
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
        "versions": {"noisydeq": __version__, "torch": torch.__version__.split("+")[0]},
    }


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


# -------------------------------------------------------------------------- state


class _Rng:
    """Every generator of a training run, derived from ``seed`` (saved for resume)."""

    def __init__(self, seed: int, dev: torch.device) -> None:
        self.shuffle = seeded_generator(derive_seed(seed, "train", "shuffle"), "cpu")
        self.noise = NoiseStream.from_seed(derive_seed(seed, "train", "noise"), dev)
        self.device_noise = NoiseStream.from_seed(derive_seed(seed, "train", "device"), dev)
        self.threshold = seeded_generator(derive_seed(seed, "train", "threshold"), dev)

    def generators(self) -> dict[str, torch.Generator]:
        return {
            "shuffle": self.shuffle,
            "noise": self.noise.generators[0],
            "device_noise": self.device_noise.generators[0],
            "threshold": self.threshold,
        }

    def state(self) -> dict[str, Tensor]:
        return {f"rng/{k}": g.get_state() for k, g in self.generators().items()}

    def load(self, tensors: dict[str, Tensor]) -> None:
        for k, g in self.generators().items():
            g.set_state(tensors[f"rng/{k}"])


def _save_resume(
    path: Path, net: nn.Module, opt: torch.optim.Optimizer, rng: _Rng, config: dict,
    epoch: int, history: list[dict[str, float]],
) -> None:
    opt_tensors, opt_info = store.flatten_optimizer(opt.state_dict())
    tensors = {f"model/{k}": v for k, v in net.state_dict().items()}
    tensors.update(opt_tensors)
    tensors.update(rng.state())
    meta = {"config": config, "config_hash": store.config_hash(config), "epoch": epoch,
            "history": history, "optimizer": opt_info}
    store.save_tensors(path, tensors, meta)


def _load_resume(
    path: Path, net: nn.Module, opt: torch.optim.Optimizer, rng: _Rng, config: dict
) -> tuple[int, list[dict[str, float]]]:
    tensors, meta = store.load_tensors(path)
    store.check_config(meta, config, path)
    store.load_into(net, {k[6:]: v for k, v in tensors.items() if k.startswith("model/")}, path)
    opt.load_state_dict(store.unflatten_optimizer(tensors, meta["optimizer"]))
    rng.load(tensors)
    return int(meta["epoch"]), list(meta.get("history", []))


# --------------------------------------------------------------------------- loop


def _deploy(model: nn.Module, spec: TrainSpec, rng_seed: int, stream: NoiseStream) -> nn.Module:
    """The model on ``spec.device`` (one chip derived from the seed), or the model itself."""
    if spec.device is None:
        return model
    from noisydeq import hardware

    chip = derive_seed(rng_seed, "train", "chip") % (2**31)
    device = hardware.get_device(spec.device, snr_db=spec.device_snr_db, chip=chip)
    net = device.deploy(model)
    hardware.set_stream(net, stream)
    return net


def forward_logits(
    net: nn.Module, x: Tensor, noise: Noise | None, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor | None]:
    """(output, Jacobian-regulariser term or None) of one forward pass of any model."""
    if getattr(net, "kind", None) == "deq":
        out = net(x, noise, return_solution=True, generator=generator)
    else:
        out = net(x, noise)
    return getattr(out, "logits", out), getattr(out, "jac_loss", None)


@torch.no_grad()
def evaluate(model: nn.Module, task: Task, batch_size: int = EVAL_BATCH) -> float:
    """Clean test metric (no noise, digital weights) of ``model`` on ``task``'s test split."""
    was_training = model.training
    model.eval()
    dev = _param_device(model)
    generator = seeded_generator(derive_seed("evaluate", "threshold"), dev)  # random caps
    score, n = 0.0, 0
    for i in range(0, len(task.x_test), batch_size):
        xb = task.x_test[i : i + batch_size].to(dev)
        yb = task.y_test[i : i + batch_size].to(dev)
        out, _ = forward_logits(model, xb, None, generator)
        score += task.metric(out, yb) * len(xb)
        n += len(xb)
    model.train(was_training)
    return score / max(n, 1)


def _result_from_checkpoint(
    model: nn.Module, path: Path, config: dict, dev: torch.device
) -> TrainResult:
    tensors, meta = store.load_checkpoint(path, config)
    store.load_into(model, tensors, path)
    model.to(dev)
    extra = meta.get("extra", {})
    return TrainResult(
        model=model, config=config, config_hash=meta["config_hash"],
        history=extra.get("history", []), test_metric=extra.get("test_metric", math.nan),
        metric_name=extra.get("metric_name", ""), seconds=extra.get("seconds", 0.0),
        path=path, start_epoch=int(config["train"]["epochs"]), loaded=True,
    )


def train_model(
    model: nn.Module,
    task: Task,
    spec: TrainSpec,
    *,
    out_dir: str | Path | None = None,
    resume: bool = True,
    torch_device: str | torch.device | None = None,
    quiet: bool = True,
    desc: str = "train",
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train ``model`` on ``task`` as ``spec`` says; return the model and its record.

    ``model``: any ``nn.Module`` with ``forward(x, noise=None)`` (DEQ/FFW of
    :mod:`noisydeq.models`, which also report a Jacobian-regulariser term). ``out_dir``:
    where the epoch checkpoints and the final model go; with ``resume`` an existing final
    model of the same config is loaded instead of retrained and an epoch checkpoint is
    continued — a file of another config is refused with one line. ``on_epoch(epoch,
    record)`` is called after each epoch's checkpoint is written.
    """
    t0 = time.perf_counter()
    dev = torch.device(torch_device) if torch_device is not None else _param_device(model)
    apply_overrides(model, spec)
    config = run_config(model, task, spec, dev)
    chash = store.config_hash(config)
    out = Path(out_dir) if out_dir is not None else None
    if out is not None and out.exists() and not out.is_dir():
        raise NoisyDEQError(f"--out: {out} exists and is not a directory")
    if out is not None and (out / MODEL_FILE).is_file():
        if not resume:
            raise NoisyDEQError(f"{out / MODEL_FILE} exists; use --resume or another --out")
        return _result_from_checkpoint(model, out / MODEL_FILE, config, dev)

    model.to(dev)
    rng = _Rng(spec.seed, dev)
    net = _deploy(model, spec, spec.seed, rng.device_noise)
    opt = torch.optim.Adam(net.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    start, history = 0, []
    if out is not None and resume and (out / RESUME_FILE).is_file():
        start, history = _load_resume(out / RESUME_FILE, net, opt, rng, config)

    n = len(task.x_train) if spec.max_train_samples is None else min(
        spec.max_train_samples, len(task.x_train))
    x_all, y_all = task.x_train[:n].to(dev), task.y_train[:n].to(dev)
    n_batches = math.ceil(n / spec.batch_size)
    from tqdm.auto import tqdm

    bar = tqdm(total=(spec.epochs - start) * n_batches, desc=desc, unit="batch",
               disable=quiet, leave=False)
    try:
        for epoch in range(start, spec.epochs):
            record = _train_epoch(net, opt, task, spec, rng, x_all, y_all, epoch, bar)
            history.append(record)
            if out is not None:
                _save_resume(out / RESUME_FILE, net, opt, rng, config, epoch + 1, history)
            if on_epoch is not None:
                on_epoch(epoch, record)
    finally:
        bar.close()

    if net is not model:
        model.load_state_dict(net.state_dict())  # deployed layers keep the digital weights
    test_metric = evaluate(model, task)
    seconds = time.perf_counter() - t0
    result = TrainResult(model=model, config=config, config_hash=chash, history=history,
                         test_metric=test_metric, metric_name=task.metric_name,
                         seconds=seconds, start_epoch=start)
    if out is not None:
        extra = {"history": history, "test_metric": test_metric,
                 "metric_name": task.metric_name, "seconds": seconds}
        result.path = store.save_checkpoint(out / MODEL_FILE, model.state_dict(), config, extra)
    return result


def _train_epoch(
    net: nn.Module, opt: torch.optim.Optimizer, task: Task, spec: TrainSpec, rng: _Rng,
    x_all: Tensor, y_all: Tensor, epoch: int, bar: Any,
) -> dict[str, float]:
    """One pass over the training data; returns the epoch record (mean loss, metric, time)."""
    t0 = time.perf_counter()
    net.train()
    reg = getattr(net, "jac_reg", None)
    if reg is not None and hasattr(net, "jac_reg_active"):
        net.jac_reg_active = reg.stop_epoch is None or epoch < reg.stop_epoch
    n = len(x_all)
    perm = torch.randperm(n, generator=rng.shuffle).to(x_all.device)
    noise = Noise(spec.noise, rng.noise) if spec.noise.active else None
    loss_sum = metric_sum = jac_sum = 0.0
    for b, i in enumerate(range(0, n, spec.batch_size)):
        idx = perm[i : i + spec.batch_size]
        xb, yb = x_all[idx], y_all[idx]
        out, jac = forward_logits(net, xb, noise, rng.threshold)
        loss = task.loss(out, yb)
        total = loss if jac is None else loss + jac
        if not torch.isfinite(total):
            raise NoisyDEQError(
                f"training diverged at epoch {epoch + 1}, batch {b + 1} "
                f"(loss {float(total.detach())}); lower the learning rate or the training noise"
            )
        opt.zero_grad(set_to_none=True)
        total.backward()
        if spec.clip_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(net.parameters(), spec.clip_grad_norm)
        opt.step()
        loss_sum += float(loss.detach()) * len(idx)
        metric_sum += task.metric(out.detach(), yb) * len(idx)
        jac_sum += float(jac.detach()) * len(idx) if jac is not None else 0.0
        bar.update(1)
        bar.set_postfix(epoch=epoch + 1, loss=f"{float(loss.detach()):.4f}", refresh=False)
    return {"epoch": epoch + 1, "loss": loss_sum / n, task.metric_name: metric_sum / n,
            "jac_loss": jac_sum / n, "seconds": time.perf_counter() - t0}


def _param_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")

