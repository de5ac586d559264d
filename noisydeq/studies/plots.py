"""Figures of a study (PNG + SVG, written atomically): mean over seeds, band = min…max.

* ``extrapolation`` (Fig. 18): the metric against the test size / scale, one panel per DEQ
  iteration budget, a line per model and (training SNR = test SNR) condition.
* ``snr``: the metric against the test SNR, a line per model and test solver (a DEQ's first
  test solver in its kind's look, each further one with its own marker and a dotted line),
  one panel per training SNR — drawn when a study tests more than two SNRs.
* ``solvers`` (Fig. 6): the same curves, one panel per DEQ model (a row per training SNR), a
  line per test solver in its own hue — drawn when the DEQs are tested with several solvers
  at more than two SNRs.
* ``params`` (Fig. 1e): the metric at ``fixed_snr_db`` against the parameter count, a line
  per model kind (a DEQ's first test solver, named in the legend), each point labelled with
  its model name (placed clear of the error bars, the lines and the other names), min…max
  over the seeds as error bars (the title says so); the legend under the axes.

The house look (:mod:`noisydeq.figures`): each model's kind gives its colour family and line
style (DEQ blues solid, FFW oranges dashed, ...), a darker shade is a larger model; noisy
training is marked by a hollow marker. The title names the task, the noise site and the band
or error bars (min-max over the seeds); each figure's CSV (the plotted summary rows) is
beside it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from noisydeq.analysis.outputs import snr_text
from noisydeq.figures import (
    category_colours,
    context_title,
    kind_line,
    label_points,
    layout,
    legend_under,
    member_colours,
    panel_legend,
    save_figure,
    snr_axis,
    snr_positions,
    styled,
    trained_text,
)
from noisydeq.specs.study import StudySpec

#: markers of a DEQ's second, third, ... test solver (its first keeps its kind's marker)
OTHER_MARKERS = ("x", "^", "v", "D")


def deq_solvers(rows: list[dict[str, Any]]) -> list[str]:
    """The DEQs' test solvers in order of first appearance (FFW rows, solver ``-``, have
    none)."""
    return list(dict.fromkeys(r["solver"] for r in rows if r["solver"] != "-"))


def _metric_label(rows: list[dict[str, Any]]) -> str:
    metric = rows[0]["metric"]
    if metric == "accuracy" and rows[0]["shift_name"] in ("length", "size"):
        return "fraction fully correct"
    return metric


def _looks(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``model name -> line keywords``: its kind's style, its size's shade."""
    sizes = {r["model"]: (r["kind"], int(r["params"])) for r in rows}
    colours = member_colours(list(set(sizes.values())))
    return {m: kind_line(k, colours[(k, p)]) for m, (k, p) in sizes.items()}


def _trained_marker(look: dict[str, Any], train_snr_db: float) -> dict[str, Any]:
    """Noise-free training: filled markers; noisy training: hollow ones."""
    return look if math.isinf(train_snr_db) else {**look, "mfc": "white"}


def _seed_counts(rows: list[dict[str, Any]]) -> list[int]:
    """The distinct seed counts of ``rows``' summary points, ascending."""
    return sorted({int(r.get("seeds", 1)) for r in rows}) or [1]


def _seeds_label(pts: list[dict[str, Any]], rows: list[dict[str, Any]]) -> str:
    """``", 2 seeds"`` for a line when the figure's lines average different seed counts (the
    title then gives only the range), else nothing."""
    if len(_seed_counts(rows)) == 1:
        return ""
    n = _seed_counts(pts)
    return f", {n[0]} seed{'s' if n[0] > 1 else ''}" if len(n) == 1 else \
        f", {n[0]}-{n[-1]} seeds"


