"""An experiment file (``experiments/*.toml``): a base sweep plus ``quick``/``full`` variants."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from noisydeq.specs.base import build_layers
from noisydeq.specs.sweep import SweepSpec
from noisydeq.specs.variant_file import NAME_PATTERN, Variant, VariantFile

__all__ = ["NAME_PATTERN", "ExperimentSpec"]


class ExperimentSpec(VariantFile):
    """An experiment file (``experiments/*.toml``): a base sweep plus ``quick``/``full`` variants.

    ``sweep`` holds the :class:`SweepSpec` fields shared by both variants; ``quick`` and
    ``full`` override some of them. Both variants are validated when the file is loaded.
    ``name`` becomes part of the default run directory, so it is one plain file name.
    """

    sweep: dict[str, Any] = Field(default_factory=dict)

    def resolve(self, variant: Variant) -> SweepSpec:
        """The :class:`SweepSpec` of ``variant`` (base ``sweep`` table + its overrides)."""
        return build_layers(SweepSpec, [("[sweep]", self.sweep),
                                        (f"[{variant}]", self.overrides(variant))],
                            where=f"[{variant}]")
