"""``noisydeq train``: train one DEQ/FFW, or a depth-matched family (``--depths``).

One model goes to ``--out`` (default ``runs/train/<kind>-d<depth>-w<width>-s<seed>-<config
hash>``, so the same command finds its model again and another config gets its own folder):
``model.safetensors`` + ``model.json`` (full resolved config and its hash), with a
per-epoch ``resume.safetensors`` that ``--resume`` continues from. A family goes into the
cache (``--cache DIR``, default ``$NOISYDEQ_CACHE`` or the user cache dir), the same cache
``noisydeq sweep`` reuses; ``--out DIR`` puts its models in ``DIR/models/`` instead.
Adversarial training (``--adversarial``), the DEQ defences (``--random-threshold``,
``--random-state``, noise on x or z with ``--train-site input|state``) and the optimiser of
Tables 5-6 are :mod:`noisydeq.adversarial`'s.

Length (about 410 lines): one command; most of it is its options and their one-line checks.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from noisydeq import limits
from noisydeq.commands import cache_option
from noisydeq.commands.sweep import threads_flag
from noisydeq.errors import NoisyDEQError
from noisydeq.progress import with_heartbeat
from noisydeq.runtime import resolve_torch_device
from noisydeq.specs.base import build
from noisydeq.specs.cell import CELL_OPTIONS
from noisydeq.specs.device_presets import HELD_QUANTITIES, check_held, load_spec
from noisydeq.specs.family import FamilySpec
from noisydeq.specs.model import LyapunovSpec, ModelSpec
from noisydeq.specs.noise import NoiseSpec, parse_snr_value
from noisydeq.specs.task_names import check_run_data_dir, check_task_name
from noisydeq.specs.training import TrainSpec
from noisydeq.store import check_out_dir, make_dir

if TYPE_CHECKING:  # pragma: no cover
    import torch


def _snr(text: str, option: str) -> float:
    try:
        return parse_snr_value(text)
    except NoisyDEQError as err:
        raise NoisyDEQError(f"{option}: {err}") from None


def _noise(train_snr: str, site: str, scale: str) -> NoiseSpec:
    snr = _snr(train_snr, "--train-snr")
    if math.isinf(snr):
        build(NoiseSpec, {"snr_scale": scale}, where="--snr-scale")  # validate it anyway
        return NoiseSpec()
    return build(NoiseSpec, {"site": site, "kind": "multiplicative", "snr_db": snr,
                             "snr_scale": scale}, where="--train-snr")


def _fmt(metric: float, name: str) -> str:
    return f"{metric:.4f}" if name == "accuracy" else f"{metric:.3e}"


@click.command("train")
@click.option("--task", default="digits", show_default=True,
              help="digits, regression1d, mnist, mnist10k, cifar10 (binary files in "
                   "--data-dir), prefix_sums, mazes (these two need a per-position --cell: "
                   "conv1d or residual) or matrix_add.")
@click.option("--data-dir", default=None,
              help="MNIST directory (else $NOISYDEQ_MNIST_DIR) or CIFAR-10 directory (else "
                   "$NOISYDEQ_CIFAR10_DIR).")
@click.option("--kind", type=click.Choice(["deq", "ffw", "mondeq", "ffw_relu", "lyadeq"]),
              default="deq", show_default=True,
              help="Model kind (single-model mode); mondeq/ffw_relu: monotone ReLU DEQ and its "
                   "explicit ReLU baseline (noisydeq certify); lyadeq: Lyapunov-stable DEQ.")
@click.option("--monotone", "monotone", default=None, metavar="KEY=VALUE,...",
              help="mondeq/ffw_relu options, e.g. param=lben,m=0.5 (MonotoneSpec).")
@click.option("--ibp-eps", type=float, default=None,
              help="Train with interval bound propagation at this ℓ∞ radius, in (0, 1] "
                   "(inputs lie in [0, 1]; IBPTrainSpec).")
@click.option("--variant", default=None,
              help="LyaDEQ variant: plain, lyapunov, orthogonal or both (default).")
@click.option("--width", type=int, default=128, show_default=True,
              help="FFW layer width; DEQ width (or the FFW width it is matched to).")
@click.option("--depth", type=int, default=1, show_default=True,
              help="FFW layers; for a DEQ the FFW depth whose parameter count it matches.")
@click.option("--depths", default=None,
              help="Train a matched DEQ/FFW family at these FFW depths, e.g. 1,3,5,7.")
@click.option("--train-preset", "--preset", "preset", default="quick", show_default=True,
              help="Training preset, as sweep's --train-preset: quick, paper (Tables 1-2), "
                   "adversarial (Tables 5-6) or adversarial-quick (--preset: the same option, "
                   "its older spelling).")
@click.option("--epochs", type=click.IntRange(min=0), default=None,
              help="Epochs (default: the preset's).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Mini-batch size (default: the preset's).")
@click.option("--lr", type=float, default=None, help="Adam learning rate (default 1e-3).")
@click.option("--train-snr", default="inf", show_default=True,
              help="Training noise SNR in dB (paper: 0, 10 or inf = none).")
@click.option("--train-site", type=click.Choice(["signal", "state", "input"]), default="signal",
              show_default=True, help="Where training noise is injected (Eq. 3-4).")
@click.option("--input-act", type=click.Choice(["relu", "silu", "identity"]), default="relu",
              show_default=True, help="Input projection nonlinearity.")
@click.option("--cell", type=click.Choice(list(CELL_OPTIONS)), default="mlp", show_default=True,
              help="Unit cell: fully connected (Eq. 57), 3x3 conv with --width channels "
                   "(App. E.3), conv1d/residual (a class per position: prefix_sums, mazes), "
                   "mlp_stack (3 tanh layers per cell) or mdeq (multiscale); their other "
                   "options: noisydeq study or a sweep's cell.")
@click.option("--adversarial", default=None, metavar="pgd|trades|none",
              help="Adversarial training: PGD-AT or TRADES (default: the preset's; the "
                   "adversarial presets use pgd).")
@click.option("--adv-eps", type=float, default=None,
              help="ℓ∞ radius ε (default, as the paper: 0.3).")
@click.option("--adv-step", type=float, default=None,
              help="PGD step size (default, as the paper: 0.1; with a smaller --adv-eps give "
                   "a smaller step, e.g. 2.5ε/steps).")
@click.option("--adv-steps", type=int, default=None,
              help="PGD steps (default, as the paper: 10).")
@click.option("--trades-beta", type=float, default=None,
              help="TRADES weight β (default, as the paper: 6).")
@click.option("--adv-warmup", type=float, default=None, metavar="EPOCHS",
              help="Ramp ε (and the step) linearly from 0 over this many epochs, per batch "
                   "(0 = full ε from the start, as the paper; adversarial-quick: 3).")
@click.option("--adv-val", type=float, default=None,
              help="Share of the training split held out to select the epoch by PGD "
                   "accuracy (default 0.1; 0 = keep the last epoch).")
@click.option("--random-threshold", is_flag=True,
              help="DEQ defence: each sample's training-solver threshold uniform in "
                   "1..max_iter (main paper App. E.3: M = 8).")
@click.option("--random-state", is_flag=True,
              help="DEQ defence: loss at a random intermediate state z[i], i ~ U[1, N], "
                   "exact gradient (regulation paper Eq. 10; unroll/stochastic solver).")
@click.option("--spectral-cap", type=float, default=None, metavar="C",
              help="DEQ (mlp or conv cell): rescale W to ||W||_2 <= C after every step; "
                   "C < 1 keeps the cell a contraction (unique, reachable fixed point).")
@click.option("--amsgrad/--no-amsgrad", default=None,
              help="Adam's AMSGrad variant (adversarial presets: on).")
@click.option("--milestones", default=None,
              help="Epochs at which the learning rate is multiplied by --lr-gamma, e.g. 45.")
@click.option("--lr-gamma", type=float, default=None, help="MultiStepLR factor (default 0.1).")
@click.option("--grad-clip", type=float, default=None,
              help="Clip the gradient's l2 norm to this value.")
@click.option("--ffw-form", default=None,
              help="FFW layer form: eq57x (default; z0 = x~, every hidden matrix acts), eq57 "
                   "(z0 = 0) or eq32 (z0 = x~, no injection).")
@click.option("--snr-scale", default="realised", show_default=True,
              help="Training-noise SNR scale: realised or paper (Eq. 4 literally).")
@click.option("--device", default=None,
              help="Hardware model in the loop (preset name or .toml), e.g. rram, photonic.")
@click.option("--device-snr", default=None, help="Calibrate the training device to this SNR.")
@click.option("--device-noise-mode", default=None,
              help="Which part of the training device's noise --device-snr sets: physical "
                   "(default), dynamic, static or both (docs/devices.md).")
@click.option("--digital-layers", default=None, metavar="NAME,...",
              help="Layers kept digital on the training device, e.g. proj.U,head (a name "
                   "matches the layer whose qualified name ends with it: a DEQ's "
                   "cell.proj.U, an FFW's proj.U).")
@click.option("--device-adc-gain", type=click.Choice(["step", "epoch"]), default=None,
              help="Photonic training device with a calibrated ADC gain: measure it with "
                   "every step's weights (step, default) or once per epoch's chip (epoch).")
@click.option("--device-drift-alpha", type=click.Choice(["step", "epoch"]), default=None,
              help="rram training device with drift compensation: measure its α with every "
                   "step's programmed chip (step, default) or once per epoch's chip (epoch).")
@click.option("--device-programming", type=click.Choice(["step", "epoch"]), default=None,
              help="rram or photonic training device: program the chip with every step's "
                   "weights (step, default) or once per epoch's chip, holding its "
                   "programming error on later weights (epoch).")
@click.option("--device-calibration", default=None, metavar="epoch|step|N",
              help="Training device at a --device-snr: calibrate its noise scale to it once "
                   "per epoch's chip (epoch, default), before every step (step) or every N "
                   "steps.")
@click.option("--seed", type=click.IntRange(0, limits.MAX_SEED), default=0, show_default=True,
              help="Seed of the weights, data order and training noise.")
@click.option("--data-seed", type=click.IntRange(0, limits.MAX_SEED), default=0,
              show_default=True,
              help="Seed of the train/test split (mnist10k, digits) and of a generated task's "
                   "data (before it existed --seed drew it too).")
@click.option("--torch-device", default="cpu", show_default=True, help="cpu, cuda, cuda:1, ...")
@click.option("--out", default=None,
              help="Output directory (default runs/train/<kind>-d<depth>-w<width>-s<seed>-"
                   "<config hash>; a family: the cache's models/, see --cache).")
@click.option("--resume/--no-resume", default=True, show_default=True,
              help="Continue an interrupted run / reuse a finished one in --out.")
@cache_option
@threads_flag()
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--quiet", "-q", is_flag=True,
              help="No progress (bars, log lines, heartbeats); results are still printed.")
@with_heartbeat("train")
def command(**opts: Any) -> None:
    """Train one model or a depth-matched DEQ/FFW family on a task.

    Everything is validated (including whether the models fit into memory) before
    anything is written.

    \b
    Examples:
      noisydeq train --task digits --kind deq --depth 5
      noisydeq train --task mnist --data-dir DIR --depths 1,3,5 --train-snr 10
      noisydeq train --task digits --kind ffw --depth 3 --device rram --device-snr 10
    """
    from noisydeq.runtime import num_threads, thread_plan

    for name, top in (("width", limits.MAX_WIDTH), ("depth", limits.MAX_DEPTH)):
        if not 1 <= opts[name] <= top:  # before torch is imported: one line, at once
            raise NoisyDEQError(f"--{name}: must be an integer in 1..{top}, got {opts[name]}")
    check_task_name(opts["task"])  # torch-free, before num_threads loads torch
    # as every command: a directory that exists, for a task that reads files, or one line
    opts["data_dir"] = check_run_data_dir(opts["data_dir"], [opts["task"]], "the",
                                          "--data-dir")
    if opts["device"] is not None:
        load_spec(opts["device"])  # unknown device: one line, torch-free
    for key in HELD_QUANTITIES:  # a per-chip quantity held for an epoch: torch-free
        if opts[key] is not None:
            flag = "--" + key.replace("_", "-")
            if opts["device"] is None:
                raise NoisyDEQError(f"{flag}: needs a training --device")
            check_held(key, opts["device"], flag)
    if opts["device_calibration"] is not None:  # torch-free: one line
        _calibration_option(opts["device"], opts["device_snr"], opts["device_calibration"])
    # torch-free checks of what _command reads after torch loads (seconds under load, when
    # the heartbeat would speak first): the training noise, learning rate and --out
    noise = _noise(opts["train_snr"], opts["train_site"], opts["snr_scale"])
    TrainSpec.preset(opts["preset"], "deq", noise, _names=TRAIN_OPTIONS,
                     **{k: opts[k] for k in ("epochs", "batch_size", "lr") if opts[k] is not None})
    if opts["out"]:
        check_out_dir(Path(opts["out"]).expanduser())
    threads, _ = thread_plan(opts["threads"])
    with num_threads(threads):
        _command(opts)


def _command(opts: dict[str, Any]) -> None:
    from noisydeq.families import member_size
    from noisydeq.models.extra import fit_to_task
    from noisydeq.tasks import load_task

    dev = resolve_torch_device(opts["torch_device"])
    noise = _noise(opts["train_snr"], opts["train_site"], opts["snr_scale"])
    overrides: dict[str, Any] = {"seed": opts["seed"]}
    for key in ("epochs", "batch_size", "lr"):
        if opts[key] is not None:
            overrides[key] = opts[key]
    overrides.update(defence_overrides(opts, noise))
    if opts["device"] is not None:  # its preset is checked (command)
        overrides["device"] = opts["device"]
    if opts["device_snr"] is not None:
        overrides["device_snr_db"] = _snr(opts["device_snr"], "--device-snr")
        if opts["device"] is not None:  # an SNR the device cannot reach: one line, now
            from noisydeq.hardware import get_device
            from noisydeq.hardware.modes import check_mode

            get_device(opts["device"], snr_db=overrides["device_snr_db"],
                       noise_mode=check_mode(opts["device_noise_mode"] or "physical",
                                            "--device-noise-mode"))
    overrides.update(device_options(opts["device"], opts["device_noise_mode"],
                                    opts["digital_layers"]))
    for key in HELD_QUANTITIES:
        if opts[key] is not None:  # checked (command)
            overrides[key] = opts[key]
    if opts["device_calibration"] is not None:  # checked (command)
        overrides["device_calibration"] = opts["device_calibration"]
    if opts["ibp_eps"] is not None:
        overrides["ibp"] = {"eps": opts["ibp_eps"]}
    if opts["spectral_cap"] is not None:
        overrides["spectral_cap"] = opts["spectral_cap"]
        if opts["kind"] != "deq" or opts["cell"] not in ("mlp", "conv"):
            raise NoisyDEQError(f"--spectral-cap: caps the single W of a DEQ's mlp or conv "
                                f"cell; not a {opts['kind']} with the {opts['cell']} cell")
    monotone = _monotone(opts["monotone"])
    if opts["depths"] is None and opts["kind"] != "deq":
        for flag in ("random_threshold", "random_state"):
            if opts[flag]:
                raise NoisyDEQError(f"--{flag.replace('_', '-')}: a defence for DEQs; an "
                                    f"{opts['kind']} model has no solver")
    from noisydeq.adversarial.hooks import check_spec

    check_spec(TrainSpec.preset(opts["preset"], "deq", noise, _names=TRAIN_OPTIONS, **overrides),
               "deq")
    out = Path(opts["out"]).expanduser() if opts["out"] else None
    if out is not None:
        check_out_dir(out)

    if opts["depths"] is not None:
        fspec = build(FamilySpec, {
            "task": opts["task"], "data_dir": opts["data_dir"], "depths": opts["depths"],
            "hidden": opts["width"], "input_act": opts["input_act"], "seed": opts["seed"],
            "data_seed": opts["data_seed"],
            "cell": opts["cell"],
            "train_preset": opts["preset"], "train_snr_db": noise.snr_db,
            "train_site": opts["train_site"], "ffw_form": opts["ffw_form"],
            "snr_scale": opts["snr_scale"], "monotone": monotone,
            **({"kinds": [opts["kind"], "ffw_relu"]} if opts["kind"] == "mondeq" else {}),
            "train": {k: v for k, v in overrides.items() if k != "seed"},
        }, where="train", names={"depths": "--depths"})
        batch = max(fspec.train_spec(k).batch_size for k in fspec.kinds)  # validate first
        if out is None:  # the family goes to the model cache: writable, or one line; a
            # read-only one serves a family it holds whole (train_family: the first member
            # it lacks is one line, before any is loaded)
            from noisydeq.runtime import check_cache

            check_cache(reading=True)
        task = load_task(opts["task"], data_dir=opts["data_dir"], seed=opts["data_seed"])
        fit_to_task({"cell": opts["cell"]}, task)  # the cell must fit the task (one line)
        sizes = [member_size(k, d, fspec.hidden, task.in_features, task.out_features)
                 for d in fspec.depths for k in fspec.kinds]
        _check_memory(sizes, batch, dev)
        if out is not None:
            make_dir(out)
        _notice(task)
        _family(fspec, task, out, dev, opts)
        return

    if opts["variant"] is not None:
        if opts["kind"] != "lyadeq":
            raise NoisyDEQError("--variant: only --kind lyadeq has variants")
        build(LyapunovSpec, {"variant": opts["variant"]}, where="--variant")
    if opts["ffw_form"] is not None:
        if opts["kind"] != "ffw":
            raise NoisyDEQError(
                f"--ffw-form: given for a {opts['kind']} model (only an FFW has a layer form)"
            )
        build(ModelSpec, {"kind": "ffw", "in_features": 1, "out_features": 1,
                          "ffw_form": opts["ffw_form"]}, where="model")
    tspec = TrainSpec.preset(opts["preset"], opts["kind"], noise, _names=TRAIN_OPTIONS,
                             **overrides)
    task = load_task(opts["task"], data_dir=opts["data_dir"], seed=opts["data_seed"])
    data = {
        "kind": opts["kind"], "in_features": task.in_features,
        "out_features": task.out_features, "width": opts["width"], "depth": opts["depth"],
        "input_act": opts["input_act"], **fit_to_task({"cell": opts["cell"]}, task),
    }
    if opts["ffw_form"] is not None:
        data["ffw_form"] = opts["ffw_form"]
    if monotone is not None:
        data["monotone"] = monotone
    if opts["variant"] is not None:
        data["lyapunov"] = {"variant": opts["variant"]}
    mspec = build(ModelSpec, data, where="model")
    _check_memory([member_size(mspec.kind, mspec.depth, mspec.width, task.in_features,
                               task.out_features)], tspec.batch_size, dev)
    _notice(task)
    _single(tspec, task, mspec, out, dev, opts)


def device_options(device: str | None, noise_mode: str | None,
                   digital_layers: str | None) -> dict[str, Any]:
    """``device_noise_mode`` / ``digital_layers`` train-spec overrides of the CLI options
    (each needs ``--device``; a bad mode is one line)."""
    out: dict[str, Any] = {}
    for flag, value in (("--device-noise-mode", noise_mode), ("--digital-layers", digital_layers)):
        if value is not None and device is None:
            raise NoisyDEQError(f"{flag}: needs a training --device")
    if noise_mode is not None:
        out["device_noise_mode"] = noise_mode  # checked by the train spec (one line)
    if digital_layers is not None:
        out["digital_layers"] = [n.strip() for n in digital_layers.split(",") if n.strip()]
    return out


def _calibration_option(device: str | None, snr: str | None, value: str) -> None:
    """``--device-calibration``: needs a training ``--device`` at a ``--device-snr`` and
    ``epoch``, ``step`` or a step count; one line otherwise."""
    from noisydeq.specs.training import parse_calibration

    if device is None:
        raise NoisyDEQError("--device-calibration: needs a training --device")
    if snr is None:
        raise NoisyDEQError("--device-calibration: calibrates the device to --device-snr; at "
                            "the native SNR (no --device-snr) nothing is calibrated")
    try:
        parse_calibration(value)
    except ValueError as err:
        raise NoisyDEQError(f"--device-calibration: {err}") from None


def _check_memory(sizes: list[tuple[int, int]], batch: int, dev: torch.device) -> None:
    """Refuse models that cannot be trained in this machine's memory (one line)."""
    width, params = max(sizes, key=lambda s: s[1])
    need = limits.FLOAT * sum(p for _, p in sizes) + limits.model_bytes(params, batch, width)
    limits.check_memory(need, f"train: the largest model (width {width}, {params:,} "
                        "parameters)", str(dev), "lower --width / --depth(s)")


