"""The device preset loader: TOML presets into the specs of :mod:`noisydeq.specs.device_kinds`.

A preset is a flat TOML file with ``kind`` (``ideal``, ``snr``, ``rram``, ``photonic``),
``name``, ``description`` and the physical parameters of that kind. The canonical presets
are package data in ``noisydeq/presets/devices`` (shipped in the wheel); :func:`load_spec`
takes a preset name (``rram-wan2022``), a bare kind with a default preset (``rram``) or the
path of a user's own TOML file. Torch-free: a command reads its ``--device`` here before its
heavy imports; :mod:`noisydeq.hardware.presets` builds the device from the spec.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from noisydeq.errors import NoisyDEQError, did_you_mean
from noisydeq.specs.device_kinds import DeviceSpec, has_programming_error, spec_from_dict
from noisydeq.specs.toml import parse_toml
from noisydeq.store import read_text

#: a bare device kind names its default preset (``--device rram`` is the README's command)
KIND_PRESETS = {"rram": "rram-wan2022"}


def presets_dir() -> Path:
    """Folder of the shipped presets (package data)."""
    return Path(__file__).resolve().parent.parent / "presets" / "devices"


def preset_names() -> list[str]:
    """Names of the shipped presets, sorted."""
    return sorted(p.stem for p in presets_dir().glob("*.toml"))


def is_preset_file(name_or_path: str | os.PathLike) -> bool:
    """True when ``name_or_path`` names a TOML file (what :func:`load_spec` reads as a
    path), False for a shipped preset's name or a bare kind."""
    text = str(name_or_path)
    return text.endswith(".toml") or Path(text).is_file()


def load_spec(name_or_path: str | os.PathLike) -> DeviceSpec:
    """Spec of a shipped preset (by name) or of a TOML file (by path); also bare kinds."""
    text = str(name_or_path)
    path = Path(text)
    if is_preset_file(text):
        if not path.is_file():
            raise NoisyDEQError(f"device preset file not found: {path}")
        where = str(path)
    else:
        path = presets_dir() / f"{text}.toml"
        if not path.is_file() and text in KIND_PRESETS:  # a bare kind: its default preset
            path = presets_dir() / f"{KIND_PRESETS[text]}.toml"
        where = f"preset '{text}'"
        if not path.is_file():
            names = preset_names()
            hint = did_you_mean(text, [*names, *KIND_PRESETS])
            kinds = "".join(f"; {k} = {v}" for k, v in KIND_PRESETS.items())
            raise NoisyDEQError(
                f"unknown device '{text}'{hint} (presets: {', '.join(names)}{kinds}; "
                "or the path of a .toml preset)"
            )
    data = parse_toml(read_text(path, "device preset"), where)
    data.setdefault("name", path.stem)
    return spec_from_dict(data, where=where)


def preset_content(name_or_path: str | os.PathLike) -> dict[str, Any]:
    """The resolved preset of a device (name or TOML path) as plain data: its content, not
    its name or path, as the identities and cache keys of what ran on it hold it."""
    return json.loads(load_spec(name_or_path).model_dump_json())


def _spec(device: str | os.PathLike | DeviceSpec) -> DeviceSpec:
    return device if isinstance(device, DeviceSpec) else load_spec(device)


def measures_adc_gain(device: str | os.PathLike | DeviceSpec) -> bool:
    """Whether ``device`` (a preset name or path, or its spec) measures an ADC gain on each
    chip: a photonic device with ``adc_gain = "calibrated"``, the gain a training run's
    ``device_adc_gain`` / a sweep's ``train_adc_gain = "epoch"`` holds for an epoch."""
    return getattr(_spec(device), "adc_gain", None) == "calibrated"


def compensates_drift(device: str | os.PathLike | DeviceSpec) -> bool:
    """Whether ``device`` (a preset name or path, or its spec) measures a drift-compensation α
    on each chip: an rram device with ``drift_compensation = true``, the α
    ``device_drift_alpha`` / ``train_drift_alpha = "epoch"`` holds for an epoch."""
    return bool(getattr(_spec(device), "drift_compensation", False))


def programs_noise(device: str | os.PathLike | DeviceSpec) -> bool:
    """Whether ``device`` (a preset name or path, or its spec) programs its chip with an
    error (rram with ``prog_noise_scale > 0``, photonic with ``weight_error_std > 0``): the
    error ``device_programming`` / ``train_programming = "epoch"`` holds for an epoch."""
    return has_programming_error(_spec(device))


class Held(NamedTuple):
    """A per-chip quantity a training run may hold for an epoch: whether a device has it,
    the device that needs (``kind`` … ``with`` ``condition``), what one with it does and
    what one without it lacks, and the sweep's field that asks for it."""

    has: Callable[[str | os.PathLike | DeviceSpec], bool]
    kind: str
    condition: str
    holds: str
    lacks: str
    sweep_field: str

    def need(self, what: str = "device") -> str:
        """``a photonic device with adc_gain = 'calibrated'`` (``what``: the noun)."""
        return f"{self.kind} {what} with {self.condition}"


#: the per-chip quantities a training run may hold for an epoch (``TrainSpec`` field =
#: ``"epoch"``; a sweep's :attr:`Held.sweep_field` = ``"epoch"`` for its training devices)
HELD_QUANTITIES = {
    "device_adc_gain": Held(measures_adc_gain, "a photonic", "adc_gain = 'calibrated'",
                            "measures an ADC gain", "measures no ADC gain", "train_adc_gain"),
    "device_drift_alpha": Held(compensates_drift, "an rram", "drift_compensation",
                               "measures a drift-compensation α",
                               "measures no drift-compensation α", "train_drift_alpha"),
    "device_programming": Held(programs_noise, "an rram or photonic", "programming noise",
                               "has a programming error", "has no programming error",
                               "train_programming"),
}


def check_held(field: str, device: str | os.PathLike | DeviceSpec | list[str], where: str,
               name: str | None = None) -> None:
    """One line (a :class:`NoisyDEQError` starting with ``where``) unless ``device`` (a
    preset name or path, or its spec; ``name`` in the message) has the per-chip quantity
    that ``field`` (a key of :data:`HELD_QUANTITIES`) holds for an epoch. A list: a sweep's
    training devices (preset names or paths), one of which must have it."""
    held = HELD_QUANTITIES[field]
    if isinstance(device, list):
        if not any(held.has(d) for d in device):
            names = ", ".join(dict.fromkeys(device))
            raise NoisyDEQError(f"{where}: only for {held.need('training device')} "
                                f"(none of {names} {held.holds})")
    elif not held.has(device):
        label = name if name is not None else str(device)
        raise NoisyDEQError(f"{where}: only for {held.need()} (device '{label}' {held.lacks})")
