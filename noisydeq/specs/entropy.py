"""The options of test-time input entropy reduction (Yang, Li, Pang & Liu 2023, Algorithm 1,
Eq. 7-8; :mod:`noisydeq.regulation.entropy` runs it), torch-free: the attack grid's
``entropy`` defence is checked before torch loads."""

from __future__ import annotations

from pydantic import field_validator

from noisydeq.specs.base import StrictModel
from noisydeq.specs.optimizer import check_radius


class EntropySpec(StrictModel):
    """Input entropy reduction (Algorithm 1): every ``tf`` solver iterations, ``r`` steps of
    size ``beta`` on the input within ``eps`` of the given input and [0, 1]; ``iters``: the
    number of solver iterations N (None = the solver's ``max_iter``)."""

    beta: float = 2.0 / 255.0
    r: int = 10
    tf: int = 2
    eps: float = 8.0 / 255.0
    iters: int | None = None

    @field_validator("beta")
    @classmethod
    def _beta(cls, v: float) -> float:
        if not v >= 0.0 or v == float("inf"):
            raise ValueError(f"the step β must be a finite number >= 0, got {v:g}")
        return v

    @field_validator("r", "tf", "iters")
    @classmethod
    def _positive(cls, v: int | None, info) -> int | None:
        if v is not None and v < 1:
            name = {"r": "R", "tf": "T_f", "iters": "N"}[info.field_name]
            raise ValueError(f"{name} must be a positive integer, got {v}")
        return v

    @field_validator("eps")
    @classmethod
    def _eps(cls, v: float) -> float:
        return check_radius(v)

    def label(self) -> str:
        return f"β={self.beta:.3g} R={self.r} Tf={self.tf} ε={self.eps:.3g}"
