"""What every step of a sweep shares: a swept model (:class:`SweepModel`, defined in
:mod:`noisydeq.swept_model`, below the attack runner that re-uses it) and SNR text for ids
and keys (:func:`fmt_db`, from :mod:`noisydeq.summary`), the cell version and the cell key
(:class:`CellKey`, built and parsed in one place), and how the test set and the SNR grid are
cut into forwards (:func:`level_chunks`, :func:`sample_batches`, :data:`ROW_ALIGN`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from noisydeq.noise import STABLE_ROWS, stacked_chunks
from noisydeq.specs.noise import NATIVE
from noisydeq.specs.sweep import is_native
from noisydeq.summary import fmt_db
from noisydeq.swept_model import SweepModel

__all__ = ["CELL_VERSION", "ROW_ALIGN", "CellKey", "SweepModel", "fmt_db", "level_chunks",
           "level_text", "sample_batches"]


#: a test sample's row in every forward is ≡ its index (mod ROW_ALIGN): GEMM rounding of a
#: row depends on its alignment (64 bytes covers AVX-512), never on the batch around it
ROW_ALIGN = 16
#: version of the cells a run directory holds (part of every cell key): 2 = counter-based
#: noise keyed by test-sample index; 3 = noise modes, static / dynamic / total SNR per row
#: and per layer, in-network calibration (cells of older versions are recomputed, not mixed in)
CELL_VERSION = 3


def level_text(level: float) -> str:
    """A level as cell keys and noise seeds write it: :func:`fmt_db` (``12.5``, ``inf``), or
    ``native`` for the native level (:data:`~noisydeq.specs.sweep.NATIVE_LEVEL`)."""
    return NATIVE if is_native(level) else fmt_db(level)


@dataclass(frozen=True)
class CellKey:
    """A sweep cell's key, the one definition of its text: ``v<version>|<model id>|<weights
    digest>|chip<chip>|<levels>|<content digest>`` (levels: :func:`level_text` of each,
    joined by ``,``; the content digest: :meth:`noisydeq.sweep.plan.CellRunner._content`). The
    text names a cell's file (:meth:`noisydeq.results.RunDir.cell_path`), so it never
    changes for the same fields: run directories written before stay valid."""

    model_id: str
    weights: str
    chip: int
    #: the levels as the key writes them (``0,3,inf``)
    levels: str
    content: str
    version: int = CELL_VERSION

    @classmethod
    def of(cls, model_id: str, weights: str, chip: int, levels: Sequence[float],
           content: str) -> CellKey:
        """The key of a cell of this code (:data:`CELL_VERSION`) at SNR ``levels``."""
        return cls(model_id, weights, int(chip), ",".join(level_text(s) for s in levels),
                   content)

    def to_key(self) -> str:
        return (f"v{self.version}|{self.model_id}|{self.weights}|chip{self.chip}|"
                f"{self.levels}|{self.content}")

    @classmethod
    def from_key(cls, key: str) -> CellKey | None:
        """The fields of a key text of this format, of any version; None for a text that
        is not one (another field count, a model id holding ``|``, no ``v<int>`` or
        ``chip<int>``, or one that would not rebuild to the same text)."""
        parts = key.split("|")
        if len(parts) != 6:
            return None
        version, model_id, weights, chip, levels, content = parts
        if not (version[:1] == "v" and version[1:].isdigit()
                and chip.startswith("chip") and chip[4:].isdigit()):
            return None
        found = cls(model_id, weights, int(chip[4:]), levels, content, int(version[1:]))
        return found if found.to_key() == key else None

    @property
    def slot(self) -> tuple[str, int, str]:
        """What names the cell's place — model id, chip, levels — without the inputs that
        computed it (version, weights, content): a file of another slot's key is another
        cell, one of the same slot an older computation of this one."""
        return self.model_id, self.chip, self.levels



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
