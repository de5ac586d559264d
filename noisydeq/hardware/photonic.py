"""The ``photonic`` device: y = W x computed with light, limited by shot, thermal and RIN noise.

Model (incoherent MVM with balanced detection; Wetzstein et al., Nature 588, 39 (2020)
is the paper's reference [29] for optical inference):
  * each input vector is normalised by its max |x| and set by a b-bit DAC onto an optical
    power P·|x̂_i| (P = optical power per MAC at full scale); its sign routes the light;
  * weights are transmissions t_ij = |w_ij| / max|W| ∈ [0, 1] (static encoding error
    N(0, weight_error_std²) per chip, clipped to [0, 1]); a weight's sign (times the
    input's) selects the positive or negative photodiode of output j;
  * photocurrents I± = R·P·Σ_i |x̂_i| t_ij over the products of that sign; the balanced
    pair outputs I = I+ − I− = R·P·(x̂ · t_j) with noise variance per output
        σ² = 2q(I+ + I− + 2 I_dark)B + 4 k_B T B / R_L + RIN·B·(I+² + I−²)
    (shot, Johnson–Nyquist thermal of the load, laser relative intensity noise);
  * a b-bit ADC with full scale ±adc_full_scale·R·P·√n_in (gain set for a random-sign
    signal of n_in products), clipping beyond.
Static: weight-encoding error. Dynamic: shot, thermal, RIN, DAC/ADC quantisation.

The control of a layer is P; a target SNR maps to P by calibration. Shot-limited SNR grows
as P (10 dB/decade), thermal-limited as P² (20 dB/decade); RIN and the converters set the
ceiling. Energy per MAC is P/B (one symbol per 1/B), photons per MAC E·λ/(h c).
``shot_noise = "fast"`` estimates I+ + I− from ‖x̂‖₁ times the mean transmission of row j
(saves the second matmul); ``"exact"`` computes it.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import Tensor

from noisydeq.hardware.base import Control, Device, DeviceLayer
from noisydeq.hardware.calibration import bisect_log, check_reachable
from noisydeq.hardware.presets import PhotonicSpec
from noisydeq.noise import NoiseStream, seeded_generator

Q_E = 1.602176634e-19  # C, elementary charge (SI exact)
K_B = 1.380649e-23  # J/K, Boltzmann constant (SI exact)
H_P = 6.62607015e-34  # J s, Planck constant (SI exact)
C_0 = 299792458.0  # m/s, speed of light (SI exact)
P_MIN_W, P_MAX_W = 1e-15, 1.0  # calibration bracket; 1 W per MAC stands for "unlimited"


def noise_variance(i_plus: Tensor, i_minus: Tensor, spec: PhotonicSpec) -> Tensor:
    """Per-output current noise variance (A²) of a balanced photodiode pair."""
    b = spec.bandwidth_hz
    shot = 2.0 * Q_E * b * (i_plus + i_minus + 2.0 * spec.dark_current_a)
    thermal = 4.0 * K_B * spec.temperature_k * b / spec.load_resistance_ohm
    rin = 10.0 ** (spec.rin_db_per_hz / 10.0) * b * (i_plus.square() + i_minus.square())
    return shot + thermal + rin


def energy_per_mac_j(power_w: float, spec: PhotonicSpec) -> float:
    """Optical energy per MAC: power per MAC over one symbol of 1/B seconds."""
    return power_w / spec.bandwidth_hz


def photons_per_mac(power_w: float, spec: PhotonicSpec) -> float:
    """Photons per MAC: E λ / (h c)."""
    return energy_per_mac_j(power_w, spec) * spec.wavelength_nm * 1e-9 / (H_P * C_0)


def _quantise(v: Tensor, full: Tensor | float, bits: int) -> Tensor:
    """Uniform b-bit quantiser on [−full, full] (2^b levels), clipping beyond."""
    step = 2.0 / (2**bits - 1)
    u = (v / full).clamp(-1.0, 1.0)
    return (torch.round((u + 1.0) / step) * step - 1.0) * full


class PhotonicLayer(DeviceLayer):
    """A Linear/Conv layer on a photonic MVM; the control is the power per MAC (W)."""

    device_kind = "photonic"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._enc: OrderedDict[tuple, tuple[Tensor, Tensor, Tensor]] = OrderedDict()

    @property
    def spec(self) -> PhotonicSpec:
        return self.device_model.spec

    def transmissions(self) -> tuple[Tensor, Tensor, Tensor]:
        """(signed t, |t|, mean |t| per output) of this chip (static encoding error)."""
        key = (self.weight._version, self.weight.data_ptr(), self.weight.device)
        if key in self._enc:
            return self._enc[key]
        w = self.matrix().detach()
        t = w / w.abs().max().clamp(min=1e-12)
        if self.spec.weight_error_std > 0:
            g = seeded_generator(self.static_seed)
            err = torch.randn(t.shape, generator=g).to(t.device, t.dtype)
            mag = (t.abs() + self.spec.weight_error_std * err).clamp(0.0, 1.0)
            t = torch.where(t < 0, -mag, mag)
        entry = (t, t.abs(), t.abs().mean(dim=1))
        self._enc.clear()
        self._enc[key] = entry
        return entry

    def _mvm(self, x: Tensor, control: Control, stream: NoiseStream) -> Tensor:
        sp = self.spec
        lead = x.shape[:-1]
        noise = stream.randn((*lead, self.n_out), x.dtype, x.device)
        t, t_abs, t_mean = self.transmissions()
        nm = x.abs().amax(dim=-1, keepdim=True)
        nm = torch.where(nm > 0, nm, torch.ones_like(nm))
        xq = _quantise(x / nm, 1.0, sp.dac_bits)
        diff = xq @ t.T
        if sp.shot_noise == "exact":
            tot = xq.abs() @ t_abs.T
        else:
            tot = xq.abs().sum(dim=-1, keepdim=True) * t_mean
        if isinstance(control, Tensor):
            p = control.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        else:
            p = control
        rp = sp.responsivity_a_per_w * p
        i_sig = diff * rp
        i_tot = tot * rp
        i_plus, i_minus = 0.5 * (i_tot + i_sig), 0.5 * (i_tot - i_sig)
        current = i_sig + noise * noise_variance(i_plus, i_minus, sp).sqrt()
        full = sp.adc_full_scale * rp * math.sqrt(self.n_in)
        current = _quantise(current, full, sp.adc_bits)
        return current / rp * nm * self.matrix().detach().abs().max()

    # ------------------------------------------------------------ calibration
    def native_control(self) -> float:
        return float(self.spec.power_w)

    def max_snr_db(self) -> float:
        if "max" not in self._controls:
            self._controls["max"] = self.measured_snr_at(P_MAX_W)
        return self._controls["max"]

    def _calibrate(self, snr_db: float) -> float:
        check_reachable(snr_db, self.max_snr_db(), f"photonic layer '{self.layer_name}'")
        return bisect_log(self.measured_snr_at, snr_db, P_MIN_W, P_MAX_W, increasing=True)

    def operating_point(self, snr_db: float | None = None) -> dict[str, float]:
        """Power, energy and photons per MAC at ``snr_db`` (``None``: native)."""
        p = self.native_control() if snr_db is None else self.control_for(snr_db)
        return {
            "power_per_mac_w": p,
            "energy_per_mac_j": energy_per_mac_j(p, self.spec),
            "photons_per_mac": photons_per_mac(p, self.spec),
        }


class PhotonicDevice(Device):
    """Photonic MVM; a target SNR maps to optical power per MAC."""

    kind = "photonic"
    layer_class = PhotonicLayer

    def operating_point(self, snr_db: float | None = None) -> dict[str, float]:
        """Optical operating point of the reference MVM at ``snr_db`` (default: target/native)."""
        snr_db = self.target_snr_db if snr_db is None else snr_db
        out = self.reference_layer().operating_point(snr_db)
        out["snr_db"] = self.native_snr_db() if snr_db is None else float(snr_db)
        return out

    def describe(self) -> dict[str, object]:
        sp = self.spec
        return {
            "P_mac_W": sp.power_w,
            "E_mac_J": energy_per_mac_j(sp.power_w, sp),
            "photons_mac": round(photons_per_mac(sp.power_w, sp)),
            "lambda_nm": sp.wavelength_nm,
            "B_Hz": sp.bandwidth_hz,
            "RIN_dB_Hz": sp.rin_db_per_hz,
            "adc_bits": sp.adc_bits,
        }
