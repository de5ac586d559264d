"""Random draws: the counter-based ``NoiseStream`` vs torch's CPU generator (MT19937).

Every dynamic-noise draw of a device layer or noise site goes through
:class:`noisydeq.noise.NoiseStream`, counter-based (:mod:`noisydeq.rng`: SplitMix64 by
address, Box–Muller). The peer is what the stream replaced and what a researcher would
call: ``torch.randn`` from a seeded ``torch.Generator`` (MT19937, serial), the same shape
and dtype, timed interleaved in the same run, at one intra-op thread and at the default.

Rows (ours / peer, lower is better):

* a device layer's draw (256 × 467 float32) and one million numbers (2048 × 512);
* a solver late in a noisy sweep, where 10 % of the rows are still active: ours draws the
  active rows only (``row_subset``), the full-batch scheme it replaced drew every row and
  kept the active ones — what skipping stopped samples saves.

Checks: the million Gaussians' mean and variance within 4σ of N(0, 1), and the subset
draw equal to the same rows of a full draw (the contract that makes skipping free).
"""

from __future__ import annotations

import math

import torch

from benchmarks.common import Row, ratio, timeit_pair
from noisydeq.noise import NoiseStream, row_subset

CPU = torch.device("cpu")
TARGET = 1.0  # no slower than torch.randn


def _stream(rows: int) -> NoiseStream:
    return NoiseStream.from_seed(7, samples=torch.arange(rows))


def _row(name: str, ours, peer, n: int, repeat: int, check: str, ok: bool | None) -> Row:
    t_ours, t_peer = timeit_pair(ours, peer, repeat=repeat, warmup=2)
    extra = {"ns_per_number_ours": t_ours.best / n * 1e9,
             "ns_per_number_peer": t_peer.best / n * 1e9,
             "median_ours": t_ours.median, "median_peer": t_peer.median,
             "threads": torch.get_num_threads()}
    return Row("rng", name, t_ours.best, t_peer.best, ratio(t_ours.best, t_peer.best), TARGET,
               check=check, ok=ok, extra=extra)


def bench_rng(shapes: tuple[tuple[int, int], ...] = ((256, 467), (2048, 512)),
              repeat: int = 20, threads: tuple[int, ...] = (1, 0)) -> list[Row]:
    """Rows: NoiseStream.randn vs torch.randn per shape and thread count (0: default)."""
    default = torch.get_num_threads()
    rows: list[Row] = []
    counts = list(dict.fromkeys(th or default for th in threads))  # 0 may resolve to 1
    try:
        for th in counts:
            torch.set_num_threads(th)
            label = f"{torch.get_num_threads()} thread{'s' if torch.get_num_threads() > 1 else ''}"
            gen = torch.Generator().manual_seed(0)
            for b, d in shapes:
                stream = _stream(b)
                z = stream.randn((b, d), torch.float32, CPU).double()
                n = z.numel()
                mean_ok = abs(float(z.mean())) < 4 / math.sqrt(n)
                var_ok = abs(float(z.var()) - 1) < 4 * math.sqrt(2 / n)
                rows.append(_row(
                    f"randn {b}x{d} float32, {label}: NoiseStream vs torch.randn (MT19937)",
                    lambda s=stream, b=b, d=d: s.randn((b, d), torch.float32, CPU),
                    lambda g=gen, b=b, d=d: torch.randn((b, d), generator=g),
                    n, repeat, f"mean/var within 4σ: {mean_ok and var_ok}", mean_ok and var_ok,
                ))
            b, d = shapes[0]
            active = torch.arange(0, b, 10)  # 10 % of the rows still iterating
            stream = _stream(b)
            full = stream.randn((b, d), torch.float32, CPU)
            again = _stream(b)
            with row_subset(active, b):
                part = again.randn((active.numel(), d), torch.float32, CPU)
            same = bool(torch.equal(part, full[active]))

            def ours(s=stream, a=active, b=b, d=d):
                with row_subset(a, b):
                    s.randn((a.numel(), d), torch.float32, CPU)

            rows.append(_row(
                f"randn for 10 % active rows of {b}x{d}, {label}: active rows only vs "
                "full-batch torch.randn (the scheme replaced)",
                ours, lambda g=gen, b=b, d=d, a=active: torch.randn((b, d), generator=g)[a],
                active.numel() * d, repeat, f"subset rows == full draw's: {same}", same,
            ))
    finally:
        torch.set_num_threads(default)
    return rows
