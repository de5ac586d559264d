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
  * a b-bit ADC with full scale ±F·R·P, clipping beyond: F = adc_full_scale·√n_in (fixed
    gain, set for a random-sign signal of n_in products), or, with ``adc_gain =
    "calibrated"``, F = adc_headroom × the layer's largest |x̂·t| on its calibration inputs
    (the TIA gain set per layer at deployment: coherent outputs, e.g. a trained head's
    logits, do not clip, small ones use the converter's resolution).
Static: weight-encoding error. Dynamic: shot, thermal, RIN, DAC/ADC quantisation.

Knobs of a layer (:mod:`noisydeq.hardware.modes`): σ_w (static) and P (dynamic); a target
SNR maps to them by calibration in the device's noise mode. Shot-limited SNR grows
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

from noisydeq.hardware.base import Device
from noisydeq.hardware.layer import Control, DeviceLayer, Knobs
from noisydeq.noise import NoiseStream, seeded_generator
from noisydeq.scalars import const
from noisydeq.specs.device_kinds import PhotonicSpec

Q_E = 1.602176634e-19  # C, elementary charge (SI exact)
K_B = 1.380649e-23  # J/K, Boltzmann constant (SI exact)
H_P = 6.62607015e-34  # J s, Planck constant (SI exact)
#: encodings (and held encoding errors) kept per layer, most recently used last
ENCODINGS_KEPT = 8
C_0 = 299792458.0  # m/s, speed of light (SI exact)
P_MIN_W, P_MAX_W = 1e-15, 1.0  # calibration bracket; 1 W per MAC stands for "unlimited"
#: bracket of the encoding error std σ_w (fraction of full scale; 3 ≈ random transmissions)
SIGMA_MIN, SIGMA_MAX = 1e-6, 3.0


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


#: small constant rows of :meth:`PhotonicLayer._read` (exponents, variance coefficients at
#: a scalar power), made once per values, dtype and device instead of at every read
_ROWS: dict[tuple, Tensor] = {}


def _row(like: Tensor, values: tuple[float, ...]) -> Tensor:
    """``like.new_tensor(values)``, cached (the same values; a read makes two per call)."""
    key = (values, like.dtype, like.device)
    t = _ROWS.get(key)
    if t is None:
        if len(_ROWS) >= 1024:  # a knob per calibration probe
            _ROWS.clear()
        t = _ROWS[key] = like.new_tensor(values)
    return t


class PhotonicLayer(DeviceLayer):
    """A Linear/Conv layer on a photonic MVM; knobs (weight-encoding error std, power per MAC).

    The static knob σ_w is the std of the transmission error (fraction of full scale), drawn
    once per chip as σ_w times one standard draw (the same draw at every σ_w: common random
    numbers); the dynamic knob is the optical power per MAC P (W). The joint path scales
    both noise amplitudes by s: σ_w = s·σ_w0 and P = P0/s² (shot-noise amplitude ∝ s).
    """

    device_kind = "photonic"
    peak_scaled = True
    draws_output_noise = True
    raises_snr = (False, True)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        #: per (σ_w, weight version): (signed t, |t|, mean |t| per output, max|W|) and the
        #: fused operands of :meth:`_read`
        self._enc: OrderedDict[tuple, tuple] = OrderedDict()
        self._err: tuple[tuple, Tensor] | None = None
        self._adc: tuple[tuple, float, Tensor] | None = None
        #: (weight version, max|W| (clamped), W / max|W|): shared by the ADC gain and the
        #: transmissions, both made again whenever the weights change (every training step)
        self._unit: tuple[tuple, Tensor, Tensor] | None = None
        #: (inputs key, calibration inputs normalised by their max |x|, the inputs)
        self._adc_inputs: tuple[tuple, Tensor, Tensor] | None = None
        #: hold the measured ADC gain while the weights change (set at deployment, e.g. once
        #: per training epoch: ``TrainSpec.device_adc_gain = "epoch"``); False: measured again
        #: for every weight version
        self.hold_adc_gain = False
        #: hold the encoding error while the weights change (set at deployment, e.g. once per
        #: training epoch: ``TrainSpec.device_programming = "epoch"``): at each σ_w the first
        #: encoding on this chip is done in full, every later weight version's signed
        #: transmissions are its W / max|W| plus that encoding's error, clipped to [−1, 1]
        #: (:meth:`held_error`); False: every weight version is encoded afresh
        self.hold_programming = False
        #: σ_w -> error of the signed transmissions t − W/max|W| (most recently used last)
        self._held_error: OrderedDict[float, Tensor] = OrderedDict()

    @property
    def spec(self) -> PhotonicSpec:
        return self.device_model.spec

    def _std_draw(self, shape: torch.Size, like: Tensor) -> Tensor:
        """This chip's standard-normal encoding-error draw (seeded by the chip, per shape)."""
        key = (tuple(shape), like.dtype, like.device, self.static_seed)
        if self._err is None or self._err[0] != key:
            g = seeded_generator(self.static_seed)
            self._err = (key, torch.randn(shape, generator=g).to(like.device, like.dtype))
        return self._err[1]

    def _unit_weights(self) -> tuple[Tensor, Tensor]:
        """(max|W| clamped at 1e-12, W / max|W|) of the current weights (kept per version)."""
        key = (self.weight._version, self.weight.data_ptr(), self.weight.device)
        if self._unit is None or self._unit[0] != key:
            with torch.no_grad():
                w = self.matrix().detach()
                wmax = w.abs().max().clamp(min=1e-12)
                self._unit = (key, wmax, w / wmax)
        return self._unit[1], self._unit[2]

    def adc_scale(self) -> float:
        """ADC full scale F in units of R·P (module docstring): fixed, or calibrated on the
        layer's calibration inputs (kept per inputs and weight version; per inputs only
        while :attr:`hold_adc_gain`)."""
        sp = self.spec
        fixed = sp.adc_full_scale * math.sqrt(self.n_in)
        if sp.adc_gain == "fixed":
            return fixed
        x = self.calibration_inputs()
        key = (id(x), x._version, self.weight.data_ptr(), self.weight._version)
        held = (self.hold_adc_gain and self._adc is not None
                and self._adc[0][:2] == key[:2])  # same inputs, weights trained since
        if not held and (self._adc is None or self._adc[0] != key):  # the entry holds x
            x_key = (id(x), x._version)
            if self._adc_inputs is None or self._adc_inputs[0] != x_key:
                with torch.no_grad():  # normalised once per inputs (training: per epoch)
                    nm = x.abs().amax(dim=-1, keepdim=True)
                    self._adc_inputs = (x_key, x / torch.where(nm > 0, nm, 1.0), x)
            xn = self._adc_inputs[1]
            with torch.no_grad():
                peak = float((xn @ self._unit_weights()[1].T).abs().max())
            scale = sp.adc_headroom * peak if peak > 0 else fixed
            self._adc = (key, scale, x)
        return self._adc[1]

    def _encoding(self, sigma: float | None = None) -> tuple:
        """(signed t, |t|, mean |t| per output, max|W|, fused) of this chip at encoding error
        std ``sigma`` (default: the preset's), kept for the last few σ per weight version."""
        sigma = self.spec.weight_error_std if sigma is None else float(sigma)
        full_scale = self.adc_scale()
        key = (sigma, full_scale, self.weight._version, self.weight.data_ptr(), self.weight.device)
        if key in self._enc:
            self._enc.move_to_end(key)
            return self._enc[key]
        wmax, t = self._unit_weights()
        err = self._held_error.get(sigma) if self.hold_programming and sigma > 0 else None
        if err is not None:  # the held encoding error on the current weights
            self._held_error.move_to_end(sigma)
            t = (t + err).clamp_(-1.0, 1.0)
            t_abs = t.abs()
        elif sigma > 0:
            unit = t
            # constants as 0-dim tensors (noisydeq.scalars): the same values, no casts
            mag = (t.abs() + const(sigma, t) * self._std_draw(t.shape, t)).clamp(0.0, 1.0)
            # where(t < 0, −mag, mag) as copysign(mag, t + 0): t + 0 turns −0 into +0 (and
            # keeps every other t), and mag is never −0 (|t| is not, so neither is |t| + σξ:
            # a sum is −0 only of two −0): the same values, two float passes instead of a
            # bool mask's three (3× faster here)
            t = torch.copysign(mag, t + const(0.0, t))
            t_abs = mag  # |±mag| = mag (mag in [0, 1]): the same values, one pass fewer
            if self.hold_programming:
                self._held_error[sigma] = t - unit
                while len(self._held_error) > ENCODINGS_KEPT:
                    self._held_error.popitem(last=False)
        else:
            t_abs = t.abs()
        t_mean = t_abs.mean(dim=1)
        sp = self.spec
        h_dac, h_adc = 0.5 * (2**sp.dac_bits - 1), 0.5 * (2**sp.adc_bits - 1)
        alpha = h_adc / (h_dac * full_scale)
        a = const(alpha, t)
        tm = t_mean * a
        basis = torch.stack([tm.square(), tm, torch.ones_like(tm)])
        # |t|·α enters only the exact shot noise's second matmul
        ta_abs = t_abs * a if sp.shot_noise == "exact" else None
        fused = (t * a, ta_abs, basis, alpha, float(wmax))
        entry = (t, t_abs, t_mean, float(wmax), fused)
        self._enc[key] = entry
        while len(self._enc) > ENCODINGS_KEPT:
            self._enc.popitem(last=False)
        return entry

    def held_error(self, sigma: float) -> Tensor | None:
        """The signed-transmission error held at σ_w ``sigma`` (None: none held yet)."""
        return self._held_error.get(float(sigma))

    def transmissions(self, sigma: float | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """(signed t, |t|, mean |t| per output) of this chip (static encoding error)."""
        return self._encoding(sigma)[:3]

    def chip_matrix(self, static: float) -> Tensor:
        """W_chip = max|W| · t at encoding error std ``static`` (W itself without error)."""
        if not static:
            return self.matrix().detach()
        t, _, _, wmax, _ = self._encoding(static)
        return t * wmax

    def _mvm(self, x: Tensor, control: Control, stream: NoiseStream) -> Tensor:
        """Noisy photonic MVM (module docstring): one read per run of equal σ_w, each with
        its rows' powers (a scalar, or one per sample)."""
        noise = stream.randn((*x.shape[:-1], self.n_out), x.dtype, x.device)
        if not isinstance(control, Tensor):
            return self._read(x, float(control[0]), float(control[1]), noise)
        c = control.reshape(-1, 2)
        sigmas, counts = torch.unique_consecutive(c[:, 0], return_counts=True)
        if sigmas.numel() == 1:
            return self._read(x, float(sigmas[0]), c[:, 1], noise)
        out = x.new_empty((*x.shape[:-1], self.n_out))
        start = 0
        for sigma, n in zip(sigmas.tolist(), counts.tolist(), strict=True):
            sl = slice(start, start + n)
            start += n
            out[sl] = self._read(x[sl], sigma, c[sl, 1], noise[sl])
        return out

    def _read(self, x: Tensor, sigma: float, power: float | Tensor, noise: Tensor) -> Tensor:
        """The read of ``x`` at encoding error ``sigma`` and power(s) per MAC ``power``,
        fused into one matmul and few passes (standard normal ``noise``, (*x.shape[:-1], n_out)).

        Both converters are mid-rise quantisers: a b-bit converter on [−F, F] maps
        z = v·h/F (h = (2^b − 1)/2) to floor(z) + 0.5, clipped to ±h, i.e. to the 2^b
        levels (2k + 1 − 2^b)/(2^b − 1)·F. The DAC codes x̂·h_dac enter the matmul with the
        transmissions scaled by α, so its output, the noise and the variance are all in
        ADC units (full scale ±h_adc) and the ADC needs no rescaling pass.
        """
        sp = self.spec
        ta, ta_abs, basis, alpha, wmax = self._encoding(sigma)[4]
        h_dac, h_adc = 0.5 * (2**sp.dac_bits - 1), 0.5 * (2**sp.adc_bits - 1)
        # DAC: x̂ = x / max|x| (zero vectors: scale 1); |x̂·h| ≤ h needs no clip
        nm = x.abs().amax(dim=-1, keepdim=True)
        nm = nm.masked_fill_(nm == const(0.0, nm), 1.0)
        # codes x̂·h_dac; h_dac / nm as torch computes it (nm.reciprocal() * h_dac), the
        # constants as 0-dim tensors (noisydeq.scalars)
        xq = x.mul(nm.reciprocal().mul_(const(h_dac, nm))).floor_().add_(const(0.5, x))
        z = xq @ ta.T  # D in ADC units, D = (I+ − I−)/(R·P)
        per_sample = isinstance(power, Tensor)
        if per_sample:
            rp = sp.responsivity_a_per_w * power.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        else:
            rp = sp.responsivity_a_per_w * power
        u = 1.0 / (h_dac * alpha)  # R·P per ADC unit, over R·P
        a, c, k = variance_coefficients(sp, rp * u)  # variance in ADC units²
        if sp.shot_noise == "exact":  # S = (I+ + I−)/(R·P), in ADC units
            tot = xq.abs_() @ ta_abs.T
            var = tot.mul(k).add_(a).mul_(tot).add_(c)
        else:  # S ≈ ‖x̂‖₁ · mean_i |t_ji|: k·S² + a·S + c as one rank-3 product
            l1 = xq.abs_().sum(dim=-1, keepdim=True)
            if per_sample:
                coef = torch.cat([l1 * l1 * k, l1 * a, c.expand_as(l1)], dim=-1)
            else:  # [S², S, 1] · [k, a, c]
                coef = l1.pow(_row(l1, (2.0, 1.0, 0.0))).mul_(_row(l1, (k, a, c)))
            var = coef @ basis
        var = var.addcmul_(z, z, value=k).sqrt_()
        z = z.addcmul_(noise, var).clamp_(-h_adc, h_adc).floor_()  # ADC codes − 0.5
        scale = nm.mul_(const(u * wmax, nm))  # back to W x units: code · u · max|x| · max|W|
        return torch.addcmul(scale.mul(const(0.5, nm)), z, scale, out=z)

    def error_scale(self, x: Tensor, exact: Tensor) -> Tensor:
        """max|W| · max|x| per vector: transmissions are |W|/max|W| and inputs x/max|x|, so
        with the same draws the read of c·W or c·x is c times that of W or x."""
        return self.peak_scale(x)

    # ------------------------------------------------------------ knobs
    def native_knobs(self) -> Knobs:
        return (float(self.spec.weight_error_std), float(self.spec.power_w))

    def knob_bounds(self, which: int) -> tuple[float, float]:
        return (SIGMA_MIN, SIGMA_MAX) if which == 0 else (P_MIN_W, P_MAX_W)

    def joint_bounds(self) -> tuple[float, float]:
        p0 = float(self.spec.power_w)  # keep P = P0/s² inside [P_MIN_W, P_MAX_W]
        return (math.sqrt(p0 / P_MAX_W), math.sqrt(p0 / P_MIN_W))

    def joint_knobs(self, s: float) -> Knobs:
        sigma0, p0 = self.native_knobs()
        return (s * sigma0, p0 / (s * s))

    def joint_scale(self, knobs: Knobs) -> float | None:
        s = math.sqrt(self.native_knobs()[1] / knobs[1])
        return s if math.isclose(self.joint_knobs(s)[0], knobs[0], rel_tol=1e-9) else None

    def operating_point(self, snr_db: float | None = None) -> dict[str, float]:
        """Power, energy and photons per MAC at ``snr_db`` (``None``: native)."""
        p = self.native_knobs()[1] if snr_db is None else self.control_for(snr_db)[1]
        return {
            "power_per_mac_w": p,
            "energy_per_mac_j": energy_per_mac_j(p, self.spec),
            "photons_per_mac": photons_per_mac(p, self.spec),
        }


class PhotonicDevice(Device):
    """Photonic MVM; knobs: weight-encoding error (static), optical power per MAC (dynamic)."""

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
            "sigma_w": sp.weight_error_std,
        }
