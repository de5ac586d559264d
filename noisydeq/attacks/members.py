"""The models an attack run evaluates, with what their training says about them.

A model trained with a defence (main paper §4.2, App. E.3: adversarial training, noise on x
or z, the random solver threshold; regulation paper Eq. 10: random intermediate states) is
told apart from its undefended twin by a tag in its id (``deq-d1-w32-s0-t0-x-pgd``), and
one trained with noise at its input or state runs with that noise at inference ("the same
SNR as in training"): :func:`inference_noise`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from noisydeq.specs.noise import NoiseSpec
from noisydeq.swept_model import SweepModel

#: training-noise sites that are adversarial defences (x and z, main paper §4.2)
DEFENCE_SITES = {"input": "x", "state": "z"}


@dataclass
class DefendedModel(SweepModel):
    """A :class:`~noisydeq.sweep.SweepModel` plus its defence ``tag`` and the noise it runs
    with at inference (None: none)."""

    tag: str = ""
    inference_noise: NoiseSpec | None = None

    @property
    def model_id(self) -> str:
        base = super().model_id
        return f"{base}-{self.tag}" if self.tag else base


def _noise(train: dict[str, Any]) -> NoiseSpec | None:
    data = train.get("noise") or {}
    if not data:
        return None
    spec = NoiseSpec.model_validate(data)
    return spec if spec.active else None


def inference_noise(train: dict[str, Any]) -> NoiseSpec | None:
    """The training noise a model keeps at inference: multiplicative noise at x or z."""
    spec = _noise(train)
    if spec is None or spec.site not in DEFENCE_SITES or spec.kind != "multiplicative":
        return None
    return spec


def defence_tag(train: dict[str, Any]) -> str:
    """Short tag of a recorded TrainSpec's defences ('' for none): noise site x/z,
    ``thr`` (random solver threshold), ``rs`` (random intermediate states), the adversarial
    method (``pgd``/``trades``)."""
    parts = []
    spec = _noise(train)
    if spec is not None and spec.site in DEFENCE_SITES:
        parts.append(DEFENCE_SITES[spec.site])
    if (train.get("solver") or {}).get("random_threshold"):
        parts.append("thr")
    if train.get("random_state") is not None:
        parts.append("rs")
    adv = train.get("adversarial")
    if adv:
        parts.append(str(adv.get("method", "pgd")))
    return "-".join(parts)


def defended_model(model: Any, kind: str, depth: int, width: int, params: int, seed: int,
                   train: dict[str, Any]) -> DefendedModel:
    """A :class:`DefendedModel` from a model and its recorded training spec."""
    spec = _noise(train)
    snr = math.inf if spec is None else float(spec.snr_db)
    return DefendedModel(model, kind, depth, width, params, seed, snr, tag=defence_tag(train),
                         inference_noise=inference_noise(train))
