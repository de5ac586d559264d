"""The sweep engine: trained models × inference SNR grid × chip instances → one tidy table.

For every model, chip instance and chunk of SNR levels (a *cell*) the test set is pushed
through the deployed model once with the SNR levels **stacked along the batch**: K levels ×
n samples make one (K·n)-row forward, with a per-sample SNR tensor and a block
:class:`~noisydeq.noise.NoiseStream` (one source per level, seeded by
``derive_seed(seed, model_id, snr, chip)``, its rows keyed by their index in the test set).
Every draw is a function of (seed, model, SNR level, chip, layer, solver step, test-sample
index), so a sample's numbers do not depend on which levels, samples, test batch, chunk or
process it is evaluated with: the batched results equal the per-point ones
(``batched=False``) and every ``max_rows`` (which bounds K·n, memory) and ``--jobs`` give
the same table, byte for byte. Per-sample results are summed exactly (``math.fsum``), so the
totals do not depend on the batching either. Matmul rounding is kept out of it too: a CPU
GEMM's result for a row can depend on the row's memory alignment (on this machine, with an
inner dimension that is not a multiple of 4, e.g. a 287 → 10 head), so every forward places
test sample s at a row ≡ s (mod :data:`ROW_ALIGN`): test batches start at multiples of it
and each level's block is padded to a multiple of it (with copies of its samples, whose
results are dropped).

Metric conventions (the paper's Sec. 4.1 / App. D.1 metrics, made explicit for noise):

* classification — accuracy over **all** test samples; a sample whose solve diverged
  (non-finite state or output) counts as wrong.
* regression — MSE over the samples that did not diverge (a diverged sample has no
  meaningful output); ``nan`` if all diverged.
* In both cases ``diverged_frac`` is reported next to the metric, so a diverging model is
  never hidden inside an average.

``measured_snr_db`` is the realised SNR Σ‖y‖²/Σ‖ε‖² at the noise site over all injections
of that level (model noise), or the device's own measurement of the part the noise mode
sets (device noise: ``static_snr_db``, ``dynamic_snr_db`` or ``total_snr_db``, each over
every device layer's last evaluation of the probed samples — a DEQ's noisy fixed point);
``inf`` when there is no noise, ``nan`` when undefined (no signal).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from noisydeq.errors import NoisyDEQError
from noisydeq.hardware.parts import Parts
from noisydeq.noise import STABLE_ROWS, Noise, NoiseStream, active_subset, derive_seed
from noisydeq.results import RunDir
from noisydeq.runtime import job_count, num_threads, resolve_torch_device, thread_plan
from noisydeq.specs.noise import NoiseSpec
from noisydeq.specs.sweep import SweepSpec
from noisydeq.tasks.base import sample_correct


def fmt_db(value: float) -> str:
    """Compact text of an SNR in dB (``inf`` for no noise) for ids and keys."""
    return "inf" if math.isinf(value) else f"{value:g}"


@dataclass
class SweepModel:
    """One trained model of a sweep and the facts the table reports about it.

    ``depth`` is the FFW depth of the family member: an FFW's number of layers, or for a
    DEQ the FFW depth it is parameter-matched to (so DEQ and FFW of one depth pair up).
    """

    model: nn.Module
    kind: str
    depth: int
    width: int
    params: int
    seed: int = 0
    train_snr_db: float = math.inf
    #: hardware-aware training: the training device (None: trained digitally) and the SNR
    #: it was calibrated to (None: its native SNR)
    train_device: str | None = None
    train_device_snr_db: float | None = None

    @property
    def model_id(self) -> str:
        hw = ""
        if self.train_device is not None:
            name = Path(self.train_device).stem if self.train_device.endswith(".toml") \
                else self.train_device
            snr = "native" if self.train_device_snr_db is None else fmt_db(
                self.train_device_snr_db)
            hw = f"-hw{name}@{snr}"
        return (
            f"{self.kind}-d{self.depth}-w{self.width}-s{self.seed}"
            f"-t{fmt_db(self.train_snr_db)}{hw}"
        )

    def training_columns(self, spec: SweepSpec) -> dict[str, Any]:
        """The hardware-aware training columns of its rows (only in a sweep that names
        training devices, :data:`noisydeq.results.TRAIN_DEVICE_COLUMNS`): device ``none``
        for a digitally trained model, SNR ``nan`` at the native SNR or digitally."""
        if not spec.train_device:
            return {}
        if self.train_device is None:
            return {"train_device": "none", "train_device_snr_db": math.nan,
                    "train_noise_mode": "none"}
        return {"train_device": self.train_device,
                "train_device_snr_db": (math.nan if self.train_device_snr_db is None
                                        else float(self.train_device_snr_db)),
                "train_noise_mode": spec.train_noise_mode}


#: a test sample's row in every forward is ≡ its index (mod ROW_ALIGN): GEMM rounding of a
#: row depends on its alignment (64 bytes covers AVX-512), never on the batch around it
ROW_ALIGN = 16
#: version of the cells a run directory holds (part of every cell key): 2 = counter-based
#: noise keyed by test-sample index; 3 = noise modes, static / dynamic / total SNR per row
#: and per layer, in-network calibration (cells of older versions are recomputed, not mixed in)
CELL_VERSION = 3


@dataclass
class LevelStats:
    """Per-sample results of one (model, chip, SNR level) over the test batches.

    Sums are exact (``math.fsum``) when read, so they do not depend on how the samples
    were batched.
    """

    n: int = 0
    n_scored: int = 0  # denominator of the metric
    converged: int = 0
    diverged: int = 0
    #: per sample: correct (classification) or squared error (regression), steps; per
    #: measured sample (model noise): ‖y‖² and ‖ε‖² summed over the sample's injections
    scores: list[float] = field(default_factory=list)
    step_counts: list[float] = field(default_factory=list)
    signals: list[float] = field(default_factory=list)
    noises: list[float] = field(default_factory=list)
    #: device noise: per device layer, per probed sample, its (signal, static, dynamic,
    #: total) powers at its last evaluation of the sample (:mod:`noisydeq.hardware.parts`)
    layer_powers: dict[str, list[list[float]]] = field(default_factory=dict)

    @property
    def score(self) -> float:
        """Correct count (classification) or Σ squared error (regression)."""
        return math.fsum(self.scores)

    @property
    def steps(self) -> float:
        return math.fsum(self.step_counts)

    def layer_parts(self) -> dict[str, Parts]:
        """Per device layer, the exact sums of its probed samples' powers."""
        return {name: Parts(*(math.fsum(col) for col in zip(*rows, strict=True)))
                if rows else Parts() for name, rows in self.layer_powers.items()}

    def parts(self) -> Parts:
        """Signal and error powers of the level: device noise — static / dynamic / total
        summed over the layers that carry signal (a layer without signal has no SNR,
        docs/devices.md); model noise — the site's noise as dynamic and total."""
        if self.layer_powers:
            out = Parts()
            for parts in self.layer_parts().values():
                if parts.signal > 0:
                    out += parts
            return out
        noise = math.fsum(self.noises)
        return Parts(math.fsum(self.signals), 0.0, noise, noise)


