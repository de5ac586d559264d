"""One look and one writer for every figure of the package (sweeps, attacks, analyses,
studies, certification, Lyapunov).

The look:

* :data:`STYLE` — the matplotlib rc settings every figure is drawn and saved under
  (:func:`styled`): small fonts, no top/right spines, a light grid, 160 dpi, a fixed SVG
  hash salt so that an SVG is the same bytes for the same figure.
* :data:`KIND_LOOK` / :data:`KIND_FAMILY` — each model kind has a line style, a marker and a
  colour family: DEQ blues, solid; FFW oranges, dashed; monDEQ greens; ReLU FFW reds; LyaDEQ
  purples, dotted. Within a family a darker shade is a larger member
  (:func:`member_colours`); one line of a kind takes :func:`kind_colour`.
* :func:`context_title` — the title grammar: what is drawn, then the task, the device or
  noise and its mode, how the models were trained, and on a second line what the band or the
  error bars are.
* :func:`integer_axis` — integer ticks on an axis that counts (depth, iteration, window).

The writer: :func:`save_figure` writes ``stem.png`` and ``stem.svg`` and, given the plotted
points, ``stem.csv`` beside them; :func:`write_csv` writes any table. Every file goes through
:func:`noisydeq.store.atomic_open`. CSV numbers are written **exactly**: a float is Python's
shortest repr that reads back to the same double (``float(text) == value``; ``inf``,
``-inf``, ``nan`` for the special values), an integer as an integer — the CSV is the data
behind the figure, not a rounded copy of it, and a reader (pandas, ``csv``) gets back the
plotted numbers bit for bit.

matplotlib is imported only when a figure is drawn: importing this module is free.
"""

from __future__ import annotations

import contextlib
import csv
import io
import numbers
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from noisydeq.store import atomic_open

STYLE = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 7.5,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.25,
    "savefig.dpi": 160,
    "svg.hashsalt": "noisydeq",
}

#: line style, marker, representative colour and display name of each model kind
KIND_LOOK = {
    "deq": ("-", "o", "tab:blue", "DEQ"),
    "ffw": ("--", "s", "tab:orange", "FFW"),
    "mondeq": ("-", "D", "tab:green", "monDEQ"),
    "ffw_relu": ("--", "^", "tab:red", "ReLU FFW"),
    "lyadeq": (":", "v", "tab:purple", "LyaDEQ"),
}
#: the colour family (a sequential colormap) of each model kind: shade = member size
KIND_FAMILY = {"deq": "Blues", "ffw": "Oranges", "mondeq": "Greens", "ffw_relu": "Reds",
               "lyadeq": "Purples"}
#: implicit kinds whose width is matched to an FFW depth (width ↑ with depth)
IMPLICIT = ("deq", "mondeq")
#: the shade of a kind's colour family a single line of that kind takes
SHADE = 0.8


def pyplot() -> Any:
    """matplotlib.pyplot on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@contextlib.contextmanager
def styled() -> Iterator[Any]:
    """``with styled() as plt:`` — pyplot with :data:`STYLE` in force (draw and save inside)."""
    plt = pyplot()
    with plt.rc_context(STYLE):
        yield plt


def kind_name(kind: str) -> str:
    """The display name of a model kind (``DEQ``, ``FFW``, ...; unknown kinds upper-cased)."""
    look = KIND_LOOK.get(kind)
    return look[3] if look else kind.upper()


def kind_colour(kind: str, shade: float = SHADE) -> Any:
    """An RGBA colour of ``kind``'s family (grey for a kind without one); ``shade`` in 0..1,
    larger = darker."""
    import matplotlib

    return matplotlib.colormaps[KIND_FAMILY.get(kind, "Greys")](shade)


def kind_line(kind: str, colour: Any = None) -> dict[str, Any]:
    """``ls``, ``marker`` and ``color`` keywords of a line of ``kind`` (for ``ax.plot``)."""
    style, marker, _c, _name = KIND_LOOK.get(kind, ("-", "o", None, kind))
    return {"ls": style, "marker": marker,
            "color": kind_colour(kind) if colour is None else colour}


def member_colours(keys: Sequence[tuple[str, int]]) -> dict[tuple[str, int], Any]:
    """A colour per (kind, size): the kind's colour family, darker for a larger member."""
    out: dict[tuple[str, int], Any] = {}
    for kind in dict.fromkeys(k for k, _ in keys):
        sizes = sorted({d for k, d in keys if k == kind})
        n = max(len(sizes) - 1, 1)
        for i, d in enumerate(sizes):
            out[(kind, d)] = kind_colour(kind, 0.45 + 0.5 * i / n if len(sizes) > 1 else 0.75)
    return out


