"""The ground of every spec: a strict pydantic base, one-line validation errors, choices.

:class:`StrictModel` refuses unknown keys (with a "did you mean" for a misspelt one),
booleans where numbers belong and non-finite floats unless a field is :data:`InfFloat`.
:func:`build` / :func:`coerce` turn a pydantic error into one :class:`NoisyDEQError` line;
:func:`check_choice` and :func:`suggest_name` are the one "unknown value; did you mean"
message every spec's name fields share.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Annotated, Any, ClassVar, Literal, TypeVar, Union, get_args, get_origin

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

from noisydeq import limits
from noisydeq.errors import NoisyDEQError, did_you_mean

M = TypeVar("M", bound="StrictModel")
T = TypeVar("T")


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
#: a training seed: 0 … 2^63 − 1, as ``noisydeq sweep --seed`` and ``train --seed`` take
Seed = Annotated[int, Field(ge=0, le=limits.MAX_SEED)]


class StrictModel(BaseModel):
    """Base of every spec: unknown keys are errors, values are validated on assignment.

    Numbers are strict: ``true``/``false`` is not a number, and floats must be finite
    unless a field is declared :data:`InfFloat` (SNRs in dB).
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False,
                              allow_inf_nan=False)

    #: list fields that are a grid or a set (seeds, depths, kinds, radii, ...): a value given
    #: twice is refused (:func:`refuse_repeats`), however the list arrives — a comma option,
    #: ``--set``, an experiment file, the Python API. The grids parsed by
    #: :func:`parse_comma_list` and :func:`~noisydeq.specs.noise.snr_list` are checked there.
    NO_REPEATS: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, /, **data: Any) -> None:
        """Validate ``data``; a bad value is one :class:`NoisyDEQError` line in the
        project's words (``SweepSpec: noise_mode: unknown value 'dynamc'; did you mean
        'dynamic'? …``), as the command line says it, not pydantic's multi-line report."""
        try:
            super().__init__(**data)
        except ValidationError as err:
            raise NoisyDEQError(format_validation_error(err, type(self), type(self).__name__)
                                ) from None

    # pydantic's own marker (as its RootModel's): validation (``model_validate``, a nested
    # spec) does not call this ``__init__``, so its errors stay pydantic's for the caller
    # (:func:`build`) to word with the place and the option that set the key
    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]

    def __setattr__(self, name: str, value: Any) -> None:
        """Assignment is validated (``validate_assignment``); a bad value is one line, as
        in ``__init__``."""
        try:
            super().__setattr__(name, value)
        except ValidationError as err:
            raise NoisyDEQError(format_validation_error(err, type(self), type(self).__name__)
                                ) from None

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_numbers(cls, value: Any, info: Any) -> Any:
        field = cls.model_fields.get(info.field_name)
        if field is not None and _has_bool(value) and _numeric(field.annotation) and not (
                _accepts_bool(field.annotation)):
            raise ValueError(f"expected a number, got a boolean ({str(value).lower()})")
        return value

    @field_validator("*", mode="after")
    @classmethod
    def _no_repeats(cls, value: Any, info: Any) -> Any:
        if info.field_name in cls.NO_REPEATS and isinstance(value, list):
            refuse_repeats(value)
        return value


def shown(value: Any) -> str:
    """A list item as a refusal names it: a number as written short (``0.1``, ``inf``, ``3``),
    text quoted."""
    if isinstance(value, float):
        return f"{value:g}"
    return repr(value) if isinstance(value, str) else str(value)


def refuse_repeats(values: list[T]) -> list[T]:
    """``values`` as given, or the ValueError naming the first value given twice (equal
    values: ``10`` and ``10.0``, an alias and its name once resolved): every grid and set of
    a spec — seeds, depths, kinds, SNR levels, radii, attacks — holds each value once, and a
    repeat is refused in one line (the caller names the option), never computed twice or
    dropped without a word."""
    seen: list[T] = []
    for v in values:
        if v in seen:
            raise ValueError(f"{shown(v)} is given twice (each value once)")
        seen.append(v)
    return values


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
    metadata = list(info.metadata)
    if loc and isinstance(loc[-1], int):  # an item of a list: its own constraints
        for item in get_args(info.annotation):
            for extra in getattr(item, "__metadata__", ()):
                metadata += getattr(extra, "metadata", [extra])
    for m in metadata:
        for attr, sym, side in (("gt", "<", "low"), ("ge", "≤", "low"),
                                ("lt", "<", "high"), ("le", "≤", "high")):
            v = getattr(m, attr, None)
            if v is not None:
                if side == "low":
                    low = f"{_number(v)} {sym} "
                else:
                    high = f" {sym} {_number(v)}"
    finite = "" if _is_int(info.annotation) else "finite, "
    if not (low or high):
        return ""
    return f"allowed: {finite}{low}value{high}"


def _number(v: Any) -> str:
    """A bound as written: an integer in full (``1000000000``, not ``1e+09``), a float by
    ``:g``."""
    return str(v) if isinstance(v, int) else f"{v:g}" if isinstance(v, float) else str(v)


