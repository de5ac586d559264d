"""The cell of every member of a family or sweep (:class:`CellSpec`) and the ModelSpec
options each cell reads (:data:`CELL_OPTIONS`)."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError, model_serializer, model_validator

from noisydeq.specs.base import StrictModel, check_choice, choice_of, format_validation_error
from noisydeq.specs.model import ModelSpec

#: the cells of :class:`ModelSpec`, and the ModelSpec options each of them reads
CELL_OPTIONS: dict[str, tuple[str, ...]] = {
    "mlp": (),
    "conv": ("in_shape", "kernel_size", "weight_norm", "pool"),
    "conv1d": ("in_shape", "kernel_size", "weight_norm"),
    "residual": ("in_shape", "kernel_size", "weight_norm"),
    "mlp_stack": ("layers",),
    "mdeq": ("in_shape", "kernel_size", "weight_norm", "pool", "scales", "norm_groups"),
}

CellName = choice_of(tuple(CELL_OPTIONS))


class CellSpec(StrictModel):
    """The cell of every member of a family or sweep: ``name`` (a :class:`ModelSpec`
    ``cell``, :data:`CELL_OPTIONS`) and the ModelSpec options that cell reads (unset: the
    ModelSpec default; an option the cell does not read is refused).

    Written as the name alone (``cell = "conv"``) or as a table (``cell = {name = "conv1d",
    weight_norm = false}``); a cell without options is written back as its name, so a family
    or sweep keeps the identity it had when ``cell`` was a plain name.
    """

    name: CellName = "mlp"
    in_shape: list[int] | None = None
    kernel_size: int | None = None
    weight_norm: bool | None = None
    pool: int | None = None
    layers: int | None = None
    scales: int | None = None
    norm_groups: int | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, data: Any) -> Any:
        if isinstance(data, str):
            return {"name": check_choice(data, tuple(CELL_OPTIONS))}
        if data is not None and not isinstance(data, (dict, CellSpec)):
            raise ValueError(f"must be a cell name ({', '.join(CELL_OPTIONS)}) or a table "
                             f"such as {{name = \"conv\", kernel_size = 5}}, got {data!r}")
        return data

    @model_validator(mode="after")
    def _options(self) -> CellSpec:
        takes = CELL_OPTIONS[self.name]
        for key in self.options():
            if key not in takes:
                reads = f"its options: {', '.join(takes)}" if takes else "it has no options"
                raise ValueError(f"cell '{self.name}' takes no '{key}' ({reads})")
        # the values alone (a width that fits norm_groups; the member's width is checked by
        # check_cell with the family's hidden size)
        width = {"width": self.norm_groups} if self.norm_groups is not None else {}
        try:
            ModelSpec.model_validate({"in_features": 1, "out_features": 1, **width,
                                      **self.fields()})
        except ValidationError as err:
            raise ValueError(format_validation_error(err, ModelSpec)) from None
        return self

    def options(self) -> dict[str, Any]:
        """The options set (ModelSpec field → value)."""
        return {k: v for k, v in self.__dict__.items() if k != "name" and v is not None}

    def fields(self) -> dict[str, Any]:
        """The :class:`ModelSpec` fields of this cell: ``cell`` and the options set."""
        return {"cell": self.name, **self.options()}

    @model_serializer(mode="wrap")
    def _name_only(self, handler: Any) -> Any:
        if not self.options():
            return self.name
        return {k: v for k, v in handler(self).items() if v is not None}


def check_cell(cell: CellSpec, info: Any) -> CellSpec:
    """``cell`` of a family or sweep (a field validator's ``info``: the fields before it):
    one line when a member kind cannot have it (e.g. a ``lyadeq`` with a conv cell) or the
    ``hidden`` size does not fit it (e.g. multiscale channels vs ``norm_groups``)."""
    kinds, hidden = info.data.get("kinds"), info.data.get("hidden")
    if kinds is None or hidden is None:  # reported as their own errors
        return cell
    for kind in kinds:
        try:
            ModelSpec.model_validate({"kind": kind, "in_features": 1, "out_features": 1,
                                      "width": hidden, **cell.fields()})
        except ValidationError as err:
            msg = format_validation_error(err, ModelSpec).removeprefix("ModelSpec: ")
            raise ValueError(msg.removeprefix("cell: ").replace("width: ", "hidden: ", 1)
                             ) from None
    return cell
