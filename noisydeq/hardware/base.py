"""Device interface, deployed layers and the model-level controls (architecture.md, Devices).

A :class:`Device` turns the ``nn.Linear`` / ``nn.Conv1d`` / ``nn.Conv2d`` layers of any
model into :class:`DeviceLayer` s whose matrix-vector products (MVMs) run on simulated
hardware. A deployed layer keeps the parameters ``weight`` / ``bias`` of the layer it
replaces (same ``state_dict`` keys, the digital reference) and adds only non-persistent
state. The bias is added digitally after the MVM; the SNR of a layer is measured on the
MVM output ``W x`` (DESIGN §1: ‖y‖²/E‖ε‖², batch totals).

Noise comes in two kinds. *Static* noise belongs to one chip instance
(:meth:`Device.new_chip`) and is drawn from a generator seeded by (chip seed, layer name).
*Dynamic* noise is drawn at every forward through the layer's
:class:`~noisydeq.noise.NoiseStream` (counter-based: a sample's numbers are a function of
its own address), so a batch that stacks several SNR levels (block stream) draws what the
separate runs would, and a row subset draws its own rows only.

Each physical device has one *control* (SNR in dB for ``snr``, the noise scale for
``rram``, the optical power per MAC for ``photonic``); a target SNR is turned into the
control by calibration on the layer's own weights (:mod:`noisydeq.hardware.calibration`).
Gradients reach the digital weights through a straight-through estimator: the backward
pass is the one of the exact layer (paper Eq. 1 trained hardware-aware).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from noisydeq.errors import NoisyDEQError
from noisydeq.noise import (
    NoiseStream,
    ReplayStream,
    active_subset,
    derive_seed,
    measured_snr_db,
    seeded_generator,
    subset_rows,
)

#: reference MVM used for a device's native SNR and reachability checks (the paper's
#: widest DEQ, 467, with nn.Linear's default init and inputs uniform in [-1, 1]).
REF_WIDTH = 467
REF_BATCH = 256
CALIB_ROWS = 512
CALIB_SEED = 12345

#: layers that stay digital (elementwise affine periphery): allowed, left untouched. A module
#: whose class sets ``digital_periphery = True`` (its own parameters act elementwise after an
#: MVM, e.g. :class:`noisydeq.models.wnconv.WeightNorm`'s gain) is allowed too; the Linear/Conv
#: layers inside it are mapped.
DIGITAL_OK: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.LayerNorm,
    nn.GroupNorm,
)
MAPPABLE: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d)

Control = float | Tensor
_REF_CACHE: dict[tuple, float] = {}  # reference-MVM results by (what, kind, spec, chip)


def straight_through(exact: Tensor, device_out: Tensor) -> Tensor:
    """Value of ``device_out`` with the gradient of ``exact`` (straight-through estimator).

    ``device_out`` is a fresh tensor outside autograd; it is overwritten (one allocation
    fewer per forward).
    """
    if not exact.requires_grad:
        return device_out
    return exact + device_out.sub_(exact.detach())


class DeviceLayer(nn.Module):
    """A Linear/Conv layer whose MVM runs on a device; ``weight``/``bias`` are the digital ones.

    Subclasses implement :meth:`_mvm` (vectors in the last dimension, ``(B, ..., n_in)`` →
    ``(B, ..., n_out)``, without bias) for a per-sample control, and the calibration
    hooks :meth:`native_control`, :meth:`control_for` and :meth:`max_snr_db`.
    """

    device_kind = "base"

    def __init__(self, device: Device, module: nn.Module, name: str) -> None:
        super().__init__()
        self.weight = module.weight
        self.bias = module.bias
        self.layer_name = name
        self.device_model = device
        self.conv: dict[str, Any] = {}
        if isinstance(module, DeviceLayer):  # re-deploying a deployed model
            self.op, self.conv = module.op, dict(module.conv)
        else:
            self.op = {nn.Linear: "linear", nn.Conv1d: "conv1d", nn.Conv2d: "conv2d"}[type(module)]
            if self.op != "linear":
                self.conv = _conv_args(module, name)
        self.stream: NoiseStream | None = None
        self.sample_snr: Control | None = None
        self.measure = False
        self.last_snr_db: float | None = None
        self.calib_x: Tensor | None = None
        #: calibration results: SNR level (dB) -> control, plus named entries a device keeps
        #: next to them (e.g. "max": the SNR ceiling, "ref_power": the snr device's reference)
        self._controls: dict[float | str, float] = {}
        #: (targets tensor, its version, resolved per-sample controls) of the last forward
        self._sample_controls: tuple[Tensor, int, Tensor] | None = None
        #: (key, exact MVM, replayed stream) of the last calibration inputs (measured_snr_at)
        self._measure_cache: tuple[tuple, Tensor, ReplayStream] | None = None
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

    # ------------------------------------------------------------------ controls
    def native_control(self) -> float:
        raise NotImplementedError

    def max_snr_db(self) -> float:
        """Largest SNR this layer can reach (its calibration ceiling)."""
        return math.inf

    def control_for(self, snr_db: float) -> float:
        """Control value giving ``snr_db`` on this layer (calibrated once, then cached)."""
        if snr_db not in self._controls:
            self._controls[snr_db] = self._calibrate(snr_db)
        return self._controls[snr_db]

    def _calibrate(self, snr_db: float) -> float:
        raise NotImplementedError

    def calibrated_controls(self) -> dict[float | str, float]:
        """A copy of what calibration found so far (:attr:`_controls`), e.g. to store it."""
        return dict(self._controls)

    def load_controls(self, controls: Mapping[float | str, float]) -> None:
        """Adopt controls found earlier for this layer, chip and calibration inputs (a cache
        keyed by all three: :mod:`noisydeq.hardware.calibration_store`)."""
        self._controls.update(controls)

    def reset_calibration(self) -> None:
        """Forget calibrated controls (after training or a new calibration batch)."""
        self._controls.clear()
        self._sample_controls = None

    def calibration_inputs(self) -> Tensor:
        """Input vectors (rows, n_in) for calibration: captured ones, else uniform in [-1, 1]."""
        if self.calib_x is not None:
            return self.calib_x
        g = seeded_generator(CALIB_SEED)
        x = torch.rand((CALIB_ROWS, self.n_in), generator=g) * 2 - 1
        return x.to(device=self.weight.device, dtype=self.weight.dtype)

    def measured_snr_at(self, control: float, x: Tensor | None = None, seed: int = 0) -> float:
        """Measured MVM-output SNR (dB) at ``control`` on calibration vectors, fixed stream.

        The exact MVM and the stream's draws are the same at every control (common random
        numbers): both are computed once per (inputs, weights, seed) and reused.
        """
        x = self.calibration_inputs() if x is None else x
        key = (x.data_ptr(), x._version, tuple(x.shape), x.dtype, x.device,
               self.weight.data_ptr(), self.weight._version, seed)
        if self._measure_cache is None or self._measure_cache[0] != key:
            with torch.no_grad():
                exact = F.linear(x, self.matrix())
            self._measure_cache = (key, exact, ReplayStream(derive_seed("calib", seed), x.device))
        _, exact, stream = self._measure_cache
        stream.rewind()
        with torch.no_grad():
            y = self._mvm(x, control, stream)
            return measured_snr_db(exact, y)

    def resolve_controls(self, batch: int) -> Control:
        """Per-sample (B,) or scalar control from ``sample_snr`` / the device target."""
        target = self.sample_snr if self.sample_snr is not None else self.device_model.target_snr_db
        if target is None:
            return self.native_control()
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
        exact = self.exact(x) if (grad or self.measure) else None
        if self.measure:
            self.last_snr_db = measured_snr_db(exact, y)
        if grad:
            y = straight_through(exact, y)
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


class Device:
    """A hardware model of an analog MVM (architecture.md, Devices).

    ``spec`` is the validated preset (:mod:`noisydeq.hardware.presets`); ``chip_seed``
    selects the chip instance (static noise); ``target_snr_db`` is ``None`` for the
    physical defaults (native SNR) or the SNR every deployed layer is calibrated to.
    """

    kind = "base"
    layer_class: type[DeviceLayer] = DeviceLayer

    def __init__(self, spec: Any, chip_seed: int = 0, target_snr_db: float | None = None):
        self.spec = spec
        self.chip_seed = int(chip_seed)
        self.target_snr_db = target_snr_db
        self._ref_cache: dict[str, float] = {}

    @property
    def name(self) -> str:
        return getattr(self.spec, "name", self.kind)

    def __repr__(self) -> str:
        target = "native" if self.target_snr_db is None else f"{self.target_snr_db:g} dB"
        return f"{type(self).__name__}({self.name!r}, chip={self.chip_seed}, snr={target})"

    # ------------------------------------------------------------ copies
    def new_chip(self, seed: int) -> Device:
        """The same device with another chip instance (another draw of static noise)."""
        out = copy.copy(self)
        out.chip_seed = int(seed)
        out._ref_cache = {}
        return out

    def at_snr(self, snr_db: float | None) -> Device:
        """A copy calibrated to ``snr_db`` (``None`` → physical defaults).

        Raises :class:`NoisyDEQError` stating the maximum when the reference MVM cannot
        reach it.
        """
        from noisydeq.hardware.calibration import check_reachable

        out = copy.copy(self)
        out._ref_cache = dict(self._ref_cache)
        if snr_db is None:
            out.target_snr_db = None
            return out
        snr_db = float(snr_db)
        if math.isnan(snr_db):
            raise NoisyDEQError("snr_db: must be a number of dB or inf")
        check_reachable(snr_db, self.max_snr_db(), f"device '{self.name}'")
        out.target_snr_db = snr_db
        return out

    # ------------------------------------------------------------ reference MVM
    def reference_layer(self) -> DeviceLayer:
        """The reference 467×467 layer (nn.Linear default init, seed 0) on this device."""
        g = torch.random.fork_rng(devices=[])
        with g:
            torch.manual_seed(0)
            lin = nn.Linear(REF_WIDTH, REF_WIDTH)
        return self.layer_class(self, lin, "reference")

    def _ref_key(self, what: str) -> tuple:
        return (what, self.kind, self.spec.model_dump_json(), self.chip_seed)

    def native_snr_db(self) -> float:
        """Measured SNR of the reference MVM at the physical defaults (dB)."""
        key = self._ref_key("native")
        if key not in _REF_CACHE:
            layer = self.reference_layer()
            _REF_CACHE[key] = layer.measured_snr_at(layer.native_control())
        return _REF_CACHE[key]

    def max_snr_db(self) -> float:
        """Highest SNR the reference MVM can be calibrated to (dB)."""
        key = self._ref_key("max")
        if key not in _REF_CACHE:
            _REF_CACHE[key] = self.reference_layer().max_snr_db()
        return _REF_CACHE[key]

    def describe(self) -> dict[str, Any]:
        """Key parameters for listings (``noisydeq devices``)."""
        return {}

    # ------------------------------------------------------------ deployment
    def deploy(self, model: nn.Module) -> nn.Module:
        """A deep copy of ``model`` whose Linear/Conv1d/Conv2d layers run on this device."""
        if not isinstance(model, nn.Module):
            raise NoisyDEQError(f"deploy: expected a torch nn.Module, got {type(model).__name__}")
        out = copy.deepcopy(model)
        if isinstance(out, MAPPABLE):
            return self.layer_class(self, out, "")
        _check_mappable(out)
        _replace(out, self, prefix="")
        return out


def _check_mappable(model: nn.Module) -> None:
    bad = []
    for name, mod in model.named_modules():
        if isinstance(mod, (*MAPPABLE, *DIGITAL_OK, DeviceLayer)):
            continue
        if getattr(mod, "digital_periphery", False):  # e.g. a weight-norm gain after the MVM
            continue
        if any(True for _ in mod.parameters(recurse=False)):
            bad.append(f"{name or '<root>'} ({type(mod).__name__})")
    if bad:
        raise NoisyDEQError(
            "cannot map these parametrised layers onto the device: "
            + ", ".join(bad)
            + " (supported: Linear, Conv1d, Conv2d; digital: BatchNorm, LayerNorm, GroupNorm)"
        )


def _replace(module: nn.Module, device: Device, prefix: str) -> None:
    for child_name, child in list(module.named_children()):
        full = f"{prefix}.{child_name}" if prefix else child_name
        if type(child) in (nn.Linear, nn.Conv1d, nn.Conv2d):
            setattr(module, child_name, device.layer_class(device, child, full))
        elif isinstance(child, DeviceLayer):
            setattr(module, child_name, device.layer_class(device, child, full))
        else:
            _replace(child, device, full)


# ---------------------------------------------------------------- model-level controls


def device_layers(model: nn.Module) -> dict[str, DeviceLayer]:
    """All deployed layers of ``model`` by qualified name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, DeviceLayer)}


