"""The device preset loader: TOML presets into the specs of :mod:`noisydeq.hardware.specs`.

A preset is a flat TOML file with ``kind`` (``ideal``, ``snr``, ``rram``, ``photonic``),
``name``, ``description`` and the physical parameters of that kind. The canonical presets
are package data in ``noisydeq/presets/devices`` (shipped in the wheel);
:func:`get_device` takes a preset name (``rram-wan2022``) or the path of a user's own TOML
file.
"""

from __future__ import annotations

import math
import os

from noisydeq.hardware.specs import (
    SPECS,
    T_INFERENCE_VALUES,
    DeviceSpec,
    IdealSpec,
    PhotonicSpec,
    RRAMSpec,
    SNRSpec,
    spec_from_dict,
)
from noisydeq.specs.device_names import KIND_PRESETS, preset_names, presets_dir, resolve_preset
from noisydeq.specs.toml import parse_toml
from noisydeq.store import read_text

#: the specs are re-exported here, where they were defined before hardware/specs.py
__all__ = [
    "KIND_PRESETS", "SPECS", "T_INFERENCE_VALUES", "DeviceSpec", "IdealSpec", "PhotonicSpec",
    "RRAMSpec", "SNRSpec", "device_from_spec", "get_device", "load_spec", "preset_names",
    "presets_dir", "spec_from_dict",
]


def load_spec(name_or_path: str | os.PathLike) -> DeviceSpec:
    """Spec of a shipped preset (by name) or of a TOML file (by path); also bare kinds
    (the name resolved by :func:`noisydeq.specs.device_names.resolve_preset`)."""
    path, where = resolve_preset(name_or_path)
    data = parse_toml(read_text(path, "device preset"), where)
    data.setdefault("name", path.stem)
    return spec_from_dict(data, where=where)


def device_from_spec(spec: DeviceSpec, chip_seed: int = 0):  # -> Device
    """The :class:`~noisydeq.hardware.base.Device` for a validated spec."""
    from noisydeq.hardware.ideal import IdealDevice
    from noisydeq.hardware.photonic import PhotonicDevice
    from noisydeq.hardware.rram import RRAMDevice
    from noisydeq.hardware.snr import SNRDevice

    cls = {"ideal": IdealDevice, "snr": SNRDevice, "rram": RRAMDevice, "photonic": PhotonicDevice}
    return cls[spec.kind](spec, chip_seed=chip_seed)


def get_device(
    name_or_path: str | os.PathLike, *, snr_db: float | None = None, chip: int = 0,
    noise_mode: str = "physical",
):  # -> Device
    """A device from a preset name or TOML path, optionally calibrated and on a chip;
    ``noise_mode``: which part of its noise a target SNR sets (:mod:`noisydeq.hardware.modes`)."""
    device = device_from_spec(load_spec(name_or_path), chip_seed=chip).with_mode(noise_mode)
    if snr_db is not None and not (math.isinf(snr_db) and device.kind == "ideal"):
        device = device.at_snr(snr_db)
    return device
