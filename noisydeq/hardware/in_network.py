"""Calibration inside the noisy network (docs/devices.md, "Calibration").

Calibrating each layer on the activations of a *clean* forward (:func:`calibrate`) meets its
target on inputs it never sees once the network is noisy: upstream layers change the
inputs of every layer below them, and a DEQ's cell sees its noisy fixed point, not the clean
one. :func:`calibrate_in_network` starts from the clean calibration and then walks the
levels in ascending order. Each level is run through the deployed model (one noise stream
per level and layer, the same draws at every forward of the level), each layer's input is
captured at its *last* evaluation of every sample (the noisy fixed point for a DEQ; the one
evaluation of an FFW layer) and the layer is recalibrated for that level on exactly those
inputs. The in-network correction of a knob (in-network over clean knob, on its noise-mode
path) changes slowly from one level to the next, so a level starts from its clean knobs
shifted by the previous level's correction, and the forward there both measures the start
(kept when within the tolerance) and gives a secant step through the previous level's
(knob, in-network SNR) point: the slope of the *self-consistent* SNR, since a DEQ's cell
moves its own inputs with its knob (at 0 dB a search on fixed inputs overshoots by ~1.5 dB
under additive-like noise). One forward per level where the start lands within
:data:`REFINE_DB` of the target; otherwise (the first level, or a jump) the level is run
again at the stepped knobs and takes a secant step through its own two points — what every
level took before (two rounds of all levels: twice the forwards and a fixed-input search
per layer and level). The report gives, per forward, the largest miss of the knobs it
started from.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from noisydeq.hardware import modes
from noisydeq.hardware.controls import (
    calibrate,
    device_layers,
    set_sample_snr,
    subsample_rows,
)
from noisydeq.hardware.layer import CALIB_ROWS, DeviceLayer, Knobs
from noisydeq.hardware.parts import Parts
from noisydeq.noise import NoiseStream, active_subset, derive_seed

#: defaults of :func:`calibrate_in_network` (docs/devices.md: measured convergence)
ROUNDS = 2
SAMPLES = 512
#: each round runs the samples this many times with independent noise and recalibrates on
#: all the inputs captured: a layer's in-network SNR at 0 dB varies by ~0.3 dB (one std,
#: rram) from one draw to the next, so a knob fitted to one draw misses the mean by that much
DRAWS = 4
#: a layer is measured on at least this many noisy outputs (rows × outputs): a narrow
#: layer's captured inputs are read several times (independent draws of its dynamic noise)
MIN_OUTPUTS = 20_000
MAX_REPEATS = 8
#: a level whose first in-network forward finds some layer further than this (dB) from the
#: target is measured again after the step (its own secant), up to ``rounds`` forwards
REFINE_DB = 0.25


def repeated(rows: Tensor, n_out: int) -> Tensor:
    """``rows`` repeated so that rows × ``n_out`` ≥ :data:`MIN_OUTPUTS` (at most
    :data:`MAX_REPEATS` times): each repeat gets its own draw of the dynamic noise, so the
    measured SNR of a narrow layer (a 10-output head) is not one draw's."""
    reps = min(MAX_REPEATS, max(1, math.ceil(MIN_OUTPUTS / max(rows.shape[0] * n_out, 1))))
    return rows.repeat(reps, 1) if reps > 1 else rows


@dataclass
class NetworkReport:
    """What :func:`calibrate_in_network` did: levels, the most forwards per level, per
    forward (first, second, ...) the largest miss of any layer's target-part SNR (dB) on its
    captured inputs at the knobs it started from (how far they were off inside the
    network), and the number of noisy forwards (one level each) it ran."""

    levels: list[float]
    rounds: int
    off_db: list[float] = field(default_factory=list)
    forwards: int = 0