def set_stream(model: nn.Module, stream: NoiseStream) -> None:
    """Draw the dynamic noise of every device layer from ``stream`` (full batch first)."""
    for layer in device_layers(model).values():
        layer.stream = stream


def set_sample_snr(model: nn.Module, snr_db: Tensor | float | None) -> None:
    """Per-sample (B,) SNR targets in dB (or one value, or ``None`` = device setting)."""
    for layer in device_layers(model).values():
        layer.sample_snr = snr_db


def set_measure(model: nn.Module, on: bool = True) -> None:
    """Measure each layer's SNR at every forward (costs one exact MVM per layer)."""
    for layer in device_layers(model).values():
        layer.measure = bool(on)
        if not on:
            layer.last_snr_db = None


def layer_snr_report(model: nn.Module) -> dict[str, float]:
    """Measured MVM-output SNR (dB) of each device layer in the last forward.

    Layers are measured only while :func:`set_measure` is on; others report ``nan``.
    """
    return {
        n: (math.nan if m.last_snr_db is None else m.last_snr_db)
        for n, m in device_layers(model).items()
    }


def calibrate(model: nn.Module, x: Tensor, *args: Any, **kwargs: Any) -> None:
    """Calibrate every device layer on the activations it sees for the batch ``x``.

    Runs one noise-free forward (targets at ``inf`` are not used: the exact MVM feeds the
    next layer), captures each layer's input vectors (at most 512 rows) and forgets the
    controls calibrated before.
    """
    layers = device_layers(model)
    captured: dict[str, Tensor] = {}
    handles = []

    def hook(name: str, layer: DeviceLayer):
        def fn(_mod: nn.Module, inputs: tuple[Tensor, ...], _out: Tensor) -> None:
            xin = inputs[0].detach()
            rows = xin.reshape(-1, layer.n_in) if layer.op == "linear" else layer._patches(xin)[0]
            rows = rows.reshape(-1, layer.n_in)
            prev = captured.get(name)
            captured[name] = rows if prev is None else torch.cat([prev, rows])

        return fn

    saved = {n: m.forward for n, m in layers.items()}
    for name, layer in layers.items():
        handles.append(layer.register_forward_hook(hook(name, layer)))
        layer.forward = _exact_forward(layer)  # type: ignore[method-assign]
    try:
        with torch.no_grad():
            model(x, *args, **kwargs)
    finally:
        for h in handles:
            h.remove()
        for name, layer in layers.items():
            layer.forward = saved[name]  # type: ignore[method-assign]
    for name, layer in layers.items():
        if name in captured:
            rows = captured[name]
            g = seeded_generator(CALIB_SEED)
            if rows.shape[0] > CALIB_ROWS:
                idx = torch.randperm(rows.shape[0], generator=g)[:CALIB_ROWS]
                rows = rows[idx.to(rows.device)]
            layer.calib_x = rows.contiguous()
        layer.reset_calibration()


def _exact_forward(layer: DeviceLayer):
    def fn(x: Tensor) -> Tensor:
        y = layer.exact(x)
        if layer.bias is not None:
            y = y + layer.bias.reshape((1, -1) + (1,) * (y.ndim - 2))
        return y

    return fn
