"""The plain script a researcher writes instead of ``noisydeq sweep`` (issue 17, Build 1).

aihwkit ``AnalogLinear`` layers and a Python loop over models, SNR levels and chips: the
same trained family (loaded from noisydeq's cache), the same test set and calibration
inputs (the first 512 training samples), the same RRAM model as the ``rram-wan2022``
preset (docs/devices.md, ``rram``): ``TorchInferenceRPUConfig`` (aihwkit's pure-torch
inference tile, ``IOParameters`` defaults), ``ReRamWan2022NoiseModel`` on a single-pair
converter at g_max = 40 µS, global drift compensation, ``weight_scaling_omega = 1``,
programmed and drifted to t = 1 s.

The SNR knobs are aihwkit's own: the noise model's ``noise_scale`` (programming and drift
noise, s_p) and ``forward.out_noise`` (read noise, 0.06·s_r). The swept SNR is each layer's
total SNR Σ‖Wx‖² / Σ‖y − Wx‖² (bias left out) on its calibration inputs, set as the
``physical`` noise mode does (docs/devices.md, "Noise modes"): below the layer's native
SNR (s_p = s_r = 1) only the read noise grows (s_p = 1), above it both shrink together
(s_p = s_r = s). Calibration bisects log s per (model, level, chip, layer) on that layer's
clean activations (hooks on a noise-free forward of the 512 inputs; a DEQ cell contributes
every iteration, at most 512 rows kept), every measurement programming the layer with its
own seed and reading with a fixed seed (common random numbers, so the measured SNR is a
deterministic, monotone function of s), until the measured SNR is within ``--tol-db``.

What a competent researcher writes, not a strawman: the test set in one batch under
``torch.no_grad``, each (model, level, chip) programmed once, the model's own forward (its
DEQ solver), one thread per process if asked. ``--knobs FILE`` reads the knobs a previous
calibrating run saved (``--save-knobs``) instead of calibrating: the analogue of a sweep
whose calibration is cached. Output: one JSON with a row per (model, level, chip).

    python -m benchmarks.peers.aihwkit_sweep --snr 0,10,20,30 --chips 2 --depths 1 \\
        --out peer.json --save-knobs knobs.json
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

#: aihwkit's default read noise (``IOParameters.out_noise``)
OUT_NOISE = 0.06
#: bracket of the knob search (log s), as wide as a sweep's reachable range
S_MIN, S_MAX = 1e-4, 1e4


def rpu_config(noise_scale: float = 1.0, read_scale: float = 1.0, g_max: float = 40.0):
    """aihwkit inference config of the ``rram-wan2022`` preset with knobs s_p, s_r."""
    from aihwkit.inference.compensation.drift import GlobalDriftCompensation
    from aihwkit.inference.converter.conductance import SinglePairConductanceConverter
    from aihwkit.inference.noise.reram import ReRamWan2022NoiseModel
    from aihwkit.simulator.configs import TorchInferenceRPUConfig

    cfg = TorchInferenceRPUConfig()
    cfg.noise_model = ReRamWan2022NoiseModel(
        g_converter=SinglePairConductanceConverter(g_max=g_max), noise_scale=noise_scale)
    cfg.drift_compensation = GlobalDriftCompensation()
    cfg.mapping.weight_scaling_omega = 1.0
    cfg.forward.out_noise = OUT_NOISE * read_scale
    return cfg


def analog_linear(lin: nn.Linear, noise_scale: float = 1.0, read_scale: float = 1.0):
    """An ``AnalogLinear`` holding ``lin``'s weights and bias (digital bias, aihwkit default)."""
    from aihwkit.nn import AnalogLinear

    w = lin.weight.detach()
    layer = AnalogLinear(w.shape[1], w.shape[0], bias=lin.bias is not None,
                         rpu_config=rpu_config(noise_scale, read_scale))
    layer.set_weights(w, None if lin.bias is None else lin.bias.detach())
    return layer.eval()


def program(layer: nn.Module, seed: int, t_inference: float = 1.0) -> None:
    """Program one chip's copy of the layer (its own seed) and read it at t (drift comp.)."""
    torch.manual_seed(seed)
    layer.program_analog_weights()
    layer.drift_analog_weights(t_inference)


def linear_names(model: nn.Module) -> list[str]:
    """The model's Linear layers (every one goes on the crossbar, as in the sweep)."""
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]


def layer_seed(seed: int, chip: int, index: int) -> int:
    """The programming seed of layer ``index`` on ``chip``: calibration and deployment
    program the same conductances (common random numbers)."""
    return (seed * 1000 + chip) * 100 + index


def capture_inputs(model: nn.Module, x: torch.Tensor, rows: int = 512) -> dict[str, torch.Tensor]:
    """Each Linear's inputs in a noise-free forward of ``x`` (at most ``rows``, spread)."""
    seen: dict[str, list[torch.Tensor]] = {n: [] for n in linear_names(model)}
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: seen[n].append(i[0].detach()))
             for n, m in model.named_modules() if n in seen]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    out = {}
    for n, parts in seen.items():
        a = torch.cat(parts).reshape(-1, parts[0].shape[-1])
        idx = torch.linspace(0, len(a) - 1, min(rows, len(a))).round().long()
        out[n] = a[idx]
    return out


