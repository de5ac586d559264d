"""Training one model: Adam, seeded mini-batches, training noise, device in the loop, resume.

``train_model(model, task, spec)`` minimises the task loss (cross-entropy on the softmax head
of Table 1, or MSE for App. D.1) plus, for a DEQ with a Jacobian regulariser, its weighted
Hutchinson estimate of ‖J_f(z*)‖²_F (Table 1: weight 1.0); with ``spec.spectral_cap`` a DEQ
cell's W is projected onto ‖W‖₂ ≤ cap after every step (:mod:`noisydeq.models.spectral_cap`).
Training noise (paper Sec. 4.1:
signal noise at 0 dB or 10 dB, Eq. 3-4) is passed to the model as a :class:`~noisydeq.noise.Noise`
with its own seeded stream, so a DEQ draws fresh noise at every solver iteration (Eq. 6).
With ``spec.device`` the model is deployed on that hardware model and trained through its
noisy MVMs (hardware-aware training) with the scaled straight-through gradient
(:func:`noisydeq.hardware.gradient.straight_through`); the digital weights are what is saved.

Randomness is counter-based and addressed by ``spec.seed``
(:class:`noisydeq.train_state._Rng`): the data order of an epoch, and the training noise,
device noise, random thresholds and Hutchinson probes of a sample in an epoch, are functions of
(seed, epoch, sample index, draw); the chip of the device by the seed. The same seed gives the
same weights on CPU. With ``out_dir`` the state after every epoch (weights, Adam moments,
history; no generator state is needed) is written atomically to ``resume.safetensors``; running
again with the same config continues from it and ends with the same weights as an uninterrupted
run. The finished model is ``model.safetensors`` + ``model.json`` (config, hash, metrics);
``resume.safetensors`` is removed once it is written (a finished model needs no resume state).
``out_dir`` is locked while a run writes it (:class:`noisydeq.store.DirLock`: a second run of
the same model waits, then loads the finished one), and a checkpoint or resume state that fails
its digest or structure check is reported in one line and trained again rather than used.
The run's config and cache key are :mod:`noisydeq.train_config`, its random draws and resume
file :mod:`noisydeq.train_state`, the device in the loop :mod:`noisydeq.train_device`.

Training time (``TrainResult.seconds``, ``seconds`` in ``model.json``) is the time spent on the
model over every run that trained it: each resume state carries the seconds so far and a
resumed run adds its own, counted from when it holds ``out_dir``'s lock to the saved model
(setup, epochs, final test metric). Work after an interrupted run's last resume state is lost
and not counted; the resumed run redoes that epoch and counts it once. The part of the run
that finished the model is ``seconds_last_run`` in ``model.json``;
``TrainResult.run_seconds`` is the part spent by this call (0 for a loaded model), and
``TrainResult.epoch_seconds`` the part of that in the epochs, the span the training bar times
(:meth:`TrainResult.trained_in` says both).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from noisydeq import store
from noisydeq.convergence import Tally, stop_rule
from noisydeq.errors import CorruptArtefact, NoisyDEQError
from noisydeq.models.spectral_cap import cap_spectral_norm, spectral_norm_of
from noisydeq.noise import Noise, NoiseStream, derive_seed
from noisydeq.specs.training import TrainSpec
from noisydeq.tasks.base import Task
from noisydeq.train_config import (  # noqa: F401 (the constants: still importable here)
    DEVICE_GRADIENT,
    TRAIN_SCHEMA,
    apply_overrides,
    run_config,
    training_config,
)
from noisydeq.train_device import (
    _deploy,
    _device_streams,
    _on_chip,
    chip_of_epoch,
    recalibrate_if_due,
    validation_chip,
)
from noisydeq.train_state import _load_resume, _Rng, _save_resume

MODEL_FILE = "model.safetensors"
RESUME_FILE = "resume.safetensors"
EVAL_BATCH = 1024
#: the clock of training time (tests replace it)
_clock = time.perf_counter
#: device-in-the-loop runs: training inputs the device layers are calibrated on, and test
#: samples of the per-epoch validation on the device
CALIB_SAMPLES = 256
VAL_SAMPLES = 512


@dataclass
class TrainResult:
    """A trained model and its record: per-epoch history, clean test metric, config + hash."""

    model: nn.Module
    config: dict[str, Any]
    config_hash: str
    history: list[dict[str, float]] = field(default_factory=list)
    test_metric: float = math.nan
    metric_name: str = ""
    #: training time over every run that trained the model (resumes add up), seconds
    seconds: float = 0.0
    #: the part of ``seconds`` spent by this call (0 for a loaded model)
    run_seconds: float = 0.0
    #: the part of ``run_seconds`` spent in the epochs (what the training bar times: the
    #: batches, per-epoch validation and resume states); the rest of ``run_seconds`` is
    #: set-up (data, model, a resume state read) and the final test metric
    epoch_seconds: float = 0.0
    path: Path | None = None
    start_epoch: int = 0
    loaded: bool = False
    #: what the checkpoint's metadata records besides the config (history, test metric,
    #: metric name, seconds, the adversarial hooks' record) — also without ``out_dir``
    extra: dict[str, Any] = field(default_factory=dict)
    #: how the solves of this call's evaluations ended (the test metric's; the last epoch's
    #: device validation, digital and on the chip): messages only, not in the checkpoint,
    #: empty for a loaded model or one without a solve (:mod:`noisydeq.convergence`)
    convergence: list[Tally] = field(default_factory=list)

    def trained_in(self, digits: int = 1) -> str:
        """``trained in 10.0 s: epochs 8.1 s, set-up and test 1.9 s`` (the epochs are what the
        training bar times); for a resumed run the total over its runs, then this run's part
        and the epoch it resumed at: ``trained in 300.0 s (100.0 s of them in this run,
        resumed at epoch 2: epochs 80.0 s, set-up and test 20.0 s)``."""
        f = f".{digits}f"
        split = (f"epochs {self.epoch_seconds:{f}} s, set-up and test "
                 f"{max(self.run_seconds - self.epoch_seconds, 0.0):{f}} s")
        text = f"trained in {self.seconds:{f}} s"
        if self.loaded:
            return text
        if self.start_epoch > 0:
            return (f"{text} ({self.run_seconds:{f}} s of them in this run, resumed at "
                    f"epoch {self.start_epoch}: {split})")
        return f"{text}: {split}"


# --------------------------------------------------------------------------- loop


def forward_logits(
    net: nn.Module, x: Tensor, noise: Noise | None,
    generator: torch.Generator | NoiseStream | None = None,
) -> tuple[Tensor, Tensor | None]:
    """(output, Jacobian-regulariser term or None) of one forward pass of any model.

    ``generator`` draws a DEQ's random thresholds and the Hutchinson probes of a DEQ's or
    a per-layer regularised FFW's Jacobian term."""
    if getattr(net, "kind", None) in ("deq", "lyadeq"):
        out = net(x, noise, return_solution=True, generator=generator)
    else:
        if hasattr(net, "jac_generator"):
            net.jac_generator = generator
        out = net(x, noise)
    return getattr(out, "logits", out), getattr(out, "jac_loss", None)


