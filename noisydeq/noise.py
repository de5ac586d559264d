"""SNR maths and the noise primitives of the paper (Eq. 3-4 multiplicative, Eq. 8 additive).

SNR convention (DESIGN §1). For a noisy vector y + ε the SNR is ‖y‖² / E‖ε‖², per sample.
The paper writes ε ~ N(0, ‖y‖/√SNR) per element (Eq. 4); taken literally each of the d
elements has variance ‖y‖²/SNR, so E‖ε‖² = d·‖y‖²/SNR and the realised SNR is SNR/d — it
depends on the width. We draw ε_i ~ N(0, ‖y‖² / (d·SNR)) instead, so the realised SNR equals
the nominal one at every width. ``paper_literal_snr_db`` converts between the two, and the
``paper`` SNR scale (``NoiseSpec.snr_scale``) draws Eq. 4 literally, so results can be set
beside the paper's figures: at width 128 its 0 dB is a realised −21.1 dB.

Randomness only comes from explicit generators. :class:`NoiseStream` wraps one generator or
several, each owning a contiguous block of rows of the batch: a batch that stacks several SNR
levels (one block each) then draws exactly the numbers the per-level runs would draw, which
makes batched sweeps equal to per-point ones for the same seeds.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

import torch
from torch import Tensor

from noisydeq.config import NoiseSpec

SNRLike = float | Tensor


def db_to_linear(snr_db: SNRLike) -> SNRLike:
    """SNR in dB → linear power ratio (``inf`` stays ``inf``)."""
    if isinstance(snr_db, Tensor):
        return torch.pow(10.0, snr_db / 10.0)
    return math.inf if math.isinf(snr_db) else 10.0 ** (snr_db / 10.0)


def linear_to_db(snr: SNRLike) -> SNRLike:
    """Linear power ratio → dB."""
    if isinstance(snr, Tensor):
        return 10.0 * torch.log10(snr)
    if snr <= 0:
        return -math.inf
    return math.inf if math.isinf(snr) else 10.0 * math.log10(snr)


def paper_literal_snr_db(nominal_db: float, width: int) -> float:
    """Realised SNR (dB) of the paper's literal Eq. 4 (per-element std ‖y‖/√SNR) at ``width``."""
    return nominal_db - 10.0 * math.log10(width)