class MeteredNoise(Noise):
    """A :class:`Noise` injector that also sums ‖y‖² and ‖ε‖² per sample at its site."""

    def __init__(self, spec: NoiseSpec, stream: NoiseStream, snr_db: Tensor) -> None:
        super().__init__(spec, stream, snr_db=snr_db)
        b = snr_db.shape[0]
        self.signal = torch.zeros(b, dtype=torch.float64, device=snr_db.device)
        self.noise = torch.zeros(b, dtype=torch.float64, device=snr_db.device)

    def apply(self, site: str, y: Tensor) -> Tensor:
        out = super().apply(site, y)
        if site == self.spec.site:
            c = y.detach().reshape(y.shape[0], -1).double()
            e = out.detach().reshape(y.shape[0], -1).double() - c
            subset = active_subset(y.shape[0])  # a solve evaluating only its active rows
            if subset is None:
                self.signal += c.pow(2).sum(1)
                self.noise += e.pow(2).sum(1)
            else:
                rows = subset.index.to(self.signal.device)
                sig, noi = c.pow(2).sum(1), e.pow(2).sum(1)
                if subset.real is not None:  # padding rows of a small subset do not count
                    real = subset.real.to(sig.device)
                    sig, noi = sig * real, noi * real
                self.signal.index_add_(0, rows, sig)
                self.noise.index_add_(0, rows, noi)
        return out


# ------------------------------------------------------------------------ hardware


