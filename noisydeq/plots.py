"""Figures of a sweep (matplotlib, Agg backend), written as PNG and SVG with the CSV of
the plotted points beside them (``<name>.csv``: model, training SNR, SNR, mean, band).

One look for every figure of the package (:mod:`noisydeq.figures`: :data:`KIND_LOOK`, the
writer): each model kind has a colour family and a line style — DEQ blues, solid; FFW
oranges, dashed; monDEQ greens; ReLU FFW reds; LyaDEQ purples, dotted — and within a
family a darker shade is a larger member. The title names
the task, what was swept (device and noise mode, or the noise site) and what the band is.

* ``metric_vs_snr`` — metric against inference SNR per model (paper Fig. 7-12), one panel
  per training SNR; band = min-max over chip instances and seeds, the device's native SNR
  marked by a vertical line.
* ``metric_vs_depth`` — metric at fixed inference SNRs against the family member (paper
  Fig. 1a-c): FFW depth on the bottom axis and matched DEQ width on the top axis (integer
  ticks), each with its parameter count; error bars = the same min-max (its title says
  "error bars").
* ``train_snr_effect`` — only when several training SNRs were swept: the DEQs against
  inference SNR, one line per training SNR (paper Fig. 1d).

Length (about 400 lines): one idea, a sweep's figures — they share one band, one title
grammar and the CSV written beside each.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FixedLocator  # noqa: E402

from noisydeq.figures import (  # noqa: E402
    EQUILIBRIUM,
    IMPLICIT,
    KIND_FAMILY,
    KIND_LOOK,
    STYLE,
    input_note,
    layout,
    member_colours,
    member_label,
    save_figure,
    snr_positions,
    trained_text,
)
from noisydeq.specs.sweep import SweepSpec  # noqa: E402
from noisydeq.summary import (  # noqa: E402
    IDEAL,
    IDEAL_TEXT,
    Agg,
    aggregate,
    fmt_db,
    split_native_rows,
    swept_part,
    training_groups,
)


def _train_title(train_snr_db: float) -> str:
    return trained_text(train_snr_db, "dB signal SNR")


def _metric_label(metric: str) -> str:
    return "test accuracy" if metric == "accuracy" else "test MSE"


def _save(fig: Any, out: Path, name: str,
          table: Sequence[dict[str, Any]] | None = None) -> list[Path]:
    """``out/name.png``, ``.svg`` and ``.csv`` (``table``): :func:`noisydeq.figures.save_figure`."""
    return save_figure(fig, out / name, table)


def _point(key: tuple[str, int, int, int, float], snr: float, a: Agg) -> dict[str, Any]:
    """One plotted point as a CSV row: the model ``key`` (kind, depth, width, params,
    training SNR), the SNR, the mean and the band's edges."""
    kind, depth, width, params, t = key
    return {"kind": kind, "depth": depth, "width": width, "params": params,
            "train_snr_db": t, "snr_db": snr, "mean": a.mean, "band_lo": a.lo,
            "band_hi": a.hi, "std": a.std, "n": a.count, "converged_frac": a.converged_frac}


def _points(agg: dict[Any, dict[float, Agg]]) -> list[dict[str, Any]]:
    """The plotted points of ``agg`` as CSV rows (:func:`_point`)."""
    return [_point(key, snr, a) for key, by_snr in agg.items() for snr, a in by_snr.items()]


def band_note(rows: Sequence[dict[str, Any]], marks: str = "band") -> str:
    """What a figure's band (``marks``: or its error bars) is: ``band: min-max over 3 chips
    × 2 seeds`` (from the rows)."""
    chips = len({r.get("chip", 0) for r in rows})
    seeds = len({r.get("seed", 0) for r in rows})
    if chips * seeds <= 1:
        return f"one chip, one seed (no {marks})"
    parts = [f"{chips} chip{'s' * (chips > 1)}"] * (chips > 1) + [
        f"{seeds} seed{'s' * (seeds > 1)}"] * (seeds > 1)
    return f"{marks}: min-max over " + " × ".join(parts)


