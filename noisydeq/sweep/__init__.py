"""The sweep engine: trained models × inference SNR grid × chip instances → one tidy table.

Three steps, one module each (the shape a distributed backend needs): **plan**
(:mod:`~noisydeq.sweep.plan`: which models, which cells are missing), **evaluate**
(:mod:`~noisydeq.sweep.evaluate`: spec + model + device → rows, nothing written; the device
side in :mod:`~noisydeq.sweep.hardware`) and **write** (:mod:`~noisydeq.sweep.write`: the
driver, the run directory's only writer); :mod:`~noisydeq.sweep.jobs` runs evaluation in
spawned workers whose rows come back to the driver, and :mod:`~noisydeq.sweep.base` holds
what they share. This package re-exports their public names (``from noisydeq.sweep import
run_sweep``).

For every model, chip instance and chunk of SNR levels (a *cell*) the test set is pushed
through the deployed model once with the SNR levels **stacked along the batch**: K levels ×
n samples make one (K·n)-row forward, with a per-sample SNR tensor and a block
:class:`~noisydeq.noise.NoiseStream` (one source per level, seeded by
``derive_seed(seed, model_id, snr, chip)``, its rows keyed by their index in the test set).
Every draw is a function of (seed, model, SNR level, chip, layer, solver step, test-sample
index), so a sample's numbers do not depend on which levels, samples, test batch, chunk or
process it is evaluated with: the batched results equal the per-point ones
(``batched=False``) and every ``max_rows`` (which bounds K·n, memory) and ``--jobs`` give
the same table, byte for byte — so a run resumed with another ``max_rows`` takes the levels
its cells hold from them (:meth:`~noisydeq.sweep.plan.CellRunner.rechunked`). Per-sample
results are summed exactly (``math.fsum``), so the totals do not depend on the batching
either. Matmul rounding is kept out of it too: a CPU
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

import importlib
from typing import Any

#: every public name of the package and the module that defines it; loaded on first use
#: (``from noisydeq.sweep import run_sweep`` works as before), so that a spawned worker's
#: ``import noisydeq.sweep.jobs`` stays free of torch until it has tied its life to its
#: parent's (:mod:`noisydeq.sweep.jobs`, "Process hygiene")
_HOMES = {
    "CELL_VERSION": "base", "ROW_ALIGN": "base", "SweepModel": "base", "fmt_db": "base",
    "level_chunks": "base", "sample_batches": "base",
    "LevelStats": "evaluate", "MeteredNoise": "evaluate", "evaluate_cell": "evaluate",
    "forward_levels": "evaluate", "layer_rows": "evaluate", "stats_rows": "evaluate",
    "DeviceMeter": "hardware", "Hardware": "hardware",
    "CellRunner": "plan", "ModelProvider": "plan", "family_models": "plan",
    "resolve_jobs": "plan",
    "SweepResult": "write", "run_sweep": "write", "worker_runner": "write",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'noisydeq.sweep' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"noisydeq.sweep.{home}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))
