"""The analyses on the device a sweep ran on (``sensitivity``, ``spectrum``, ``solvers``).

Given a sweep run directory whose noise was the device's (``noise_site = "device"``), the
analyses measure each model **as programmed on that run's chips**: for chip k the model's
device layers are replaced by the chip's effective weights W_chip
(:meth:`noisydeq.hardware.layer.DeviceLayer.chip_matrix`), drawn exactly as the sweep drew
them (the same device preset and noise mode, chip seed ``derive_seed(model seed, "chip",
k)``, the same layers kept digital). W_chip is the chip's static error at the device's
native setting, or — with ``--device-snr S`` — at the static knob the sweep's calibration
finds for S (:meth:`noisydeq.sweep.hardware.Hardware.chip`, in-network on the sweep's
calibration inputs, through the same calibration cache). The analysis' own probe noise (η ξ,
the solvers' SNR) is then applied to that chip model; a device's dynamic (per-read) noise is
what those probes stand for and is not drawn a second time.

``--device ideal`` (or a run without device noise, or no run directory) keeps the digital
weights; the command says which it used in its output, its CSV (``device``, ``noise_mode``,
``chip``, ``device_snr_db`` columns) and its figure titles.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from noisydeq.errors import NoisyDEQError


@dataclass(frozen=True)
class OnDevice:
    """Which device, noise mode and chips an analysis runs on (``None`` = digital)."""

    device: str
    noise_mode: str
    chips: tuple[int, ...]
    snr_db: float | None  # None: the device's native setting
    spec: Any  # the run's SweepSpec (device, mode, digital layers, calibration, SNR grid)

    def describe(self) -> str:
        """``rram, noise mode static, chips 0-2, native`` (for output and titles)."""
        chips = (f"chip {self.chips[0]}" if len(self.chips) == 1
                 else f"chips {self.chips[0]}-{self.chips[-1]}"
                 if list(self.chips) == list(range(self.chips[0], self.chips[-1] + 1))
                 else "chips " + ",".join(map(str, self.chips)))
        level = "native" if self.snr_db is None else f"calibrated to {self.snr_db:g} dB"
        return f"{self.device}, noise mode {self.noise_mode}, {chips}, {level}"

    def columns(self, chip: int) -> dict[str, Any]:
        return {"device": self.device, "noise_mode": self.noise_mode, "chip": chip,
                "device_snr_db": math.nan if self.snr_db is None else self.snr_db}


DIGITAL_COLUMNS = {"device": "ideal", "noise_mode": "-", "chip": 0, "device_snr_db": math.nan}


def resolve(family: Path, device: str | None, chips: int | None,
            device_snr: float | None) -> OnDevice | None:
    """The device the analysis of ``family`` runs on: ``device`` (``ideal`` = digital) or, when
    not given, the run's (a sweep run dir with device noise); ``chips``: how many (default:
    the run's); ``device_snr``: a level to calibrate to (default: native). ``None`` =
    digital weights. Bad combinations are one line."""
    from noisydeq.analysis.locate import read_sweep_spec

    spec = read_sweep_spec(family) if family.is_dir() else None
    if device == "ideal":
        return None
    if device is None:
        if spec is None or spec.noise_site != "device" or spec.device == "ideal":
            if chips is not None or device_snr is not None:
                raise NoisyDEQError("--chips/--device-snr: the family has no device (not a "
                                    "sweep run with device noise); name one with --device")
            return None
    elif spec is None or spec.device != device:
        from noisydeq.specs.base import build
        from noisydeq.specs.sweep import SweepSpec

        base = spec.model_dump() if spec is not None else {}
        base.update(device=device, noise_site="device", chips=chips or 1)
        spec = build(SweepSpec, {k: v for k, v in base.items()
                                 if k in ("device", "noise_site", "chips", "noise_mode",
                                          "digital_layers", "calibration", "snr_db")},
                     where="--device")
    n = spec.chips if chips is None else chips
    if n < 1:
        raise NoisyDEQError(f"--chips: need at least 1 chip, got {n}")
    if device_snr is not None and not math.isfinite(device_snr):
        raise NoisyDEQError("--device-snr: give a finite SNR in dB (∞ is the digital model: "
                            "--device ideal)")
    return OnDevice(spec.device, spec.noise_mode, tuple(range(n)), device_snr, spec)


def chip_model(model: nn.Module, on: OnDevice, seed: int, chip: int,
               calib_x: torch.Tensor | None = None) -> nn.Module:
    """A copy of ``model`` whose device layers hold chip ``chip``'s effective weights W_chip
    (native, or at ``on.snr_db``'s static knob); everything else is the digital model."""
    from noisydeq import hardware
    from noisydeq.sweep.hardware import Hardware

    level = math.inf if on.snr_db is None else on.snr_db  # ∞: deployed, nothing calibrated
    spec = on.spec.model_copy(update={"snr_db": [level]})
    deployed = Hardware(spec).chip(model, seed, chip, calib_x)
    knobs = {n: layer.native_knobs() if on.snr_db is None else layer.control_for(on.snr_db)
             for n, layer in hardware.device_layers(deployed).items()}
    view = copy.deepcopy(model).eval()
    with torch.no_grad():
        for name, layer in hardware.device_layers(deployed).items():
            target = view.get_submodule(name) if name else view
            _plain_weight(target)
            w = layer.chip_matrix(knobs[name][0]).detach()
            target.weight.copy_(w.reshape(target.weight.shape).to(target.weight.dtype))
    return view


def _plain_weight(module: nn.Module) -> None:
    """Make ``module.weight`` a plain parameter (a weight-normed or orthogonal layer holds
    its current value, as :meth:`noisydeq.hardware.base.Device.deploy` programs it)."""
    from torch.nn.utils import parametrize

    if parametrize.is_parametrized(module, "weight"):
        parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    elif hasattr(module, "weight_g") and hasattr(module, "weight_v"):
        torch.nn.utils.remove_weight_norm(module)


def on_chips(members: list[Any], on: OnDevice | None, data_dir: str | None = None,
             device: torch.device | None = None) -> list[Any]:
    """``members`` as programmed on each chip of ``on`` (one copy per member and chip, its
    ``chip`` set, so members pair within a chip), or ``members`` unchanged when digital."""
    import dataclasses

    if on is None:
        return members
    calib_x = calibration_inputs(members, data_dir, on, device or torch.device("cpu"))
    return [dataclasses.replace(m, model=chip_model(m.model, on, m.seed, chip, calib_x),
                                chip=chip)
            for chip in on.chips for m in members]


def calibration_inputs(members: list[Any], data_dir: str | None, on: OnDevice | None,
                       device: torch.device) -> torch.Tensor | None:
    """The training inputs the sweep calibrates on (the first
    :data:`~noisydeq.sweep.plan.CALIBRATION_INPUTS`), only when a level is calibrated."""
    if on is None or on.snr_db is None:
        return None
    from noisydeq.analysis.family import load_family_task
    from noisydeq.sweep.plan import CALIBRATION_INPUTS

    task = load_family_task(members, data_dir)
    x = getattr(task, "x_train", None)
    return None if x is None else x[:CALIBRATION_INPUTS].to(device)