def _band(ax: Any, xs: list[float], points: list[Agg], colour: Any) -> None:
    lo = [p.lo for p in points]
    hi = [p.hi for p in points]
    if any(h > lo_ for h, lo_ in zip(hi, lo, strict=False)):
        ax.fill_between(xs, lo, hi, color=colour, alpha=0.18, linewidth=0)


def plot_metric_vs_snr(
    rows: Sequence[dict[str, Any]], out: Path, native_snr_db: float | None = None,
    title: str = "", fig_name: str = "metric_vs_snr",
) -> list[Path]:
    """Metric vs inference SNR per model with chip bands (paper Fig. 7-12); the rows of
    the native level (``native`` true) as one marker per model at their SNR — a star for
    an implicit model (DEQ), a diamond for an explicit one (FFW), error bars = the band —
    not joined to the grid's curve."""
    metric = rows[0]["metric"]
    grid, native_rows = split_native_rows(rows)
    agg = aggregate(grid)
    native_agg = aggregate(native_rows)
    train_snrs = sorted({k[4] for k in [*agg, *native_agg]}, key=lambda v: -v)
    levels = sorted({float(r["snr_db"]) for r in grid})
    pos = snr_positions([*levels, *(float(r["snr_db"]) for r in native_rows)])
    colours = member_colours(list(dict.fromkeys((k[0], k[1]) for k in [*agg, *native_agg])))
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(
            1, len(train_snrs), figsize=(4.6 * len(train_snrs), 3.5), squeeze=False, sharey=True
        )
        for ax, tsnr in zip(axes[0], train_snrs, strict=False):
            for (kind, depth, width, params, t), by_snr in agg.items():
                if t != tsnr:
                    continue
                xs = [pos[s] for s in by_snr]
                pts = list(by_snr.values())
                c = colours[(kind, depth)]
                style, marker, _colour, _name = KIND_LOOK.get(kind, KIND_LOOK["ffw"])
                ax.plot(xs, [p.mean for p in pts], style, marker=marker, ms=3, color=c, lw=1.4,
                        label=f"{member_label(kind, depth, width)} ({_k(params)})")
                _band(ax, xs, pts, c)
            for (kind, depth, _w, _p, t), by_snr in native_agg.items():
                if t != tsnr:
                    continue
                for s, a in by_snr.items():  # the device as it is: a marker, no line
                    ax.errorbar([pos[s]], [a.mean], yerr=[[a.mean - a.lo], [a.hi - a.mean]],
                                fmt=NATIVE_MARKER[kind in EQUILIBRIUM],
                                ms=NATIVE_SIZE[kind in EQUILIBRIUM],
                                color=colours[(kind, depth)], mec="black", mew=0.6,
                                ecolor=colours[(kind, depth)], elinewidth=1, capsize=2,
                                zorder=6 if kind in EQUILIBRIUM else 5)
            if native_snr_db is not None and math.isfinite(native_snr_db):
                lo, hi = min(pos.values()), max(pos.values())
                if lo <= native_snr_db <= hi:
                    ax.axvline(native_snr_db, color="crimson", lw=1, ls=":")
                    ax.annotate(f"native {native_snr_db:.1f} dB", (native_snr_db, 0.02),
                                xycoords=("data", "axes fraction"), color="crimson",
                                rotation=90, ha="right", va="bottom", fontsize=7)
            ax.xaxis.set_major_locator(FixedLocator(_ticks(levels, pos)))
            ax.set_xticklabels([fmt_db(_inv(pos, t), "table") for t in _ticks(levels, pos)])
            ax.set_xlabel(f"inference {swept_part(rows)} (dB)")
            ax.set_title(_train_title(tsnr))
            if metric == "mse":
                ax.set_yscale("log")
        axes[0][0].set_ylabel(_metric_label(metric))
        handles, labels = axes[0][0].get_legend_handles_labels()
        order = sorted(range(len(labels)), key=lambda i: (not labels[i].startswith("DEQ"), i))
        handles, labels = [handles[i] for i in order], [labels[i] for i in order]
        table = _points(agg)
        if native_agg:  # what the markers are, once per look; the points CSV says which
            for implicit in sorted({k[0] in EQUILIBRIUM for k in native_agg}, reverse=True):
                handles.append(plt.Line2D([], [], ls="none", color="grey", mec="black",
                                          mew=0.6, ms=NATIVE_SIZE[implicit],
                                          marker=NATIVE_MARKER[implicit]))
                labels.append(f"{'DEQ' if implicit else 'FFW'} on the device as it is "
                              "(native)")
            table = [{**p, "native": False} for p in table] + [
                {**p, "native": True} for p in _points(native_agg)]
        axes[0][-1].legend(handles, labels, loc="center left", bbox_to_anchor=(1.02, 0.5),
                           frameon=False, title="model (params)")
        if title:
            fig.suptitle(title)
        layout(fig)
        return _save(fig, out, fig_name, table)


