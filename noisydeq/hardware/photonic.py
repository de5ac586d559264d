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


def variance_coefficients(spec: PhotonicSpec, rp: Control) -> tuple[Control, Control, float]:
    """(a, c, k) with σ²/(R·P)² = a·S + c + k·(S² + D²) for S = Σ|x̂||t|, D = x̂·t.

    :func:`noise_variance` divided by the squared full-scale current R·P (``rp``), using
    I± = R·P·(S ± D)/2, so I+ + I− = R·P·S and I+² + I−² = (R·P)²(S² + D²)/2: the noise
    of one output in units of the MVM result, with R·P a scalar or a per-sample tensor.
    """
    b = spec.bandwidth_hz
    a = 2.0 * Q_E * b / rp
    floor = 4.0 * Q_E * b * spec.dark_current_a + 4.0 * K_B * spec.temperature_k * b / (
        spec.load_resistance_ohm
    )
    c = floor / (rp * rp)
    k = 0.5 * 10.0 ** (spec.rin_db_per_hz / 10.0) * b
    return a, c, k


class PhotonicLayer(DeviceLayer):
    """A Linear/Conv layer on a photonic MVM; the control is the power per MAC (W)."""

    device_kind = "photonic"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._enc: OrderedDict[tuple, tuple[Tensor, Tensor, Tensor, float]] = OrderedDict()
        self._fused: tuple[Tensor, Tensor, Tensor, float, float] | None = None

    @property
    def spec(self) -> PhotonicSpec:
        return self.device_model.spec

    def _encoding(self) -> tuple[Tensor, Tensor, Tensor, float]:
        """(signed t, |t|, mean |t| per output, max|W|) of this chip, once per weight version."""
        key = (self.weight._version, self.weight.data_ptr(), self.weight.device)
        if key in self._enc:
            return self._enc[key]
        w = self.matrix().detach()
        wmax = w.abs().max().clamp(min=1e-12)
        t = w / wmax
        if self.spec.weight_error_std > 0:
            g = seeded_generator(self.static_seed)
            err = torch.randn(t.shape, generator=g).to(t.device, t.dtype)
            mag = (t.abs() + self.spec.weight_error_std * err).clamp(0.0, 1.0)
            t = torch.where(t < 0, -mag, mag)
        t_abs = t.abs()
        entry = (t, t_abs, t_abs.mean(dim=1), float(wmax))
        self._enc.clear()
        self._enc[key] = entry
        self._fused = None
        return entry

    def transmissions(self) -> tuple[Tensor, Tensor, Tensor]:
        """(signed t, |t|, mean |t| per output) of this chip (static encoding error)."""
        return self._encoding()[:3]

    def _fused_encoding(self) -> tuple[Tensor, Tensor, Tensor, float, float]:
        """Static operands of :meth:`_mvm` in ADC units (α = h_adc / (h_dac · full scale)).

        (α·t, α·|t|, rows [(α·mean|t|)², α·mean|t|, 1], α, max|W|), cached with the chip.
        """
        t, t_abs, t_mean, wmax = self._encoding()
        if self._fused is None:
            sp = self.spec
            h_dac, h_adc = 0.5 * (2**sp.dac_bits - 1), 0.5 * (2**sp.adc_bits - 1)
            alpha = h_adc / (h_dac * sp.adc_full_scale * math.sqrt(self.n_in))
            tm = t_mean * alpha
            basis = torch.stack([tm.square(), tm, torch.ones_like(tm)])
            self._fused = (t * alpha, t_abs * alpha, basis, alpha, wmax)
        return self._fused

    def _mvm(self, x: Tensor, control: Control, stream: NoiseStream) -> Tensor:
        """Noisy photonic MVM (module docstring), fused into one matmul and few passes.

        Both converters are mid-rise quantisers: a b-bit converter on [−F, F] maps
        z = v·h/F (h = (2^b − 1)/2) to floor(z) + 0.5, clipped to ±h, i.e. to the 2^b
        levels (2k + 1 − 2^b)/(2^b − 1)·F. The DAC codes x̂·h_dac enter the matmul with the
        transmissions scaled by α, so its output, the noise and the variance are all in
        ADC units (full scale ±h_adc) and the ADC needs no rescaling pass.
        """
        sp = self.spec
        ta, ta_abs, basis, alpha, wmax = self._fused_encoding()
        h_dac, h_adc = 0.5 * (2**sp.dac_bits - 1), 0.5 * (2**sp.adc_bits - 1)
        # DAC: x̂ = x / max|x| (zero vectors: scale 1); |x̂·h| ≤ h needs no clip
        nm = x.abs().amax(dim=-1, keepdim=True)
        nm = nm.masked_fill_(nm == 0, 1.0)
        xq = x.mul(h_dac / nm).floor_().add_(0.5)  # codes x̂·h_dac
        z = xq @ ta.T  # D in ADC units, D = (I+ − I−)/(R·P)
        if isinstance(control, Tensor):
            rp = sp.responsivity_a_per_w * control.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        else:
            rp = sp.responsivity_a_per_w * control
        u = 1.0 / (h_dac * alpha)  # R·P per ADC unit, over R·P
        a, c, k = variance_coefficients(sp, rp * u)  # variance in ADC units²
        if sp.shot_noise == "exact":  # S = (I+ + I−)/(R·P), in ADC units
            tot = xq.abs_() @ ta_abs.T
            var = tot.mul(k).add_(a).mul_(tot).add_(c)
        else:  # S ≈ ‖x̂‖₁ · mean_i |t_ji|: k·S² + a·S + c as one rank-3 product
            l1 = xq.abs_().sum(dim=-1, keepdim=True)
            if isinstance(control, Tensor):
                coef = torch.cat([l1 * l1 * k, l1 * a, c.expand_as(l1)], dim=-1)
            else:  # [S², S, 1] · [k, a, c]
                coef = l1.pow(l1.new_tensor([2.0, 1.0, 0.0])).mul_(l1.new_tensor([k, a, c]))
            var = coef @ basis
        var = var.addcmul_(z, z, value=k).sqrt_()
        noise = stream.randn((*x.shape[:-1], self.n_out), x.dtype, x.device)
        z = z.addcmul_(noise, var).clamp_(-h_adc, h_adc).floor_()  # ADC codes − 0.5
        scale = nm.mul_(u * wmax)  # back to W x units: code · u · max|x| · max|W|
        return torch.addcmul(scale.mul(0.5), z, scale, out=z)

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
