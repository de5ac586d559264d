"""The IO-managed crossbar read of the ``rram`` device, fused (aihwkit ``IOParameters``).

One read of a (normalised) weight matrix W by a batch of input vectors, with the
semantics of aihwkit's torch tile (``TorchInferenceRPUConfig`` forward):

* noise management ``ABS_MAX``: each vector is divided by its max |x| (zero vectors by 1);
* DAC: inputs rounded to steps dq = 2·inp_bound/(2^b − 2), clipped at ±inp_bound;
* MVM, plus read noise N(0, out_noise²) per output;
* ADC: outputs rounded to steps dy = 2·out_bound/(2^b − 2), clipped at ±out_bound;
* iterative bound management: a vector whose output clips is read again with its input
  divided by r = 2, 4, … (the read noise draw is reused); the last reduction allowed
  (first r beyond min(1000, max_bm_res/dq)) is kept whether it clips or not.

Fusion. All arithmetic is in converter units: DAC codes q = round(x/(max|x|·r·dq)), ADC
inputs v = (dq·q·Wᵀ + σ·ξ)/dy from one ``addmm`` (read noise folded in), ADC codes
round(v), clipping when |code| > out_bound/dy. Bound management is decided per vector
(aihwkit: per batch) and skips work without changing the result:

* the batch starts where the chip's previous read ended for its median vector (a DEQ reads
  one chip at every iteration), or, on a chip's first read and for outputs narrower than
  :data:`FREE_ROWS_OUT`, at the reduction its predicted output range needs (the median of
  the largest of n_out outputs, from ‖x̂‖ and the RMS of W);
* a lower reduction r/m is skipped only where it surely clips: its pre-ADC value is
  m·v(r) − (m − 1)·σξ plus the DAC rounding difference, at most (dq/dy)·(m/2)·‖W_i‖₁
  (bound test), or the output most likely to clip is evaluated exactly by one dot product
  (exact test); otherwise the pass at r/m is run;
* vectors that clip go on to the next reduction.
So the output of every vector is the pass at its first non-clipping reduction, as in the
sequential rule, at about one matmul plus the passes of vectors that end elsewhere.
"""

from __future__ import annotations

import functools
import math
from statistics import NormalDist

import torch
from torch import Tensor

from noisydeq.noise import STABLE_ROWS
from noisydeq.scalars import const
from noisydeq.specs.device_kinds import RRAMSpec

#: float tolerance of the sure-clip tests, relative to the largest possible |v| (codes)
_TOL = 1e-5
#: narrowest output for which a row's GEMM result does not depend on its position in the
#: batch: on this machine (MKL, AVX-512) 2- and 10-wide outputs with an inner dimension
#: not a multiple of 4 (the 10-class heads of the 222/287/339-wide DEQs) round a row
#: differently at other offsets, 15 and wider never did (inner dims 64-339). A pass on a
#: gathered subset of the vectors moves them, so narrower reads keep the start rule of
#: :func:`start_level` (where a read starts decides which subsets are passed)
FREE_ROWS_OUT = 16


def n_states(bits: int) -> int:
    """Quantisation levels of a b-bit converter in aihwkit's convention (2^b − 2)."""
    return max(2**bits - 2, 1)


def bm_limit(spec: RRAMSpec) -> int:
    """Largest input reduction of iterative bound management (1 without it).

    aihwkit halves the input while the output clips and the reduction stays within
    min(max_bm_factor = 1000, max_bm_res / DAC step): passes run at r = 1, 2, 4, … and
    the one at the first r beyond that limit is the last.
    """
    if spec.bound_management == "none":
        return 1
    dq = 2.0 * spec.inp_bound / n_states(spec.dac_bits)
    limit = min(1000.0, spec.max_bm_res / dq)
    r = 1
    while r <= limit:
        r *= 2
    return r