#: marker of a native-level point: implicit models (DEQs) a star, explicit ones a diamond
#: (smaller: every model's marker sits at the same SNR, the stars are drawn over them)
NATIVE_MARKER = {True: "*", False: "D"}
NATIVE_SIZE = {True: 9, False: 5}


def _inv(pos: dict[float, float], x: float) -> float:
    return next(s for s, p in pos.items() if p == x)


def _ticks(levels: Sequence[float], pos: dict[float, float]) -> list[float]:
    finite = [s for s in levels if math.isfinite(s)]
    if len(finite) > 8:
        span = finite[-1] - finite[0]
        step = 5 if span <= 40 else 10
        finite = [s for s in finite if abs(s / step - round(s / step)) < 1e-9] or finite[::4]
    ticks = [pos[s] for s in finite]
    if math.inf in pos:
        ticks.append(pos[math.inf])
    return ticks


def _k(params: int) -> str:
    """A parameter count as ``305``, ``1.5k``, ``26k`` or ``1.2M`` (never ``0k``)."""
    if params >= 999_500:  # what rounds to 1000k is 1.0M
        return f"{params / 1e6:.1f}M"
    if params >= 9_950:  # what rounds to 10.0k is 10k
        return f"{params / 1e3:.0f}k"
    return f"{params / 1e3:.1f}k" if params >= 1e3 else f"{params}"


def _nearest(levels: Sequence[float], target: float) -> float | None:
    finite = [s for s in levels if math.isfinite(s) == math.isfinite(target)]
    if not finite:
        return None
    return min(finite, key=lambda s: abs(s - target) if math.isfinite(target) else 0)


