"""Certified robustness by interval bound propagation (Wei & Kolter 2022), also on hardware.

Public API (docs/architecture.md, "Certified robustness"): ``bounds`` (model-level margin
certificates), ``Interval``, ``interval_equilibrium`` (Eq. 3.3 with an a-posteriori
enclosure), ``build_envelope`` / ``Envelope`` (device envelopes), ``pgd_robust``,
``check_certifiable``. Runs, tables and experiments: :mod:`noisydeq.analysis.certified`.
"""

from noisydeq.certify.checks import check_certifiable
from noisydeq.certify.envelope import build_envelope
from noisydeq.certify.envelope_types import Envelope, LayerEnvelope
from noisydeq.certify.fixed_point import interval_equilibrium, interval_margin
from noisydeq.certify.interval import Interval
from noisydeq.certify.pgd import pgd_robust
from noisydeq.certify.propagate import Bounds, bounds

__all__ = [
    "Bounds",
    "Envelope",
    "Interval",
    "LayerEnvelope",
    "bounds",
    "build_envelope",
    "check_certifiable",
    "interval_equilibrium",
    "interval_margin",
    "pgd_robust",
]
