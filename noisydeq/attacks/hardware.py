"""Attacks on hardware: the model an attack sees and the model that is judged, per SNR level.

At SNR level s on chip c (device noise, ``noise_site = "device"``) the *deployed* model is
``device.at_snr(s).new_chip(c).deploy(model)``, calibrated on training inputs like a sweep's
chips; every MVM draws dynamic noise from a seeded counter-based stream (one per layer:
a sample's numbers are a function of (cell seed, layer, that sample's draw count, its row),
so each EOT draw and PGD step sees fresh noise and a row's noise does not depend on the
others), the chip's static noise is fixed. Three modes:

* ``device`` — white-box on the chip: gradients through the deployed model (the device
  layers' straight-through estimator: the exact layer's backward at the noisy forward
  value), EOT over the dynamic noise, judged on the same chip;
* ``transfer`` — crafted on the noise-free digital twin, judged on the chip;
* ``digital`` — s = ∞: the digital model itself.

With the model's own noise instead of a device (``noise_site`` = signal/state/input) the
judged model is the digital one with a :class:`~noisydeq.noise.Noise` injector at s, and
``transfer`` crafts on the noise-free model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from noisydeq.noise import Noise, NoiseStream, derive_seed
from noisydeq.specs.noise import NoiseSpec


@dataclass
class Level:
    """The model at one SNR level and chip, with the noise source of its forwards."""

    model: nn.Module
    noise: Noise | None
    snr_db: float
    chip: int
    device_layers: bool  # True: dynamic noise comes from the deployed layers' streams

    def reseed(self, seed: int) -> None:
        """Restart every noise source from ``seed`` (each cell draws its own numbers); rows
        are keyed by their position in the batch (the test-set index on the attacked
        split)."""
        if self.device_layers:
            from noisydeq import hardware

            for name, layer in hardware.device_layers(self.model).items():
                layer.stream = NoiseStream.from_seed(derive_seed(seed, "layer", name),
                                                     device=layer.weight.device)
        if self.noise is not None:
            self.noise = Noise(self.noise.spec,
                               NoiseStream.from_seed(seed, device=self._device()),
                               snr_db=self.noise.snr_db)

    def _device(self) -> torch.device:
        return next(self.model.parameters()).device


def make_level(model: nn.Module, *, device: str, noise_site: str, snr_db: float, chip: int,
               seed: int, calib_x: Tensor | None,
               inference_noise: NoiseSpec | None = None) -> Level:
    """The judged model at ``snr_db`` on chip ``chip`` (digital when the level is ∞).

    ``inference_noise``: the model's own noise (a noise defence kept at inference, main
    paper App. E.3), drawn on the digital and device levels; a level that sweeps the
    model's noise at a site replaces it.
    """
    own = None
    if inference_noise is not None and inference_noise.active:
        own = Noise(inference_noise, NoiseStream.from_seed(seed))
    if math.isinf(snr_db) or (device == "ideal" and noise_site == "device"):
        return Level(model, own, snr_db, chip, False)
    if noise_site != "device":
        spec = NoiseSpec(site=noise_site, snr_db=snr_db)
        return Level(model, Noise(spec, NoiseStream.from_seed(seed), snr_db=snr_db), snr_db,
                     chip, False)
    from noisydeq import hardware

    dev = hardware.get_device(device).new_chip(derive_seed(seed, "chip", chip)).at_snr(snr_db)
    deployed = dev.deploy(model).eval()
    for p in deployed.parameters():
        p.requires_grad_(False)
    if calib_x is not None:
        hardware.calibrate(deployed, calib_x)
    return Level(deployed, own, snr_db, chip, True)


def check_device(device: str, noise_site: str, snr_db: list[float]) -> None:
    """Fail before any work when the device is unknown or a level is unreachable."""
    if device == "ideal" and noise_site == "device":
        return
    from noisydeq import hardware

    dev = hardware.get_device(device)
    finite = [s for s in snr_db if math.isfinite(s)]
    if finite and noise_site == "device":
        dev.at_snr(max(finite))
