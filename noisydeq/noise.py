"""SNR maths and the noise primitives of the paper (Eq. 3-4 multiplicative, Eq. 8 additive).

SNR convention (DESIGN §1). For a noisy vector y + ε the SNR is ‖y‖² / E‖ε‖², per sample.
The paper writes ε ~ N(0, ‖y‖/√SNR) per element (Eq. 4); taken literally each of the d
elements has variance ‖y‖²/SNR, so E‖ε‖² = d·‖y‖²/SNR and the realised SNR is SNR/d — it
depends on the width. We draw ε_i ~ N(0, ‖y‖² / (d·SNR)) instead, so the realised SNR equals
the nominal one at every width. ``paper_literal_snr_db`` converts between the two, and the
``paper`` SNR scale (``NoiseSpec.snr_scale``) draws Eq. 4 literally, so results can be set
beside the paper's figures: at width 128 its 0 dB is a realised −21.1 dB.

Randomness is counter-based (:mod:`noisydeq.rng`): every number :class:`NoiseStream` draws
is a pure function of (seed, block, sample, draw count of that sample, element), with the
seed naming model, SNR level, chip and layer (:func:`derive_seed`). A batch that stacks
several SNR levels (one block each) therefore draws exactly the numbers the per-level runs
would draw, a sample keyed by its dataset index gets the same numbers in any batch, chunk or
process, and a solver evaluating only its active rows draws only those.

Length (about 460 lines): one idea, the paper's noise (Eq. 3-4, 8) — the noise model, its
counter-based stream and the seed derivation, kept together because the determinism rule
above spans all three.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch
from torch import Tensor

from noisydeq import rng
from noisydeq.specs.noise import NoiseSpec

SNRLike = float | Tensor


def db_to_linear(snr_db: SNRLike) -> SNRLike:
    """SNR in dB → linear power ratio (``inf`` stays ``inf``).

    Tensors go through ``exp`` (x·ln10/10): CPU ``pow(10, x)`` rounds the last bit of an
    element differently depending on where it falls in the tensor (vectorised body or
    tail), which made a sample's noise depend on the batch it was drawn in.
    """
    if isinstance(snr_db, Tensor):
        return torch.exp(snr_db * (math.log(10.0) / 10.0))
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


def stacked_chunks(levels: Sequence[float], block_rows: int,
                   max_rows: int) -> list[list[float]]:
    """``levels`` cut, in order, into runs that stack into forwards of ≤ ``max_rows`` rows,
    each level a block of ``block_rows`` rows: as many levels per run as fit, at least one."""
    per = max(1, max_rows // max(block_rows, 1))
    levels = list(levels)
    return [levels[i : i + per] for i in range(0, len(levels), per)]


@dataclass
class RowSubset:
    """The rows ``index`` (ascending) of a ``total``-row batch that one evaluation runs on.

    A solver that stops evaluating samples which already met their stop rule calls f on the
    remaining rows only (:func:`noisydeq.solvers.loop.run_loop`). Inside :func:`row_subset`
    every per-row source draws the subset's rows only — a row's numbers are a function of
    its own address (:class:`NoiseStream`), so they are the ones a full-batch evaluation
    would give it — and per-sample tensors sized for the full batch are sliced
    (:func:`subset_rows`): the subset changes the work, never the result.
    """

    index: Tensor
    total: int
    #: which rows of ``index`` are evaluated for their own sake (``None``: all). A solver
    #: pads small subsets with stopped rows (matmul rounding); meters skip the padding, and
    #: noise sources do not count a padding row's draw as one of its calls.
    real: Tensor | None = None


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
    """The current :class:`RowSubset` if a consumer seeing ``rows`` rows runs on it.

    A subset of every row is returned too when some of them are padding (``real``): the
    sources and meters must then skip the padding rows.
    """
    subset = _ROW_SUBSET.get()
    if subset is None or rows != subset.index.numel():
        return None
    if rows == subset.total and subset.real is None:
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


class ReplayMismatch(RuntimeError):
    """A replayed evaluation asked for other draws than the recorded one (:class:`DrawTape`)."""


class DrawTape:
    """The draws of one evaluation of f, kept to be replayed on a subset of its rows.

    The ``ift`` backward solve differentiates one recorded call of f at z*; to take
    vector–Jacobian products on the rows still running it records f again on those rows
    (:mod:`noisydeq.solvers.gradients`). That call must see the noise of the first one, not
    the next draws: inside :func:`record_draws` every :class:`NoiseStream` draw is kept in
    order, and inside :func:`replay_draws` each draw returns the kept one (the current
    :func:`row_subset`'s rows of it) instead of drawing, and advances no count. A replayed
    call that asks for other draws than the recorded ones (another stream, kind or row
    shape, more or fewer draws) is an error, never other numbers.
    """

    def __init__(self) -> None:
        self.draws: list[tuple[NoiseStream, str, tuple[int, ...], Tensor]] = []
        self.pos = 0
        self.replaying = False

    def keep(self, stream: NoiseStream, kind: str, shape: tuple[int, ...], out: Tensor) -> None:
        self.draws.append((stream, kind, shape, out))

    def replay(self, stream: NoiseStream, kind: str, shape: tuple[int, ...],
               dtype: torch.dtype) -> Tensor:
        """The kept draw for this request, restricted to the current row subset."""
        if self.pos >= len(self.draws):
            raise ReplayMismatch("noise replay: the evaluation draws more than the recorded one")
        kept_stream, kept_kind, kept_shape, out = self.draws[self.pos]
        self.pos += 1
        if kept_stream is not stream or kept_kind != kind or out.dtype != dtype:
            raise ReplayMismatch("noise replay: the evaluation draws other numbers than the "
                               "recorded one (stream, kind or dtype differ)")
        if shape == kept_shape:
            subset = active_subset(shape[0])
            if subset is None or subset.total != shape[0]:
                return out.clone()  # (callers may modify a draw in place)
            return out.index_select(0, subset.index.to(out.device))
        subset = active_subset(shape[0])
        if (subset is None or subset.total != kept_shape[0]
                or shape[1:] != kept_shape[1:]):
            raise ReplayMismatch(f"noise replay: a draw of shape {shape} cannot be taken from "
                               f"the recorded {kept_shape}")
        return out.index_select(0, subset.index.to(out.device))

    def check_done(self) -> None:
        if self.pos != len(self.draws):
            raise ReplayMismatch(f"noise replay: the evaluation drew {self.pos} of the "
                               f"{len(self.draws)} recorded draws")


_DRAW_TAPE: ContextVar[DrawTape | None] = ContextVar("noisydeq_draw_tape", default=None)


@contextmanager
def record_draws() -> Iterator[DrawTape]:
    """Keep every :class:`NoiseStream` draw made inside (see :class:`DrawTape`)."""
    tape = DrawTape()
    token = _DRAW_TAPE.set(tape)
    try:
        yield tape
    finally:
        _DRAW_TAPE.reset(token)


@contextmanager
def replay_draws(tape: DrawTape) -> Iterator[DrawTape]:
    """Serve the draws made inside from ``tape``, from its first (see :class:`DrawTape`);
    on a normal exit every kept draw must have been served."""
    replaying = DrawTape()
    replaying.draws, replaying.replaying = tape.draws, True
    token = _DRAW_TAPE.set(replaying)
    try:
        yield replaying
    finally:
        _DRAW_TAPE.reset(token)
    replaying.check_done()


class NoiseStream:
    """A seeded Gaussian / uniform source for a batch whose every number has an address.

    The rows of a drawn tensor are samples (batch first); the rest of its shape is one
    row's elements. Element j of row r in that row's c-th draw is a pure function of
    (block key, sample of r, c, j) — counter-based (:mod:`noisydeq.rng`), so it does not
    depend on the other rows of the batch, on how the batch was split or on which process
    draws it. The only state is a per-row draw count.

    * ``seeds``: one source seed per block of rows (``block_rows``, e.g. one block per SNR
      level of a batched sweep, seeded by the level); with one seed and no ``block_rows``
      the whole batch is one block of any size.
    * ``samples``: the sample index of every row (e.g. its index in the test set); by
      default a row's position in its block. Keying by the dataset index makes a row's
      noise independent of batch size, test batching and chunking.

    Under :func:`row_subset` only the subset's rows are drawn (their own numbers) and only
    their counts advance: a stopped DEQ sample costs nothing.
    """

    #: whether draws follow the current :func:`row_subset` (a stream of a batch's rows)
    follows_subsets = True

    def __init__(
        self,
        seeds: Sequence[int],
        block_rows: Sequence[int] | None = None,
        device: torch.device | str = "cpu",
        samples: Tensor | Sequence[int] | None = None,
    ) -> None:
        self.seeds = [int(k) for k in seeds]
        if not self.seeds:
            raise ValueError("a noise stream needs at least one seed")
        if block_rows is None and len(self.seeds) != 1:
            raise ValueError("several seeds need their block sizes")
        if block_rows is not None and len(self.seeds) != len(block_rows):
            raise ValueError("one seed per block is required")
        self.block_rows = None if block_rows is None else [int(n) for n in block_rows]
        self.device = torch.device(device)
        self.samples = None if samples is None else torch.as_tensor(samples, dtype=torch.int64)
        if self.samples is not None and self.block_rows is not None:
            if self.samples.shape != (sum(self.block_rows),):
                raise ValueError("one sample index per row of the blocks is required")
        #: per row: the SplitMix64 child stream (gamma), its state before the next call
        #: (base) and the advance of one call (step) — see :mod:`noisydeq.rng`
        self._gamma: Tensor | None = None
        self._base: Tensor | None = None
        self._step: Tensor | None = None
        #: (shape, dtype, numbers) of the next ``randn`` call, drawn ahead with other
        #: streams' (:meth:`draw_ahead`); dropped by any other use of the stream
        self._ahead: tuple[tuple[int, ...], torch.dtype, Tensor] | None = None
        #: (stream of this seed keyed by position, its rows to take): set-up copied from
        #: it on first use instead of recomputed (:meth:`rows_of`)
        self._table: tuple[NoiseStream, Tensor] | None = None

    @classmethod
    def from_seed(
        cls, seed: int, device: torch.device | str = "cpu",
        samples: Tensor | Sequence[int] | None = None,
    ) -> NoiseStream:
        """One source for the whole batch (rows keyed by ``samples`` or their position)."""
        return cls([seed], None, device, samples)

    @classmethod
    def many(
        cls, seeds: Sequence[int], device: torch.device | str = "cpu",
        samples: Tensor | Sequence[int] | None = None,
    ) -> list[NoiseStream]:
        """``[from_seed(s, device, samples) for s in seeds]`` with the rows of all of them
        set up by one :func:`rng.split` (e.g. every device layer's stream of a training
        batch): the same streams, fewer tensor operations."""
        out = [cls.from_seed(s, device, samples) for s in seeds]
        if samples is None or not out:
            return out
        dev = torch.device(device)
        rows = out[0].samples
        assert rows is not None
        n = int(rows.numel())
        keys = torch.tensor([rng.stream_key(s) for s in seeds],
                            dtype=torch.int64).repeat_interleave(n)
        seed, gamma = rng.split(keys.to(dev), rows.repeat(len(out)).to(dev))
        step = rng.call_step(gamma)
        for i, stream in enumerate(out):
            sl = slice(i * n, (i + 1) * n)
            stream._gamma, stream._base, stream._step = gamma[sl], seed[sl], step[sl]
        return out

    @classmethod
    def table(cls, seeds: Sequence[int], device: torch.device | str = "cpu") -> StreamTable:
        """A :class:`StreamTable` of the sources ``seeds``: ``table.streams(samples)`` is
        ``many(seeds, device, samples)`` with the rows taken from a set-up kept across
        batches (one split per source and sample, not one per batch)."""
        return StreamTable(seeds, device)

    def rows_of(self, samples: Tensor) -> NoiseStream:
        """``from_seed(seed, device, samples)`` of this stream's one seed, its rows' set-up
        (:func:`rng.split`) taken from this stream's rows ``samples`` on its first draw.

        This stream must be keyed by position (one seed, no ``samples``, no blocks) and
        serves as a table: row r's set-up is a function of (seed, r) alone, so the taken
        rows are exactly the ones a fresh stream of ``samples`` computes; the table grows
        to the largest sample asked for and is never drawn from. A training epoch keeps one
        table per source and takes each batch's rows from it: one split per epoch instead
        of one per batch, the same numbers."""
        if self.samples is not None or self.block_rows is not None or len(self.seeds) != 1:
            raise ValueError("a row table is a one-seed stream keyed by position")
        rows = torch.as_tensor(samples, dtype=torch.int64)
        out = NoiseStream.from_seed(self.seeds[0], self.device, rows)
        out._table = (self, rows)
        return out

    def _take_rows(self, device: torch.device) -> None:
        """Set up this stream's rows from its table (:meth:`rows_of`), once."""
        assert self._table is not None
        table, samples = self._table
        self._table = None
        if not samples.numel():
            return
        have = 0 if table._base is None else table._base.shape[0]
        gamma, base, step = table._rows(max(have, int(samples.max()) + 1), table.device)
        index = samples.to(gamma.device)
        self._gamma, self._base, self._step = (gamma.index_select(0, index).to(device),
                                               base.index_select(0, index).to(device),
                                               step.index_select(0, index).to(device))

    @staticmethod
    def draw_ahead(streams: Sequence[NoiseStream], shapes: Sequence[Sequence[int]],
                   dtype: torch.dtype, device: torch.device | str = "cpu") -> None:
        """Draw the next ``randn(shape)`` of each stream now, streams whose rows have the
        same length together in one :func:`rng.normal` call (e.g. the same-width device
        layers of a training batch: one draw instead of one per layer). A row's numbers
        depend only on its own state (counter-based), so each stream's next ``randn`` of
        that shape returns exactly what it would have drawn; any other use (another shape
        or kind, a row subset, :meth:`skip`) drops the numbers drawn ahead and draws as
        usual. Streams not set up for a batch of ``shape[0]`` rows are left alone."""
        dev = torch.device(device)
        groups: dict[int, list[tuple[NoiseStream, tuple[int, ...], Tensor, Tensor]]] = {}
        for stream, shape in zip(streams, shapes, strict=True):
            shape = tuple(int(v) for v in shape)
            stream._ahead = None
            if (len(shape) < 2 or stream._base is None or stream._fixed_rows() != shape[0]
                    or stream._base.shape[0] != shape[0]):
                continue
            gamma, base, _ = stream._rows(shape[0], dev)
            groups.setdefault(math.prod(shape[1:]), []).append((stream, shape, base, gamma))
        for n, members in groups.items():
            if len(members) < 2 or not n:  # alone: nothing to share
                continue
            out = rng.normal(torch.cat([b for _, _, b, _ in members]),
                             torch.cat([g for _, _, _, g in members]), n, dtype)
            start = 0
            for stream, shape, _, _ in members:
                stream._ahead = (shape, dtype, out[start:start + shape[0]].reshape(shape))
                start += shape[0]

    @classmethod
    def from_blocks(
        cls, seeds: Sequence[int], block_rows: Sequence[int], device: torch.device | str = "cpu",
        samples: Tensor | Sequence[int] | None = None,
    ) -> NoiseStream:
        """One source per block of rows (e.g. one block per SNR level of a batched sweep)."""
        return cls(seeds, block_rows, device, samples)

    # ------------------------------------------------------------------ rows
    def _fixed_rows(self) -> int | None:
        if self.samples is not None:
            return int(self.samples.numel())
        return None if self.block_rows is None else sum(self.block_rows)

    def _rows(self, total: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        """(gamma, base, step) of the batch's ``total`` rows on ``device``."""
        if self._table is not None:
            self._take_rows(device)
        fixed = self._fixed_rows()
        if fixed is not None and fixed != total:
            raise ValueError(f"noise stream expects a batch of {fixed} rows, got {total}")
        have = 0 if self._base is None else self._base.shape[0]
        if have < total:  # a keyed-by-position stream meets a larger batch: add rows
            keys, samples = self._row_addresses(have, total)
            seed, gamma = rng.split(keys.to(device), samples.to(device))
            step = rng.call_step(gamma)
            base = seed
            if self._base is not None:
                base = torch.cat([self._base.to(device), base])
                gamma = torch.cat([self._gamma.to(device), gamma])  # type: ignore[union-attr]
                step = torch.cat([self._step.to(device), step])  # type: ignore[union-attr]
            self._gamma, self._base, self._step = gamma, base, step
        assert self._gamma is not None and self._base is not None and self._step is not None
        if self._base.device != device:
            self._gamma, self._base, self._step = (
                self._gamma.to(device), self._base.to(device), self._step.to(device)
            )
        if self._base.shape[0] > total:  # the first rows (views: counts advance in place)
            return self._gamma[:total], self._base[:total], self._step[:total]
        return self._gamma, self._base, self._step

    def _row_addresses(self, start: int, stop: int) -> tuple[Tensor, Tensor]:
        """(stream key, sample) of rows ``start`` … ``stop`` − 1."""
        keys = [rng.stream_key(s) for s in self.seeds]
        if self.block_rows is None:
            key = torch.full((stop - start,), keys[0], dtype=torch.int64)
            pos = torch.arange(start, stop, dtype=torch.int64)
        else:
            sizes = torch.tensor(self.block_rows)
            key = torch.tensor(keys, dtype=torch.int64).repeat_interleave(sizes)[start:stop]
            pos = torch.cat([torch.arange(n, dtype=torch.int64) for n in self.block_rows])
            pos = pos[start:stop]
        samples = pos if self.samples is None else self.samples[start:stop]
        return key, samples

    def skip(self, shape: Sequence[int]) -> None:
        """Advance the draw counts as a draw of ``shape`` would, without drawing."""
        shape = tuple(shape) or (1,)
        self._ahead = None
        _, base, step = self._rows(shape[0], self.device if self._base is None
                                   else self._base.device)
        base.add_(step)

    # ----------------------------------------------------------------- draws
    def randn(self, shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> Tensor:
        """Standard normal tensor of ``shape`` (batch first)."""
        return self._draw("randn", shape, dtype, device)

    def rand(self, shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> Tensor:
        """Uniform [0, 1) tensor of ``shape`` (batch first)."""
        return self._draw("rand", shape, dtype, device)

    def _draw(self, kind: str, shape: Sequence[int], dtype: torch.dtype,
              device: torch.device) -> Tensor:
        shape = tuple(int(s) for s in shape)
        dev = torch.device(device)
        if not shape:
            return self._draw(kind, (1,), dtype, dev).reshape(())
        tape = _DRAW_TAPE.get()
        if tape is None:
            return self._fresh(kind, shape, dtype, dev)
        if tape.replaying:
            return tape.replay(self, kind, shape, dtype)
        out = self._fresh(kind, shape, dtype, dev)
        tape.keep(self, kind, shape, out)
        return out

    def _fresh(self, kind: str, shape: tuple[int, ...], dtype: torch.dtype,
               dev: torch.device) -> Tensor:
        """Draw ``shape`` (non-empty) from this stream's current counts (:meth:`_draw`)."""
        m, n = shape[0], math.prod(shape[1:])
        subset = active_subset(m) if self.follows_subsets else None
        ahead, self._ahead = self._ahead, None
        gamma, base, step = self._rows(m if subset is None else subset.total, dev)
        if (ahead is not None and subset is None and kind == "randn" and ahead[0] == shape
                and ahead[1] == dtype and ahead[2].device == base.device):
            base.add_(step)  # drawn ahead from this very state (draw_ahead)
            return ahead[2]
        if subset is not None:  # only the subset's rows, at their own counts
            index = subset.index.to(dev)
            gamma, row_base = gamma.index_select(0, index), base.index_select(0, index)
        else:
            row_base = base
        fn = rng.normal if kind == "randn" else rng.uniform
        out = fn(row_base, gamma, n, dtype).reshape(shape) if m and n else torch.empty(
            shape, dtype=dtype, device=dev)
        if subset is None:
            base.add_(step)
        else:  # padding rows of a small subset do not use up a call
            if subset.real is not None:
                index = index[subset.real.to(dev)]
            base.index_add_(0, index, step.index_select(0, index))
        return out


class StreamTable:
    """The row set-up of several one-seed sources for samples 0 … n − 1, kept across
    batches (:meth:`NoiseStream.table`).

    A row's set-up — its child stream's seed, gamma and call step (:func:`rng.split`) — is
    a function of (source, sample) alone. :meth:`streams` takes a batch's rows of every
    source from one (3, sources, n) table by one index instead of splitting them again:
    the streams :meth:`NoiseStream.many` sets up for the same samples, the same numbers
    (e.g. every device layer's stream of a training batch, one table per epoch). The table
    grows to the largest sample asked for, :data:`GROW` rows at a time."""

    #: rows added at a time
    GROW = 256

    def __init__(self, seeds: Sequence[int], device: torch.device | str = "cpu") -> None:
        self.seeds = [int(s) for s in seeds]
        self.device = torch.device(device)
        self._keys = torch.tensor([rng.stream_key(s) for s in self.seeds], dtype=torch.int64)
        #: (seed, gamma, call step) of every (source, sample) filled so far
        self._rows = torch.empty((3, len(self.seeds), 0), dtype=torch.int64, device=self.device)

    def _grow(self, n: int) -> None:
        have = self._rows.shape[2]
        if n <= have:
            return
        n = -(-n // self.GROW) * self.GROW
        samples = torch.arange(have, n, dtype=torch.int64).repeat(len(self.seeds))
        keys = self._keys.repeat_interleave(n - have)
        seed, gamma = rng.split(keys.to(self.device), samples.to(self.device))
        new = torch.stack([seed, gamma, rng.call_step(gamma)])
        self._rows = torch.cat([self._rows, new.reshape(3, len(self.seeds), n - have)], dim=2)

    def streams(self, samples: Tensor | Sequence[int]) -> list[NoiseStream]:
        """``NoiseStream.many(seeds, device, samples)``, the rows taken from the table."""
        rows = torch.as_tensor(samples, dtype=torch.int64)
        if not rows.numel() or not self.seeds:
            return NoiseStream.many(self.seeds, self.device, rows)
        low, high = (int(v) for v in torch.aminmax(rows))
        if low < 0:  # not a table row: split as usual
            return NoiseStream.many(self.seeds, self.device, rows)
        self._grow(high + 1)
        # a fresh (3, sources, batch) tensor: the draw counts advance in place in it
        seed, gamma, step = (t.unbind(0) for t in
                             self._rows.index_select(2, rows.to(self.device)).unbind(0))
        out = [NoiseStream.from_seed(s, self.device, rows) for s in self.seeds]
        for i, stream in enumerate(out):
            stream._base, stream._gamma, stream._step = seed[i], gamma[i], step[i]
        return out


class ReplayStream(NoiseStream):
    """A one-source stream whose draws are recorded once and replayed on every pass.

    Calibration measures a layer at tens of control values on the same inputs with the same
    seeded stream (common random numbers): every pass draws the same numbers, so they are
    drawn once. :meth:`rewind` starts a pass; a pass that asks for other shapes than the
    recording draws afresh from there on, with the counts the recorded prefix left, so the
    numbers are always those of a fresh ``NoiseStream.from_seed(seed)``. Draws are returned
    as copies (callers may modify them in place). Its rows are calibration vectors, never a
    batch's: a solver's row subset does not apply.
    """

    follows_subsets = False

    def __init__(self, seed: int, device: torch.device | str = "cpu") -> None:
        super().__init__([seed], None, device)
        self.seed = seed
        self.records: list[tuple[tuple, Tensor]] = []
        self.pos = 0

    def rewind(self) -> None:
        self.pos = 0

    def _draw(self, kind: str, shape: Sequence[int], dtype: torch.dtype,
              device: torch.device) -> Tensor:
        key = (kind, tuple(shape), dtype, torch.device(device))
        if self.pos < len(self.records) and self.records[self.pos][0] == key:
            out = self.records[self.pos][1]
        else:  # a new sequence from here on: the counts of the recorded prefix, then draw
            prefix = self.records[: self.pos]
            self._gamma = self._base = self._step = None
            for (_, shp, _, _), _ in prefix:
                self.skip(shp)
            out = super()._draw(kind, shape, dtype, device)
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

        Only valid for a stream keyed by row position (``from_seed`` without samples): the
        selected rows then draw as rows 0 … len(index) − 1 of that stream.
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
