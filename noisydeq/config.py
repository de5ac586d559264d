"""Typed, strict configuration: every spec is a pydantic model with ``extra="forbid"``.

A misspelt key is an error that names the field and suggests the closest valid one;
TOML load/dump round-trips exactly. SNR ranges (``0:30``, ``0:30:2``, ``0,10,20,inf``)
are parsed here so the CLI and experiment specs share one grammar.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

import tomli_w
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from noisydeq import limits
from noisydeq.errors import NoisyDEQError
from noisydeq.store import atomic_write_text, read_text

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

M = TypeVar("M", bound="StrictModel")


def _numeric(annotation: Any) -> bool:
    """True when ``annotation`` is int/float, optionally inside Optional, list or Annotated."""
    if annotation in (int, float):
        return True
    origin = get_origin(annotation)
    if origin in (Union, list, tuple, Annotated) or str(origin) == "<class 'types.UnionType'>":
        return any(_numeric(a) for a in get_args(annotation) if a is not type(None))
    return False


def _has_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return True
    return isinstance(value, (list, tuple)) and any(isinstance(v, bool) for v in value)


#: a float field that may be ``inf`` (an SNR in dB: ``inf`` = no noise)
InfFloat = Annotated[float, Field(allow_inf_nan=True)]


class StrictModel(BaseModel):
    """Base of every spec: unknown keys are errors, values are validated on assignment.

    Numbers are strict: ``true``/``false`` is not a number, and floats must be finite
    unless a field is declared :data:`InfFloat` (SNRs in dB).
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False,
                              allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_numbers(cls, value: Any, info: Any) -> Any:
        field = cls.model_fields.get(info.field_name)
        if field is not None and _has_bool(value) and _numeric(field.annotation) and not (
                _accepts_bool(field.annotation)):
            raise ValueError(f"expected a number, got a boolean ({str(value).lower()})")
        return value


def _accepts_bool(annotation: Any) -> bool:
    if annotation is bool:
        return True
    return any(_accepts_bool(a) for a in get_args(annotation))


# ----------------------------------------------------------------------------- errors


def _known_fields(model: type[BaseModel], loc: tuple) -> list[str]:
    """Field names valid at ``loc`` (a pydantic error location) inside ``model``."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int) or current is None:
            continue
        fields = getattr(current, "model_fields", {})
        if part not in fields:
            return []
        current = _spec_of(fields[part].annotation)
    return list(getattr(current, "model_fields", {}) or [])


def _spec_of(ann: Any) -> type[BaseModel] | None:
    """The spec class of a field annotation (``Spec`` or ``Spec | None``), else None."""
    for cand in (ann, *get_args(ann)):
        if isinstance(cand, type) and issubclass(cand, BaseModel):
            return cand
    return None


def _field_info(model: type[BaseModel], loc: tuple) -> Any:
    """The pydantic ``FieldInfo`` at ``loc`` inside ``model`` (None when not found)."""
    current: Any = model
    info = None
    for part in loc:
        if isinstance(part, int):
            continue
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            return info
        info = fields[part]
        current = _spec_of(info.annotation)
    return info


def _allowed_range(model: type[BaseModel], loc: tuple) -> str:
    """``allowed: 1 ≤ value ≤ 24`` from a numeric field's constraints ('' when none)."""
    info = _field_info(model, loc)
    if info is None:
        return ""
    low = high = ""
    for m in info.metadata:
        for attr, sym, side in (("gt", "<", "low"), ("ge", "≤", "low"),
                                ("lt", "<", "high"), ("le", "≤", "high")):
            v = getattr(m, attr, None)
            if v is not None:
                if side == "low":
                    low = f"{v:g} {sym} "
                else:
                    high = f" {sym} {v:g}"
    finite = "" if _is_int(info.annotation) else "finite, "
    if not (low or high):
        return ""
    return f"allowed: {finite}{low}value{high}"


def _is_int(annotation: Any) -> bool:
    return annotation is int or any(_is_int(a) for a in get_args(annotation))


