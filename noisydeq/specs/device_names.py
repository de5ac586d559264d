"""The device preset names ``--device`` accepts, resolved without torch: a shipped preset's
name, a bare kind (``rram`` → its default preset) or the path of a preset TOML file.
:mod:`noisydeq.hardware.presets` loads the spec from the path found here; ``noisydeq sweep``
refuses an unknown device with this module before its heavy imports."""

from __future__ import annotations

import difflib
import os
from pathlib import Path

from noisydeq.errors import NoisyDEQError

#: a bare device kind names its default preset (``--device rram`` is the README's command)
KIND_PRESETS = {"rram": "rram-wan2022"}


def presets_dir() -> Path:
    """Folder of the shipped presets (package data)."""
    return Path(__file__).resolve().parent.parent / "presets" / "devices"


def preset_names() -> list[str]:
    """Names of the shipped presets, sorted."""
    return sorted(p.stem for p in presets_dir().glob("*.toml"))


def resolve_preset(name_or_path: str | os.PathLike) -> tuple[Path, str]:
    """(TOML path, how errors name it) of a preset name, bare kind or preset file; an
    unknown name or a missing file raises one line (with the closest name, if any)."""
    text = str(name_or_path)
    path = Path(text)
    if text.endswith(".toml") or path.is_file():
        if not path.is_file():
            raise NoisyDEQError(f"device preset file not found: {path}")
        return path, str(path)
    path = presets_dir() / f"{text}.toml"
    if not path.is_file() and text in KIND_PRESETS:  # a bare kind: its default preset
        path = presets_dir() / f"{KIND_PRESETS[text]}.toml"
    if not path.is_file():
        names = preset_names()
        close = difflib.get_close_matches(text, [*names, *KIND_PRESETS], n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise NoisyDEQError(
            f"unknown device '{text}'{hint} (presets: {', '.join(names)}; "
            "or the path of a .toml preset)"
        )
    return path, f"preset '{text}'"
