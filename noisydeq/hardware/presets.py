"""Device specs (strict pydantic models) and the preset loader.

A preset is a flat TOML file with ``kind`` (``ideal``, ``snr``, ``rram``, ``photonic``),
``name``, ``description`` and the physical parameters of that kind. The canonical presets
live in the top-level ``devices/`` folder and ship inside the wheel as
``noisydeq/presets/devices``; :func:`get_device` takes a preset name (``rram-wan2022``) or
the path of a user's own TOML file.
"""

from __future__ import annotations

import difflib
import math
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from noisydeq.config import InfFloat, StrictModel, build, parse_snr_value, parse_toml
from noisydeq.errors import NoisyDEQError
from noisydeq.store import read_text

#: Wan-2022 fits exist only at these read times (aihwkit ReRamWan2022NoiseModel).
T_INFERENCE_VALUES = {1.0: "1 s", 86400.0: "1 day", 172800.0: "2 days"}


class _Base(StrictModel):
    name: str = ""
    description: str = ""


class IdealSpec(_Base):
    """Exact MVMs (no noise)."""

    kind: Literal["ideal"] = "ideal"


class SNRSpec(_Base):
    """Gaussian noise on every MVM output at a given SNR (paper Eq. 3-4 at layer level).

    ``multiplicative``: std follows each sample's output norm (realised SNR = nominal).
    ``additive``: fixed std per layer, set so the SNR is nominal on the calibration batch.
    """

    kind: Literal["snr"] = "snr"
    mode: Literal["multiplicative", "additive"] = "multiplicative"
    snr_db: InfFloat = 20.0

    @field_validator("snr_db", mode="before")
    @classmethod
    def _snr(cls, v: Any) -> float:
        return parse_snr_value(v)


class RRAMSpec(_Base):
    """RRAM crossbar (aihwkit physics; Wan et al., Nature 608, 504 (2022))."""

    kind: Literal["rram"] = "rram"
    g_max_us: float = Field(40.0, gt=0, description="max conductance (µS)")
    g_min_us: float = Field(0.0, ge=0, description="conductance of logical zero (µS)")
    t_inference_s: float = Field(1.0, description="read time after programming (s)")
    prog_noise_scale: float = Field(1.0, ge=0)
    drift_compensation: bool = True
    dac_bits: int = Field(7, ge=1, le=24)
    adc_bits: int = Field(9, ge=1, le=24)
    inp_bound: float = Field(1.0, gt=0)
    out_bound: float = Field(12.0, gt=0)
    out_noise: float = Field(0.06, ge=0)
    bound_management: Literal["iterative", "none"] = "iterative"
    max_bm_res: float = Field(0.25, gt=0)

    @field_validator("t_inference_s")
    @classmethod
    def _t(cls, v: float) -> float:
        if float(v) not in T_INFERENCE_VALUES:
            allowed = ", ".join(f"{k:g} ({n})" for k, n in T_INFERENCE_VALUES.items())
            raise ValueError(f"must be one of {allowed} seconds (Wan-2022 fit), got {v:g}")
        return float(v)

    @model_validator(mode="after")
    def _g(self) -> RRAMSpec:
        if self.g_min_us >= self.g_max_us:
            raise ValueError(f"g_min_us ({self.g_min_us:g}) must be below g_max_us")
        return self


class PhotonicSpec(_Base):
    """Incoherent photonic MVM with balanced detection, shot/thermal/RIN noise."""

    kind: Literal["photonic"] = "photonic"
    wavelength_nm: float = Field(1550.0, gt=0)
    power_per_mac_w: float | None = Field(None, gt=0)
    energy_per_mac_j: float | None = Field(None, gt=0)
    responsivity_a_per_w: float = Field(1.0, gt=0)
    dark_current_a: float = Field(1e-9, ge=0)
    bandwidth_hz: float = Field(10e9, gt=0)
    temperature_k: float = Field(300.0, gt=0)
    load_resistance_ohm: float = Field(50.0, gt=0)
    rin_db_per_hz: float = Field(-160.0, le=0)
    dac_bits: int = Field(8, ge=1, le=24)
    adc_bits: int = Field(10, ge=1, le=24)
    adc_full_scale: float = Field(4.0, gt=0)
    weight_error_std: float = Field(0.0, ge=0)
    shot_noise: Literal["fast", "exact"] = "fast"

    @model_validator(mode="after")
    def _power(self) -> PhotonicSpec:
        if self.power_per_mac_w is not None and self.energy_per_mac_j is not None:
            raise ValueError("give power_per_mac_w or energy_per_mac_j, not both")
        if self.power_per_mac_w is None and self.energy_per_mac_j is None:
            self.power_per_mac_w = 1e-5
        return self

    @property
    def power_w(self) -> float:
        """Optical power per MAC (W): given, or energy per MAC × bandwidth."""
        if self.power_per_mac_w is not None:
            return self.power_per_mac_w
        return float(self.energy_per_mac_j) * self.bandwidth_hz


SPECS: dict[str, type[_Base]] = {
    "ideal": IdealSpec,
    "snr": SNRSpec,
    "rram": RRAMSpec,
    "photonic": PhotonicSpec,
}
DeviceSpec = IdealSpec | SNRSpec | RRAMSpec | PhotonicSpec


def spec_from_dict(data: dict[str, Any], where: str = "device") -> DeviceSpec:
    """Validate a preset dict (must carry ``kind``) into its spec."""
    kind = data.get("kind")
    if kind not in SPECS:
        close = difflib.get_close_matches(str(kind), list(SPECS), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise NoisyDEQError(
            f"{where}: kind '{kind}' is not a device kind{hint} (allowed: {', '.join(SPECS)})"
        )
    return build(SPECS[kind], data, where=where)


#: a bare device kind names its default preset (``--device rram`` is the README's command)
KIND_PRESETS = {"rram": "rram-wan2022"}


def presets_dir() -> Path:
    """Folder of the shipped presets (inside the package; the repo's ``devices/``)."""
    here = Path(__file__).resolve().parent.parent / "presets" / "devices"
    if here.is_dir():
        return here
    return Path(__file__).resolve().parents[2] / "devices"  # pragma: no cover


def preset_names() -> list[str]:
    """Names of the shipped presets, sorted."""
    return sorted(p.stem for p in presets_dir().glob("*.toml"))


def load_spec(name_or_path: str | os.PathLike) -> DeviceSpec:
    """Spec of a shipped preset (by name) or of a TOML file (by path); also bare kinds."""
    text = str(name_or_path)
    path = Path(text)
    if text.endswith(".toml") or path.is_file():
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
            close = difflib.get_close_matches(text, [*names, *KIND_PRESETS], n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise NoisyDEQError(
                f"unknown device '{text}'{hint} (presets: {', '.join(names)}; "
                "or the path of a .toml preset)"
            )
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
    name_or_path: str | os.PathLike, *, snr_db: float | None = None, chip: int = 0
):  # -> Device
    """A device from a preset name or TOML path, optionally calibrated and on a chip."""
    device = device_from_spec(load_spec(name_or_path), chip_seed=chip)
    if snr_db is not None and not (math.isinf(snr_db) and device.kind == "ideal"):
        device = device.at_snr(snr_db)
    return device