def _monotone(text: str | None) -> dict[str, Any] | None:
    """``param=lben,m=0.5`` → a dict validated as a MonotoneSpec."""
    if text is None:
        return None
    from noisydeq.specs.model import MonotoneSpec

    data: dict[str, Any] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep:
            raise NoisyDEQError(f"--monotone: '{part}' is not KEY=VALUE")
        low = value.strip().lower()
        data[key.strip()] = {"true": True, "false": False}.get(low, value.strip())
    return build(MonotoneSpec, data, where="--monotone").model_dump()
#: TrainSpec fields by the ``train`` option that sets them, for their error messages
TRAIN_OPTIONS = {"epochs": "--epochs", "batch_size": "--batch-size", "lr": "--lr",
                 "ibp.eps": "--ibp-eps", "spectral_cap": "--spectral-cap",
                 "device_snr_db": "--device-snr", "device_noise_mode": "--device-noise-mode",
                 "digital_layers": "--digital-layers", "seed": "--seed",
                 "device_calibration": "--device-calibration", "preset": "--train-preset"}
#: AdversarialSpec / OptimizerSpec fields by their option
ADVERSARIAL_OPTIONS = {"method": "--adversarial", "eps": "--adv-eps", "step": "--adv-step",
                       "steps": "--adv-steps", "beta": "--trades-beta",
                       "val_fraction": "--adv-val", "warmup_epochs": "--adv-warmup"}
