"""Make the perturbed inputs of one :class:`AttackSpec` against one estimator.

Gradient attacks follow the estimator (:mod:`noisydeq.attacks.estimators`): ``pgd`` and
``ifgsm`` through our PGD (:mod:`noisydeq.attacks.pgd`, EOT and warm starts), AutoAttack
and its parts through torchattacks (:mod:`noisydeq.attacks.library`). Black-box noise
(:mod:`noisydeq.attacks.blackbox`) never queries the model. Inputs are flat (B, D) in
[0, 1]; ``in_shape`` (C, H, W) is the image shape torchattacks needs. The random starts and
the black-box corruptions draw from a counter-based stream seeded by ``seed`` (a row's
numbers depend on the seed, its row and its draw count only); torchattacks' own draws come
from the global generator, seeded by ``seed`` inside a forked state.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from noisydeq.attacks.blackbox import salt_and_pepper, speckle
from noisydeq.attacks.estimators import AttackModule, query_view
from noisydeq.attacks.library import run_library_attack
from noisydeq.attacks.pgd import ifgsm, pgd
from noisydeq.attacks.spec import AttackSpec
from noisydeq.noise import NoiseStream


def craft(spec: AttackSpec, estimator, model: nn.Module, x: Tensor, y: Tensor, *,
          seed: int, in_shape: tuple[int, ...], n_classes: int,
          box: tuple[float, float] | None = (0.0, 1.0), loss: str = "ce") -> Tensor:
    """Adversarial / corrupted versions of ``x`` (same shape) for ``spec``, clamped to ``box``
    (PGD, I-FGSM, speckle; None: unclamped, a regression task's real inputs); PGD and I-FGSM
    ascend ``loss`` (``"mse"`` for a regression task, :mod:`noisydeq.attacks.pgd`)."""
    gen = NoiseStream.from_seed(seed, x.device)
    if spec.name == "speckle":
        return speckle(x, spec.eps, gen, box)
    if spec.name == "salt-pepper":
        return salt_and_pepper(x, spec.eps, gen)
    reset = getattr(estimator, "reset", None)
    if reset is not None:
        reset()
    if spec.name == "pgd":
        return pgd(estimator, x, y, eps=spec.eps, steps=spec.steps, alpha=spec.alpha,
                   norm=spec.norm, random_init=spec.random_start, restarts=spec.restarts,
                   eot=spec.eot, box=box, generator=gen, on_restart=reset, loss=loss)
    if spec.name == "ifgsm":
        return ifgsm(estimator, x, y, eps=spec.eps, steps=spec.steps, norm=spec.norm,
                     eot=spec.eot, box=box, alpha=spec.alpha, loss=loss)
    module = AttackModule(estimator, model)
    # Square, alone or as AutoAttack's last part, queries the model's own cold forward
    query = query_view(estimator, model) if spec.name in ("square", "aa") else None
    mode = model.training
    try:
        with torch.enable_grad():
            return run_library_attack(module, spec, x, y, in_shape, n_classes, seed, query)
    finally:
        model.train(mode)  # whatever the library did with the module's mode
