"""An experiment file (``experiments/*.toml``): a base sweep plus ``quick``/``full`` variants."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from noisydeq.specs.base import StrictModel, build
from noisydeq.specs.sweep import SweepSpec

#: an experiment name names its run directory: letters, digits, ``.``, ``_``, ``-``
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class ExperimentSpec(StrictModel):
    """An experiment file (``experiments/*.toml``): a base sweep plus ``quick``/``full`` variants.

    ``sweep`` holds the :class:`SweepSpec` fields shared by both variants; ``quick`` and
    ``full`` override some of them. Both variants are validated when the file is loaded.
    ``name`` becomes part of the default run directory, so it is one plain file name.
    """

    name: str

    @field_validator("name")
    @classmethod
    def _plain_name(cls, v: str) -> str:
        if not NAME_PATTERN.match(v) or v in (".", ".."):
            raise ValueError(
                f"{v!r} is not a plain name (letters, digits, '.', '_', '-'; no path "
                "separators; at most 100 characters)"
            )
        return v

    title: str = ""
    figures: list[str] = Field(default_factory=list)
    description: str = ""
    sweep: dict[str, Any] = Field(default_factory=dict)
    quick: dict[str, Any] = Field(default_factory=dict)
    full: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _variants_valid(self) -> ExperimentSpec:
        for variant in ("quick", "full"):
            self.resolve(variant)
        return self

    def resolve(self, variant: Literal["quick", "full"]) -> SweepSpec:
        """The :class:`SweepSpec` of ``variant`` (base ``sweep`` table + its overrides)."""
        overrides = self.quick if variant == "quick" else self.full
        return build(SweepSpec, {**self.sweep, **overrides}, where=f"[{variant}]")
