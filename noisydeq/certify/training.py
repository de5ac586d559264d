"""IBP training: the ε and m warm-up schedules and the κ-mixed loss (App. B; Gowal et al.).

:class:`IBPObjective` is what :func:`noisydeq.train.train_model` calls per batch when the
``TrainSpec`` has an ``ibp`` section: it sets ε (and, for a monotone DEQ with ``m_warmup``,
the margin m) for the step, runs the clean forward and the interval bounds together
(:func:`noisydeq.certify.propagate.bounds`, gradients through both) and returns
κ·CE(logits) + (1 − κ)·CE(worst-case logits). While ε = 0 the loss is the clean one and no
bounds are computed.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from noisydeq.specs.optimizer import IBPTrainSpec


def ramp_epochs(spec: IBPTrainSpec, epochs: int) -> int:
    """The ramp length: ``spec.ramp_epochs``, or half of the epochs after the warm-up."""
    if spec.ramp_epochs is not None:
        return spec.ramp_epochs
    return max(1, (epochs - spec.warmup_epochs) // 2)


def eps_at(spec: IBPTrainSpec, step: int, steps_per_epoch: int, epochs: int = 0) -> float:
    """ε at optimisation step ``step`` (0-based): 0 during the warm-up epochs, then the
    smooth ramp of Xu et al. 2020 (degree-4 monomial for the first quarter of the ramp,
    linear after it, with a continuous slope), then ``spec.eps``; ``epochs``: the run's
    length (sets the default ramp)."""
    warm = spec.warmup_epochs * steps_per_epoch
    ramp = ramp_epochs(spec, epochs) * steps_per_epoch
    if step < warm:
        return 0.0
    t = step - warm
    if ramp <= 0 or t >= ramp:
        return spec.eps
    mid = int(0.25 * ramp)
    if mid == 0:
        return spec.eps * t / ramp
    beta = 4.0
    # α t^β up to mid, then linear to eps at ramp; α makes the two slopes meet at mid
    alpha = spec.eps / (mid ** (beta - 1.0) * (mid + beta * (ramp - mid)))
    if t < mid:
        return alpha * t**beta
    mid_val = alpha * mid**beta
    return mid_val + (spec.eps - mid_val) * (t - mid) / (ramp - mid)


def kappa_at(spec: IBPTrainSpec, eps: float) -> float:
    """κ = 1 − (1 − kappa)·ε/eps: all clean at ε = 0, ``spec.kappa`` at the target ε."""
    return 1.0 - (1.0 - spec.kappa) * min(eps / spec.eps, 1.0)


def m_at(spec: IBPTrainSpec, m: float, eps: float) -> float:
    """m + (m_start − m)(1 − ε/eps) (App. B's m warm-up)."""
    return m + (spec.m_start - m) * (1.0 - min(eps / spec.eps, 1.0))


class IBPObjective:
    """Per-batch IBP loss with the schedules of ``spec`` (``steps_per_epoch`` batches)."""

    def __init__(self, spec: IBPTrainSpec, steps_per_epoch: int, epochs: int = 0) -> None:
        self.spec = spec
        self.steps = steps_per_epoch
        self.epochs = epochs
        self.last: dict[str, float] = {}

    def set_margin(self, net: nn.Module, eps: float) -> None:
        cell = getattr(net, "cell", None)
        if self.spec.m_warmup and getattr(net, "kind", None) == "mondeq":
            with torch.no_grad():
                cell.m_active.fill_(m_at(self.spec, cell.m, eps))

    def __call__(self, net: nn.Module, x: Tensor, y: Tensor, epoch: int, batch: int
                 ) -> tuple[Tensor, Tensor]:
        """(clean logits, loss) of one batch."""
        from noisydeq.certify.propagate import bounds

        eps = eps_at(self.spec, epoch * self.steps + batch, self.steps, self.epochs)
        kappa = kappa_at(self.spec, eps)
        self.set_margin(net, eps)
        ce = nn.functional.cross_entropy
        if eps == 0.0:
            logits = net(x)
            self.last = {"ibp_eps": 0.0, "ibp_kappa": 1.0, "ibp_certified": math.nan}
            return logits, ce(logits, y)
        b = bounds(net, x, y, eps)
        loss = kappa * ce(b.logits, y) + (1.0 - kappa) * ce(b.worst_logits(), y)
        self.last = {"ibp_eps": eps, "ibp_kappa": kappa,
                     "ibp_certified": float(b.certified.double().mean())}
        return b.logits, loss

    def clip(self, net: nn.Module) -> None:
        """Clip the gradient's ℓ₂ norm (App. B: 10)."""
        if self.spec.grad_clip is not None:
            nn.utils.clip_grad_norm_(net.parameters(), self.spec.grad_clip)