OPTIMIZER_OPTIONS = {"amsgrad": "--amsgrad", "milestones": "--milestones",
                     "gamma": "--lr-gamma", "grad_clip": "--grad-clip"}


def defence_overrides(opts: dict[str, Any], noise: NoiseSpec) -> dict[str, Any]:
    """TrainSpec overrides of the adversarial / defence / optimiser options (validated)."""
    from noisydeq.specs.optimizer import AdversarialSpec, OptimizerSpec, RandomStateSpec

    base = TrainSpec.preset(opts["preset"], "deq", noise)
    over: dict[str, Any] = {}
    method = opts["adversarial"]
    given = {k: opts[o] for k, o in (("eps", "adv_eps"), ("step", "adv_step"),
                                     ("steps", "adv_steps"), ("beta", "trades_beta"),
                                     ("val_fraction", "adv_val"),
                                     ("warmup_epochs", "adv_warmup")) if opts[o] is not None}
    if method is not None and str(method).strip().lower() == "none":
        if given:
            raise NoisyDEQError("--adversarial none: the --adv-*/--trades-beta options need "
                                "an adversarial method")
        over["adversarial"] = None
    elif method is not None or given:
        adv = base.adversarial.model_dump() if base.adversarial is not None else {}
        if method is None and not adv:
            raise NoisyDEQError("--adv-eps/--adv-step/--adv-steps/--trades-beta/--adv-val/"
                                "--adv-warmup: "
                                "give --adversarial pgd|trades (or an adversarial preset)")
        adv.update(given)
        if method is not None:
            adv["method"] = method
        over["adversarial"] = build(AdversarialSpec, adv, where="train",
                                    names={k: v for k, v in ADVERSARIAL_OPTIONS.items()
                                           if k in given or k == "method"})
    if opts["random_threshold"]:
        solver = base.solver
        if solver is None:
            raise NoisyDEQError(f"--random-threshold: preset '{opts['preset']}' gives the DEQ "
                                "no training solver to randomise")
        over["solver"] = solver.model_copy(update={"random_threshold": True})
        if base.test_solver is None:
            over["test_solver"] = solver
    if opts["random_state"]:
        over["random_state"] = RandomStateSpec()
    opt = base.optimizer.model_dump() if base.optimizer is not None else {}
    if opts["amsgrad"] is not None:
        opt["amsgrad"] = opts["amsgrad"]
    if opts["milestones"] is not None:
        try:
            opt["milestones"] = [int(v) for v in str(opts["milestones"]).split(",") if v.strip()]
        except ValueError:
            raise NoisyDEQError(f"--milestones: '{opts['milestones']}' is not a comma list of "
                                "epochs") from None
    if opts["lr_gamma"] is not None:
        opt["gamma"] = opts["lr_gamma"]
    if opts["grad_clip"] is not None:
        opt["grad_clip"] = opts["grad_clip"]
    if opt != (base.optimizer.model_dump() if base.optimizer is not None else {}):
        over["optimizer"] = build(OptimizerSpec, opt, where="train", names=OPTIMIZER_OPTIONS)
    return over


