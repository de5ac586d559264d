"""The sweep engine: trained models × inference SNR grid × chip instances → one tidy table.

For every model, chip instance and chunk of SNR levels (a *cell*) the test set is pushed
through the deployed model once with the SNR levels **stacked along the batch**: K levels ×
n samples make one (K·n)-row forward, with a per-sample SNR tensor and a block
:class:`~noisydeq.noise.NoiseStream` (one generator per level, seeded by
``derive_seed(seed, model_id, snr, chip, batch)``). Because every block draws exactly what a
separate run at that level would draw, the batched results equal the per-point ones
(``batched=False``) for the same seeds. ``max_rows`` bounds K·n (memory).

Metric conventions (the paper's Sec. 4.1 / App. D.1 metrics, made explicit for noise):

* classification — accuracy over **all** test samples; a sample whose solve diverged
  (non-finite state or output) counts as wrong.
* regression — MSE over the samples that did not diverge (a diverged sample has no
  meaningful output); ``nan`` if all diverged.
* In both cases ``diverged_frac`` is reported next to the metric, so a diverging model is
  never hidden inside an average.

``measured_snr_db`` is the realised SNR Σ‖y‖²/Σ‖ε‖² at the noise site over all injections
of that level (model noise), or the device's own measurement (device noise); ``inf`` when
there is no noise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from noisydeq.config import NoiseSpec, SweepSpec
from noisydeq.errors import NoisyDEQError
from noisydeq.noise import Noise, NoiseStream, active_subset, derive_seed
from noisydeq.results import RunDir
from noisydeq.runtime import job_count, num_threads, resolve_torch_device, thread_plan
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

    @property
    def model_id(self) -> str:
        return (
            f"{self.kind}-d{self.depth}-w{self.width}-s{self.seed}"
            f"-t{fmt_db(self.train_snr_db)}"
        )


@dataclass
class LevelStats:
    """Running sums for one (model, chip, SNR level) over the test batches."""

    n: int = 0
    score: float = 0.0  # correct count (classification) or Σ squared error (regression)
    n_scored: int = 0  # denominator of the metric
    steps: float = 0.0
    converged: int = 0
    diverged: int = 0
    signal: float = 0.0
    noise: float = 0.0

    def measured_db(self) -> float:
        if self.noise == 0.0:
            return math.inf
        if self.signal == 0.0:
            return -math.inf
        return 10.0 * math.log10(self.signal / self.noise)


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
            self.device = hardware.get_device(spec.device)
            if spec.noise_site == "device":
                finite = [s for s in spec.snr_db if math.isfinite(s)]
                if finite:  # unreachable SNRs fail now, before anything is written
                    self.device.at_snr(max(finite))

    def native_snr_db(self) -> float:
        if self.direct:
            return math.inf
        return float(self.device.native_snr_db())

    def chip(self, model: nn.Module, seed: int, chip: int, calib_x: Tensor | None) -> nn.Module:
        """``model`` deployed on chip instance ``chip`` (static noise seeded by seed, chip).

        Layers are calibrated on the activations of ``calib_x`` (training inputs), so a
        target SNR is met on the data the model sees, not on synthetic vectors. Under device
        noise every SNR level of the sweep is calibrated here, in ascending order, or loaded
        from the calibration cache (:mod:`noisydeq.hardware.calibration_store`).
        """
        if self.direct:
            return model
        device = self.device.new_chip(derive_seed(seed, "chip", chip))
        deployed = device.deploy(model).eval()
        if calib_x is not None:
            self.hw.calibrate(deployed, calib_x)
        if self.spec.noise_site == "device":
            from noisydeq.families import cache_root
            from noisydeq.hardware.calibration_store import calibrate_levels

            calibrate_levels(deployed, model, device, calib_x, self.spec.snr_db, cache_root())
        return deployed

    def prepare(
        self, model: nn.Module, snr: Tensor, seeds: Sequence[int], rows: int, device_noise: bool
    ) -> None:
        """Give every device layer its own block stream and the per-sample SNR targets.

        One stream per layer (seeded by the level seed and the layer name) keeps the draws
        of a layer independent of how often *other* layers were called: a DEQ solve that
        runs longer because another level in the batch is still iterating does not shift
        the noise of the output head.
        """
        if self.direct:
            return
        for name, layer in self.hw.device_layers(model).items():
            layer.stream = NoiseStream.from_blocks(
                [derive_seed(s, "layer", name) for s in seeds], [rows] * len(seeds),
                device=snr.device,
            )
        self.hw.set_sample_snr(model, snr if device_noise else None)

    def meter(self, model: nn.Module, blocks: int, rows: int) -> DeviceMeter | None:
        """A per-block SNR meter on the deployed layers for the next forward."""
        if self.direct:
            return None
        return DeviceMeter(self.hw.device_layers(model), blocks, rows)


class DeviceMeter:
    """Measures the realised MVM-output SNR of every device layer, per block of the batch.

    Forward hooks compare the device output (bias removed) with the exact MVM of the digital
    weights on the first ``probe`` rows of each block: Σ‖Wx‖² / Σ‖y_dev − Wx‖² (DESIGN §1),
    summed over layers and calls (linear and convolutional layers alike). Probing a few rows
    keeps the extra exact MVMs cheap.
    When a solver evaluates only its active rows (:class:`noisydeq.noise.RowSubset`), the
    probe rows among them are measured.
    """

    probe = 32

    def __init__(self, layers: dict[str, nn.Module], blocks: int, rows: int) -> None:
        #: per-block sums of ‖Wx‖² and ‖y_dev − Wx‖² (float64, on the layers' device once a
        #: forward ran): accumulated as tensors, read once per cell (:meth:`totals`)
        self.signal: Tensor | None = None
        self.noise: Tensor | None = None
        self.blocks, self.rows = blocks, rows
        m = min(rows, self.probe)
        self.index = torch.cat([torch.arange(m) + k * rows for k in range(blocks)])
        self.handles = [layer.register_forward_hook(self._hook) for layer in layers.values()]

    def _hook(self, layer: nn.Module, inputs: tuple[Tensor, ...], out: Tensor) -> None:
        x = inputs[0]
        total = self.blocks * self.rows
        probe = self.index.to(x.device)
        subset = active_subset(x.shape[0])
        if subset is not None and subset.total == total:
            where = torch.full((total,), -1, dtype=torch.long, device=x.device)
            where[subset.index.to(x.device)] = torch.arange(x.shape[0], device=x.device)
            pos = where[probe]
            keep = pos >= 0
            if subset.real is not None:  # padding rows of a small subset do not count
                keep &= subset.real.to(x.device)[pos.clamp(min=0)]
            idx, block = pos[keep], probe[keep] // self.rows
        elif x.shape[0] == total:
            idx = probe
            block = idx // self.rows
        else:
            return
        y = out[idx].double()
        if getattr(layer, "bias", None) is not None:
            y = y - layer.bias.double().reshape((1, -1) + (1,) * (y.ndim - 2))
        exact = _exact64(layer, x[idx])
        if self.signal is None or self.noise is None:
            self.signal = torch.zeros(self.blocks, dtype=torch.float64, device=x.device)
            self.noise = torch.zeros_like(self.signal)
        sig, noi = exact.pow(2).flatten(1).sum(1), (y - exact).pow(2).flatten(1).sum(1)
        self.signal += self.signal.new_zeros(self.blocks).index_add_(0, block, sig)
        self.noise += self.noise.new_zeros(self.blocks).index_add_(0, block, noi)

    def totals(self, block: int) -> tuple[float, float]:
        """(signal, noise) sums of ``block`` over every call so far."""
        if self.signal is None or self.noise is None:
            return 0.0, 0.0
        return float(self.signal[block]), float(self.noise[block])

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def _exact64(layer: nn.Module, x: Tensor) -> Tensor:
    """The exact MVM of a device layer (no bias) in float64: linear or convolution."""
    op = getattr(layer, "op", "linear")
    w = layer.weight.double()
    if op == "linear":
        return torch.nn.functional.linear(x.double(), w)
    fn = torch.nn.functional.conv1d if op == "conv1d" else torch.nn.functional.conv2d
    return fn(x.double(), w, None, **layer.conv)


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
) -> None:
    """One forward of the n samples ``x`` at K SNR ``levels`` stacked (K·n rows).

    Block k of the batch carries level k and draws its noise from ``seeds[k]``; ``stats[k]``
    accumulates that level's results. ``on_device=False``: ``deployed`` is the digital model
    (used for SNR = ∞ under device noise: the noise-free reference).
    """
    n, k = x.shape[0], len(levels)
    xs = x.repeat(k, *([1] * (x.ndim - 1)))
    snr = torch.tensor(list(levels), dtype=x.dtype, device=x.device).repeat_interleave(n)
    device_noise = spec.noise_site == "device"
    if on_device:
        hardware.prepare(deployed, snr, seeds, n, device_noise)
    noise = None
    if not device_noise:
        stream = NoiseStream.from_blocks(list(seeds), [n] * k, device=x.device)
        noise = MeteredNoise(NoiseSpec(site=spec.noise_site), stream, snr_db=snr)
    meter = hardware.meter(deployed, k, n) if device_noise and on_device else None
    try:
        with torch.no_grad():
            logits, sol = _forward(deployed, xs, noise)
    finally:
        if meter is not None:
            meter.close()
    rows = logits.reshape(k * n, -1)
    diverged = ~torch.isfinite(rows).all(dim=1)
    if sol is not None:
        diverged = diverged | sol.diverged.to(diverged.device)
        steps = sol.steps.double()
        converged = sol.converged & ~diverged
    else:  # feed-forward: one layer evaluation per layer, always "converged"
        steps = torch.full((k * n,), float(sm.depth), dtype=torch.float64, device=x.device)
        converged = ~diverged
    if classification:  # a per-position sample is correct only if every position is
        correct = sample_correct(logits, y.repeat(k, *([1] * (y.ndim - 1)))) & ~diverged
        per_sample = correct.double()
    else:
        target = y.reshape(n, -1).repeat(k, 1).to(rows.dtype)
        per_sample = (rows - target).double().pow(2).mean(dim=1)
        per_sample = torch.where(diverged, torch.zeros_like(per_sample), per_sample)
    for j, st in enumerate(stats):
        sl = slice(j * n, (j + 1) * n)
        div = int(diverged[sl].sum())
        st.n += n
        st.score += float(per_sample[sl].sum())
        st.n_scored += n if classification else n - div
        st.steps += float(steps[sl].sum())
        st.converged += int(converged[sl].sum())
        st.diverged += div
        if noise is not None:
            st.signal += float(noise.signal[sl].sum())
            st.noise += float(noise.noise[sl].sum())
        elif meter is not None:
            sig, noi = meter.totals(j)
            st.signal += sig
            st.noise += noi


def level_chunks(
    levels: Sequence[float], n_test: int, max_rows: int
) -> tuple[int, list[list[float]]]:
    """Rows per level per forward and the SNR chunks (each ≤ ``max_rows`` rows in all)."""
    rows = max(1, min(n_test, max_rows))
    per_chunk = max(1, max_rows // rows)
    levels = list(levels)
    return rows, [levels[i : i + per_chunk] for i in range(0, len(levels), per_chunk)]


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
    level per test batch, with the same seeds — the results are the same.
    """
    stats = [LevelStats() for _ in levels]
    device_noise = spec.noise_site == "device"
    for b, start in enumerate(range(0, x.shape[0], rows_per_batch)):
        xb, yb = x[start : start + rows_per_batch], y[start : start + rows_per_batch]
        seeds = [derive_seed(sm.seed, sm.model_id, fmt_db(s), chip, b) for s in levels]
        # SNR = ∞ under device noise is the noise-free reference: the digital model.
        groups = [
            [j for j, s in enumerate(levels) if not (device_noise and math.isinf(s))],
            [j for j, s in enumerate(levels) if device_noise and math.isinf(s)],
        ]
        for on_device, group in zip((True, False), groups, strict=True):
            model = deployed if on_device else sm.model
            parts = [group] if batched else [[j] for j in group]
            for part in parts:
                if part:
                    forward_levels(
                        model, sm, xb, yb, [levels[j] for j in part], [seeds[j] for j in part],
                        spec, hardware, classification, [stats[j] for j in part], on_device,
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
    rows = []
    for st, level in zip(stats, levels, strict=False):
        if metric == "accuracy":
            value = st.score / st.n
        else:
            value = st.score / st.n_scored if st.n_scored else math.nan
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
                "measured_snr_db": float(st.measured_db()),
                "chip": int(chip),
                "metric": metric,
                "value": float(value),
                "n_samples": int(st.n),
                "mean_steps": st.steps / st.n,
                "converged_frac": st.converged / st.n,
                "diverged_frac": st.diverged / st.n,
            }
        )
    return rows


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


