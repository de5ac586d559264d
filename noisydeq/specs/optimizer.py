"""Options of one training run beyond its basics: Adam and the learning-rate schedule,
adversarial training (main paper §4.2, App. C), IBP training (Gowal et al. 2018) and the
random-state loss (regulation paper Eq. 10)."""

from __future__ import annotations

import math

from pydantic import Field, field_validator

from noisydeq import limits
from noisydeq.specs.base import StrictModel, suggest_name

ADVERSARIAL_METHODS = ("pgd", "trades")


def check_radius(v: float) -> float:
    """An ℓ∞ radius of inputs in [0, 1]: a validator's ValueError outside [0, 1]."""
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"must lie in [0, 1] (inputs lie in [0, 1]), got {v:g}")
    return v


class AdversarialSpec(StrictModel):
    """Adversarial training, min_θ max_{‖Δx‖∞ ≤ ε} L (main paper §4.2, App. C Eq. 56).

    ``method``: ``pgd`` (PGD-AT, Madry et al. 2018: the loss at the PGD example) or
    ``trades`` (Zhang et al. 2019: CE(f(x), y) + ``beta``·KL(f(x) ‖ f(x')), x' maximising
    the KL from x + 0.001·N(0, I)). The inner attack is ``steps`` ℓ∞ PGD steps of size
    ``step`` within ε (the paper: ε = 0.3, step 0.1, 10 steps; TRADES β = 6), each through
    a DEQ's forward solve followed by ``unroll`` damped steps z ← (1−λ) z + λ f(z) with
    λ = ``unroll_lambda`` (App. C Eq. 55: K = 9, λ = 0.5; an FFW is differentiated by
    backprop), ``eot`` gradients averaged over the training noise. ``val_fraction`` of the
    training split (its last samples) is held out: after each epoch the model is attacked
    there by PGD-``val_steps`` (ε, ``step``, its own gradient) and the epoch of highest
    robust accuracy is the one saved (0 = no hold-out, the last epoch is saved).
    ``warmup_epochs``: ε (and the step with it) grows linearly from 0 over this many epochs,
    per batch: batch i of n in 0-based epoch e is attacked at ε·min(1, (e + (i + 1)/n) /
    ``warmup_epochs``) (0 = the full ε from the start, as the paper; a short schedule
    learns nothing at ε = 0.3 from a random start, see docs/robustness.md). The validation
    attack of the epoch selection always uses the full ε.
    """

    method: str = "pgd"
    eps: float = 0.3
    step: float = Field(default=0.1, gt=0.0)
    steps: int = Field(default=10, ge=1)
    beta: float = 6.0
    random_start: bool = True
    unroll: int = Field(default=9, ge=1)
    unroll_lambda: float = Field(default=0.5, gt=0.0, le=1.0)
    eot: int = Field(default=1, ge=1)
    val_fraction: float = Field(default=0.1, ge=0.0, lt=1.0)
    val_steps: int = Field(default=10, ge=1)
    warmup_epochs: float = Field(default=0.0, ge=0.0)

    @field_validator("method")
    @classmethod
    def _method(cls, v: str) -> str:
        name = str(v).strip().lower()
        if name not in ADVERSARIAL_METHODS:
            raise ValueError(suggest_name("adversarial method", v, ADVERSARIAL_METHODS))
        return name

    @field_validator("eps")
    @classmethod
    def _eps(cls, v: float) -> float:
        return check_radius(v)

    @field_validator("beta")
    @classmethod
    def _beta(cls, v: float) -> float:
        if not v >= 0.0 or math.isinf(v):
            raise ValueError(f"the TRADES weight must be a finite number >= 0, got {v:g}")
        return v


class RandomStateSpec(StrictModel):
    """Training loss on a random intermediate state (regulation paper Eq. 10).

    Each sample's loss is L(head(z[i]), y) at the state z[i] after i ~ U[1, N] iterations of
    the DEQ's training solver from z⁰ = 0 (N = ``states``, None = the solver's
    ``max_iter``), differentiated exactly: back-propagation through the i iterations (no
    phantom tail). Needs a differentiable training solver (``unroll`` or ``stochastic``).
    """

    states: int | None = Field(default=None, ge=1)


class OptimizerSpec(StrictModel):
    """Adam's options and the learning-rate schedule (main paper Tables 5-6).

    ``amsgrad``: the AMSGrad variant of Adam. ``milestones``: epochs at which the learning
    rate is multiplied by ``gamma`` (PyTorch's ``MultiStepLR`` stepped per epoch; the paper:
    [45], 0.1). ``grad_clip``: largest ℓ₂ norm of the whole gradient (None = off).
    """

    NO_REPEATS = frozenset({"milestones"})

    amsgrad: bool = False
    milestones: list[int] = Field(default_factory=list)
    gamma: float = Field(default=0.1, gt=0.0, le=1.0)
    grad_clip: float | None = Field(default=None, gt=0.0)

    @field_validator("milestones")
    @classmethod
    def _milestones(cls, v: list[int]) -> list[int]:
        if any(m < 1 for m in v):
            raise ValueError(f"milestones must be positive epochs, got {v}")
        return sorted(v)

    def lr_factor(self, epoch: int) -> float:
        """The learning-rate multiplier of 0-based ``epoch``: gamma^(milestones passed)."""
        return self.gamma ** sum(1 for m in self.milestones if epoch >= m)


class IBPTrainSpec(StrictModel):
    """Interval-bound-propagation training (Gowal et al. 2018; Wei & Kolter 2022, App. B).

    Loss κ·CE(logits) + (1 − κ)·CE(worst-case logits of the elided margin bounds at ε).
    ε is 0 for ``warmup_epochs``, then rises to ``eps`` over ``ramp_epochs`` (per batch: a
    degree-4 monomial for the first quarter, then linear, continuous slope; Xu et al. 2020;
    None = half of the epochs after the warm-up), then stays. κ goes from 1 to ``kappa``
    with ε (κ = 1 − (1 − kappa)·ε/eps; the paper's code trains on the worst-case loss
    alone, κ = 0; Gowal et al. end at 0.5).
    ``m_warmup``: for a monotone DEQ, m = m + (``m_start`` − m)(1 − ε/eps) (App. B, DEQ-7).
    ``grad_clip``: largest ℓ₂ norm of the gradient (App. B: 10; None = off).
    """

    eps: float = Field(gt=0.0)
    warmup_epochs: int = Field(default=1, ge=0, le=limits.MAX_EPOCHS)
    ramp_epochs: int | None = Field(default=None, ge=0, le=limits.MAX_EPOCHS)
    kappa: float = Field(default=0.0, ge=0.0, le=1.0)
    m_warmup: bool = False
    m_start: float = Field(default=0.99, gt=0.0, lt=1.0)
    grad_clip: float | None = Field(default=10.0, gt=0.0, le=1e30)

    @field_validator("eps")
    @classmethod
    def _eps(cls, v: float) -> float:  # above 1 every input box is the whole [0, 1] cube
        return check_radius(v)
