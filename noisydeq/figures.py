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
* :func:`category_colours` — distinct hues (a qualitative palette) for lines that are
  categories of one model (solvers, attacks), not members of a family: the blue/orange
  pair stays reserved for DEQ vs FFW.
* :func:`layout` — wrap every title to the width it heads (:func:`wrap_titles`), then
  ``tight_layout``: the figure's size never depends on the length of its title.

The writer: :func:`save_figure` wraps the titles, gives every log axis at least three
labelled ticks (:func:`legible_log_axes`), writes ``stem.png`` and ``stem.svg`` and, given
the plotted points, ``stem.csv`` beside them; :func:`write_csv` writes any table. Every
file goes through
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
import math
import numbers
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from noisydeq.store import atomic_open
from noisydeq.summary import fmt_db

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
#: kinds whose output is an equilibrium (implicit kinds and the LyaDEQ): drawn as DEQs
EQUILIBRIUM = (*IMPLICIT, "lyadeq")
#: the shade of a kind's colour family a single line of that kind takes
SHADE = 0.8
#: hues for categories (solvers, attacks, ...): Dark2 without its orange, then greys —
#: distinct from each other and from the DEQ blue / FFW orange of a kind comparison
QUALITATIVE = ("#1b9e77", "#7570b3", "#e7298a", "#66a61e", "#a6761d", "#e6ab02",
               "#e41a1c", "#666666")
#: display names of the input projection's nonlinearity (x̃ = act(U x), Eq. 57)
INPUT_ACTS = {"relu": "ReLU", "silu": "SiLU", "identity": "identity", "tanh": "tanh"}


def member_label(kind: str, depth: int, width: int, matched: bool = False) -> str:
    """A family member in a legend, as the sweep figures name it: an implicit model (and a
    LyaDEQ) by its width, ``DEQ w=222``, an FFW by its depth, ``FFW 3 layers``. ``matched``:
    an implicit model also names the FFW depth it is parameter-matched to, ``DEQ w=222
    (≙ FFW 3 layers)`` — where DEQs and FFWs of one depth are drawn side by side (a DEQ has
    no depth of its own)."""
    name = KIND_LOOK.get(kind, KIND_LOOK["ffw"])[3]
    layers = f"{depth} layer{'s' * (depth != 1)}"
    if kind not in EQUILIBRIUM:
        return f"{name} {layers}"
    return f"{name} w={width}" + (f" (≙ FFW {layers})" if matched and kind in IMPLICIT else "")


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
    """``n`` colours of ``kind``'s family from light to dark (for ordered groups of lines);
    none for ``n`` = 0."""
    if n <= 0:
        return []
    if n == 1:
        return [kind_colour(kind)]
    return [kind_colour(kind, 0.45 + 0.5 * i / (n - 1)) for i in range(n)]


def category_colours(names: Sequence[str]) -> dict[str, Any]:
    """A distinct hue per category name (:data:`QUALITATIVE`, in order; cycled past 8)."""
    names = list(dict.fromkeys(names))
    return {n: QUALITATIVE[i % len(QUALITATIVE)] for i, n in enumerate(names)}


def input_note(input_act: str | None) -> str | None:
    """``SiLU input``: the part of a title naming the input projection's nonlinearity
    (x̃ = act(U x)), the default ReLU included — figures of the ReLU, SiLU and identity
    projections (paper Fig. 7-9) must be told apart by their titles; ``None`` where the
    model has none recorded."""
    if not input_act:
        return None
    return f"{INPUT_ACTS.get(input_act, input_act)} input"


def trained_text(snr_db: float, unit: str = "dB") -> str:
    """How a model was trained, for titles, legends and messages: ``trained without noise``
    (∞) or ``trained at 10 dB`` (``unit`` after the number)."""
    return "trained without noise" if math.isinf(snr_db) else f"trained at {snr_db:g} {unit}"


def snr_positions(levels: Sequence[float]) -> dict[float, float]:
    """x coordinate of each SNR level (dB); ∞ (no noise) is drawn right of the largest finite
    level by an eighth of the finite levels' range (at least 1 dB), so that every SNR axis of
    the package ends the same way."""
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
    ax.set_xticks([pos[s] for s in levels], [fmt_db(s, "table") for s in levels])


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


#: the words a title wraps between: mathtext whole, a number with its unit "dB" whole (a
#: white-box figure's "at 10 dB" broke into "10" / "dB" on two lines), else any run of
#: non-spaces
_MATH = re.compile(r"\$[^$]*\$|\S*\d\s+dB\S*|\S+")


