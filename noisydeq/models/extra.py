"""Build the cells beyond Eq. 57 from a :class:`~noisydeq.config.ModelSpec` (App. E.1, E.4).

``conv1d`` / ``residual`` → :class:`~noisydeq.models.spatial.SpatialDEQ` / ``SpatialFFW``
(a class per position); ``mlp_stack`` → :class:`~noisydeq.models.stack.StackDEQ` /
``StackFFW``; ``mdeq`` → :class:`~noisydeq.models.mdeq.MDEQ` /
:class:`~noisydeq.models.mdeq.MultiscaleFFW`. Parameter matching (App. E.1): a DEQ labelled
with FFW depth n gets the width whose cell holds n times the parameters of one FFW layer of
``width`` — in closed form for cells made of equal k-tap layers (d(d+1)-type counts), by an
exact count for the multiscale cell.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from noisydeq.errors import NoisyDEQError
from noisydeq.models.matching import matched_width
from noisydeq.specs.model import ModelSpec
from noisydeq.specs.solver import GradientSpec, JacobianRegSpec, SolverSpec

EXTRA_CELLS = ("conv1d", "residual", "mlp_stack", "mdeq")
PER_POSITION_CELLS = ("conv1d", "residual")


def spatial_ndim(spec: ModelSpec) -> int:
    """1 (strings) or 2 (images) for a per-position cell: from ``in_shape``, else the cell's
    default (conv1d: 1, residual: 2)."""
    if spec.in_shape is not None:
        return len(spec.in_shape) - 1
    return 1 if spec.cell == "conv1d" else 2


def matched_cell_width(spec: ModelSpec) -> int:
    """The DEQ width matched to ``spec.depth`` FFW layers of ``spec.width`` (App. E.1)."""
    if spec.cell == "mdeq":
        from noisydeq.models.mdeq import matched_multiscale_width

        return matched_multiscale_width(spec.depth, spec.width, spec.scales, spec.kernel_size,
                                        spec.norm_groups, spec.weight_norm)
    area = spec.kernel_size ** spatial_ndim(spec) if spec.cell in PER_POSITION_CELLS else 1
    return matched_width(spec.depth, spec.width, kernel_area=area)


def build_extra(
    spec: ModelSpec, width: int, *, solver: SolverSpec | None = None,
    gradient: GradientSpec | None = None, jac_reg: JacobianRegSpec | None = None,
    test_solver: SolverSpec | None = None,
) -> nn.Module:
    """The DEQ or FFW of ``spec`` (a cell of :data:`EXTRA_CELLS`) with ``width``."""
    deq = spec.kind == "deq"
    if not deq and (solver is not None or gradient is not None or jac_reg is not None):
        raise NoisyDEQError("model.kind: 'ffw' takes no solver, gradient or jac_reg")
    common: dict[str, Any] = dict(solver=solver, gradient=gradient, jac_reg=jac_reg,
                                  test_solver=test_solver, depth=spec.depth) if deq else {}
    if spec.cell in PER_POSITION_CELLS:
        from noisydeq.models.orthinit import apply_init
        from noisydeq.models.spatial import SpatialDEQ, SpatialFFW

        geo = dict(ndim=spatial_ndim(spec), kernel_size=spec.kernel_size,
                   weight_norm=spec.weight_norm)
        if deq:
            return apply_init(SpatialDEQ(spec.cell, spec.in_features, width, spec.out_features,
                                         spec.input_act, **common, **geo), spec.init)
        return apply_init(SpatialFFW(spec.cell, spec.in_features, width, spec.depth,
                                     spec.out_features, spec.input_act, form=spec.ffw_form,
                                     **geo), spec.init)
    if spec.cell == "mlp_stack":
        from noisydeq.models.stack import StackDEQ, StackFFW

        if deq:
            return StackDEQ(spec.in_features, width, spec.out_features, spec.input_act,
                            **common, layers=spec.layers)
        return StackFFW(spec.in_features, width, spec.depth, spec.out_features, spec.input_act,
                        form=spec.ffw_form, layers=spec.layers)
    from noisydeq.models.mdeq import MDEQ, MultiscaleFFW

    geo = dict(in_shape=spec.in_shape, scales=spec.scales, kernel_size=spec.kernel_size,
               norm_groups=spec.norm_groups, weight_norm=spec.weight_norm, pool=spec.pool)
    if deq:
        return MDEQ(spec.in_features, width, spec.out_features, spec.input_act, **common, **geo)
    return MultiscaleFFW(spec.in_features, width, spec.depth, spec.out_features,
                         spec.input_act, form=spec.ffw_form, **geo)


def fit_to_task(fields: dict[str, Any], task: Any) -> dict[str, Any]:
    """``fields`` completed for ``task``: a per-position task (a class per position: prefix
    sums, mazes) needs a per-position cell and passes its input shape; an image task with a
    known shape (e.g. cifar10) passes it to conv/multiscale cells. One line otherwise."""
    cell = fields.get("cell", "mlp")
    per_position = bool(getattr(task, "per_position", False))
    name = getattr(task, "name", "?")
    if per_position and cell not in PER_POSITION_CELLS:
        raise NoisyDEQError(
            f"model.cell: task '{name}' predicts a class per position; use cell "
            f"{' or '.join(repr(c) for c in PER_POSITION_CELLS)} (got '{cell}')")
    if cell in PER_POSITION_CELLS and not per_position:
        raise NoisyDEQError(
            f"model.cell: cell '{cell}' predicts a class per position; task '{name}' has one "
            "label per sample (per-position tasks: prefix_sums, mazes)")
    shape = getattr(task, "in_shape", None)
    out = dict(fields)
    if shape is not None and cell in (*PER_POSITION_CELLS, "conv", "mdeq"):
        out.setdefault("in_shape", list(shape))
    return out
