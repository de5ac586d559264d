"""Figures of a study (PNG + SVG, written atomically): mean over seeds, band = min…max.

* ``extrapolation`` (Fig. 18): the metric against the test size / scale, one panel per DEQ
  iteration budget, a line per model and (training SNR = test SNR) condition.
* ``snr`` (Fig. 6): the metric against the test SNR, a line per model and test solver, one
  panel per training SNR — drawn when a study tests more than two SNRs.
* ``params`` (Fig. 1e): the metric at ``fixed_snr_db`` against the parameter count, a line
  per model kind, each point labelled with its model name.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from noisydeq.analysis.outputs import pyplot, save_figure, snr_text
from noisydeq.studies.spec import StudySpec


def _metric_label(rows: list[dict[str, Any]]) -> str:
    metric = rows[0]["metric"]
    if metric == "accuracy" and rows[0]["shift_name"] in ("length", "size"):
        return "fraction fully correct"
    return metric


def plot_extrapolation(rows: list[dict[str, Any]], stem: Path, title: str) -> list[Path]:
    plt = pyplot()
    budgets = list(dict.fromkeys(r["budget"] for r in rows if r["budget"] != "-")) or ["-"]
    fig, axes = plt.subplots(1, len(budgets), figsize=(5.5 * len(budgets), 4), squeeze=False,
                             sharey=True)
    paired = [r for r in rows if r["test_snr_db"] == r["train_snr_db"]] or rows
    shifts = sorted({r["shift"] for r in paired})
    for ax, budget in zip(axes[0], budgets, strict=True):
        sel = [r for r in paired if r["budget"] in (budget, "-")]
        lines: dict[tuple, list] = {}
        for r in sel:
            lines.setdefault((r["model"], r["solver"], r["train_snr_db"]), []).append(r)
        for (model, solver, tsnr), pts in lines.items():
            pts.sort(key=lambda r: r["shift"])
            x = [r["shift"] for r in pts]
            label = f"{model} ({snr_text(tsnr)})" + (f" [{solver}]" if solver not in ("-",
                                                                              "trained") else "")
            ls = "-" if math.isinf(tsnr) else "--"
            line, = ax.plot(x, [r["value"] for r in pts], marker="o", ls=ls, label=label)
            ax.fill_between(x, [r["value_min"] for r in pts], [r["value_max"] for r in pts],
                            color=line.get_color(), alpha=0.15)
        if shifts and shifts[0] > 0 and shifts[-1] / shifts[0] >= 8:
            ax.set_xscale("log")
        name = sel[0]["shift_name"] if sel else "size"
        ax.set_xlabel(f"test {name}")
        ax.set_title({"train": "DEQ: training iteration budget",
                      "scaled": "DEQ: budget scaled with the size"}.get(budget, ""), fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(_metric_label(rows) + " (trained and tested at the same SNR)")
    if rows[0]["metric"] == "mse":
        axes[0][0].set_yscale("log")
    else:
        axes[0][0].set_ylim(-0.03, 1.03)
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, stem)


def plot_snr(rows: list[dict[str, Any]], stem: Path, title: str) -> list[Path]:
    plt = pyplot()
    tsnrs = sorted({r["train_snr_db"] for r in rows})
    fig, axes = plt.subplots(1, len(tsnrs), figsize=(5.5 * len(tsnrs), 4), squeeze=False)
    finite = sorted({r["test_snr_db"] for r in rows if math.isfinite(r["test_snr_db"])})
    inf_at = (finite[-1] + max(5.0, (finite[-1] - finite[0]) / 6)) if finite else 0.0

    def pos(v: float) -> float:
        return inf_at if math.isinf(v) else v

    for ax, tsnr in zip(axes[0], tsnrs, strict=True):
        lines: dict[tuple, list] = {}
        for r in rows:
            if r["train_snr_db"] == tsnr:
                lines.setdefault((r["model"], r["solver"]), []).append(r)
        for (model, solver), pts in lines.items():
            pts.sort(key=lambda r: pos(r["test_snr_db"]))
            x = [pos(r["test_snr_db"]) for r in pts]
            line, = ax.plot(x, [r["value"] for r in pts], marker="o",
                            ls="-" if solver in ("-", "trained") or "broyden" in solver else "--",
                            label=model + ("" if solver in ("-", "trained") else f" [{solver}]"))
            ax.fill_between(x, [r["value_min"] for r in pts], [r["value_max"] for r in pts],
                            color=line.get_color(), alpha=0.15)
        ticks = [*finite, inf_at] if finite else [inf_at]
        ax.set_xticks(ticks, [f"{t:g}" for t in finite] + ["∞"])
        ax.set_xlabel("test SNR (dB)")
        ax.set_title(f"trained with {snr_text(tsnr)}", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(_metric_label(rows))
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, stem)


def plot_params(rows: list[dict[str, Any]], snr: float, stem: Path, title: str) -> list[Path]:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    sel = [r for r in rows if r["test_snr_db"] == snr and r["solver"] in ("-", "trained",
                                                                           rows[0]["solver"])]
    for tsnr in sorted({r["train_snr_db"] for r in sel}):
        for kind in ("deq", "ffw"):
            pts = sorted((r for r in sel if r["kind"] == kind and r["train_snr_db"] == tsnr),
                         key=lambda r: r["params"])
            if not pts:
                continue
            line, = ax.plot([r["params"] for r in pts], [r["value"] for r in pts], marker="o",
                            label=f"{kind.upper()} (trained {snr_text(tsnr)})")
            for r in pts:
                ax.annotate(r["model"], (r["params"], r["value"]), fontsize=7,
                            textcoords="offset points", xytext=(3, 3))
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel(f"{_metric_label(rows)} at test SNR {snr_text(snr)}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, stem)


def plot_study(summary: list[dict[str, Any]], spec: StudySpec, out: Path,
               title: str = "") -> list[Path]:
    """Every figure the study's grid supports (see the module docstring)."""
    paths: list[Path] = []
    if spec.shifts and len(spec.shifts) > 1:
        paths += plot_extrapolation(summary, out / "extrapolation", title)
    if len({r["test_snr_db"] for r in summary}) > 2:
        paths += plot_snr(summary, out / "snr", title)
    if spec.fixed_snr_db is not None:
        paths += plot_params(summary, spec.fixed_snr_db, out / "params", title)
    return paths
