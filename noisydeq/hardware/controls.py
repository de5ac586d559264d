"""Model-level controls of a deployed model (architecture.md, Devices): its device layers,
their noise stream, gradient estimator, per-sample SNR targets and measurement, the layer
SNR reports, and calibration on the clean activations a batch produces.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from noisydeq.hardware.layer import CALIB_ROWS, CALIB_SEED, DeviceLayer
from noisydeq.noise import NoiseStream, seeded_generator

#: attribute :meth:`~noisydeq.hardware.base.Device.deploy` sets on the model it returns: the
#: qualified names of the modules it kept digital (a tuple; underscored, so no model
#: configuration or cache key reads it)
KEPT_DIGITAL = "_noisydeq_kept_digital"


def device_layers(model: nn.Module) -> dict[str, DeviceLayer]:
    """All deployed layers of ``model`` by qualified name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, DeviceLayer)}


def kept_digital(model: nn.Module) -> tuple[str, ...] | None:
    """The modules :meth:`~noisydeq.hardware.base.Device.deploy` kept digital in ``model``
    (qualified names, sorted), or None when ``model`` is no model ``deploy`` returned."""
    kept = getattr(model, KEPT_DIGITAL, None)
    return tuple(kept) if isinstance(kept, tuple) else None


def set_stream(model: nn.Module, stream: NoiseStream) -> None:
    """Draw the dynamic noise of every device layer from ``stream`` (full batch first)."""
    for layer in device_layers(model).values():
        layer.stream = stream


def set_scaled_gradient(model: nn.Module, on: bool = True) -> None:
    """Backward through every device layer with the scaled straight-through estimator
    (:func:`straight_through`: the gradient also sees that the device error grows with
    the weights' and inputs' scale), or the plain one (``on=False``, the default of a
    deployed layer: the exact layer's backward). Hardware-aware training turns it on."""
    for layer in device_layers(model).values():
        layer.scaled_gradient = bool(on)


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
            layer.last_parts = None


def layer_snr_report(model: nn.Module) -> dict[str, float]:
    """Measured MVM-output SNR (dB) of each device layer in the last forward.

    Layers are measured only while :func:`set_measure` is on; others report ``nan``.
    """
    return {
        n: (math.nan if m.last_snr_db is None else m.last_snr_db)
        for n, m in device_layers(model).items()
    }


def layer_snr_parts(model: nn.Module) -> dict[str, dict[str, float]]:
    """Static, dynamic and total SNR (dB) of each device layer in the last forward
    (:mod:`noisydeq.hardware.parts`; ``nan`` when not measured or without signal)."""
    empty = {"static": math.nan, "dynamic": math.nan, "total": math.nan}
    return {
        n: (dict(empty) if m.last_parts is None else m.last_parts.as_db())
        for n, m in device_layers(model).items()
    }


def subsample_rows(rows: Tensor, n: int = CALIB_ROWS) -> Tensor:
    """At most ``n`` of ``rows`` (a seeded random choice; all of them when fewer)."""
    if rows.shape[0] > n:
        idx = torch.randperm(rows.shape[0], generator=seeded_generator(CALIB_SEED))[:n]
        rows = rows[idx.to(rows.device)]
    return rows.contiguous()


def calibrate(model: nn.Module, x: Tensor, *args: Any, **kwargs: Any) -> None:
    """Calibrate every device layer on the clean activations it sees for the batch ``x``.

    Runs one noise-free forward ``model(x, *args, **kwargs)`` (the extra arguments go to
    the model's forward; targets at ``inf`` are not used: the exact MVM feeds the next
    layer), captures each layer's input vectors (at most 512 rows, from every call: a
    DEQ's cell contributes every iteration) and forgets the controls calibrated before.
    Calibration inside the noisy network (each layer on the inputs it sees when upstream
    layers are noisy): :func:`noisydeq.hardware.in_network.calibrate_in_network`.
    """
    layers = device_layers(model)
    captured: dict[str, Tensor] = {}
    handles = []

    def hook(name: str, layer: DeviceLayer):
        def fn(_mod: nn.Module, inputs: tuple[Tensor, ...], _out: Tensor) -> None:
            rows = layer.input_rows(inputs[0].detach())
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
            layer.calib_x = subsample_rows(captured[name])
        layer.reset_calibration()


def _exact_forward(layer: DeviceLayer):
    def fn(x: Tensor) -> Tensor:
        y = layer.exact(x)
        if layer.bias is not None:
            y = y + layer.bias.reshape((1, -1) + (1,) * (y.ndim - 2))
        return y

    return fn
