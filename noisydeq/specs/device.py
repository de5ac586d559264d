"""The device choices a sweep or a training spec names: digital training, which part of a
device's noise an SNR sets, where a sweep calibrates. The device specs themselves sit
beside their devices (:mod:`noisydeq.hardware.specs`)."""

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