def plot_metric_vs_depth(
    rows: Sequence[dict[str, Any]], out: Path, fixed_snr_db: Sequence[float], title: str = "",
    fig_name: str = "metric_vs_depth",
) -> list[Path]:
    """Metric at fixed inference SNRs vs FFW depth / matched DEQ width (paper Fig. 1a-c)."""
    metric = rows[0]["metric"]
    agg = aggregate(rows)
    levels = sorted({float(r["snr_db"]) for r in rows})
    snrs = [s for s in dict.fromkeys(_nearest(levels, f) for f in fixed_snr_db) if s is not None]
    if not snrs:  # a grid without finite SNRs (e.g. only ∞) has no such figure
        return []
    train_snrs = sorted({k[4] for k in agg}, key=lambda v: -v)
    panels = [(t, s) for s in snrs for t in train_snrs]
    table: list[dict[str, Any]] = []
    with plt.rc_context(STYLE):
        ncol = len(train_snrs)
        # two-line tick labels (depth, parameters) need ~0.4 in each: 13 depths stay legible
        panel_w = max(4.0, 0.42 * len({k[1] for k in agg}) + 1.2)
        # the top axis's two-line DEQ labels and the panel title take ~1.2 in of a row:
        # 4.4 in per row leaves the plot itself ~3 in (at 3.4 it shrank to ~1.7 in)
        fig, axes = plt.subplots(len(snrs), ncol, figsize=(panel_w * ncol, 4.4 * len(snrs)),
                                 squeeze=False)
        for (tsnr, snr), ax in zip(panels, axes.flat, strict=False):
            series: dict[str, list[tuple[int, int, int, Agg]]] = {k: [] for k in KIND_LOOK}
            for (kind, depth, width, params, t), by_snr in agg.items():
                if t == tsnr and snr in by_snr:
                    series[kind].append((depth, width, params, by_snr[snr]))
            depths = sorted({d for s in series.values() for d, *_ in s})
            index = {d: i for i, d in enumerate(depths)}
            for kind, (style, marker, _colour, kind_name) in KIND_LOOK.items():
                pts = sorted(series[kind])
                if not pts:
                    continue
                xs = [index[d] for d, *_ in pts]
                mean = [a.mean for *_, a in pts]
                yerr = [[a.mean - a.lo for *_, a in pts], [a.hi - a.mean for *_, a in pts]]
                name = kind_name + (" (width ↑)" if kind in IMPLICIT
                                    else " (depth ↑)" if kind in ("ffw", "ffw_relu") else "")
                colour = plt.get_cmap(KIND_FAMILY.get(kind, "Greys"))(0.8)
                ax.errorbar(xs, mean, yerr=yerr, fmt=marker, ls=style, color=colour, ms=4,
                            lw=1.4, capsize=2, label=name)
                table += [_point((kind, d, w, p_, tsnr), snr, a) for d, w, p_, a in pts]
            # parameter counts on the axes, not beside the points: no labels collide
            ffw_params = {d: p_ for k in ("ffw", "ffw_relu") for d, _w, p_, _a in series[k]}
            ax.set_xticks(range(len(depths)))
            ax.set_xticklabels([f"{d}\n{_k(ffw_params[d])}" if d in ffw_params else str(d)
                                for d in depths], fontsize=7.5)
            ax.set_xlabel("FFW layers (parameters)")
            widths = {d: (w, p_) for k in IMPLICIT for d, w, p_, _a in series[k]}
            if widths:
                top = ax.secondary_xaxis("top")
                top.set_xticks(range(len(depths)))
                top.set_xticklabels([f"{widths[d][0]}\n{_k(widths[d][1])}" if d in widths else ""
                                     for d in depths], fontsize=7.5)
                top.set_xlabel("DEQ width (parameters)", fontsize=8)
            ax.set_ylabel(
                _metric_label(metric) + f" at {fmt_db(snr, 'table')} dB {swept_part(rows)}",
                fontsize=8)
            ax.set_title(_train_title(tsnr), pad=30 if widths else 6, fontsize=9)
            if metric == "mse":
                ax.set_yscale("log")
            ax.margins(x=0.08, y=0.15)
            ax.legend(frameon=False, loc="best")
        if title:
            fig.suptitle(title)
        layout(fig)
        return _save(fig, out, fig_name, table)


