"""A plain ℓ∞ PGD attack (Madry et al. 2018): the empirical robustness next to certificates.

Deliberately minimal (the full attack suite lives in :mod:`noisydeq.attacks`; this shares
only its rule of what counts as robust): projected
signed-gradient ascent on the cross-entropy from a uniform random start in the ε-box,
``steps`` steps of size ``step`` (default 2.5·ε/steps), ``restarts`` random starts, the
box intersected with ``clip``. The random starts are counter-based: restart r of the sample
with dataset index s draws the r-th uniform row of (``seed``, s)
(:class:`noisydeq.noise.NoiseStream`), so a sample's attack does not depend on the batch it
is evaluated in. A sample counts as robust when it is classified correctly clean *and* at
every iterate of every restart (:mod:`noisydeq.attacks.robust`'s rule, every iterate an
attacked input; non-finite logits are wrong) — so robust ≤ clean per sample, and a
certified sample the attack breaks is a contradiction (a wrong bound) the caller checks.
DEQ gradients come from the model's own gradient method (implicit for ``mondeq``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from noisydeq.attacks.robust import correct
from noisydeq.noise import NoiseStream


def pgd_robust(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    *,
    steps: int = 20,
    restarts: int = 1,
    step: float | None = None,
    clip: tuple[float, float] | None = (0.0, 1.0),
    seed: int = 0,
    samples: Tensor | None = None,
) -> Tensor:
    """(B,) bool: correct on x and on every PGD iterate within the ε-box.

    ``samples``: the dataset index of every row (default: its position), which keys its
    random starts together with ``seed``."""
    with torch.no_grad():
        robust = correct(model(x), y)
    if eps <= 0 or steps <= 0:
        return robust
    step = 2.5 * eps / steps if step is None else step
    lo, hi = x - eps, x + eps
    if clip is not None:
        lo, hi = lo.clamp(*clip), hi.clamp(*clip)
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    starts = NoiseStream.from_seed(seed, x.device,
                                   samples=torch.arange(len(x)) if samples is None else samples)
    for _ in range(restarts):
        u = starts.rand(x.shape, x.dtype, x.device)
        adv = lo + (hi - lo) * u
        for _ in range(steps):
            adv = adv.detach().requires_grad_(True)
            with torch.enable_grad():
                logits = model(adv)
                (grad,) = torch.autograd.grad(loss_fn(logits, y), adv)
            robust &= correct(logits.detach(), y)
            adv = torch.minimum(torch.maximum(adv.detach() + step * grad.sign(), lo), hi)
        with torch.no_grad():
            robust &= correct(model(adv), y)
    return robust
