"""Device-in-the-loop training (:mod:`noisydeq.train`, hardware-aware training).

The model is deployed on ``spec.device`` (``spec.digital_layers`` kept digital) with the
scaled straight-through gradient (:func:`noisydeq.hardware.controls.set_scaled_gradient`);
every epoch trains on a fresh chip (:func:`chip_of_epoch`; :meth:`Device.rechip` keeps the
parameters), calibrated on clean training activations at a target SNR, and validates on one
fixed chip (:func:`validation_chip`). Each batch draws the dynamic noise of every device
layer from streams addressed by (seed, epoch, sample, layer) (:func:`_device_streams`; the
first draws of same-width layers are made together: ``NoiseStream.draw_ahead``). The chip
is reprogrammed with every step's weights; a photonic device's calibrated ADC gain and an
rram device's drift-compensation α are measured again at every step too, or once per chip
with ``device_adc_gain = "epoch"`` / ``device_drift_alpha = "epoch"`` (:func:`_hold_per_chip`).
With ``device_programming = "epoch"`` the chip is programmed in full once per epoch (and
noise scale) and that programming's error is held on every later step's weights. The noise
scale is calibrated to ``spec.device_snr_db`` when each epoch's chip is deployed, or also
before every step (``device_calibration = "step"``) or every N steps (an integer N):
:func:`calibration_due`, :func:`recalibrate_if_due`.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from noisydeq.errors import NoisyDEQError
from noisydeq.noise import NoiseStream, derive_seed
from noisydeq.specs.device_presets import HELD_QUANTITIES, check_held
from noisydeq.specs.training import TrainSpec
from noisydeq.train_state import _Rng


def _train_device(spec: TrainSpec, chip: int) -> Any:
    """``spec.device`` on chip ``chip``, in ``spec.device_noise_mode``, at its SNR."""
    from noisydeq import hardware

    return hardware.get_device(spec.device, snr_db=spec.device_snr_db, chip=chip,
                               noise_mode=spec.device_noise_mode or "physical")


def chip_of_epoch(seed: int, epoch: int) -> int:
    """The chip a device-in-the-loop run trains on in ``epoch`` (a fresh draw per epoch)."""
    return derive_seed(seed, "train", "chip", epoch) % (2**31)


def validation_chip(seed: int) -> int:
    """The fixed chip of the per-epoch validation on the device."""
    return derive_seed(seed, "train", "validation-chip") % (2**31)


def _deploy(model: nn.Module, spec: TrainSpec, rng_seed: int) -> nn.Module:
    """The model on ``spec.device`` (the chip of epoch 0; ``spec.digital_layers`` kept
    digital), or the model itself."""
    if spec.device is None:
        return model
    from torch.nn.utils import parametrize

    held = [n for n, m in model.named_modules() if parametrize.is_parametrized(m)]
    if held:  # a chip is programmed with the weight's value; the parametrisation is lost
        raise NoisyDEQError(
            f"train.device: layers with parametrised weights ({', '.join(held)}) cannot be "
            "trained on a device; train digitally and deploy the trained model"
        )
    from noisydeq.hardware.controls import set_scaled_gradient

    device = _train_device(spec, chip_of_epoch(rng_seed, 0))
    for field in HELD_QUANTITIES:
        if getattr(spec, field) is not None:
            check_held(field, device.spec, f"train.{field}", spec.device)
    net = device.deploy(model, digital_layers=spec.digital_layers or ())
    set_scaled_gradient(net)  # the gradient sees the error grow with W's and x's scale
    _hold_per_chip(net, spec)
    return net


def _hold_per_chip(net: nn.Module, spec: TrainSpec) -> None:
    """``spec.device_adc_gain = "epoch"`` / ``spec.device_drift_alpha = "epoch"`` /
    ``spec.device_programming = "epoch"``: the device layers measure their ADC gain
    (photonic) / drift-compensation α (rram, per noise scale) / programming error (rram and
    photonic, per noise scale) once on this chip (at deployment: the start of an epoch, or
    the validation chip) and hold it while the weights train
    (:attr:`PhotonicLayer.hold_adc_gain`, :attr:`RRAMLayer.hold_drift_alpha`,
    ``hold_programming``)."""
    flags = [flag for flag, value in (("hold_adc_gain", spec.device_adc_gain),
                                      ("hold_drift_alpha", spec.device_drift_alpha),
                                      ("hold_programming", spec.device_programming))
             if value == "epoch"]
    if not flags:
        return
    from noisydeq.hardware.controls import device_layers

    for layer in device_layers(net).values():
        for flag in flags:
            if hasattr(layer, flag):
                setattr(layer, flag, True)


def _calibrate(net: nn.Module, spec: TrainSpec, x: Tensor) -> None:
    """Calibrate the device layers of ``net`` on the clean activations of ``x`` (a target
    SNR is met on the data, with the current weights); nothing to do at the native SNR."""
    if spec.device_snr_db is None:
        return
    from noisydeq.hardware.controls import calibrate

    was = net.training
    net.eval()
    try:
        calibrate(net, x)
    finally:
        net.train(was)


def calibration_due(spec: TrainSpec, batch: int) -> bool:
    """Whether the device is calibrated again before step ``batch`` (0-based, within an
    epoch) of ``spec``: every ``spec.device_calibration`` steps (``"step"``: every step; None,
    the default, only at the epoch's start, where :func:`_on_chip` calibrates it)."""
    every = spec.device_calibration
    if every is None or spec.device_snr_db is None or batch <= 0:
        return False
    return every == "step" or batch % int(every) == 0


def recalibrate_if_due(net: nn.Module, spec: TrainSpec, x_calib: Tensor, batch: int) -> None:
    """Calibrate the device's noise scale again on ``x_calib`` for this step's weights when
    step ``batch`` is one :func:`calibration_due` names (the epoch's start is
    :func:`_on_chip`'s)."""
    if calibration_due(spec, batch):
        _calibrate(net, spec, x_calib)


def _on_chip(net: nn.Module, spec: TrainSpec, chip: int, x_calib: Tensor) -> None:
    """Move the deployed ``net`` onto chip ``chip`` (same parameters) and calibrate it."""
    _train_device(spec, chip).rechip(net)
    _hold_per_chip(net, spec)
    _calibrate(net, spec, x_calib)


def _device_streams(net: nn.Module, rng: _Rng, epoch: int, samples: Tensor) -> None:
    """Give every device layer of ``net`` its dynamic-noise source for this batch (the
    streams ``rng.stream("device", epoch, samples, name)``, set up together from the
    epoch's table: :meth:`_Rng.streams`)."""
    from noisydeq.hardware.controls import device_layers

    layers = device_layers(net)
    # NoiseStream.many(derive_seed(rng.seed, "train", "device", epoch, name) for every
    # layer, samples), the rows taken from one table per epoch instead of split per batch
    streams = rng.streams("device", epoch, samples, list(layers))
    for layer, stream in zip(layers.values(), streams, strict=True):
        layer.stream = stream
    # the first read of every Linear layer that draws one normal per output (rram,
    # photonic): same-width layers' numbers in one call (the same numbers)
    ahead = [(s, (len(samples), layer.n_out), layer.weight.dtype)
             for layer, s in zip(layers.values(), streams, strict=True)
             if layer.draws_output_noise and layer.op == "linear"]
    for dtype in {d for _, _, d in ahead}:
        same = [(s, shape) for s, shape, d in ahead if d == dtype]
        NoiseStream.draw_ahead([s for s, _ in same], [shape for _, shape in same], dtype,
                               rng.dev)