def study_title(rows: list[dict[str, Any]], title: str, marks: str = "band") -> str:
    """``title — task · noise site noise`` and on a second line what ``marks`` (the band, or
    the error bars) span: the seed count, or its range when lines differ (each line's count
    is then in its label)."""
    counts = _seed_counts(rows)
    lo, hi = counts[0], counts[-1]
    if lo != hi:
        band = f"{marks}: min-max over the seeds ({lo}-{hi} per line, in the legend)"
    else:
        band = f"{marks}: min-max over {hi} seeds" if hi > 1 else f"one seed (no {marks})"
    site = rows[0].get("noise_site") if rows else None
    noisy = any(math.isfinite(float(r[k])) for r in rows
                for k in ("train_snr_db", "test_snr_db") if k in r)
    return context_title(title, task=rows[0].get("task") if rows else None,
                         noise=(f"{site} noise" if noisy else "no noise") if site else None,
                         band=band)


def plot_extrapolation(rows: list[dict[str, Any]], stem: Path, title: str) -> list[Path]:
    budgets = list(dict.fromkeys(r["budget"] for r in rows if r["budget"] != "-")) or ["-"]
    paired = [r for r in rows if r["test_snr_db"] == r["train_snr_db"]] or rows
    shifts = sorted({r["shift"] for r in paired})
    looks = _looks(rows)
    table: list[dict[str, Any]] = []
    with styled() as plt:
        fig, axes = plt.subplots(1, len(budgets), figsize=(5.5 * len(budgets), 4),
                                 squeeze=False, sharey=True)
        for ax, budget in zip(axes[0], budgets, strict=True):
            sel = [r for r in paired if r["budget"] in (budget, "-")]
            lines: dict[tuple, list] = {}
            for r in sel:
                lines.setdefault((r["model"], r["solver"], r["train_snr_db"]), []).append(r)
            for (model, solver, tsnr), pts in lines.items():
                pts.sort(key=lambda r: r["shift"])
                x = [r["shift"] for r in pts]
                label = f"{model} ({snr_text(tsnr)}{_seeds_label(pts, rows)})" + (
                    f" [{solver}]" if solver not in ("-", "trained") else "")
                look = _trained_marker(looks[model], tsnr)
                ax.plot(x, [r["value"] for r in pts], ms=4, label=label, **look)
                ax.fill_between(x, [r["value_min"] for r in pts],
                                [r["value_max"] for r in pts], color=look["color"], alpha=0.15,
                                lw=0)
                table += [{"panel_budget": budget, **r} for r in pts]
            if shifts and shifts[0] > 0 and shifts[-1] / shifts[0] >= 8:
                ax.set_xscale("log")
                # a labelled tick at each tested size, plain numbers: the default minor
                # labels (2×10¹, 3×10¹, 4×10¹ …) collide
                from matplotlib.ticker import NullFormatter, NullLocator

                ax.set_xticks(shifts, [f"{v:g}" for v in shifts])
                ax.xaxis.set_minor_locator(NullLocator())
                ax.xaxis.set_minor_formatter(NullFormatter())
            name = sel[0]["shift_name"] if sel else "size"
            ax.set_xlabel(f"test {name}")
            ax.set_title({"train": "DEQ: training iteration budget",
                          "scaled": "DEQ: budget scaled with the size"}.get(budget, ""),
                         fontsize=9)
        # two lines: in one the label ran past the axes' height (out of the figure's top
        # and bottom edges)
        axes[0][0].set_ylabel(_metric_label(rows) + "\n(trained and tested at the same SNR)")
        if rows[0]["metric"] == "mse":
            axes[0][0].set_yscale("log")
        else:
            axes[0][0].set_ylim(-0.03, 1.03)
        panel_legend(fig, axes[0][-1])
        fig.suptitle(study_title(rows, title), fontsize=10)
        layout(fig)
        return save_figure(fig, stem, table)