def plot_train_snr_effect(
    rows: Sequence[dict[str, Any]], out: Path, title: str = ""
) -> list[Path]:
    """DEQ metric vs inference SNR, one line per training SNR, a panel per width (Fig. 1d)."""
    deq = [r for r in rows if r["kind"] == "deq"]
    metric = rows[0]["metric"]
    agg = aggregate(deq)
    widths = sorted({k[2] for k in agg})
    train_snrs = sorted({k[4] for k in agg}, key=lambda v: -v)
    levels = sorted({float(r["snr_db"]) for r in deq})
    pos = snr_positions(levels)
    cmap = plt.get_cmap(KIND_FAMILY["deq"])  # DEQs only: blues, darker = noisier training
    n_t = max(len(train_snrs) - 1, 1)
    colour = {t: cmap(0.4 + 0.55 * i / n_t) for i, t in enumerate(train_snrs)}
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, len(widths), figsize=(3.2 * len(widths), 3.0), squeeze=False,
                                 sharey=True)
        for ax, w in zip(axes[0], widths, strict=False):
            for (_kind, _depth, width, _p, t), by_snr in agg.items():
                if width != w:
                    continue
                xs = [pos[s] for s in by_snr]
                pts = list(by_snr.values())
                ax.plot(xs, [p.mean for p in pts], "-o", ms=3, lw=1.4, color=colour[t],
                        label=f"train {fmt_db(t, 'legend')}")
                _band(ax, xs, pts, colour[t])
            ax.xaxis.set_major_locator(FixedLocator(_ticks(levels, pos)))
            ax.set_xticklabels([fmt_db(_inv(pos, x), "table") for x in _ticks(levels, pos)])
            ax.set_title(f"DEQ width {w}")
            ax.set_xlabel(f"inference {swept_part(rows)} (dB)")
            if metric == "mse":
                ax.set_yscale("log")
        axes[0][0].set_ylabel(_metric_label(metric))
        axes[0][0].legend(frameon=False)
        if title:
            fig.suptitle(title)
        layout(fig)
        return _save(fig, out, "train_snr_effect", _points(agg))


def _mode_title(spec: SweepSpec, title: str,
                rows: Sequence[dict[str, Any]] = ()) -> str:
    """``title`` with the task (as the results' ``task`` column names it: ``mnist10k`` where
    the spec asked for ``mnist`` and the offline split was used), what the sweep varied
    (device and noise mode, or the noise site; on the ideal device, that no level adds noise:
    :data:`~noisydeq.summary.IDEAL_TEXT`) and the input nonlinearity appended."""
    task = ", ".join(dict.fromkeys(str(r["task"]) for r in rows if r.get("task"))) \
        or spec.task
    levels = [float(r[k]) for r in rows for k in ("snr_db", "train_snr_db") if k in r] \
        or [*spec.snr_db, *spec.train_snr_db]
    if not any(math.isfinite(s) for s in levels):
        what = f"{task} · no noise"  # said once: no device or site to name
    elif spec.noise_site == "device" and spec.device == IDEAL:
        # the ideal device adds nothing at any level (no noise mode applies), as an attack
        # run on it says "no noise"; training noise, if any, is in each panel's title
        what = f"{task} · {IDEAL_TEXT}"
    elif spec.noise_site == "device":
        what = f"{task} · {spec.device}, noise mode {spec.noise_mode}"
    else:
        what = f"{task} · {spec.noise_site} noise"
    note = input_note(spec.input_act)
    what += f" · {note}" if note else ""
    return f"{title} — {what}" if title else what


def plot_sweep(
    rows: Sequence[dict[str, Any]], out: Path, spec: SweepSpec,
    native_snr_db: float | None = None, title: str = "",
) -> list[Path]:
    """All figures of a sweep into ``out``; returns the written paths."""
    head = _mode_title(spec, title, rows)
    title = f"{head}\n{band_note(rows)}"  # second line: what the band is
    bars = f"{head}\n{band_note(rows, 'error bars')}"  # metric_vs_depth draws error bars
    native = native_snr_db if spec.noise_site == "device" else None
    groups = training_groups(rows)
    # the native level's rows are markers of metric_vs_snr; the other figures show the grid
    if len(groups) > 1:  # families trained on devices: each one's figures, then together
        paths = []
        for i, (label, sub) in enumerate(groups):
            each = f"{head} — trained {label}\n{band_note(sub)}"
            each_bars = f"{head} — trained {label}\n{band_note(sub, 'error bars')}"
            paths += plot_metric_vs_snr(sub, out, native, each,
                                        fig_name=f"metric_vs_snr-{i + 1}")
            grid = split_native_rows(sub)[0]
            if grid:
                paths += plot_metric_vs_depth(grid, out, spec.fixed_snr_db, each_bars,
                                              fig_name=f"metric_vs_depth-{i + 1}")
        grid = split_native_rows(rows)[0]
        return paths + (plot_training_effect(grid, out, title) if grid else [])
    paths = plot_metric_vs_snr(rows, out, native, title)
    grid = split_native_rows(rows)[0]
    if grid:
        paths += plot_metric_vs_depth(grid, out, spec.fixed_snr_db, bars)
    if len({r["train_snr_db"] for r in grid if r["kind"] == "deq"}) > 1:
        paths += plot_train_snr_effect(grid, out, title)
    return paths


