"""AutoAttack and its parts through torchattacks (Croce & Hein 2020; Andriushchenko et al.
2020 for Square) — a well-kept implementation rather than a re-write.

torchattacks 3.5.1 declares torchvision but its attacks do not import it; it is installed
with ``pip install --no-deps torchattacks==3.5.1`` (the Makefile does), like aihwkit.

* ``aa`` — AutoAttack *standard*: APGD-CE, APGD-T (targeted DLR), FAB-T, Square (5000
  queries), each on the samples the previous ones did not fool (torchattacks' MultiAttack),
  with torchattacks' AutoAttack settings; APGD-CE/APGD-T average their gradients over
  ``eot`` draws of the model's noise (AutoAttack's own EOT parameter).
* ``aa-rand`` — AutoAttack *rand*, for randomised defences: APGD-CE and APGD-DLR with
  EOT over max(20, ``eot``) draws (:data:`~noisydeq.specs.attack.AA_RAND_EOT`).

Every APGD part averages :attr:`AttackSpec.draws` draws, the number the attack table
records in its ``eot`` column; FAB has no EOT (one draw per gradient, recorded 1), Square
no gradient (recorded 0).
* ``apgd-ce``, ``apgd-t``, ``fab`` (multi-targeted), ``square`` alone.

The model handed to torchattacks is an :class:`~noisydeq.attacks.estimators.AttackModule`
(the estimator's logits on image-shaped inputs), so AutoAttack follows the chosen DEQ
gradient estimator.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from noisydeq.attacks.spec import AttackSpec
from noisydeq.errors import NoisyDEQError

VERSION = "3.5.1"
INSTALL_HINT = (
    f"torchattacks is not installed; install it with pip install 'noisydeq[attacks]' (or, "
    f"keeping your torch build: pip install --no-deps torchattacks=={VERSION}; it runs "
    f"without torchvision)"
)


def torchattacks() -> Any:
    """The torchattacks module, or one line saying how to install it."""
    try:
        import torchattacks as ta
    except ImportError:
        raise NoisyDEQError(f"attack: {INSTALL_HINT}") from None
    return ta


def _norm(norm: str) -> str:
    return "Linf" if norm == "linf" else "L2"


def build_attack(module: nn.Module, spec: AttackSpec, n_classes: int, seed: int,
                 query: nn.Module | None = None) -> Any:
    """The torchattacks attack object for ``spec`` on ``module``; Square (alone or in
    ``aa``) queries ``query`` where given (the model's own cold forward,
    :func:`~noisydeq.attacks.estimators.query_view`), not the gradient estimator."""
    query = module if query is None else query
    ta = torchattacks()
    kw = dict(eps=spec.eps, norm=_norm(spec.norm), seed=seed)
    eot = spec.draws  # the APGD parts' EOT: the table's eot column
    if spec.name == "apgd-ce":
        return ta.APGD(module, steps=spec.steps, loss="ce", eot_iter=eot, n_restarts=spec.restarts,
                       **kw)
    if spec.name == "apgd-t":
        return ta.APGDT(module, steps=spec.steps, eot_iter=eot, n_restarts=spec.restarts,
                        n_classes=n_classes, **kw)
    if spec.name == "fab":
        return ta.FAB(module, steps=spec.steps, n_restarts=spec.restarts, multi_targeted=True,
                      n_classes=n_classes, **kw)
    if spec.name == "square":
        return ta.Square(query, n_queries=spec.queries, n_restarts=spec.restarts, **kw)
    if spec.name == "aa":
        square = ta.Square(module, n_queries=spec.queries, n_restarts=1, **kw)
        multi = ta.MultiAttack([
            ta.APGD(module, loss="ce", n_restarts=1, eot_iter=eot, **kw),
            ta.APGDT(module, n_classes=n_classes, n_restarts=1, eot_iter=eot, **kw),
            ta.FAB(module, multi_targeted=True, n_classes=n_classes, n_restarts=1, **kw),
            square,
        ])
        # after MultiAttack's check that its parts share one model (it runs the samples
        # still correct through the first part's): Square only queries, the cold forward
        square.model = query
        return multi
    if spec.name == "aa-rand":
        parts = [
            ta.APGD(module, loss="ce", n_restarts=1, eot_iter=eot, **kw),
            ta.APGD(module, loss="dlr", n_restarts=1, eot_iter=eot, **kw),
        ]
        return ta.MultiAttack(parts)
    raise NoisyDEQError(f"attack '{spec.name}' is not a torchattacks attack")


def run_library_attack(module: nn.Module, spec: AttackSpec, x: Tensor, y: Tensor,
                       in_shape: tuple[int, ...], n_classes: int, seed: int,
                       query: nn.Module | None = None) -> Tensor:
    """Adversarial examples of ``spec`` for flat inputs ``x`` (returned flat); ``query``: what
    Square queries (:func:`build_attack`)."""
    if spec.eps == 0:
        return x.clone()
    images = x.reshape(x.shape[0], *in_shape)
    attack = build_attack(module, spec, n_classes, seed, query)
    with torch.random.fork_rng(devices=[]):  # torchattacks seeds the global generator
        adv = attack(images, y)
    return adv.detach().reshape(x.shape).to(x.dtype)
