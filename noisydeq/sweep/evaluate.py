"""Evaluate: spec + model + device → rows, with nothing written (pure).

A cell (one model, one chip, a chunk of SNR levels) is pushed through the deployed model
with the levels stacked along the batch (:func:`forward_levels`); :func:`evaluate_cell`
gives its per-level statistics, :func:`stats_rows` / :func:`layer_rows` the table rows. The
metric conventions and the determinism rules are those of :mod:`noisydeq.sweep`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from noisydeq.hardware.parts import Parts
from noisydeq.noise import Noise, NoiseStream, active_subset, derive_seed
from noisydeq.specs.noise import NoiseSpec
from noisydeq.specs.sweep import SweepSpec, is_native
from noisydeq.sweep.base import ROW_ALIGN, SweepModel, level_text, sample_batches
from noisydeq.sweep.hardware import Hardware
from noisydeq.tasks.base import sample_correct


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
    The native level (:data:`~noisydeq.specs.sweep.NATIVE_LEVEL`, a forward of its own)
    runs the device layers at their own knobs: no per-sample target, the chip's native
    knobs (:meth:`~noisydeq.hardware.layer.DeviceLayer.resolve_controls`).
    """
    native = [is_native(s) for s in levels]
    if any(native) and len(levels) > 1:
        raise ValueError("the native level is evaluated in a forward of its own")
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
    if on_device:  # native: no targets (the device's own knobs)
        hardware.prepare(deployed, snr, seeds, block_rows, samples,
                         device_noise and not any(native))
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
    seeds = [derive_seed(sm.seed, sm.model_id, level_text(s), chip) for s in levels]
    # SNR = ∞ under device noise is the noise-free reference: the digital model.
    groups = [
        [j for j, s in enumerate(levels) if not (device_noise and math.isinf(s))],
        [j for j, s in enumerate(levels) if device_noise and math.isinf(s)],
    ]
    for start, stop in sample_batches(x.shape[0], rows_per_batch):
        xb, yb = x[start:stop], y[start:stop]
        for on_device, group in zip((True, False), groups, strict=True):
            if not group:
                continue
            model = deployed if on_device else sm.model
            for part in [group] if batched else [[j] for j in group]:
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