def format_validation_error(err: ValidationError, model: type[BaseModel], where: str = "") -> str:
    """One readable line for a pydantic error, with a "did you mean" for unknown keys and
    the allowed range for a non-finite or boolean number."""
    parts = []
    for e in err.errors():
        loc = tuple(e["loc"])
        name = ".".join(str(p) for p in loc) or model.__name__
        if e["type"] == "extra_forbidden":
            known = _known_fields(model, loc)
            close = difflib.get_close_matches(str(loc[-1]), known, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            allowed = f" (allowed: {', '.join(known)})" if known and not close else ""
            parts.append(f"unknown key '{name}'{hint}{allowed}")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            if e["type"] == "finite_number" or "got a boolean" in msg:
                rng = _allowed_range(model, loc)
                msg = f"{msg} ({rng})" if rng else msg
            if e["type"] == "model_type":  # pydantic names the class: say what to write
                msg = "must be a table ({key = value, …})"
            # a model-level check (empty location) carries its own field names
            parts.append(f"{name}: {msg}" if loc else msg)
    prefix = f"{where}: " if where else ""
    return prefix + "; ".join(parts)


def build(model: type[M], data: dict[str, Any] | None = None, where: str = "", **kw: Any) -> M:
    """Validate ``data`` into ``model``; raise :class:`NoisyDEQError` with one readable line."""
    payload = dict(data or {})
    payload.update(kw)
    try:
        return model.model_validate(payload)
    except ValidationError as err:
        raise NoisyDEQError(format_validation_error(err, model, where)) from None


def coerce(model: type[M], spec: M | dict[str, Any] | None, where: str) -> M:
    """Accept a ``model`` instance, a plain dict (validated strictly, "did you mean" errors)
    or ``None`` (the model's defaults); anything else is one clear error naming ``where``."""
    if spec is None:
        return model()
    if isinstance(spec, model):
        return spec
    if isinstance(spec, dict):
        return build(model, spec, where=where)
    raise NoisyDEQError(
        f"{where}: expected a {model.__name__} or dict, got {type(spec).__name__}"
    )


def check_choice(value: Any, allowed: tuple[str, ...]) -> str:
    """``value`` if it is one of ``allowed``, else a ValueError with a "did you mean" (a
    field validator's error is prefixed with the field name: one line)."""
    if isinstance(value, str) and value in allowed:
        return value
    close = difflib.get_close_matches(str(value), allowed, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    raise ValueError(f"unknown value '{value}'{hint} (allowed: {', '.join(allowed)})")


#: FFW layer forms (``noisydeq.models.ffw``), the default first: ``eq57x`` z⁰ = x̃ with the
#: Eq. 57 injection at every layer, ``eq57`` z⁰ = 0 (W₀ never acts), ``eq32`` z⁰ = x̃ and no
#: injection
FFW_FORMS = ("eq57x", "eq57", "eq32")
#: SNR scales of multiplicative noise (``noisydeq.noise``): ``realised`` (the realised SNR
#: equals the nominal one at every width) or ``paper`` (Eq. 4 literally per element:
#: realised SNR = nominal − 10·log10(d))
SNR_SCALES = ("realised", "paper")


# ------------------------------------------------------------------------------- TOML


def _to_toml_value(value: Any) -> Any:
    if isinstance(value, float) and math.isinf(value):
        return value  # tomli_w writes inf / -inf natively
    if isinstance(value, dict):
        return {k: _to_toml_value(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_to_toml_value(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def dumps_toml(spec: BaseModel) -> str:
    """Serialise a spec to TOML (``None`` fields are omitted; they are the defaults)."""
    return tomli_w.dumps(_to_toml_value(spec.model_dump(mode="python")))


def parse_toml(text: str, where: str = "") -> dict[str, Any]:
    """TOML text as a dict; invalid (or absurdly nested) TOML is one clear error."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise NoisyDEQError(f"{where or 'TOML'}: not valid TOML ({err})") from None
    except RecursionError:
        raise NoisyDEQError(f"{where or 'TOML'}: not valid TOML (nested too deeply)") from None


def loads_toml(model: type[M], text: str, where: str = "") -> M:
    """Parse TOML text into ``model`` (strict)."""
    return build(model, parse_toml(text, where), where=where)


def load_toml(model: type[M], path: str | os.PathLike) -> M:
    """Load a TOML file into ``model``; a missing, binary or non-UTF-8 file is one clear error."""
    return loads_toml(model, read_text(path, "file"), where=str(path))


def dump_toml(spec: BaseModel, path: str | os.PathLike) -> Path:
    """Write a spec to a TOML file atomically."""
    return atomic_write_text(path, dumps_toml(spec))


def parse_assignments(items: tuple[str, ...] | list[str], flag: str = "--set") -> dict[str, Any]:
    """``key=value`` overrides of spec fields (values parsed as TOML, else kept as text)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise NoisyDEQError(f"{flag} '{item}': expected key=value (e.g. epochs=2)")
        key, value = item.split("=", 1)
        try:
            out[key.strip()] = tomllib.loads(f"v = {value}")["v"]
        except (tomllib.TOMLDecodeError, RecursionError):
            out[key.strip()] = value
    return out


# -------------------------------------------------------------------------------- SNR


def parse_snr_value(text: str | float | int) -> float:
    """One SNR in dB: a number, or ``inf`` (no noise)."""
    if isinstance(text, str) and len(text) > 40:
        raise NoisyDEQError(f"SNR value '{text[:20]}…' ({len(text)} characters) is not a "
                            "number of dB or 'inf'")
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
    else:
        s = str(text).strip().lower()
        if s in {"inf", "+inf", "infinity", "none", "∞"}:
            return math.inf
        try:
            value = float(s)
        except ValueError:
            raise NoisyDEQError(
                f"SNR value '{text}' is not a number of dB or 'inf'"
            ) from None
    if math.isnan(value) or value == -math.inf:
        raise NoisyDEQError(f"SNR value '{text}' must be a finite number of dB or 'inf'")
    if math.isinf(value) and not isinstance(text, (int, float)):  # e.g. 1e309 overflowed
        raise NoisyDEQError(f"SNR value '{text}' is too large (write 'inf' for no noise)")
    if math.isfinite(value) and not limits.SNR_MIN_DB <= value <= limits.SNR_MAX_DB:
        raise NoisyDEQError(
            f"SNR value '{text}' dB is outside {limits.SNR_MIN_DB:g}..{limits.SNR_MAX_DB:g} dB "
            "(or inf = no noise)"
        )
    return value


def parse_snr_range(text: str) -> list[float]:
    """Parse an SNR grid in dB.

    ``a:b`` is a to b inclusive in 1 dB steps, ``a:b:s`` uses step s, and a comma list
    (``0,10,20,inf``) is taken as given; forms can be mixed (``0:20:5,inf``).
    The result is sorted and de-duplicated.
    """
    if not isinstance(text, str) or not text.strip():
        raise NoisyDEQError("--snr: empty SNR grid (use e.g. 0:30, 0:30:2 or 0,10,20,inf)")
    values: list[float] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            raise NoisyDEQError(f"--snr '{text}': empty item in the list")
        if ":" in part:
            fields = part.split(":")
            if len(fields) not in (2, 3):
                raise NoisyDEQError(f"--snr '{part}': a range is start:stop or start:stop:step")
            start, stop = parse_snr_value(fields[0]), parse_snr_value(fields[1])
            step = parse_snr_value(fields[2]) if len(fields) == 3 else 1.0
            if math.isinf(start) or math.isinf(stop) or math.isinf(step):
                raise NoisyDEQError(f"--snr '{part}': range ends and step must be finite")
            if step <= 0:
                raise NoisyDEQError(f"--snr '{part}': step must be positive, got {step:g}")
            if start > stop:
                raise NoisyDEQError(f"--snr '{part}': start {start:g} is above stop {stop:g}")
            n = int(math.floor((stop - start) / step + 1e-9)) + 1
            if n + len(values) > limits.MAX_SNR_LEVELS:
                raise NoisyDEQError(
                    f"--snr '{part}': {n} levels; a grid holds at most "
                    f"{limits.MAX_SNR_LEVELS} (use a larger step)"
                )
            values.extend(round(start + i * step, 10) for i in range(n))
        else:
            values.append(parse_snr_value(part))
    if len(values) > limits.MAX_SNR_LEVELS:
        raise NoisyDEQError(
            f"--snr: {len(values)} levels; a grid holds at most {limits.MAX_SNR_LEVELS}"
        )
    return sorted(set(values))


SNRValue = float


class NoiseSpec(StrictModel):
    """Where and how a model is perturbed (paper Eq. 3-4 multiplicative, Eq. 8 additive).

    ``site``: ``input`` (x), ``state`` (z), ``signal`` (pre-activation) or ``none``.
    ``snr_db`` applies to multiplicative noise (``inf`` = no noise); ``eta`` to additive.
    ``snr_scale`` (:data:`SNR_SCALES`): ``realised`` (default) scales the noise so the
    realised per-sample SNR ‖y‖²/‖ε‖² equals ``snr_db`` at every width; ``paper`` applies
    Eq. 4 literally per element (std ‖y‖/√SNR), a realised SNR of snr_db − 10·log10(d).
    """

    site: Literal["none", "input", "state", "signal"] = "none"
    kind: Literal["multiplicative", "additive"] = "multiplicative"
    snr_db: InfFloat = math.inf
    eta: float = Field(default=0.0, ge=0.0, le=1e6)
    snr_scale: str = "realised"

    @field_validator("snr_db", mode="before")
    @classmethod
    def _parse_snr(cls, v: Any) -> float:
        return parse_snr_value(v)

    @field_validator("snr_scale")
    @classmethod
    def _scale(cls, v: Any) -> str:
        return check_choice(v, SNR_SCALES)

    @model_validator(mode="after")
    def _consistent(self) -> NoiseSpec:
        return self

    @property
    def active(self) -> bool:
        """True when this spec injects any noise."""
        if self.site == "none":
            return False
        if self.kind == "multiplicative":
            return not math.isinf(self.snr_db)
        return self.eta > 0.0


# ---------------------------------------------------------------------- solvers / gradients


class SolverSpec(StrictModel):
    """A fixed-point solver and its stop rule (paper App. B, Eq. 7/53-54; App. E.3).

    ``name``: ``unroll`` (damped iteration z ← (1−tau) z + tau f(z)), ``anderson`` (memory
    ``m``, regularisation ``lam``, mixing ``beta``), ``broyden`` (limited memory ``m``,
    default ``max_iter``), ``stochastic`` (Robbins–Monro z ← (1−α_k) z + α_k f(z),
    α_k = alpha0/(k+1)^gamma, returns the mean of the last ``window`` iterates).
    ``stop``: ``abs`` ‖f(z)−z‖, ``rel`` ‖f(z)−z‖/‖f(z)‖, ``mean_rel`` (Eq. 54, relative
    residual of the ``window``-averaged iterate), each per sample against ``tol``.
    ``random_threshold``: each sample's iteration cap is drawn uniformly in 1..max_iter.
    ``diverge_factor``: a sample whose residual exceeds this factor times
    max(initial residual, ‖f(z0)‖, 1) is flagged diverged. ``traces=False`` skips the
    per-iteration residual traces (the stop rule is still evaluated) and, unless the stop
    rule or the solver needs it, the Eq. 54 window the ``mean_rel`` trace is computed from.
    """

    name: Literal["unroll", "anderson", "broyden", "stochastic"] = "anderson"
    max_iter: int = Field(default=30, ge=1, le=limits.MAX_ITER)
    tol: float = Field(default=1e-3, gt=0.0)
    stop: Literal["abs", "rel", "mean_rel"] = "rel"
    window: int = Field(default=5, ge=1, le=limits.MAX_ITER)
    tau: float = Field(default=1.0, gt=0.0, le=1.0)
    m: int | None = Field(default=None, ge=1, le=1000)
    lam: float = Field(default=1e-4, ge=0.0)
    beta: float = Field(default=1.0, gt=0.0, le=1.0)
    alpha0: float = Field(default=0.5, gt=0.0, le=1.0)
    gamma: float = Field(default=0.0, ge=0.0, le=1.0)
    random_threshold: bool = False
    diverge_factor: float = Field(default=1e6, gt=1.0)
    traces: bool = True

    @model_validator(mode="after")
    def _window_fits(self) -> SolverSpec:
        if self.window > self.max_iter:
            raise ValueError(
                f"window ({self.window}) must not exceed max_iter ({self.max_iter})"
            )
        return self

    def memory(self) -> int:
        """History size: ``m`` if set, else 5 for anderson and ``max_iter`` for broyden."""
        if self.m is not None:
            return self.m
        return self.max_iter if self.name == "broyden" else 5


def lyapunov_solver() -> SolverSpec:
    """The LyaDEQ's forward solver: Anderson acceleration (Chu et al. 2024), memory 5, relative
    residual 1e-4 within 40 iterations, no per-iteration traces."""
    return SolverSpec(name="anderson", max_iter=40, tol=1e-4, stop="rel", window=1,
                      traces=False)


def paper_solver(train: bool, noisy: bool = False) -> SolverSpec:
    """The paper's MNIST / 1-D regression solvers (Table 1).

    Train: unrolling, threshold 60, ε = 1e-3 with stop ``rel`` — or ε = 0.05 with
    ``mean_rel`` (Eq. 54) when training with noise. Test: unrolling, 60, ε = 0.05,
    ``mean_rel``. The paper does not print the averaging window. With unrolling the windowed
    residual telescopes to ‖z_k − z_{k−w}‖/(w‖z̄‖), so its noise floor falls as 1/w
    (docs/analysis.md: on an MNIST DEQ, w · floor ≈ 1.1 · rel floor at 10-20 dB and ≈ 1.7 at
    0 dB, where the rel floor is 1.08). Test: w = 40, the smallest window whose floor is
    below 0.05 at 0 dB, the lowest inference SNR of the paper's Fig. 1a-c, and that still fits
    the threshold (measured on a digits family: every sample converges at 0 dB and above).
    Training with noise: w = 10, which lets an untrained width-32 or -128 cell stop at 10 dB
    (≈ 17-27 steps; 20 dB: ≈ 12) without making every training solve take ≥ 40 steps.
    """
    if train and not noisy:
        return SolverSpec(name="unroll", max_iter=60, tol=1e-3, stop="rel")
    return SolverSpec(name="unroll", max_iter=60, tol=0.05, stop="mean_rel",
                      window=10 if train else 40)


def _default_backward_solver() -> SolverSpec:
    return SolverSpec(name="anderson", max_iter=40, tol=1e-6, stop="rel", window=1)


class GradientSpec(StrictModel):
    """How the backward pass of a DEQ is made (separate from the forward solver).

    ``ift``: implicit function theorem, the linear fixed point g = J_fᵀ g + ∂L/∂z* solved
    with ``backward_solver``; ``phantom``: ``phantom_steps`` damped steps
    z ← (1−phantom_lambda) z + phantom_lambda f(z) from z* (paper App. C: 9 and 0.5);
    ``jfb``: one step z = f(z*); ``bptt``: autograd through the forward unroll.
    """

    name: Literal["ift", "phantom", "jfb", "bptt"] = "ift"
    phantom_steps: int = Field(default=9, ge=1, le=limits.MAX_ITER)
    phantom_lambda: float = Field(default=0.5, gt=0.0, le=1.0)
    backward_solver: SolverSpec = Field(default_factory=_default_backward_solver)


class JacobianRegSpec(StrictModel):
    """Jacobian regulariser weight·‖J_f‖²_F/d (Hutchinson, ``n_samples`` probes).

    ``stop_epoch``: the regulariser is switched off from this epoch on (None = never).
    """

    weight: float = Field(default=0.0, ge=0.0)
    stop_epoch: int | None = Field(default=None, ge=0, le=limits.MAX_EPOCHS)
    n_samples: int = Field(default=1, ge=1, le=1000)


# ------------------------------------------------------------------------------- models

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


class LyapunovSpec(StrictModel):
    """A Lyapunov-stable DEQ (``kind = "lyadeq"``, ``noisydeq.models.lyapunov``).

    ``variant`` (:data:`LYAPUNOV_VARIANTS`): ``plain`` (the Eq. 7 DEQ), ``lyapunov`` (+ the
    projected dynamics of Eq. 4 read out at the fixed point), ``orthogonal`` (+ an orthogonal
    final layer), ``both`` (the LyaDEQ). ``c`` > 0: the decay rate of Eq. 4 (V decreases at
    least as fast as e^{-ct} along the projected dynamics). ``d`` > 0: the width of the
    smooth ReLU's quadratic piece (Eq. 8). ``icnn_hidden``: hidden sizes of the input-convex
    network g of Eq. 6 (one entry = the paper's two-layer ICNN); its output is one unit.
    """

    variant: str = "both"
    c: float = Field(default=1.0, gt=0.0)
    d: float = Field(default=1.0, gt=0.0)
    icnn_hidden: list[int] = Field(default_factory=lambda: [64])

    @field_validator("variant")
    @classmethod
    def _variant(cls, v: Any) -> str:
        if v in LYAPUNOV_VARIANTS:
            return v
        close = difflib.get_close_matches(str(v), LYAPUNOV_VARIANTS, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ValueError(
            f"unknown variant '{v}'{hint} (allowed: {', '.join(LYAPUNOV_VARIANTS)})"
        )

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
    ffw_form: str = FFW_FORMS[0]
    in_shape: list[int] | None = None
    kernel_size: int = Field(default=3, gt=0, le=255)
    weight_norm: bool = True
    pool: int = Field(default=4, gt=0, le=4096)
    layers: int = Field(default=3, gt=0, le=limits.MAX_DEPTH)
    scales: int = Field(default=2, ge=1, le=4)
    norm_groups: int = Field(default=4, gt=0, le=limits.MAX_WIDTH)
    monotone: MonotoneSpec | None = None
    lyapunov: LyapunovSpec | None = None

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

    @field_validator("ffw_form")
    @classmethod
    def _form(cls, v: Any) -> str:
        return check_choice(v, FFW_FORMS)

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


_LATE_MODEL_FIELDS = {"layers": 3, "scales": 2, "norm_groups": 4}

#: the cells of :class:`ModelSpec`, and the ModelSpec options each of them reads
CELL_OPTIONS: dict[str, tuple[str, ...]] = {
    "mlp": (),
    "conv": ("in_shape", "kernel_size", "weight_norm", "pool"),
    "conv1d": ("in_shape", "kernel_size", "weight_norm"),
    "residual": ("in_shape", "kernel_size", "weight_norm"),
    "mlp_stack": ("layers",),
    "mdeq": ("in_shape", "kernel_size", "weight_norm", "pool", "scales", "norm_groups"),
}


class CellSpec(StrictModel):
    """The cell of every member of a family or sweep: ``name`` (a :class:`ModelSpec`
    ``cell``, :data:`CELL_OPTIONS`) and the ModelSpec options that cell reads (unset: the
    ModelSpec default; an option the cell does not read is refused).

    Written as the name alone (``cell = "conv"``) or as a table (``cell = {name = "conv1d",
    weight_norm = false}``); a cell without options is written back as its name, so a family
    or sweep keeps the identity it had when ``cell`` was a plain name.
    """

    name: str = "mlp"
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

    @field_validator("name")
    @classmethod
    def _name(cls, v: Any) -> str:
        return check_choice(v, tuple(CELL_OPTIONS))

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


# ----------------------------------------------------------------- sweeps and experiments


def _snr_list(value: Any, field: str) -> list[float]:
    """An SNR grid from a string (``0:30:2,inf``), one number, or a list of numbers/strings."""
    if isinstance(value, str):
        try:
            return parse_snr_range(value)
        except NoisyDEQError as err:
            raise ValueError(str(err).replace("--snr", field)) from None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"{field} must be a non-empty SNR grid such as '0:30' or [0, 10, inf]")
    if len(value) > limits.MAX_SNR_LEVELS:
        raise ValueError(f"{field}: {len(value)} levels; a grid holds at most "
                         f"{limits.MAX_SNR_LEVELS}")
    try:
        return sorted({parse_snr_value(v) for v in value})
    except NoisyDEQError as err:
        raise ValueError(f"{field}: {err}") from None


def check_lyapunov_members(lyapunov: LyapunovSpec | None, kinds: list[str]) -> None:
    """Lyapunov settings only where a ``lyadeq`` member takes them (else a no-op: an error)."""
    if lyapunov is not None and "lyadeq" not in kinds:
        raise ValueError("lyapunov: settings given but 'lyadeq' is not in kinds")


#: a ``train_device`` entry for the digitally trained families of a sweep
DIGITAL_TRAINING = "none"
#: which part of a device's noise a swept SNR sets (noisydeq.hardware.modes)
NOISE_MODES = ("physical", "dynamic", "static", "both")
#: where a sweep calibrates its device layers (noisydeq.hardware.in_network)
CALIBRATIONS = ("network", "clean")


class FamilyChoices(StrictModel):
    """The fields a sweep and a family share beyond sizes: the FFW layer form and the SNR scale.

    ``ffw_form`` (:data:`FFW_FORMS`; ``None`` = the default ``eq57x``) is refused when
    ``kinds`` has no ``ffw`` member; ``snr_scale`` (:data:`SNR_SCALES`) is how model-noise
    SNRs are read (:class:`NoiseSpec`).
    """

    ffw_form: str | None = None
    snr_scale: str = "realised"

    @field_validator("ffw_form")
    @classmethod
    def _form(cls, v: Any) -> str | None:
        return None if v is None else check_choice(v, FFW_FORMS)

    @field_validator("snr_scale")
    @classmethod
    def _scale(cls, v: Any) -> str:
        return check_choice(v, SNR_SCALES)

    @model_validator(mode="after")
    def _form_needs_ffw(self) -> FamilyChoices:
        kinds = list(getattr(self, "kinds", ["ffw"]))
        if self.ffw_form is not None and "ffw" not in kinds:
            raise ValueError(
                f"ffw_form '{self.ffw_form}' is given but kinds {kinds} has no 'ffw' member "
                "(drop ffw_form or add 'ffw' to kinds)"
            )
        return self


class SweepSpec(FamilyChoices):
    """A sweep: trained model families × inference SNR grid × chip instances (issue 4).

    ``noise_site = "device"`` sweeps the SNR of the hardware model (``device`` calibrated to
    each SNR); ``signal`` / ``state`` / ``input`` sweep the paper's multiplicative model noise
    (Eq. 3-4) at that site while the weights run on ``device`` (usually ``ideal``).
    ``noise_mode`` (device noise): which part of the device's noise the swept SNR sets —
    ``physical`` (default: the total SNR; below each layer's native SNR only dynamic noise
    grows, above it both parts shrink together), ``dynamic`` (the dynamic SNR; static noise
    at its physical level), ``static`` (the static SNR; reads at their physical level) or
    ``both`` (the total SNR, one scale on every source); docs/devices.md. ``calibration``:
    ``network`` (default) calibrates every layer on the inputs it sees in the noisy network,
    ``clean`` on the clean activations.
    ``seeds`` and ``train_snr_db`` are grids too: one family is trained per (seed, train SNR).
    ``kinds`` may also hold the certified-robustness kinds ``mondeq`` / ``ffw_relu``, whose
    options are ``monotone`` (:class:`MonotoneSpec`).
    ``ffw_form`` and ``snr_scale`` (:class:`FamilyChoices`): the FFW layer form, and how the
    model-noise SNRs (swept and training) are read — ``realised`` (realised SNR = nominal at
    every width) or ``paper`` (Eq. 4 literally, nominal − 10·log10(width)); model noise only
    (a device calibrates to the realised SNR of its MVMs). ``test_solver``: the DEQs'
    evaluation solver in place of the preset's (e.g. the paper preset's window-40 solver for
    quick-trained models swept down to 0 dB).
    ``lyapunov``: settings of the ``lyadeq`` members (:class:`LyapunovSpec`; needs
    ``"lyadeq"`` in ``kinds``). ``cell``: the members' cell and its options
    (:class:`CellSpec`, e.g. ``"conv"`` or ``{name = "conv1d", weight_norm = false}``; a
    per-position task needs ``conv1d`` or ``residual``).
    """

    task: str = "digits"
    data_dir: str | None = None
    depths: list[int] = Field(default_factory=lambda: [1, 3, 5, 7])
    kinds: list[Literal["deq", "ffw", "mondeq", "ffw_relu", "lyadeq"]] = Field(
        default_factory=lambda: ["deq", "ffw"])
    hidden: int = Field(default=128, ge=1, le=limits.MAX_WIDTH)
    input_act: Literal["relu", "silu", "identity"] = "relu"
    train_snr_db: list[InfFloat] = Field(default_factory=lambda: [math.inf])
    train_site: Literal["signal", "state", "input"] = "signal"
    train_preset: str = "quick"
    epochs: int | None = Field(default=None, ge=0, le=limits.MAX_EPOCHS)
    device: str = "rram"
    noise_site: Literal["device", "signal", "state", "input"] = "device"
    noise_mode: str = "physical"
    calibration: str = "network"
    snr_db: list[InfFloat] = Field(default_factory=lambda: parse_snr_range("0:30"))
    chips: int = Field(default=3, ge=1, le=limits.MAX_CHIPS)
    seeds: list[int] = Field(default_factory=lambda: [0])
    torch_device: str = "cpu"
    max_rows: int = Field(default=4096, ge=1, le=limits.MAX_ROWS)
    max_train_samples: int | None = Field(default=None, ge=1, le=limits.MAX_SAMPLES)
    max_test_samples: int | None = Field(default=None, ge=1, le=limits.MAX_SAMPLES)
    fixed_snr_db: list[InfFloat] = Field(default_factory=lambda: [0.0])
    batched: bool = True
    test_solver: SolverSpec | None = None
    monotone: MonotoneSpec | None = None
    lyapunov: LyapunovSpec | None = None
    cell: CellSpec = Field(default_factory=CellSpec)
    train_device: list[str] = Field(default_factory=list)
    train_device_snr_db: list[InfFloat] = Field(default_factory=list)
    train_noise_mode: str = "physical"
    digital_layers: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _lyapunov_members(self) -> SweepSpec:
        check_lyapunov_members(self.lyapunov, self.kinds)
        return self

    @field_validator("train_device", "digital_layers", mode="before")
    @classmethod
    def _names(cls, v: Any, info: Any) -> list[str]:
        if isinstance(v, str):
            v = [p.strip() for p in v.split(",") if p.strip()]
        if not isinstance(v, (list, tuple)) or not all(isinstance(p, str) and p for p in v):
            raise ValueError(f"{info.field_name} must be a list of names")
        if len(v) > limits.MAX_SEEDS:
            raise ValueError(f"{info.field_name}: {len(v)} entries; at most {limits.MAX_SEEDS}")
        return list(dict.fromkeys(v))

    @field_validator("train_device_snr_db", mode="before")
    @classmethod
    def _train_device_grid(cls, v: Any) -> list[float]:
        return [] if v in ([], (), None, "") else _snr_list(v, "train_device_snr_db")

    @field_validator("train_noise_mode")
    @classmethod
    def _train_mode(cls, v: Any) -> str:
        return check_choice(v, NOISE_MODES)

    @model_validator(mode="after")
    def _train_device_options(self) -> SweepSpec:
        hardware = [d for d in self.train_device if d != DIGITAL_TRAINING]
        if not hardware:
            for name, unset in (("train_device_snr_db", []), ("train_noise_mode", "physical")):
                if getattr(self, name) != unset:
                    raise ValueError(f"{name}: set for a training device, but train_device "
                                     "names none")
        return self

    def training_devices(self) -> list[tuple[str | None, float | None]]:
        """The (training device, its SNR) of each family of a seed and training SNR:
        ``[(None, None)]`` (digital training) unless ``train_device`` names devices —
        then one per device and ``train_device_snr_db`` level (None: the device's native
        SNR), and ``(None, None)`` for an entry ``none``."""
        if not self.train_device:
            return [(None, None)]
        levels: list[float | None] = list(self.train_device_snr_db) or [None]
        out: list[tuple[str | None, float | None]] = []
        for dev in self.train_device:
            if dev == DIGITAL_TRAINING:
                out.append((None, None))
            else:
                out += [(dev, lvl) for lvl in levels]
        return out

    @field_validator("cell")
    @classmethod
    def _cell(cls, v: CellSpec, info: Any) -> CellSpec:
        return check_cell(v, info)

    @model_serializer(mode="wrap")
    def _omit_plain_cell(self, handler: Any) -> dict[str, Any]:
        # added later: the default cell is left out so earlier sweeps keep their identity
        data = handler(self)
        if data.get("cell") == "mlp":
            data.pop("cell")
        # hardware-aware training, added later: left out unset (earlier identities stay)
        for key, unset in (("train_device", []), ("train_device_snr_db", []),
                           ("train_noise_mode", "physical"), ("digital_layers", [])):
            if key in data and data[key] == unset:
                data.pop(key)
        return data

    @field_validator("snr_db", "train_snr_db", "fixed_snr_db", mode="before")
    @classmethod
    def _grid(cls, v: Any, info: Any) -> list[float]:
        return _snr_list(v, info.field_name)

    @model_validator(mode="after")
    def _scale_for_model_noise(self) -> SweepSpec:
        if self.snr_scale != "realised" and self.noise_site == "device":
            raise ValueError(
                f"snr_scale '{self.snr_scale}' applies to the paper's model noise; with "
                "noise_site 'device' the device is calibrated to the realised SNR of its "
                "MVMs (use noise_site signal, state or input)"
            )
        return self

    @field_validator("depths", mode="before")
    @classmethod
    def _depths(cls, v: Any) -> list[int]:
        if isinstance(v, str):
            v = [p.strip() for p in v.split(",")]
        if isinstance(v, int) and not isinstance(v, bool):
            v = [v]
        if not isinstance(v, (list, tuple)) or not v:
            raise ValueError("depths must be a non-empty list of positive integers, e.g. 1,3,5,7")
        out = []
        for d in v:
            try:
                ok = not isinstance(d, bool) and float(d) == int(float(d)) and int(float(d)) >= 1
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise ValueError(f"depth '{d}' is not a positive integer (e.g. 1,3,5,7)")
            if int(float(d)) > limits.MAX_DEPTH:
                raise ValueError(f"depth {int(float(d))} is above the largest allowed, "
                                 f"{limits.MAX_DEPTH}")
            out.append(int(float(d)))
        if len(set(out)) > limits.MAX_SEEDS:
            raise ValueError(f"{len(set(out))} depths; at most {limits.MAX_SEEDS}")
        return sorted(set(out))

    @field_validator("seeds", "kinds", "train_snr_db", mode="after")
    @classmethod
    def _non_empty(cls, v: list, info: Any) -> list:
        if not v:
            raise ValueError(f"{info.field_name} must not be empty")
        if len(v) > limits.MAX_SEEDS:
            raise ValueError(f"{info.field_name}: {len(v)} entries; at most {limits.MAX_SEEDS}")
        return list(dict.fromkeys(v))

    @field_validator("noise_mode", "calibration")
    @classmethod
    def _device_choices(cls, v: Any, info: Any) -> str:
        allowed = {"noise_mode": NOISE_MODES, "calibration": CALIBRATIONS}[info.field_name]
        return check_choice(v, allowed)

    @model_validator(mode="after")
    def _mode_needs_device(self) -> SweepSpec:
        if self.noise_site != "device" and self.noise_mode in ("static", "both"):
            raise ValueError(
                f"noise_mode '{self.noise_mode}' sets part of a device's noise "
                f"(noise_site = 'device'); model noise at '{self.noise_site}' is dynamic"
            )
        return self

    @property
    def swept_mode(self) -> str:
        """The noise mode the results report: the device's, or ``dynamic`` for model noise
        (drawn at every evaluation)."""
        return self.noise_mode if self.noise_site == "device" else "dynamic"

    @field_validator("seeds", mode="after")
    @classmethod
    def _seed_range(cls, v: list[int]) -> list[int]:
        for s in v:
            if not 0 <= s <= limits.MAX_SEED:
                raise ValueError(f"seed {s} is outside 0..2^63-1")
        return v

    @field_validator("train_preset")
    @classmethod
    def _preset(cls, v: str) -> str:
        return check_preset(v)


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


# ------------------------------------------------------------------------ training / families

TRAIN_PRESETS = ("quick", "paper", "adversarial", "adversarial-quick")
ADVERSARIAL_METHODS = ("pgd", "trades")


def suggest_name(kind: str, value: str, allowed: tuple[str, ...]) -> str:
    """"unknown KIND 'VALUE'; did you mean …? (allowed: …)" for a validator's ValueError."""
    close = difflib.get_close_matches(str(value), allowed, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return f"unknown {kind} '{value}'{hint} (allowed: {', '.join(allowed)})"


def check_radius(v: float) -> float:
    """An ℓ∞ radius of inputs in [0, 1]: a validator's ValueError outside [0, 1]."""
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"must lie in [0, 1] (inputs lie in [0, 1]), got {v:g}")
    return v


class AdversarialSpec(StrictModel):
    """Adversarial training, min_θ max_{‖Δx‖∞ ≤ ε} L (main paper §4.2, App. C Eq. 56).

    ``method``: ``pgd`` (PGD-AT, Madry et al. 2018: the loss at the PGD example) or
    ``trades`` (Zhang et al. 2019: CE(f(x), y) + ``beta``·KL(f(x) ‖ f(x')), x' maximising
    the KL from x + 0.001·N(0, I)). The inner attack is ``steps`` ℓ∞ PGD steps of size
    ``step`` within ε (the paper: ε = 0.3, step 0.1, 10 steps; TRADES β = 6), each through
    a DEQ's forward solve followed by ``unroll`` damped steps z ← (1−λ) z + λ f(z) with
    λ = ``unroll_lambda`` (App. C Eq. 55: K = 9, λ = 0.5; an FFW is differentiated by
    backprop), ``eot`` gradients averaged over the training noise. ``val_fraction`` of the
    training split (its last samples) is held out: after each epoch the model is attacked
    there by PGD-``val_steps`` (ε, ``step``, its own gradient) and the epoch of highest
    robust accuracy is the one saved (0 = no hold-out, the last epoch is saved).
    ``warmup_epochs``: ε (and the step with it) grows linearly from 0 over this many epochs,
    per batch (0 = the full ε from the start, as the paper; a short schedule learns nothing
    at ε = 0.3 from a random start, see docs/robustness.md).
    """

    method: str = "pgd"
    eps: float = 0.3
    step: float = Field(default=0.1, gt=0.0)
    steps: int = Field(default=10, ge=1)
    beta: float = 6.0
    random_start: bool = True
    unroll: int = Field(default=9, ge=1)
    unroll_lambda: float = Field(default=0.5, gt=0.0, le=1.0)
    eot: int = Field(default=1, ge=1)
    val_fraction: float = Field(default=0.1, ge=0.0, lt=1.0)
    val_steps: int = Field(default=10, ge=1)
    warmup_epochs: float = Field(default=0.0, ge=0.0)

    @field_validator("method")
    @classmethod
    def _method(cls, v: str) -> str:
        name = str(v).strip().lower()
        if name not in ADVERSARIAL_METHODS:
            raise ValueError(suggest_name("adversarial method", v, ADVERSARIAL_METHODS))
        return name

    @field_validator("eps")
    @classmethod
    def _eps(cls, v: float) -> float:
        return check_radius(v)

    @field_validator("beta")
    @classmethod
    def _beta(cls, v: float) -> float:
        if not v >= 0.0 or math.isinf(v):
            raise ValueError(f"the TRADES weight must be a finite number >= 0, got {v:g}")
        return v


class RandomStateSpec(StrictModel):
    """Training loss on a random intermediate state (regulation paper Eq. 10).

    Each sample's loss is L(head(z[i]), y) at the state z[i] after i ~ U[1, N] iterations of
    the DEQ's training solver from z⁰ = 0 (N = ``states``, None = the solver's
    ``max_iter``), differentiated exactly: back-propagation through the i iterations (no
    phantom tail). Needs a differentiable training solver (``unroll`` or ``stochastic``).
    """

    states: int | None = Field(default=None, ge=1)


class OptimizerSpec(StrictModel):
    """Adam's options and the learning-rate schedule (main paper Tables 5-6).

    ``amsgrad``: the AMSGrad variant of Adam. ``milestones``: epochs at which the learning
    rate is multiplied by ``gamma`` (PyTorch's ``MultiStepLR`` stepped per epoch; the paper:
    [45], 0.1). ``grad_clip``: largest ℓ₂ norm of the whole gradient (None = off).
    """

    amsgrad: bool = False
    milestones: list[int] = Field(default_factory=list)
    gamma: float = Field(default=0.1, gt=0.0, le=1.0)
    grad_clip: float | None = Field(default=None, gt=0.0)

    @field_validator("milestones")
    @classmethod
    def _milestones(cls, v: list[int]) -> list[int]:
        if any(m < 1 for m in v):
            raise ValueError(f"milestones must be positive epochs, got {v}")
        return sorted(set(v))

    def lr_factor(self, epoch: int) -> float:
        """The learning-rate multiplier of 0-based ``epoch``: gamma^(milestones passed)."""
        return self.gamma ** sum(1 for m in self.milestones if epoch >= m)

#: DEQ test solver of the ``quick`` preset: unroll, threshold 40, Eq. 54 ``mean_rel`` 0.05 over
#: a window of 20. Eq. 54's noise floor falls as 1/w (docs/analysis.md): with w = 20 it lies
#: below 0.05 from about 5 dB signal SNR up (measured: every sample of a digits family
#: converges at 5 dB and above, and at 0 dB on the rram device), where the previous window of
#: 5 converged nowhere below 15 dB; noise-free it no longer stops after ~10 steps, the
#: early stop that made a regression DEQ's MSE worse at ∞ than at 15 dB.
QUICK_TEST_SOLVER = SolverSpec(name="unroll", max_iter=40, tol=0.05, stop="mean_rel", window=20)


def check_preset(name: str) -> str:
    """``name`` if it is a training preset, else a "did you mean" error (pydantic validators)."""
    if name not in TRAIN_PRESETS:
        close = difflib.get_close_matches(str(name), TRAIN_PRESETS, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ValueError(f"unknown preset '{name}'{hint} (allowed: {', '.join(TRAIN_PRESETS)})")
    return name


class IBPTrainSpec(StrictModel):
    """Interval-bound-propagation training (Gowal et al. 2018; Wei & Kolter 2022, App. B).

    Loss κ·CE(logits) + (1 − κ)·CE(worst-case logits of the elided margin bounds at ε).
    ε is 0 for ``warmup_epochs``, then rises to ``eps`` over ``ramp_epochs`` (per batch: a
    degree-4 monomial for the first quarter, then linear, continuous slope; Xu et al. 2020;
    None = half of the epochs after the warm-up), then stays. κ goes from 1 to ``kappa``
    with ε (κ = 1 − (1 − kappa)·ε/eps; the paper's code trains on the worst-case loss
    alone, κ = 0; Gowal et al. end at 0.5).
    ``m_warmup``: for a monotone DEQ, m = m + (``m_start`` − m)(1 − ε/eps) (App. B, DEQ-7).
    ``grad_clip``: largest ℓ₂ norm of the gradient (App. B: 10; None = off).
    """

    eps: float = Field(gt=0.0)
    warmup_epochs: int = Field(default=1, ge=0, le=limits.MAX_EPOCHS)
    ramp_epochs: int | None = Field(default=None, ge=0, le=limits.MAX_EPOCHS)
    kappa: float = Field(default=0.0, ge=0.0, le=1.0)
    m_warmup: bool = False
    m_start: float = Field(default=0.99, gt=0.0, lt=1.0)
    grad_clip: float | None = Field(default=10.0, gt=0.0, le=1e30)


class TrainSpec(StrictModel):
    """Training of one model (issue 4; paper Tables 1-2, App. E.1-E.2).

    Adam (``lr``, ``weight_decay``) for ``epochs`` passes over the task's training set in
    mini-batches of ``batch_size`` shuffled by a generator seeded from ``seed``.
    ``noise``: training noise injected by the model (the paper trains with signal noise at
    0 dB, 10 dB or none, Eq. 3-4). ``device``: optional hardware model in the loop (preset
    name or TOML path), calibrated to ``device_snr_db`` (None = its native SNR): the model is
    deployed, trained through the device's noisy MVMs and its digital weights are saved;
    ``device_noise_mode`` (None = ``physical``) says which part of its noise that SNR sets,
    ``digital_layers`` names layers kept digital (e.g. ``["proj.U", "head"]``). A fresh
    chip is drawn every epoch (static noise seen as a distribution), read noise at every MVM
    (docs/devices.md, "Hardware-aware training"). DEQ only: ``solver`` (training),
    ``test_solver`` (evaluation), ``gradient`` and ``jac_reg`` replace the model's own when
    set. ``max_train_samples``: use only the first N training samples. ``ibp``:
    interval-bound-propagation training (:class:`IBPTrainSpec`).
    ``lr_schedule``: ``constant``, or ``cosine`` — epoch e of E runs at
    lr·(1 + cos(πe/E))/2 (PyTorch's ``CosineAnnealingLR`` stepped per epoch with T_max = E).
    Presets: :meth:`TrainSpec.preset` (``quick``, ``paper``).
    """

    epochs: int = Field(default=6, ge=0, le=limits.MAX_EPOCHS)
    batch_size: int = Field(default=64, ge=1, le=limits.MAX_BATCH)
    lr: float = Field(default=1e-3, gt=0.0, le=1e3)
    weight_decay: float = Field(default=0.0, ge=0.0, le=1e3)
    seed: int = Field(default=0, ge=-limits.MAX_SEED, le=limits.MAX_SEED)
    noise: NoiseSpec = Field(default_factory=NoiseSpec)
    device: str | None = None
    device_snr_db: InfFloat | None = None
    device_noise_mode: str | None = None
    digital_layers: list[str] | None = None
    solver: SolverSpec | None = None
    test_solver: SolverSpec | None = None
    gradient: GradientSpec | None = None
    jac_reg: JacobianRegSpec | None = None
    max_train_samples: int | None = Field(default=None, ge=1, le=limits.MAX_SAMPLES)
    ibp: IBPTrainSpec | None = None
    lr_schedule: Literal["constant", "cosine"] = "constant"
    adversarial: AdversarialSpec | None = None
    random_state: RandomStateSpec | None = None
    optimizer: OptimizerSpec | None = None

    @field_validator("device_snr_db", mode="before")
    @classmethod
    def _device_snr(cls, v: Any) -> Any:
        return v if v is None else parse_snr_value(v)

    @field_validator("device_noise_mode")
    @classmethod
    def _device_mode(cls, v: Any) -> str | None:
        return None if v is None else check_choice(v, NOISE_MODES)

    @field_validator("digital_layers")
    @classmethod
    def _digital(cls, v: list[str] | None) -> list[str] | None:
        return None if not v else list(dict.fromkeys(v))

    @model_validator(mode="after")
    def _device_options(self) -> TrainSpec:
        if self.device is None:
            for name in ("device_snr_db", "device_noise_mode", "digital_layers"):
                if getattr(self, name) is not None:
                    raise ValueError(f"{name}: set for a training device, but device is unset")
        return self

    @model_validator(mode="after")
    def _ibp_clean(self) -> TrainSpec:
        if self.ibp is not None and self.noise.active:
            raise ValueError("ibp: interval-bound-propagation training runs the clean model; "
                             "set no training noise")
        return self

    @classmethod
    def preset(
        cls,
        name: str = "quick",
        kind: Literal["deq", "ffw", "mondeq", "ffw_relu", "lyadeq"] = "deq",
        noise: NoiseSpec | None = None,
        **overrides: Any,
    ) -> TrainSpec:
        """A named training preset for a model ``kind``, with field ``overrides``.

        ``quick``: 6 epochs, batch 64; DEQ trained with a 30-step unroll (rel 1e-3) and the
        phantom gradient (5 damped steps, λ = 0.5, App. C), evaluated with :data:`QUICK_TEST_SOLVER`
        (unroll 40, ``mean_rel`` 0.05 over a window of 20: converges from about 5-10 dB up) —
        sized for the two-minute default sweep.
        ``paper``: Table 1 (DEQ: 30 epochs, batch 16, Jacobian regulariser weight 1.0 until
        epoch 55, unroll 60 with rel 1e-3 — or mean_rel 0.05 when training with noise —
        tested with unroll 60, mean_rel 0.05 over a window of 40: converges down to about
        0 dB) and Table 2 (FFW: 64 epochs, batch 16). Why these windows: the noise floor of
        Eq. 54 falls as 1/window (``docs/analysis.md``); the measurements behind the choice
        are in ``docs/reproduction.md``.
        ``lyadeq`` (Chu et al. 2024, training configurations): Adam at 1e-3 with a cosine
        annealed learning rate, Anderson acceleration (:func:`lyapunov_solver`) and the
        implicit (IFT) gradient, batch 64 (the paper gives none); ``paper``: 10 epochs (its
        MNIST setting), ``quick``: 6.
        ``adversarial``: Tables 5-6 (64 epochs, batch 32, Adam lr 1e-3 with AMSGrad,
        learning rate ×0.1 from epoch 45; DEQ: Broyden with threshold M = 8 forward, the
        phantom gradient K = 9, λ = 0.5 backward, App. C Eq. 55) with PGD-AT at ε = 0.3,
        step 0.1, 10 steps (:class:`AdversarialSpec`). ``adversarial-quick``: the same for a
        CPU: 8 epochs, learning rate ×0.1 from epoch 6, batch 64, ε ramped up linearly over
        the first 3 epochs. A ``lyadeq`` under them keeps its own solver and gradient.
        """
        if name not in TRAIN_PRESETS:
            close = difflib.get_close_matches(str(name), TRAIN_PRESETS, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise NoisyDEQError(
                f"train preset: unknown preset '{name}'{hint} (allowed: {', '.join(TRAIN_PRESETS)})"
            )
        noise = noise if noise is not None else NoiseSpec()
        data: dict[str, Any] = {"noise": noise, "lr": 1e-3, "weight_decay": 0.0}
        if name.startswith("adversarial"):
            data.update(_adversarial_preset(name, kind))
        elif kind == "lyadeq":
            data.update(epochs=6 if name == "quick" else 10, batch_size=64,
                        lr_schedule="cosine", solver=lyapunov_solver(),
                        test_solver=lyapunov_solver(), gradient=GradientSpec(name="ift"))
        elif name == "quick":
            data.update(epochs=6, batch_size=64)
            if kind == "deq":
                data.update(
                    solver=SolverSpec(name="unroll", max_iter=30, tol=1e-3, stop="rel",
                                      traces=False),
                    test_solver=QUICK_TEST_SOLVER.model_copy(),
                    gradient=GradientSpec(name="phantom", phantom_steps=5, phantom_lambda=0.5),
                )
        else:
            if kind == "deq":
                data.update(
                    epochs=30, batch_size=16,
                    solver=paper_solver(train=True, noisy=noise.active),
                    test_solver=paper_solver(train=False),
                    jac_reg=JacobianRegSpec(weight=1.0, stop_epoch=55),
                )
            else:
                data.update(epochs=64, batch_size=16)
        data.update(overrides)
        return build(cls, data, where=f"train preset '{name}'")


def _adversarial_preset(name: str, kind: str) -> dict[str, Any]:
    """Fields of the ``adversarial`` (Tables 5-6) and ``adversarial-quick`` presets."""
    quick = name == "adversarial-quick"
    data: dict[str, Any] = {
        "epochs": 8 if quick else 64, "batch_size": 64 if quick else 32,
        "optimizer": OptimizerSpec(amsgrad=True, milestones=[6 if quick else 45], gamma=0.1),
        # 8 epochs at the full ε = 0.3 from a random start stay at chance accuracy (an
        # MLP FFW on mnist10k: 11 % after 8 epochs); the quick preset ramps ε over 3
        "adversarial": AdversarialSpec(warmup_epochs=3.0 if quick else 0.0),
    }
    if kind == "deq":
        # Table 5 "Solver (Train/Test) Broyden/Phantom, Threshold 8/9": forward Broyden with
        # M = 8 (the tolerance is not printed: 1e-3 rel), backward phantom K = 9, λ = 0.5
        broyden = SolverSpec(name="broyden", max_iter=8, tol=1e-3, stop="rel", window=1,
                             traces=False)
        data.update(solver=broyden, test_solver=broyden,
                    gradient=GradientSpec(name="phantom", phantom_steps=9, phantom_lambda=0.5))
    return data


#: TrainSpec fields only a DEQ uses (an FFW member's spec leaves them out)
DEQ_ONLY_TRAIN_FIELDS = ("solver", "test_solver", "gradient", "jac_reg", "random_state")


class FamilySpec(FamilyChoices):
    """A depth-matched family: FFW(depth, ``hidden``) and DEQ(matched_width(depth)) per depth.

    Both kinds share the input projection (``input_act``) and output head shapes of the task
    (App. E.1). Each member is trained with ``train_preset`` for its kind plus ``train``
    overrides, with training noise at ``train_site`` / ``train_snr_db`` (``inf`` = none) and
    the optional hardware ``device`` in the loop; ``seed`` seeds weights, data order and noise.
    ``monotone``: options of ``mondeq`` / ``ffw_relu`` members (:class:`MonotoneSpec`).
    ``ffw_form`` (:class:`FamilyChoices`) enters the FFW members' specs only, so a family's
    DEQs do not depend on it; ``snr_scale`` is the SNR scale of the training noise.
    A ``lyadeq`` member (``lyapunov`` settings) has ``hidden`` units at every depth; its FFW
    counterpart is the family's FFW of that depth. ``cell`` (:class:`CellSpec`): ``mlp``
    (Eq. 57), ``conv`` (App. E.3: ``hidden`` channels, 3×3 kernels, weight-normalised, one
    square input channel) or a cell beyond Eq. 57, with its options.
    """

    task: str = "digits"
    data_dir: str | None = None
    depths: list[int] = Field(default_factory=lambda: [1, 3, 5, 7])
    kinds: list[Literal["deq", "ffw", "mondeq", "ffw_relu", "lyadeq"]] = Field(
        default_factory=lambda: ["deq", "ffw"])
    hidden: int = Field(default=128, ge=1, le=limits.MAX_WIDTH)
    cell: CellSpec = Field(default_factory=CellSpec)
    input_act: Literal["relu", "silu", "identity"] = "relu"
    seed: int = Field(default=0, ge=-limits.MAX_SEED, le=limits.MAX_SEED)
    train_preset: str = "quick"
    train: dict[str, Any] = Field(default_factory=dict)
    train_snr_db: InfFloat = math.inf
    train_site: Literal["signal", "state", "input"] = "signal"
    device: str | None = None
    monotone: MonotoneSpec | None = None
    lyapunov: LyapunovSpec | None = None

    @field_validator("depths", mode="before")
    @classmethod
    def _depths(cls, v: Any) -> list[int]:
        return SweepSpec._depths(v)

    @model_validator(mode="after")
    def _lyapunov_members(self) -> FamilySpec:
        check_lyapunov_members(self.lyapunov, self.kinds)
        return self

    @field_validator("cell")
    @classmethod
    def _cell(cls, v: CellSpec, info: Any) -> CellSpec:
        return check_cell(v, info)

    @field_validator("train_snr_db", mode="before")
    @classmethod
    def _snr(cls, v: Any) -> float:
        return parse_snr_value(v)

    @field_validator("train_preset")
    @classmethod
    def _preset(cls, v: str) -> str:
        return check_preset(v)

    def noise(self) -> NoiseSpec:
        """The training noise: multiplicative at ``train_site`` / ``train_snr_db``, or none."""
        if math.isinf(self.train_snr_db):
            return NoiseSpec()
        return NoiseSpec(site=self.train_site, kind="multiplicative", snr_db=self.train_snr_db,
                         snr_scale=self.snr_scale)

    def train_spec(self, kind: Literal["deq", "ffw", "mondeq", "ffw_relu", "lyadeq"]) -> TrainSpec:
        """The resolved :class:`TrainSpec` of a member of ``kind``.

        DEQ-only overrides in ``train`` (:data:`DEQ_ONLY_TRAIN_FIELDS`) are left out of an
        FFW's spec: they do not change its weights, so they do not change its cache key.
        """
        over = {"seed": self.seed, **self.train}
        if kind == "ffw":
            over = {k: v for k, v in over.items() if k not in DEQ_ONLY_TRAIN_FIELDS}
        if self.device is not None:
            over.setdefault("device", self.device)
        return TrainSpec.preset(self.train_preset, kind, self.noise(), **over)
