"""The ``ideal`` device: exact MVMs, infinite SNR (the digital reference, paper SNR = ∞)."""

from __future__ import annotations

import math

from torch import Tensor

from noisydeq.errors import NoisyDEQError
from noisydeq.hardware.base import Device
from noisydeq.hardware.layer import Control, DeviceLayer, Knobs
from noisydeq.noise import NoiseStream


class IdealLayer(DeviceLayer):
    """Exact layer: y = W x (+ b); it draws no noise."""

    device_kind = "ideal"

    def native_knobs(self) -> Knobs:
        return (0.0, 0.0)

    def chip_matrix(self, static: float) -> Tensor:
        return self.matrix().detach()

    def control_for(self, snr_db: float) -> Knobs:
        if not math.isinf(snr_db):
            raise NoisyDEQError(
                f"device 'ideal' is exact (SNR = inf); it cannot run at {snr_db:g} dB "
                "(use the 'snr' device for a noisy channel)"
            )
        return (0.0, 0.0)

    def snr_range(self, x: Tensor | None = None) -> tuple[float, float]:
        return (math.inf, math.inf)

    def _mvm(self, x: Tensor, control: Control, stream: NoiseStream) -> Tensor:
        return x @ self.matrix().T

    def device_output(self, x: Tensor, control: Control) -> Tensor:
        return self.exact(x)


class IdealDevice(Device):
    """Exact device (no static or dynamic noise)."""

    kind = "ideal"
    layer_class = IdealLayer

    def native_parts(self) -> dict[str, float]:
        return {"static": math.inf, "dynamic": math.inf, "total": math.inf}

    def snr_range(self) -> tuple[float, float]:
        return (math.inf, math.inf)

    def at_snr(self, snr_db: float | None) -> Device:
        if snr_db is not None and not math.isinf(float(snr_db)):
            raise NoisyDEQError(
                f"device 'ideal' is exact (SNR = inf); it cannot be calibrated to {snr_db:g} dB "
                "(use the 'snr' device for a noisy channel)"
            )
        return super().at_snr(None)

    def describe(self) -> dict[str, object]:
        return {"noise": "none"}
