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
from noisydeq.scalars import const
from noisydeq.specs.device_kinds import RRAMSpec

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


#: aihwkit's floor of max|W| in its conductance converters
_ZERO_CLIP = 1e-7


#: column coefficient tensors of :func:`_sigmas`, per (polynomials, dtype, device)
_COLUMNS: dict[tuple, list[Tensor]] = {}


def _columns(unique: list[list[float]], ndim: int, like: Tensor) -> list[Tensor]:
    """The k-th coefficient of every polynomial of ``unique`` as a (u, 1, …) tensor of
    ``like``'s dtype (each value rounded as :func:`noisydeq.scalars.const` rounds it)."""
    key = (tuple(map(tuple, unique)), ndim, like.dtype, like.device)
    cols = _COLUMNS.get(key)
    if cols is None:
        if len(_COLUMNS) >= 64:
            _COLUMNS.clear()
        cols = _COLUMNS[key] = [
            torch.tensor([c[k] for c in unique], dtype=like.dtype, device=like.device)
            .reshape(len(unique), *([1] * ndim)) for k in range(len(unique[0]))]
    return cols


def _sigmas(model, ratio: Tensor, coeffs: list[list[float]]) -> Tensor:
    """σ(g) (µS) of the noise model's polynomials ``coeffs`` at g/g_max = ``ratio``, stacked
    (len(coeffs), *ratio.shape), in aihwkit's operation order (powers by repeated
    multiplication, no Horner; in place where aihwkit allocates, the same values), the
    powers shared by every polynomial, equal polynomials evaluated once (the programming
    and the 1 s read share theirs; their rows are one expanded view) and distinct ones as
    one stack (each coefficient a column: one operation per step for all of them):
    bit-identical to evaluating each as the model does."""
    unique = [list(c) for c in dict.fromkeys(tuple(c) for c in coeffs)]
    cols = _columns(unique, ratio.ndim, ratio)
    mat = ratio
    # c0 + mat·c1 (float + tensor commutes), per polynomial along the first dimension
    sig = (mat * cols[1]).add_(cols[0])
    for k in range(2, len(unique[0])):
        mat = mat * ratio
        sig.add_(mat * cols[k])
    sig.mul_(const(model.g_max / model.coeff_g_max_reference, ratio))
    if len(unique) == len(coeffs):  # distinct (the order of coeffs)
        return sig
    if len(unique) == 1:
        return sig.expand(len(coeffs), *ratio.shape)
    return torch.stack([sig[unique.index(list(c))] for c in coeffs])


