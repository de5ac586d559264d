"""The ``snr`` device: an idealised channel at a nominal SNR (paper Eq. 3-4 at layer level).

Dynamic part (drawn at every MVM): ``multiplicative`` applies the paper's signal noise at
layer granularity with the width-independent convention of
:func:`noisydeq.noise.multiplicative`: per sample ε ~ N(0, ‖Wx‖²/(d·SNR_dyn)), so the
realised dynamic SNR equals the nominal one at every width. ``additive`` (paper Eq. 8)
draws ε ~ N(0, η²) with one η per layer fixed by calibration, η² = mean_b ‖W x_b‖²/(d·SNR_dyn)
over the layer's calibration inputs: the SNR is nominal on them and follows the signal
power elsewhere.

Static part (per chip, ``static_snr_db``; none by default): a multiplicative weight error,
W_chip = W ∘ (1 + σ ξ) with ξ ~ N(0, 1) drawn once per chip, as a memory cell's relative
programming error. σ is set exactly per chip on the calibration inputs x:
σ² = Σ‖Wx‖² / (SNR_static · Σ‖(W∘ξ)x‖²), so the static SNR there is the nominal one.

Knobs (:mod:`noisydeq.hardware.modes`): (σ, dynamic amplitude): r = SNR_dyn^(-1/2) for the
multiplicative channel, η for the additive one. Every mode is met in closed form, since
1/SNR_total = 1/SNR_static + 1/SNR_dyn (the dynamic noise is zero-mean and independent of
the chip's error): no search, and every target is reachable.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from noisydeq.hardware.base import Device
from noisydeq.hardware.layer import Control, DeviceLayer, Knobs
from noisydeq.hardware.modes import TARGET_PART
from noisydeq.hardware.parts import combine_db
from noisydeq.noise import NoiseStream, db_to_linear, seeded_generator


def _dyn_for_total(total_db: float, static_db: float) -> float:
    """The dynamic SNR that, with ``static_db``, gives ``total_db`` (needs total < static)."""
    if math.isinf(static_db):
        return total_db
    inv = 10 ** (-total_db / 10) - 10 ** (-static_db / 10)
    return math.inf if inv <= 0 else -10.0 * math.log10(inv)


class SNRLayer(DeviceLayer):
    """Exact MVM with a per-chip weight error and output noise at nominal SNRs."""

    device_kind = "snr"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._xi: tuple[tuple, Tensor] | None = None
        self._native: tuple[tuple, Knobs, Tensor] | None = None

    @property
    def spec(self):
        return self.device_model.spec

    # ------------------------------------------------------------ static part
    def _error_weight(self) -> Tensor:
        """W ∘ ξ: the chip's weight error at σ = 1 (ξ seeded by the chip, per weight version)."""
        key = (self.weight._version, self.weight.data_ptr(), self.weight.device, self.static_seed)
        if self._xi is None or self._xi[0] != key:
            g = seeded_generator(self.static_seed)
            xi = torch.randn(self.weight.shape, generator=g).to(self.weight.device,
                                                                  self.weight.dtype)
            self._xi = (key, self.weight.detach() * xi)
        return self._xi[1]

    def chip_matrix(self, static: float) -> Tensor:
        w = self.matrix().detach()
        return w + static * self._error_weight().reshape(w.shape) if static else w

    def _static_error(self, x: Tensor, vectors: bool = True) -> Tensor:
        """(W∘ξ) x of input vectors (``vectors``) or of the layer's raw input (conv)."""
        if vectors or self.op == "linear":
            return F.linear(x, self._error_weight().reshape(self.n_out, -1))
        fn = F.conv1d if self.op == "conv1d" else F.conv2d
        return fn(x, self._error_weight(), None, **self.conv)

    # ------------------------------------------------------------ knobs
    def _sigma(self, static_db: float, x: Tensor) -> float:
        """σ giving the static SNR ``static_db`` exactly on the input rows ``x``."""
        if math.isinf(static_db) and static_db > 0:
            return 0.0
        with torch.no_grad():
            signal = float(F.linear(x, self.matrix()).double().square().sum())
            err = float(self._static_error(x).double().square().sum())
        if not (signal > 0 and err > 0):
            return 0.0
        return math.sqrt(signal / (err * db_to_linear(static_db)))

    def _dynamic(self, dynamic_db: float, x: Tensor) -> float:
        """The dynamic knob for the dynamic SNR ``dynamic_db`` (r, or η on the inputs ``x``)."""
        if math.isinf(dynamic_db) and dynamic_db > 0:
            return 0.0
        if self.spec.mode == "multiplicative":
            return 10.0 ** (-dynamic_db / 20.0)
        with torch.no_grad():
            power = float(F.linear(x, self.matrix()).double().square().mean())
        return math.sqrt(power / db_to_linear(dynamic_db))

    def _knobs_at(self, static_db: float, dynamic_db: float, x: Tensor) -> Knobs:
        return (self._sigma(static_db, x), self._dynamic(dynamic_db, x))

    def native_knobs(self) -> Knobs:
        """The preset's static and dynamic SNR on the calibration inputs (kept per inputs)."""
        x = self.calibration_inputs()
        key = (id(x), x._version, self.weight.data_ptr(), self.weight._version)
        if self._native is None or self._native[0] != key:  # the entry holds x: ids stay unique
            knobs = self._knobs_at(float(self.spec.static_snr_db), float(self.spec.snr_db), x)
            self._native = (key, knobs, x)
        return self._native[1]

    def part_targets(self, target: float, mode: str) -> tuple[float, float]:
        """(static, dynamic) SNR (dB) that meet ``target`` in ``mode`` (closed forms)."""
        s0, d0 = float(self.spec.static_snr_db), float(self.spec.snr_db)
        if mode == "dynamic":
            return s0, target
        if mode == "static":
            return target, d0
        native = combine_db(s0, d0)
        if mode == "physical" and target <= native:
            return s0, _dyn_for_total(target, s0)
        shift = target - native  # joint path: both parts move by the same dB
        return s0 + shift, d0 + shift

    def calibrate_knobs(
        self, snr_db: float, x: Tensor, *, start: Knobs | None = None, table: bool = False
    ) -> Knobs:
        """Knobs meeting ``snr_db`` in the noise mode, in closed form (module docstring)."""
        if not self.signal_power(x) > 0:
            return self.native_knobs()
        return self._knobs_at(*self.part_targets(snr_db, self.noise_mode), x)

    def recalibrate(
        self, snr_db: float, x: Tensor, start: Knobs, prior: tuple[Knobs, float] | None = None
    ) -> tuple[Knobs, float]:
        """The closed form on ``x``, or with ``prior`` the generic secant step along the
        self-consistent SNR (:func:`noisydeq.hardware.modes.search`)."""
        if prior is not None:
            return super().recalibrate(snr_db, x, start, prior)
        part = TARGET_PART[self.noise_mode]
        was = math.nan
        if self.signal_power(x) > 0:
            was = self.measure_parts(start, x, dynamic=part != "static").db(part)
        return self.calibrate_knobs(snr_db, x), was

    def snr_range(self, x: Tensor | None = None) -> tuple[float, float]:
        x = self.calibration_inputs() if x is None else x
        return (-math.inf, math.inf) if self.signal_power(x) > 0 else (math.nan, math.nan)

    def knob_bounds(self, which: int) -> tuple[float, float]:
        return (1e-6, 1e3) if which == 0 else (1e-8, 1e4)

    def joint_knobs(self, s: float) -> Knobs:
        sigma0, dyn0 = self.native_knobs()
        return (s * sigma0, s * dyn0)

    def joint_scale(self, knobs: Knobs) -> float | None:
        sigma0, dyn0 = self.native_knobs()
        if dyn0 > 0:
            s = knobs[1] / dyn0
        elif sigma0 > 0:
            s = knobs[0] / sigma0
        else:
            return None
        joint = self.joint_knobs(s)
        close = all(math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-15)
                    for a, b in zip(joint, knobs, strict=True))
        return s if close else None

    # ------------------------------------------------------------ forward
    def _noisy(self, y: Tensor, x: Tensor, control: Control, stream: NoiseStream,
               vectors: bool) -> Tensor:
        """Device output from the exact MVM ``y`` (a fresh tensor, changed in place) of the
        inputs ``x`` (``vectors``: rows in the last dim; else the layer's raw input): plus
        the chip's weight error and the output noise (one draw of the batch)."""
        if isinstance(control, Tensor):
            c = control.reshape(-1, 2).to(y.device, y.dtype)
            shape = (-1,) + (1,) * (y.ndim - 1)
            std = self._noise_std(y, c[:, 1])  # from the exact output, before the error
            if bool((c[:, 0] != 0).any()):
                y = y.addcmul_(self._static_error(x, vectors), c[:, 0].reshape(shape))
            return y.addcmul_(std, stream.randn(y.shape, y.dtype, y.device))
        sigma, dyn = float(control[0]), float(control[1])
        std = self._noise_std(y, dyn) if dyn else 0.0
        if sigma:
            y = y.add_(self._static_error(x, vectors), alpha=sigma)
        if dyn == 0:
            return y
        return y.addcmul_(std, stream.randn(y.shape, y.dtype, y.device)) if isinstance(
            std, Tensor) else y.add_(stream.randn(y.shape, y.dtype, y.device), alpha=std)

    def _noise_std(self, exact: Tensor, dyn: float | Tensor) -> Tensor | float:
        """Per-sample noise std (B, 1, ..., 1): r·‖Wx‖/√d (multiplicative) or η (additive)."""
        shape = (-1,) + (1,) * (exact.ndim - 1)
        if self.spec.mode == "additive":
            return dyn.reshape(shape) if isinstance(dyn, Tensor) else float(dyn)
        d = exact[0].numel() if exact.ndim > 1 else 1
        norm = torch.linalg.vector_norm(exact.reshape(exact.shape[0], -1), dim=1)
        norm = norm.mul_(1.0 / math.sqrt(d))
        norm = norm * dyn if isinstance(dyn, Tensor) else norm.mul_(dyn)
        return norm.reshape(shape)

    def error_scale(self, x: Tensor, exact: Tensor) -> Tensor | None:
        """‖Wx‖ per sample for the multiplicative channel: its noise std is r·‖Wx‖/√d, so
        e·s/sg(s) is the reparameterised noise of Eq. 3-4 (exact gradient of the dynamic
        part; the static part σ(W∘ξ)x is also degree 1 in W and x). The additive channel's
        η is fixed by calibration: its error does not depend on W or x (None)."""
        if self.spec.mode != "multiplicative":
            return None
        flat = exact.reshape(exact.shape[0], -1) if exact.ndim > 1 else exact.reshape(-1, 1)
        norm = torch.linalg.vector_norm(flat, dim=1)
        return norm.reshape((-1,) + (1,) * (exact.ndim - 1))

    def _mvm(self, x: Tensor, control: Control, stream: NoiseStream) -> Tensor:
        return self._noisy(x @ self.matrix().T, x, control, stream, vectors=True)

    def device_output(self, x: Tensor, control: Control) -> Tensor:
        if isinstance(control, Tensor):
            control = control.to(x.device)
        return self._noisy(self.exact(x), x, control, self._stream(x.device), vectors=False)


class SNRDevice(Device):
    """Idealised noisy channel at a nominal SNR (static part optional)."""

    kind = "snr"
    layer_class = SNRLayer

    def native_snr_db(self) -> float:
        return combine_db(float(self.spec.static_snr_db), float(self.spec.snr_db))

    def native_parts(self) -> dict[str, float]:
        return {"static": float(self.spec.static_snr_db), "dynamic": float(self.spec.snr_db),
                "total": self.native_snr_db()}

    def snr_range(self) -> tuple[float, float]:
        return (-math.inf, math.inf)

    def describe(self) -> dict[str, object]:
        return {"mode": self.spec.mode, "snr_db": self.spec.snr_db,
                "static_snr_db": self.spec.static_snr_db}