def check_fits(model: nn.Module, task: Task, what: str = "train_model") -> None:
    """One line when ``model`` is not an ``nn.Module`` or ``task`` not a :class:`Task` (a
    :class:`TrainResult` given for its ``model``, the two swapped: an AttributeError on
    ``.training`` before), or when a noisydeq model's ``in_features`` / ``out_features``
    are not the task's (torch said ``mat1 and mat2 shapes cannot be multiplied`` or
    ``Target 6 is out of bounds`` mid-way); a module without them is not checked."""
    if not isinstance(model, nn.Module):
        hint = " (its .model is the trained model)" if isinstance(model, TrainResult) else ""
        raise NoisyDEQError(f"{what}: model: expected a torch nn.Module, got "
                            f"{type(model).__name__}{hint}")
    if not isinstance(task, Task):
        raise NoisyDEQError(f"{what}: task: expected a noisydeq Task "
                            f"(noisydeq.tasks.load_task), got {type(task).__name__}")
    for name in ("in_features", "out_features"):
        got, want = getattr(model, name, None), getattr(task, name, None)
        if isinstance(got, int) and isinstance(want, int) and got != want:
            raise NoisyDEQError(
                f"{what}: model: {name} is {got}, but task '{task.name}' has {want} "
                f"({task.in_features} → {task.out_features}); build the model with "
                "ModelSpec(in_features=task.in_features, out_features=task.out_features, ...)")