class _LastInputs:
    """Forward hooks keeping each layer's input at its last evaluation of every batch row."""

    def __init__(self, layers: dict[str, DeviceLayer], total: int) -> None:
        self.total = total
        self.inputs: dict[str, Tensor] = {}
        self.seen: dict[str, Tensor] = {}
        self.handles = [layer.register_forward_hook(self._hook(name))
                        for name, layer in layers.items()]

    def _hook(self, name: str):
        def fn(_mod: nn.Module, inputs: tuple[Tensor, ...], _out: Tensor) -> None:
            x = inputs[0].detach()
            subset = active_subset(x.shape[0])
            if name not in self.inputs:
                self.inputs[name] = x.new_zeros((self.total, *x.shape[1:]))
                self.seen[name] = torch.zeros(self.total, dtype=torch.bool, device=x.device)
            buf, seen = self.inputs[name], self.seen[name]
            if subset is not None and subset.total == self.total:
                rows = subset.index.to(x.device)
                if subset.real is not None:  # padding rows are not evaluated for themselves
                    keep = subset.real.to(x.device)
                    rows, x = rows[keep], x[keep]
                buf[rows] = x
                seen[rows] = True
            elif x.shape[0] == self.total:
                buf.copy_(x)
                seen.fill_(True)

        return fn

    def rows(self, name: str, layer: DeviceLayer, block: slice) -> Tensor | None:
        """Input vectors of ``layer`` for the batch rows ``block`` (None: never called);
        samples whose input is not finite (a diverged solve) are left out."""
        if name not in self.inputs:
            return None
        x = self.inputs[name][block][self.seen[name][block]]
        x = x[torch.isfinite(x.reshape(x.shape[0], -1)).all(dim=1)]
        return layer.input_rows(x) if x.shape[0] else None

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def _level_chunks(levels: Sequence[float], n: int, max_rows: int) -> list[list[float]]:
    per = max(1, max_rows // max(n, 1))
    return [list(levels[i : i + per]) for i in range(0, len(levels), per)]


def _noisy_inputs(
    model: nn.Module, layers: dict[str, DeviceLayer], x: Tensor, levels: list[float], seed: int,
    forward: Callable[[nn.Module, Tensor], Any],
) -> tuple[_LastInputs, int]:
    """One forward of ``x`` at the stacked ``levels``; the layers' last inputs per row."""
    n, k = x.shape[0], len(levels)
    xs = x.repeat(k, *([1] * (x.ndim - 1)))
    snr = torch.tensor(levels, dtype=x.dtype, device=x.device).repeat_interleave(n)
    level_seeds = [derive_seed(seed, "calibrate-in-network", repr(float(s))) for s in levels]
    for name, layer in layers.items():
        layer.stream = NoiseStream.from_blocks(
            [derive_seed(s, "layer", name) for s in level_seeds], [n] * k, device=x.device)
    set_sample_snr(model, snr)
    capture = _LastInputs(layers, n * k)
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(seed, "calibrate-in-network", "rng") % (2**63))
            forward(model, xs)
    finally:
        capture.close()
    return capture, n


def calibrate_in_network(
    model: nn.Module,
    x: Tensor,
    levels: Sequence[float],
    *,
    rounds: int = ROUNDS,
    samples: int | None = SAMPLES,
    draws: int = DRAWS,
    seed: int = 0,
    forward: Callable[[nn.Module, Tensor], Any] | None = None,
    clean_start: bool = True,
) -> NetworkReport:
    """Calibrate every device layer of the deployed ``model`` to each finite SNR of
    ``levels`` on the inputs it sees in the noisy network (module docstring).

    ``x``: network inputs (training data); the clean calibration uses all of them, the
    noisy forwards the first ``samples`` (None: all), each run ``draws`` times with
    independent noise (all captured inputs are used). ``rounds``: the most noisy forwards
    per level (0: clean calibration only; a level whose first forward lands within
    :data:`REFINE_DB` of the target takes one). ``forward(model, x)`` runs the model
    (default ``model(x)``); a forward holds one level's ``samples × draws`` rows (bounded
    by ``samples`` and ``draws``). ``clean_start=False``: the layers were calibrated on
    ``x`` already (:func:`calibrate`). Each layer keeps the knobs found per level
    (``layer.control_for``); its noise streams and per-sample targets are restored
    afterwards.
    """
    if rounds < 0 or draws < 1:
        raise ValueError("rounds must be >= 0 and draws >= 1")
    forward = forward if forward is not None else (lambda m, inp: m(inp))
    finite = sorted({float(v) for v in levels if math.isfinite(v)})
    layers = device_layers(model)
    report = NetworkReport(finite, rounds)
    if not finite or not layers:
        return report
    if clean_start:
        calibrate(model, x)  # clean start: knobs on the clean activations
    clean = {level: {name: layer.control_for(level) for name, layer in layers.items()}
             for level in finite}
    if rounds == 0:
        return report
    xs = x if samples is None else x[:samples]
    xs = xs.repeat(draws, *([1] * (xs.ndim - 1)))  # rows keyed by position: own draws
    saved = {name: (layer.stream, layer.sample_snr) for name, layer in layers.items()}
    report.off_db = [0.0] * rounds
    #: per layer: (clean knobs, final knobs) of the last level and its last in-network
    #: measurement (knobs, SNR): the next level's start and cross-level secant prior
    last: dict[str, tuple[Knobs, Knobs]] = {}
    measured: dict[str, tuple[Knobs, float]] = {}
    try:
        for level in finite:
            for name, layer in layers.items():
                ref = last.get(name)
                start = None if ref is None else modes.shifted(
                    layer, layer.noise_mode, clean[level][name], *ref)
                layer._controls[level] = clean[level][name] if start is None else start
            priors = dict(measured)  # the previous level's points (self-consistent slope)
            for r in range(rounds):
                # the same draws at every forward of a level (common random numbers): the
                # inputs change only through the knobs
                capture, n = _noisy_inputs(model, layers, xs, [level], seed, forward)
                block = slice(0, n)
                worst = 0.0
                for name, layer in layers.items():
                    rows = capture.rows(name, layer, block)
                    if rows is None:
                        continue
                    rows = repeated(subsample_rows(rows, CALIB_ROWS * draws), layer.n_out)
                    miss = _recalibrate(layer, level, rows, priors, measured, name)
                    worst = max(worst, miss)
                report.off_db[r] = max(report.off_db[r], worst)
                report.forwards += 1
                if worst <= REFINE_DB:
                    break
                # far off: measure again at the new knobs, with this level's own point as
                # the secant's prior (same draws: the slope of the self-consistent SNR)
                priors = {name: measured[name] for name in measured}
            for name, layer in layers.items():
                last[name] = (clean[level][name], layer._controls[level])
    finally:
        for name, layer in layers.items():
            layer.stream, layer.sample_snr = saved[name]
            layer._sample_controls = None
    return report


