"""Counter-based random numbers on whole tensors: every value a pure function of its address.

A number drawn here is addressed by (key, sample, call, element): ``key`` names the source
(seed, model, SNR level, chip, layer — hashed by :func:`noisydeq.noise.derive_seed`),
``sample`` the dataset row it perturbs, ``call`` how many draws that row already made from
the source (the solver step, for a layer called once per iteration) and ``element`` the
position inside the row. No state is carried from one tensor to the next beyond a per-row
call count, so the value a row receives does not depend on which other rows are drawn with
it, in what batch, chunk, process or order (:class:`noisydeq.noise.NoiseStream`).

The generator is SplitMix64 (Steele, Lea & Flood, "Fast splittable pseudorandom number
generators", OOPSLA 2014; the generator of Java's ``SplittableRandom``), indexed instead of
stepped. A SplitMix64 stream (seed s, odd gamma γ) outputs mix64(s + i·γ) at step i, with
mix64 Stafford's "Mix13" 64-bit finaliser (xor-shift 30, multiply, xor-shift 27, multiply,
xor-shift 31; a bijection with full avalanche). Its state after i steps is known in closed
form, so output i is computed directly: a counter-based generator in the sense of Salmon
et al. ("Parallel random numbers: as easy as 1, 2, 3", SC 2011). Statistical quality: its
authors tested SplitMix with DieHarder and TestU01 (BigCrush), single and split streams, and
chose this finaliser and the gamma rule below from those tests; it is the generator Vigna
recommends for seeding xoshiro. It is fit for Monte Carlo, not for cryptography (two
outputs reveal the state). Not re-run here: ``tests/test_rng.py`` checks reference
outputs, moments and a KS test of the Gaussians, and correlations between sources, steps,
samples and neighbouring elements, all at 4σ. The address is mapped onto the generator as
SplitMix's own ``split`` would:

* key → stream key k = mix64(key + γ₀) (γ₀ = 2⁶⁴/φ, the golden gamma);
* (k, sample) → a child stream: seed mix64(k + (2·sample + 1)·γ₀) and gamma
  mixGamma(k + (2·sample + 2)·γ₀) (MurmurHash3's fmix64, forced odd, with the popcount fix
  of the paper that rejects gammas with fewer than 24 bit transitions);
* (call, element) → the child's step i = call·2³² + element + 1 (so a call holds up to 2³²
  elements and calls never overlap).

Different samples and sources therefore run SplitMix64 streams with independent seeds *and*
gammas: two of them can meet in single states (a birthday event of any 64-bit generator)
but not share a run of consecutive outputs, which a fixed gamma would allow.

Gaussians use the Box–Muller transform (Box & Muller 1958) on one 64-bit output per pair of
elements: the high 32-bit word gives the radius √(−2 ln u), u = (|w| + ½)/(2³¹ + 1) ∈ (0, 1)
(tails to 6.6σ; ``torch.randn`` reaches 5.8σ in float32), the low word the angle: in a row
of n elements, elements j and ⌈n/2⌉ + j are r·cos θ and r·sin θ of output j (the row length
of a source is fixed: a layer's output width). Uniforms take one output per element (the
top 24 bits for float32, 53 for float64, like ``torch.rand``). The arithmetic is int64 with
wrap-around (two's complement; shifts made logical by masking), which CPU and CUDA kernels
share: the integer outputs are identical on both, Gaussians up to the last bit of their
``log``/``cos``/``sin``/``sqrt`` (eager float32 ``sqrt`` is not correctly rounded on this CPU
build; a compiled kernel's is).

Why not a library: torch 2.13's CPU generator is MT19937, a serial state machine (one
stream per ``torch.Generator`` object), and its counter-based Philox exists for CUDA
generators only (``torch.ops.rngprims.philox_rand`` refuses CPU tensors: "cpu does not use
Philox/counter-based RNG"); numpy's Philox is again one generator object per stream. Neither
gives every element its own key on a whole tensor. Philox4x32-10 itself would cost, in
tensor operations, ten rounds of two 32×32→64-bit products, four masks/shifts and four xors
per four outputs — about five times the passes of one SplitMix64 output per two Gaussians.
"""

from __future__ import annotations

import math
import sys

import torch
from torch import Tensor

from noisydeq.scalars import const