@torch.no_grad()
def evaluate(model: nn.Module, task: Task, batch_size: int = EVAL_BATCH,
             limit: int | None = None, device_seed: int | None = None,
             tally: Tally | None = None) -> float:
    """Test metric of ``model`` on ``task``'s test split (its first ``limit`` samples), with
    no model noise (``noise=None``): a digital model's clean metric; a deployed one
    (:meth:`~noisydeq.hardware.Device.deploy`) is measured on its chip, static and dynamic
    device noise included. Its dynamic noise continues each layer's stream (another draw
    at every call) unless ``device_seed`` keys it by (seed, layer, test-sample index): the
    same draws at every call. ``tally``: gets each batch's solve (a DEQ's; samples that missed the
    stop rule, diverged — the solver's flag or non-finite outputs), the metric unchanged."""
    from noisydeq.hardware.controls import device_layers

    check_fits(model, task, "evaluate")
    was_training = model.training
    model.eval()
    dev = _param_device(model)
    key = derive_seed("evaluate", "threshold")  # random caps, by test-sample index
    layers = device_layers(model) if device_seed is not None else {}
    score, n = 0.0, 0
    total = len(task.x_test) if limit is None else min(limit, len(task.x_test))
    for i in range(0, total, batch_size):
        xb = task.x_test[i : min(i + batch_size, total)].to(dev)
        yb = task.y_test[i : min(i + batch_size, total)].to(dev)
        rows = torch.arange(i, i + len(xb))
        caps = NoiseStream.from_seed(key, dev, samples=rows)
        for name, layer in layers.items():
            layer.stream = NoiseStream.from_seed(
                derive_seed(device_seed, "validation", name), dev, samples=rows)
        out, _ = forward_logits(model, xb, None, caps)
        if tally is not None:
            _tally_batch(tally, model, out)
        score += task.metric(out, yb) * len(xb)
        n += len(xb)
    model.train(was_training)
    return score / max(n, 1)


def _tally_batch(tally: Tally, model: nn.Module, out: Tensor) -> None:
    """Add the batch just evaluated by ``model`` (a DEQ: its ``last_solution``) to ``tally``."""
    sol = getattr(model, "last_solution", None)
    if getattr(model, "kind", None) not in ("deq", "lyadeq") or sol is None:
        return
    div = sol.diverged.cpu() | ~torch.isfinite(out.reshape(out.shape[0], -1)).all(dim=1).cpu()
    n = int(div.numel())
    unc = int((~sol.converged.cpu() & ~div).sum())
    tally.add(n, unc / n, int(div.sum()) / n)


#: ``train_model(..., resume=False)`` on a folder that holds a finished model
EXISTS = ("{path} exists: load it (resume=True; noisydeq train --resume) or train into "
          "another folder (out_dir; --out)")


def _other_start(path: Path, config: dict) -> str:
    """What to do when the checkpoint at ``path`` differs from ``config`` in the model's
    initial weights alone (``init``): a model built again without seeding torch first (a
    notebook cell run twice) — else ""."""
    try:
        _, meta = store.load_tensors(path)
    except NoisyDEQError:
        return ""
    old = meta.get("config")
    if not isinstance(old, dict) or old.get("init") == config.get("init"):
        return ""
    if store.config_hash({**old, "init": None}) != store.config_hash({**config, "init": None}):
        return ""
    return ("; only the initial weights differ: the model given was built from another "
            "random state than the one trained there — call torch.manual_seed(SEED) before "
            "building it to load that model, or train into another folder")


def _result_from_checkpoint(
    model: nn.Module, path: Path, config: dict, dev: torch.device
) -> TrainResult:
    try:
        tensors, meta = store.load_checkpoint(path, config)
    except CorruptArtefact:
        raise
    except NoisyDEQError as err:  # another config: say so when only the start differs
        raise NoisyDEQError(f"{err}{_other_start(path, config)}") from None
    try:
        extra = meta.get("extra", {})
        history = extra.get("history", [])
        test_metric = float(extra.get("test_metric", math.nan))
        metric_name = str(extra.get("metric_name", ""))
        seconds = float(extra.get("seconds", 0.0))
        if not isinstance(history, list):
            raise TypeError("history is not a list")
    except (AttributeError, TypeError, ValueError) as err:
        raise CorruptArtefact(path, f"carries malformed metadata ({err})") from None
    store.load_into(model, tensors, path)
    mended = store.mend_sidecar(path, meta)  # people and `certify` read it: never left damaged
    if mended is not None:
        store.warn(mended)
    model.to(dev)
    return TrainResult(
        model=model, config=config, config_hash=meta["config_hash"], history=history,
        test_metric=test_metric, metric_name=metric_name, seconds=seconds,
        path=path, start_epoch=int(config["train"]["epochs"]), loaded=True,
    )


