"""Programming an RRAM chip at any noise scale from one set of standard draws.

aihwkit's ``ReRamWan2022NoiseModel`` on a single-pair converter programs each conductance
slice (G+, G−) of the target ``g`` as ``clamp(g + c·σ_p(g)·ξ_p, 0)`` and models the read at
time t from the *targets* as ``clamp(g + c·σ_t(g)·ξ_t, 0)`` (σ a 4th-order polynomial in
g/g_max, Wan et al. 2022; c the noise scale). The weights come back through the converter:
programmed ones with the targets' scale ratio, read-at-t ones with the ratio of max|W_prog|.

The four standard-normal tensors ξ_p(G+), ξ_p(G−), ξ_t(G+), ξ_t(G−), taken in that order
from the global RNG seeded with the chip seed, do not depend on c. :class:`ChipDraw` draws
them once per chip; every noise scale then costs elementwise arithmetic in aihwkit's
operation order, with aihwkit's own converter, bit-identical to running the noise model
(:func:`noisydeq.hardware.rram.program_weights`; tests/hardware/test_rram.py). Calibration
probes tens of noise scales per chip, so this replaces tens of noise-model runs.
"""

from __future__ import annotations

import torch
from torch import Tensor

from noisydeq.errors import NoisyDEQError
from noisydeq.hardware.specs import RRAMSpec

#: aihwkit is an optional dependency (the ``rram`` extra); the version the tests run on
AIHWKIT_VERSION = "1.1.0"
AIHWKIT_INSTALL = (f"pip install 'noisydeq[rram]' (or, keeping your torch build: "
                   f"pip install --no-deps aihwkit=={AIHWKIT_VERSION})")


def require_aihwkit() -> None:
    """Import the parts of aihwkit the ``rram`` device uses, or raise one line saying how to
    install it (or why it did not import)."""
    try:
        import aihwkit.inference.converter.conductance  # noqa: F401
        import aihwkit.inference.noise.reram  # noqa: F401
    except ImportError as err:
        if (err.name or "").split(".")[0] == "aihwkit":
            raise NoisyDEQError(f"the rram device needs aihwkit, which is not installed: "
                                f"{AIHWKIT_INSTALL}") from None
        raise NoisyDEQError(f"the rram device needs aihwkit, which failed to import ({err}); "
                            f"reinstall it: {AIHWKIT_INSTALL}") from None


def wan2022_noise_model(spec: RRAMSpec, scale: float = 1.0):
    """aihwkit's Wan-2022 ReRAM noise model on a single-pair converter at ``spec``'s g range."""
    require_aihwkit()
    from aihwkit.inference.converter.conductance import SinglePairConductanceConverter
    from aihwkit.inference.noise.reram import ReRamWan2022NoiseModel

    conv = SinglePairConductanceConverter(g_max=spec.g_max_us, g_min=spec.g_min_us)
    return ReRamWan2022NoiseModel(g_converter=conv, noise_scale=spec.prog_noise_scale * scale)


def _sigma(model, g: Tensor, coeff: list[float]) -> Tensor:
    """σ(g) of the noise model's polynomial (µS), evaluated as the model does (Horner-free)."""
    mat: Tensor | float = 1.0
    sig: Tensor | float = coeff[0]
    for value in coeff[1:]:
        mat = mat * (g / model.g_max)
        sig = sig + mat * value
    return sig * (model.g_max / model.coeff_g_max_reference)


class ChipDraw:
    """One chip's conductance targets, σ's and standard draws; :meth:`program` at any scale."""

    def __init__(self, w_norm: Tensor, spec: RRAMSpec, seed: int,
                 like: ChipDraw | None = None) -> None:
        self.spec, self.seed = spec, seed
        self.model = wan2022_noise_model(spec, 1.0)
        w = w_norm.detach().to("cpu", torch.float32)
        self.targets, self.params = self.model.g_converter.convert_to_conductances(w)
        coeff = self.model.coeff_dic
        self.sig_p = [_sigma(self.model, g, coeff[min(coeff)]) for g in self.targets]
        self.sig_t = [_sigma(self.model, g, coeff[spec.t_inference_s]) for g in self.targets]
        shapes = [g.shape for g in (*self.targets, *self.targets)]
        if (like is not None and like.seed == seed
                and [x.shape for x in like.xi] == shapes):
            # the standard draws depend on the seed and shapes only: the same chip
            # reprogrammed with new weights (training) reuses them
            self.xi = like.xi
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                self.xi = [torch.randn_like(g) for g in (*self.targets, *self.targets)]

    def program(self, s: float) -> tuple[Tensor, Tensor]:
        """(programmed, read-at-t) normalised weights at noise scale ``s`` (CPU, float32)."""
        c = self.spec.prog_noise_scale * s
        conv = self.model.g_converter
        n = len(self.targets)
        g_prog = [
            (g + c * sig * xi).clamp_(min=0.0)
            for g, sig, xi in zip(self.targets, self.sig_p, self.xi[:n], strict=True)
        ]
        w_prog = conv.convert_back_to_weights(g_prog, self.params)
        _, params_t = conv.convert_to_conductances(w_prog)
        g_t = [
            (g + c * sig * xi).clamp_(min=0.0)
            for g, sig, xi in zip(self.targets, self.sig_t, self.xi[n:], strict=True)
        ]
        return w_prog, conv.convert_back_to_weights(g_t, params_t)