_MASK = (1 << 64) - 1
#: γ₀ = 2⁶⁴/φ (odd): SplitMix64's default gamma
GOLDEN = 0x9E3779B97F4A7C15
_MIX1, _MIX2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB  # Stafford Mix13 (mix64)
_FMIX1, _FMIX2 = 0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53  # MurmurHash3 fmix64 (mixGamma)
#: elements one call of a row may draw (the call index occupies the high 32 bits of the step)
CALL_SPAN = 1 << 32
_TWO_PI = 2.0 * math.pi
_BIG_ENDIAN = sys.byteorder == "big"


def _signed(v: int) -> int:
    """A 64-bit pattern as the value of a signed int64 (for torch tensors and scalars)."""
    v &= _MASK
    return v - (1 << 64) if v >= 1 << 63 else v


# ------------------------------------------------------------------ Python-int reference


def mix64_int(z: int) -> int:
    """Stafford's Mix13 finaliser on a Python int (mod 2⁶⁴): SplitMix64's output function."""
    z &= _MASK
    z = ((z ^ (z >> 30)) * _MIX1) & _MASK
    z = ((z ^ (z >> 27)) * _MIX2) & _MASK
    return z ^ (z >> 31)


def stream_key(seed: int) -> int:
    """The 64-bit key (as a signed int64 value) of a source seeded with ``seed``."""
    return _signed(mix64_int(int(seed) + GOLDEN))


# --------------------------------------------------------------------- tensor primitives


def _xorshift_(z: Tensor, s: int) -> Tensor:
    """z ^= z >>> s (logical shift on int64: the arithmetic shift's sign copies masked off)."""
    return z.bitwise_xor_(torch.bitwise_right_shift(z, s).bitwise_and_((1 << (64 - s)) - 1))


def mix64_(z: Tensor) -> Tensor:
    """:func:`mix64_int` in place on an int64 tensor (multiplications wrap mod 2⁶⁴)."""
    _xorshift_(z, 30).mul_(_signed(_MIX1))
    _xorshift_(z, 27).mul_(_signed(_MIX2))
    return _xorshift_(z, 31)


#: set bits of every byte value 0 … 255 (per device: :func:`_popcount`)
_BYTE_BITS: dict[torch.device, Tensor] = {}


def _popcount(z: Tensor) -> Tensor:
    """Number of set bits of each int64: the bit counts of its eight bytes, looked up and
    summed (exact integers: the same counts as a SWAR bit count, in 3 tensor operations
    instead of 13)."""
    table = _BYTE_BITS.get(z.device)
    if table is None:
        table = _BYTE_BITS[z.device] = torch.tensor(
            [bin(v).count("1") for v in range(256)], dtype=torch.int64, device=z.device)
    octets = z.contiguous().view(torch.uint8).reshape(*z.shape, 8)
    return table[octets.long()].sum(dim=-1)


def mix_gamma(z: Tensor) -> Tensor:
    """SplitMix64's gamma of a child stream: fmix64, forced odd; a gamma with fewer than 24
    bit transitions (popcount(γ ^ γ>>>1) < 24) is xored with 0xAAAA… (Steele et al. 2014)."""
    z = z.clone()
    _xorshift_(z, 33).mul_(_signed(_FMIX1))
    _xorshift_(z, 33).mul_(_signed(_FMIX2))
    _xorshift_(z, 33).bitwise_or_(1)
    flips = _popcount(z ^ (torch.bitwise_right_shift(z, 1) & ((1 << 63) - 1)))
    return torch.where(flips < 24, z ^ _signed(0xAAAAAAAAAAAAAAAA), z)


def split(keys: Tensor, samples: Tensor) -> tuple[Tensor, Tensor]:
    """(seed, gamma) of the child stream ``samples`` of each stream key (int64 tensors).

    The child of index s takes outputs 2s+1 and 2s+2 of the parent stream (key, γ₀) as
    SplitMix64's ``split`` takes the next two: a seed by mix64, a gamma by mixGamma.
    """
    base = keys.to(torch.int64) + samples.to(torch.int64) * _signed(2 * GOLDEN)
    return mix64_(base + _signed(GOLDEN)), mix_gamma(base + _signed(2 * GOLDEN))


def row_base(seed: Tensor, gamma: Tensor, calls: Tensor) -> Tensor:
    """Each row's state before the first output of its call ``calls[r]``: seed + call·2³²·γ."""
    return torch.bitwise_left_shift(calls.to(torch.int64), 32).mul_(gamma).add_(seed)