def shades(kind: str, n: int) -> list[Any]:
    """``n`` colours of ``kind``'s family from light to dark (for ordered groups of lines)."""
    if n <= 1:
        return [kind_colour(kind)]
    return [kind_colour(kind, 0.45 + 0.5 * i / (n - 1)) for i in range(n)]


def snr_label(snr_db: float) -> str:
    """An SNR level as a tick label: ``10``, or ``∞`` (no noise)."""
    import math

    return "∞" if math.isinf(snr_db) else f"{snr_db:g}"


def snr_positions(levels: Sequence[float]) -> dict[float, float]:
    """x coordinate of each SNR level (dB); ∞ (no noise) is drawn one grid gap right of the
    largest finite level, so that every SNR axis of the package ends the same way."""
    import math

    finite = sorted(s for s in levels if math.isfinite(s))
    pos = {s: s for s in finite}
    if any(math.isinf(s) for s in levels):
        gap = (finite[-1] - finite[0]) / 8 if len(finite) > 1 else 5.0
        pos[math.inf] = (finite[-1] if finite else 0.0) + max(gap, 1.0)
    return pos


def snr_axis(ax: Any, pos: dict[float, float], every: float | None = None) -> None:
    """Ticks of an SNR x axis drawn at ``pos`` (:func:`snr_positions`): every level, or only
    the multiples of ``every`` dB, and ∞ labelled ``∞``."""
    import math

    levels = sorted(pos)
    if every:
        levels = [s for s in levels
                  if math.isinf(s) or abs(s / every - round(s / every)) < 1e-9] or levels
    ax.set_xticks([pos[s] for s in levels], [snr_label(s) for s in levels])


def integer_axis(axis: Any) -> None:
    """Only integer ticks on ``axis`` (``ax.xaxis``): depths, iterations, windows."""
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True))


def context_title(what: str, *, task: str | None = None, device: str | None = None,
                  noise: str | None = None, trained: str | None = None,
                  band: str | None = None) -> str:
    """``what — task · device, noise · trained …`` and, on a second line, ``band``: the title
    every figure carries (parts left ``None`` are left out)."""
    where = ", ".join(p for p in (device, noise) if p)
    head = " · ".join(p for p in (task, where, trained) if p)
    first = f"{what} — {head}" if what and head else (what or head)
    return f"{first}\n{band}" if band else first


def save_figure(fig: Any, stem: str | os.PathLike,
                table: Sequence[dict[str, Any]] | None = None) -> list[Path]:
    """Write ``stem.png`` and ``stem.svg`` (and ``stem.csv`` with ``table``, the plotted
    points; :func:`write_csv`), each atomically; close the figure. Returns the paths."""
    plt = pyplot()
    stem = Path(stem)
    paths = []
    try:
        with plt.rc_context({"svg.hashsalt": STYLE["svg.hashsalt"]}):
            for ext in ("png", "svg"):
                target = stem.with_name(f"{stem.name}.{ext}")
                with atomic_open(target) as fh:
                    fig.savefig(fh, format=ext, bbox_inches="tight", dpi=STYLE["savefig.dpi"],
                                metadata={"Date": None} if ext == "svg" else {})
                paths.append(target)
    finally:
        plt.close(fig)
    if table:
        paths.append(write_csv(stem.with_name(f"{stem.name}.csv"), table))
    return paths


def cell(value: Any) -> Any:
    """One CSV cell: a float exactly (shortest round-trip repr), an integer as an integer,
    anything else as ``csv`` writes it."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return repr(float(value))
    return value


def csv_text(rows: Sequence[dict[str, Any]]) -> str:
    """``rows`` as CSV text: the columns in first-seen order over all rows (a row without a
    column leaves it empty), numbers as :func:`cell` writes them."""
    fields: list[str] = []
    for r in rows:
        fields.extend(k for k in r if k not in fields)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: cell(v) for k, v in r.items()})
    return buffer.getvalue()


def write_csv(path: str | os.PathLike, rows: Sequence[dict[str, Any]]) -> Path:
    """Write ``rows`` as CSV (:func:`csv_text`) atomically; returns the path."""
    final = Path(path)
    with atomic_open(final) as fh:
        fh.write(csv_text(rows).encode())
    return final