def plot_training_effect(
    rows: Sequence[dict[str, Any]], out: Path, title: str = ""
) -> list[Path]:
    """Metric vs inference SNR, one line per way of training (digital, signal noise, on a
    device: :func:`noisydeq.summary.training_label`), a panel per model (paper Fig. 1d
    style, DEQ panels above the FFW ones); bands: min-max over chips and seeds."""
    metric = rows[0]["metric"]
    groups = training_groups(rows)
    levels = sorted({float(r["snr_db"]) for r in rows})
    pos = snr_positions(levels)
    members = sorted({(r["kind"], int(r["depth"]), int(r["width"])) for r in rows},
                     key=lambda m: (m[0] not in IMPLICIT, m[0], m[1]))
    kinds = list(dict.fromkeys(m[0] for m in members))
    ncol = max(sum(1 for m in members if m[0] == k) for k in kinds)
    cmap = plt.get_cmap("viridis")
    n_g = max(len(groups) - 1, 1)
    colour = {label: cmap(0.05 + 0.8 * i / n_g) for i, (label, _) in enumerate(groups)}
    table: list[dict[str, Any]] = []
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(len(kinds), ncol, figsize=(3.3 * ncol, 2.9 * len(kinds)),
                                 squeeze=False, sharey=True)
        for ax in axes.flat:
            ax.set_visible(False)
        for r_i, kind in enumerate(kinds):
            for c_i, (_k, depth, width) in enumerate(m for m in members if m[0] == kind):
                ax = axes[r_i][c_i]
                ax.set_visible(True)
                style, marker = KIND_LOOK.get(kind, KIND_LOOK["ffw"])[:2]
                for label, sub in groups:
                    agg = aggregate(r for r in sub if r["kind"] == kind
                                    and int(r["depth"]) == depth)
                    table += [{"trained": label, **point} for point in _points(agg)]
                    for by_snr in agg.values():
                        xs = [pos[s] for s in by_snr]
                        pts = list(by_snr.values())
                        ax.plot(xs, [p.mean for p in pts], style, marker=marker, ms=3, lw=1.4,
                                color=colour[label], label=label)
                        _band(ax, xs, pts, colour[label])
                ax.xaxis.set_major_locator(FixedLocator(_ticks(levels, pos)))
                ax.set_xticklabels([fmt_db(_inv(pos, x), "table") for x in _ticks(levels, pos)])
                look = KIND_LOOK.get(kind, KIND_LOOK["ffw"])[3]
                ax.set_title(f"{look} width {width}" if kind in IMPLICIT
                             else f"{look} {depth} layer{'s' * (depth > 1)}", fontsize=9)
                ax.set_xlabel(f"inference {swept_part(rows)} (dB)", fontsize=8)
                if metric == "mse":
                    ax.set_yscale("log")
            axes[r_i][0].set_ylabel(_metric_label(metric))
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4),
                   frameon=False, title="trained")
        if title:
            fig.suptitle(title)
        layout(fig, rect=(0, 0.1, 1, 1))
        return _save(fig, out, "training_effect", table)