ModelProvider = Callable[[SweepSpec, Any, bool], list[SweepModel]]


def family_models(spec: SweepSpec, task: Any, progress: bool = True) -> list[SweepModel]:
    """Trained (or cached) depth-matched families, one per (seed, training SNR) of ``spec``.

    Uses :func:`noisydeq.families.train_family`; members come back in depth order, DEQ then
    FFW, as evaluated and tabulated.
    """
    from noisydeq.families import family_spec_for_sweep, train_family

    log = None
    if progress:
        from tqdm.auto import tqdm

        log = tqdm.write
    out = []
    for seed in spec.seeds:
        for tsnr in spec.train_snr_db:
            fspec = family_spec_for_sweep(spec, seed, tsnr)
            family = train_family(fspec, task, torch_device=spec.torch_device,
                                  quiet=not progress, log=log)
            members = sorted(family.members, key=lambda m: (m.depth, m.kind))
            out += [
                SweepModel(m.model, m.kind, m.depth, m.width, m.params, seed, tsnr)
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
        self.torch_device = torch_device
        self.task_name = task.name
        self.x, self.y = _test_tensors(task, spec, torch_device)
        self.classification = task.kind == "classification"
        self.metric = "accuracy" if self.classification else "mse"
        self.rows_per_batch, self.chunks = level_chunks(spec.snr_db, self.x.shape[0],
                                                        spec.max_rows)
        calib_x = getattr(task, "x_train", None)
        self.calib_x = None if calib_x is None else calib_x[:512].to(torch_device)

    @staticmethod
    def key(sm: SweepModel, chip: int, levels: Sequence[float]) -> str:
        return f"{sm.model_id}|chip{chip}|" + ",".join(fmt_db(s) for s in levels)

    def missing(self, sm: SweepModel, chip: int) -> list[list[float]]:
        """The level chunks of (sm, chip) not yet saved in the run directory."""
        return [ch for ch in self.chunks if self.run_dir.load_cell(self.key(sm, chip, ch)) is None]

    def run_pair(
        self, sm: SweepModel, chip: int, on_cell: Callable[[int], None],
        todo: list[list[float]] | None = None,
    ) -> None:
        """Compute and save the missing cells of ``sm`` on chip ``chip`` (``todo``: the
        level chunks :meth:`missing` gave, when the caller already asked)."""
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
            self.run_dir.save_cell(self.key(sm, chip, levels), rows)
            on_cell(1)


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
    """
    from tqdm.auto import tqdm

    train_threads, eval_threads = thread_plan(threads)
    torch_device = resolve_torch_device(spec.torch_device)
    if task is None:
        from noisydeq.tasks import load_task

        task = load_task(spec.task, data_dir=spec.data_dir, seed=spec.seeds[0])
    hardware = Hardware(spec)  # validates the device before anything is written
    run_dir = RunDir(out_dir)
    run_dir.open(spec)
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
    n_jobs = resolve_jobs(jobs, spec, len(pending), parallel_ok=models_from_cache)
    total = len(pairs) * len(runner.chunks)
    bar = tqdm(total=total, desc="sweep", unit="cell", disable=not progress, leave=False)
    bar.update(total - sum(len(t) for t in todo.values()))
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
            run_parallel(spec, runner, models, pending, n_jobs, cell_done)
    else:
        with num_threads(eval_threads):
            for i, chip in pending:
                runner.run_pair(models[i], chip, cell_done, todo[(i, chip)])
    all_rows: list[dict[str, Any]] = []
    for sm in models:
        for chip in range(spec.chips):
            for levels in runner.chunks:
                rows = run_dir.load_cell(runner.key(sm, chip, levels))
                if rows is None:
                    raise NoisyDEQError(f"sweep: cell {sm.model_id} chip {chip} was not written")
                all_rows.extend(rows)
    skipped = total - computed
    bar.close()
    run_dir.write_table(all_rows)
    result = SweepResult(all_rows, run_dir, hardware.native_snr_db(), computed, skipped)
    if plots and all_rows:
        from noisydeq.plots import plot_sweep

        result.figures = plot_sweep(
            all_rows, run_dir.figures, spec, result.native_snr_db, title=title
        )
    return result
