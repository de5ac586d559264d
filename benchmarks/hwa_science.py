"""Science check of hardware-aware training (issue 16): does training on the device
(``noisydeq train --device rram``: chips reprogrammed, read noise per MVM, the scaled
straight-through gradient) give models as robust on the device as aihwkit's own
hardware-aware training recipe, and both more robust than digital training?

Per seed, one family member (the sweep's FFW 64 → 3 × 128 → 10, Eq. 57x, or the matched
DEQ with ``--kinds deq,ffw``) from one initial model, on digits, trained three ways with
the same epochs, batches (the same per-epoch permutations), learning-rate schedule and
Adam:

* ``digital``: the sweep's digitally trained family member (``noisydeq sweep``).
* ``ours``: the same member trained on rram at its documented defaults
  (``--train-device rram``: native SNR, physical mode, everything per step).
* ``aihwkit``: the initial model through ``convert_to_analog`` with the hardware-aware
  training recipe of :mod:`benchmarks.hwaware` (``TorchInferenceRPUConfig``, Wan-2022
  ReRAM at 40 µS, ω = 1, ``ADD_NORMAL`` weight noise σ = 0.02, ``AnalogAdam`` with each
  tile at lr / s); its trained weights (in model units) are loaded back into the digital
  model.

Evaluation, of all three on the same chips:

1. ``noisydeq``'s rram preset through the sweep itself (``run_sweep`` with these models:
   calibrated per layer to each SNR level, 3 chips per seed, the same chips for the three
   ways of training) and at the native SNR (the chip deployed at its physical knobs and
   calibrated as ``noisydeq train`` validates: ``hardware.calibrate`` + ``evaluate``).
2. aihwkit's inference as a cross-check: every Linear an ``AnalogLinear`` with the
   ``rram-wan2022`` config of :mod:`benchmarks.peers.aihwkit_sweep` at its native knobs,
   programmed and drifted to t = 1 s, 3 chips (programming seeds) per seed.

``--arms`` adds ablation ways of training (:data:`ARMS`, issue 16: which part of training on
the device gives its robustness gain), each from the same initial model, batches and
schedule at ``--arm-snr`` (default 10 dB): rram in another noise mode (``dynamic``: the
dynamic SNR at the level, the static part physical; ``static``: the static SNR at the
level, the reads physical; ``both``: one scale on every source), rram in the physical mode
with its programming error (and drift α) held per epoch (``held``, ``static-held``,
``all-epoch``), the ``snr`` device (per-sample, per-MVM output noise ∝ ‖Wx‖ on every
layer, no static part: ``snr``; on the hidden MVMs only: ``snr-hidden``; with the input
projection or the head digital: ``snr-no-proj``, ``snr-no-head``) and no device at all,
the model's own signal-site noise (paper Eq. 3-4, ``noisydeq sweep --train-snr``:
``signal``). The reference ``ours rram@10 dB`` (physical mode, everything per step) comes
from ``--train-device-snr 10``. The sweep directory's ``train_noise_mode`` column says the
mode each model was trained in (an arm's: ``dynamic``, ``static`` or ``both`` for those
arms, else the sweep's ``physical``; :class:`ArmModel`), its ``train_device`` the arm
(``arm-<name>``); the JSON's ``way`` names the arm. (A ``--out`` whose sweep was written
before the column said so holds arm cells labelled ``physical``: the sweep refuses them in
one line naming the file; use another ``--out`` or delete ``sweep/``.)

``--aihwkit-std`` sets aihwkit's training weight noise (several: one aihwkit model each;
``none``: no aihwkit model);
``match`` gives each layer the σ whose ``ADD_NORMAL`` noise yields ``--match-snr`` dB of
total SNR in noisydeq's sense (Σ‖Wx‖²/Σ‖y − Wx‖²) on that layer's inputs in the digital
model on the calibration inputs (:func:`matched_std`).

Output: one JSON with a row per (seed, way of training, evaluation, level, chip) and a
printed table (mean ± s.d. over every seed × chip, and the s.d. of the per-seed means).

    OMP_NUM_THREADS=1 python -m benchmarks.hwa_science --seeds 0,1,2 --out /tmp/hwa
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks.hwaware import aihwkit_model, aihwkit_optimizer
from noisydeq.swept_model import SweepModel

#: ablation arms (``--arms``): name → (what differs from ``ours rram@<level>``: rram in the
#: physical mode, chip per epoch, everything per step; the SweepSpec fields that set it)
ARMS: dict[str, tuple[str, dict]] = {
    "dynamic": ("rram, dynamic SNR at the level, static part physical",
                {"train_noise_mode": "dynamic"}),
    "static": ("rram, static SNR at the level, reads physical", {"train_noise_mode": "static"}),
    "both": ("rram, total SNR by one scale on every source", {"train_noise_mode": "both"}),
    "held": ("rram physical, programming error held per epoch",
             {"train_programming": "epoch"}),
    "static-held": ("rram static, programming error held per epoch",
                    {"train_noise_mode": "static", "train_programming": "epoch"}),
    "all-epoch": ("rram physical, programming error and drift α held per epoch",
                  {"train_programming": "epoch", "train_drift_alpha": "epoch"}),
    "snr": ("the snr device: per-sample per-MVM output noise ∝ ‖Wx‖, no static part",
            {"train_device": ["none", "snr"]}),
    "snr-hidden": ("the snr device on the hidden MVMs only (proj.U and head digital in "
                   "training, on the device at evaluation)",
                   {"train_device": ["none", "snr"], "digital_layers": ["proj.U", "head"]}),
    "snr-no-proj": ("the snr device, the input projection proj.U digital in training",
                    {"train_device": ["none", "snr"], "digital_layers": ["proj.U"]}),
    "snr-no-head": ("the snr device, the head digital in training",
                    {"train_device": ["none", "snr"], "digital_layers": ["head"]}),
    "signal": ("no device: the model's signal-site noise (Eq. 3-4)",
               {"train_device": []}),
}


def arm_noise_mode(arm: str, default: str) -> str:
    """The training noise mode of ablation arm ``arm`` (its :data:`ARMS` fields), else
    ``default`` (the sweep spec's, which every arm's fields override)."""
    return ARMS[arm][1].get("train_noise_mode", default)


@dataclasses.dataclass
class ArmModel(SweepModel):
    """An ablation arm's model in the evaluation sweep: its rows' ``train_noise_mode`` is
    the mode it was trained in (``noise_mode``), not the sweep spec's (``physical``, the
    reference's) that a :class:`~noisydeq.swept_model.SweepModel` reports."""

    noise_mode: str = "physical"

    @classmethod
    def of(cls, m: SweepModel, noise_mode: str) -> ArmModel:
        return cls(**{f.name: getattr(m, f.name) for f in dataclasses.fields(SweepModel)},
                   noise_mode=noise_mode)

    def training_columns(self, spec: Any) -> dict[str, Any]:
        cols = super().training_columns(spec)
        if cols and self.train_device is not None:
            cols["train_noise_mode"] = self.noise_mode
        return cols