def seeded_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A fresh ``torch.Generator`` on ``device`` seeded with ``seed``."""
    g = torch.Generator(device=device)
    g.manual_seed(int(seed) % (2**63 - 1))
    return g


def derive_seed(*parts: object) -> int:
    """Stable 63-bit seed derived from (seed, model, SNR, chip, ...) — same parts, same seed."""
    import hashlib

    h = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & (2**63 - 1)


#: fewest rows a matmul of a row subset should have: CPU float32 GEMMs of fewer rows take
#: other kernels whose rounding differs from a large batch's (this machine: 1-3, 5-7 and
#: 9-11 rows differ in the last bit, 12 and more match), and one rounding difference can
#: flip an ADC code. Padding a subset to this many rows keeps every row's result
#: independent of how many other rows are evaluated with it (batched == per-point sweeps).
STABLE_ROWS = 16


@dataclass
class RowSubset:
    """The rows ``index`` (ascending) of a ``total``-row batch that one evaluation runs on.

    A solver that stops evaluating samples which already met their stop rule calls f on the
    remaining rows only (:func:`noisydeq.solvers.loop.run_loop`). Inside :func:`row_subset`
    every per-row source draws for the *full* batch and keeps the subset's rows
    (:meth:`NoiseStream.randn`), and per-sample tensors sized for the full batch are sliced
    (:func:`subset_rows`), so each row sees exactly the numbers a full-batch evaluation
    would give it — the subset changes the work, never the result.
    """

    index: Tensor
    total: int
    #: which rows of ``index`` are evaluated for their own sake (``None``: all). A solver
    #: pads small subsets with stopped rows (matmul rounding); meters skip the padding.
    real: Tensor | None = None
    _hits: dict[tuple[int, ...], list[bool]] = field(default_factory=dict, repr=False)

    def blocks_hit(self, block_rows: Sequence[int]) -> list[bool]:
        """Which row blocks (sizes ``block_rows``) hold at least one row of the subset."""
        key = tuple(block_rows)
        if key not in self._hits:
            ends = torch.tensor(key, device=self.index.device).cumsum(0)
            block = torch.bucketize(self.index, ends, right=True)
            counts = torch.bincount(block, minlength=len(key))[: len(key)]
            self._hits[key] = (counts > 0).tolist()
        return self._hits[key]


_ROW_SUBSET: ContextVar[RowSubset | None] = ContextVar("noisydeq_row_subset", default=None)


@contextmanager
def row_subset(index: Tensor, total: int, real: Tensor | None = None) -> Iterator[RowSubset]:
    """Evaluate on the rows ``index`` of a ``total``-row batch (see :class:`RowSubset`)."""
    subset = RowSubset(index, int(total), real)
    token = _ROW_SUBSET.set(subset)
    try:
        yield subset
    finally:
        _ROW_SUBSET.reset(token)


def active_subset(rows: int) -> RowSubset | None:
    """The current :class:`RowSubset` if a consumer seeing ``rows`` rows runs on it."""
    subset = _ROW_SUBSET.get()
    if subset is None or rows != subset.index.numel() or rows == subset.total:
        return None
    return subset


def subset_rows(t: Tensor, rows: int) -> Tensor:
    """A per-sample tensor of the full batch restricted to the current row subset.

    ``t`` is returned unchanged outside :func:`row_subset`, or when its first dimension is
    not the full batch, or when the consumer sees the full batch (``rows``).
    """
    subset = active_subset(rows)
    if subset is None or t.ndim == 0 or t.shape[0] != subset.total:
        return t
    return t.index_select(0, subset.index.to(t.device))


@dataclass
class NoiseStream:
    """A seeded Gaussian source for a batch, optionally split into row blocks.

    ``blocks`` lists ``(n_rows, generator)``; the rows of a drawn tensor are filled block by
    block, each from its own generator. With a single generator the whole batch is one block
    of any size.
    """

    generators: list[torch.Generator]
    block_rows: list[int] | None = None

    @classmethod
    def from_seed(cls, seed: int, device: torch.device | str = "cpu") -> NoiseStream:
        """One generator for the whole batch."""
        return cls([seeded_generator(seed, device)])

    @classmethod
    def from_blocks(
        cls, seeds: Sequence[int], block_rows: Sequence[int], device: torch.device | str = "cpu"
    ) -> NoiseStream:
        """One generator per block of rows (e.g. one block per SNR level of a batched sweep)."""
        if len(seeds) != len(block_rows):
            raise ValueError("one seed per block is required")
        return cls([seeded_generator(s, device) for s in seeds], list(block_rows))

    def randn(self, shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> Tensor:
        """Standard normal tensor of ``shape`` (batch first)."""
        return self._draw(torch.randn, shape, dtype, device)

    def rand(self, shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> Tensor:
        """Uniform [0, 1) tensor of ``shape`` (batch first), block-wise like :meth:`randn`."""
        return self._draw(torch.rand, shape, dtype, device)

    def _draw(self, fn, shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> Tensor:
        shape = tuple(shape)
        subset = active_subset(shape[0]) if shape else None
        if subset is not None:  # draw for the full batch, keep the subset's rows
            full = self._draw_full(fn, (subset.total, *shape[1:]), dtype, device, subset)
            return full.index_select(0, subset.index.to(full.device))
        return self._draw_full(fn, shape, dtype, device, None)

    def _draw_full(
        self, fn, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device,
        subset: RowSubset | None,
    ) -> Tensor:
        if self.block_rows is None:
            return fn(shape, generator=self.generators[0], dtype=dtype, device=device)
        if sum(self.block_rows) != shape[0]:
            raise ValueError(
                f"noise stream expects a batch of {sum(self.block_rows)} rows, got {shape[0]}"
            )
        # Each block is drawn into its slice of one buffer (no concatenation). Under a row
        # subset, blocks without a subset row are not drawn: their rows all stopped, and a
        # block's generator is only ever used for that block's rows (so the numbers every
        # remaining row gets are the ones of a run of that block alone).
        hit = subset.blocks_hit(self.block_rows) if subset is not None else None
        out = torch.empty(shape, dtype=dtype, device=device)
        start = 0
        for j, (n, g) in enumerate(zip(self.block_rows, self.generators, strict=True)):
            if hit is None or hit[j]:
                fn((n, *shape[1:]), generator=g, dtype=dtype, device=device,
                   out=out[start : start + n])
            start += n
        return out


class ReplayStream(NoiseStream):
    """A one-generator stream whose draws are recorded once and replayed on every pass.

    Calibration measures a layer at tens of control values on the same inputs with the same
    seeded stream (common random numbers): every pass draws the same numbers, so they are
    drawn once. :meth:`rewind` starts a pass; a pass that asks for other shapes than the
    recording falls back to redrawing from the seed, so the numbers are always those of a
    fresh ``NoiseStream.from_seed(seed)``. Draws are returned as copies (callers may
    modify them in place).
    """

    def __init__(self, seed: int, device: torch.device | str = "cpu") -> None:
        super().__init__([seeded_generator(seed, device)])
        self.seed, self.device = seed, device
        self.records: list[tuple[tuple, Tensor]] = []
        self.pos = 0

    def rewind(self) -> None:
        self.pos = 0

    def _draw(self, fn, shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> Tensor:
        key = (fn.__name__, tuple(shape), dtype, torch.device(device))
        if self.pos < len(self.records) and self.records[self.pos][0] == key:
            out = self.records[self.pos][1]
        else:  # a new sequence from here on: redraw the recorded prefix from the seed
            prefix = self.records[: self.pos]
            self.generators = [seeded_generator(self.seed, self.device)]
            for (name, shp, dt, dev), _ in prefix:
                draw = torch.randn if name == "randn" else torch.rand
                super()._draw(draw, shp, dt, dev)
            out = super()._draw(fn, shape, dtype, device)
            self.records = [*prefix, (key, out)]
        self.pos += 1
        return out.clone()


def _per_sample(value: SNRLike, y: Tensor) -> Tensor:
    """Broadcast a scalar or per-sample (B,) tensor to shape (B, 1, ..., 1) like ``y``."""
    t = torch.as_tensor(value, dtype=y.dtype, device=y.device)
    if t.ndim == 1:
        t = subset_rows(t, y.shape[0])
    if t.ndim == 0:
        return t.reshape((1,) * y.ndim)
    if t.ndim != 1 or t.shape[0] != y.shape[0]:
        raise ValueError(f"per-sample SNR must have shape ({y.shape[0]},), got {tuple(t.shape)}")
    return t.reshape((-1,) + (1,) * (y.ndim - 1))


def multiplicative_noise_std(y: Tensor, snr_db: SNRLike, scale: str = "realised") -> Tensor:
    """Per-element std of the multiplicative noise of Eq. 4 for the SNR ``snr_db``.

    ``scale="realised"``: std_b = ‖y_b‖ / √(d · SNR_b), d the number of elements of one
    sample, so the realised per-sample SNR ‖y‖²/E‖ε‖² is ``snr_db`` at every width.
    ``scale="paper"``: std_b = ‖y_b‖ / √SNR_b, Eq. 4 read literally per element; the realised
    SNR is then ``snr_db − 10·log10(d)`` (:func:`paper_literal_snr_db`). Zero where
    SNR = inf. Returned with shape (B, 1, ..., 1).
    """
    d = y[0].numel() if y.ndim > 1 else 1
    flat = y.reshape(y.shape[0], -1) if y.ndim > 1 else y.reshape(-1, 1)
    norm2 = flat.pow(2).sum(dim=1).reshape((-1,) + (1,) * (y.ndim - 1))
    snr_lin = db_to_linear(_per_sample(snr_db, y))
    if scale == "paper":
        return torch.sqrt(norm2 / snr_lin)  # inf SNR -> 0 std
    if scale != "realised":
        raise ValueError(f"snr_scale: unknown scale {scale!r} (allowed: realised, paper)")
    return torch.sqrt(norm2 / (d * snr_lin))


def multiplicative(
    y: Tensor, snr_db: SNRLike, stream: NoiseStream, scale: str = "realised"
) -> Tensor:
    """y + ε with ε ~ N(0, ‖y‖²/(d·SNR)) per element, per sample (paper Eq. 3-4); with
    ``scale="paper"`` ε ~ N(0, ‖y‖²/SNR) (:func:`multiplicative_noise_std`).

    The noise scale follows y (input-dependent), and gradients flow through it.
    """
    if not isinstance(snr_db, Tensor) and math.isinf(snr_db):
        return y
    std = multiplicative_noise_std(y, snr_db, scale)
    return y + std * stream.randn(y.shape, y.dtype, y.device)


def additive(y: Tensor, eta: SNRLike, stream: NoiseStream) -> Tensor:
    """y + η ξ with ξ ~ N(0, I) (paper Eq. 8); ``eta`` scalar or per-sample (B,)."""
    if not isinstance(eta, Tensor) and eta == 0.0:
        return y
    return y + _per_sample(eta, y) * stream.randn(y.shape, y.dtype, y.device)


def measured_snr_db(clean: Tensor, noisy: Tensor) -> float:
    """Realised SNR of a batch in dB: Σ‖y‖² / Σ‖ε‖² (ratio of batch totals)."""
    signal = clean.detach().double().pow(2).sum()
    noise = (noisy.detach().double() - clean.detach().double()).pow(2).sum()
    if noise == 0:
        return math.inf
    return float(10.0 * torch.log10(signal / noise))


def measured_snr_db_per_sample(clean: Tensor, noisy: Tensor) -> Tensor:
    """Realised SNR per sample in dB, shape (B,)."""
    c = clean.detach().double().reshape(clean.shape[0], -1)
    e = noisy.detach().double().reshape(noisy.shape[0], -1) - c
    return 10.0 * torch.log10(c.pow(2).sum(1) / e.pow(2).sum(1))


class Noise:
    """Runtime noise injector for one forward pass: a :class:`NoiseSpec` plus a stream.

    ``snr_db`` / ``eta`` may be overridden by per-sample (B,) tensors so that one batch
    carries several noise levels. Models call :meth:`apply` at every site they own; it is
    a no-op for sites other than ``spec.site``.
    """

    def __init__(
        self,
        spec: NoiseSpec,
        stream: NoiseStream,
        snr_db: SNRLike | None = None,
        eta: SNRLike | None = None,
    ) -> None:
        self.spec = spec
        self.stream = stream
        self.snr_db = spec.snr_db if snr_db is None else snr_db
        self.eta = spec.eta if eta is None else eta

    @property
    def site(self) -> str:
        return self.spec.site

    def at(self, site: str) -> bool:
        """True when this injector perturbs ``site``."""
        return self.spec.site == site

    def apply(self, site: str, y: Tensor) -> Tensor:
        """Perturb ``y`` if ``site`` is this injector's site (Eq. 3-4 or Eq. 8)."""
        if self.spec.site != site:
            return y
        if self.spec.kind == "multiplicative":
            return multiplicative(y, self.snr_db, self.stream, self.spec.snr_scale)
        return additive(y, self.eta, self.stream)

    def select(self, index: Tensor) -> Noise:
        """An injector restricted to a subset of the batch rows (per-sample levels sliced).

        Only valid for a single-generator stream (block streams must see the full batch).
        """
        snr = self.snr_db[index] if isinstance(self.snr_db, Tensor) else self.snr_db
        eta = self.eta[index] if isinstance(self.eta, Tensor) else self.eta
        return Noise(self.spec, self.stream, snr, eta)


def make_noise(
    spec: NoiseSpec | None, seed: int = 0, device: torch.device | str = "cpu"
) -> Noise | None:
    """A :class:`Noise` for ``spec`` seeded with ``seed``, or ``None`` when it injects nothing."""
    if spec is None or not spec.active:
        return None
    return Noise(spec, NoiseStream.from_seed(seed, device))