def measured_snr(layer: nn.Module, lin: nn.Linear, x: torch.Tensor, read_seed: int) -> float:
    """Total SNR of the analog layer on ``x``: Σ‖Wx‖² / Σ‖y − Wx‖² in dB (bias excluded)."""
    with torch.no_grad():
        exact = x @ lin.weight.T
        torch.manual_seed(read_seed)
        y = layer(x) - (0 if lin.bias is None else lin.bias)
    noise = float(((y - exact) ** 2).sum())
    return 10 * math.log10(float((exact**2).sum()) / noise) if noise > 0 else math.inf


def calibrate_layer(lin: nn.Linear, x: torch.Tensor, target: float, seed: int,
                    tol_db: float, max_iter: int = 40) -> tuple[float, float, float, int]:
    """(s_p, s_r, measured SNR, measurements) hitting ``target`` dB by bisection in log s."""
    def snr_at(sp: float, sr: float) -> float:
        layer = analog_linear(lin, sp, sr)
        program(layer, seed)
        return measured_snr(layer, lin, x, seed + 7)

    native = snr_at(1.0, 1.0)
    n = 1
    if abs(native - target) <= tol_db:
        return 1.0, 1.0, native, n
    below = target < native  # physical mode: read noise only below native, both above
    lo, hi = (0.0, math.log(S_MAX)) if below else (math.log(S_MIN), 0.0)
    knobs = (lambda s: (1.0, s)) if below else (lambda s: (s, s))
    best = (1.0, 1.0, native)
    for _ in range(max_iter):
        mid = 0.5 * (lo + hi)
        sp, sr = knobs(math.exp(mid))
        snr = snr_at(sp, sr)
        n += 1
        if abs(snr - target) < abs(best[2] - target):
            best = (sp, sr, snr)
        if abs(snr - target) <= tol_db or hi - lo < 1e-6:
            break
        if snr > target:  # too clean: more noise
            lo = mid
        else:
            hi = mid
    # the measured point closest to the target: aihwkit re-reads a whole batch at half the
    # input scale when one output clips, so the SNR can jump across the target as s moves
    return best[0], best[1], best[2], n


def deploy(model: nn.Module, knobs: dict[str, tuple[float, float]], seed: int, chip: int):
    """A copy of ``model`` with every Linear an AnalogLinear at its knobs, programmed."""
    analog = copy.deepcopy(model)
    for i, name in enumerate(linear_names(model)):
        parent_name, _, attr = name.rpartition(".")
        parent = analog.get_submodule(parent_name) if parent_name else analog
        layer = analog_linear(model.get_submodule(name), *knobs[name])
        program(layer, layer_seed(seed, chip, i))
        setattr(parent, attr, layer)
    return analog.eval()


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int,
             exact: dict[str, nn.Linear] | None = None) -> tuple[float, dict[str, float]]:
    """Test accuracy and, for the layers in ``exact``, the total SNR each realised in this
    forward (Σ‖Wx‖² / Σ‖y − b − Wx‖² over every call: every iteration of a DEQ cell)."""
    sums = {n: [0.0, 0.0] for n in exact or {}}

    def meter(name: str):
        def hook(mod: nn.Module, inputs: tuple, out: torch.Tensor) -> None:
            lin = exact[name]
            clean = inputs[0] @ lin.weight.T
            err = out - clean - (0 if lin.bias is None else lin.bias)
            sums[name][0] += float((clean**2).sum())
            sums[name][1] += float((err**2).sum())
        return hook

    hooks = [m.register_forward_hook(meter(n)) for n, m in model.named_modules() if n in sums]
    torch.manual_seed(seed)
    try:
        with torch.no_grad():
            out = model(x)
    finally:
        for h in hooks:
            h.remove()
    pred = out.argmax(-1)
    snr = {n: 10 * math.log10(s / e) if e > 0 else math.inf for n, (s, e) in sums.items()}
    return float(((pred == y) & torch.isfinite(out).all(-1)).float().mean()), snr


def load_family(task: str, depths: list[int], seed: int, kinds: str,
                epochs: int | None = None):
    """The trained family and task of ``noisydeq sweep`` with these settings (its cache)."""
    from noisydeq.config import SweepSpec, build
    from noisydeq.sweep import family_models
    from noisydeq.tasks import load_task

    spec = build(SweepSpec, {"task": task, "depths": depths, "seeds": [seed],
                             "kinds": kinds.split(","), "epochs": epochs})
    data = load_task(spec.task, seed=spec.data_seed)
    return data, family_models(spec, data, progress=False)


