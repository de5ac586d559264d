"""What every step of a sweep shares: a swept model (:class:`SweepModel`), SNR text for ids
and keys, the cell version, and how the test set and the SNR grid are cut into forwards
(:func:`level_chunks`, :func:`sample_batches`, :data:`ROW_ALIGN`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from noisydeq.noise import STABLE_ROWS
from noisydeq.specs.sweep import SweepSpec


def fmt_db(value: float) -> str:
    """Compact text of an SNR in dB (``inf`` for no noise) for ids and keys."""
    return "inf" if math.isinf(value) else f"{value:g}"


@dataclass
class SweepModel:
    """One trained model of a sweep and the facts the table reports about it.

    ``depth`` is the FFW depth of the family member: an FFW's number of layers, or for a
    DEQ the FFW depth it is parameter-matched to (so DEQ and FFW of one depth pair up).
    """

    model: nn.Module
    kind: str
    depth: int
    width: int
    params: int
    seed: int = 0
    train_snr_db: float = math.inf
    #: hardware-aware training: the training device (None: trained digitally) and the SNR
    #: it was calibrated to (None: its native SNR)
    train_device: str | None = None
    train_device_snr_db: float | None = None

    @property
    def model_id(self) -> str:
        hw = ""
        if self.train_device is not None:
            name = Path(self.train_device).stem if self.train_device.endswith(".toml") \
                else self.train_device
            snr = "native" if self.train_device_snr_db is None else fmt_db(
                self.train_device_snr_db)
            hw = f"-hw{name}@{snr}"
        return (
            f"{self.kind}-d{self.depth}-w{self.width}-s{self.seed}"
            f"-t{fmt_db(self.train_snr_db)}{hw}"
        )

    def training_columns(self, spec: SweepSpec) -> dict[str, Any]:
        """The hardware-aware training columns of its rows (only in a sweep that names
        training devices, :data:`noisydeq.results.TRAIN_DEVICE_COLUMNS`): device ``none``
        for a digitally trained model, SNR ``nan`` at the native SNR or digitally."""
        if not spec.train_device:
            return {}
        if self.train_device is None:
            return {"train_device": "none", "train_device_snr_db": math.nan,
                    "train_noise_mode": "none"}
        return {"train_device": self.train_device,
                "train_device_snr_db": (math.nan if self.train_device_snr_db is None
                                        else float(self.train_device_snr_db)),
                "train_noise_mode": spec.train_noise_mode}


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
    per_chunk = max(1, max_rows // (-(-rows // ROW_ALIGN) * ROW_ALIGN))
    levels = list(levels)
    return rows, [levels[i : i + per_chunk] for i in range(0, len(levels), per_chunk)]


def sample_batches(n_test: int, rows: int) -> list[tuple[int, int]]:
    """(start, stop) of the test batches of ``rows`` samples; a last batch of fewer than
    ``STABLE_ROWS`` samples joins the one before (matmul rounding of tiny batches)."""
    bounds = [(i, min(i + rows, n_test)) for i in range(0, n_test, rows)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < STABLE_ROWS:
        (start, _), (_, stop) = bounds[-2], bounds.pop()
        bounds[-1] = (start, stop)
    return bounds
