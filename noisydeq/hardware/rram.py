"""The ``rram`` device: an RRAM crossbar with aihwkit's physics, fused for speed.

Static (per chip, drawn once by aihwkit's own noise model under the chip's seed):
  * conductance mapping: ``SinglePairConductanceConverter(g_max, g_min)`` maps max|W| to
    g_max on a (G+, G−) pair per weight;
  * ``ReRamWan2022NoiseModel``: programming noise and the accumulated deviation at the read
    time t ∈ {1 s, 1 day, 2 days}, σ(g) a 4th-order polynomial in g/g_max fitted to
    Wan et al., Nature 608, 504 (2022), in µS at a 40 µS reference (hence g_max = 40);
  * global drift compensation (aihwkit ``GlobalDriftCompensation``): the output is
    multiplied by α = mean|read-out after programming| / mean|read-out at t|, read-outs of
    the identity through the noisy MVM (measured whenever the chip is programmed, or held
    from the first programming of a chip at each noise scale: ``hold_drift_alpha``,
    hardware-aware training with ``device_drift_alpha = "epoch"``).
Dynamic (per MVM, through the layer's NoiseStream), with the semantics of aihwkit's
``IOParameters`` in ``TorchInferenceRPUConfig``:
  * noise management ``ABS_MAX``: each input vector is divided by its max |x|;
  * DAC: inputs quantised to 2^b−2 levels over ±inp_bound, clipped;
  * MVM on the weights normalised to max|W| = 1 (aihwkit ``weight_scaling_omega = 1``);
  * output (read) noise N(0, out_noise²), ADC: 2^b−2 levels over ±out_bound, clipped;
  * iterative bound management: a vector whose output clips is re-run with its input
    halved (1, 2, 4, ... while the reduction ≤ max_bm_res / input step).
The read is fused (:mod:`noisydeq.hardware.rram_io`): one matmul per pass with the read
noise folded in, and bound-management passes skipped only where their outcome is certain.
Differences to aihwkit (documented in docs/devices.md): bound management is decided per
vector (aihwkit: per batch), a re-run reuses the vector's drawn read noise, one tile per
layer (no 512-row tiling).

A sweep keeps its programmed chips on disk (:mod:`noisydeq.hardware.chip_store`, through
:attr:`RRAMLayer.shelf`): a repeated sweep reads them instead of programming them again.

Knobs (:mod:`noisydeq.hardware.modes`): the static knob ``s_p`` scales programming and
drift noise (aihwkit ``noise_scale``; the drift-compensation read-out, part of programming
the chip, reads with ``s_p`` times the read noise), the dynamic knob ``s_r`` the read noise
(``out_noise``). Both are 1 at the physical values; the joint path scales both by one
``s`` (the single knob of earlier versions). Quantisation is a fixed design choice, so the
SNR at s → 0 is the device's ceiling.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import Tensor

from noisydeq.hardware.base import Device
from noisydeq.hardware.layer import Control, DeviceLayer, Knobs, control_groups, expand_rows
from noisydeq.hardware.rram_io import (
    FREE_ROWS_OUT,
    RowStats,
    identity_magnitudes,
    io_forward,
)
from noisydeq.hardware.rram_program import ChipDraw, require_aihwkit, wan2022_noise_model
from noisydeq.noise import NoiseStream, derive_seed
from noisydeq.scalars import const
from noisydeq.specs.device_kinds import RRAMSpec

S_MIN, S_MAX = 1e-4, 1e3
#: programmed chips kept per layer (LRU): at least 8, more while they fit in 256 MiB, so the
#: SNR levels of a batched sweep (31 for 0:30) do not reprogram the chip at every MVM (with 8,
#: 9+ levels per batch re-ran aihwkit's programming at every forward: 13x slower at 31)
CHIP_CACHE_MIN, CHIP_CACHE_BYTES = 8, 256 * 2**20


def _kept(nbytes: int) -> int:
    """Entries of ``nbytes`` each a per-layer cache keeps: at least CHIP_CACHE_MIN, more
    while they fit in CHIP_CACHE_BYTES."""
    return max(CHIP_CACHE_MIN, CHIP_CACHE_BYTES // max(nbytes, 1))


#: noise scales whose drift-compensation α a layer holds (:attr:`RRAMLayer.hold_drift_alpha`;
#: a calibration probes tens of scales, training then runs at one)
HELD_ALPHAS = 256


def program_weights(
    w_norm: Tensor, spec: RRAMSpec, scale: float, seed: int
) -> tuple[Tensor, Tensor]:
    """(programmed, read-at-t) normalised weights of one chip, drawn by aihwkit on the CPU.

    The global RNG is forked and seeded with ``seed`` so the same chip is drawn for every
    scale (common random numbers) and the caller's RNG state is untouched.
    """
    model = wan2022_noise_model(spec, scale)
    w = w_norm.detach().to("cpu", torch.float32)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        w_prog, nu = model.apply_programming_noise(w)
        w_t = model.apply_drift_noise(w_prog, nu, spec.t_inference_s)
    return w_prog, w_t


class RRAMLayer(DeviceLayer):
    """A Linear/Conv layer on an RRAM crossbar; knobs (programming scale, read-noise scale)."""

    device_kind = "rram"
    peak_scaled = True
    draws_output_noise = True

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._chips: OrderedDict[tuple, tuple[Tensor, float, RowStats]] = OrderedDict()
        self._wmax: tuple[tuple, float] | None = None
        self._draw: tuple[tuple, ChipDraw] | None = None
        self._readout_inputs: tuple[tuple, Tensor, Tensor] | None = None
        #: hold the drift-compensation α measured at each noise scale while the weights
        #: change (set at deployment, e.g. once per training epoch: ``TrainSpec.
        #: device_drift_alpha = "epoch"``); False: measured with every weight version
        self.hold_drift_alpha = False
        #: noise scale -> the α measured first on this chip (while :attr:`hold_drift_alpha`)
        self._held_alpha: dict[float, float] = {}
        #: hold the programming error while the weights change (set at deployment, e.g.
        #: once per training epoch: ``TrainSpec.device_programming = "epoch"``): at each
        #: noise scale the first programming of this chip is done in full, and every later
        #: weight version's (programmed, read-at-t) normalised weights are its W / max|W|
        #: plus that programming's error (:meth:`held_error`); False: every weight version
        #: is programmed afresh (targets, σ(g), noise, conversion back)
        self.hold_programming = False
        #: noise scale -> (2, n_out, n_in) error of (W_prog, W_t) in units of max|W| (= the
        #: pair's conductance error over g_max − g_min), most recently used last
        self._held_error: OrderedDict[float, Tensor] = OrderedDict()
        #: the chips of this layer kept on disk (:mod:`noisydeq.hardware.chip_store`):
        #: loaded instead of programmed, and the ones programmed or used since, to store;
        #: None: no disk cache (training, or a chip not deployed by a sweep)
        self.shelf: Any = None  # a chip_store.ChipShelf

    @property
    def spec(self) -> RRAMSpec:
        return self.device_model.spec

    # ------------------------------------------------------------ static part
    def _wscale(self) -> float:
        """max|W| of the digital weights (cached per weight version)."""
        key = (self.weight._version, self.weight.data_ptr(), self.weight.device)
        if self._wmax is None or self._wmax[0] != key:
            self._wmax = (key, float(self.matrix().detach().abs().max().clamp(min=1e-12)))
        return self._wmax[1]

    def chip(self, s: float) -> tuple[Tensor, float]:
        """(W_t normalised, drift-compensation α) of this layer's chip at noise scale ``s``."""
        return self._chip(s)[:2]

    def _chip(self, s: float) -> tuple[Tensor, float, RowStats]:
        """:meth:`chip` plus the :class:`RowStats` of W_t (RMS; max row L1 norm when a
        read needs it), for bound management."""
        weights = (self.weight._version, self.weight.data_ptr(), self.weight.device)
        key = (float(s), *weights)
        shelf = self.shelf
        if shelf is not None and shelf.weights != weights:
            shelf = None  # the weights changed since the shelf was attached: not theirs
        if key in self._chips:
            self._chips.move_to_end(key)
            entry = self._chips[key]
            if shelf is not None and s != 0 and float(s) not in shelf.chips:
                shelf.add(float(s), entry[0], entry[1], entry[2].rms)  # programmed earlier
            return entry
        # chips of earlier weights are never asked for again (a weight's version only grows):
        # dropped, so training (new weights every step) does not fill the cache with dead
        # chips (up to 256 MiB per layer, and fresh memory for every new one)
        for old in [k for k in self._chips if k[1:] != weights]:
            del self._chips[old]
        stored = None if shelf is None or s == 0 else shelf.chips.get(float(s))
        if stored is not None:
            w_t = self._laid_out(stored[0])
            return self._keep(key, w_t, stored[1], RowStats(w_t, stored[2]))
        w = self.matrix().detach()
        w_norm = w / const(self._wscale(), w)  # noisydeq.scalars: no cast per call
        if s == 0:
            w_t, alpha = w_norm.clone(), 1.0
            stats = RowStats(w_t)
        else:
            pair, prog_peak = self._program(w_norm, float(s))  # (W_prog, W_t): kept together
            w_prog, w_t = pair.unbind(0)
            alpha = 1.0
            stats = RowStats(w_t)
            if self.spec.drift_compensation:
                alpha = self._held_alpha.get(float(s)) if self.hold_drift_alpha else None
                if alpha is None:
                    if prog_peak is None:  # a held programming: max|W_prog| of the pair
                        prog_peak = w_prog.abs().max()
                    alpha = self._drift_alpha(pair, s, stats.rms, float(prog_peak))
                    if self.hold_drift_alpha and len(self._held_alpha) < HELD_ALPHAS:
                        self._held_alpha[float(s)] = alpha
            if pair.untyped_storage().nbytes() * CHIP_CACHE_MIN > CHIP_CACHE_BYTES:
                # a large layer: the cache keeps W_t alone (the bytes per chip of before)
                w_t = w_t.clone()
                stats = RowStats(w_t, stats.rms)
            if shelf is not None:
                shelf.add(float(s), w_t, alpha, stats.rms)
        return self._keep(key, w_t, alpha, stats)

    def _keep(self, key: tuple, w_t: Tensor, alpha: float,
              stats: RowStats) -> tuple[Tensor, float, RowStats]:
        """Put a chip into the in-memory LRU cache and return its entry."""
        entry = (w_t, alpha, stats)
        self._chips[key] = entry
        # a chip holds the storage of its W_t (with W_prog beside it: twice W_t)
        while len(self._chips) > _kept(w_t.untyped_storage().nbytes()):
            self._chips.popitem(last=False)
        return entry

    @staticmethod
    def _laid_out(w_t: Tensor) -> Tensor:
        """A stored W_t in the memory layout a programmed one has — the second slice of a
        fresh (2, n_out, n_in) buffer, or (a large layer) a fresh tensor of its own — so its
        GEMMs see the same alignment and round as the programmed chip's do."""
        if 2 * w_t.nbytes * CHIP_CACHE_MIN > CHIP_CACHE_BYTES:
            return w_t.clone(memory_format=torch.contiguous_format)
        buf = torch.empty((2, *w_t.shape), dtype=w_t.dtype, device=w_t.device)
        buf[1].copy_(w_t)
        return buf[1]

    def _program(self, w_norm: Tensor, s: float) -> tuple[Tensor, Tensor | None]:
        """(W_prog, W_t) stacked, normalised, and max|W_prog| (None: not computed), of this
        chip programmed with ``w_norm`` at noise scale ``s``: in full (:class:`ChipDraw`),
        or — while :attr:`hold_programming`, at a scale already programmed on this chip —
        ``w_norm`` plus the error held from that first programming (:meth:`held_error`)."""
        if self.hold_programming:
            err = self._held_error.get(s)
            if err is not None:
                self._held_error.move_to_end(s)
                return w_norm + err, None  # (n_out, n_in) + (2, n_out, n_in): both at once
        draw = self._chip_draw(w_norm)
        draw.program(s)
        pair = draw.pair.to(w_norm.device, w_norm.dtype)
        if self.hold_programming:
            self._held_error[s] = pair - w_norm
            # held per scale, most recently used kept (a calibration probes tens of scales
            # with the epoch's first weights, training then runs at one): as the chip cache
            while len(self._held_error) > _kept(pair.nbytes):
                self._held_error.popitem(last=False)
        return pair, draw.prog_peak

    def held_error(self, s: float) -> Tensor | None:
        """The (W_prog, W_t) error held at noise scale ``s`` (None: none held yet)."""
        return self._held_error.get(float(s))

    def _chip_draw(self, w_norm: Tensor) -> ChipDraw:
        """This chip's standard draws (same as :func:`program_weights` at every scale)."""
        key = (self.weight._version, self.weight.data_ptr(), self.weight.device, self.static_seed)
        if self._draw is None or self._draw[0] != key:
            like = None if self._draw is None else self._draw[1]
            # w_norm = W / max|W| has max |w_norm| = 1 exactly (x/x = 1, |w| ≤ max|W|)
            # unless max|W| was clamped: ChipDraw need not find it again
            unit = self._wscale() > 1e-12
            self._draw = (key, ChipDraw(w_norm, self.spec, self.static_seed, like,
                                        unit_max=unit))
        return self._draw[1]

    def _drift_alpha(self, pair: Tensor, s: float, rms_t: float, peak_prog: float) -> float:
        """aihwkit GlobalDriftCompensation: α = mean |forward of the identity| through the
        programmed chip over the same through the chip read at t.

        The identity and its read-noise draw (seeded by the chip) are the same for every
        scale and both read-outs: made once per chip and shape. Both read-outs take the
        elementwise path together where they can (:func:`identity_magnitudes`), the
        general read otherwise. ``pair``: W_prog and W_t stacked (:attr:`ChipDraw.pair`).
        """
        w_prog, w_t = pair.unbind(0)
        key = (tuple(w_t.shape), w_t.dtype, w_t.device, self.static_seed)
        if self._readout_inputs is None or self._readout_inputs[0] != key:
            eye = torch.eye(w_t.shape[1], dtype=w_t.dtype, device=w_t.device)
            stream = NoiseStream.from_seed(derive_seed("readout", self.static_seed),
                                           w_t.device)
            noise = stream.randn((eye.shape[0], w_t.shape[0]), w_t.dtype, w_t.device)
            self._readout_inputs = (key, eye, noise)
        _, eye, noise = self._readout_inputs
        std = s * self.spec.out_noise
        sizes = identity_magnitudes(self.spec, [w_prog, w_t], std, noise,
                                    [None, rms_t], [peak_prog, None], stacked=pair)
        means = []
        for w, size in zip((w_prog, w_t), sizes, strict=True):
            if size is None:
                size = io_forward(self.spec, eye, w, std, noise).abs()
            means.append(float(size.mean().clamp(min=1e-4)))
        return means[0] / means[1]

    def chip_matrix(self, static: float) -> Tensor:
        """W_chip = α · max|W| · W_t at programming scale ``static`` (drift compensated)."""
        w_t, alpha = self.chip(static)
        return w_t * (alpha * self._wscale())

    # ------------------------------------------------------------ dynamic part
    def _mvm(self, x: Tensor, control: Control, stream: NoiseStream) -> Tensor:
        lead = x.shape[:-1]
        noise = stream.randn((*lead, self.n_out), x.dtype, x.device)
        x2 = x.reshape(-1, self.n_in)
        n2 = noise.reshape(-1, self.n_out)
        wscale = self._wscale()
        groups = control_groups(expand_rows(control, tuple(lead)), x2.shape[0])
        if len(groups) == 1:
            (s_p, s_r) = groups[0][1]
            w, alpha, stats = self._chip(s_p)
            y = io_forward(self.spec, x2, w, s_r * self.spec.out_noise, n2,
                           gain=alpha * wscale, stats=stats)
            return y.reshape(*lead, self.n_out)
        # one read per run of equal static knobs, i.e. per chip (a batched sweep's levels
        # are contiguous blocks; below the native SNR the physical mode keeps one chip and
        # sets only the read noise): its levels' read-noise stds per row
        runs = _chip_runs(groups, self.spec.out_noise, self.n_out)
        y = None
        if len(runs) > 1:
            y = torch.empty((x2.shape[0], self.n_out), dtype=x.dtype, device=x.device)
        for sl, s_p, stds in runs:
            w, alpha, stats = self._chip(s_p)
            out_std: float | Tensor = stds[0][1]
            if len(stds) > 1:
                out_std = torch.tensor([std for _, std in stds], dtype=torch.float64)
                out_std = out_std.repeat_interleave(torch.tensor([n for n, _ in stds]))
            part = io_forward(self.spec, x2[sl], w, out_std, n2[sl], gain=alpha * wscale,
                              stats=stats)
            if y is None:  # one read for the whole batch
                return part.reshape(*lead, self.n_out)
            y[sl] = part
        assert y is not None
        return y.reshape(*lead, self.n_out)

    def error_scale(self, x: Tensor, exact: Tensor) -> Tensor:
        """max|W| · max|x| per vector: with the same draws the read of c·W or c·x is c times
        that of W or x (normalised inputs and conductances), so the error scales with it."""
        return self.peak_scale(x)

    # ------------------------------------------------------------ knobs
    def native_knobs(self) -> Knobs:
        return (1.0, 1.0)

    def knob_bounds(self, which: int) -> tuple[float, float]:
        return (S_MIN, S_MAX)

    def joint_bounds(self) -> tuple[float, float]:
        return (S_MIN, S_MAX)

    def joint_knobs(self, s: float) -> Knobs:
        return (s, s)

    def joint_scale(self, knobs: Knobs) -> float | None:
        return knobs[0] if knobs[0] == knobs[1] else None


