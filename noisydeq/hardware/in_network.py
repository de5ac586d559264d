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

Not every level is run through the network: on a dense grid the levels at least
:data:`SPACING` dB apart (:func:`anchor_levels`: every level below :data:`DENSE_BELOW_DB`,
then every ``SPACING`` dB, the highest) are, and each level between two of them takes
the clean calibration to a shifted target, ``level + δ``, where δ — the in-network
correction in dB of clean SNR (:func:`clean_offset`) — is interpolated linearly between
the two measured levels. The correction changes slowly with the level (it is what lets
one forward per level suffice above), so a level between anchors costs one clean search
on the 512 calibration vectors instead of a noisy forward of 2,048 network rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from noisydeq.errors import NoisyDEQError
from noisydeq.hardware import modes
from noisydeq.hardware.controls import (
    calibrate,
    device_layers,
    kept_digital,
    set_sample_snr,
    subsample_rows,
)
from noisydeq.hardware.layer import CALIB_ROWS, DeviceLayer, Knobs
from noisydeq.hardware.parts import Parts
from noisydeq.noise import NoiseStream, active_subset, derive_seed, stacked_chunks

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
#: levels measured inside the network are at least this far apart (dB); the levels between
#: two of them take the interpolated in-network correction (:func:`anchor_levels`)
SPACING = 5.0
#: ... except below this level (dB), where every level is run: there the correction is
#: largest and not linear between levels 5 dB apart (digits DEQ of depth 5 on rram: its cell
#: and head move 0.5-0.7 dB between 0 and 5 dB, and a 5 dB interpolation missed the
#: per-level estimator's knobs by up to 0.37 dB at 1-4 dB; from 5 dB up by <= 0.2 dB)
DENSE_BELOW_DB = 5.0


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
    network), the number of noisy forwards (one level each) it ran and the levels it ran
    them at (the others interpolated)."""

    levels: list[float]
    rounds: int
    off_db: list[float] = field(default_factory=list)
    forwards: int = 0
    measured: list[float] = field(default_factory=list)


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


@contextmanager
def restored_streams(layers: dict[str, DeviceLayer]) -> Iterator[None]:
    """Leave the device ``layers`` as found (errors included): each layer's noise stream and
    per-sample SNR, which :func:`_noisy_inputs` sets for its stacked-level forwards, put back
    and the per-sample controls derived from them cleared."""
    saved = {name: (layer.stream, layer.sample_snr) for name, layer in layers.items()}
    try:
        yield
    finally:
        for name, layer in layers.items():
            layer.stream, layer.sample_snr = saved[name]
            layer._sample_controls = None


def _no_device_layer(model: nn.Module) -> None:
    """Say why :func:`calibrate_in_network` has nothing to calibrate in ``model``: refused
    when ``model`` was never deployed (no device layer at all: a digital model, calibrated by
    mistake); one warning line when :meth:`~noisydeq.hardware.base.Device.deploy` kept
    every layer digital as asked (``digital_layers``: such a model runs exact, as chosen)."""
    kept = kept_digital(model)
    if kept is None:
        raise NoisyDEQError(
            f"calibrate_in_network: the {type(model).__name__} has no device layer (it was "
            "never deployed): deploy it first, e.g. model = hardware.get_device('rram')"
            ".deploy(model)")
    from noisydeq import store

    names = ", ".join(n or "the model itself" for n in kept) or "none"
    store.warn(f"calibrate_in_network: every layer of the {type(model).__name__} was kept "
               f"digital when it was deployed (digital_layers: {names}): it runs exact, "
               "nothing to calibrate")


def calibrate_in_network(
    model: nn.Module,
    x: Tensor,
    levels: float | Sequence[float],
    *,
    rounds: int = ROUNDS,
    samples: int | None = SAMPLES,
    draws: int = DRAWS,
    seed: int = 0,
    forward: Callable[[nn.Module, Tensor], Any] | None = None,
    clean_start: bool = True,
    spacing: float = SPACING,
) -> NetworkReport:
    """Calibrate every device layer of the deployed ``model`` to each finite SNR of
    ``levels`` (dB: one number or several) on the inputs it sees in the noisy network
    (module docstring).

    ``x``: network inputs (training data); the clean calibration uses all of them, the
    noisy forwards the first ``samples`` (None: all), each run ``draws`` times with
    independent noise (all captured inputs are used). ``rounds``: the most noisy forwards
    per level (0: clean calibration only; a level whose first forward lands within
    :data:`REFINE_DB` of the target takes one). ``forward(model, x)`` runs the model
    (default ``model(x)``); a forward holds one level's ``samples × draws`` rows (bounded
    by ``samples`` and ``draws``). ``clean_start=False``: the layers were calibrated on
    ``x`` already (:func:`calibrate`). Each layer keeps the knobs found per level
    (``layer.control_for``); its noise streams and per-sample targets are restored
    afterwards. ``spacing`` (dB): the levels run through the network are at least this far
    apart, those between them are interpolated (module docstring; 0: every level is run,
    the estimator of calibration format 4). A ``model`` with no device layer is refused
    when it was never deployed, and told in one warning line when ``deploy`` kept every
    layer digital (``digital_layers``): nothing is calibrated.
    """
    if rounds < 0 or draws < 1:
        raise NoisyDEQError(f"calibrate_in_network: rounds must be >= 0 and draws >= 1, got "
                            f"rounds={rounds}, draws={draws}")
    forward = forward if forward is not None else (lambda m, inp: m(inp))
    if isinstance(levels, (int, float)):  # one level (a TypeError said 'not iterable')
        levels = [levels]
    finite = sorted({float(v) for v in levels if math.isfinite(v)})
    layers = device_layers(model)
    report = NetworkReport(finite, rounds)
    if not layers:
        _no_device_layer(model)
        return report
    if not finite:
        return report
    if clean_start:
        calibrate(model, x)  # clean start: knobs on the clean activations
    clean = {level: {name: layer.control_for(level) for name, layer in layers.items()}
             for level in finite}
    if rounds == 0:
        return report
    xs = x if samples is None else x[:samples]
    xs = xs.repeat(draws, *([1] * (xs.ndim - 1)))  # rows keyed by position: own draws
    report.off_db = [0.0] * rounds
    #: per layer: (clean knobs, final knobs) of the last measured level and its last
    #: in-network measurement (knobs, SNR): the next level's start and cross-level prior
    last: dict[str, tuple[Knobs, Knobs]] = {}
    measured: dict[str, tuple[Knobs, float]] = {}
    #: per measured level and layer: (clean knobs, in-network knobs), for interpolation
    found: dict[float, dict[str, tuple[Knobs, Knobs]]] = {}
    points: dict[float, dict[str, tuple[Knobs, float]]] = {}
    offsets: dict[float, dict[str, float]] = {}
    anchors = anchor_levels(finite, spacing)
    with restored_streams(layers):
        for level in anchors:
            _run_level(model, level, layers, clean[level], last, measured, xs, seed, forward,
                       rounds, draws, report)
            found[level], points[level] = dict(last), dict(measured)
            if len(anchors) < len(finite):
                offsets[level] = {name: clean_offset(layer, level, layer._controls[level])
                                  for name, layer in layers.items()}
        for level in finite:
            if level in found:
                continue
            if not _interpolate(level, layers, offsets):
                # a corrected target out of reach: measured like an anchor, from the
                # nearest one below
                below = max(v for v in found if v < level)
                _run_level(model, level, layers, clean[level], dict(found[below]),
                           dict(points[below]), xs, seed, forward, rounds, draws, report)
    return report


def anchor_levels(levels: Sequence[float], spacing: float) -> list[float]:
    """The levels of the ascending ``levels`` run through the network: every level below
    :data:`DENSE_BELOW_DB` and the first one above, then each next level at least
    ``spacing`` dB above the last one run, and the highest (all of them when ``spacing``
    <= the grid's step: 0, 10, 20, 30 at any spacing <= 10)."""
    out: list[float] = []
    for v in levels:
        if not out or v < DENSE_BELOW_DB or out[-1] < DENSE_BELOW_DB or (
                v - out[-1] >= spacing - 1e-9):
            out.append(v)
    if levels and out[-1] != levels[-1]:
        out.append(levels[-1])
    return out


def _run_level(
    model: nn.Module, level: float, layers: dict[str, DeviceLayer], clean: dict[str, Knobs],
    last: dict[str, tuple[Knobs, Knobs]], measured: dict[str, tuple[Knobs, float]],
    xs: Tensor, seed: int, forward: Callable[[nn.Module, Tensor], Any], rounds: int,
    draws: int, report: NetworkReport,
) -> None:
    """Calibrate ``level`` inside the network (module docstring): start from the clean
    knobs shifted by the correction in ``last``, at most ``rounds`` forwards; updates
    ``last`` and ``measured`` for the next level."""
    for name, layer in layers.items():
        ref = last.get(name)
        start = None if ref is None else modes.shifted(layer, layer.noise_mode, clean[name],
                                                       *ref)
        layer._controls[level] = clean[name] if start is None else start
    priors = dict(measured)  # the previous level's points (self-consistent slope)
    for r in range(rounds):
        # the same draws at every forward of a level (common random numbers): the inputs
        # change only through the knobs
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
        # far off: measure again at the new knobs, with this level's own point as the
        # secant's prior (same draws: the slope of the self-consistent SNR)
        priors = {name: measured[name] for name in measured}
    for name, layer in layers.items():
        last[name] = (clean[name], layer._controls[level])
    report.measured.append(level)


def clean_offset(layer: DeviceLayer, level: float, knobs: Knobs) -> float:
    """The in-network correction of ``knobs`` found for ``level``, in dB of clean SNR: the
    target part's SNR at ``knobs`` on the layer's clean calibration inputs minus ``level``
    (nan without signal). Unlike a knob ratio it is defined across the physical mode's two
    paths (a correction may carry a layer over its native point)."""
    return layer.measure_parts(knobs, layer.calibration_inputs()).db(
        modes.TARGET_PART[layer.noise_mode]) - level


def _interpolate(level: float, layers: dict[str, DeviceLayer],
                 offsets: dict[float, dict[str, float]]) -> bool:
    """Give every layer its knobs at ``level`` from the measured levels around it: the
    clean calibration to ``level + δ``, where δ is the in-network correction
    (:func:`clean_offset`) interpolated linearly between the nearest measured levels below
    and above. False (nothing set) when there is no such pair or a target is out of reach."""
    lo = max((v for v in offsets if v < level), default=None)
    hi = min((v for v in offsets if v > level), default=None)
    if lo is None or hi is None:
        return False
    t = (level - lo) / (hi - lo)
    out: dict[str, Knobs] = {}
    for name, layer in layers.items():
        d_lo, d_hi = offsets[lo].get(name, math.nan), offsets[hi].get(name, math.nan)
        if math.isnan(d_lo) or math.isnan(d_hi):
            out[name] = layer.control_for(level)  # no signal: native knobs
            continue
        try:
            out[name] = layer.calibrate_knobs(level + (1.0 - t) * d_lo + t * d_hi,
                                              layer.calibration_inputs(), table=True)
        except NoisyDEQError:
            return False
    for name, layer in layers.items():
        layer._controls[level] = out[name]
    return True

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
    with restored_streams(layers):
        for chunk in stacked_chunks(finite, x.shape[0], max_rows):
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
