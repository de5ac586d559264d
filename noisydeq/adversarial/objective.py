"""The per-batch training loss with an adversary and / or random intermediate states.

* PGD-AT (Madry et al. 2018; main paper App. C Eq. 56): L(f(x'), y) at the ℓ∞ PGD example
  x' of the batch — min_θ max_{‖Δx‖∞ ≤ ε} L.
* TRADES (Zhang et al. 2019): CE(f(x), y) + β · KL(p(x) ‖ p(x')), where x' maximises the
  KL from x + 0.001·N(0, I). The maximisation is the same PGD with soft targets: the
  cross-entropy to p(x) is the KL plus p(x)'s own entropy, which does not depend on x',
  so both have the same gradient in x'. β = 0 is standard training's loss.
* Random intermediate states (regulation paper Eq. 10): the forward whose logits enter the
  loss is the state z[i], i ~ U[1, N] per sample (:mod:`noisydeq.regulation.states`).

The inner attack is :func:`noisydeq.attacks.pgd.pgd` through the model as it trains
(training solver and noise): for a DEQ the forward solve followed by ``unroll`` damped
steps z ← (1 − λ) z + λ f(z) with autograd (App. C Eq. 55: M = 8 solver iterations,
K = 9, λ = 0.5) — :class:`noisydeq.attacks.estimators.FinalState` with the phantom
gradient, solved from z⁰ = 0 at every step as in the paper; an FFW is differentiated by
backprop. Training noise is drawn afresh at every attack forward (an EOT of ``eot`` draws
per step when asked). The Jacobian regulariser of a DEQ is not computed during the attack.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from torch import Tensor, nn
from torch.nn import functional as F

from noisydeq.attacks.estimators import FinalState, is_deq
from noisydeq.attacks.norms import Source, draw
from noisydeq.attacks.pgd import pgd
from noisydeq.errors import NoisyDEQError
from noisydeq.noise import Noise
from noisydeq.regulation.states import check_random_state, random_state_forward, temporarily
from noisydeq.specs.optimizer import AdversarialSpec
from noisydeq.specs.solver import GradientSpec
from noisydeq.specs.training import TrainSpec

#: forward_logits(net, x, noise, generator) -> (logits, Jacobian term or None)
Forward = Callable[..., tuple[Tensor, Tensor | None]]
#: TRADES' initial perturbation scale (Zhang et al. 2019: 0.001·N(0, I))
TRADES_INIT = 1e-3


def check_inputs(task: Any, where: str = "train.adversarial") -> None:
    """One line unless the task is classification with inputs in [0, 1] (the ε-ball lives
    there)."""
    if getattr(task, "kind", "classification") != "classification":
        raise NoisyDEQError(f"{where}: adversarial training needs a classification task, "
                            f"'{task.name}' is a {task.kind} task")
    lo, hi = float(task.x_train.min()), float(task.x_train.max())
    if lo < 0.0 or hi > 1.0:
        raise NoisyDEQError(f"{where}: the inputs of '{task.name}' lie in [{lo:g}, {hi:g}], "
                            "not [0, 1]")


class Objective:
    """Loss of one training batch (module docstring); ``forward`` is the plain forward of
    the training loop (``noisydeq.train.forward_logits``)."""

    def __init__(self, spec: TrainSpec, model: nn.Module, task: Any, forward: Forward) -> None:
        self.adv: AdversarialSpec | None = spec.adversarial
        self.rs = spec.random_state if is_deq(model) else None  # FFWs skip DEQ settings
        self.plain = forward
        self.task_loss = task.loss  # without an adversary: the task's own loss (MSE or CE)
        if self.rs is not None:
            check_random_state(model)
        #: the inner attack's DEQ gradient (App. C Eq. 55), built once for the run
        self.attack_gradient: GradientSpec | None = None
        if self.adv is not None:
            check_inputs(task)
            self.attack_gradient = GradientSpec(name="phantom", phantom_steps=self.adv.unroll,
                                                phantom_lambda=self.adv.unroll_lambda)

    def forward(self, net: nn.Module, x: Tensor, noise: Noise | None,
                generator: Any) -> tuple[Tensor, Tensor | None]:
        """Logits (of z[i] with random states, else of the model) and Jacobian term."""
        if self.rs is not None:
            logits, jac, _ = random_state_forward(net, x, noise, generator, self.rs)
            return logits, jac
        return self.plain(net, x, noise, generator)

    def attacker(self, net: nn.Module, noise: Noise | None, generator: Any) -> FinalState:
        """The inner attack's differentiable model (App. C Eq. 55 for a DEQ)."""
        if not is_deq(net):
            return FinalState(net, noise)
        assert self.attack_gradient is not None
        return FinalState(net, noise, self.attack_gradient, warm=False, generator=generator)

    def _attack(self, net: nn.Module, x: Tensor, target: Tensor, noise: Noise | None,
                generator: Any, attack_gen: Source, start: Tensor | None,
                scale: float) -> Tensor:
        adv = self.adv
        assert adv is not None
        off = {"jac_reg_active": False} if hasattr(net, "jac_reg_active") else {}
        with temporarily(net, **off):
            return pgd(self.attacker(net, noise, generator), x, target, eps=adv.eps * scale,
                       steps=adv.steps, alpha=adv.step * scale, random_init=adv.random_start
                       and start is None, eot=adv.eot, generator=attack_gen, start=start)

    def scale(self, progress: float) -> float:
        """ε / ε_max after ``progress`` epochs (the linear warm-up), in (0, 1]."""
        if self.adv is None or self.adv.warmup_epochs <= 0:
            return 1.0
        return min(1.0, progress / self.adv.warmup_epochs)

    def __call__(self, net: nn.Module, x: Tensor, y: Tensor, noise: Noise | None,
                 generator: Any, attack_gen: Source, progress: float = math.inf
                 ) -> tuple[Tensor, Tensor, Tensor | None]:
        """(logits of the examples trained on, loss, Jacobian term or None).

        ``generator``: the solver's random thresholds; ``attack_gen``: the attack's random
        starts (a counter-based stream keyed by sample, or a generator); ``progress``:
        epochs done including this batch (for the ε warm-up)."""
        adv = self.adv
        scale = self.scale(progress)
        if adv is None:
            logits, jac = self.forward(net, x, noise, generator)
            return logits, self.task_loss(logits, y), jac
        if adv.method == "pgd":
            x_adv = self._attack(net, x, y, noise, generator, attack_gen, None, scale)
            logits, jac = self.forward(net, x_adv, noise, generator)
            return logits, self.task_loss(logits, y), jac
        logits_c, jac = self.forward(net, x, noise, generator)
        target = F.softmax(logits_c.detach(), dim=-1)
        start = TRADES_INIT * draw(attack_gen, "randn", x.shape, x)
        x_adv = self._attack(net, x, target, noise, generator, attack_gen, start, scale)
        off = {"jac_reg_active": False} if hasattr(net, "jac_reg_active") else {}
        with temporarily(net, **off):
            logits_a, _ = self.forward(net, x_adv, noise, generator)
        return logits_a, trades_loss(logits_c, logits_a, y, adv.beta), jac


def trades_loss(logits_clean: Tensor, logits_adv: Tensor, y: Tensor, beta: float) -> Tensor:
    """CE(clean, y) + β · KL(softmax(clean) ‖ softmax(adv)), the KL summed over classes and
    averaged over the batch (Zhang et al. 2019, Eq. 5)."""
    natural = F.cross_entropy(logits_clean, y)
    kl = F.kl_div(F.log_softmax(logits_adv, dim=-1), F.log_softmax(logits_clean, dim=-1),
                  reduction="batchmean", log_target=True)
    return natural + beta * kl
