"""Typed specs of one attack, one DEQ gradient estimator and one defence, with their parsers:
re-exported from the torch-free :mod:`noisydeq.specs.attack` (where they are documented).
"""

from noisydeq.specs.attack import (
    ATTACKS,
    DEFENCES,
    ESTIMATOR_GRIDS,
    ESTIMATORS,
    GRADIENT_ATTACKS,
    LIBRARY_ATTACKS,
    NOISE_ATTACKS,
    NORMS,
    QUERY_ATTACKS,
    AttackSpec,
    DefenceSpec,
    EstimatorSpec,
    check_attack_name,
    check_norm,
    draws,
    expand_estimator,
    parse_defence,
    parse_estimator,
    suggest,
)

__all__ = [
    "ATTACKS",
    "AttackSpec",
    "DEFENCES",
    "DefenceSpec",
    "ESTIMATORS",
    "ESTIMATOR_GRIDS",
    "EstimatorSpec",
    "GRADIENT_ATTACKS",
    "LIBRARY_ATTACKS",
    "NOISE_ATTACKS",
    "NORMS",
    "QUERY_ATTACKS",
    "check_attack_name",
    "check_norm",
    "draws",
    "expand_estimator",
    "parse_defence",
    "parse_estimator",
    "suggest",
]