def _wrap_one(text_obj: Any, width_px: float, renderer: Any) -> bool:
    """Wrap ``text_obj``'s words (mathtext kept whole) greedily into lines no wider than
    ``width_px`` as drawn; its unwrapped text is kept so that wrapping again (after a new
    layout) starts from it. Returns whether the text changed."""
    raw = getattr(text_obj, "_noisydeq_raw", None)
    if raw is None:
        raw = text_obj.get_text()
        text_obj._noisydeq_raw = raw
    if not raw or width_px <= 0:
        return False

    def width(s: str) -> float:
        text_obj.set_text(s)
        return text_obj.get_window_extent(renderer).width

    lines: list[str] = []
    for para in raw.split("\n"):
        current = ""
        for word in _MATH.findall(para):
            trial = f"{current} {word}" if current else word
            if current and width(trial) > width_px:
                lines.append(current)
                current = word
            else:
                current = trial
        lines.append(current)
    new = "\n".join(lines)
    text_obj.set_text(new)
    return new != text_obj._noisydeq_raw


def wrap_titles(fig: Any) -> None:
    """Wrap the figure's suptitle to the figure's width and each axes title to its axes'
    width (measured as drawn, in the title's font): a long title adds lines, never width."""
    renderer = fig.canvas.get_renderer()
    if fig._suptitle is not None:
        _wrap_one(fig._suptitle, 0.98 * fig.bbox.width, renderer)
    for ax in fig.axes:
        if not ax.get_visible():
            continue
        span = ax.get_position().width * fig.bbox.width
        for title in (ax.title, ax._left_title, ax._right_title):
            _wrap_one(title, span, renderer)


def layout(fig: Any, rect: tuple[float, float, float, float] | None = None) -> None:
    """Wrap the titles to the widths they head, then ``tight_layout`` (twice: the axes
    widths the first layout settles on decide the final wrap)."""
    for _ in range(2):
        wrap_titles(fig)
        fig.tight_layout(rect=rect)


#: a legend with more entries than this goes under the panels instead of over the curves
MAX_INSIDE_LEGEND = 4


def panel_legend(fig: Any, ax: Any, fontsize: float = 7) -> None:
    """The legend of ``ax``'s lines: inside the axes for up to :data:`MAX_INSIDE_LEGEND`
    entries, else under all panels in rows of four (so it never covers a curve). Call it
    before :func:`layout`; the saved figure grows to include it."""
    handles, labels = ax.get_legend_handles_labels()
    if len(labels) <= MAX_INSIDE_LEGEND:
        ax.legend(frameon=False, fontsize=fontsize)
        return
    legend_under(fig, handles, labels, fontsize + 1)


def legend_under(fig: Any, handles: Sequence[Any], labels: Sequence[str],
                 fontsize: float = 8) -> None:
    """One legend for the whole figure, under all its panels in rows of four (hung from the
    figure's bottom edge, so it covers no panel whatever its row count; the saved figure
    grows to include it)."""
    fig.legend(handles, labels, loc="upper center", ncol=min(len(labels), 4) or 1,
               frameon=False, fontsize=fontsize, bbox_to_anchor=(0.5, 0.0))


#: a log axis is legible with at least this many labelled ticks in view
MIN_LOG_TICKS = 3


#: ... and no stretch of it without a label longer than this share of its span (in log units)
MAX_LOG_GAP = 0.5


def _labelled_in_view(axis: Any) -> list[float]:
    """The positions of the labelled ticks inside the axis' view."""
    lo, hi = sorted(axis.get_view_interval())
    out = []
    for locs, labels in ((axis.get_majorticklocs(), axis.get_majorticklabels()),
                         (axis.get_minorticklocs(), axis.get_minorticklabels())):
        for v, t in zip(locs, labels, strict=False):
            if t.get_visible() and t.get_text() and lo * (1 - 1e-9) <= v <= hi * (1 + 1e-9):
                out.append(float(v))
    return sorted(set(out))


def _minor_labelled_in_view(axis: Any) -> bool:
    """Whether a labelled minor tick (not a power of ten, on a log axis) lies in the view."""
    lo, hi = sorted(axis.get_view_interval())
    return any(t.get_visible() and t.get_text() and lo * (1 - 1e-9) <= v <= hi * (1 + 1e-9)
               for v, t in zip(axis.get_minorticklocs(), axis.get_minorticklabels(),
                               strict=False))