def _notice(task: Any) -> None:
    if task.notice:
        click.echo(f"noisydeq: note: {task.notice}", err=True)


def _single(tspec: TrainSpec, task: Any, mspec: ModelSpec, out: Path | None,
            dev: torch.device, opts: dict) -> None:
    from noisydeq.families import build_member
    from noisydeq.train import train_model

    model = build_member(mspec, opts["seed"])
    if tspec.digital_layers:  # an unknown layer: one line, before the output is made
        from noisydeq.hardware.base import check_digital_layers

        check_digital_layers(model, tspec.digital_layers)
    if tspec.adversarial is not None:
        from noisydeq.adversarial.objective import check_inputs

        check_inputs(task, "--adversarial")
    config = None
    if out is None:  # named after the config, as a sweep's: another config, another folder
        from noisydeq import store
        from noisydeq.train_config import training_config

        config = training_config(model, task, tspec, dev)  # handed on: computed once
        chash = store.config_hash(config)
        out = Path("runs") / "train" / (f"{mspec.kind}-d{mspec.depth}-w{model.width}"
                                         f"-s{opts['seed']}-{chash[:12]}")
        check_out_dir(out)
    make_dir(out)
    res = train_model(model, task, tspec, out_dir=out, resume=opts["resume"],
                      torch_device=dev, quiet=opts["quiet"], desc=f"{mspec.kind}",
                      config=config)
    row = {"kind": mspec.kind, "depth": mspec.depth, "width": int(model.width),
           "params": sum(p.numel() for p in model.parameters()), "task": task.name,
           "metric": task.metric_name, "value": res.test_metric, "seconds": res.seconds,
           "seconds_this_run": res.run_seconds, "epoch_seconds": res.epoch_seconds,
           "loaded": res.loaded,
           "config_hash": res.config_hash, "path": str(res.path)}
    _report([row], opts["as_json"])
    if not opts["as_json"]:
        _convergence(res.convergence)


