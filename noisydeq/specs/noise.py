"""Noise specs and the SNR grammar (paper Eq. 3-4 multiplicative, Eq. 8 additive).

SNR ranges (``0:30``, ``0:30:2``, ``0,10,20,inf``) are parsed here so the command line and
every spec share one grammar; :class:`NoiseSpec` says where and how a model is perturbed.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from noisydeq import limits
from noisydeq.errors import NoisyDEQError
from noisydeq.specs.base import InfFloat, StrictModel, choice_of, refuse_repeats

#: SNR scales of multiplicative noise (``noisydeq.noise``): ``realised`` (the realised SNR
#: equals the nominal one at every width) or ``paper`` (Eq. 4 literally per element:
#: realised SNR = nominal − 10·log10(d))
SNR_SCALES = ("realised", "paper")
SnrScale = choice_of(SNR_SCALES)


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


def parse_snr_range(text: str, name: str = "--snr") -> list[float]:
    """Parse an SNR grid in dB.

    ``a:b`` is a to b inclusive in 1 dB steps, ``a:b:s`` uses step s, and a comma list
    (``0,10,20,inf``) is taken as given; forms can be mixed (``0:20:5,inf``).
    The result is sorted; a level given twice (``0:30:5,10``) is refused
    (:func:`~noisydeq.specs.base.refuse_repeats`). An error is one line led by ``name``
    once (the option or field that gave the grid: ``--snr: 10 is given twice``).
    """
    try:
        return _snr_levels(text)
    except (NoisyDEQError, ValueError) as err:
        raise NoisyDEQError(f"{name}: {err}") from None


def _snr_levels(text: str) -> list[float]:
    """:func:`parse_snr_range` without a name: its errors name no option (the caller does,
    as for :func:`~noisydeq.specs.base.refuse_repeats`)."""
    if not isinstance(text, str) or not text.strip():
        raise NoisyDEQError("empty SNR grid (use e.g. 0:30, 0:30:2 or 0,10,20,inf)")
    values: list[float] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            raise NoisyDEQError(f"'{text}' has an empty item")
        if ":" in part:
            fields = part.split(":")
            if len(fields) not in (2, 3):
                raise NoisyDEQError(f"range '{part}': a range is start:stop or start:stop:step")
            start, stop = parse_snr_value(fields[0]), parse_snr_value(fields[1])
            step = parse_snr_value(fields[2]) if len(fields) == 3 else 1.0
            if math.isinf(start) or math.isinf(stop) or math.isinf(step):
                raise NoisyDEQError(f"range '{part}': its ends and step must be finite")
            if step <= 0:
                raise NoisyDEQError(f"range '{part}': step must be positive, got {step:g}")
            if start > stop:
                raise NoisyDEQError(f"range '{part}': start {start:g} is above stop {stop:g}")
            n = int(math.floor((stop - start) / step + 1e-9)) + 1
            if n + len(values) > limits.MAX_SNR_LEVELS:
                raise NoisyDEQError(
                    f"range '{part}': {n} levels; a grid holds at most "
                    f"{limits.MAX_SNR_LEVELS} (use a larger step)"
                )
            values.extend(round(start + i * step, 10) for i in range(n))
        else:
            values.append(parse_snr_value(part))
    if len(values) > limits.MAX_SNR_LEVELS:
        raise NoisyDEQError(
            f"{len(values)} levels; a grid holds at most {limits.MAX_SNR_LEVELS}"
        )
    return sorted(refuse_repeats(values))


def snr_grid_text(levels: list[float]) -> str:
    """The shortest text of the ``--snr`` grammar that :func:`parse_snr_range` reads back to
    ``levels`` (sorted, unique): runs of three or more evenly spaced finite levels as
    ``a:b`` (1 dB steps) or ``a:b:s``, other levels listed, ``inf`` last — ``0:30``, not the
    31 levels."""
    def num(v: float) -> str:
        return "inf" if math.isinf(v) else (str(int(v)) if float(v).is_integer() else repr(v))

    finite = [v for v in levels if not math.isinf(v)]
    parts: list[str] = []
    i = 0
    while i < len(finite):
        j = i + 1
        if j < len(finite):
            step = finite[j] - finite[i]
            while j + 1 < len(finite) and abs(finite[j + 1] - finite[j] - step) <= 1e-9:
                j += 1
        if j - i >= 2:  # three or more levels
            step = round(finite[i + 1] - finite[i], 10)
            tail = "" if step == 1 else f":{num(step)}"
            parts.append(f"{num(finite[i])}:{num(finite[j])}{tail}")
            i = j + 1
        else:
            parts.append(num(finite[i]))
            i += 1
    parts += [num(v) for v in levels if math.isinf(v)]
    text = ",".join(parts)
    try:
        if text and parse_snr_range(text) == sorted(set(levels)):
            return text
    except NoisyDEQError:
        pass
    return ",".join(num(v) for v in levels)


#: the level of an SNR grid that evaluates a device at its own physical knobs (the preset's
#: programming and read noise, no SNR scaling): ``--snr 0:30,native``,
#: ``snr_db = [0, 10, "native"]`` (:class:`noisydeq.specs.sweep.SweepSpec`)
NATIVE = "native"


def split_native(value: Any) -> tuple[Any, bool]:
    """An SNR grid (a ``--snr`` text or a list) without its ``native`` item, and whether it
    held one; the rest is left for :func:`snr_list` (``None`` when ``native`` was all)."""
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",")]
        rest = [p for p in parts if p.lower() != NATIVE]
        if len(rest) == len(parts):
            return value, False
        return (",".join(rest) if rest else None), True
    if isinstance(value, (list, tuple)):
        rest = [v for v in value if not (isinstance(v, str) and v.strip().lower() == NATIVE)]
        if len(rest) == len(value):
            return value, False
        return (rest or None), True
    return value, False


SNRValue = float


def snr_list(value: Any) -> list[float]:
    """An SNR grid from a string (``0:30:2,inf``), one number, or a list of numbers/strings;
    else a ValueError naming no field (a spec's validator: the error names the field, or
    the option that set it, once — ``--snr: 0 is given twice``)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, (str, list, tuple)) or not value:
        raise ValueError("must be a non-empty SNR grid such as '0:30' or [0, 10, inf]")
    try:
        if isinstance(value, str):
            return _snr_levels(value)
        if len(value) > limits.MAX_SNR_LEVELS:
            raise ValueError(f"{len(value)} levels; a grid holds at most "
                             f"{limits.MAX_SNR_LEVELS}")
        return sorted(refuse_repeats([parse_snr_value(v) for v in value]))
    except NoisyDEQError as err:
        raise ValueError(str(err)) from None


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
    snr_scale: SnrScale = "realised"

    @field_validator("snr_db", mode="before")
    @classmethod
    def _parse_snr(cls, v: Any) -> float:
        return parse_snr_value(v)

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
