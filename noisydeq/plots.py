"""Figures of a sweep (matplotlib, Agg backend), written as PNG and SVG.

* ``metric_vs_snr`` — metric against inference SNR per model (paper Fig. 7-12), one panel
  per training SNR; DEQ solid, FFW dashed, LyaDEQ dotted, colour by family depth, band =
  min-max over chip instances and seeds, the device's native SNR marked by a vertical line.
* ``metric_vs_depth`` — metric at fixed inference SNRs against the family member (paper
  Fig. 1a-c): FFW depth on the bottom axis, matched DEQ width on the top axis, parameter
  counts annotated.
* ``train_snr_effect`` — only when several training SNRs were swept: the DEQs against
  inference SNR, one line per training SNR (paper Fig. 1d).
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

from noisydeq.specs.sweep import SweepSpec  # noqa: E402
from noisydeq.store import atomic_open  # noqa: E402
from noisydeq.summary import Agg, aggregate, swept_part, training_groups  # noqa: E402

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


#: line style, marker, colour and display name of each model kind
KIND_LOOK = {
    "deq": ("-", "o", "tab:blue", "DEQ"),
    "ffw": ("--", "s", "tab:orange", "FFW"),
    "mondeq": ("-", "D", "tab:green", "monDEQ"),
    "ffw_relu": ("--", "^", "tab:red", "ReLU FFW"),
    "lyadeq": (":", "v", "tab:purple", "LyaDEQ"),
}
#: implicit kinds whose width is matched to an FFW depth (width ↑ with depth)
IMPLICIT = ("deq", "mondeq")


def _label_db(v: float) -> str:
    return "∞" if math.isinf(v) else f"{v:g}"


def _train_title(train_snr_db: float) -> str:
    if math.isinf(train_snr_db):
        return "trained without noise"
    return f"trained at {train_snr_db:g} dB signal SNR"


def _metric_label(metric: str) -> str:
    return "test accuracy" if metric == "accuracy" else "test MSE"


def _x_positions(levels: Sequence[float]) -> dict[float, float]:
    """x coordinate of each SNR level; ∞ is drawn one grid gap right of the largest finite."""
    finite = sorted(s for s in levels if math.isfinite(s))
    pos = {s: s for s in finite}
    if any(math.isinf(s) for s in levels):
        gap = (finite[-1] - finite[0]) / 8 if len(finite) > 1 else 5.0
        pos[math.inf] = (finite[-1] if finite else 0.0) + max(gap, 1.0)
    return pos


def _save(fig: Any, out: Path, name: str) -> list[Path]:
    """``out/name.png`` and ``.svg``, each written atomically (``store.atomic_open``)."""
    paths = []
    try:
        for ext in ("png", "svg"):
            final = out / f"{name}.{ext}"
            with atomic_open(final) as fh:
                fig.savefig(fh, format=ext, bbox_inches="tight", metadata=_meta(ext))
            paths.append(final)
    finally:
        plt.close(fig)
    return paths


def _meta(ext: str) -> dict[str, Any]:
    return {"Date": None} if ext == "svg" else {}


def _depth_colours(depths: Sequence[int]) -> dict[int, Any]:
    cmap = plt.get_cmap("viridis")
    depths = sorted(set(depths))
    n = max(len(depths) - 1, 1)
    return {d: cmap(0.05 + 0.8 * i / n) for i, d in enumerate(depths)}


def _band(ax: Any, xs: list[float], points: list[Agg], colour: Any) -> None:
    lo = [p.lo for p in points]
    hi = [p.hi for p in points]
    if any(h > lo_ for h, lo_ in zip(hi, lo, strict=False)):
        ax.fill_between(xs, lo, hi, color=colour, alpha=0.18, linewidth=0)


def plot_metric_vs_snr(
    rows: Sequence[dict[str, Any]], out: Path, native_snr_db: float | None = None,
    title: str = "", fig_name: str = "metric_vs_snr",
) -> list[Path]:
    """Metric vs inference SNR per model with chip bands (paper Fig. 7-12)."""
    metric = rows[0]["metric"]
    agg = aggregate(rows)
    train_snrs = sorted({k[4] for k in agg}, key=lambda v: -v)
    levels = sorted({float(r["snr_db"]) for r in rows})
    pos = _x_positions(levels)
    colours = _depth_colours([k[1] for k in agg])
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
                c = colours[depth]
                style, marker, _colour, kind_name = KIND_LOOK.get(kind, KIND_LOOK["ffw"])
                plural = "s" * (depth > 1)
                label = (f"{kind_name} w={width}" if kind in IMPLICIT or kind == "lyadeq"
                         else f"{kind_name} {depth} layer{plural}")
                ax.plot(xs, [p.mean for p in pts], style, marker=marker, ms=3, color=c, lw=1.4,
                        label=f"{label} ({params / 1e3:.0f}k)")
                _band(ax, xs, pts, c)
            if native_snr_db is not None and math.isfinite(native_snr_db):
                lo, hi = min(pos.values()), max(pos.values())
                if lo <= native_snr_db <= hi:
                    ax.axvline(native_snr_db, color="crimson", lw=1, ls=":")
                    ax.annotate(f"native {native_snr_db:.1f} dB", (native_snr_db, 0.02),
                                xycoords=("data", "axes fraction"), color="crimson",
                                rotation=90, ha="right", va="bottom", fontsize=7)
            ax.xaxis.set_major_locator(FixedLocator(_ticks(levels, pos)))
            ax.set_xticklabels([_label_db(_inv(pos, t)) for t in _ticks(levels, pos)])
            ax.set_xlabel(f"inference {swept_part(rows)} (dB)")
            ax.set_title(_train_title(tsnr))
            if metric == "mse":
                ax.set_yscale("log")
        axes[0][0].set_ylabel(_metric_label(metric))
        handles, labels = axes[0][0].get_legend_handles_labels()
        order = sorted(range(len(labels)), key=lambda i: (not labels[i].startswith("DEQ"), i))
        axes[0][-1].legend([handles[i] for i in order], [labels[i] for i in order],
                           loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False,
                           title="model (params)")
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        return _save(fig, out, fig_name)


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
    with plt.rc_context(STYLE):
        ncol = len(train_snrs)
        fig, axes = plt.subplots(len(snrs), ncol, figsize=(4.0 * ncol, 3.4 * len(snrs)),
                                 squeeze=False)
        for (tsnr, snr), ax in zip(panels, axes.flat, strict=False):
            series: dict[str, list[tuple[int, int, int, Agg]]] = {k: [] for k in KIND_LOOK}
            for (kind, depth, width, params, t), by_snr in agg.items():
                if t == tsnr and snr in by_snr:
                    series[kind].append((depth, width, params, by_snr[snr]))
            depths = sorted({d for s in series.values() for d, *_ in s})
            index = {d: i for i, d in enumerate(depths)}
            for kind, (_style, marker, colour, kind_name) in KIND_LOOK.items():
                pts = sorted(series[kind])
                if not pts:
                    continue
                xs = [index[d] for d, *_ in pts]
                mean = [a.mean for *_, a in pts]
                yerr = [[a.mean - a.lo for *_, a in pts], [a.hi - a.mean for *_, a in pts]]
                implicit = kind in IMPLICIT or kind == "lyadeq"
                name = kind_name + (" (width ↑)" if kind in IMPLICIT
                                    else " (depth ↑)" if kind in ("ffw", "ffw_relu") else "")
                ax.errorbar(xs, mean, yerr=yerr, fmt="-" + marker, color=colour, ms=4, lw=1.4,
                            capsize=2, label=name)
                for x, (_d, _w, params, a) in zip(xs, pts, strict=False):
                    if math.isfinite(a.mean):
                        dx, dy = (-5, 5) if implicit else (5, -9)
                        ax.annotate(f"{params / 1e3:.0f}k", (x, a.mean), textcoords="offset points",
                                    xytext=(dx, dy), ha="right" if implicit else "left",
                                    fontsize=6.5, color=colour)
            ax.set_xticks(range(len(depths)))
            ax.set_xticklabels([str(d) for d in depths])
            ax.set_xlabel("FFW layers")
            widths = {d: w for k in IMPLICIT for d, w, _p, _a in series[k]}
            if widths:
                top = ax.secondary_xaxis("top")
                top.set_xticks(range(len(depths)))
                top.set_xticklabels([str(widths.get(d, "")) for d in depths])
                top.set_xlabel("DEQ width", fontsize=8)
            ax.set_ylabel(_metric_label(metric) + f" at {_label_db(snr)} dB {swept_part(rows)}",
                          fontsize=8)
            ax.set_title(_train_title(tsnr), pad=24, fontsize=9)
            if metric == "mse":
                ax.set_yscale("log")
            ax.margins(x=0.08, y=0.15)
            ax.legend(frameon=False, loc="best")
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        return _save(fig, out, fig_name)


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
    pos = _x_positions(levels)
    cmap = plt.get_cmap("plasma")
    n_t = max(len(train_snrs) - 1, 1)
    colour = {t: cmap(0.1 + 0.7 * i / n_t) for i, t in enumerate(train_snrs)}
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
                        label=f"train {_label_db(t)} dB")
                _band(ax, xs, pts, colour[t])
            ax.xaxis.set_major_locator(FixedLocator(_ticks(levels, pos)))
            ax.set_xticklabels([_label_db(_inv(pos, x)) for x in _ticks(levels, pos)])
            ax.set_title(f"DEQ width {w}")
            ax.set_xlabel(f"inference {swept_part(rows)} (dB)")
            if metric == "mse":
                ax.set_yscale("log")
        axes[0][0].set_ylabel(_metric_label(metric))
        axes[0][0].legend(frameon=False)
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        return _save(fig, out, "train_snr_effect")


def _mode_title(spec: SweepSpec, title: str) -> str:
    """``title`` with what the sweep varied (device and noise mode) appended."""
    if spec.noise_site != "device":
        return title
    what = f"{spec.device}, noise mode {spec.noise_mode}"
    return f"{title} — {what}" if title else what


def plot_sweep(
    rows: Sequence[dict[str, Any]], out: Path, spec: SweepSpec,
    native_snr_db: float | None = None, title: str = "",
) -> list[Path]:
    """All figures of a sweep into ``out``; returns the written paths."""
    title = _mode_title(spec, title)
    native = native_snr_db if spec.noise_site == "device" else None
    groups = training_groups(rows)
    if len(groups) > 1:  # families trained on devices: each one's figures, then together
        paths = []
        for i, (label, sub) in enumerate(groups):
            head = f"{title} — trained {label}" if title else f"trained {label}"
            paths += plot_metric_vs_snr(sub, out, native, head,
                                        fig_name=f"metric_vs_snr-{i + 1}")
            paths += plot_metric_vs_depth(sub, out, spec.fixed_snr_db, head,
                                          fig_name=f"metric_vs_depth-{i + 1}")
        return paths + plot_training_effect(rows, out, title)
    paths = plot_metric_vs_snr(rows, out, native, title)
    paths += plot_metric_vs_depth(rows, out, spec.fixed_snr_db, title)
    if len({r["train_snr_db"] for r in rows if r["kind"] == "deq"}) > 1:
        paths += plot_train_snr_effect(rows, out, title)
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
    pos = _x_positions(levels)
    members = sorted({(r["kind"], int(r["depth"]), int(r["width"])) for r in rows},
                     key=lambda m: (m[0] not in IMPLICIT, m[0], m[1]))
    kinds = list(dict.fromkeys(m[0] for m in members))
    ncol = max(sum(1 for m in members if m[0] == k) for k in kinds)
    cmap = plt.get_cmap("viridis")
    n_g = max(len(groups) - 1, 1)
    colour = {label: cmap(0.05 + 0.8 * i / n_g) for i, (label, _) in enumerate(groups)}
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(len(kinds), ncol, figsize=(3.3 * ncol, 2.9 * len(kinds)),
                                 squeeze=False, sharey=True)
        for ax in axes.flat:
            ax.set_visible(False)
        for r_i, kind in enumerate(kinds):
            for c_i, (_k, depth, width) in enumerate(m for m in members if m[0] == kind):
                ax = axes[r_i][c_i]
                ax.set_visible(True)
                for label, sub in groups:
                    agg = aggregate(r for r in sub if r["kind"] == kind
                                    and int(r["depth"]) == depth)
                    for by_snr in agg.values():
                        xs = [pos[s] for s in by_snr]
                        pts = list(by_snr.values())
                        ax.plot(xs, [p.mean for p in pts], "-o", ms=3, lw=1.4,
                                color=colour[label], label=label)
                        _band(ax, xs, pts, colour[label])
                ax.xaxis.set_major_locator(FixedLocator(_ticks(levels, pos)))
                ax.set_xticklabels([_label_db(_inv(pos, x)) for x in _ticks(levels, pos)])
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
        fig.tight_layout(rect=(0, 0.1, 1, 1))
        return _save(fig, out, "training_effect")
