"""An experiment file with ``quick``/``full`` variants: what every kind of such file shares.

Sweep experiments (``noisydeq run``), studies, certify and adversarial-training experiments
are each one TOML file: a plain ``name`` (it names the default run directory under
``runs/``), a ``title``, a ``description``, the paper ``figures`` it reproduces, and the
``quick`` / ``full`` tables that override the base settings. :class:`VariantFile` holds
these fields and checks both variants when the file is loaded; each kind says how a
variant merges (:meth:`VariantFile.resolve`) and may add checks (:meth:`check_variant`).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, model_validator

from noisydeq.specs.base import StrictModel

#: an experiment name names its run directory: letters, digits, ``.``, ``_``, ``-``
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")

Variant = Literal["quick", "full"]
VARIANTS: tuple[Variant, ...] = ("quick", "full")


def plain_name(v: str) -> str:
    """``v`` when it is one plain file name (no path separators, not ``.``/``..``)."""
    if not NAME_PATTERN.match(v) or v in (".", ".."):
        raise ValueError(
            f"{v!r} is not a plain name (letters, digits, '.', '_', '-'; no path "
            "separators; at most 100 characters)"
        )
    return v


#: the ``name`` of an experiment file (part of its default run directory)
ExperimentName = Annotated[str, AfterValidator(plain_name)]


class VariantFile(StrictModel):
    """Base of an experiment file with ``quick``/``full`` variants (module docstring)."""

    name: ExperimentName
    title: str = ""
    description: str = ""
    figures: list[str] = Field(default_factory=list)
    quick: dict[str, Any] = Field(default_factory=dict)
    full: dict[str, Any] = Field(default_factory=dict)

    def overrides(self, variant: Variant) -> dict[str, Any]:
        """The ``quick`` or ``full`` table."""
        return self.quick if variant == "quick" else self.full

    def resolve(self, variant: Variant) -> Any:  # pragma: no cover - every kind overrides
        raise NotImplementedError

    def check_variant(self, variant: Variant) -> None:
        """Refuse a file whose ``variant`` does not resolve (a kind may check more)."""
        self.resolve(variant)

    @model_validator(mode="after")
    def _variants_valid(self) -> VariantFile:
        for variant in VARIANTS:
            self.check_variant(variant)
        return self
