"""The device choices a sweep or a training spec names: digital training, which part of a
device's noise an SNR sets, where a sweep calibrates. The device specs themselves are
:mod:`noisydeq.specs.device_kinds`; and where a model was trained, in
words (:func:`trained_on`)."""

from __future__ import annotations

from noisydeq.specs.base import choice_of

#: a ``train_device`` entry for the digitally trained families of a sweep
DIGITAL_TRAINING = "none"
#: which part of a device's noise a swept SNR sets (noisydeq.hardware.modes)
NOISE_MODES = ("physical", "dynamic", "static", "both")
#: where a sweep calibrates its device layers (noisydeq.hardware.in_network)
CALIBRATIONS = ("network", "clean")

NoiseMode = choice_of(NOISE_MODES)
Calibration = choice_of(CALIBRATIONS)

#: :func:`trained_on` of a digitally trained model
DIGITAL = "digital"


def trained_on(device: str | None, snr_db: float | None = None,
               noise_mode: str | None = None) -> str:
    """Where a model was trained, in words: ``digital``, or the training device and its SNR
    (``rram native``, ``photonic 10 dB``), its noise mode when not ``physical``
    (``rram 10 dB (dynamic)``). One wording for the analyses' ``trained_on`` column and
    the messages naming a family's members."""
    if not device:
        return DIGITAL
    text = f"{device} " + ("native" if snr_db is None else f"{float(snr_db):g} dB")
    return text if noise_mode in (None, "physical") else f"{text} ({noise_mode})"
