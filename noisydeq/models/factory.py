"""Build a DEQ, FFW or LyaDEQ from a :class:`~noisydeq.config.ModelSpec` (App. E.1-E.3)."""

from __future__ import annotations

from typing import Any

from torch import nn

from noisydeq.errors import NoisyDEQError
from noisydeq.models.conv import ConvDEQ, ConvFFW
from noisydeq.models.deq import DEQ
from noisydeq.models.extra import EXTRA_CELLS, build_extra, matched_cell_width
from noisydeq.models.ffw import FFW
from noisydeq.models.matching import matched_width
from noisydeq.specs.base import coerce
from noisydeq.specs.model import MONOTONE_KINDS, ModelSpec
from noisydeq.specs.solver import GradientSpec, JacobianRegSpec, SolverSpec


def as_model_spec(spec: ModelSpec | dict[str, Any]) -> ModelSpec:
    """Accept a :class:`ModelSpec` or a dict (validated strictly, "did you mean" errors)."""
    if spec is None:
        raise NoisyDEQError("model: a ModelSpec or dict is required")
    return coerce(ModelSpec, spec, "model")


def resolved_width(spec: ModelSpec) -> int:
    """The width the model gets: a matched DEQ uses ``matched_width(depth, width)`` (App. E.1).

    For conv cells the match counts k²·c² + c parameters per layer (k·c² + c for 1-d ones);
    cells of several such layers (residual, mlp_stack) match the same way; the multiscale
    cell by an exact parameter count (:func:`noisydeq.models.extra.matched_cell_width`).
    """
    if spec.kind in ("deq", "mondeq") and spec.matched and spec.depth > 1:
        if spec.cell in EXTRA_CELLS:
            return matched_cell_width(spec)
        area = spec.kernel_size**2 if spec.cell == "conv" else 1
        return matched_width(spec.depth, spec.width, kernel_area=area)
    return spec.width


def build_model(
    spec: ModelSpec | dict[str, Any],
    *,
    solver: SolverSpec | None = None,
    gradient: GradientSpec | None = None,
    jac_reg: JacobianRegSpec | None = None,
    test_solver: SolverSpec | None = None,
) -> nn.Module:
    """A fresh (randomly initialised: seed torch first) model for ``spec``.

    DEQ solver defaults: ``paper_solver(train=True)`` in training mode and ``test_solver``
    (default: the same solver) in eval mode. The spec is kept as ``model.spec``.
    """
    spec = as_model_spec(spec)
    width = resolved_width(spec)
    model: nn.Module
    if spec.cell in EXTRA_CELLS:
        model = build_extra(spec, width, solver=solver, gradient=gradient, jac_reg=jac_reg,
                            test_solver=test_solver)
    elif spec.kind in MONOTONE_KINDS:
        model = _build_monotone(spec, width, solver, gradient, jac_reg, test_solver)
    elif spec.kind == "lyadeq":
        from noisydeq.models.lyapunov import LyaDEQ

        if jac_reg is not None:
            raise NoisyDEQError("model.kind: 'lyadeq' takes no jac_reg")
        model = LyaDEQ(spec.in_features, spec.width, spec.out_features, spec.input_act,
                       spec.lyapunov, solver=solver, gradient=gradient, test_solver=test_solver,
                       depth=spec.depth)
    elif spec.kind == "deq":
        common: dict[str, Any] = dict(
            solver=solver, gradient=gradient, jac_reg=jac_reg, test_solver=test_solver,
            depth=spec.depth,
        )
        if spec.cell == "mlp":
            model = DEQ(spec.in_features, width, spec.out_features, spec.input_act, **common)
        else:
            model = ConvDEQ(
                spec.in_features, width, spec.out_features, spec.input_act, **common,
                in_shape=spec.in_shape, kernel_size=spec.kernel_size,
                weight_norm=spec.weight_norm, pool=spec.pool,
            )
    else:
        if solver is not None or gradient is not None or jac_reg is not None:
            raise NoisyDEQError("model.kind: 'ffw' takes no solver, gradient or jac_reg")
        if spec.cell == "mlp":
            model = FFW(spec.in_features, width, spec.depth, spec.out_features, spec.input_act,
                        form=spec.ffw_form)
        else:
            model = ConvFFW(
                spec.in_features, width, spec.depth, spec.out_features, spec.input_act,
                form=spec.ffw_form, in_shape=spec.in_shape, kernel_size=spec.kernel_size,
                weight_norm=spec.weight_norm, pool=spec.pool,
            )
    model.spec = spec
    return model


def _build_monotone(
    spec: ModelSpec, width: int, solver: SolverSpec | None, gradient: GradientSpec | None,
    jac_reg: JacobianRegSpec | None, test_solver: SolverSpec | None,
) -> nn.Module:
    """A ``mondeq`` or ``ffw_relu`` model (:mod:`noisydeq.models.mondeq`, ``relu_ffw``)."""
    from noisydeq.models.mondeq import MonDEQ
    from noisydeq.models.relu_ffw import ReluFFW

    shape = dict(monotone=spec.monotone, conv=spec.cell == "conv", in_shape=spec.in_shape,
                 kernel_size=spec.kernel_size, pool=spec.pool)
    if jac_reg is not None and jac_reg.weight > 0:
        raise NoisyDEQError(f"model.kind: '{spec.kind}' takes no Jacobian regulariser")
    if spec.kind == "ffw_relu":
        if solver is not None or gradient is not None:
            raise NoisyDEQError("model.kind: 'ffw_relu' takes no solver or gradient")
        return ReluFFW(spec.in_features, width, spec.depth, spec.out_features, spec.input_act,
                       **shape)
    return MonDEQ(spec.in_features, width, spec.out_features, spec.input_act, solver, gradient,
                  test_solver=test_solver, depth=spec.depth, **shape)