def run(snr: list[float], chips: int, depths: list[int], task: str = "digits", seed: int = 0,
        kinds: str = "deq,ffw", knobs_in: dict[str, Any] | None = None,
        tol_db: float = 0.05, loaded: tuple[Any, Any] | None = None,
        epochs: int | None = None, measure: bool = False,
        ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The sweep loop: rows (model, level, chip, accuracy, per-layer SNR) and the knobs.

    ``loaded``: (task, models) of :func:`load_family` already in memory (benchmarks).
    ``measure``: also meter each layer's realised SNR in the test forward (``test_snr_db``;
    an extra exact product per layer call, so off when timed)."""
    data, models = (loaded if loaded is not None
                    else load_family(task, depths, seed, kinds, epochs))
    calib_x = data.x_train[:512]
    rows, knobs_out = [], {}
    for m in models:
        model = m.model.eval()
        acts = capture_inputs(model, calib_x) if knobs_in is None else None
        names = linear_names(model)
        for level in snr:
            for chip in range(chips):
                key = f"{m.model_id}|{level:g}|{chip}"
                t0 = time.perf_counter()
                knobs: dict[str, tuple[float, float]] = {}
                layers: dict[str, Any] = {}
                if knobs_in is not None:
                    knobs = {n: tuple(v) for n, v in knobs_in[key].items()}
                else:
                    for i, n in enumerate(names):
                        sp, sr, got, k = calibrate_layer(model.get_submodule(n), acts[n], level,
                                                         layer_seed(seed, chip, i), tol_db)
                        knobs[n] = (sp, sr)
                        layers[n] = {"snr_db": got, "measurements": k, "s_p": sp, "s_r": sr}
                    knobs_out[key] = knobs
                t_cal = time.perf_counter() - t0
                analog = deploy(model, knobs, seed, chip)
                exact = {n: model.get_submodule(n) for n in names} if measure else None
                acc, test_snr = accuracy(analog, data.x_test, data.y_test, seed * 1000 + chip,
                                         exact)
                rows.append({"model_id": m.model_id, "kind": m.kind, "depth": m.depth,
                             "snr_db": level, "chip": chip, "accuracy": acc,
                             "calibration_s": t_cal, "total_s": time.perf_counter() - t0,
                             "layers": layers, "test_snr_db": test_snr})
    return rows, knobs_out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.peers.aihwkit_sweep",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--snr", default="0,10,20,30", help="SNR levels in dB: 0:30, 0,10,20")
    ap.add_argument("--chips", type=int, default=2)
    ap.add_argument("--depths", default="1")
    ap.add_argument("--kinds", default="deq,ffw")
    ap.add_argument("--task", default="digits")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=None,
                    help="the family's training epochs, as given to noisydeq sweep")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    ap.add_argument("--tol-db", type=float, default=0.05)
    ap.add_argument("--knobs", default=None, help="knobs of a previous run: no calibration")
    ap.add_argument("--save-knobs", default=None)
    ap.add_argument("--out", default=None, help="rows as JSON")
    ap.add_argument("--measure", action="store_true",
                    help="meter each layer's realised SNR in the test forward (slower)")
    args = ap.parse_args(argv)
    from noisydeq.specs.noise import snr_list

    try:
        snr = snr_list(args.snr)
    except ValueError as e:
        print(f"aihwkit_sweep: error: --snr: {e}", file=sys.stderr)
        return 2
    try:
        depths = [int(v) for v in args.depths.split(",")]
    except ValueError as e:
        print(f"aihwkit_sweep: error: {e}", file=sys.stderr)
        return 2
    if args.chips < 1 or not snr or not all(math.isfinite(v) for v in snr):
        print("aihwkit_sweep: error: --chips ≥ 1 and finite --snr levels", file=sys.stderr)
        return 2
    if not args.tol_db > 0 or (args.threads is not None and args.threads < 1):
        print("aihwkit_sweep: error: --tol-db > 0 and --threads ≥ 1", file=sys.stderr)
        return 2
    knobs_in = None
    if args.knobs:
        try:
            knobs_in = json.loads(Path(args.knobs).read_text())
        except (OSError, ValueError) as e:
            print(f"aihwkit_sweep: error: --knobs {args.knobs}: {e}", file=sys.stderr)
            return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    from noisydeq.store import atomic_write_text

    t0 = time.perf_counter()
    try:
        rows, knobs = run(snr, args.chips, depths, args.task, args.seed, args.kinds, knobs_in,
                          args.tol_db, epochs=args.epochs, measure=args.measure)
    except KeyError as e:
        print(f"aihwkit_sweep: error: --knobs has no entry {e}", file=sys.stderr)
        return 2
    if args.save_knobs and knobs:
        atomic_write_text(args.save_knobs, json.dumps(knobs) + "\n")
    if args.out:
        atomic_write_text(args.out, json.dumps({"rows": rows,
                                                "seconds": time.perf_counter() - t0}) + "\n")
    for r in rows:
        print(f"{r['model_id']:<22} {r['snr_db']:>5g} dB chip {r['chip']}: "
              f"accuracy {r['accuracy']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