def call_step(gamma: Tensor) -> Tensor:
    """The state advance of one call, 2³²·γ (mod 2⁶⁴): ``row_base`` of the next call."""
    return torch.bitwise_left_shift(gamma, 32)


#: 64-bit outputs computed per pass (a chunk of rows): its temporaries stay in a core's L2
CHUNK = 1 << 15
_STEPS: dict[tuple[int, torch.device], Tensor] = {}


def _steps(n: int, device: torch.device) -> Tensor:
    """1 … n as int64 on ``device`` (cached: every draw of a layer has the same row length)."""
    key = (n, device)
    t = _STEPS.get(key)
    if t is None:
        if len(_STEPS) > 64:
            _STEPS.clear()
        t = _STEPS[key] = torch.arange(1, n + 1, dtype=torch.int64, device=device)
    return t


def raw_bits(base: Tensor, gamma: Tensor, n: int) -> Tensor:
    """(m, n) int64: outputs mix64(base_r + i·gamma_r), i = 1 … n, of the m rows."""
    if n >= CALL_SPAN:
        raise ValueError(f"one draw may hold at most {CALL_SPAN - 1} numbers per row, got {n}")
    state = torch.addcmul(base[:, None], gamma[:, None], _steps(n, base.device)[None, :])
    return mix64_(state)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    if not dtype.is_floating_point:
        raise TypeError(f"random draws are floating point, got {dtype}")
    return torch.float64 if dtype == torch.float64 else torch.float32


def _chunks(m: int, per_row: int) -> list[slice]:
    rows = max(1, CHUNK // max(per_row, 1))
    return [slice(i, min(i + rows, m)) for i in range(0, m, rows)]


#: 2 ln(2³¹ + 1): r² = −2 ln((|w| + ½)/(2³¹ + 1)) = this − 2 ln(|w| + ½)
_LOG_SPAN2 = 2.0 * math.log(2.0**31 + 1.0)


def normal(base: Tensor, gamma: Tensor, n: int, dtype: torch.dtype) -> Tensor:
    """(m, n) standard normals from rows at states ``base`` (Box–Muller, module docstring):
    with h = ⌈n/2⌉, elements j and h + j of a row are r·cos θ and r·sin θ of the row's
    output j + 1 (the two halves are written contiguously: no interleaving pass)."""
    m, pairs = base.shape[0], (n + 1) // 2
    cdt = _compute_dtype(dtype)
    out = torch.empty((m, n), dtype=cdt, device=base.device)
    for sl in _chunks(m, pairs):
        words = raw_bits(base[sl], gamma[sl], pairs).view(torch.int32)
        words = words.view(-1, pairs, 2).permute(2, 0, 1)
        if _BIG_ENDIAN:  # the words of an int64 in memory are (low, high) on little-endian
            words = words.flip(0)
        f = words.to(cdt, memory_format=torch.contiguous_format)
        # float constants as 0-dim tensors (noisydeq.scalars: no cast per call, same values)
        theta, r = f[0].mul_(const(_TWO_PI * 2.0**-32, f)), f[1]
        r = torch.rsub(r.abs_().add_(const(0.5, f)).log_(), const(_LOG_SPAN2, f),
                       alpha=2.0).sqrt_()
        torch.mul(theta.cos(), r, out=out[sl, :pairs])
        rest = n - pairs
        torch.mul(theta.sin_()[:, :rest], r[:, :rest], out=out[sl, pairs:])
    return out if cdt == dtype else out.to(dtype)


def uniform(base: Tensor, gamma: Tensor, n: int, dtype: torch.dtype) -> Tensor:
    """(m, n) uniforms in [0, 1): the top 24 (float32) or 53 (float64) bits of one output
    per element, as ``torch.rand`` builds them."""
    cdt = _compute_dtype(dtype)
    bits = 53 if cdt == torch.float64 else 24
    out = torch.empty((base.shape[0], n), dtype=cdt, device=base.device)
    for sl in _chunks(base.shape[0], n):
        h = raw_bits(base[sl], gamma[sl], n)
        top = torch.bitwise_right_shift(h, 64 - bits).bitwise_and_((1 << bits) - 1)
        torch.mul(top, 2.0**-bits, out=out[sl])
    return out if cdt == dtype else out.to(dtype)