class Hardware:
    """Adapter from the sweep to a device model (``noisydeq.hardware``).

    Every device layer accepts per-sample SNR targets (``hardware.set_sample_snr``), so all
    levels of a chunk share one deployed copy per (model, chip). ``device == "ideal"`` runs
    the digital weights directly (the ideal device is the identity).
    """

    def __init__(self, spec: SweepSpec) -> None:
        self.spec = spec
        self.direct = spec.device == "ideal"
        self.device: Any = None
        self.hw: Any = None
        if not self.direct:
            from noisydeq import hardware

            self.hw = hardware
            self.device = hardware.get_device(spec.device, noise_mode=spec.noise_mode)
            finite = [s for s in spec.snr_db if math.isfinite(s)]
            if spec.noise_site == "device" and finite:
                # before anything is written (training included): the device's reference
                # MVM; each trained layer's own range is checked later (check_reachable)
                from noisydeq.hardware.calibration import check_reachable

                for target in (min(finite), max(finite)):
                    check_reachable(target, self.device.snr_range(),
                                    f"device '{spec.device}' (its reference MVM)",
                                    spec.noise_mode)

    @property
    def device_noise(self) -> bool:
        return self.spec.noise_site == "device" and not self.direct

    def native_parts(self) -> dict[str, float]:
        """Static, dynamic and total native SNR of the device's reference MVM (dB)."""
        if self.direct:
            return {"static": math.inf, "dynamic": math.inf, "total": math.inf}
        return dict(self.device.native_parts())

    def native_snr_db(self) -> float:
        """Native SNR of the part the noise mode sets (the swept axis's native point)."""
        from noisydeq.hardware.modes import TARGET_PART

        return float(self.native_parts()[TARGET_PART[self.spec.swept_mode]])

    def check_reachable(self, models: Sequence[SweepModel], calib_x: Tensor | None) -> None:
        """Refuse (one line naming model, layer and range) a finite target that some layer
        of the trained ``models`` cannot reach in the noise mode, on its clean calibration
        inputs on the first chip — before any cell is evaluated."""
        finite = [s for s in self.spec.snr_db if math.isfinite(s)]
        if not self.device_noise or not finite:
            return
        from noisydeq.hardware.calibration import check_reachable

        lo, hi = min(finite), max(finite)
        for sm in models:
            deployed = self.device.new_chip(derive_seed(sm.seed, "chip", 0)).deploy(
                sm.model, digital_layers=self.spec.digital_layers)
            if calib_x is not None:
                self.hw.calibrate(deployed, calib_x)
            for name, layer in self.hw.device_layers(deployed).items():
                reach = layer.snr_range()
                if math.isnan(reach[0]):
                    continue  # no signal: not calibrated (docs/devices.md)
                for target in (lo, hi):
                    check_reachable(target, reach, f"layer '{name}' of {sm.model_id}",
                                    self.spec.noise_mode)

    def chip(self, model: nn.Module, seed: int, chip: int, calib_x: Tensor | None) -> nn.Module:
        """``model`` deployed on chip instance ``chip`` (static noise seeded by seed, chip).

        Layers are calibrated on the activations of ``calib_x`` (training inputs), so a
        target SNR is met on the data the model sees, not on synthetic vectors: inside the
        noisy network (``spec.calibration = "network"``) or on clean activations. Under
        device noise every SNR level of the sweep is calibrated here, in ascending order, or
        loaded from the calibration cache (:mod:`noisydeq.hardware.calibration_store`).
        """
        if self.direct:
            return model
        device = self.device.new_chip(derive_seed(seed, "chip", chip))
        deployed = device.deploy(model, digital_layers=self.spec.digital_layers).eval()
        if self.spec.noise_site == "device":
            from noisydeq.families import cache_root
            from noisydeq.hardware.calibration_store import calibrate_levels

            calibrate_levels(deployed, model, device, calib_x, self.spec.snr_db, cache_root(),
                             calibration=self.spec.calibration)
        elif calib_x is not None:
            self.hw.calibrate(deployed, calib_x)
        return deployed

    def prepare(
        self, model: nn.Module, snr: Tensor, seeds: Sequence[int], block_rows: Sequence[int],
        samples: Tensor, device_noise: bool,
    ) -> None:
        """Give every device layer its own block stream and the per-sample SNR targets.

        One stream per layer (seeded by the level seed and the layer name) keeps the draws
        of a layer a function of that layer's own calls; rows are keyed by ``samples``
        (test-set indices).
        """
        if self.direct:
            return
        for name, layer in self.hw.device_layers(model).items():
            layer.stream = NoiseStream.from_blocks(
                [derive_seed(s, "layer", name) for s in seeds], block_rows,
                device=snr.device, samples=samples,
            )
        self.hw.set_sample_snr(model, snr if device_noise else None)

    def meter(
        self, model: nn.Module, blocks: int, rows: int, first_sample: int, total: int,
        samples: int | None = None,
    ) -> DeviceMeter | None:
        """A per-sample SNR meter on the deployed layers for the next forward (blocks of
        ``rows`` rows, the first ``samples`` of each real)."""
        if self.direct:
            return None
        return DeviceMeter(self.hw.device_layers(model), blocks, rows, first_sample, total,
                           samples)


