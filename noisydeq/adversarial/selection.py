"""Checkpoint selection by robust accuracy on a validation split (regulation paper App. A:
"the best model weight with the top robust accuracy on the validation set under ready-made
PGD-10 at the final state"; Rice et al. 2020 on robust overfitting).

After every epoch the model — in evaluation mode, with its training noise at the same SNR
(main paper App. E.3) — is attacked on the held-out samples by PGD with its own gradient
(ε and step of the adversarial training, ``val_steps`` steps). Every draw — random start,
noise, device noise — is counter-based, keyed by (seed, validation sample) and the same
every epoch, so epochs are compared on the same attack. A validation sample is robust
when the model is right on it clean *and* attacked (:mod:`noisydeq.attacks.robust`, the
attack tables' rule), both forwards under one noise draw (model noise and device noise
restarted from (seed, "judge", sample)), so at ε = 0 robust equals clean. The epoch of
highest robust accuracy (ties: higher clean accuracy, then the earlier epoch) is the one
kept. Models selected under the earlier rule (attacked input only) are not reused: an
adversarial run's config names the rule (:func:`noisydeq.train_config.run_config`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from noisydeq.attacks.estimators import FinalState
from noisydeq.attacks.pgd import pgd
from noisydeq.attacks.robust import correct, robust_correct
from noisydeq.noise import Noise, NoiseStream, derive_seed
from noisydeq.specs.noise import NoiseSpec
from noisydeq.specs.optimizer import AdversarialSpec

VAL_BATCH = 256
PREFIX = "select/"


class Selector:
    """Validates after each epoch and keeps the best weights (see module docstring)."""

    def __init__(self, adv: AdversarialSpec, x_val: Tensor, y_val: Tensor,
                 noise: NoiseSpec, seed: int) -> None:
        self.adv, self.x, self.y = adv, x_val, y_val
        self.noise_spec = noise
        self.seed = seed
        self.best: dict[str, Tensor] | None = None
        self.best_key: tuple[float, float, int] | None = None

    def _stream(self, rows: Tensor, *what: str) -> NoiseStream:
        return NoiseStream.from_seed(derive_seed(self.seed, "validation", *what),
                                     self.x.device, samples=rows)

    def _noise(self, rows: Tensor, what: str) -> Noise | None:
        if not self.noise_spec.active:
            return None
        return Noise(self.noise_spec, self._stream(rows, what))

    def _restart(self, layers: dict[str, nn.Module], rows: Tensor, what: str) -> None:
        """Every device layer's dynamic noise restarted from (seed, ``what``, its name)."""
        for name, layer in layers.items():
            layer.stream = self._stream(rows, what, name)

    def evaluate(self, net: nn.Module) -> tuple[float, float]:
        """(clean, robust) accuracy of ``net`` on the validation split."""
        from noisydeq import hardware

        was = net.training
        net.eval()
        layers = hardware.device_layers(net)
        saved = {name: layer.stream for name, layer in layers.items()}
        clean = robust = 0
        try:
            for i in range(0, len(self.x), VAL_BATCH):
                xb, yb = self.x[i:i + VAL_BATCH], self.y[i:i + VAL_BATCH]
                rows = torch.arange(i, i + len(xb))
                self._restart(layers, rows, "device")
                x_adv = pgd(FinalState(net, self._noise(rows, "attack"), warm=False), xb, yb,
                            eps=self.adv.eps, steps=self.adv.val_steps, alpha=self.adv.step,
                            generator=self._stream(rows, "start"))
                with torch.no_grad():
                    # clean and attacked forwards under one draw (module docstring)
                    self._restart(layers, rows, "judge")
                    logits_c = net(xb, self._noise(rows, "judge"))
                    self._restart(layers, rows, "judge")
                    logits_a = net(x_adv, self._noise(rows, "judge"))
                ok_c = correct(logits_c, yb)
                clean += int(ok_c.sum())
                robust += int(robust_correct(logits_c, logits_a, yb).sum())
        finally:
            for name, layer in layers.items():
                layer.stream = saved[name]
            net.train(was)
        n = max(len(self.x), 1)
        return clean / n, robust / n

    def update(self, net: nn.Module, epoch: int, record: dict[str, float]) -> dict[str, float]:
        """Validate after ``epoch`` (0-based); keep the weights if best; the record extended."""
        clean, robust = self.evaluate(net)
        key = (robust, clean, -epoch)
        if self.best_key is None or key > self.best_key:
            self.best_key = key
            self.best = {k: v.detach().clone() for k, v in net.state_dict().items()}
        return {**record, "val_clean": clean, "val_robust": robust}

    @property
    def best_epoch(self) -> int | None:
        """1-based epoch of the kept weights."""
        return None if self.best_key is None else 1 - self.best_key[2]

    def state(self) -> dict[str, Tensor]:
        return {} if self.best is None else {PREFIX + k: v for k, v in self.best.items()}

    def load(self, tensors: dict[str, Tensor], history: list[dict[str, float]]) -> None:
        """Restore the kept weights and their rank from a resume file and its history."""
        best = {k[len(PREFIX):]: v for k, v in tensors.items() if k.startswith(PREFIX)}
        keys = [(r["val_robust"], r["val_clean"], -(int(r["epoch"]) - 1)) for r in history
                if "val_robust" in r]
        if best and keys:
            self.best, self.best_key = best, max(keys)