class ChipDraw:
    """One chip's conductance targets, σ's and standard draws; :meth:`program` at any scale.

    The (G+, G−) slices are held as one stacked (2, …) tensor and converted with aihwkit's
    single-pair converter's own operations (elementwise, so bit-identical to its lists):
    programming the chip once per training step is a handful of tensor operations. The
    programming and the read at t are one (2 kinds, 2 slices, …) stack of σ's and draws
    (:attr:`sig`, :attr:`xi`): their noisy conductances are one chain of operations."""

    def __init__(self, w_norm: Tensor, spec: RRAMSpec, seed: int,
                 like: ChipDraw | None = None, unit_max: bool = False) -> None:
        self.spec, self.seed = spec, seed
        self.model = like.model if like is not None and like.spec == spec else (
            wan2022_noise_model(spec, 1.0))
        conv = self.model.g_converter
        self.g_min, self.g_max = conv.g_min, conv.g_max
        w = w_norm.detach().to("cpu", torch.float32)
        # SinglePairConductanceConverter.convert_to_conductances, both slices at once
        self._span = const(conv.g_max - conv.g_min, w)
        self._g_min = const(conv.g_min, w)
        # float / tensor is reciprocal(tensor) * float in torch (Tensor.__rtruediv__);
        # ``unit_max``: the caller knows max|w_norm| = 1, so the ratio is the span itself
        # (1⁻¹·span = span exactly)
        self.scale_ratio = self._span if unit_max else (
            w.abs().max().clamp(min=_ZERO_CLIP).reciprocal() * self._span)
        # the slices written into one buffer (the values of stack([w·r, −(w·r)]), no copy)
        self.g = torch.empty((2, *w.shape), dtype=w.dtype)
        torch.neg(torch.mul(w, self.scale_ratio, out=self.g[0]), out=self.g[1])
        self.g.clamp_(min=0.0, max=conv.g_max)
        if conv.g_min != 0:  # x + 0 = x: skipped at g_min = 0 (the default)
            self.g = self.g.add_(self._g_min)
        coeff = self.model.coeff_dic
        #: σ_p and σ_t of both slices, (2 kinds, 2 slices, …) (µS)
        self.sig = _sigmas(self.model, self.g / const(self.model.g_max, w),
                           [coeff[min(coeff)], coeff[spec.t_inference_s]])
        self.sig_prog, self.sig_read = self.sig.unbind(0)
        if like is not None and like.seed == seed and like.g.shape == self.g.shape:
            # the standard draws depend on the seed and shapes only: the same chip
            # reprogrammed with new weights (training) reuses them
            self.xi = like.xi
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)  # aihwkit's order: ξ_p(G+), ξ_p(G−), ξ_t(G+), ξ_t(G−)
                xi = [torch.randn_like(self.g[0]) for _ in range(4)]
            #: the standard draws ξ_p, ξ_t of both slices, (2 kinds, 2 slices, …)
            self.xi = torch.stack(xi).view(2, *self.g.shape)
        self.xi_prog, self.xi_read = self.xi.unbind(0)

    @property
    def targets(self) -> list[Tensor]:
        """The conductance targets [G+, G−] (µS), as aihwkit's converter lists them."""
        return list(self.g.unbind(0))

    @property
    def sig_p(self) -> list[Tensor]:
        """σ_p(G+), σ_p(G−): programming noise std (µS)."""
        return list(self.sig_prog.unbind(0))

    @property
    def sig_t(self) -> list[Tensor]:
        """σ_t(G+), σ_t(G−): accumulated deviation at the read time (µS)."""
        return list(self.sig_read.unbind(0))

    def _back(self, g: Tensor, out: Tensor) -> Tensor:
        """The numerators G+ − G− of ``convert_back_to_weights`` of the stacked slices ``g``
        (…, 2 slices, …), written into ``out`` (each then divided by its scale ratio)."""
        if self.g_min == 0:  # x − 0 = x: the same values, two passes fewer
            return torch.sub(g[:, 0], g[:, 1], out=out)
        return torch.sub(g[:, 0] - self._g_min, g[:, 1] - self._g_min, out=out)

    def program(self, s: float) -> tuple[Tensor, Tensor]:
        """(programmed, read-at-t) normalised weights at noise scale ``s`` (CPU, float32),
        two slices of one (2, n_out, n_in) tensor, :attr:`pair` (the drift compensation
        reads both out as one stack)."""
        scale = self.spec.prog_noise_scale * s
        c = const(scale, self.g)

        # g + c·σ·ξ (1·σ = σ exactly) of both kinds, clamped: the programmed and the
        # read-at-t conductances (the latter do not depend on W_prog, only their ratio)
        noise = self.sig * self.xi if scale == 1 else c * self.sig * self.xi
        g = noise.add_(self.g).clamp_(min=0.0)
        self.pair = torch.empty_like(self.g)
        self._back(g, self.pair)
        w_prog = self.pair[0].div_(self.scale_ratio)
        # the read at t converts back with the scale ratio of max|W_prog| (aihwkit converts
        # W_prog to conductances only for that ratio)
        #: max|W_prog| of the last :meth:`program` (the drift compensation's read-out
        #: start rule uses it: :func:`noisydeq.hardware.rram_io.identity_magnitudes`)
        self.prog_peak = w_prog.abs().max()
        ratio_t = self.prog_peak.clamp(min=_ZERO_CLIP).reciprocal() * self._span
        return w_prog, self.pair[1].div_(ratio_t)
