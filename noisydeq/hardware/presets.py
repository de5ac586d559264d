"""Devices from presets: :func:`device_from_spec` and :func:`get_device`.

The preset specs and their loader are torch-free and live in :mod:`noisydeq.specs`
(:mod:`~noisydeq.specs.device_kinds`: one strict spec per kind;
:mod:`~noisydeq.specs.device_presets`: the shipped TOML presets, :func:`load_spec`), so a
command refuses a bad ``--device`` before torch loads; they are re-exported here, where
they were defined before.
"""

from __future__ import annotations

import math
import os

from noisydeq.specs.device_kinds import (
    SPECS,
    T_INFERENCE_VALUES,
    DeviceSpec,
    IdealSpec,
    PhotonicSpec,
    RRAMSpec,
    SNRSpec,
    spec_from_dict,
)
from noisydeq.specs.device_presets import KIND_PRESETS, load_spec, preset_names, presets_dir

__all__ = [
    "KIND_PRESETS", "SPECS", "T_INFERENCE_VALUES", "DeviceSpec", "IdealSpec", "PhotonicSpec",
    "RRAMSpec", "SNRSpec", "device_from_spec", "get_device", "load_spec", "preset_names",
    "presets_dir", "spec_from_dict",
]


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
