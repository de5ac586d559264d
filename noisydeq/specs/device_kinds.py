"""Device specs (strict pydantic models), one per device kind, and their validation.

Each spec holds the physical parameters of one kind (``ideal``, ``snr``, ``rram``,
``photonic``); the devices (:mod:`noisydeq.hardware.rram`, ...) read their spec from here and
:mod:`noisydeq.specs.device_presets` loads preset TOML files into them. Torch-free, so a
command checks its ``--device`` before torch loads (:mod:`noisydeq.hardware.presets`
re-exports these names).
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from noisydeq.errors import NoisyDEQError, did_you_mean
from noisydeq.specs.base import InfFloat, StrictModel, build
from noisydeq.specs.noise import parse_snr_value

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

    ``snr_db``: the dynamic part, drawn at every MVM. ``multiplicative``: std follows each
    sample's output norm (realised SNR = nominal). ``additive``: fixed std per layer, set
    so the SNR is nominal on the calibration batch. ``static_snr_db``: a per-chip
    multiplicative weight error W ∘ (1 + σξ) at that SNR (``inf``: none, the default).
    """

    kind: Literal["snr"] = "snr"
    mode: Literal["multiplicative", "additive"] = "multiplicative"
    snr_db: InfFloat = 20.0
    static_snr_db: InfFloat = math.inf

    @field_validator("snr_db", "static_snr_db", mode="before")
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
    """Incoherent photonic MVM with balanced detection, shot/thermal/RIN noise.

    ADC gain: ``fixed`` — full scale ±adc_full_scale·R·P·√n_in (a random-sign signal of
    n_in products); ``calibrated`` — set per layer (its TIA gain) to ``adc_headroom`` times
    the largest output of the layer on its calibration inputs, so a layer's outputs neither
    clip nor waste the converter's resolution.
    """

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
    adc_gain: Literal["fixed", "calibrated"] = "fixed"
    adc_headroom: float = Field(1.25, ge=1.0)
    weight_error_std: float = Field(0.0, ge=0)
    shot_noise: Literal["fast", "exact"] = "fast"

    @model_validator(mode="after")
    def _power(self) -> PhotonicSpec:
        if self.power_per_mac_w is not None and self.energy_per_mac_j is not None:
            raise ValueError("give power_per_mac_w or energy_per_mac_j, not both")
        if self.power_per_mac_w is None and self.energy_per_mac_j is None:
            self.power_per_mac_w = 1e-5
        return self

    def adc_text(self) -> str:
        """The ADC gain in words, for a run's printed summary."""
        if self.adc_gain == "fixed":
            return f"ADC gain fixed (full scale ±{self.adc_full_scale:g}·R·P·√n_in)"
        return (f"ADC gain calibrated per layer ({self.adc_headroom:g} × its largest output "
                "on its calibration inputs)")

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


def has_programming_error(spec: Any) -> bool:
    """Whether a device preset programs its chip with an error (rram with
    ``prog_noise_scale > 0``, photonic with ``weight_error_std > 0``): what hardware-aware
    training's ``device_programming = "epoch"`` holds."""
    return (getattr(spec, "prog_noise_scale", 0.0) > 0
            or getattr(spec, "weight_error_std", 0.0) > 0)


def spec_from_dict(data: dict[str, Any], where: str = "device") -> DeviceSpec:
    """Validate a preset dict (must carry ``kind``) into its spec."""
    kind = data.get("kind")
    if kind is None:  # not "kind 'None' is not a device kind"
        raise NoisyDEQError(f"{where}: no 'kind' (one of: {', '.join(SPECS)}), e.g. "
                            'kind = "rram"')
    if kind not in SPECS:
        hint = did_you_mean(kind, SPECS)
        raise NoisyDEQError(
            f"{where}: kind '{kind}' is not a device kind{hint} (allowed: {', '.join(SPECS)})"
        )
    return build(SPECS[kind], data, where=where)
