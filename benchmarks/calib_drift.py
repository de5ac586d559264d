"""Does the training SNR of device-in-the-loop training hold within an epoch?

``noisydeq train --device D --device-snr S`` calibrates the device's noise scale to S dB on
clean training activations when each epoch's chip is deployed (``device_calibration =
"epoch"``, the default); the weights then change at every step while the noise scale stays.
This benchmark trains family members (digits, the sweep's FFW of ``--depth`` and its matched
DEQ) on each ``--devices`` at ``--snr`` dB with the sweep's own family specs and, at
``--points`` evenly spaced batches of every epoch (the first: right after the epoch's
calibration), measures the realised static, dynamic and total SNR of every device layer on a
fixed probe batch (the first 64 test samples, as the sweep's
:class:`~noisydeq.sweep.hardware.DeviceMeter`; one fixed read-noise stream), with the
weights of that moment (before the batch's step). The measurement is the one the sweep
reports as ``static_snr_db`` / ``dynamic_snr_db`` / ``measured_snr_db``: each layer's
signal, static, dynamic and total error powers (:mod:`noisydeq.hardware.parts`) at the
layer's last evaluation of each probe sample (a DEQ cell's: the noisy fixed point). The probe
consumes none of the training's random streams: the trained weights are those of a run
without it.

``--calibration`` also trains with ``device_calibration`` set (``step`` or an integer N),
each from the same initial model and batches, for the paired comparison.

Output: one JSON row per (seed, kind, device, calibration, epoch, batch, layer) and a printed
table of the drift (probe SNR minus the epoch's first probe, and minus the target).

``--cost R``: instead, the CPU time per training step of each ``--calibration`` value, no
probes: R repetitions, interleaved (each repetition trains every (kind, device) once with
every value, in a rotated order), ``--epochs`` epochs each, seed 0; CPU time of the epochs'
steps alone (validation and set-up left out); median and range over the repetitions of the
time per step and of its ratio to ``epoch``'s in the same repetition.

    OMP_NUM_THREADS=1 python -m benchmarks.calib_drift --seeds 0,1,2 --epochs 3 --out /tmp/cd
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import torch

from noisydeq.store import atomic_write_text

PROBE_SAMPLES = 64
PROBE_SEED = 0x5EED


def probe_batches(n_batches: int, points: int) -> list[int]:
    """``points`` evenly spaced batch indices of an epoch of ``n_batches`` (the first is 0)."""
    if points >= n_batches:
        return list(range(n_batches))
    return sorted({round(i * (n_batches - 1) / (points - 1)) for i in range(points)})


def probe_snr(net: torch.nn.Module, x: torch.Tensor) -> dict[str, dict[str, float]]:
    """Per device layer of ``net``, its realised static / dynamic / total SNR (dB) on ``x``
    (eval mode, no gradient, one fixed read-noise stream per layer; the layers' training
    streams and modes are restored)."""
    from noisydeq.hardware.controls import device_layers, layer_snr_parts, set_measure
    from noisydeq.noise import NoiseStream, derive_seed
    from noisydeq.train import forward_logits

    layers = device_layers(net)
    saved = {n: layer.stream for n, layer in layers.items()}
    was = net.training
    net.eval()
    try:
        for name, layer in layers.items():
            layer.stream = NoiseStream.from_seed(derive_seed(PROBE_SEED, name), x.device)
        set_measure(net, True)
        with torch.no_grad():
            forward_logits(net, x, None, torch.Generator().manual_seed(PROBE_SEED))
        return layer_snr_parts(net)
    finally:
        set_measure(net, False)
        for name, layer in layers.items():
            layer.stream = saved[name]
        net.train(was)


def train_probed(model, task, tspec, points: int) -> tuple[list[dict], object, float]:
    """Train ``model`` by ``noisydeq.train.train_model`` with ``tspec``, probing the device
    layers' SNR at ``points`` batches per epoch; (probe rows, result, CPU seconds of the
    training alone)."""
    from noisydeq import train as train_mod

    n = len(task.x_train) if tspec.max_train_samples is None else min(
        tspec.max_train_samples, len(task.x_train))
    n_batches = math.ceil(n / tspec.batch_size)
    at = set(probe_batches(n_batches, points))
    x_probe = task.x_test[:PROBE_SAMPLES]
    rows: list[dict] = []
    state = {"epoch": -1, "batch": 0, "probe_cpu": 0.0}
    original = train_mod._device_streams

    def streams(net, rng, epoch, samples):
        if epoch != state["epoch"]:
            state["epoch"], state["batch"] = epoch, 0
        if state["batch"] in at:
            c0 = time.process_time()
            for layer, parts in probe_snr(net, x_probe).items():
                rows.append({"epoch": epoch, "batch": state["batch"], "layer": layer,
                             **{f"{k}_snr_db": v for k, v in parts.items()}})
            state["probe_cpu"] += time.process_time() - c0
        state["batch"] += 1
        original(net, rng, epoch, samples)

    train_mod._device_streams = streams
    c0 = time.process_time()
    try:
        result = train_mod.train_model(model, task, tspec, out_dir=None, quiet=True)
    finally:
        train_mod._device_streams = original
    return rows, result, time.process_time() - c0 - state["probe_cpu"]


def step_cpu(model, task, tspec) -> float:
    """CPU seconds per training step of ``train_model(model, task, tspec)`` (the epochs'
    passes over the data only: the device's per-epoch chip and validation left out)."""
    from noisydeq import train as train_mod

    spent = [0.0, 0]
    original = train_mod._train_epoch

    def timed(*args, **kwargs):
        c0 = time.process_time()
        out = original(*args, **kwargs)
        spent[0] += time.process_time() - c0
        spent[1] += 1
        return out

    train_mod._train_epoch = timed
    try:
        train_mod.train_model(model, task, tspec, out_dir=None, quiet=True)
    finally:
        train_mod._train_epoch = original
    n = len(task.x_train) if tspec.max_train_samples is None else min(
        tspec.max_train_samples, len(task.x_train))
    return spent[0] / (spent[1] * math.ceil(n / tspec.batch_size))


def _fmt(values: list[float]) -> str:
    v = [x for x in values if math.isfinite(x)]
    if not v:
        return "nan"
    return f"{statistics.mean(v):+.2f}±{statistics.stdev(v) if len(v) > 1 else 0.0:.2f}"


def summarise(rows: list[dict], target: float) -> list[str]:
    """Per (kind, device, calibration, layer, epoch): the total SNR at the epoch's first
    probe minus the target, and the static / dynamic / total drift (last probe minus the
    first) and the largest |total − target| within the epoch; mean ± s.d. over seeds."""
    groups: dict[tuple, dict[int, list[dict]]] = {}
    for r in rows:
        key = (r["kind"], r["device"], r["calibration"], r["layer"], r["epoch"])
        groups.setdefault(key, {}).setdefault(r["seed"], []).append(r)
    out = ["kind device calib layer epoch | total@0−tgt | Δstatic Δdynamic Δtotal "
           "(last−first) | max|total−tgt|"]
    for key in sorted(groups):
        first, ds, dd, dt, worst = [], [], [], [], []
        for seq in groups[key].values():
            seq = sorted(seq, key=lambda r: r["batch"])
            a, b = seq[0], seq[-1]
            first.append(a["total_snr_db"] - target)
            ds.append(b["static_snr_db"] - a["static_snr_db"])
            dd.append(b["dynamic_snr_db"] - a["dynamic_snr_db"])
            dt.append(b["total_snr_db"] - a["total_snr_db"])
            worst.append(max(abs(r["total_snr_db"] - target) for r in seq))
        out.append(f"{key[0]} {key[1]} {key[2]} {key[3]} {key[4]} | {_fmt(first)} | "
                   f"{_fmt(ds)} {_fmt(dd)} {_fmt(dt)} | {_fmt(worst)}")
    return out


def overview(rows: list[dict], target: float) -> list[str]:
    """Per (kind, device, calibration): over every probe of every layer and seed, the
    share of probes whose total SNR is more than 1 / 3 dB from the target, in epoch 0 and
    in the later epochs, and the largest |total − target| of each."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["kind"], r["device"], r["calibration"]), []).append(r)
    out = ["kind device calib | epoch 0: >1 dB, >3 dB, max | later epochs: >1 dB, >3 dB, max"]
    for key in sorted(groups):
        cells = []
        for first in (True, False):
            off = [abs(r["total_snr_db"] - target) for r in groups[key]
                   if (r["epoch"] == 0) == first and math.isfinite(r["total_snr_db"])]
            cells.append("-" if not off else
                         f"{sum(o > 1 for o in off) / len(off):.0%}, "
                         f"{sum(o > 3 for o in off) / len(off):.0%}, {max(off):.1f} dB")
        out.append(f"{key[0]} {key[1]} {key[2]} | {cells[0]} | {cells[1]}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--kinds", default="ffw,deq")
    ap.add_argument("--devices", default="rram,photonic")
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--snr", type=float, default=10.0)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--points", type=int, default=10)
    ap.add_argument("--calibration", default="epoch",
                    help="device_calibration values to train with, comma-separated "
                         "(epoch, step or an integer N)")
    ap.add_argument("--cost", type=int, default=0, metavar="R",
                    help="measure the CPU time per step instead (R interleaved repetitions)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    from noisydeq.families import family_spec_for_sweep, prepared_member
    from noisydeq.runtime import cache_root
    from noisydeq.specs.sweep import SweepSpec
    from noisydeq.tasks import load_task

    try:
        seeds = [int(s) for s in a.seeds.split(",")]
    except ValueError as e:
        ap.error(f"--seeds: {e}")
    if not math.isfinite(a.snr) or a.points < 2 or a.epochs < 1:
        ap.error("--snr: a finite dB; --points >= 2; --epochs >= 1")
    calibrations = a.calibration.split(",")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    task = None
    rows, runs = [], []

    def member(seed: int, device: str, kind: str, calib: str):
        nonlocal task
        sweep = SweepSpec(task="digits", depths=[a.depth], kinds=[kind], seeds=[seed],
                          device=device, epochs=a.epochs, train_device=[device],
                          train_device_snr_db=[a.snr], train_calibration=calib)
        fam = family_spec_for_sweep(sweep, seed, math.inf, device, a.snr)
        if task is None:
            task = load_task("digits", seed=sweep.data_seed)
        model, tspec, _ = prepared_member(fam, task, kind, a.depth, cache_root(None) / "models",
                                          torch.device("cpu"))
        return model, tspec, task

    if a.cost:
        return cost(a, calibrations, member, out)
    for seed in seeds:
        for device in a.devices.split(","):
            for kind in a.kinds.split(","):
                for calib in calibrations:
                    model, tspec, task = member(seed, device, kind, calib)
                    got, result, cpu = train_probed(model, task, tspec, a.points)
                    base = {"seed": seed, "kind": kind, "device": device,
                            "calibration": calib, "target_db": a.snr}
                    rows += [{**base, **r} for r in got]
                    runs.append({**base, "train_cpu_s": cpu,
                                 "test_metric": result.test_metric,
                                 "history": result.history})
                    print(f"seed {seed} {device} {kind} calib {calib}: test "
                          f"{result.test_metric:.4f}, train CPU {cpu:.1f} s", flush=True)
                    atomic_write_text(out / "calib_drift.json", json.dumps(
                        {"args": vars(a), "rows": rows, "runs": runs}, indent=1))
    lines = summarise(rows, a.snr) + [""] + overview(rows, a.snr)
    atomic_write_text(out / "summary.txt", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def cost(a: argparse.Namespace, calibrations: list[str], member, out: Path) -> int:
    """``--cost``: CPU time per step of every calibration, interleaved repetitions."""
    import os

    per: dict[tuple, list[float]] = {}
    for r in range(a.cost):
        for device in a.devices.split(","):
            for kind in a.kinds.split(","):
                order = calibrations[r % len(calibrations):] + calibrations[:r % len(calibrations)]
                for calib in order:
                    model, tspec, task = member(0, device, kind, calib)
                    per.setdefault((kind, device, calib), []).append(
                        step_cpu(model, task, tspec))
        print(f"repetition {r + 1}/{a.cost} done; load {os.getloadavg()[0]:.1f}", flush=True)
    lines = ["kind device calib | CPU ms/step median [min, max] | ratio to epoch median "
             "[min, max]"]
    for (kind, device, calib), times in sorted(per.items()):
        base = per.get((kind, device, "epoch"))
        ratio = ([t / b for t, b in zip(times, base, strict=True)] if base else [math.nan])
        lines.append(f"{kind} {device} {calib} | {1e3 * statistics.median(times):.2f} "
                     f"[{1e3 * min(times):.2f}, {1e3 * max(times):.2f}] | "
                     f"{statistics.median(ratio):.2f} [{min(ratio):.2f}, {max(ratio):.2f}]")
    atomic_write_text(out / "cost.json", json.dumps(
        {"args": vars(a), "cpu_s_per_step": {" ".join(k): v for k, v in per.items()},
         "load": os.getloadavg()}, indent=1))
    atomic_write_text(out / "cost.txt", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
