"""The ``snr`` device: Gaussian noise on every MVM output at a target SNR (paper Eq. 3-4).

``multiplicative`` applies the paper's signal noise at layer granularity with the
width-independent convention of :func:`noisydeq.noise.multiplicative`: per sample
ε ~ N(0, ‖Wx‖²/(d·SNR)), so the realised SNR equals the nominal one at every width.
``additive`` (paper Eq. 8) draws ε ~ N(0, σ²) with one σ per layer fixed by calibration,
σ² = mean_b ‖W x_b‖² / (d·SNR) over the layer's calibration batch: the SNR is nominal on
that batch and follows the signal power elsewhere. Both are dynamic noise only.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from noisydeq.hardware.base import Control, Device, DeviceLayer
from noisydeq.noise import NoiseStream, db_to_linear, multiplicative_noise_std


def _noise_std(y: Tensor, snr_db: Control) -> Tensor:
    """:func:`noisydeq.noise.multiplicative_noise_std`, one fused norm for a scalar SNR."""
    if isinstance(snr_db, Tensor):
        return multiplicative_noise_std(y, snr_db)
    d = y[0].numel() if y.ndim > 1 else 1
    norm = torch.linalg.vector_norm(y.reshape(y.shape[0], -1), dim=1)
    norm = norm.mul_(1.0 / math.sqrt(d * db_to_linear(snr_db)))
    return norm.reshape((-1,) + (1,) * (y.ndim - 1))


class SNRLayer(DeviceLayer):
    """Exact MVM plus output noise; the control is the SNR in dB itself."""

    device_kind = "snr"

    def native_control(self) -> float:
        return float(self.device_model.spec.snr_db)

    def control_for(self, snr_db: float) -> float:
        return float(snr_db)

    def _ref_power(self) -> float:
        """Mean per-element output power on the calibration batch (for the additive mode)."""
        if "ref_power" not in self._controls:
            x = self.calibration_inputs()
            with torch.no_grad():
                y = x @ self.matrix().T
            self._controls["ref_power"] = float(y.double().pow(2).mean())
        return self._controls["ref_power"]

    def _noisy(self, y: Tensor, control: Control, stream: NoiseStream) -> Tensor:
        """``y`` plus its noise, in place (``y`` is a fresh MVM output): one draw, one fused op."""
        if self.device_model.spec.mode == "multiplicative":
            if not isinstance(control, Tensor) and math.isinf(control):
                return y
            std = _noise_std(y, control)  # (B, 1, ..., 1), Eq. 4 width-fixed
            return y.addcmul_(std, stream.randn(y.shape, y.dtype, y.device))
        snr = db_to_linear(control)
        if isinstance(snr, Tensor):
            eta = torch.sqrt(self._ref_power() / snr).to(y.dtype)
            eta = eta.reshape((-1,) + (1,) * (y.ndim - 1))
            return y.addcmul_(eta, stream.randn(y.shape, y.dtype, y.device))
        if math.isinf(snr):
            return y
        eta = math.sqrt(self._ref_power() / snr)  # Eq. 8: fixed std per layer
        return y.add_(stream.randn(y.shape, y.dtype, y.device), alpha=eta)

    def _mvm(self, x: Tensor, control: Control, stream: NoiseStream) -> Tensor:
        return self._noisy(x @ self.matrix().T, control, stream)

    def device_output(self, x: Tensor, control: Control) -> Tensor:
        return self._noisy(self.exact(x), control, self._stream(x.device))


class SNRDevice(Device):
    """Idealised noisy channel at a nominal SNR (no static noise)."""

    kind = "snr"
    layer_class = SNRLayer

    def __init__(self, spec, chip_seed: int = 0, target_snr_db: float | None = None):
        super().__init__(spec, chip_seed, target_snr_db)

    def native_snr_db(self) -> float:
        return float(self.spec.snr_db)

    def max_snr_db(self) -> float:
        return math.inf

    def describe(self) -> dict[str, object]:
        return {"mode": self.spec.mode, "snr_db": self.spec.snr_db}