class RowStats:
    """Per-chip statistics of a (normalised) weight matrix W for bound management: the RMS
    of W (the output-range estimate of :func:`start_level`, computed at once) and
    max_i ‖W_i‖₁ (the bound-test margin of :meth:`Tile.sure_clip`, computed on first use
    and kept: a read that starts at r = 1 never needs it, e.g. every read of a training
    step on a 128-wide layer) — and the reduction the median vector of the chip's last read
    ended at (:attr:`start`: where :func:`io_forward` starts the next read of this chip)."""

    __slots__ = ("_l1", "rms", "start", "w")

    def __init__(self, w: Tensor, w_rms: float | None = None) -> None:
        self.w = w
        self.rms = rms(w) if w_rms is None else w_rms
        self._l1: float | None = None
        #: the reduction the median vector of the last read ended at (None: no read yet).
        #: Where a read starts changes which passes run, never a vector's output (module
        #: docstring; outputs narrower than FREE_ROWS_OUT keep :func:`start_level`); a DEQ
        #: reads the same chip at every iteration with similar inputs, and the estimate of
        #: :func:`start_level` starts ~70 % of its vectors one reduction too low (the main
        #: job's DEQs: 1.6-1.9 GEMMs per read)
        self.start: int | None = None

    @property
    def l1_max(self) -> float:
        if self._l1 is None:
            self._l1 = float(self.w.abs().sum(dim=1).max())
        return self._l1


def rms(w: Tensor) -> float:
    """RMS of W (the output-range estimate of :func:`start_level`)."""
    return float(w.square().mean().sqrt())


@functools.lru_cache(maxsize=256)
def _median_max_z(n: int) -> float:
    """z with n·P(|N(0,1)| > z) = ln 2: about the median of the largest of n |normals|."""
    return NormalDist().inv_cdf(1.0 - math.log(2.0) / (2.0 * n))


