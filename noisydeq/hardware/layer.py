"""The deployed layer: a Linear/Conv whose MVM runs on a device (architecture.md, Devices).

A :class:`DeviceLayer` keeps the parameters ``weight`` / ``bias`` of the layer it replaces
(same ``state_dict`` keys, the digital reference) and adds only non-persistent state. The
bias is added digitally after the MVM; the SNR of a layer is measured on the MVM output
``W x`` (DESIGN §1: ‖y‖²/E‖ε‖², batch totals), split into its static, dynamic and total
parts (:mod:`noisydeq.hardware.parts`). Static noise is drawn from a generator seeded by
(chip seed, layer name): the chip's effective weights W_chip (:meth:`DeviceLayer.chip_matrix`);
dynamic noise at every forward through the layer's :class:`~noisydeq.noise.NoiseStream`.
Each layer has two knobs (:data:`Knobs` = (static, dynamic)), set for a target SNR by
calibration on its own weights and inputs (:mod:`noisydeq.hardware.modes`); gradients are
straight-through (:mod:`noisydeq.hardware.gradient`).

Length (about 490 lines): one idea, one class — the contract every device implements
(shapes, knobs, measurement, calibration, forward), whose methods share the layer's caches
(chip matrices, measured inputs, knob tables, resolved per-sample controls); split, each part
would reach into the others' private state. The device it belongs to (``device_model``) is a
:class:`noisydeq.hardware.base.Device`, not imported here: base imports this module.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from noisydeq.errors import NoisyDEQError
from noisydeq.hardware import modes
from noisydeq.hardware.gradient import (
    PeakScaledLinear,
    input_peaks,
    straight_through,
    target_scale,
)
from noisydeq.hardware.parts import Parts, parts_of, row_powers
from noisydeq.noise import (
    NoiseStream,
    ReplayStream,
    active_subset,
    derive_seed,
    measured_snr_db,
    seeded_generator,
    subset_rows,
)

CALIB_ROWS = 512
CALIB_SEED = 12345

#: (static knob, dynamic knob) of a layer (:data:`modes.Knobs`); a per-sample control is a
#: (B, 2) float64 tensor
Knobs = modes.Knobs
Control = Knobs | Tensor
#: effective chip matrices kept per layer (static knob -> W_chip), least recently used out
CHIP_MATRICES = 8


def control_groups(control: Control, rows: int) -> list[tuple[slice, Knobs]]:
    """Runs of equal knobs over ``rows`` rows: [(row slice, knobs)].

    A scalar control is one run. A batched sweep stacks its levels in blocks, so each level
    is one contiguous slice (no gather / scatter of its rows).
    """
    if not isinstance(control, Tensor):
        return [(slice(0, rows), (float(control[0]), float(control[1])))]
    c = control.reshape(-1, 2)
    if c.shape[0] != rows:
        raise ValueError(f"control has {c.shape[0]} rows, the batch {rows}")
    if rows == 0:
        return []
    # run starts: row 0 and every row that differs from the one before (what
    # ``unique_consecutive(dim=0)`` finds, at ~1/50 of its cost on a (B, 2) tensor)
    starts = (c[1:] != c[:-1]).any(dim=1).nonzero().squeeze(1).add_(1).tolist()
    bounds = [0, *starts, rows]
    values = c[bounds[:-1]].tolist()
    return [(slice(a, b), (float(ks), float(kd)))
            for a, b, (ks, kd) in zip(bounds[:-1], bounds[1:], values, strict=True)]


def expand_rows(control: Control, lead: tuple[int, ...]) -> Control:
    """A per-sample (B, 2) control repeated over the other leading dims of ``lead`` (B, L, ...)
    as one row per vector; a scalar control is returned unchanged."""
    if not isinstance(control, Tensor) or len(lead) == 1:
        return control
    c = control.reshape(-1, *([1] * (len(lead) - 1)), 2).expand(*lead, 2)
    return c.reshape(-1, 2)


class DeviceLayer(nn.Module):
    """A Linear/Conv layer whose MVM runs on a device; ``weight``/``bias`` are the digital ones.

    Subclasses implement :meth:`_mvm` (vectors in the last dimension, ``(B, ..., n_in)`` →
    ``(B, ..., n_out)``, without bias) for a control (:data:`Knobs` or per-sample (B, 2)),
    :meth:`chip_matrix` (the effective weights at a static knob), the knob description
    (:meth:`native_knobs`, :meth:`knob_bounds`, :attr:`raises_snr`, :meth:`joint_knobs`).
    """

    device_kind = "base"
    #: whether :meth:`error_scale` is :meth:`peak_scale` (a Linear layer's scaled gradient
    #: then takes the fused :class:`PeakScaledLinear`)
    peak_scaled = False
    #: whether every forward draws one standard normal per output, (*x.shape[:-1], n_out),
    #: as its first draw (a training batch draws these ahead: NoiseStream.draw_ahead)
    draws_output_noise = False
    #: whether the measured SNR of the part rises with the (static, dynamic) knob
    raises_snr: tuple[bool, bool] = (False, False)

    def __init__(self, device: Any, module: nn.Module, name: str) -> None:
        super().__init__()
        self.weight = module.weight
        self.bias = module.bias
        self.layer_name = name
        self.device_model = device
        self.conv: dict[str, Any] = {}
        #: gradient estimator: plain straight-through (False) or scaled (True, what
        #: hardware-aware training uses; :func:`straight_through`, :func:`set_scaled_gradient`)
        self.scaled_gradient = False
        if isinstance(module, DeviceLayer):  # re-deploying a deployed model
            self.op, self.conv = module.op, dict(module.conv)
            self.scaled_gradient = module.scaled_gradient
        else:
            self.op = {nn.Linear: "linear", nn.Conv1d: "conv1d", nn.Conv2d: "conv2d"}[type(module)]
            if self.op != "linear":
                self.conv = _conv_args(module, name)
        self.stream: NoiseStream | None = None
        self.sample_snr: Tensor | float | None = None
        self.measure = False
        self.last_snr_db: float | None = None
        self.last_parts: Parts | None = None
        self.calib_x: Tensor | None = None
        #: calibration results: SNR level (dB) -> knobs
        self._controls: dict[float, Knobs] = {}
        #: (targets tensor, its version, resolved per-sample controls) of the last forward
        self._sample_controls: tuple[Tensor, int, Tensor] | None = None
        #: (key, exact MVM, replayed stream, {static knob: W_chip x}, inputs) of the last
        #: measured inputs
        self._measure_cache: tuple[tuple, Tensor, ReplayStream, dict, Tensor] | None = None
        self._tables: dict[tuple, Any] = {}  # KnobTable per (path, inputs)
        self._ranges: dict[tuple, tuple[float, float]] = {}
        self._chip_mats: OrderedDict[tuple, Tensor] = OrderedDict()
        self.static_seed = derive_seed("chip", device.chip_seed, name)

    # ------------------------------------------------------------------ shapes
    @property
    def n_in(self) -> int:
        return int(self.weight[0].numel())

    @property
    def n_out(self) -> int:
        return int(self.weight.shape[0])

    def matrix(self) -> Tensor:
        """The weight as an (n_out, n_in) matrix (conv kernels flattened)."""
        return self.weight.reshape(self.weight.shape[0], -1)

    def exact(self, x: Tensor) -> Tensor:
        """Noise-free MVM of the digital weights (no bias)."""
        if self.op == "linear":
            return F.linear(x, self.weight)
        fn = F.conv1d if self.op == "conv1d" else F.conv2d
        return fn(x, self.weight, None, **self.conv)

    def _patches(self, x: Tensor) -> tuple[Tensor, tuple[int, ...]]:
        """Input vectors of every output position: (B, L, n_in), and the output map shape."""
        if self.op == "conv1d":
            x = x.unsqueeze(2)
            k = (1, self.weight.shape[-1])
            st, pa, di = (1, self.conv["stride"][0]), (0, self.conv["padding"][0]), (
                1,
                self.conv["dilation"][0],
            )
        else:
            k = tuple(self.weight.shape[-2:])
            st, pa, di = self.conv["stride"], self.conv["padding"], self.conv["dilation"]
        cols = F.unfold(x, k, dilation=di, padding=pa, stride=st)  # (B, n_in, L)
        h = (x.shape[2] + 2 * pa[0] - di[0] * (k[0] - 1) - 1) // st[0] + 1
        w = (x.shape[3] + 2 * pa[1] - di[1] * (k[1] - 1) - 1) // st[1] + 1
        out_shape = (w,) if self.op == "conv1d" else (h, w)
        return cols.transpose(1, 2), out_shape

    def input_rows(self, x: Tensor) -> Tensor:
        """The input vectors of a layer input ``x`` as rows (n, n_in) (conv: its patches)."""
        rows = x.reshape(-1, self.n_in) if self.op == "linear" else self._patches(x)[0]
        return rows.reshape(-1, self.n_in)

    # ------------------------------------------------------------------ knobs
    @property
    def noise_mode(self) -> str:
        return getattr(self.device_model, "noise_mode", modes.DEFAULT_MODE)

    def native_knobs(self) -> Knobs:
        """The (static, dynamic) knobs at the device's physical values."""
        raise NotImplementedError

    def knob_bounds(self, which: int) -> tuple[float, float]:
        """Search bracket (lo, hi), 0 < lo < hi, of the static (0) or dynamic (1) knob."""
        raise NotImplementedError

    def joint_bounds(self) -> tuple[float, float]:
        """Search bracket of the joint scale s (:meth:`joint_knobs`)."""
        return (1e-4, 1e3)

    def joint_knobs(self, s: float) -> Knobs:
        """Knobs at one scale ``s`` on every noise source (s = 1: native; SNR falls with s)."""
        raise NotImplementedError

    def joint_scale(self, knobs: Knobs) -> float | None:
        """The joint scale s giving ``knobs``, or None when they are off the joint path."""
        return None

    def chip_matrix(self, static: float) -> Tensor:
        """The chip's effective weights W_chip (n_out, n_in) at the static knob ``static``."""
        raise NotImplementedError

    def _chip_matrix(self, static: float) -> Tensor:
        """:meth:`chip_matrix`, kept for the last few static knobs (per weight version)."""
        key = (float(static), self.weight._version, self.weight.data_ptr(), self.weight.device)
        if key in self._chip_mats:
            self._chip_mats.move_to_end(key)
            return self._chip_mats[key]
        with torch.no_grad():
            w = self.chip_matrix(static).detach()
        self._chip_mats[key] = w
        while len(self._chip_mats) > CHIP_MATRICES:
            self._chip_mats.popitem(last=False)
        return w

    # ------------------------------------------------------------------ measurement
    def signal_power(self, x: Tensor) -> float:
        """Σ‖Wx‖² over the input rows ``x`` (0: the layer carries no signal, its SNR is
        undefined)."""
        with torch.no_grad():
            return float(F.linear(x, self.matrix()).double().square().sum())

    def measure_parts(
        self, knobs: Knobs, x: Tensor | None = None, seed: int = 0, dynamic: bool = True
    ) -> Parts:
        """Static, dynamic and total error powers at ``knobs`` on the rows ``x`` (calibration
        vectors by default), with a fixed calibration stream (common random numbers).

        The exact MVM, the stream's draws and W_chip x per static knob are computed once per
        (inputs, weights, seed) and reused. ``dynamic=False`` skips the device read (only
        the static part is filled in).
        """
        x = self.calibration_inputs() if x is None else x
        # keyed by the inputs tensor itself (held by the cache, so its id is not reused) and
        # its version: an address-based key could match a new tensor at a freed address
        key = (id(x), x._version, self.weight.data_ptr(), self.weight._version, seed)
        if self._measure_cache is None or self._measure_cache[0] != key:
            with torch.no_grad():
                exact = F.linear(x, self.matrix())
            self._measure_cache = (key, exact, ReplayStream(derive_seed("calib", seed), x.device),
                                   OrderedDict(), x)
        _, exact, stream, chips, _ = self._measure_cache
        ks = float(knobs[0])
        if ks not in chips:
            with torch.no_grad():
                chips[ks] = F.linear(x, self._chip_matrix(ks).to(x.dtype))
            while len(chips) > CHIP_MATRICES:
                chips.popitem(last=False)
        chip = chips[ks]
        if not dynamic:
            e = exact.double()
            return Parts(float(e.square().sum()), float((chip.double() - e).square().sum()),
                         math.nan, math.nan)
        stream.rewind()
        with torch.no_grad():
            y = self._mvm(x, (ks, float(knobs[1])), stream)
        return parts_of(row_powers(exact, chip, y))

    def measured_snr_at(self, knobs: Knobs, x: Tensor | None = None, seed: int = 0) -> float:
        """Measured total MVM-output SNR (dB) at ``knobs`` on calibration vectors."""
        return self.measure_parts(knobs, x, seed).total_db

    def chip_output(self, x: Tensor, control: Control) -> Tensor:
        """W_chip x of the rows ``x`` (rows, n_in) at their static knobs (no bias)."""
        groups = control_groups(control, x.shape[0])
        if len(groups) == 1:
            return F.linear(x, self._chip_matrix(groups[0][1][0]).to(x.dtype))
        out = x.new_empty((x.shape[0], self.n_out))
        for sl, (ks, _kd) in groups:
            out[sl] = F.linear(x[sl], self._chip_matrix(ks).to(x.dtype))
        return out

    def row_powers(self, x: Tensor, y: Tensor, control: Control) -> Tensor:
        """Per-vector (signal, static, dynamic, total) powers of a forward's inputs ``x`` and
        device outputs ``y`` (no bias) at ``control`` (scalar or per-sample): (vectors, 4).

        Computed in float64, so a vector's powers do not depend on how many vectors are
        measured with it (a batched sweep and a per-level one agree to the last bit)."""
        if self.op == "linear":
            rows, out = x.reshape(-1, self.n_in), y.reshape(-1, self.n_out)
            control = expand_rows(control, tuple(x.shape[:-1]))
        else:
            cols, _ = self._patches(x)
            rows = cols.reshape(-1, self.n_in)
            out = y.reshape(y.shape[0], self.n_out, -1).transpose(1, 2).reshape(-1, self.n_out)
            control = expand_rows(control, tuple(cols.shape[:-1]))
        rows = rows.double()
        with torch.no_grad():
            return row_powers(F.linear(rows, self.matrix().double()),
                              self.chip_output(rows, control), out)

    # ------------------------------------------------------------------ calibration
    def control_for(self, snr_db: float) -> Knobs:
        """Knobs giving ``snr_db`` on this layer's calibration inputs in the device's noise
        mode (calibrated once, then kept)."""
        if snr_db not in self._controls:
            if math.isinf(snr_db) and snr_db > 0 and self.device_kind == "ideal":
                return self.native_knobs()
            self._controls[snr_db] = self.calibrate_knobs(
                snr_db, self.calibration_inputs(), table=True
            )
        return self._controls[snr_db]

    def calibrate_knobs(
        self, snr_db: float, x: Tensor, *, start: Knobs | None = None, table: bool = False
    ) -> Knobs:
        """Knobs meeting ``snr_db`` on the input rows ``x`` (:func:`modes.calibrate`)."""
        what = f"{self.device_kind} layer '{self.layer_name}'"
        return modes.calibrate(self, snr_db, x, self.noise_mode, start=start, table=table,
                               what=what)

    def recalibrate(
        self, snr_db: float, x: Tensor, start: Knobs, prior: tuple[Knobs, float] | None = None
    ) -> tuple[Knobs, float]:
        """(knobs meeting ``snr_db`` for the input rows ``x`` made with ``start``, the target
        part's SNR at ``start`` there) (:func:`modes.search`; ``prior``: an earlier round's)."""
        what = f"{self.device_kind} layer '{self.layer_name}'"
        return modes.search(self, snr_db, x, self.noise_mode, start=start, prior=prior,
                            what=what)

    def _inputs_key(self, x: Tensor) -> tuple | None:
        """Cache key of the calibration inputs (None for other inputs: not cached)."""
        if x is not self.calib_x:
            return None
        return (id(x), x._version, self.weight.data_ptr(), self.weight._version)

    def knob_table(self, route: modes.Route, x: Tensor, snr: Callable[[float], float]):
        """This chip's measured SNR-vs-knob table of ``route`` on the inputs ``x`` (shared
        by every target calibrated on the calibration inputs; one per path)."""
        key = self._inputs_key(x)
        if key is None:
            return modes.new_table(route, snr)
        key = (route, *key)
        if key not in self._tables:
            self._tables[key] = modes.new_table(route, snr)
        return self._tables[key]

    def snr_range(self, x: Tensor | None = None) -> tuple[float, float]:
        """(lowest, highest) SNR this layer reaches in its noise mode on ``x`` (calibration
        inputs by default, whose range is kept); (nan, nan) when it carries no signal."""
        x = self.calibration_inputs() if x is None else x
        key = self._inputs_key(x)
        if key is None:
            return modes.snr_range(self, x, self.noise_mode)
        key = (self.noise_mode, *key)
        if key not in self._ranges:
            self._ranges[key] = modes.snr_range(self, x, self.noise_mode)
        return self._ranges[key]

    def max_snr_db(self) -> float:
        """Largest SNR this layer can reach (its calibration ceiling) in its noise mode."""
        return self.snr_range()[1]

    def calibrated_controls(self) -> dict[float, Knobs]:
        """A copy of what calibration found so far (:attr:`_controls`), e.g. to store it."""
        return dict(self._controls)

    def load_controls(self, controls: Mapping[float, Knobs]) -> None:
        """Adopt controls found earlier for this layer, chip and calibration inputs (a cache
        keyed by all three: :mod:`noisydeq.hardware.calibration_store`)."""
        self._controls.update({float(k): (float(v[0]), float(v[1])) for k, v in controls.items()})
        self._sample_controls = None

    def reset_calibration(self) -> None:
        """Forget calibrated controls (after training or a new calibration batch)."""
        self._controls.clear()
        self._sample_controls = None
        self._tables.clear()
        self._ranges.clear()

    def calibration_inputs(self) -> Tensor:
        """Input vectors (rows, n_in) for calibration: captured ones, else uniform in [-1, 1]."""
        if self.calib_x is not None:
            return self.calib_x
        g = seeded_generator(CALIB_SEED)
        x = torch.rand((CALIB_ROWS, self.n_in), generator=g) * 2 - 1
        self.calib_x = x.to(device=self.weight.device, dtype=self.weight.dtype)
        return self.calib_x

    def resolve_controls(self, batch: int) -> Control:
        """Per-sample (B, 2) or scalar knobs from ``sample_snr`` / the device target."""
        target = self.sample_snr if self.sample_snr is not None else self.device_model.target_snr_db
        if target is None:
            return self.native_knobs()
        if not isinstance(target, Tensor):
            return self.control_for(float(target))
        t = target.detach().reshape(-1)
        if t.numel() == 1:
            return self.control_for(float(t))
        subset = active_subset(batch)  # a solver evaluating only some rows of the batch
        if t.numel() != (batch if subset is None else subset.total):
            raise NoisyDEQError(
                f"per-sample SNR has {t.numel()} values but the batch has {batch} samples"
            )
        cached = self._sample_controls
        if cached is not None and cached[0] is target and cached[1] == target._version:
            # same targets as the last forward (e.g. every DEQ iteration)
            return subset_rows(cached[2], batch)
        values = t.double().cpu().tolist()
        table = {v: self.control_for(v) for v in set(values)}
        out = torch.tensor([table[v] for v in values], dtype=torch.float64)
        out = out.to(self.weight.device)
        self._sample_controls = (target, target._version, out)
        return subset_rows(out, batch)

    # ------------------------------------------------------------------ forward
    def _mvm(self, x: Tensor, control: Control, stream: NoiseStream) -> Tensor:
        raise NotImplementedError

    def error_scale(self, x: Tensor, exact: Tensor) -> Tensor | None:
        """A differentiable per-vector scale s(W, x) the device error is proportional to
        at fixed knobs and draws, broadcasting against the output (:func:`straight_through`),
        or None when the error does not depend on the weights or inputs."""
        return None

    def calibrated_target(self) -> bool:
        """Whether this layer runs at one target SNR set by calibration (the device's, or
        one ``sample_snr`` for the whole batch): its knobs then follow the signal power."""
        if self.sample_snr is None:
            return self.device_model.target_snr_db is not None
        return not isinstance(self.sample_snr, Tensor) or self.sample_snr.numel() == 1

    def peak_scale(self, x: Tensor) -> Tensor:
        """max|W| · max|x| per input vector: the scale of a read whose inputs are normalised
        by their max |x| and whose weights by max|W| (RRAM, photonic): the device output
        of c·W or c·x is c times that of W or x, with the same draws."""
        return self.matrix().abs().amax() * input_peaks(x, self.op, self.conv,
                                                        self.weight.shape[2:])

    def _stream(self, device: torch.device) -> NoiseStream:
        if self.stream is None:
            self.stream = NoiseStream.from_seed(derive_seed("dynamic", self.static_seed), device)
        return self.stream

    def device_output(self, x: Tensor, control: Control) -> Tensor:
        """Device MVM output without bias (Linear: (B, n_out); Conv: (B, C_out, ...))."""
        stream = self._stream(x.device)
        if isinstance(control, Tensor):
            control = control.to(x.device)
        if self.op == "linear":
            return self._mvm(x, control, stream)
        cols, out_shape = self._patches(x)
        y = self._mvm(cols, control, stream)  # (B, L, C_out)
        return y.transpose(1, 2).reshape(x.shape[0], self.n_out, *out_shape)

    def forward(self, x: Tensor) -> Tensor:
        control = self.resolve_controls(x.shape[0])
        grad = torch.is_grad_enabled() and (self.weight.requires_grad or x.requires_grad)
        with torch.no_grad():
            y = self.device_output(x, control)  # a fresh tensor: updated in place below
        calibrated = self.scaled_gradient and self.calibrated_target()
        if (grad and not self.measure and self.scaled_gradient and not calibrated
                and self.peak_scaled and self.op == "linear" and x.ndim == 2):
            # hardware-aware training of an RRAM/photonic Linear layer: one autograd node
            return PeakScaledLinear.apply(y, x, self.weight, self.bias)
        exact = self.exact(x) if (grad or self.measure) else None
        if self.measure:
            self.last_snr_db = measured_snr_db(exact, y)
            self.last_parts = parts_of(self.row_powers(x.detach(), y, control))
        if grad:
            scale = self.error_scale(x, exact) if self.scaled_gradient else None
            if calibrated:
                scale = target_scale(exact, scale)
            y = straight_through(exact, y, scale)
        if self.bias is not None:
            bias = self.bias.reshape((1, -1) + (1,) * (y.ndim - 2))
            y = y + bias if torch.is_grad_enabled() and bias.requires_grad else y.add_(bias)
        return y

    def extra_repr(self) -> str:
        return f"{self.op}, {self.n_in}->{self.n_out}, device={self.device_kind}"


def _conv_args(module: nn.Module, name: str) -> dict[str, Any]:
    if module.groups != 1 or module.padding_mode != "zeros" or isinstance(module.padding, str):
        raise NoisyDEQError(
            f"layer '{name}' ({type(module).__name__}): devices map convolutions with groups=1, "
            "padding_mode='zeros' and integer padding only"
        )
    nd = 1 if isinstance(module, nn.Conv1d) else 2

    def fix(v: Any) -> tuple[int, ...]:
        return tuple(v) if isinstance(v, (tuple, list)) else (v,) * nd
    return {
        "stride": fix(module.stride),
        "padding": fix(module.padding),
        "dilation": fix(module.dilation),
    }