def measure_in_network(
    model: nn.Module,
    x: Tensor,
    levels: Sequence[float],
    *,
    seed: int = 1,
    max_rows: int = 4096,
    forward: Callable[[nn.Module, Tensor], Any] | None = None,
) -> dict[float, dict[str, Parts]]:
    """Each device layer's static, dynamic and total error powers inside the noisy network:
    ``{level: {layer: Parts}}``, measured on the inputs ``x`` at each finite level.

    One forward at the stacked levels (as :func:`calibrate_in_network`'s rounds, seeded by
    ``seed``) gives every layer's input at its last evaluation of each sample (a DEQ's noisy
    fixed point); each layer is then read again on all those inputs at the level's knobs
    with a fresh noise stream, so the parts are those of the network's operating point.
    """
    forward = forward if forward is not None else (lambda m, inp: m(inp))
    finite = sorted({float(v) for v in levels if math.isfinite(v)})
    layers = device_layers(model)
    out: dict[float, dict[str, Parts]] = {}
    saved = {name: (layer.stream, layer.sample_snr) for name, layer in layers.items()}
    try:
        for chunk in _level_chunks(finite, x.shape[0], max_rows):
            capture, n = _noisy_inputs(model, layers, x, chunk, seed, forward)
            for j, level in enumerate(chunk):
                block = slice(j * n, (j + 1) * n)
                out[level] = {}
                for name, layer in layers.items():
                    rows = capture.rows(name, layer, block)
                    if rows is not None:
                        rows = repeated(rows, layer.n_out)
                        out[level][name] = layer.measure_parts(layer.control_for(level), rows,
                                                               seed=seed)
    finally:
        for name, layer in layers.items():
            layer.stream, layer.sample_snr = saved[name]
            layer._sample_controls = None
    return out


def _recalibrate(layer: DeviceLayer, level: float, rows: Tensor,
                 priors: dict[str, tuple[Knobs, float]], measured: dict[str, tuple[Knobs, float]],
                 name: str) -> float:
    """Recalibrate ``layer`` for ``level`` on ``rows`` (captured at its current knobs; an
    earlier in-network point in ``priors`` gives a secant step) and record the point
    measured here in ``measured``; returns how far (dB) its target part was from the level
    at the current knobs (0 without signal)."""
    start = layer._controls[level]
    knobs, was = layer.recalibrate(level, rows, start, priors.get(name))
    layer._controls[level] = knobs
    if math.isnan(was):
        return 0.0
    measured[name] = (start, was)
    return abs(was - level)