def _is_int(annotation: Any) -> bool:
    return annotation is int or any(_is_int(a) for a in get_args(annotation))


def _error_text(e: Any, model: type[BaseModel], names: dict[str, str] | None = None) -> str:
    """One pydantic error (an item of ``ValidationError.errors()``) in words; ``names`` maps
    a key (or dotted key path) to what the user wrote for it (``n_test`` → ``--inputs``,
    ``ibp.eps`` → ``--ibp-eps``)."""
    loc = tuple(e["loc"])
    parts, names = [str(p) for p in loc], names or {}
    for i in range(len(parts), 0, -1):  # the longest key path ``names`` has
        if ".".join(parts[:i]) in names:
            parts = [names[".".join(parts[:i])], *parts[i:]]
            break
    name = ".".join(parts) or model.__name__
    if e["type"] == "extra_forbidden":
        known = _known_fields(model, loc)
        hint = did_you_mean(loc[-1], known)
        allowed = f" (allowed: {', '.join(known)})" if known and not hint else ""
        return f"unknown key '{name}'{hint}{allowed}"
    msg = e["msg"].removeprefix("Value error, ")
    if "got a boolean" in msg:
        rng = _allowed_range(model, loc)
        msg = f"{msg} ({rng})" if rng else msg
    if e["type"] == "model_type":  # pydantic names the class: say what to write
        msg = "must be a table ({key = value, …})"
    elif e["type"] == "list_type":  # ``seeds = 1``: say how to write the list
        msg = _list_wanted(model, loc, e.get("input"))
    elif msg.startswith("Input should"):  # pydantic's own wording: the project's words
        msg = _in_words(e, model, loc)
    # a model-level check (empty location) carries its own field names: its first, by
    # ``names`` too (``steps_eps: 2 is outside [0, 1]`` → ``--steps-eps: …``)
    if not loc:
        first = re.match(r"(\w+):", msg)
        if first and first.group(1) in names:
            msg = names[first.group(1)] + msg[first.end(1):]
    return f"{name}: {msg}" if loc else msg


#: pydantic's bound errors: the constraint's key in the error's context and its symbol
_BOUNDS = {"greater_than": ("gt", ">"), "greater_than_equal": ("ge", "≥"),
           "less_than": ("lt", "<"), "less_than_equal": ("le", "≤")}
#: what a value of a pydantic type error should have been
_WANTED = {"int": "an integer", "float": "a number", "string": "a string", "bool": "true or false",
           "dict": "a table ({key = value, …})", "list": "a list [value, …]"}


def _shown(value: Any) -> str:
    """``value`` as the user wrote it (TOML's spelling; long ones cut)."""
    text = _toml_scalar(value)
    if text is None:
        text = repr(value)
    return text if len(text) <= 40 else text[:37] + "…"


def _in_words(e: Any, model: type[BaseModel], loc: tuple) -> str:
    """A pydantic message (``Input should be …``) in the project's words: what the value must
    be, the value given and, for a number, the key's allowed range."""
    kind, ctx, got = e["type"], e.get("ctx") or {}, _shown(e.get("input"))
    rng = _allowed_range(model, loc)
    rng = f" ({rng})" if rng else ""
    if kind in _BOUNDS:
        key, sym = _BOUNDS[kind]
        bound = ctx.get(key)
        return f"must be {sym} {_number(bound)}, got {got}{rng}"
    if kind == "finite_number":
        return f"must be a finite number, got {got}{rng}"
    if kind == "literal_error":
        info = _field_info(model, loc)
        allowed = [str(a) for a in _literals(info.annotation)] if info is not None else []
        if allowed:
            return suggest_name("value", str(e.get("input")), tuple(allowed))
        return f"must be {ctx.get('expected', 'one of the allowed values')}, got {got}"
    base = kind.split("_", 1)[0]
    if kind == "int_from_float":
        return f"must be an integer, got {got}{rng}"
    if base in _WANTED and kind.endswith(("_type", "_parsing")):
        return f"must be {_WANTED[base]}, got {got}{rng}"
    return f"{e['msg'].replace('Input should', 'must', 1)}, got {got}"


def _literals(annotation: Any) -> list[Any]:
    """The values of the ``Literal`` inside ``annotation`` (Optional, list), else []."""
    if get_origin(annotation) is Literal:
        return list(get_args(annotation))
    return [v for a in get_args(annotation) for v in _literals(a)]


def _toml_scalar(value: Any) -> str | None:
    """``value`` as TOML writes it, for a string, boolean or number (None otherwise)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ("nan" if value != value
                                                          else "-inf" if value < 0 else "inf")
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a TOML basic string
    return None


def _list_wanted(model: type[BaseModel], loc: tuple, value: Any) -> str:
    """The words for a list-valued key given anything but a list (pydantic said ``Input
    should be a valid list``): one value that fits is shown in its list (``seeds = 1`` →
    ``e.g. seeds = [1]``, as :func:`~noisydeq.specs.family.check_kinds` does for model
    kinds), else the key's default list is the example."""
    key = next((str(p) for p in reversed(loc) if isinstance(p, str)), "")
    info = _field_info(model, loc)
    one = _toml_scalar(value)
    if one is not None and info is not None and _numeric(info.annotation) and isinstance(
            value, (str, bool)):
        one = None  # "x" in a list of numbers: the default shows what to write
    if one is None and info is not None:
        default = info.get_default(call_default_factory=True)
        shown = [_toml_scalar(v) for v in default] if isinstance(default, list) else []
        if shown and None not in shown:
            one = ", ".join(str(v) for v in shown)
    if one is None or not key:
        return f"a list [value, …] (got {value!r})"
    return f"a list, e.g. {key} = [{one}] (got {value!r})"


