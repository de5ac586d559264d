"""What :func:`noisydeq.train.train_model` asks of a run with an adversary, random
intermediate states or the optimiser options of the main paper's Tables 5-6.

:class:`TrainingHooks` bundles, for one run: the held-out validation split and the
checkpoint selection (:mod:`noisydeq.adversarial.selection`), the per-batch loss
(:mod:`noisydeq.adversarial.objective`), Adam with AMSGrad, the per-epoch ``MultiStepLR``
learning rate (:func:`noisydeq.train.epoch_lr`) and gradient-norm clipping
(:class:`~noisydeq.config.OptimizerSpec`). Every random draw of the inner attack comes from
the counter-based stream the training loop hands over, addressed by (seed, epoch, sample),
so an interrupted run resumes to the same weights and a sample's draws do not depend on its
batch; the kept best weights travel in the resume file (:meth:`state`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from noisydeq.adversarial.objective import Forward, Objective
from noisydeq.adversarial.selection import Selector
from noisydeq.errors import NoisyDEQError
from noisydeq.noise import NoiseStream
from noisydeq.specs.training import TrainSpec


def needs_hooks(spec: TrainSpec) -> bool:
    """Whether ``spec`` uses anything beyond plain Adam training."""
    return (spec.adversarial is not None or spec.random_state is not None
            or spec.optimizer is not None)


def check_model(spec: TrainSpec, model: nn.Module, strict: bool = False) -> None:
    """One line when a defence of ``spec`` does not fit ``model`` (before any work).

    The DEQ-only settings (``solver`` with its random threshold, ``random_state``) are
    skipped by an FFW of a family, like the other DEQ settings
    (:func:`noisydeq.train_config.apply_overrides`); ``strict`` (one model asked for by name)
    refuses them instead.
    """
    kind = getattr(model, "kind", None)
    solver = getattr(model, "solver", None)
    if kind != "deq":
        if strict and spec.solver is not None and spec.solver.random_threshold:
            raise NoisyDEQError(f"--random-threshold: the random solver threshold is a "
                                f"defence for DEQs; a {kind} model has no solver")
        if strict and spec.random_state is not None:
            raise NoisyDEQError(f"--random-state: the random-intermediate-state loss (Eq. 10) "
                                f"is a defence for DEQs; a {kind} model has no solver states")
        return
    if spec.random_state is not None:
        from noisydeq.regulation.states import check_random_state

        check_random_state(model)
    if solver is not None and solver.random_threshold:
        test = getattr(model, "test_solver", None)
        if test is None or test.random_threshold:
            raise NoisyDEQError("train.test_solver: a DEQ trained with the random solver "
                                "threshold needs a test solver without it (set test_solver)")


def check_spec(spec: TrainSpec, kind: str) -> None:
    """The checks of :func:`check_model` that need only the spec (a DEQ's training solver
    as ``spec`` sets it): a command runs them before it writes anything."""
    if kind != "deq" or spec.solver is None:
        return
    if spec.random_state is not None:
        from noisydeq.solvers.registry import GRAD_SOLVERS

        if spec.solver.name not in GRAD_SOLVERS:
            raise NoisyDEQError(
                f"--random-state: the exact loss back-propagates through the solver's "
                f"iterations, which needs the training solver to be one of "
                f"{', '.join(GRAD_SOLVERS)}; this DEQ trains with '{spec.solver.name}'"
            )
    if spec.solver.random_threshold and (spec.test_solver is None
                                         or spec.test_solver.random_threshold):
        raise NoisyDEQError("--random-threshold: the DEQ needs a test solver without the "
                            "random threshold (set test_solver)")


class TrainingHooks:
    """The pieces of one training run beyond plain Adam (see module docstring)."""

    def __init__(self, spec: TrainSpec, model: nn.Module, task: Any, forward: Forward) -> None:
        check_model(spec, model)
        self.spec = spec
        self.objective = Objective(spec, model, task, forward)
        self.selector: Selector | None = None
        self.opt_spec = spec.optimizer
        self.n_batches = 1

    # ------------------------------------------------------------------ data
    def split(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """The training part of ``(x, y)``; the last ``val_fraction`` is held out."""
        adv = self.spec.adversarial
        if adv is None or adv.val_fraction == 0:
            self.n_batches = max(1, math.ceil(len(x) / self.spec.batch_size))
            return x, y
        n_val = int(math.ceil(adv.val_fraction * len(x)))
        if n_val >= len(x):
            raise NoisyDEQError(f"train.adversarial.val_fraction: holding out {n_val} of "
                                f"{len(x)} training samples leaves none to train on")
        self.selector = Selector(adv, x[-n_val:], y[-n_val:], self.spec.noise, self.spec.seed)
        self.n_batches = max(1, math.ceil((len(x) - n_val) / self.spec.batch_size))
        return x[:-n_val], y[:-n_val]

    # ------------------------------------------------------------- optimiser
    def optimizer(self, net: nn.Module) -> torch.optim.Optimizer:
        """Adam (AMSGrad where the spec asks), its per-parameter updates batched
        (``foreach``: torch's multi-tensor Adam, the same arithmetic per element as its
        one-tensor-at-a-time loop, which is torch's CPU default — the weights are bit for
        bit the same, ``tests/adversarial/test_training.py``; fewer operations per step)."""
        amsgrad = self.opt_spec is not None and self.opt_spec.amsgrad
        return torch.optim.Adam(net.parameters(), lr=self.spec.lr,
                                weight_decay=self.spec.weight_decay, amsgrad=amsgrad,
                                foreach=True)

    def clip(self, net: nn.Module) -> None:
        if self.opt_spec is not None and self.opt_spec.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(net.parameters(), self.opt_spec.grad_clip)

    # ------------------------------------------------------------------ loop
    def batch(self, net: nn.Module, x: Tensor, y: Tensor, noise: Any, threshold: Any,
              attack: NoiseStream, epoch: int, index: int
              ) -> tuple[Tensor, Tensor, Tensor | None]:
        """(logits, loss, Jacobian term) of batch ``index`` of ``epoch``; ``threshold``
        feeds the solver's random threshold, ``attack`` the inner attack's random draws."""
        progress = epoch + (index + 1) / self.n_batches
        return self.objective(net, x, y, noise, threshold, attack, progress)

    def end_epoch(self, opt: torch.optim.Optimizer, net: nn.Module, epoch: int,
                  record: dict[str, float]) -> dict[str, float]:
        """The epoch's record with its learning rate and, when validating, the validation
        accuracies (the weights kept if best)."""
        record = {**record, "lr": float(opt.param_groups[0]["lr"])}
        if self.selector is None:
            return record
        return self.selector.update(net, epoch, record)

    # ---------------------------------------------------------------- resume
    def state(self) -> dict[str, Tensor]:
        return {} if self.selector is None else self.selector.state()

    def load(self, tensors: dict[str, Tensor], history: list[dict[str, float]]) -> None:
        if self.selector is not None:
            self.selector.load(tensors, history)

    def selected_weights(self) -> dict[str, Tensor] | None:
        """The weights to save when an epoch was selected, else None (the last epoch's:
        the network's own, nothing to copy)."""
        if self.selector is not None and self.selector.best is not None:
            return self.selector.best
        return None

    def extra(self) -> dict[str, Any]:
        """Facts for the saved model's record."""
        if self.selector is None or self.selector.best_epoch is None:
            return {}
        return {"selected_epoch": self.selector.best_epoch}