def _legible(ticks: Sequence[float], lo: float, hi: float) -> bool:
    """At least :data:`MIN_LOG_TICKS` ticks in [lo, hi], and no unlabelled stretch (between
    ticks or at either end) longer than :data:`MAX_LOG_GAP` of the span in log units."""
    inside = [math.log10(v) for v in ticks if lo * (1 - 1e-9) <= v <= hi * (1 + 1e-9)]
    if len(inside) < MIN_LOG_TICKS:
        return False
    edges = [math.log10(lo), *inside, math.log10(hi)]
    span = edges[-1] - edges[0]
    return max(b - a for a, b in zip(edges, edges[1:], strict=False)) <= MAX_LOG_GAP * span


def plain_number(v: float) -> str:
    """``v`` to three significant digits without an exponent: ``0.05``, ``0.66``, ``3000``,
    ``40000`` (``f"{v:.3g}"`` writes ``3e+03``)."""
    import numpy as np

    return np.format_float_positional(float(f"{v:.3g}"), trim="-")


def legible_log_axes(fig: Any) -> None:
    """Every log-scaled axis of ``fig`` is legible (:func:`_legible`): where it is not as
    drawn (a span of about a decade or less), major ticks at 1-2-5, then 1…9 × 10ᵏ, then at
    evenly spaced round numbers, whichever first covers the axis, with plain-number labels
    and unlabelled minor ticks; where it is, but with minor ticks labelled a×10ᵏ (a span of a
    decade or two), all its labelled ticks with plain-number labels (between 10⁻³ and 10⁵)."""
    from matplotlib.ticker import (
        FixedLocator,
        FuncFormatter,
        LogLocator,
        MaxNLocator,
        NullFormatter,
    )

    fig.canvas.draw()
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            if axis.get_scale() != "log":
                continue
            lo, hi = sorted(axis.get_view_interval())
            if lo <= 0:
                continue
            labelled = _labelled_in_view(axis)
            if _legible(labelled, lo, hi):
                if _minor_labelled_in_view(axis) and all(1e-3 <= v < 1e5 for v in labelled):
                    # over a decade or two matplotlib labels minor ticks as a×10ᵏ ("6×10⁻¹"
                    # beside "10⁻¹"): the same positions, as plain numbers
                    axis.set_major_locator(FixedLocator(labelled))
                    axis.set_major_formatter(FuncFormatter(lambda v, _pos: plain_number(v)))
                    axis.set_minor_formatter(NullFormatter())
                continue
            linear = [v for v in MaxNLocator(nbins=6).tick_values(lo, hi) if v > 0]
            for locator in (LogLocator(base=10, subs=(1.0, 2.0, 5.0), numticks=40),
                            LogLocator(base=10, subs=tuple(float(k) for k in range(1, 10)),
                                       numticks=40),
                            FixedLocator(linear)):
                axis.set_major_locator(locator)
                if _legible(list(locator.tick_values(lo, hi)), lo, hi):
                    break
            axis.set_major_formatter(FuncFormatter(lambda v, _pos: plain_number(v)))
            axis.set_minor_formatter(NullFormatter())


def save_figure(fig: Any, stem: str | os.PathLike,
                table: Sequence[dict[str, Any]] | None = None) -> list[Path]:
    """Write ``stem.png`` and ``stem.svg`` (and ``stem.csv`` with ``table``, the plotted
    points; :func:`write_csv`), each atomically; close the figure. Returns the paths."""
    plt = pyplot()
    stem = Path(stem)
    paths = []
    try:
        wrap_titles(fig)
        legible_log_axes(fig)
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


def _segment_hits(x0: float, y0: float, x1: float, y1: float, box: Any) -> bool:
    """Whether the segment (x0, y0)-(x1, y1) meets the rectangle ``box`` (display units;
    Liang-Barsky clipping)."""
    t0, t1 = 0.0, 1.0
    dx, dy = x1 - x0, y1 - y0
    for p, q in ((-dx, x0 - box.x0), (dx, box.x1 - x0), (-dy, y0 - box.y0),
                 (dy, box.y1 - y0)):
        if p == 0:
            if q < 0:
                return False
            continue
        t = q / p
        if p < 0:
            t0 = max(t0, t)
        else:
            t1 = min(t1, t)
        if t0 > t1:
            return False
    return True


