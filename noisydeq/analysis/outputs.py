"""Text shared by the analysis commands, their tables and the study figures.

Figures and CSV tables are written by :mod:`noisydeq.figures` (one look, one writer)."""

from __future__ import annotations

import math


def snr_text(snr_db: float) -> str:
    """An SNR for a title or a message: ``10 dB``, or ``no noise`` for ∞."""
    return "no noise" if math.isinf(snr_db) else f"{snr_db:g} dB"