def _convergence(tallies: list[Any]) -> None:
    """The convergence lines of this call's evaluations (:mod:`noisydeq.convergence`)."""
    from noisydeq.convergence import report_lines

    for line in report_lines(tallies, "train records no convergence column (noisydeq "
                             "sweep / attack do, per cell)"):
        click.echo(line)


def _family(fspec: FamilySpec, task: Any, out: Path | None, dev: torch.device, opts: dict) -> None:
    from noisydeq.families import cache_root, train_family

    fam = train_family(fspec, task, cache_dir=out, torch_device=dev, quiet=opts["quiet"])
    root = cache_root(out) / "models"
    rows = [
        {"kind": m.kind, "depth": m.depth, "width": m.width, "params": m.params,
         "task": task.name, "metric": task.metric_name, "value": m.result.test_metric,
         "seconds": m.result.seconds, "seconds_this_run": m.result.run_seconds,
         "epoch_seconds": m.result.epoch_seconds,
         "loaded": m.cached, "config_hash": m.key,
         "path": str(root / m.key / "model.safetensors")}
        for m in fam.members
    ]
    _report(rows, opts["as_json"])
    if not opts["as_json"]:
        click.echo(f"family: {len(rows)} models in {fam.seconds:.1f} s "
                   f"({fam.trained_seconds:.1f} s training); cache {root}")
        _convergence([t for m in fam.members for t in m.result.convergence])


