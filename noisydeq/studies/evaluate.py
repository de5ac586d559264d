"""Score one trained model on one test set under one noise level (a study's cell row).

Metrics (paper App. D.4 / E.4 and §4.1): for a label per position (prefix sums, mazes) the
``value`` is the fraction of samples with *every* position right (App. D.4: fully correct
strings / mazes) and ``position_acc`` the fraction of positions right; for one label per
sample it is the accuracy; for regression the mean squared error over the samples whose
solve did not diverge (``position_acc`` is NaN). A diverged sample (non-finite output or the
solver's divergence flag) counts as wrong; ``diverged_frac`` reports how many there were.
Randomness is counter-based (:mod:`noisydeq.rng`): the noise of test sample i is drawn from
``NoiseStream.from_seed(derive_seed(seed, "noise"), samples=[i])`` and a DEQ test solver's
random iteration cap from the ``"threshold"`` source keyed the same way, so every draw is a
function of (seed, sample, cell call, element) — the same whatever ``eval_batch`` the test
set is split by.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from torch import Tensor, nn

from noisydeq.noise import Noise, NoiseStream, derive_seed
from noisydeq.specs.noise import NoiseSpec
from noisydeq.tasks.base import sample_correct


@torch.no_grad()
def score(
    model: nn.Module, x: Tensor, y: Tensor, *, classification: bool, noise: NoiseSpec,
    seed: int, batch: int = 256,
) -> dict[str, Any]:
    """Metric, per-position accuracy, solver statistics and seconds of ``model`` on (x, y)."""
    t0 = time.perf_counter()
    model.eval()
    deq = getattr(model, "kind", None) == "deq"
    dev = next(model.parameters()).device
    n = correct = scored = div_total = conv_total = 0
    pos_right = pos_total = 0
    sq_err = steps = 0.0
    max_iter = 0
    for start in range(0, x.shape[0], batch):
        xb, yb = x[start:start + batch].to(dev), y[start:start + batch].to(dev)
        samples = torch.arange(start, start + len(xb))
        inj = Noise(noise, NoiseStream.from_seed(derive_seed(seed, "noise"), dev, samples)) \
            if noise.active else None
        if deq:
            caps = NoiseStream.from_seed(derive_seed(seed, "threshold"), dev, samples)
            out = model(xb, inj, return_solution=True, generator=caps)
            logits, sol = out.logits, out.solution
            max_iter = max(max_iter, int(sol.n_iter))
        else:
            logits, sol = model(xb, inj), None
        bad = ~torch.isfinite(logits.reshape(logits.shape[0], -1)).all(dim=1)
        if sol is not None:
            bad = bad | sol.diverged.to(bad.device)
            steps += float(sol.steps.double().sum())
            conv_total += int((sol.converged.to(bad.device) & ~bad).sum())
        else:
            steps += float(getattr(model, "depth", 1)) * len(xb)
            conv_total += int((~bad).sum())
        n += len(xb)
        div_total += int(bad.sum())
        if classification:
            correct += int((sample_correct(logits, yb) & ~bad).sum())
            if yb.ndim > 1:
                right = (logits.argmax(dim=1) == yb).reshape(len(yb), -1) & ~bad[:, None]
                pos_right += int(right.sum())
                pos_total += right.numel()
        else:
            err = (logits.double() - yb.double()).pow(2).reshape(len(yb), -1).mean(dim=1)
            sq_err += float(err[~bad].sum())
            scored += int((~bad).sum())
    if classification:
        value = correct / n
        pos = pos_right / pos_total if pos_total else value
    else:
        value = sq_err / scored if scored else math.nan
        pos = math.nan
    return {
        "value": value, "position_acc": pos, "n": n, "mean_steps": steps / n,
        "converged_frac": conv_total / n, "diverged_frac": div_total / n,
        "iterations_run": max_iter if deq else int(getattr(model, "depth", 1)),
        "eval_seconds": time.perf_counter() - t0,
    }
