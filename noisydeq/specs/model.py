"""Model specs: a DEQ, FFW, monotone DEQ or LyaDEQ (paper App. E.1-E.3; Wei & Kolter 2022;
Chu et al. 2024), built by ``noisydeq.models.build_model``."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field, field_validator, model_serializer, model_validator

from noisydeq import limits
from noisydeq.specs.base import StrictModel, choice_of

#: FFW layer forms (``noisydeq.models.ffw``), the default first: ``eq57x`` z⁰ = x̃ with the
#: Eq. 57 injection at every layer, ``eq57`` z⁰ = 0 (W₀ never acts), ``eq32`` z⁰ = x̃ and no
#: injection
FFW_FORMS = ("eq57x", "eq57", "eq32")
FfwForm = choice_of(FFW_FORMS)

MONOTONE_KINDS = ("mondeq", "ffw_relu")


class MonotoneSpec(StrictModel):
    """Options of the certified-robustness kinds ``mondeq`` and ``ffw_relu`` (Wei & Kolter
    2022; ``noisydeq.models.mondeq``), ignored by the other kinds.

    ``param``: the monotone DEQ's weight, ``ibp`` W = D^{-1/2} M D^{-1/2} (Theorem 3.1,
    D = diag((|M| + |M|ᵀ)1 / (2(1 − m))), §4), ``lben`` W = Γ D^{-1/2} M D^{-1/2} Γ⁻¹
    (Theorem 3.3, Γ = diag((γ − 1)/γ · sigmoid(β) + 1/γ) with γ = ``lben_gamma``) or ``mon``
    W = (1 − m) I − AᵀA + B − Bᵀ (Winston & Kolter 2020; not IBP-certifiable in general).
    ``m`` ∈ (0, 1): monotonicity margin, I − W ⪰ m·I. ``splitting``: ``fb`` (forward–backward,
    step ``alpha`` ∈ (0, 1]) or ``pr`` (Peaceman–Rachford, any ``alpha`` > 0; digital only).
    ``batch_norm``: BN after every linear layer but the last (Shi et al. 2021, §4).
    ``ibp_init``: N(0, 2π/fan_in²) weights for the explicit layers (Shi et al. 2021).
    """

    param: Literal["ibp", "lben", "mon"] = "ibp"
    m: float = 0.1
    lben_gamma: float = 3.0
    splitting: Literal["fb", "pr"] = "fb"
    alpha: float = 1.0
    batch_norm: bool = True
    ibp_init: bool = True

    @field_validator("m")
    @classmethod
    def _m(cls, v: float) -> float:
        if not 0.0 < v < 1.0:
            raise ValueError(f"must lie in the open interval (0, 1), got {v:g}")
        return v

    @field_validator("lben_gamma")
    @classmethod
    def _gamma(cls, v: float) -> float:
        if not v > 1.0:
            raise ValueError(f"must be > 1 (the bound on the condition number of Γ), got {v:g}")
        return v

    @model_validator(mode="after")
    def _alpha(self) -> MonotoneSpec:
        hi = 1.0 if self.splitting == "fb" else math.inf
        if not 0.0 < self.alpha <= hi:
            allowed = "(0, 1]" if self.splitting == "fb" else "(0, inf)"
            raise ValueError(f"alpha must lie in {allowed} for splitting '{self.splitting}', "
                             f"got {self.alpha:g}")
        return self


#: LyaDEQ variants (Chu et al. 2024, Table 1): the Eq. 7 DEQ alone, with the Lyapunov module
#: (Eq. 4-6), with the orthogonal final layer, or with both (the LyaDEQ)
LYAPUNOV_VARIANTS = ("plain", "lyapunov", "orthogonal", "both")
LyapunovVariant = choice_of(LYAPUNOV_VARIANTS, "variant")


class LyapunovSpec(StrictModel):
    """A Lyapunov-stable DEQ (``kind = "lyadeq"``, ``noisydeq.models.lyapunov``).

    ``variant`` (:data:`LYAPUNOV_VARIANTS`): ``plain`` (the Eq. 7 DEQ), ``lyapunov`` (+ the
    projected dynamics of Eq. 4 read out at the fixed point), ``orthogonal`` (+ an orthogonal
    final layer), ``both`` (the LyaDEQ). ``c`` > 0: the decay rate of Eq. 4 (V decreases at
    least as fast as e^{-ct} along the projected dynamics). ``d`` > 0: the width of the
    smooth ReLU's quadratic piece (Eq. 8). ``icnn_hidden``: hidden sizes of the input-convex
    network g of Eq. 6 (one entry = the paper's two-layer ICNN); its output is one unit.
    """

    variant: LyapunovVariant = "both"
    c: float = Field(default=1.0, gt=0.0)
    d: float = Field(default=1.0, gt=0.0)
    icnn_hidden: list[int] = Field(default_factory=lambda: [64])

    @field_validator("icnn_hidden")
    @classmethod
    def _icnn_sizes(cls, v: list[int]) -> list[int]:
        if not v or any(isinstance(n, bool) or n < 1 for n in v):
            raise ValueError(
                f"ICNN hidden sizes must be a non-empty list of positive integers, got {v}"
            )
        return v

    @property
    def uses_lyapunov(self) -> bool:
        """The variant reads the fixed point through the projected dynamics (Eq. 4)."""
        return self.variant in ("lyapunov", "both")

    @property
    def uses_orthogonal(self) -> bool:
        """The variant's final layer is orthogonal (Z^T Z = I)."""
        return self.variant in ("orthogonal", "both")


class ModelSpec(StrictModel):
    """A DEQ or FFW model (paper App. E.1-E.3, Tables 1-2 and 5-6); built by
    ``noisydeq.models.build_model``.

    ``width``: units of an FFW layer or of the DEQ cell (channels for ``cell="conv"``).
    ``depth``: FFW layers. For a DEQ with ``matched`` (default), ``depth`` names the FFW it
    is parameter-matched to and the DEQ width becomes ``matched_width(depth, width)``
    (App. E.1: 128, 222, 287, … for depths 1, 3, 5, …); with ``matched = false`` the DEQ has
    exactly ``width`` units. ``input_act``: nonlinearity of the input projection x̃ = act(U x).
    ``ffw_form`` (FFW only, :data:`FFW_FORMS`): ``eq57x`` (default; z⁰ = x̃ and x̃ injected at
    every layer, so every counted hidden matrix acts), ``eq57`` (z⁰ = 0: the first layer's
    matrix never acts) or ``eq32`` (z⁰ = x̃, no injection). Conv only: ``in_shape``
    [C, H, W] (default: one square channel), ``kernel_size`` (odd), ``weight_norm``,
    ``pool`` (head pooling to pool×pool).
    ``init`` (per-position cells ``conv1d``/``residual``): ``default`` (PyTorch's) or
    ``delta_orthogonal`` (hidden convolutions start as an orthogonal centre tap, Xiao et al.
    2018: what lets a deep stack of tanh convolutions without skips or normalisation — the
    prefix-sum FFW — train; :mod:`noisydeq.models.orthinit`).
    ``mondeq`` (monotone ReLU DEQ) and ``ffw_relu`` (explicit ReLU network, its IBP
    baseline) take their options from ``monotone`` (:class:`MonotoneSpec`; None = defaults).
    ``kind = "lyadeq"``: a Lyapunov-stable DEQ of ``width`` units (never width-matched),
    configured by ``lyapunov`` (:class:`LyapunovSpec`, defaults when omitted; MLP only).

    Cells beyond Eq. 57 (App. E.1/E.4, ``noisydeq.models.spatial``/``stack``/``mdeq``; kinds
    ``deq`` and ``ffw`` only): ``conv1d`` (one convolution + tanh per iteration) and
    ``residual`` (two convolutions and a skip, no normalisation) keep the input's layout and
    predict a class per position; ``in_features`` is then the number of input channels and
    ``in_shape`` [C, L] or [C, H, W] picks 1-d or 2-d convolutions (default: 1-d for conv1d,
    2-d for residual). ``mlp_stack``: ``layers`` fully connected tanh layers per cell call.
    ``mdeq``: a multiscale cell of ``scales`` resolutions (``width``, 2·``width``, … channels,
    GroupNorm with ``norm_groups`` groups, weight norm per ``weight_norm``). These cells have
    one FFW form each (their own layer stack, :mod:`noisydeq.models.extra`); ``ffw_form``
    applies to the ``mlp`` and ``conv`` cells.
    """

    kind: Literal["deq", "ffw", "mondeq", "ffw_relu", "lyadeq"] = "deq"
    cell: Literal["mlp", "conv", "conv1d", "residual", "mlp_stack", "mdeq"] = "mlp"
    in_features: int = Field(gt=0, le=2**31)
    out_features: int = Field(gt=0, le=2**31)
    width: int = Field(default=128, gt=0, le=limits.MAX_WIDTH)
    depth: int = Field(default=1, gt=0, le=limits.MAX_DEPTH)
    matched: bool = True
    input_act: Literal["relu", "silu", "identity"] = "relu"
    ffw_form: FfwForm = FFW_FORMS[0]
    in_shape: list[int] | None = None
    kernel_size: int = Field(default=3, gt=0, le=255)
    weight_norm: bool = True
    pool: int = Field(default=4, gt=0, le=4096)
    layers: int = Field(default=3, gt=0, le=limits.MAX_DEPTH)
    scales: int = Field(default=2, ge=1, le=4)
    norm_groups: int = Field(default=4, gt=0, le=limits.MAX_WIDTH)
    monotone: MonotoneSpec | None = None
    lyapunov: LyapunovSpec | None = None
    init: Literal["default", "delta_orthogonal"] = "default"

    @model_validator(mode="before")
    @classmethod
    def _lyapunov_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("kind") == "lyadeq" and data.get("lyapunov") is None:
            data = {**data, "lyapunov": {}}
        return data

    @model_validator(mode="after")
    def _lyapunov_kind(self) -> ModelSpec:
        if self.lyapunov is not None and self.kind != "lyadeq":
            raise ValueError(f"lyapunov: only kind 'lyadeq' takes it, not '{self.kind}'")
        if self.kind == "lyadeq" and self.cell != "mlp":
            raise ValueError("cell: kind 'lyadeq' has the fully connected cell only ('mlp')")
        if self.kind in MONOTONE_KINDS and self.cell not in ("mlp", "conv"):
            raise ValueError(f"cell: kind '{self.kind}' has the cells 'mlp' and 'conv' only, "
                             f"not '{self.cell}'")
        return self

    @field_validator("kernel_size")
    @classmethod
    def _odd_kernel(cls, v: int) -> int:
        if v % 2 == 0:
            raise ValueError(f"must be odd ('same' padding), got {v}")
        return v

    @field_validator("in_shape")
    @classmethod
    def _shape(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (len(v) not in (2, 3) or min(v) <= 0 or max(v) > limits.MAX_WIDTH):
            raise ValueError(f"must be positive integers [C, H, W] (or [C, L]), each ≤ "
                             f"{limits.MAX_WIDTH}, got {v}")
        return v

    @model_validator(mode="after")
    def _cell_fields(self) -> ModelSpec:
        per_position = self.cell in ("conv1d", "residual")
        if self.in_shape is not None and len(self.in_shape) == 2 and not per_position:
            raise ValueError(f"in_shape: cell '{self.cell}' needs [C, H, W], got {self.in_shape}")
        if self.init != "default" and not per_position:
            raise ValueError(f"init: '{self.init}' applies to the per-position cells conv1d "
                             f"and residual, not '{self.cell}'")
        if self.cell == "mdeq" and self.width % self.norm_groups:
            raise ValueError(
                f"width: {self.width} channels cannot be split into norm_groups="
                f"{self.norm_groups} GroupNorm groups; use a multiple of {self.norm_groups}")
        return self

    @model_serializer(mode="wrap")
    def _omit_unused_defaults(self, handler: Any) -> dict[str, Any]:
        # fields added after models were cached: left out at their defaults so the config
        # hash (the model-cache key) of every earlier model spec stays what it was
        data = handler(self)
        for name, default in _LATE_MODEL_FIELDS.items():
            if data.get(name, default) == default:
                data.pop(name, None)
        return data


_LATE_MODEL_FIELDS = {"layers": 3, "scales": 2, "norm_groups": 4, "init": "default"}