def way_name(train_device: str | None, snr: float | None, train_snr: float = math.inf) -> str:
    """The way of training of a model trained on ``train_device`` at ``snr`` (None:
    its native SNR; device None: digitally, with signal-site model noise at ``train_snr``;
    ``arm-<name>``: the rram ablation arm ``name`` of :data:`ARMS`)."""
    if train_device is None:
        return "digital" if math.isinf(train_snr) else f"signal noise@{train_snr:g} dB"
    if train_device == "aihwkit":
        return "aihwkit HWA"
    if train_device.startswith("aihwkit-std"):
        return f"aihwkit HWA σ={train_device.removeprefix('aihwkit-std')}"
    if train_device.startswith("aihwkit-match"):
        return f"aihwkit HWA σ@{train_device.removeprefix('aihwkit-match')[:-2]} dB"
    level = "native" if snr is None else f"{snr:g} dB"
    if train_device.startswith("arm-"):
        arm = train_device.removeprefix("arm-")
        return f"ours {ARMS[arm][1].get('train_device', ['rram'])[-1]}@{level} {arm}"
    return f"ours {train_device}@{level}"


def matched_std(model: nn.Module, x: torch.Tensor, snr_db: float) -> dict[str, dict]:
    """Per Linear of ``model``, the ``ADD_NORMAL`` σ (fraction of the layer's max|W|) whose
    weight noise gives the layer a total SNR of ``snr_db`` in noisydeq's sense
    (Σ‖Wx‖² / Σ‖y − Wx‖², over the layer's own inputs in the network on ``x``): the noise
    σ·m·ξ (m = max|W|, ξ iid N(0, 1)) adds σ²m²·n_out·‖x‖² to each input's error, so
    σ² = Σ‖Wx‖² / (10^(snr/10)·m²·n_out·Σ‖x‖²). Also the σ matching the plain weight SNR
    ‖W‖²/E‖σ·m·ξ‖² (isotropic inputs) for comparison."""
    sums: dict[str, list[float]] = {}
    hooks = []
    for name, lin in model.named_modules():
        if isinstance(lin, nn.Linear):
            def hook(mod, inp, _out, name=name):
                xi = inp[0].detach().reshape(-1, mod.in_features)
                acc = sums.setdefault(name, [0.0, 0.0])
                acc[0] += float((xi @ mod.weight.detach().T).square().sum())
                acc[1] += float(xi.square().sum())
            hooks.append(lin.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        for h in hooks:
            h.remove()
    out = {}
    for name, (signal, inputs) in sums.items():
        w = model.get_submodule(name).weight.detach()
        m2 = float(w.abs().max()) ** 2
        gain = 10 ** (snr_db / 10)
        out[name] = {"std_output_snr": math.sqrt(signal / (gain * m2 * w.shape[0] * inputs)),
                     "std_weight_snr": math.sqrt(float(w.square().mean()) / (gain * m2))}
    return out


def set_tile_std(net: nn.Module, std: dict[str, float]) -> None:
    """Each ``AnalogLinear`` of the aihwkit ``net`` at its own ``ADD_NORMAL`` σ."""
    from aihwkit.nn import AnalogLinear

    for name, mod in net.named_modules():
        if isinstance(mod, AnalogLinear):
            for tile in mod.analog_tiles():
                tile.rpu_config.modifier.std_dev = std[name]
                tile.tile._modifier.std_dev = std[name]  # the copy its forward reads


def train_aihwkit(model: nn.Module, task, tspec,
                  std: float | dict[str, float] = 0.02) -> tuple[nn.Module, list[float]]:
    """``model`` trained by aihwkit's hardware-aware recipe over the batches and learning
    rates ``noisydeq.train`` gives ``tspec`` (``std``: its weight noise σ, one for every
    layer or per Linear name); returns a digital copy holding the trained weights (model
    units) and the per-epoch mean losses."""
    from noisydeq.noise import derive_seed
    from noisydeq.train import _Rng, epoch_lr, forward_logits

    torch.manual_seed(derive_seed(tspec.seed, "aihwkit", "training") % (2**63))  # its weight noise
    net = aihwkit_model(model, std if isinstance(std, float) else 0.02)
    if isinstance(std, dict):
        set_tile_std(net, std)
    opt = aihwkit_optimizer(net, tspec.lr)
    base = [g["lr"] for g in opt.param_groups]
    rng = _Rng(tspec.seed, torch.device("cpu"))
    n = len(task.x_train) if tspec.max_train_samples is None else min(
        tspec.max_train_samples, len(task.x_train))
    x_all, y_all = task.x_train[:n], task.y_train[:n]
    losses = []
    for epoch in range(tspec.epochs):
        factor = epoch_lr(tspec, epoch) / tspec.lr
        for group, lr in zip(opt.param_groups, base, strict=True):
            group["lr"] = lr * factor
        perm = rng.permutation(n, epoch)
        net.train()
        total = 0.0
        for i in range(0, n, tspec.batch_size):
            idx = perm[i:i + tspec.batch_size]
            out, _ = forward_logits(net, x_all[idx], None, None)
            loss = task.loss(out, y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        losses.append(total / n)
    return digital_copy(model, net), losses


def digital_copy(model: nn.Module, net: nn.Module) -> nn.Module:
    """A copy of ``model`` holding the weights of the aihwkit-converted ``net``."""
    from aihwkit.nn import AnalogLinear

    out = copy.deepcopy(model)
    for name, mod in net.named_modules():
        if isinstance(mod, AnalogLinear):
            w, b = mod.get_weights()
            lin = out.get_submodule(name)
            with torch.no_grad():
                lin.weight.copy_(w)
                if b is not None:
                    lin.bias.copy_(b)
    return out.eval()


def native_accuracy(model: nn.Module, task, seed: int, chip: int) -> float:
    """Accuracy on rram at its physical knobs: the sweep's chip ``chip`` of ``seed``,
    calibrated on the sweep's 512 calibration inputs, read noise keyed as ``evaluate``."""
    from noisydeq import hardware
    from noisydeq.noise import derive_seed
    from noisydeq.sweep.plan import CALIBRATION_INPUTS
    from noisydeq.train import evaluate

    device = hardware.get_device("rram").new_chip(derive_seed(seed, "chip", chip))
    deployed = device.deploy(model).eval()
    hardware.calibrate(deployed, task.x_train[:CALIBRATION_INPUTS])
    return evaluate(deployed, task, device_seed=derive_seed(seed, "native", chip))


def aihwkit_accuracy(model: nn.Module, task, seed: int, chip: int) -> float:
    """Accuracy on aihwkit's rram-wan2022 inference tile at its native knobs (t = 1 s)."""
    from benchmarks.peers.aihwkit_sweep import accuracy, deploy, linear_names

    analog = deploy(model, {n: (1.0, 1.0) for n in linear_names(model)}, seed, chip)
    return accuracy(analog, task.x_test, task.y_test, seed * 100 + chip)[0]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--kinds", default="ffw")
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--snr", default="0,5,10,20,inf")
    ap.add_argument("--chips", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=None, help="default: the quick preset's")
    ap.add_argument("--train-device-snr", default="native",
                    help="ours: training SNRs, 'native' (the documented default) and/or dB")
    ap.add_argument("--aihwkit-std", default="0.02",
                    help="aihwkit HWA: training weight-noise σs (fraction of max|W|), "
                         "comma-separated; 'match' = per layer the σ whose noise gives the "
                         "--match-snr total SNR on the digital model's calibration inputs")
    ap.add_argument("--match-snr", type=float, default=10.0)
    ap.add_argument("--arms", default="",
                    help="ablation ways of training at --arm-snr, comma-separated: "
                         + ", ".join(ARMS))
    ap.add_argument("--arm-snr", type=float, default=10.0,
                    help="the training SNR (dB) of the --arms ways")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    from noisydeq.families import family_spec_for_sweep, prepared_member
    from noisydeq.runtime import cache_root
    from noisydeq.specs.sweep import SweepSpec
    from noisydeq.sweep.plan import family_models
    from noisydeq.sweep.write import run_sweep
    from noisydeq.tasks import load_task

    try:  # bad input: one line (argparse's), before anything is trained or written
        seeds = [int(s) for s in a.seeds.split(",")]
        snr = [float(s) for s in a.snr.split(",")]
        [float(s) for s in a.train_device_snr.split(",") if s != "native"]
        stds = [] if a.aihwkit_std == "none" else [
            s if s == "match" else float(s) for s in a.aihwkit_std.split(",")]
    except ValueError as e:
        ap.error(f"--seeds / --snr / --train-device-snr / --aihwkit-std: {e}")
    arms = [x for x in a.arms.split(",") if x]
    if any(x not in ARMS for x in arms) or len(set(arms)) < len(arms):
        ap.error(f"--arms: want distinct names of {', '.join(ARMS)}, got {a.arms!r}")
    if not math.isfinite(a.arm_snr):
        ap.error(f"--arm-snr: want a finite SNR in dB, got {a.arm_snr}")
    if any(s != "match" and not (0 <= s < math.inf) for s in stds) or len(set(stds)) < len(stds):
        ap.error(f"--aihwkit-std: want distinct finite σ >= 0 or 'match', got {a.aihwkit_std!r}")
    if not math.isfinite(a.match_snr):
        ap.error(f"--match-snr: want a finite SNR in dB, got {a.match_snr}")
    try:
        spec = SweepSpec(task="digits", depths=[a.depth], kinds=a.kinds.split(","),
                         seeds=seeds, device="rram", snr_db=snr, chips=a.chips,
                         epochs=a.epochs, train_device=["none", "rram"])
    except ValueError as e:  # pydantic's ValidationError is a ValueError
        ap.error(str(e).splitlines()[-2].strip() if "\n" in str(e) else str(e))
    task = load_task("digits", seed=spec.data_seed)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t0, c0 = time.perf_counter(), time.process_time()
    models = []
    for level in a.train_device_snr.split(","):  # digital (first spec) and ours, cached
        extra = {} if level == "native" else {"train_device_snr_db": [float(level)]}
        got = family_models(spec.model_copy(update=extra) if extra else spec, task,
                            progress=False)
        models += [m for m in got if not models or m.train_device is not None]
    t_fam = time.process_time() - c0
    t_arms = {}
    for arm in arms:  # the ablation ways, cached as the sweep caches its families
        c1 = time.process_time()
        fields = dict(ARMS[arm][1])
        if arm == "signal":
            fields["train_snr_db"] = [a.arm_snr]
        else:
            fields["train_device_snr_db"] = [a.arm_snr]
        got = family_models(spec.model_copy(update=fields), task, progress=False)
        for m in got:
            if arm == "signal" or m.train_device is not None:
                if m.train_device is not None and m.train_device != arm:
                    m.train_device = f"arm-{arm}"  # its own model id and way
                if m.train_device is not None:  # its table rows: the mode it trained in
                    m = ArmModel.of(m, arm_noise_mode(arm, spec.train_noise_mode))
                models.append(m)
        t_arms[arm] = time.process_time() - c1
    from noisydeq.sweep.plan import CALIBRATION_INPUTS

    losses, matched = {}, {}
    for seed in seeds:
        fspec = family_spec_for_sweep(spec, seed, math.inf)
        for kind in spec.kinds:
            init, tspec, _ = prepared_member(fspec, task, kind, a.depth, cache_root(),
                                             torch.device("cpu"))
            ref = next(m for m in models if m.seed == seed and m.kind == kind)
            for std in stds:
                if std == "match":
                    layer = matched_std(ref.model, task.x_train[:CALIBRATION_INPUTS],
                                        a.match_snr)
                    matched[f"{seed}-{kind}"] = layer
                    std = {n: v["std_output_snr"] for n, v in layer.items()}
                    name = f"aihwkit-match{a.match_snr:g}dB"
                else:
                    name = "aihwkit" if std == 0.02 else f"aihwkit-std{std:g}"
                trained, losses[(seed, kind, name)] = train_aihwkit(init, task, tspec, std)
                models.append(SweepModel(trained, kind, a.depth, ref.width, ref.params, seed,
                                         math.inf, name, None))
    t_aihwkit = time.process_time() - c0 - t_fam - sum(t_arms.values())

    def way(m: SweepModel) -> str:
        return way_name(m.train_device, m.train_device_snr_db, m.train_snr_db)

    result = run_sweep(spec, out / "sweep", task=task, models=models, progress=False,
                       plots=False, threads="1", jobs=1)
    rows = []
    for m in models:
        for r in (r for r in result.rows if r["model_id"] == m.model_id):
            rows.append({"seed": m.seed, "kind": m.kind, "way": way(m), "eval": "noisydeq",
                         "snr": float(r["snr_db"]), "chip": int(r["chip"]),
                         "accuracy": float(r["value"])})
        for chip in range(a.chips):
            rows.append({"seed": m.seed, "kind": m.kind, "way": way(m), "eval": "noisydeq",
                         "snr": "native", "chip": chip,
                         "accuracy": native_accuracy(m.model, task, m.seed, chip)})
            rows.append({"seed": m.seed, "kind": m.kind, "way": way(m), "eval": "aihwkit",
                         "snr": "native t=1s", "chip": chip,
                         "accuracy": aihwkit_accuracy(m.model, task, m.seed, chip)})
    facts = {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
             "cpu_s_digital_and_ours_training": t_fam, "cpu_s_aihwkit_training": t_aihwkit,
             "loadavg": Path("/proc/loadavg").read_text().split()[:3],
             "aihwkit_epoch_losses": {f"{s}-{k}-{n}": v for (s, k, n), v in losses.items()},
             "aihwkit_matched_std": matched,
             "spec": json.loads(spec.model_dump_json())}
    if arms:
        facts["cpu_s_arm_training"] = t_arms
        facts["arms"] = {x: ARMS[x][0] for x in arms}
    (out / "hwa_science.json").write_text(json.dumps({"rows": rows, "facts": facts}, indent=1))
    print(table(rows))
    print()
    print(paired(rows))
    print(json.dumps({k: v for k, v in facts.items() if k != "spec"}))
    return 0


def _label(evaluation: str, snr) -> str:
    if evaluation == "aihwkit":
        return f"aihwkit {snr}"
    if isinstance(snr, str):
        return f"rram {snr}"
    return "digital weights" if math.isinf(snr) else f"rram {snr:g} dB"


def table(rows: list[dict]) -> str:
    """Markdown: accuracy mean ± s.d. over seeds × chips [s.d. of the per-seed means]."""
    levels = list(dict.fromkeys((r["eval"], r["snr"]) for r in rows))
    kinds = list(dict.fromkeys(r["kind"] for r in rows))
    ways = list(dict.fromkeys(r["way"] for r in rows))
    head = "| model | training | " + " | ".join(
        _label(e, s) for e, s in levels) + " |"
    lines = [head, "|" + "---|" * (2 + len(levels))]
    for kind in kinds:
        for w in ways:
            cells = []
            for e, s in levels:
                sel = [r for r in rows if (r["kind"], r["way"], r["eval"], r["snr"])
                       == (kind, w, e, s)]
                acc = [r["accuracy"] for r in sel]
                per_seed = [statistics.mean(r["accuracy"] for r in sel if r["seed"] == sd)
                            for sd in sorted({r["seed"] for r in sel})]
                sd_all = statistics.stdev(acc) if len(acc) > 1 else 0.0
                sd_seed = statistics.stdev(per_seed) if len(per_seed) > 1 else 0.0
                cells.append(f"{statistics.mean(acc):.3f} ± {sd_all:.3f} [{sd_seed:.3f}]")
            lines.append(f"| {kind.upper()} | {w} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired(rows: list[dict]) -> str:
    """Markdown: each way's accuracy − the digital model's, paired by seed and chip (same
    chips): mean [lowest, highest per-seed mean difference]."""
    levels = list(dict.fromkeys((r["eval"], r["snr"]) for r in rows))
    kinds = list(dict.fromkeys(r["kind"] for r in rows))
    ways = [w for w in dict.fromkeys(r["way"] for r in rows) if w != "digital"]
    acc = {(r["kind"], r["way"], r["eval"], r["snr"], r["seed"], r["chip"]): r["accuracy"]
           for r in rows}
    lines = ["| model | training − digital | " + " | ".join(_label(e, s) for e, s in levels)
             + " |", "|" + "---|" * (2 + len(levels))]
    for kind in kinds:
        for w in ways:
            cells = []
            for e, s in levels:
                per_seed: dict[int, list[float]] = {}
                for (k, ww, ee, ss, seed, chip), v in acc.items():
                    if (k, ww, ee, ss) == (kind, w, e, s):
                        per_seed.setdefault(seed, []).append(
                            v - acc[(kind, "digital", e, s, seed, chip)])
                means = [statistics.mean(v) for v in per_seed.values()]
                cells.append(f"{statistics.mean(means):+.3f} [{min(means):+.3f}, "
                             f"{max(means):+.3f}]")
            lines.append(f"| {kind.upper()} | {w} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
