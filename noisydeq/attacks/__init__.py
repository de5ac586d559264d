"""Adversarial attacks on DEQs and FFWs, digital and on simulated hardware.

Modules, one idea each: ``spec`` (typed attack / estimator / defence specs), ``norms``
(ℓ∞/ℓ2 step geometry), ``pgd`` (PGD, I-FGSM, EOT), ``blackbox`` (speckle, salt-and-pepper),
``library`` (AutoAttack and its parts via torchattacks), ``trajectory`` (intermediate
states of a solve), ``estimators`` (DEQ gradient estimators), ``adjoint`` (simultaneous
adjoint), ``defences`` (early/ensemble-state defences, white-box robustness), ``craft``
(one attack against one estimator), ``hardware`` (deployed and transfer attacks), ``grid``
/ ``runner`` (the ``noisydeq attack`` grid, resumable), ``plots``.
"""

from noisydeq.attacks.blackbox import salt_and_pepper, speckle
from noisydeq.attacks.craft import craft
from noisydeq.attacks.defences import defended_correct, select_early_state, white_box
from noisydeq.attacks.estimators import make_estimator
from noisydeq.attacks.pgd import ifgsm, pgd
from noisydeq.attacks.spec import (
    AttackSpec,
    DefenceSpec,
    EstimatorSpec,
    parse_defence,
    parse_estimator,
)
from noisydeq.attacks.trajectory import record_states

__all__ = [
    "AttackSpec",
    "DefenceSpec",
    "EstimatorSpec",
    "craft",
    "defended_correct",
    "ifgsm",
    "make_estimator",
    "parse_defence",
    "parse_estimator",
    "pgd",
    "record_states",
    "salt_and_pepper",
    "select_early_state",
    "speckle",
    "white_box",
]
