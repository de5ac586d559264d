"""Tables and figures of ``noisydeq solvers`` (paper Fig. 4, Fig. 5, Fig. 6 claim)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from noisydeq.analysis.outputs import pyplot, save_figure, snr_text, write_csv
from noisydeq.analysis.traces import TraceSet


def trace_rows(traces: list[TraceSet]) -> list[dict[str, Any]]:
    """Median (over the batch) rel and mean_rel residual per iteration."""
    rows = []
    for t in traces:
        rel = t.rel.double().nanmedian(dim=1).values
        mrel = t.mean_rel.double().nanmedian(dim=1).values
        for k in range(rel.shape[0]):
            rows.append({"solver": t.solver, "snr_db": t.snr_db, "iteration": k + 1,
                         "rel_median": float(rel[k]), "mean_rel_median": float(mrel[k])})
    return rows


def plot_traces(traces: list[TraceSet], stem: Path) -> list[Path]:
    """Fig. 4: rows rel / mean_rel, one column per SNR, one line per solver (batch median)."""
    plt = pyplot()
    snrs = sorted({t.snr_db for t in traces}, reverse=True)
    fig, axes = plt.subplots(2, len(snrs), figsize=(4.2 * len(snrs), 6.5), squeeze=False,
                             sharey="row")
    for j, snr in enumerate(snrs):
        for t in (t for t in traces if t.snr_db == snr):
            for i, (key, vals) in enumerate((("rel", t.rel), ("mean_rel", t.mean_rel))):
                med = vals.double().nanmedian(dim=1).values
                axes[i][j].plot(range(1, len(med) + 1), med.numpy(), label=t.solver)
                axes[i][j].set_yscale("log")
                axes[i][j].set_title(f"{key}, SNR {snr_text(snr)}", fontsize=9)
        axes[1][j].set_xlabel("iteration")
    axes[0][0].set_ylabel("‖f(z)−z‖/‖f(z)‖")
    axes[1][0].set_ylabel("window-averaged (Eq. 54)")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, stem)


def count_rows(counts: list) -> list[dict[str, Any]]:
    return [{"stop": c.stop, "window": c.window, "snr_db": c.snr_db,
             "mean_steps": float(c.steps.double().mean()),
             "median_steps": float(c.steps.double().median()),
             "converged_frac": float(c.converged.double().mean())} for c in counts]


def _curve_label(stop: str, window: int) -> str:
    return "rel" if stop == "rel" else f"{stop} (w={window})"


def plot_counts(rows: list[dict[str, Any]], eps: float, max_iter: int, stem: Path) -> list[Path]:
    """Fig. 5: mean iterations against SNR for rel and mean_rel (one curve per window)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for stop, window in dict.fromkeys((r["stop"], r["window"]) for r in rows):
        rs = sorted((r for r in rows if (r["stop"], r["window"]) == (stop, window)),
                    key=lambda r: r["snr_db"])
        ax.plot([r["snr_db"] for r in rs], [r["mean_steps"] for r in rs],
                "ks--" if stop == "rel" else "o-", label=_curve_label(stop, window),
                zorder=3 if stop == "rel" else 2)
    ax.axhline(max_iter, color="grey", ls=":", lw=1, label="cap")
    ax.set_xlabel("signal SNR (dB)")
    ax.set_ylabel("mean iterations (unroll)")
    ax.set_title(f"stop at ε = {eps:g}")
    ax.legend(fontsize=8)
    return save_figure(fig, stem)


def floor_rows(rows: list[dict[str, Any]], eps: float) -> list[dict[str, Any]]:
    """Add ``window_needed`` = ⌈w · floor / ε⌉: the window whose mean_rel floor is ε (1/w law)."""
    out = []
    for r in rows:
        need = r["window"] * r["mean_rel_floor"] / eps
        out.append({**r, "w_times_ratio": r["window"] * r["mean_rel_floor"] / r["rel_floor"],
                    "window_needed": math.ceil(need) if math.isfinite(need) else math.nan})
    return out


def plot_floors(rows: list[dict[str, Any]], eps: float, stem: Path) -> list[Path]:
    """mean_rel noise floor against the window length per SNR, with ε and a 1/w guide."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for i, snr in enumerate(sorted({r["snr_db"] for r in rows})):
        rs = sorted((r for r in rows if r["snr_db"] == snr), key=lambda r: r["window"])
        ws = [r["window"] for r in rs]
        ax.plot(ws, [r["mean_rel_floor"] for r in rs], "o-", color=f"C{i}", label=snr_text(snr))
        ax.plot(ws, [rs[0]["mean_rel_floor"] * ws[0] / w for w in ws], ":", color=f"C{i}",
                lw=1)
    ax.axhline(eps, color="k", ls="--", lw=1, label=f"ε = {eps:g}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("window w")
    ax.set_ylabel("median mean_rel floor (unroll)")
    ax.set_title("mean_rel noise floor vs window (dotted: ∝ 1/w)", fontsize=9)
    ax.legend(fontsize=7)
    return save_figure(fig, stem)


def plot_accuracy(rows: list[dict[str, Any]], stem: Path) -> list[Path]:
    """Fig. 6 claim: accuracy against test SNR per solver."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for name in dict.fromkeys(r["solver"] for r in rows):
        rs = sorted((r for r in rows if r["solver"] == name), key=lambda r: r["snr_db"])
        ax.plot([r["snr_db"] for r in rs], [r["accuracy"] for r in rs], "o-", label=name)
    ax.set_xlabel("test signal SNR (dB)")
    ax.set_ylabel("test accuracy")
    ax.legend(fontsize=8)
    return save_figure(fig, stem)


def write_traces(traces: list[TraceSet], out: Path) -> list[Path]:
    return [write_csv(out / "traces.csv", trace_rows(traces)), *plot_traces(traces, out / "traces")]


def write_counts(counts: list, eps: float, max_iter: int, out: Path) -> tuple[list, list[Path]]:
    rows = count_rows(counts)
    return rows, [write_csv(out / "iterations.csv", rows),
                  *plot_counts(rows, eps, max_iter, out / "iterations")]


def write_floors(rows: list[dict[str, Any]], eps: float, out: Path) -> tuple[list, list[Path]]:
    rows = floor_rows(rows, eps)
    return rows, [write_csv(out / "floors.csv", rows), *plot_floors(rows, eps, out / "floors")]


def write_accuracy(rows: list[dict[str, Any]], out: Path) -> list[Path]:
    return [write_csv(out / "accuracy.csv", rows), *plot_accuracy(rows, out / "accuracy")]