def drawn_obstacles(ax: Any) -> tuple[list[tuple[float, ...]], list[tuple[float, float, float]]]:
    """What a label must keep clear of in ``ax``, in display units: the segments of every
    line and line collection (error bars included) and every marker as (x, y, radius)."""
    import numpy as np

    segments: list[tuple[float, ...]] = []
    markers: list[tuple[float, float, float]] = []
    px = ax.figure.dpi / 72.0
    for line in ax.get_lines():
        if not line.get_visible():
            continue
        xy = line.get_transform().transform(np.asarray(line.get_xydata(), float))
        xy = xy[np.all(np.isfinite(xy), axis=1)]
        if line.get_linestyle() not in ("None", "none", "", " "):
            segments += [(*a, *b) for a, b in zip(xy[:-1], xy[1:], strict=True)]
        if line.get_marker() not in (None, "None", "none", "", " "):
            r = line.get_markersize() * px / 2
            markers += [(float(x), float(y), r) for x, y in xy]
    for coll in ax.collections:
        if not coll.get_visible() or not hasattr(coll, "get_segments"):
            continue
        tr = coll.get_transform()
        for seg in coll.get_segments():
            xy = tr.transform(np.asarray(seg, float))
            segments += [(*a, *b) for a, b in zip(xy[:-1], xy[1:], strict=True)]
    return segments, markers


def box_hits(box: Any, segments: Sequence[tuple[float, ...]],
             markers: Sequence[tuple[float, float, float]], others: Sequence[Any] = ()) -> int:
    """How many of the segments, markers (x, y, radius) and other boxes ``box`` meets."""
    n = sum(_segment_hits(*s, box) for s in segments)
    n += sum(box.x0 - r <= x <= box.x1 + r and box.y0 - r <= y <= box.y1 + r
             for x, y, r in markers)
    return n + sum(box.overlaps(o) for o in others)


#: where a point's label may go, tried in order: (dx, dy) in units of the clearance,
#: the text's alignment
LABEL_SPOTS = ((1, 1, "left", "bottom"), (-1, 1, "right", "bottom"),
               (1, -1, "left", "top"), (-1, -1, "right", "top"),
               (1, 0, "left", "center"), (-1, 0, "right", "center"),
               (0, 1.5, "center", "bottom"), (0, -1.5, "center", "top"))


def label_points(ax: Any, points: Sequence[tuple[float, float, str]], fontsize: float = 7,
                 clear_pt: float = 2.0) -> list[Any]:
    """Name each data point ``(x, y, text)`` of ``ax`` with its text placed clear (by
    ``clear_pt`` points) of every line, error bar, marker and earlier label, inside the axes
    (the first free spot of :data:`LABEL_SPOTS`, at one, two or three times the distance;
    where none is free, the spot meeting the fewest). Call it once the axes' place and
    limits are final (after :func:`layout`): the spots are measured as drawn."""
    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    px = fig.dpi / 72.0
    segments, markers = drawn_obstacles(ax)
    frame = ax.get_window_extent(renderer)
    placed: list[Any] = []
    boxes: list[Any] = []
    for x, y, text in points:
        cx, cy = ax.transData.transform((x, y))
        near = [r for mx, my, r in markers if abs(mx - cx) < 1e-6 and abs(my - cy) < 1e-6]
        base = max(near, default=0.0) / px + clear_pt + 1.5  # points: marker, cap, gap
        best = None
        for step in (1, 2, 3):
            for dx, dy, ha, va in LABEL_SPOTS:
                ann = ax.annotate(text, (x, y), textcoords="offset points", fontsize=fontsize,
                                  xytext=(dx * base * step, dy * base * step), ha=ha, va=va)
                box = ann.get_window_extent(renderer)
                padded = box.expanded(1 + 2 * clear_pt * px / max(box.width, 1),
                                      1 + 2 * clear_pt * px / max(box.height, 1))
                inside = (box.x0 >= frame.x0 and box.x1 <= frame.x1 and
                          box.y0 >= frame.y0 and box.y1 <= frame.y1)
                score = box_hits(padded, segments, markers, boxes) + (0 if inside else 100)
                if best is None or score < best[0]:
                    if best is not None:
                        best[1].remove()
                    best = (score, ann, box)
                else:
                    ann.remove()
                if score == 0:
                    break
            if best is not None and best[0] == 0:
                break
        assert best is not None
        placed.append(best[1])
        boxes.append(best[2])
    return placed