def _report(rows: list[dict[str, Any]], as_json: bool) -> None:
    """The models' table: ``total`` is the training time (over every run that trained the
    model), ``epochs`` the part of this run in the epochs (what the training bar times), as
    the log line's 'trained in 10.0 s: epochs 8.1 s, set-up and test 1.9 s'; both in
    seconds (the header "time epochs" over "1.5s 0.6s" read as one column)."""
    if as_json:
        click.echo(json.dumps(rows, indent=2, allow_nan=True))
        return
    k = max([4, *(len(r["kind"]) for r in rows)])  # mondeq, ffw_relu, lyadeq: wider
    click.echo(f"{'kind':<{k}} {'depth':>5} {'width':>5} {'params':>8}  {'metric':<8} "
               f"{'value':>9} {'total':>8} {'epochs':>8}  path")
    resumed = False
    for r in rows:
        if r["loaded"]:
            how, epochs = "cached", "-"
        else:
            this_run = r.get("seconds_this_run", r["seconds"])
            mark = "*" if r["seconds"] > this_run else ""  # resumed: total is over its runs
            resumed |= bool(mark)
            how, epochs = f"{r['seconds']:.1f}s{mark}", f"{r.get('epoch_seconds', 0.0):.1f}s"
        click.echo(f"{r['kind']:<{k}} {r['depth']:>5} {r['width']:>5} {r['params']:>8}  "
                   f"{r['metric']:<8} {_fmt(r['value'], r['metric']):>9} {how:>8} "
                   f"{epochs:>8}  {r['path']}")
    if resumed:
        click.echo("* resumed: total is the training time over every run that trained the "
                   "model, epochs this run's time in the epochs only")