def plot_snr(rows: list[dict[str, Any]], stem: Path, title: str) -> list[Path]:
    tsnrs = sorted({r["train_snr_db"] for r in rows})
    pos = snr_positions([r["test_snr_db"] for r in rows])
    looks = _looks(rows)
    solvers = deq_solvers(rows)
    table: list[dict[str, Any]] = []
    with styled() as plt:
        fig, axes = plt.subplots(1, len(tsnrs), figsize=(5.5 * len(tsnrs), 4), squeeze=False,
                                 sharey=True)  # panels compared side by side: one scale
        for ax, tsnr in zip(axes[0], tsnrs, strict=True):
            lines: dict[tuple, list] = {}
            for r in rows:
                if r["train_snr_db"] == tsnr:
                    lines.setdefault((r["model"], r["solver"]), []).append(r)
            for (model, solver), pts in lines.items():
                pts.sort(key=lambda r: pos[r["test_snr_db"]])
                x = [pos[r["test_snr_db"]] for r in pts]
                look = dict(looks[model])
                rank = solvers.index(solver) if solver in solvers else 0
                if rank:  # a further test solver: its own marker, a dotted line
                    look.update(marker=OTHER_MARKERS[(rank - 1) % len(OTHER_MARKERS)], ls=":")
                seeds = _seeds_label(pts, rows)
                ax.plot(x, [r["value"] for r in pts], ms=4, **look,
                        label=model + (f" ({seeds[2:]})" if seeds else "")
                        + ("" if solver in ("-", "trained") else f" [{solver}]"))
                ax.fill_between(x, [r["value_min"] for r in pts],
                                [r["value_max"] for r in pts], color=look["color"], alpha=0.15,
                                lw=0)
                table += pts
            snr_axis(ax, pos)
            ax.set_xlabel("test SNR (dB)")
            ax.set_title(trained_text(tsnr), fontsize=9)
        axes[0][0].set_ylabel(_metric_label(rows))
        panel_legend(fig, axes[0][-1])
        fig.suptitle(study_title(rows, title), fontsize=10)
        layout(fig)
        return save_figure(fig, stem, table)


def plot_solvers(rows: list[dict[str, Any]], stem: Path, title: str) -> list[Path]:
    """Fig. 6: each DEQ's metric against the test SNR, a line per test solver (a hue and a
    marker each), one panel per DEQ model and a row of panels per training SNR."""
    deq = [r for r in rows if r["solver"] not in ("-",)]
    models = list(dict.fromkeys(r["model"] for r in deq))
    tsnrs = sorted({r["train_snr_db"] for r in deq})
    solvers = deq_solvers(deq)
    hues = category_colours(solvers)
    pos = snr_positions([r["test_snr_db"] for r in deq])
    params = {r["model"]: int(r["params"]) for r in deq}
    table: list[dict[str, Any]] = []
    with styled() as plt:
        fig, axes = plt.subplots(len(tsnrs), len(models),
                                 figsize=(3.6 * len(models), 3.2 * len(tsnrs)), squeeze=False,
                                 sharey=True)
        for i, tsnr in enumerate(tsnrs):
            for ax, model in zip(axes[i], models, strict=True):
                for j, solver in enumerate(solvers):
                    pts = sorted((r for r in deq if r["model"] == model and
                                  r["solver"] == solver and r["train_snr_db"] == tsnr),
                                 key=lambda r: pos[r["test_snr_db"]])
                    if not pts:
                        continue
                    x = [pos[r["test_snr_db"]] for r in pts]
                    look = {"color": hues[solver], "ls": "-" if j == 0 else ":",
                            "marker": ("o", *OTHER_MARKERS)[j % (1 + len(OTHER_MARKERS))]}
                    ax.plot(x, [r["value"] for r in pts], ms=4, **look,
                            label=solver + _seeds_label(pts, rows))
                    ax.fill_between(x, [r["value_min"] for r in pts],
                                    [r["value_max"] for r in pts], color=look["color"],
                                    alpha=0.15, lw=0)
                    table += pts
                snr_axis(ax, pos)
                ax.set_xlabel("test SNR (dB)")
                ax.set_title(f"{model} ({params[model]:,} parameters)"
                             + (f", {trained_text(tsnr)}" if len(tsnrs) > 1 else ""),
                             fontsize=9)
            axes[i][0].set_ylabel(_metric_label(rows)
                                  + ("" if len(tsnrs) > 1 else f" ({trained_text(tsnr)})"))
        handles, labels = axes[0][0].get_legend_handles_labels()
        legend_under(fig, handles, labels)
        fig.suptitle(study_title(deq, title + ": test solvers"), fontsize=10)
        layout(fig)
        return save_figure(fig, stem, table)


