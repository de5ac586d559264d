"""Specs as TOML: dump, load (strict, one-line errors) and ``key=value`` overrides.

TOML load/dump round-trips exactly (``None`` fields are left out: they are the defaults);
a file is read and written through :mod:`noisydeq.store`.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import tomli_w
from pydantic import BaseModel

from noisydeq.errors import NoisyDEQError
from noisydeq.specs.base import M, build
from noisydeq.store import atomic_write_text, read_text

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]


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
