"""What every step of a sweep shares: a swept model (:class:`SweepModel`, defined in
:mod:`noisydeq.swept_model`, below the attack runner that re-uses it) and SNR text for ids
and keys (:func:`fmt_db`, from :mod:`noisydeq.summary`), the cell version, and how the test
set and the SNR grid are cut into forwards (:func:`level_chunks`, :func:`sample_batches`,
:data:`ROW_ALIGN`)."""

from __future__ import annotations

from collections.abc import Sequence

from noisydeq.noise import STABLE_ROWS, stacked_chunks
from noisydeq.summary import fmt_db
from noisydeq.swept_model import SweepModel

__all__ = ["CELL_VERSION", "ROW_ALIGN", "SweepModel", "fmt_db", "level_chunks",
           "sample_batches"]


#: a test sample's row in every forward is ≡ its index (mod ROW_ALIGN): GEMM rounding of a
#: row depends on its alignment (64 bytes covers AVX-512), never on the batch around it
ROW_ALIGN = 16
#: version of the cells a run directory holds (part of every cell key): 2 = counter-based
#: noise keyed by test-sample index; 3 = noise modes, static / dynamic / total SNR per row
#: and per layer, in-network calibration (cells of older versions are recomputed, not mixed in)
CELL_VERSION = 3



def level_chunks(
    levels: Sequence[float], n_test: int, max_rows: int
) -> tuple[int, list[list[float]]]:
    """Test samples per forward and the SNR chunks (each ≤ ``max_rows`` rows in all).

    The samples per forward are the whole test set or a multiple of ``ROW_ALIGN`` (at least
    one, even if ``max_rows`` is smaller); a level's block is padded to a multiple of it.
    """
    rows = min(n_test, max(max_rows, ROW_ALIGN))
    if rows < n_test:
        rows -= rows % ROW_ALIGN
    rows = max(rows, 1)
    return rows, stacked_chunks(levels, -(-rows // ROW_ALIGN) * ROW_ALIGN, max_rows)


def sample_batches(n_test: int, rows: int) -> list[tuple[int, int]]:
    """(start, stop) of the test batches of ``rows`` samples; a last batch of fewer than
    ``STABLE_ROWS`` samples joins the one before (matmul rounding of tiny batches)."""
    bounds = [(i, min(i + rows, n_test)) for i in range(0, n_test, rows)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < STABLE_ROWS:
        (start, _), (_, stop) = bounds[-2], bounds.pop()
        bounds[-1] = (start, stop)
    return bounds