def finished_weights(out: str | Path, chash: str) -> str | None:
    """The weights digest (:func:`noisydeq.store.weights_hash`, equal to
    :func:`~noisydeq.store.init_hash` of the loaded model) of the finished model in ``out``
    when it is one of config hash ``chash``, read without building or loading a model; None
    when there is none, or it fails its SHA-256 digest or is of another config (then
    :func:`train_model` reports it and trains again, or refuses it in one line)."""
    path = Path(out) / MODEL_FILE
    if not path.is_file():
        return None
    try:
        tensors, meta = store.load_tensors(path)
    except NoisyDEQError:  # damaged, unreadable or foreign (a CorruptArtefact): none
        return None
    if meta.get("config_hash") != chash:
        return None
    return store.weights_hash(tensors)


def _load_finished(
    model: nn.Module, out: Path, config: dict, dev: torch.device, resume: bool
) -> TrainResult | None:
    """The finished model in ``out`` when there is one of this config; a damaged one is
    reported, removed and trained again (None)."""
    path = out / MODEL_FILE
    if not path.is_file():
        return None
    if not resume:
        raise NoisyDEQError(EXISTS.format(path=path))
    try:
        return _result_from_checkpoint(model, path, config, dev)
    except CorruptArtefact as err:
        store.warn(f"{err}; training the model again")
        path.unlink(missing_ok=True)
        path.with_suffix(".json").unlink(missing_ok=True)
        return None


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
    config: dict | None = None,
) -> TrainResult:
    """Train ``model`` on ``task`` as ``spec`` says; return the model and its record.

    ``model``: any ``nn.Module`` with ``forward(x, noise=None)`` (DEQ/FFW of
    :mod:`noisydeq.models`, which also report a Jacobian-regulariser term). ``out_dir``:
    where the epoch checkpoints and the final model go; with ``resume`` an existing final
    model of the same config is loaded instead of retrained and an epoch checkpoint is
    continued — a file of another config is refused with one line. ``on_epoch(epoch,
    record)`` is called after each epoch's checkpoint is written. ``config``: the
    :func:`~noisydeq.train_config.training_config` of this model, task, spec and device
    where the caller has computed it (``noisydeq train`` names its folder after its hash);
    None computes it here.
    """
    t0 = _clock()
    check_fits(model, task)
    dev = torch.device(torch_device) if torch_device is not None else _param_device(model)
    if config is None:  # the one function every predictor of its hash calls
        config = training_config(model, task, spec, dev)  # the overrides applied first
    else:
        apply_overrides(model, spec)
    if spec.spectral_cap is not None:  # a model without a cappable W: one line, before writing
        spectral_norm_of(model)
    if spec.digital_layers:  # an unknown layer name: one line, before anything is written
        from noisydeq.hardware.base import check_digital_layers

        check_digital_layers(model, spec.digital_layers)
    out = Path(out_dir) if out_dir is not None else None
    if out is not None and out.exists() and not out.is_dir():
        raise NoisyDEQError(f"--out: {out} exists and is not a directory")
    if out is None:
        return _fit(model, task, spec, config, None, resume, dev, quiet, desc, on_epoch, t0)
    lock = store.DirLock(out, "model directory")  # one writer per model directory
    try:
        lock.acquire()
    except OSError as err:
        if err.errno not in store.NOT_WRITABLE:
            raise
        return _read_only_finished(model, out, config, dev, resume, err)
    try:
        t0 = _clock()  # time waiting for another run's lock is not training time
        store.clean_stale_temps(out, locked=True)
        done = _load_finished(model, out, config, dev, resume)
        if done is not None:
            return done
        return _fit(model, task, spec, config, out, resume, dev, quiet, desc, on_epoch, t0)
    finally:
        lock.release()


