"""The device interface and deployment (architecture.md, Devices).

A :class:`Device` turns the ``nn.Linear`` / ``nn.Conv1d`` / ``nn.Conv2d`` layers of any
model into device layers (:class:`~noisydeq.hardware.layer.DeviceLayer`) whose
matrix-vector products (MVMs) run on simulated hardware (:meth:`Device.deploy`; the model
walk, the layers kept digital and :func:`check_digital_layers` are here too).

Noise comes in two kinds. *Static* noise belongs to one chip instance
(:meth:`Device.new_chip`) and is drawn from a generator seeded by (chip seed, layer name).
*Dynamic* noise is drawn at every forward through the layer's
:class:`~noisydeq.noise.NoiseStream` (counter-based: a sample's numbers are a function of
its own address), so a batch that stacks several SNR levels (block stream) draws what the
separate runs would, and a row subset draws its own rows only. A target SNR
(:meth:`Device.at_snr`) is turned into each layer's knobs by calibration, moving the
knob(s) the device's noise mode names (:mod:`noisydeq.hardware.modes`); the reachable range
is the one of a reference MVM (:meth:`Device.snr_range`).

The rest of the hardware layer, one idea a module: the deployed layer
(:mod:`noisydeq.hardware.layer`), its straight-through gradients
(:mod:`noisydeq.hardware.gradient`) and the model-level controls: noise streams,
measurement, calibration (:mod:`noisydeq.hardware.controls`). ``calibrate``,
``device_layers``, ``straight_through`` and ``input_peaks`` stay importable from here.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from noisydeq.errors import NoisyDEQError, did_you_mean
from noisydeq.hardware import modes
from noisydeq.hardware.controls import KEPT_DIGITAL, calibrate, device_layers  # noqa: F401 (moved)
from noisydeq.hardware.gradient import input_peaks, straight_through  # noqa: F401 (moved)
from noisydeq.hardware.layer import DeviceLayer

#: reference MVM used for a device's native SNR and reachability checks (the paper's
#: widest DEQ, 467, with nn.Linear's default init and inputs uniform in [-1, 1]).
REF_WIDTH = 467
REF_BATCH = 256

#: layers that stay digital (elementwise affine periphery): allowed, left untouched. A module
#: whose class sets ``digital_periphery = True`` (its own parameters act digitally around the
#: MVMs, e.g. :class:`noisydeq.models.wnconv.WeightNorm`'s gain or a monotone DEQ's bias and
#: D^{-1/2}) is allowed too; the Linear/Conv layers inside it are mapped.
DIGITAL_OK: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.LayerNorm,
    nn.GroupNorm,
)
MAPPABLE: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d)

_REF_CACHE: dict[tuple, Any] = {}  # reference-MVM results by (what, kind, spec, chip, mode)


class Device:
    """A hardware model of an analog MVM (architecture.md, Devices).

    ``spec`` is the validated preset (:mod:`noisydeq.specs.device_kinds`); ``chip_seed``
    selects the chip instance (static noise); ``target_snr_db`` is ``None`` for the
    physical defaults (native SNR) or the SNR every deployed layer is calibrated to;
    ``noise_mode`` says which part of the noise that target sets
    (:mod:`noisydeq.hardware.modes`: ``physical`` (default), ``dynamic``, ``static``, ``both``).
    """

    kind = "base"
    layer_class: type[DeviceLayer] = DeviceLayer

    def __init__(self, spec: Any, chip_seed: int = 0, target_snr_db: float | None = None,
                 noise_mode: str = modes.DEFAULT_MODE):
        self.spec = spec
        self.chip_seed = int(chip_seed)
        self.target_snr_db = target_snr_db
        self.noise_mode = modes.check_mode(noise_mode)

    @property
    def name(self) -> str:
        return getattr(self.spec, "name", self.kind)

    def __repr__(self) -> str:
        target = "native" if self.target_snr_db is None else f"{self.target_snr_db:g} dB"
        return (f"{type(self).__name__}({self.name!r}, chip={self.chip_seed}, snr={target}, "
                f"mode={self.noise_mode})")

    # ------------------------------------------------------------ copies
    def new_chip(self, seed: int) -> Device:
        """The same device with another chip instance (another draw of static noise)."""
        out = copy.copy(self)
        out.chip_seed = int(seed)
        return out

    def with_mode(self, noise_mode: str) -> Device:
        """The same device whose targets set the part ``noise_mode`` names."""
        out = copy.copy(self)
        out.noise_mode = modes.check_mode(noise_mode)
        return out

    def at_snr(self, snr_db: float | None) -> Device:
        """A copy calibrated to ``snr_db`` (``None`` → physical defaults).

        Raises :class:`NoisyDEQError` naming the reachable range (on the reference MVM, in
        this noise mode) when the target lies above or below it.
        """
        from noisydeq.hardware.calibration import check_reachable

        out = copy.copy(self)
        if snr_db is None:
            out.target_snr_db = None
            return out
        snr_db = float(snr_db)
        if math.isnan(snr_db):
            raise NoisyDEQError("snr_db: must be a number of dB or inf")
        check_reachable(snr_db, self.snr_range(), f"device '{self.name}'", self.noise_mode)
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
        return (what, self.kind, self.spec.model_dump_json(), self.chip_seed, self.noise_mode)

    def _ref(self, what: str, fn: Callable[[DeviceLayer], Any]) -> Any:
        key = self._ref_key(what)
        if key not in _REF_CACHE:
            _REF_CACHE[key] = fn(self.reference_layer())
        return _REF_CACHE[key]

    def native_parts(self) -> dict[str, float]:
        """Static, dynamic and total SNR (dB) of the reference MVM at the physical defaults."""
        return self._ref("parts", lambda layer: layer.measure_parts(layer.native_knobs()).as_db())

    def native_snr_db(self) -> float:
        """Measured (total) SNR of the reference MVM at the physical defaults (dB)."""
        return self.native_parts()["total"]

    def snr_range(self) -> tuple[float, float]:
        """(lowest, highest) SNR the reference MVM reaches in this noise mode (dB)."""
        return self._ref("range", lambda layer: layer.snr_range())

    def max_snr_db(self) -> float:
        """Highest SNR the reference MVM can be calibrated to (dB), in this noise mode."""
        return self.snr_range()[1]

    def describe(self) -> dict[str, Any]:
        """Key parameters for listings (``noisydeq devices``)."""
        return {}

    # ------------------------------------------------------------ deployment
    def deploy(self, model: nn.Module, digital_layers: Sequence[str] = ()) -> nn.Module:
        """A deep copy of ``model`` whose Linear/Conv1d/Conv2d layers run on this device.

        A parametrised layer (weight norm, orthogonal) is programmed with its weight's
        current value (a plain copy: the deployed layer no longer updates it); modules
        marked ``stays_digital`` and BatchNorm/LayerNorm/GroupNorm stay digital, and so do
        the modules named in ``digital_layers`` (qualified names such as ``cell.proj.U`` or
        ``head``, with everything inside them: aihwkit's ``exclude_modules`` idea). An
        unknown name is refused in one line listing the names a model offers.
        """
        if not isinstance(model, nn.Module):
            raise NoisyDEQError(f"deploy: expected a torch nn.Module, got {type(model).__name__}")
        keep = check_digital_layers(model, digital_layers)
        out = copy.deepcopy(model)
        if isinstance(out, MAPPABLE):
            if "" not in keep:
                return self.layer_class(self, out, "")
        else:
            _check_mappable(out, keep)
            _replace(out, self, prefix="", keep=keep)
        # what a call that finds no device layer tells apart: deployed, every layer digital
        setattr(out, KEPT_DIGITAL, tuple(sorted(keep)))
        return out

    def rechip(self, model: nn.Module) -> None:
        """Move the device layers of a deployed ``model`` onto this device and chip, in place.

        Each :class:`DeviceLayer` is replaced by a fresh one of this device holding the same
        ``weight`` / ``bias`` parameters (an optimiser keeps working on them) with no state
        of the previous chip (programmed weights, calibration); layers kept digital stay so.
        """
        for name, layer in list(device_layers(model).items()):
            fresh = self.layer_class(self, layer, name)
            fresh.stream = layer.stream
            if not name:
                raise NoisyDEQError("rechip: the model is itself one device layer; deploy it")
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, fresh)


def stays_digital(module: nn.Module, name: str = "", keep: frozenset[str] = frozenset()) -> bool:
    """A module a model marks ``stays_digital = True`` (with everything inside it) is left
    digital by :meth:`Device.deploy`, e.g. a LyaDEQ's Lyapunov certificate; so is a module
    whose qualified ``name`` the caller keeps digital (``keep``)."""
    return bool(getattr(module, "stays_digital", False)) or (bool(keep) and name in keep)


def mappable_names(model: nn.Module) -> list[str]:
    """Qualified names of the layers :meth:`Device.deploy` would map (Linear/Conv, deployed
    layers), e.g. ``cell.proj.U``, ``head``: what ``digital_layers`` may name."""
    return [n for n, m in model.named_modules() if isinstance(m, (*MAPPABLE, DeviceLayer))
            or _parametrized(m)]


def check_digital_layers(model: nn.Module, names: Sequence[str]) -> frozenset[str]:
    """The qualified module names of ``model`` that ``names`` keep digital: a name matches
    a module whose qualified name is it or ends with ``.<name>`` (``proj.U`` is a DEQ's
    ``cell.proj.U`` and an FFW's ``proj.U``, so one list serves a whole family). A name
    matching nothing is one line naming it (with a did-you-mean) and the model's layers."""
    modules = [n for n, _ in model.named_modules()]
    out: set[str] = set()
    for name in names:
        hits = [m for m in modules if m == name or (name and m.endswith(f".{name}"))]
        if not hits:
            offered = mappable_names(model)
            hint = did_you_mean(name, offered)
            raise NoisyDEQError(
                f"digital_layers: the model has no layer '{name}'{hint} "
                f"(its layers: {', '.join(offered) or 'none'})"
            )
        out.update(hits)
    return frozenset(out)


def _parametrized(module: nn.Module) -> bool:
    """A Linear/Conv whose weight is a ``torch.nn.utils.parametrize`` parametrisation
    (weight norm, orthogonal, ...)."""
    return isinstance(module, MAPPABLE) and parametrize.is_parametrized(module, "weight")


def _materialised(module: nn.Module) -> nn.Module:
    """A plain Linear/Conv holding the current value of a parametrised layer's weight (what a
    chip is programmed with); the original is left untouched."""
    cls = parametrize.type_before_parametrizations(module)
    bias = module.bias is not None
    if cls is nn.Linear:
        plain = nn.Linear(module.in_features, module.out_features, bias=bias)
    else:
        plain = cls(module.in_channels, module.out_channels, module.kernel_size,
                    stride=module.stride, padding=module.padding, dilation=module.dilation,
                    groups=module.groups, bias=bias, padding_mode=module.padding_mode)
    weight = module.weight.detach().clone()
    plain.weight = nn.Parameter(weight, requires_grad=False)  # programmed: no longer trained
    plain.bias = module.bias
    return plain.to(weight.device)


def _check_mappable(model: nn.Module, keep: frozenset[str] = frozenset()) -> None:
    bad = []
    skip: list[str] = []  # prefixes of digital or parametrised subtrees
    for name, mod in model.named_modules():
        if any(name.startswith(p) for p in skip):
            continue
        if stays_digital(mod, name, keep) or _parametrized(mod):
            skip.append(f"{name}." if name else "")
            continue
        if isinstance(mod, (*MAPPABLE, *DIGITAL_OK, DeviceLayer)):
            continue
        if getattr(mod, "digital_periphery", False):  # its own parameters act digitally
            continue
        if any(True for _ in mod.parameters(recurse=False)):
            bad.append(f"{name or '<root>'} ({type(mod).__name__})")
    if bad:
        raise NoisyDEQError(
            "cannot map these parametrised layers onto the device: "
            + ", ".join(bad)
            + " (supported: Linear, Conv1d, Conv2d; digital: BatchNorm, LayerNorm, GroupNorm)"
        )


def _replace(module: nn.Module, device: Device, prefix: str,
             keep: frozenset[str] = frozenset()) -> None:
    for child_name, child in list(module.named_children()):
        full = f"{prefix}.{child_name}" if prefix else child_name
        if stays_digital(child, full, keep):
            continue
        if _parametrized(child):
            setattr(module, child_name, device.layer_class(device, _materialised(child), full))
        elif type(child) in (nn.Linear, nn.Conv1d, nn.Conv2d):
            setattr(module, child_name, device.layer_class(device, child, full))
        elif isinstance(child, DeviceLayer):
            setattr(module, child_name, device.layer_class(device, child, full))
        else:
            _replace(child, device, full, keep)
