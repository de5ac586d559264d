"""Regulating a DEQ's dynamics (Yang, Li, Pang & Liu 2023, ICML): prediction entropy
(Eq. 6), test-time input entropy reduction (Algorithm 1, Eq. 7-8), the random-intermediate-
state loss (Eq. 10) and the entropy shift metrics P and ΔH (Eq. 12-13).

Modules: ``entropy`` (Eq. 6-8, Algorithm 1), ``states`` (Eq. 10, 12-13).
"""

from noisydeq.regulation.entropy import (
    EntropyReduced,
    EntropySpec,
    entropy_reduced_solve,
    prediction_entropy,
)
from noisydeq.regulation.states import entropy_shift, random_state_forward

__all__ = [
    "EntropyReduced",
    "EntropySpec",
    "entropy_reduced_solve",
    "entropy_shift",
    "prediction_entropy",
    "random_state_forward",
]