class Tile:
    """One batch read: converter constants, per-vector scales and the passes."""

    def __init__(
        self, spec: RRAMSpec, x: Tensor, w: Tensor, out_std: float | Tensor, noise: Tensor,
        gain: float,
    ) -> None:
        self.x, self.w, self.noise = x, w, noise
        # converter steps as aihwkit forms them: resolution (1/states) times the range
        self.dq = (1.0 / n_states(spec.dac_bits)) * (2.0 * spec.inp_bound)
        self.dy = (1.0 / n_states(spec.adc_bits)) * (2.0 * spec.out_bound)
        self.clip_in = spec.inp_bound < 1.0  # else |x̂/(r·dq)| never exceeds the DAC range
        self.q_max = spec.inp_bound / self.dq
        self.k_max = spec.out_bound / self.dy  # ADC code bound
        self.k_clip = math.floor(self.k_max) + 0.5  # |v| beyond it rounds to a clipping code
        #: per-row read noise (``out_std`` a tensor: the levels of one chip in one read):
        #: σ_r·ξ as one (rows, n_out) tensor, which the pass adds with β = 1 — the values
        #: of ``addmm`` with β = σ (the GEMM scales its C by β first; tested bit for bit)
        self.scaled_noise: Tensor | None = None
        self.sigma_rows: Tensor | None = None
        if isinstance(out_std, Tensor):
            # each row's σ as the scalar path forms it: float(out_std)/dy in double, then
            # rounded to the noise's dtype (as addmm rounds β)
            self.sigma_rows = out_std.to(torch.float64).div(self.dy).to(noise.dtype)
            self.scaled_noise = noise * self.sigma_rows.unsqueeze(1)
            self.sigma = float(self.sigma_rows.max()) if len(out_std) else 0.0
        else:
            self.sigma = float(out_std) / self.dy  # read noise std in ADC codes
        self.alpha = self.dq / self.dy
        # max |x| as abs().amax(): along the last dim 1.7-2x faster than amax and amin, and
        # aminmax or vector_norm(ord=inf) are ~7-10x slower (torch 2.13 CPU)
        nm = x.abs().amax(dim=-1, keepdim=True)
        self.nm = torch.where(nm > const(0.0, nm), nm, const(1.0, nm))  # zero vectors: 1 (aihwkit)
        # noise-management scale at r = 1: 1.0 / nm, which torch computes as
        # nm.reciprocal() * 1.0 (Tensor.__rtruediv__), the same values
        self.inv = self.nm.reciprocal()
        # output units per ADC code at r = 1 (constants: noisydeq.scalars)
        self.out_scale = self.nm * const(self.dy * gain, nm)
        #: whether no vector of the last :meth:`run` clipped at the ADC
        self.none_clipped = True

    def _rows(self, t: Tensor, rows: Tensor | None) -> Tensor:
        return t if rows is None else t.index_select(0, rows)

    def codes(self, rows: Tensor | None, r: float) -> Tensor:
        """DAC codes of ``rows`` at reduction ``r`` (aihwkit's operation order, so the codes
        are bit-identical to its torch tile's)."""
        inv = self._rows(self.inv, rows)
        if r != 1:  # x / 1 = x: no pass at r = 1
            inv = inv.div(const(r, inv))
        q = self._rows(self.x, rows).mul(inv).div_(const(self.dq, inv))
        q = q.round_()
        return q.clamp_(-self.q_max, self.q_max) if self.clip_in else q

    def run(
        self, rows: Tensor | None, r: float, q: Tensor | None = None, locate: bool = False
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """The pass at reduction ``r`` on ``rows`` (None: all; ``q``: their DAC codes if
        known): output (× gain), the largest |ADC code| of each vector before clipping
        (it clips when > ``k_max``) and, if ``locate``, the output where it is."""
        q = self.codes(rows, r) if q is None else q
        if self.scaled_noise is None:
            noise = self._rows(self.noise, rows)
            code = _stable_addmm(noise, q, self.w.T, self.sigma, self.alpha).round_()
        else:
            noise = self._rows(self.scaled_noise, rows)
            code = _stable_addmm(noise, q, self.w.T, 1.0, self.alpha).round_()
        size = code.abs()
        peak = size.amax(dim=-1)
        self.none_clipped = not bool((peak > const(self.k_max, peak)).any())
        if not self.none_clipped:
            code = code.clamp_(-self.k_max, self.k_max)
            size = size.clamp_(max=self.k_max)  # |clamped code|
        where = _argmax_abs(size, self.k_max) if locate else None
        scale = self._rows(self.out_scale, rows)
        out = code.mul_(scale if r == 1 else scale.mul(const(r, code)))  # x·1 = x
        return out, peak, where

    def sure_clip(
        self, rows: Tensor, peak: Tensor, where: Tensor, r: int, low: int, l1_max: float
    ) -> tuple[Tensor, Tensor]:
        """The vectors of ``rows`` not surely clipping at reduction ``low`` = r/m, and
        their DAC codes at ``low``, from the pass at r (largest |code| ``peak`` at output
        ``where``, of all vectors).

        At output i = ``where`` the pre-ADC value at r/m is m·v_i(r) − (m − 1)·σξ_i +
        (dq/dy)·e·W_iᵀ with |e_j| ≤ m/2 (DAC rounding), so its size is at least
        m·(|code_i| − 1/2 − σ|ξ_i|) − (dq/dy)·(m/2)·max‖W_i‖₁ (bound test); where that does not
        settle it, the value itself is computed (exact test, one dot product).
        """
        m = r // low
        tol = _TOL * self.alpha * l1_max * self.q_max
        idx = where.index_select(0, rows)
        # per-row σ: the read noise σ_r·ξ as the pass adds it (a rounding of σ·ξ apart from
        # the scalar path's, far inside the tests' tolerance ``tol``: both only decide which
        # passes run, never what a pass gives)
        per_row = self.scaled_noise is not None
        noise = (self.noise if self.scaled_noise is None else self.scaled_noise)[rows, idx]
        if self.clip_in:  # DAC clipping voids the rounding bound: exact test only
            rest = torch.ones_like(idx, dtype=torch.bool)
        else:
            top = peak.index_select(0, rows).clamp_(max=self.k_max)  # |code| at `where`
            spread = noise.abs() if per_row else const(self.sigma, top) * noise.abs()
            lower = top - const(0.5, top) - spread
            rest = lower <= const((self.k_clip + tol) / m + self.alpha * l1_max / 2, lower)
        rows, idx, noise = rows[rest], idx[rest], noise[rest]
        q = self.codes(None if rows.numel() == self.x.shape[0] else rows, float(low))
        if rows.numel():
            v = torch.linalg.vecdot(q, self.w.index_select(0, idx))
            v = v.mul_(const(self.alpha, v))
            v = (v.add_(noise) if per_row else v.add_(noise, alpha=self.sigma)).abs_()
            unsure = v <= const(self.k_clip + tol, v)
            rows, q = rows[unsure], q[unsure]
        return rows, q


def _stable_addmm(noise: Tensor, q: Tensor, wt: Tensor, beta: float, alpha: float) -> Tensor:
    """``beta·noise + alpha·q wt`` with fewer than ``STABLE_ROWS`` rows padded by zero rows,
    so each row rounds as in a large batch (a pass runs on the vectors that still clip, a
    solve on the samples still active: their number must not change any row's codes)."""
    m = q.shape[0]
    if 0 < m < STABLE_ROWS:
        pad = STABLE_ROWS - m
        q = torch.cat([q, q.new_zeros((pad, q.shape[1]))])
        noise = torch.cat([noise, noise.new_zeros((pad, noise.shape[1]))])
        return torch.addmm(noise, q, wt, beta=beta, alpha=alpha)[:m]
    return torch.addmm(noise, q, wt, beta=beta, alpha=alpha)


def _argmax_abs(size: Tensor, k_max: float) -> Tensor:
    """Per row, an index of the largest entry of ``size`` (|codes|: integers in [0, k_max]).

    Packs size·2^b + index into one exactly representable float so that one fast
    ``amax`` finds both (falls back to ``argmax`` when it would not be exact).
    """
    n = size.shape[-1]
    bits = max(n - 1, 1).bit_length()
    mantissa = {torch.float32: 24, torch.float64: 53}.get(size.dtype, 0)
    if (k_max + 1) * 2**bits >= 2**mantissa:
        return size.argmax(dim=-1)
    index = torch.arange(n, dtype=size.dtype, device=size.device)
    key = torch.addcmul(index, size, const(float(2**bits), index)).amax(dim=-1)
    return key.remainder_(const(float(2**bits), key)).long()


def start_level(tile: Tile, x: Tensor, n_out: int, w_rms: float, r_max: int) -> int:
    """The reduction (power of 2, ≤ ``r_max``) bound management starts from.

    The largest output of a vector at r = 1, in ADC codes, is predicted as
    z·√(‖x̂‖²·RMS(W)²/dy² + σ²) (isotropic estimate, z the median of the largest of n_out
    |normals|); the start is the smallest r that brings the batch median within the code
    bound, i.e. about the reduction most vectors end at.
    """
    step = max(1, x.shape[0] // 64)  # a sample of the batch is enough for its median
    norm2 = torch.linalg.vector_norm(x[::step], dim=-1, keepdim=True).div_(tile.nm[::step])
    z = _median_max_z(n_out) / tile.k_max
    if tile.sigma_rows is not None:  # per-row σ: the median of the rows' own estimates
        sig2 = tile.sigma_rows[::step].to(norm2.dtype).unsqueeze(1).mul(z).square_()
        ratio2 = float(norm2.square_().mul_((z * w_rms / tile.dy) ** 2).add_(sig2).median())
    else:
        ratio2 = (float(norm2.square_().median()) * (z * w_rms / tile.dy) ** 2
                  + (z * tile.sigma) ** 2)
    r = 1
    while r < r_max and ratio2 > r * r:
        r *= 2
    return r


def _starts_above_one(spec: RRAMSpec, w: Tensor, sigma: float, k_max: float, dy: float,
                      w_rms: float | None, w_peak: float | None) -> bool:
    """Whether :func:`start_level` would start the read of the unit vectors (‖x̂‖² = 1, its
    median of one vector) above r = 1: (z·RMS(W)/dy)² + (z·σ)² > 1. ``w_peak`` (max|W|,
    if known) settles it without the RMS when even max|W| (≥ RMS; a margin of 10⁻⁴ covers
    the RMS's float rounding) stays within the bound: the same answer, one pass fewer."""
    if bm_limit(spec) == 1:
        return False
    z = _median_max_z(w.shape[0]) / k_max
    if w_rms is None and w_peak is not None:
        if (z * w_peak * (1.0 + 1e-4) / dy) ** 2 + (z * sigma) ** 2 <= 1:
            return False
    w_rms = rms(w) if w_rms is None else w_rms  # no L1 norms: one pass, not four
    return 1.0 * (z * w_rms / dy) ** 2 + (z * sigma) ** 2 > 1


def _read_steps(spec: RRAMSpec, out_std: float) -> tuple[float, float, float, float]:
    """(dq, dy, σ in ADC steps, k_max) of a read at ``out_std``, formed as :class:`Tile`
    forms them."""
    dq = (1.0 / n_states(spec.dac_bits)) * (2.0 * spec.inp_bound)
    dy = (1.0 / n_states(spec.adc_bits)) * (2.0 * spec.out_bound)
    return dq, dy, float(out_std) / dy, spec.out_bound / dy


def _unit_codes(spec: RRAMSpec, w_t: Tensor, noise: Tensor, dq: float, dy: float,
                sigma: float) -> Tensor:
    """ADC codes of the unit vectors read through W (``w_t``: Wᵀ, or a stack of them):
    round((dq/dy)·c·Wᵀ + σξ) with c the unit input's DAC code."""
    code = (w_t * const(_unit_code(spec, dq), w_t)).mul_(const(dq / dy, w_t))
    return torch.add(code, noise, alpha=sigma).round_()


def identity_magnitudes(spec: RRAMSpec, ws: list[Tensor], out_std: float, noise: Tensor,
                        w_rms: list[float | None], w_peak: list[float | None],
                        stacked: Tensor | None = None) -> list[Tensor | None]:
    """``identity_read(spec, w, out_std, noise, rms, magnitude=True)`` of each matrix of
    ``ws`` (same shape), those that take the elementwise path computed as one stack.

    The drift compensation reads out the programmed and the drifted chip with the same
    unit vectors and read-noise draw: one chain of elementwise operations over both
    instead of two. Each slice of the stack has the layout of the single read (its
    transpose's), so every value and each slice's mean are the single read's (tested
    bit for bit); ``w_peak``: max|W| where known (:func:`_starts_above_one`); ``stacked``:
    ``ws`` already as one (k, n_out, n_in) tensor, if the caller has it (no copy)."""
    dq, dy, sigma, k_max = _read_steps(spec, out_std)
    out: list[Tensor | None] = [None] * len(ws)
    take = [i for i, w in enumerate(ws)
            if not _starts_above_one(spec, w, sigma, k_max, dy, w_rms[i], w_peak[i])]
    if len(take) < 2:
        for i in take:
            out[i] = identity_read(spec, ws[i], out_std, noise, w_rms[i], magnitude=True,
                                   w_peak=w_peak[i])
        return out
    whole = stacked is not None and len(take) == len(ws)
    stack = stacked if whole else torch.stack([ws[i] for i in take])
    size = _unit_codes(spec, stack.transpose(1, 2), noise, dq, dy, sigma).abs()
    clips = (size.amax(dim=(1, 2)) > const(k_max, size)).tolist()
    size = size.mul_(const(dy, size))
    for j, i in enumerate(take):
        out[i] = None if clips[j] else size[j]
    return out


def _unit_code(spec: RRAMSpec, dq: float) -> float:
    """DAC code of a unit input, round(1/dq), clipped to the DAC range."""
    c = round(1.0 / dq)
    if spec.inp_bound < 1.0:
        q_max = spec.inp_bound / dq
        c = max(-q_max, min(q_max, c))
    return c


def identity_read(spec: RRAMSpec, w: Tensor, out_std: float, noise: Tensor,
                  w_rms: float | None = None, magnitude: bool = False,
                  w_peak: float | None = None) -> Tensor | None:
    """``io_forward(spec, I, w, out_std, noise)`` for the identity inputs, without the matmul.

    The read-out of aihwkit's global drift compensation sends the unit vectors through the
    tile: e_i has max |x| = 1, DAC code c = round(1/dq) (clipped), so row i's ADC input is
    (dq/dy)·c·W[:, i] + σξ_i — elementwise, where the general path spends an n_in-row
    matmul. Returns ``None`` when bound management would not start at r = 1 (the start rule
    of :func:`start_level` for ‖x̂‖ = 1; ``w_rms``: RMS of ``w`` if known) or some vector
    clips at r = 1: the caller then takes the general path. Equal to it up to the float
    rounding order of the GEMM's epilogue: on a 339×339 layer 1 of 114,921 codes differs,
    by one step. ``magnitude``: return |output| instead (what the drift compensation's
    read-out averages; |code|·dy = |code·dy| exactly, one pass fewer). ``w_peak``: max|W|
    if known (it may spare the RMS: :func:`_starts_above_one`).
    """
    dq, dy, sigma, k_max = _read_steps(spec, out_std)
    if _starts_above_one(spec, w, sigma, k_max, dy, w_rms, w_peak):
        return None  # a larger starting reduction: the general path decides
    code = _unit_codes(spec, w.T, noise, dq, dy, sigma)
    size = code.abs()
    if bool(size.amax() > const(k_max, size)):  # some output clips
        return None
    return size.mul_(const(dy, size)) if magnitude else code.mul_(const(dy, code))


def io_forward(
    spec: RRAMSpec,
    x: Tensor,
    w: Tensor,
    out_std: float | Tensor,
    noise: Tensor,
    *,
    gain: float = 1.0,
    stats: RowStats | None = None,
) -> Tensor:
    """IO-managed noisy read ``gain·(W x)`` of the rows of ``x`` (module docstring).

    ``w`` is normalised (max|W| ≈ 1), ``noise`` the standard-normal read-noise draw
    (rows, n_out), ``stats`` the :class:`RowStats` of ``w`` (made here if not given; its L1
    norms are computed only if a pass needs them). ``out_std``: the read noise std, or one
    per row (float64, (rows,)): the SNR levels of one chip read as one batch, each row's
    output the same as reading its level alone (tested bit for bit).
    """
    tile = Tile(spec, x, w, out_std, noise, gain)
    r_max = bm_limit(spec)
    if r_max == 1 or x.shape[0] == 0:
        return tile.run(None, 1.0)[0]
    if stats is None:
        stats = RowStats(w)
    if stats.start is None or w.shape[0] < FREE_ROWS_OUT:
        r = start_level(tile, x, w.shape[0], stats.rms, r_max)
    else:  # where this chip's last read ended for its median vector
        r = min(stats.start, r_max)
    out, peak, where = tile.run(None, float(r), locate=r > 1)
    if r == 1 and tile.none_clipped:  # every vector final at the first pass
        stats.start = 1
        return out
    ended = torch.full_like(peak, float(r))  # the reduction each vector's output is from
    if r < r_max:
        final = peak <= const(tile.k_max, peak)
    else:
        final = torch.ones_like(peak, dtype=torch.bool)
    pending = torch.arange(x.shape[0], device=x.device)  # clip at every reduction < low
    lowered = torch.zeros_like(final)  # output taken from a pass below r
    low = 1
    while low < r and pending.numel():
        assert where is not None
        rest, q = tile.sure_clip(pending, peak, where, r, low, stats.l1_max)
        if rest.numel():  # not surely clipping at `low`: run it
            y, peak_low, _ = tile.run(rest, float(low), q)
            ok = peak_low <= const(tile.k_max, peak_low)
            done = rest[ok]
            out[done] = y[ok]
            lowered[done] = True
            ended[done] = float(low)
            pending = pending[~lowered[pending]]
        low *= 2
    rows = (~(final | lowered)).nonzero().squeeze(1)  # clip at every reduction ≤ r: go on
    while rows.numel():
        r *= 2
        y, peak, _ = tile.run(rows, float(r))
        if r >= r_max:
            out[rows] = y
            ended[rows] = float(r)
            break
        ok = peak <= const(tile.k_max, peak)
        out[rows[ok]] = y[ok]
        ended[rows[ok]] = float(r)
        rows = rows[~ok]
    stats.start = int(ended.median())
    return out
