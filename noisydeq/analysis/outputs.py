"""Atomic CSV and figure (PNG + SVG) writing for the analysis commands."""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from noisydeq.store import atomic_open, atomic_write_text


def write_csv(path: str | os.PathLike, rows: Sequence[dict[str, Any]]) -> Path:
    """Write ``rows`` (same keys, in order) as CSV atomically."""
    buf = io.StringIO()
    fields: list[str] = []
    for r in rows:
        fields.extend(k for k in r if k not in fields)
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: _fmt(v) for k, v in r.items()})
    return atomic_write_text(path, buf.getvalue())


def snr_text(snr_db: float) -> str:
    """An SNR for a title or a message: ``10 dB``, or ``no noise`` for ∞."""
    return "no noise" if math.isinf(snr_db) else f"{snr_db:g} dB"


def _fmt(v: Any) -> Any:
    if isinstance(v, float):
        return f"{v:.6g}"
    return v


def save_figure(fig: Any, stem: str | os.PathLike) -> list[Path]:
    """Save a matplotlib figure as ``stem.png`` and ``stem.svg`` (each atomically); close it."""
    import matplotlib.pyplot as plt

    out = []
    stem = Path(stem)
    try:
        for ext in ("png", "svg"):
            target = stem.with_suffix(f".{ext}")
            with atomic_open(target) as fh:
                fig.savefig(fh, format=ext, dpi=130, bbox_inches="tight")
            out.append(target)
    finally:
        plt.close(fig)
    return out


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
