"""The ``ideal`` device: exact MVMs, infinite SNR (the digital reference, paper SNR = ∞)."""

from __future__ import annotations

import math

from torch import Tensor

from noisydeq.errors import NoisyDEQError
from noisydeq.hardware.base import Control, Device, DeviceLayer
from noisydeq.noise import NoiseStream


class IdealLayer(DeviceLayer):
    """Exact layer: y = W x (+ b); it draws no noise."""

    device_kind = "ideal"

    def native_control(self) -> float:
        return math.inf

    def control_for(self, snr_db: float) -> float:
        if not math.isinf(snr_db):
            raise NoisyDEQError(
                f"device 'ideal' is exact (SNR = inf); it cannot run at {snr_db:g} dB "
                "(use the 'snr' device for a noisy channel)"
            )
        return math.inf

    def _mvm(self, x: Tensor, control: Control, stream: NoiseStream) -> Tensor:
        return x @ self.matrix().T

    def device_output(self, x: Tensor, control: Control) -> Tensor:
        return self.exact(x)


class IdealDevice(Device):
    """Exact device (no static or dynamic noise)."""

    kind = "ideal"
    layer_class = IdealLayer

    def native_snr_db(self) -> float:
        return math.inf

    def max_snr_db(self) -> float:
        return math.inf

    def at_snr(self, snr_db: float | None) -> Device:
        if snr_db is not None and not math.isinf(float(snr_db)):
            raise NoisyDEQError(
                f"device 'ideal' is exact (SNR = inf); it cannot be calibrated to {snr_db:g} dB "
                "(use the 'snr' device for a noisy channel)"
            )
        return super().at_snr(None)

    def describe(self) -> dict[str, object]:
        return {"noise": "none"}