def format_validation_error(err: ValidationError, model: type[BaseModel], where: str = "",
                            origin: dict[str, str] | None = None,
                            names: dict[str, str] | None = None) -> str:
    """One readable line for a pydantic error, with a "did you mean" for unknown keys and
    the allowed range for a non-finite or boolean number.

    ``origin`` maps a top-level key to the place it was written (``[sweep]``, ``--set``):
    each error is then prefixed by the place of its key (``where`` for the others), so a
    misspelt key in a file's base table is not reported under the variant merged over it.
    ``names``: a key's name as the user wrote it (a command-line option)."""
    groups: dict[str, list[str]] = {}
    for e in err.errors():
        text = _error_text(e, model, names)
        # a model-level check names its key path first (``models.deq.train: lr: ...``)
        path = re.match(r"(\w+)[.:]", text)
        key = str(e["loc"][0]) if e["loc"] else (path.group(1) if path else "")
        place = (origin or {}).get(key, where)
        groups.setdefault(place, []).append(text)
    return "; ".join(f"{place}: {'; '.join(texts)}" if place else "; ".join(texts)
                     for place, texts in groups.items())


def build(model: type[M], data: dict[str, Any] | None = None, where: str = "", *,
          names: dict[str, str] | None = None, **kw: Any) -> M:
    """Validate ``data`` into ``model``; raise :class:`NoisyDEQError` with one readable line
    (a key in ``names`` called by that name: the command-line option that set it)."""
    payload = dict(data or {})
    payload.update(kw)
    try:
        return model.model_validate(payload)
    except ValidationError as err:
        raise NoisyDEQError(format_validation_error(err, model, where, names=names)) from None


def build_layers(model: type[M], layers: list[tuple[str, dict[str, Any]]], where: str, *,
                 names: dict[str, str] | None = None) -> M:
    """Validate the tables of ``layers`` (place, table), each later one's keys over the
    earlier ones', into ``model``; an error names the place its key was written (an
    error of no one key: ``where``) and a key by its ``names`` entry when it has one."""
    payload: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for place, table in layers:
        for key, value in table.items():
            payload[key] = value
            origin[str(key)] = place
    try:
        return model.model_validate(payload)
    except ValidationError as err:
        raise NoisyDEQError(format_validation_error(err, model, where, origin, names)) from None


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


def parse_comma_list(v: Any, item: Callable[[Any], T], empty: str, *,
                     scalars: tuple[type, ...] = (int, float),
                     skip_blank: bool = False) -> list[T]:
    """A set of values given as a list, one bare value (of the ``scalars`` types, never a
    boolean) or a comma string (pieces stripped; blank pieces dropped with
    ``skip_blank``, else passed to ``item``), each turned into its value by ``item`` (which
    raises ValueError with its own rule); sorted. Nothing at all is
    the ValueError ``empty``. One grammar for the depth list of a family and the radii of
    a certification (their element rules are their own); a value given twice is refused
    (:func:`refuse_repeats`)."""
    if isinstance(v, str):
        v = [p.strip() for p in v.split(",")]
        if skip_blank:
            v = [p for p in v if p]
    if isinstance(v, scalars) and not isinstance(v, bool):
        v = [v]
    if not isinstance(v, (list, tuple)) or not v:
        raise ValueError(empty)
    return sorted(refuse_repeats([item(e) for e in v]))


def suggest_name(kind: str, value: str, allowed: tuple[str, ...]) -> str:
    """"unknown KIND 'VALUE'; did you mean …? (allowed: …)": the one message of every name
    field that is not one of its ``allowed`` values."""
    hint = did_you_mean(value, allowed)
    return f"unknown {kind} '{value}'{hint} (allowed: {', '.join(allowed)})"


def check_choice(value: Any, allowed: tuple[str, ...], kind: str = "value") -> str:
    """``value`` if it is one of ``allowed``, else a ValueError with a "did you mean"
    (:func:`suggest_name`; a field validator's error is prefixed with the field name: one
    line)."""
    if isinstance(value, str) and value in allowed:
        return value
    raise ValueError(suggest_name(kind, value, allowed))


def choice_of(allowed: tuple[str, ...], kind: str = "value") -> Any:
    """The type of a name field: a ``str`` that must be one of ``allowed``
    (:func:`check_choice`), e.g. ``snr_scale: SnrScale = "realised"`` with
    ``SnrScale = choice_of(SNR_SCALES)``; ``Name | None`` leaves ``None`` alone."""
    return Annotated[str, AfterValidator(lambda v: check_choice(v, allowed, kind))]