#: rows whose float32 GEMM rows keep their 64-byte alignment and their index modulo the
#: kernel's row blocking when shifted by a multiple of it
MERGE_ALIGN = 16


def _chip_runs(groups: list[tuple[slice, Knobs]], out_noise: float,
               n_out: int) -> list[tuple[slice, float, list[tuple[int, float]]]]:
    """Consecutive runs of equal knobs (:func:`control_groups`) joined where their static
    knob is equal — one read of the chip instead of one per run, each row's output the
    one its run read alone gives (a run joins only where its rows keep their GEMM
    rounding: any offset for outputs ≥ :data:`FREE_ROWS_OUT` wide, else a multiple of
    :data:`MERGE_ALIGN` rows) — as (row slice, static knob, [(rows, read-noise std)])."""
    out: list[tuple[slice, float, list[tuple[int, float]]]] = []
    free = n_out >= FREE_ROWS_OUT
    for sl, (s_p, s_r) in groups:
        part = (sl.stop - sl.start, s_r * out_noise)
        if (out and out[-1][1] == s_p and out[-1][0].stop == sl.start
                and (free or (sl.start - out[-1][0].start) % MERGE_ALIGN == 0)):
            prev = out[-1]
            out[-1] = (slice(prev[0].start, sl.stop), s_p, [*prev[2], part])
        else:
            out.append((sl, s_p, [part]))
    return out


class RRAMDevice(Device):
    """RRAM crossbar (aihwkit Wan-2022 physics); knobs: programming and read-noise scales."""

    kind = "rram"
    layer_class = RRAMLayer

    def __init__(self, *args, **kwargs) -> None:
        require_aihwkit()  # one line with the install command, before any work
        super().__init__(*args, **kwargs)

    def describe(self) -> dict[str, object]:
        sp = self.spec
        t = {1.0: "1s", 86400.0: "1day", 172800.0: "2days"}[sp.t_inference_s]
        return {
            "g_max_uS": sp.g_max_us,
            "t": t,
            "dac_bits": sp.dac_bits,
            "adc_bits": sp.adc_bits,
            "out_noise": sp.out_noise,
        }