def _read_only_finished(model: nn.Module, out: Path, config: dict, dev: torch.device,
                        resume: bool, err: OSError) -> TrainResult:
    """The finished model in ``out``, a directory this process cannot write in (a read-only
    cache: no lock file can be made), read without the lock; without one — or with a
    damaged one, which would be trained again — one line saying what would be written."""
    path = out / MODEL_FILE
    why = f"model directory {out}: cannot write in it ({err.strerror or err})"
    if not path.is_file():
        raise NoisyDEQError(f"{why}: it holds no finished model of this training, and "
                            "training one writes it there; give a writable cache")
    if not resume:
        raise NoisyDEQError(EXISTS.format(path=path))
    try:
        return _result_from_checkpoint(model, path, config, dev)
    except CorruptArtefact as bad:
        raise NoisyDEQError(f"{why}: {bad}; training it again writes it there; give a "
                            "writable cache") from None


def _fit(
    model: nn.Module, task: Task, spec: TrainSpec, config: dict, out: Path | None,
    resume: bool, dev: torch.device, quiet: bool, desc: str,
    on_epoch: Callable[[int, dict[str, float]], None] | None, t0: float,
) -> TrainResult:
    """The training loop of :func:`train_model` (``out``: locked, or None)."""
    chash = store.config_hash(config)
    hooks = None  # adversary, random states, optimiser options (noisydeq.adversarial)
    if spec.adversarial is not None or spec.random_state is not None or spec.optimizer:
        from noisydeq.adversarial.hooks import TrainingHooks

        hooks = TrainingHooks(spec, model, task, forward_logits)
    model.to(dev)
    rng = _Rng(spec.seed, dev)
    net = _deploy(model, spec, spec.seed)
    if spec.spectral_cap is not None:  # the initial W too: the whole run stays contractive
        cap_spectral_norm(net, spec.spectral_cap)
    if hooks is None:
        opt = torch.optim.Adam(net.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    else:
        opt = hooks.optimizer(net)
    n = len(task.x_train) if spec.max_train_samples is None else min(
        spec.max_train_samples, len(task.x_train))
    x_all, y_all = task.x_train[:n].to(dev), task.y_train[:n].to(dev)
    if hooks is not None:
        x_all, y_all = hooks.split(x_all, y_all)
        n = len(x_all)
    start, history, before = 0, [], 0.0  # before: training seconds of earlier runs
    if out is not None and resume and (out / RESUME_FILE).is_file():
        try:
            start, history, saved, before = _load_resume(out / RESUME_FILE, net, opt, config,
                                                         spec.epochs)
            if hooks is not None:
                hooks.load(saved, history)
        except CorruptArtefact as err:
            store.warn(f"{err}; starting the training again")
            (out / RESUME_FILE).unlink(missing_ok=True)
            start, history, before = 0, [], 0.0
    n_batches = math.ceil(n / spec.batch_size)
    from noisydeq.progress import progress

    bar = progress(total=(spec.epochs - start) * n_batches, desc=desc or "training",
                   unit="batches", disable=quiet)
    t_epochs = _clock()  # the span the bar times (TrainResult.epoch_seconds)
    x_calib = x_all[:CALIB_SAMPLES]
    validation: list[Tally] = []  # the last validated epoch's solves (messages only)
    try:
        for epoch in range(start, spec.epochs):
            if spec.device is not None:  # a fresh chip per epoch (static noise as a law)
                _on_chip(net, spec, chip_of_epoch(spec.seed, epoch), x_calib)
            record = _train_epoch(net, opt, task, spec, rng, x_all, y_all, epoch, bar, hooks,
                                  x_calib=x_calib)
            if spec.device is not None:
                validation = [Tally(f"{desc or 'model'} ({where}, epoch {epoch + 1})",
                                    stop_rule(model), unit="batches")
                              for where in ("validation", f"validation on {spec.device}")]
                record.update(_validate(model, net, task, spec, x_calib, validation))
                if not quiet:
                    _report_epoch(desc, spec, epoch, record, task.metric_name)
                bar.set_postfix(epoch=epoch + 1, loss=f"{record['loss']:.4f}",
                                device=f"{record[f'val_{task.metric_name}_device']:.4f}",
                                refresh=False)
            if hooks is not None:
                record = hooks.end_epoch(opt, net, epoch, record)
                if not quiet and "val_robust" in record:
                    _report_selection_epoch(desc, spec, epoch, record)
            history.append(record)
            if out is not None:
                _save_resume(out / RESUME_FILE, net, opt, config, epoch + 1, history,
                             hooks.state() if hooks is not None else None,
                             seconds=before + _clock() - t0)
            if on_epoch is not None:
                on_epoch(epoch, record)
            _epoch_event(desc, spec.epochs, record)
    finally:
        bar.close()
    epoch_seconds = _clock() - t_epochs

    selected = hooks.selected_weights() if hooks is not None else None
    if selected is not None:  # the selected epoch's weights (deployed layers keep digital ones)
        model.load_state_dict(selected)
        if not quiet:
            from noisydeq.progress import write

            kept = hooks.extra().get("selected_epoch")
            write(f"{desc or 'training'}: kept epoch {kept} of {spec.epochs} (highest "
                  "validation robust accuracy; ties: clean accuracy, then the earlier epoch)")
    elif net is not model:
        model.load_state_dict(net.state_dict())  # deployed layers keep the digital weights
    test = Tally(f"{desc or 'model'} (test metric)", stop_rule(model), unit="batches")
    test_metric = evaluate(model, task, tally=test)
    run_seconds = _clock() - t0
    seconds = before + run_seconds
    result = TrainResult(model=model, config=config, config_hash=chash, history=history,
                         test_metric=test_metric, metric_name=task.metric_name,
                         seconds=seconds, run_seconds=run_seconds, start_epoch=start,
                         epoch_seconds=epoch_seconds)
    result.convergence = [test, *validation]
    result.extra = {"history": history, "test_metric": test_metric,
                    "metric_name": task.metric_name, "seconds": seconds,
                    "seconds_last_run": run_seconds,
                    **(hooks.extra() if hooks is not None else {})}
    if out is not None:
        result.path = store.save_checkpoint(out / MODEL_FILE, model.state_dict(), config,
                                            result.extra)
        (out / RESUME_FILE).unlink(missing_ok=True)  # the finished model replaces it
    return result


def _validate(model: nn.Module, net: nn.Module, task: Task, spec: TrainSpec,
              x_calib: Tensor, tallies: list[Tally] | None = None) -> dict[str, float]:
    """Validation of a device-in-the-loop epoch on the first :data:`VAL_SAMPLES` test
    samples: the digital weights (``val_<metric>``) and the same weights on the training
    device at the training SNR on a fixed chip with fixed read noise
    (``val_<metric>_device``: every epoch sees the same chip and draws). ``tallies``: the
    digital and the device evaluation's solves (:func:`evaluate`)."""
    t0 = time.perf_counter()
    digital_tally, device_tally = tallies if tallies is not None else (None, None)
    model.load_state_dict(net.state_dict())  # deployed layers keep the digital weights
    name = task.metric_name
    digital = evaluate(model, task, limit=VAL_SAMPLES, tally=digital_tally)
    _on_chip(net, spec, validation_chip(spec.seed), x_calib)
    on_device = evaluate(net, task, limit=VAL_SAMPLES,
                         device_seed=derive_seed(spec.seed, "train", "validation"),
                         tally=device_tally)
    return {f"val_{name}": digital, f"val_{name}_device": on_device,
            "val_seconds": time.perf_counter() - t0}


def _epoch_event(desc: str, epochs: int, record: dict[str, Any]) -> None:
    """An ``epoch`` event (``--log-json``, ``--tracker``): the model and its epoch record."""
    from noisydeq import events

    if events.active():
        events.emit("epoch", model=desc or "training", epochs=epochs,
                    **{k: v for k, v in record.items() if isinstance(v, (int, float, str))})


def _report_epoch(desc: str, spec: TrainSpec, epoch: int, record: dict[str, float],
                  metric: str) -> None:
    """One progress line per device-in-the-loop epoch: loss, digital and device metric."""
    from noisydeq.progress import write

    snr = "native" if spec.device_snr_db is None else f"{spec.device_snr_db:g} dB"
    write(f"{desc} epoch {epoch + 1}/{spec.epochs}: loss {record['loss']:.4f}, "
          f"val {metric} digital {record[f'val_{metric}']:.4f}, on {spec.device} ({snr}) "
          f"{record[f'val_{metric}_device']:.4f}")


def _report_selection_epoch(desc: str, spec: TrainSpec, epoch: int,
                            record: dict[str, float]) -> None:
    """One progress line per adversarially trained epoch: loss and the validation accuracy,
    clean and under the selection's PGD (what picks the saved epoch)."""
    from noisydeq.progress import write

    adv = spec.adversarial
    write(f"{desc or 'training'} epoch {epoch + 1}/{spec.epochs}: loss {record['loss']:.4f}, "
          f"validation clean {record['val_clean']:.4f}, robust {record['val_robust']:.4f} "
          f"(PGD-{adv.val_steps} at ε = {adv.eps:g})")


def epoch_lr(spec: TrainSpec, epoch: int) -> float:
    """Learning rate of ``epoch`` (0-based): ``spec.lr``, or its cosine annealing
    lr·(1 + cos(π·epoch/epochs))/2 (``CosineAnnealingLR``, T_max = epochs, per epoch),
    times ``spec.optimizer``'s ``MultiStepLR`` factor (main paper Tables 5-6)."""
    step = 1.0 if spec.optimizer is None else spec.optimizer.lr_factor(epoch)
    if spec.lr_schedule == "constant" or spec.epochs == 0:
        return spec.lr * step
    return step * spec.lr * 0.5 * (1.0 + math.cos(math.pi * epoch / spec.epochs))


def _train_epoch(
    net: nn.Module, opt: torch.optim.Optimizer, task: Task, spec: TrainSpec, rng: _Rng,
    x_all: Tensor, y_all: Tensor, epoch: int, bar: Any, hooks: Any = None,
    x_calib: Tensor | None = None,
) -> dict[str, float]:
    """One pass over the training data; returns the epoch record (mean loss, metric, time).
    A training device is calibrated again on ``x_calib`` before the steps
    ``spec.device_calibration`` asks for (:func:`~noisydeq.train_device.recalibrate_if_due`)."""
    t0 = time.perf_counter()
    net.train()
    reg = getattr(net, "jac_reg", None)
    if reg is not None and hasattr(net, "jac_reg_active"):
        net.jac_reg_active = reg.stop_epoch is None or epoch < reg.stop_epoch
    n = len(x_all)
    perm = rng.permutation(n, epoch).to(x_all.device)
    for group in opt.param_groups:
        group["lr"] = epoch_lr(spec, epoch)
    loss_sum = metric_sum = jac_sum = 0.0
    ibp = None
    if spec.ibp is not None:  # interval-bound-propagation training (noisydeq.certify)
        from noisydeq.certify.training import IBPObjective

        ibp = IBPObjective(spec.ibp, math.ceil(n / spec.batch_size), spec.epochs)
    for b, i in enumerate(range(0, n, spec.batch_size)):
        idx = perm[i : i + spec.batch_size]
        xb, yb = x_all[idx], y_all[idx]
        if ibp is not None:
            (out, loss), jac = ibp(net, xb, yb, epoch, b), None
        else:
            noise = (Noise(spec.noise, rng.stream("noise", epoch, idx)) if spec.noise.active
                     else None)
            if spec.device is not None:
                if x_calib is not None:  # the noise scale for this step's weights
                    recalibrate_if_due(net, spec, x_calib, b)
                _device_streams(net, rng, epoch, idx)
            threshold = rng.stream("threshold", epoch, idx)
            if hooks is not None:
                out, loss, jac = hooks.batch(net, xb, yb, noise, threshold,
                                             rng.stream("adversarial", epoch, idx), epoch, b)
            else:
                out, jac = forward_logits(net, xb, noise, threshold)
                loss = task.loss(out, yb)
        total = loss if jac is None else loss + jac
        # one read of the loss per batch: the divergence check, the epoch mean, the bar
        total_value = float(total.detach())
        if not math.isfinite(total_value):
            raise NoisyDEQError(
                f"training diverged at epoch {epoch + 1}, batch {b + 1} "
                f"(loss {total_value}); lower the learning rate or the training noise"
            )
        loss_value = total_value if jac is None else float(loss.detach())
        opt.zero_grad(set_to_none=True)
        total.backward()
        if ibp is not None:
            ibp.clip(net)
        if hooks is not None:
            hooks.clip(net)
        opt.step()
        if spec.spectral_cap is not None:
            cap_spectral_norm(net, spec.spectral_cap)
        loss_sum += loss_value * len(idx)
        metric_sum += task.metric(out.detach(), yb) * len(idx)
        jac_sum += float(jac.detach()) * len(idx) if jac is not None else 0.0
        bar.update(1)
        bar.set_postfix(epoch=epoch + 1, loss=f"{loss_value:.4f}", refresh=False)
    record = {"epoch": epoch + 1, "loss": loss_sum / n, task.metric_name: metric_sum / n,
              "jac_loss": jac_sum / n, "seconds": time.perf_counter() - t0}
    return record if ibp is None else {**record, **ibp.last}


def _param_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")