class DeviceMeter:
    """Measures the realised static, dynamic and total MVM-output SNR of every device layer
    on the first test samples (:mod:`noisydeq.hardware.parts`).

    Forward hooks keep, for the test samples of index < ``probe`` in each block (level),
    each layer's input, device output (bias removed) and knobs at its **last** evaluation
    of that sample: the one evaluation of an FFW layer, the noisy fixed point of a DEQ's
    cell (the inputs its calibration aimed at). :meth:`per_sample` then compares the
    outputs with the exact MVM of the digital weights and with the chip's (W_chip x), once,
    in float64, each probed row placed at a row ≡ its test index (mod ``ROW_ALIGN``) as in
    the forward. Linear and convolutional layers alike: a conv layer's powers are summed
    over the output positions of each sample (one MVM per position, :meth:`row_powers`).
    Probing a few samples keeps the extra MVMs cheap; probing them by test-set index keeps
    the measurement independent of the batching. When a solver evaluates only its active
    rows (:class:`noisydeq.noise.RowSubset`), the probe rows among them are recorded.
    """

    probe = 64

    def __init__(
        self, layers: dict[str, nn.Module], blocks: int, rows: int, first_sample: int,
        total: int, samples: int | None = None,
    ) -> None:
        #: test samples first_sample … first_sample + m − 1 of each block are probed (of its
        #: ``samples`` real rows; the rest of a block of ``rows`` is padding)
        real = rows if samples is None else samples
        self.m = max(0, min(real, self.probe - first_sample))
        self.blocks, self.total = blocks, total
        self.index = torch.cat([torch.arange(self.m) + k * rows for k in range(blocks)])
        span = -(-self.m // ROW_ALIGN) * ROW_ALIGN
        self.span = span
        self.place = torch.cat([torch.arange(self.m) + k * span for k in range(blocks)])
        self.layers = {n: layer for n, layer in layers.items() if self.m > 0}
        #: per layer: [inputs, outputs, per-block knobs, seen] of the probed rows
        self.last: dict[str, list[Any]] = {}
        self._powers: dict[str, Tensor] | None = None
        self.handles = [layer.register_forward_hook(self._hook(name))
                        for name, layer in self.layers.items()]

    def _hook(self, name: str):
        def fn(layer: nn.Module, inputs: tuple[Tensor, ...], out: Tensor) -> None:
            x = inputs[0].detach()
            probe = self.index.to(x.device)
            subset = active_subset(x.shape[0])
            if subset is not None and subset.total == self.total:
                where = torch.full((self.total,), -1, dtype=torch.long, device=x.device)
                where[subset.index.to(x.device)] = torch.arange(x.shape[0], device=x.device)
                pos = where[probe]
                keep = pos >= 0
                if subset.real is not None:  # padding rows of a small subset do not count
                    keep &= subset.real.to(x.device)[pos.clamp(min=0)]
                slot, idx = keep.nonzero().squeeze(1), pos[keep]
            elif x.shape[0] == self.total:
                slot, idx = torch.arange(probe.numel(), device=x.device), probe
            else:
                return
            if idx.numel() == 0:
                return
            control = layer.resolve_controls(x.shape[0])
            y = out.detach()[idx]
            if getattr(layer, "bias", None) is not None:  # (n_out,) along dim 1 of a conv map
                y = y - layer.bias.detach().reshape((-1,) + (1,) * (y.ndim - 2))
            if name not in self.last or self.last[name][0].shape[1:] != x.shape[1:]:
                n = probe.numel()
                knobs = torch.tensor(layer.native_knobs(), dtype=torch.float64,
                                     device=x.device).repeat(self.blocks, 1)
                self.last[name] = [x.new_zeros((n, *x.shape[1:])), y.new_zeros((n, *y.shape[1:])),
                                   knobs, torch.zeros(n, dtype=torch.bool, device=x.device)]
                self._powers = None
            buf = self.last[name]
            buf[0][slot] = x[idx]
            buf[1][slot] = y
            block = slot // self.m
            if isinstance(control, Tensor):
                buf[2][block] = control.to(x.device)[idx]
            else:
                buf[2][block] = torch.tensor(control, dtype=torch.float64, device=x.device)
            buf[3][slot] = True
            self._powers = None

        return fn

    def per_sample(self, block: int) -> dict[str, list[list[float]]]:
        """Per layer, the (signal, static, dynamic, total) powers of each probed sample of
        ``block`` at its last evaluation (zeros for a sample the layer never saw)."""
        if self._powers is None:
            self._powers = {}
            for name, (x, y, knobs, seen) in self.last.items():
                layer = self.layers[name]
                place = self.place.to(x.device)
                rows_buf = self.blocks * self.span
                xs = x.new_zeros((rows_buf, *x.shape[1:]))
                ys = y.new_zeros((rows_buf, *y.shape[1:]))
                xs[place], ys[place] = x, y
                control = knobs.repeat_interleave(self.span, dim=0)
                if getattr(layer, "op", "linear") == "linear":
                    powers = layer.row_powers(xs, ys, control)
                else:  # one vector per output position: a block at a time, summed per sample
                    powers = torch.cat([
                        layer.row_powers(xs[sl], ys[sl], control[sl]).reshape(
                            self.span, -1, 4).sum(1)
                        for sl in (slice(k * self.span, (k + 1) * self.span)
                                   for k in range(self.blocks))])
                self._powers[name] = powers[place] * seen.unsqueeze(1)
        sl = slice(block * self.m, (block + 1) * self.m)
        return {name: p[sl].tolist() for name, p in self._powers.items()}

    def close(self) -> None:
        for h in self.handles:
            h.remove()


# ------------------------------------------------------------------------ evaluation


def _forward(model: nn.Module, x: Tensor, noise: Noise | None) -> tuple[Tensor, Any]:
    out = model(x, noise, return_solution=True)
    logits = getattr(out, "logits", out)
    return logits, getattr(out, "solution", None)


def forward_levels(
    deployed: nn.Module,
    sm: SweepModel,
    x: Tensor,
    y: Tensor,
    levels: Sequence[float],
    seeds: Sequence[int],
    spec: SweepSpec,
    hardware: Hardware,
    classification: bool,
    stats: Sequence[LevelStats],
    on_device: bool = True,
    first_sample: int = 0,
) -> None:
    """One forward of the n samples ``x`` at K SNR ``levels`` stacked (K·n rows).

    ``x`` are the test samples ``first_sample`` … ``first_sample + n − 1``; block k of the
    batch carries level k and draws its noise from ``seeds[k]``, each row keyed by its
    test-sample index; ``stats[k]`` accumulates that level's per-sample results.
    ``on_device=False``: ``deployed`` is the digital model (used for SNR = ∞ under device
    noise: the noise-free reference). Each block is padded to a multiple of ``ROW_ALIGN``
    rows with copies of its samples (their own numbers again; results dropped), and
    ``first_sample`` is a multiple of it: sample s sits at a row ≡ s (mod ``ROW_ALIGN``).
    """
    n, k = x.shape[0], len(levels)
    nb = -(-n // ROW_ALIGN) * ROW_ALIGN  # rows per block: the n samples, then padding
    pos = torch.arange(nb, device=x.device) % n  # padding repeats the block's samples
    rows_of = (torch.arange(k, device=x.device)[:, None] * n + pos).reshape(-1)
    xs = x.repeat(k, *([1] * (x.ndim - 1)))[rows_of]
    snr = torch.tensor(list(levels), dtype=x.dtype, device=x.device).repeat_interleave(nb)
    samples = (first_sample + pos).repeat(k)
    block_rows = [nb] * k
    real = (torch.arange(k, device=x.device)[:, None] * nb
            + torch.arange(n, device=x.device)).reshape(-1)  # rows of the real samples
    device_noise = spec.noise_site == "device"
    if on_device:
        hardware.prepare(deployed, snr, seeds, block_rows, samples, device_noise)
    noise = None
    if not device_noise:
        stream = NoiseStream.from_blocks(list(seeds), block_rows, device=x.device,
                                         samples=samples)
        noise = MeteredNoise(NoiseSpec(site=spec.noise_site, snr_scale=spec.snr_scale), stream,
                             snr_db=snr)
    meter = None
    if device_noise and on_device:
        meter = hardware.meter(deployed, k, nb, first_sample, xs.shape[0], n)
    try:
        with torch.no_grad():
            logits, sol = _forward(deployed, xs, noise)
    finally:
        if meter is not None:
            meter.close()
    rows = logits.reshape(xs.shape[0], -1)[real]
    diverged = ~torch.isfinite(rows).all(dim=1)
    if sol is not None:
        diverged = diverged | sol.diverged[real].to(diverged.device)
        steps = sol.steps[real].double()
        converged = sol.converged[real] & ~diverged
    else:  # feed-forward: one layer evaluation per layer, always "converged"
        steps = torch.full((k * n,), float(sm.depth), dtype=torch.float64, device=x.device)
        converged = ~diverged
    if classification:  # a per-position sample is correct only if every position is
        correct = sample_correct(logits[real], y.repeat(k, *([1] * (y.ndim - 1))))
        correct &= ~diverged
        per_sample = correct.double()
    else:
        target = y.reshape(n, -1).repeat(k, 1).to(rows.dtype)
        per_sample = (rows - target).double().pow(2).mean(dim=1)
        per_sample = torch.where(diverged, torch.zeros_like(per_sample), per_sample)
    for j, st in enumerate(stats):
        sl = slice(j * n, (j + 1) * n)
        div = int(diverged[sl].sum())
        st.n += n
        st.scores += per_sample[sl].tolist()
        st.n_scored += n if classification else n - div
        st.step_counts += steps[sl].tolist()
        st.converged += int(converged[sl].sum())
        st.diverged += div
        if noise is not None:
            st.signals += noise.signal[j * nb : j * nb + n].tolist()
            st.noises += noise.noise[j * nb : j * nb + n].tolist()
        elif meter is not None:
            for name, powers in meter.per_sample(j).items():
                st.layer_powers.setdefault(name, []).extend(powers)


def level_chunks(
    levels: Sequence[float], n_test: int, max_rows: int
) -> tuple[int, list[list[float]]]:
    """Test samples per forward and the SNR chunks (each ≤ ``max_rows`` rows in all).

    The samples per forward are the whole test set or a multiple of ``ROW_ALIGN`` (at least
    one, even if ``max_rows`` is smaller); a level's block is padded to a multiple of it.
    """
    rows = min(n_test, max(max_rows, ROW_ALIGN))
    if rows < n_test:
        rows -= rows % ROW_ALIGN
    rows = max(rows, 1)
    per_chunk = max(1, max_rows // (-(-rows // ROW_ALIGN) * ROW_ALIGN))
    levels = list(levels)
    return rows, [levels[i : i + per_chunk] for i in range(0, len(levels), per_chunk)]


def sample_batches(n_test: int, rows: int) -> list[tuple[int, int]]:
    """(start, stop) of the test batches of ``rows`` samples; a last batch of fewer than
    ``STABLE_ROWS`` samples joins the one before (matmul rounding of tiny batches)."""
    bounds = [(i, min(i + rows, n_test)) for i in range(0, n_test, rows)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < STABLE_ROWS:
        (start, _), (_, stop) = bounds[-2], bounds.pop()
        bounds[-1] = (start, stop)
    return bounds


def evaluate_cell(
    sm: SweepModel,
    deployed: nn.Module,
    x: Tensor,
    y: Tensor,
    levels: Sequence[float],
    chip: int,
    spec: SweepSpec,
    hardware: Hardware,
    classification: bool,
    rows_per_batch: int,
    batched: bool,
) -> list[LevelStats]:
    """Statistics of one cell: model ``sm`` on chip ``chip`` at the SNR ``levels``.

    Batched: one forward per test batch carrying all levels. Per-point: one forward per
    level per test batch, with the same seeds — the results are the same, whatever the
    test batches.
    """
    stats = [LevelStats() for _ in levels]
    device_noise = spec.noise_site == "device"
    seeds = [derive_seed(sm.seed, sm.model_id, fmt_db(s), chip) for s in levels]
    # SNR = ∞ under device noise is the noise-free reference: the digital model.
    groups = [
        [j for j, s in enumerate(levels) if not (device_noise and math.isinf(s))],
        [j for j, s in enumerate(levels) if device_noise and math.isinf(s)],
    ]
    for start, stop in sample_batches(x.shape[0], rows_per_batch):
        xb, yb = x[start:stop], y[start:stop]
        for on_device, group in zip((True, False), groups, strict=True):
            model = deployed if on_device else sm.model
            parts = [group] if batched else [[j] for j in group]
            for part in parts:
                if part:
                    forward_levels(
                        model, sm, xb, yb, [levels[j] for j in part], [seeds[j] for j in part],
                        spec, hardware, classification, [stats[j] for j in part], on_device,
                        first_sample=start,
                    )
    return stats


def stats_rows(
    sm: SweepModel,
    stats: Sequence[LevelStats],
    levels: Sequence[float],
    chip: int,
    spec: SweepSpec,
    task_name: str,
    metric: str,
) -> list[dict[str, Any]]:
    """Tidy-table rows (see :data:`noisydeq.results.COLUMNS`) for one finished cell."""
    from noisydeq.hardware.modes import TARGET_PART

    mode = spec.swept_mode
    rows = []
    for st, level in zip(stats, levels, strict=False):
        if metric == "accuracy":
            value = st.score / st.n
        else:
            value = st.score / st.n_scored if st.n_scored else math.nan
        total = st.parts()
        parts = {p: _part_db(total, p, level) for p in ("static", "dynamic", "total")}
        rows.append(
            {
                "task": task_name,
                "model_id": sm.model_id,
                "kind": sm.kind,
                "depth": int(sm.depth),
                "width": int(sm.width),
                "params": int(sm.params),
                "seed": int(sm.seed),
                "train_snr_db": float(sm.train_snr_db),
                "device": spec.device,
                "noise_site": spec.noise_site,
                "snr_db": float(level),
                "measured_snr_db": parts[TARGET_PART[mode]],
                "noise_mode": mode,
                "static_snr_db": parts["static"],
                "dynamic_snr_db": parts["dynamic"],
                "total_snr_db": parts["total"],
                "chip": int(chip),
                "metric": metric,
                "value": float(value),
                "n_samples": int(st.n),
                "mean_steps": st.steps / st.n,
                "converged_frac": st.converged / st.n,
                "diverged_frac": st.diverged / st.n,
                **sm.training_columns(spec),
            }
        )
    return rows


def _part_db(parts: Parts, part: str, level: float) -> float:
    """SNR (dB) of ``part``: ``inf`` where nothing was noisy (SNR = ∞ runs the digital
    model), ``nan`` where no layer carried signal."""
    if parts.signal == 0 and getattr(parts, part) == 0 and math.isinf(level):
        return math.inf
    return float(parts.db(part))


def layer_rows(
    sm: SweepModel, stats: Sequence[LevelStats], levels: Sequence[float], chip: int,
    spec: SweepSpec,
) -> list[dict[str, Any]]:
    """Per-layer rows (:data:`noisydeq.results.LAYER_COLUMNS`) of one finished cell: each
    device layer's measured SNR parts next to the nominal level (device noise only)."""
    out = []
    for st, level in zip(stats, levels, strict=False):
        for name, parts in st.layer_parts().items():
            out.append({
                "model_id": sm.model_id, "chip": int(chip), "noise_mode": spec.swept_mode,
                "snr_db": float(level), "layer": name,
                "static_snr_db": parts.static_db, "dynamic_snr_db": parts.dynamic_db,
                "total_snr_db": parts.total_db,
            })
    return out


# ------------------------------------------------------------------------ the sweep


@dataclass
class SweepResult:
    """What :func:`run_sweep` produced."""

    rows: list[dict[str, Any]]
    run_dir: RunDir
    native_snr_db: float
    computed_cells: int
    skipped_cells: int
    figures: list[Path] = field(default_factory=list)
    #: static / dynamic / total native SNR of the device's reference MVM (dB)
    native_parts: dict[str, float] = field(default_factory=dict)


ModelProvider = Callable[[SweepSpec, Any, bool], list[SweepModel]]


def family_models(spec: SweepSpec, task: Any, progress: bool = True) -> list[SweepModel]:
    """Trained (or cached) depth-matched families, one per (seed, training SNR) of ``spec``.

    Uses :func:`noisydeq.families.train_family`; members come back in depth order, DEQ then
    FFW, as evaluated and tabulated.
    """
    from noisydeq.families import family_spec_for_sweep, train_family

    log = None
    if progress:
        from noisydeq.progress import write

        log = write
    out = []
    for seed in spec.seeds:
        for tsnr in spec.train_snr_db:
            for dev, dsnr in spec.training_devices():
                fspec = family_spec_for_sweep(spec, seed, tsnr, dev, dsnr)
                family = train_family(fspec, task, torch_device=spec.torch_device,
                                      quiet=not progress, log=log)
                members = sorted(family.members, key=lambda m: (m.depth, m.kind))
                out += [
                    SweepModel(m.model, m.kind, m.depth, m.width, m.params, seed, tsnr,
                               dev, dsnr)
                    for m in members
                ]
    return out


def _test_tensors(task: Any, spec: SweepSpec, torch_device: torch.device) -> tuple[Tensor, Tensor]:
    x, y = task.x_test, task.y_test
    if spec.max_test_samples is not None:
        x, y = x[: spec.max_test_samples], y[: spec.max_test_samples]
    return x.to(torch_device), y.to(torch_device)


def resolve_jobs(
    jobs: int | str | None, spec: SweepSpec, pending_pairs: int, parallel_ok: bool = True
) -> int:
    """Evaluation processes for a sweep: :func:`noisydeq.runtime.job_count` of ``jobs``.

    ``auto`` (default) = one process per CPU core, at most one per pending (model, chip)
    pair. Cells are independent and deterministic, so any number of processes gives the
    same table — but with more than one, *every* process evaluates with one torch thread
    (so a cell is computed alike by whichever process takes it), which equals
    ``--jobs 1 --threads 1``: the thread count changes floating-point rounding. On this
    2-core machine one process with two threads evaluated the default sweep in 20 s, two
    single-threaded processes in 13 s: the per-level device reads are many small
    operations, which two threads barely share. Parallel evaluation needs models that a
    worker can load (the family cache) and the CPU; otherwise one process is used.
    """
    n = job_count(jobs)
    if not parallel_ok or resolve_torch_device(spec.torch_device).type != "cpu":
        return 1
    return max(1, min(n, pending_pairs))


class CellRunner:
    """Evaluates the cells of (model, chip) pairs and saves them into the run directory."""

    def __init__(
        self, spec: SweepSpec, task: Any, run_dir: RunDir, hardware: Hardware,
        torch_device: torch.device,
    ) -> None:
        self.spec, self.run_dir, self.hardware = spec, run_dir, hardware
        from noisydeq.results import columns_for

        run_dir.columns = columns_for(spec)
        self.torch_device = torch_device
        self.task_name = task.name
        self.x, self.y = _test_tensors(task, spec, torch_device)
        self.classification = task.kind == "classification"
        self.metric = "accuracy" if self.classification else "mse"
        self.rows_per_batch, self.chunks = level_chunks(spec.snr_db, self.x.shape[0],
                                                        spec.max_rows)
        calib_x = getattr(task, "x_train", None)
        self.calib_x = None if calib_x is None else calib_x[:512].to(torch_device)
        self.content = self._content()
        self._model_hashes: dict[int, str] = {}

    def _content(self) -> str:
        """Digest of every input of a cell's results besides the model and its place: the
        resolved device spec (not its path), noise mode, calibration, the test and
        calibration data and the package's code (:func:`~noisydeq.hardware.calibration_store
        .code_fingerprint`)."""
        import hashlib

        from noisydeq.hardware.calibration_store import code_fingerprint
        from noisydeq.results import device_identity
        from noisydeq.store import hash_tensor

        h = hashlib.blake2b(digest_size=10)
        h.update(repr((device_identity(self.spec), self.spec.swept_mode, self.spec.calibration,
                       code_fingerprint())).encode())
        for t in (self.x, self.y, self.calib_x):
            if t is not None:
                hash_tensor(h, t.detach().cpu())
        return h.hexdigest()

    def key(self, sm: SweepModel, chip: int, levels: Sequence[float]) -> str:
        """Cell key: version, model id and weights digest, chip, levels and
        :meth:`_content`."""
        from noisydeq.store import init_hash

        mh = self._model_hashes.get(id(sm.model))
        if mh is None:
            mh = self._model_hashes[id(sm.model)] = init_hash(sm.model)
        return (f"v{CELL_VERSION}|{sm.model_id}|{mh}|chip{chip}|"
                + ",".join(fmt_db(s) for s in levels) + f"|{self.content}")

    def expected(self, sm: SweepModel, chip: int, levels: Sequence[float]) -> list[dict]:
        """What the rows of a cell must say (everything but the measured values)."""
        fixed = {"task": self.task_name, "model_id": sm.model_id, "kind": sm.kind,
                 "depth": int(sm.depth), "width": int(sm.width), "params": int(sm.params),
                 "seed": int(sm.seed), "train_snr_db": float(sm.train_snr_db),
                 "device": self.spec.device, "noise_site": self.spec.noise_site,
                 "noise_mode": self.spec.swept_mode,
                 "chip": int(chip), "metric": self.metric, "n_samples": int(self.x.shape[0]),
                 **{k: v for k, v in sm.training_columns(self.spec).items()
                    if not (isinstance(v, float) and math.isnan(v))}}
        return [{**fixed, "snr_db": float(s)} for s in levels]

    def load(self, sm: SweepModel, chip: int, levels: Sequence[float]) -> list[dict] | None:
        """The saved rows of a cell (checked against :meth:`expected`), or None."""
        return self.run_dir.load_cell(self.key(sm, chip, levels), self.expected(sm, chip, levels))

    def missing(self, sm: SweepModel, chip: int) -> list[list[float]]:
        """The level chunks of (sm, chip) not yet saved in the run directory."""
        return [ch for ch in self.chunks if self.load(sm, chip, ch) is None]

    def run_pair(
        self, sm: SweepModel, chip: int, on_cell: Callable[[int], None],
        todo: list[list[float]] | None = None,
        save: Callable[[str, list[dict[str, Any]], list[dict[str, Any]]], None] | None = None,
    ) -> None:
        """Compute and save the missing cells of ``sm`` on chip ``chip`` (``todo``: the
        level chunks :meth:`missing` gave, when the caller already asked; ``save(key,
        rows, layers)``: where a finished cell goes, default the run directory — a worker
        process hands it to the driver instead)."""
        save = self.run_dir.save_cell if save is None else save
        todo = self.missing(sm, chip) if todo is None else todo
        if not todo:
            return
        sm.model.to(self.torch_device).eval()
        deployed = self.hardware.chip(sm.model, sm.seed, chip, self.calib_x)
        for levels in todo:
            stats = evaluate_cell(
                sm, deployed, self.x, self.y, levels, chip, self.spec, self.hardware,
                self.classification, self.rows_per_batch, self.spec.batched,
            )
            rows = stats_rows(sm, stats, levels, chip, self.spec, self.task_name, self.metric)
            save(self.key(sm, chip, levels), rows,
                 layer_rows(sm, stats, levels, chip, self.spec))
            on_cell(1)


def worker_runner(spec: SweepSpec, out_dir: str) -> tuple[CellRunner, list[SweepModel]]:
    """A spawned worker's runner and models (:func:`noisydeq.sweep_jobs.run_parallel`): the
    task and the family reloaded from the cache the parent filled, the run directory
    ``out_dir`` (the parent writes it; the worker sends its cells back)."""
    from noisydeq.tasks import load_task

    task = load_task(spec.task, data_dir=spec.data_dir, seed=spec.seeds[0])
    models = family_models(spec, task, progress=False)
    runner = CellRunner(spec, task, RunDir(out_dir), Hardware(spec),
                        resolve_torch_device(spec.torch_device))
    return runner, models


def run_sweep(
    spec: SweepSpec,
    out_dir: str | Path,
    *,
    task: Any = None,
    models: Sequence[SweepModel] | ModelProvider | None = None,
    progress: bool = True,
    on_cell: Callable[[int], None] | None = None,
    plots: bool = True,
    title: str = "",
    threads: str | None = None,
    jobs: int | str | None = None,
) -> SweepResult:
    """Run (or resume) the sweep ``spec`` into ``out_dir``; returns the tidy table.

    ``task`` / ``models`` default to ``noisydeq.tasks.load_task`` and the trained family of
    ``noisydeq.families``; tests pass their own. ``on_cell(n)`` is called after the n-th cell
    computed in this process is saved (used to test interruption). ``threads``: the torch
    thread counts of training and evaluation (:func:`noisydeq.runtime.thread_plan`; ``None``
    reads ``$NOISYDEQ_THREADS``), each phase's restored after it. ``jobs``: evaluation
    processes (:func:`resolve_jobs`; ``None`` reads ``$NOISYDEQ_JOBS``, default ``auto``).

    Everything is validated before anything is written; the run directory is locked for
    the whole run (a second sweep on the same ``out_dir`` waits for this one).
    """
    train_threads, eval_threads = thread_plan(threads)
    torch_device = resolve_torch_device(spec.torch_device)
    if task is None:
        from noisydeq.tasks import load_task

        task = load_task(spec.task, data_dir=spec.data_dir, seed=spec.seeds[0])
    hardware = Hardware(spec)  # validates the device before anything is written
    if models is None:
        from noisydeq.families import check_sweep_families

        check_sweep_families(spec, task)  # presets, overrides, memory: before any write
    run_dir = RunDir(out_dir)
    fresh = not run_dir.open(spec)
    try:
        return _run_open(spec, run_dir, task, hardware, models, progress, on_cell, plots,
                         title, train_threads, eval_threads, torch_device, jobs, fresh)
    finally:
        run_dir.close()


def _run_open(
    spec: SweepSpec, run_dir: RunDir, task: Any, hardware: Hardware,
    models: Sequence[SweepModel] | ModelProvider | None, progress: bool,
    on_cell: Callable[[int], None] | None, plots: bool, title: str,
    train_threads: int | None, eval_threads: int | None, torch_device: torch.device,
    jobs: int | str | None, fresh: bool,
) -> SweepResult:
    """The body of :func:`run_sweep` once its run directory is open and locked
    (``fresh``: created by this run)."""
    from noisydeq.progress import progress as progress_bar

    if models is None:
        models = family_models
    # worker processes can rebuild the models only when they come from the family cache
    models_from_cache = models is family_models
    if callable(models):
        with num_threads(train_threads):
            models = models(spec, task, progress)
    models = list(models)

    runner = CellRunner(spec, task, run_dir, hardware, torch_device)
    pairs = [(i, chip) for i, sm in enumerate(models) for chip in range(spec.chips)]
    todo = {p: runner.missing(models[p[0]], p[1]) for p in pairs}
    pending = [p for p in pairs if todo[p]]
    if pending:  # unreachable targets: one line, before any cell (a new run dir is removed)
        try:
            with num_threads(eval_threads):
                hardware.check_reachable([models[i] for i in sorted({i for i, _ in pending})],
                                         runner.calib_x)
        except NoisyDEQError:
            if fresh:
                run_dir.discard()
            raise
    n_jobs = resolve_jobs(jobs, spec, len(pending), parallel_ok=models_from_cache)
    total = len(pairs) * len(runner.chunks)
    bar = progress_bar(total=total, desc="sweep", unit="cells", disable=not progress,
                       initial=total - sum(len(t) for t in todo.values()))
    computed = 0

    def cell_done(_n: int) -> None:
        nonlocal computed
        computed += 1
        bar.update(1)
        if on_cell is not None:
            on_cell(computed)

    if n_jobs > 1:
        from noisydeq.sweep_jobs import run_parallel

        with num_threads(1):  # every process evaluates with one thread (see resolve_jobs)
            run_parallel(spec, runner, models, pending, n_jobs, cell_done, worker_runner)
    else:
        with num_threads(eval_threads):
            for i, chip in pending:
                runner.run_pair(models[i], chip, cell_done, todo[(i, chip)])
    all_rows: list[dict[str, Any]] = []
    all_layers: list[dict[str, Any]] = []
    for sm in models:
        for chip in range(spec.chips):
            for levels in runner.chunks:
                key = runner.key(sm, chip, levels)
                rows = runner.load(sm, chip, levels)
                if rows is None:
                    raise NoisyDEQError(f"sweep: cell {sm.model_id} chip {chip} was not written")
                all_rows.extend(rows)
                all_layers.extend(run_dir.load_cell_layers(key))
    skipped = total - computed
    bar.close()
    run_dir.write_table(all_rows)
    if all_layers:
        run_dir.write_layer_table(all_layers)
    result = SweepResult(all_rows, run_dir, hardware.native_snr_db(), computed, skipped,
                         native_parts=hardware.native_parts())
    if plots and all_rows:
        from noisydeq.plots import plot_sweep

        result.figures = plot_sweep(
            all_rows, run_dir.figures, spec, result.native_snr_db, title=title
        )
    run_dir.seal(result.figures)
    return result