def plot_params(rows: list[dict[str, Any]], snr: float, stem: Path, title: str) -> list[Path]:
    solvers = deq_solvers(rows)  # a DEQ's points: its first test solver's
    sel = [r for r in rows if r["test_snr_db"] == snr and r["solver"] in (
        "-", "trained", *solvers[:1])]
    table: list[dict[str, Any]] = []
    with styled() as plt:
        fig, ax = plt.subplots(figsize=(6, 4))
        for tsnr in sorted({r["train_snr_db"] for r in sel}):
            for kind in dict.fromkeys(r["kind"] for r in sel):
                pts = sorted((r for r in sel if r["kind"] == kind and r["train_snr_db"] == tsnr),
                             key=lambda r: r["params"])
                if not pts:
                    continue
                solver = pts[0]["solver"]
                ax.plot([r["params"] for r in pts], [r["value"] for r in pts], ms=4,
                        label=f"{kind.upper()}"
                              + (f" [{solver}]" if solver not in ("-", "trained") else "")
                              + f" ({trained_text(tsnr)})",
                        **_trained_marker(kind_line(kind), tsnr))
                ax.errorbar([r["params"] for r in pts], [r["value"] for r in pts],
                            yerr=[[r["value"] - r["value_min"] for r in pts],
                                  [r["value_max"] - r["value"] for r in pts]], fmt="none",
                            ecolor=kind_line(kind)["color"], elinewidth=1, capsize=2)
                table += pts
        ax.set_xscale("log")
        ax.set_xlabel("parameters")
        ax.set_ylabel(f"{_metric_label(rows)} at test SNR {snr_text(snr)}")
        ax.margins(x=0.12, y=0.12)  # room for the names of the outermost points
        handles, labels = ax.get_legend_handles_labels()
        legend_under(fig, handles, labels)  # under the axes: it covers no point or name
        ax.set_title(study_title(sel, title, marks="error bars"), fontsize=9)
        layout(fig)
        # each point's model name, clear of the bars, the lines and the other names (placed
        # once the axes' place is final: the spots are measured as drawn)
        label_points(ax, [(r["params"], r["value"], r["model"]) for r in table])
        return save_figure(fig, stem, table)


#: the line a study whose grid supports none of :func:`plot_study`'s figures prints (its run
#: and ``noisydeq plot`` of it: otherwise they said nothing of figures, ``plot`` nothing at all)
NO_FIGURE = ("no figure: this study's grid draws none (extrapolation needs several shifts, "
             "snr more than two test SNRs, params a fixed_snr_db)")


def plot_study(summary: list[dict[str, Any]], spec: StudySpec, out: Path,
               title: str = "") -> list[Path]:
    """Every figure the study's grid supports (see the module docstring)."""
    paths: list[Path] = []
    if spec.shifts and len(spec.shifts) > 1:
        paths += plot_extrapolation(summary, out / "extrapolation", title)
    if len({r["test_snr_db"] for r in summary}) > 2:
        paths += plot_snr(summary, out / "snr", title)
        if len(deq_solvers(summary)) > 1:
            paths += plot_solvers(summary, out / "solvers", title)
    if spec.fixed_snr_db is not None:
        paths += plot_params(summary, spec.fixed_snr_db, out / "params", title)
    return paths
