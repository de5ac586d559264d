"""Tables and figures of ``noisydeq solvers`` (paper Fig. 4, Fig. 5, Fig. 6 claim).

Every figure has the house look (:mod:`noisydeq.figures`): the lines are one DEQ's. Solvers
are categories, not family members: each solver has its own hue
(:func:`noisydeq.figures.category_colours`) and marker; ordered groups — windows, SNR
levels — are blues, a darker shade for a longer window or a higher SNR; ``rel`` is drawn
grey and dashed. Each figure's CSV (``traces``, ``iterations``, ``floors``,
``accuracy``) is written beside it; ``title`` (the task, the DEQ, the noise) heads it."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from noisydeq.analysis.family import training_text
from noisydeq.analysis.outputs import snr_text
from noisydeq.analysis.traces import TraceSet
from noisydeq.figures import (
    category_colours,
    context_title,
    input_note,
    integer_axis,
    layout,
    save_figure,
    shades,
    styled,
)


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


_MARKERS = ("o", "s", "D", "^", "v", "P")


def plot_traces(traces: list[TraceSet], stem: Path, rows: list[dict[str, Any]] | None = None,
                title: str = "") -> list[Path]:
    """Fig. 4: rows rel / mean_rel, one column per SNR, one line per solver (batch median)."""
    snrs = sorted({t.snr_db for t in traces}, reverse=True)
    solvers = list(dict.fromkeys(t.solver for t in traces))
    colour = category_colours(solvers)
    batch = traces[0].rel.shape[1] if traces else 0
    with styled() as plt:
        fig, axes = plt.subplots(2, len(snrs), figsize=(4.2 * len(snrs), 6.5), squeeze=False,
                                 sharey="row")
        for j, snr in enumerate(snrs):
            for t in (t for t in traces if t.snr_db == snr):
                for i, (key, vals) in enumerate((("rel", t.rel), ("mean_rel", t.mean_rel))):
                    med = vals.double().nanmedian(dim=1).values
                    k = solvers.index(t.solver)
                    axes[i][j].plot(range(1, len(med) + 1), med.numpy(), color=colour[t.solver],
                                    marker=_MARKERS[k % len(_MARKERS)], ms=3,
                                    markevery=max(1, len(med) // 10), label=t.solver)
                    axes[i][j].set_yscale("log")
                    axes[i][j].set_title(f"{key}, SNR {snr_text(snr)}", fontsize=9)
            axes[1][j].set_xlabel("iteration")
            for i in range(2):
                integer_axis(axes[i][j].xaxis)
        axes[0][0].set_ylabel("‖f(z)−z‖/‖f(z)‖")
        axes[1][0].set_ylabel("window-averaged (Eq. 54)")
        axes[0][0].legend(frameon=False, title="solver")
        fig.suptitle(title or context_title(
            "Residual traces (Fig. 4)", noise="state noise",
            trained=f"random DEQ cell, median over {batch} inputs"))
        layout(fig)
        return save_figure(fig, stem, rows)


def count_rows(counts: list) -> list[dict[str, Any]]:
    return [{"stop": c.stop, "window": c.window, "snr_db": c.snr_db,
             "mean_steps": float(c.steps.double().mean()),
             "median_steps": float(c.steps.double().median()),
             "converged_frac": float(c.converged.double().mean())} for c in counts]


def _curve_label(stop: str, window: int) -> str:
    return "rel" if stop == "rel" else f"{stop} (w={window})"


def plot_counts(rows: list[dict[str, Any]], eps: float, max_iter: int, stem: Path,
                title: str = "", note: str | None = None) -> list[Path]:
    """Fig. 5: mean iterations against SNR for rel and mean_rel (one curve per window);
    ``note`` (:func:`capped_note`: why no solve stopped) is written on the axes."""
    import textwrap

    from noisydeq.figures import snr_axis, snr_positions

    curves = list(dict.fromkeys((r["stop"], r["window"]) for r in rows))
    windows = sorted({w for stop, w in curves if stop != "rel"})
    colour = dict(zip(windows, shades("deq", len(windows)), strict=True))
    pos = snr_positions([r["snr_db"] for r in rows])
    with styled() as plt:
        fig, ax = plt.subplots(figsize=(7.6, 3.9))  # + the legend beside the axes
        for stop, window in curves:
            rs = sorted((r for r in rows if (r["stop"], r["window"]) == (stop, window)),
                        key=lambda r: r["snr_db"])
            look = ({"ls": "--", "marker": "s", "color": "0.35"} if stop == "rel"
                    else {"ls": "-", "marker": "o", "color": colour[window]})
            # a curve at the cap at every level lies under the others there (and hides
            # the cap line): its label says so, or the reader looks for a line not seen
            capped = all(r["mean_steps"] >= max_iter for r in rs)
            ax.plot([pos[r["snr_db"]] for r in rs], [r["mean_steps"] for r in rs], **look,
                    label=_curve_label(stop, window) + (": at the cap throughout"
                                                        if capped else ""),
                    zorder=3 if stop == "rel" else 2)
        snr_axis(ax, pos)  # a tick at each counted level, not at 2.5 dB steps
        # over the curves: seen where a curve runs along it
        ax.axhline(max_iter, color="crimson", ls=":", lw=1.2, label=f"cap ({max_iter})",
                   zorder=4)
        if note:  # below the capped curves: a flat figure says why it is flat
            ax.text(0.02, 0.04, textwrap.fill(note, 60, break_on_hyphens=False),
                    transform=ax.transAxes, fontsize=6.5,
                    va="bottom", ha="left", color="crimson")
        ax.set_xlabel("signal SNR (dB)")
        ax.set_ylabel("mean iterations (unroll)")
        ax.set_title(f"Stop-rule iterations (Fig. 5), ε = {eps:g}"
                     + (f"\n{title}" if title else ""), fontsize=8)
        # beside the axes: the curves fall across the whole panel (inside, "best" still put
        # the legend over a falling curve)
        ax.legend(frameon=False, fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
        layout(fig)
        return save_figure(fig, stem, rows)


def capped_note(counts: list[dict[str, Any]], floors: list[dict[str, Any]] | None,
                eps: float, max_iter: int, on_device: bool = False) -> str | None:
    """One line saying why no Fig. 5 solve met ε at any probe SNR, or ``None`` when some
    did (or only noise-free levels were counted).

    ``counts`` are :func:`count_rows`, ``floors`` :func:`floor_rows` (``None``: not measured).
    The lowest mean_rel floor over the noisy SNRs and windows is named with the window and
    SNR it was measured at, and what would let mean_rel stop there: a window of
    ``window_needed`` (1/w law) or an ε at least that floor. ``on_device``: the DEQ is a chip
    model, whose static weights add no floor (:mod:`noisydeq.analysis.on_device`)."""
    noisy = [r for r in counts if math.isfinite(r["snr_db"])]
    if not noisy or any(r["converged_frac"] > 0 for r in noisy):
        return None
    levels = sorted({r["snr_db"] for r in noisy})
    span = (snr_text(levels[0]) if len(levels) == 1
            else f"{levels[0]:g}–{levels[-1]:g} dB")
    head = (f"no solve met ε = {eps:g} at any probe SNR ({span}) within {max_iter} steps: "
            "every residual stalls at the probe noise's floor")
    where = (" (the chip model holds static weights only: the floor is the probe noise's, "
             "not the device's)" if on_device else "")
    rows = [r for r in (floors or []) if math.isfinite(r["snr_db"])
            and math.isfinite(r["mean_rel_floor"])]
    if not rows:
        return head + where + "; --floors measures it"
    best = min(rows, key=lambda r: (r["mean_rel_floor"], r["window"]))
    rel = min(r["rel_floor"] for r in rows)
    if best["mean_rel_floor"] <= eps:  # a floor below ε: the cap ended the solves first
        return (f"no solve met ε = {eps:g} at any probe SNR ({span}) within {max_iter} steps, "
                f"though the lowest mean_rel floor {best['mean_rel_floor']:.3g} "
                f"(w={best['window']}, {snr_text(best['snr_db'])}) is below ε: the cap ends "
                "the solves first; pass a larger --threshold")
    fits = [r for r in rows if math.isfinite(r["window_needed"])]
    reach = min(fits, key=lambda r: (r["window_needed"], -r["snr_db"])) if fits else None
    window = ("" if reach is None else
              f"--window ≳ {reach['window_needed']}"
              + (f" --threshold ≥ {reach['window_needed']}"
                 if reach["window_needed"] > max_iter else "")
              + f" (1/w law, at {snr_text(reach['snr_db'])}) or ")
    return (f"{head}, lowest mean_rel {best['mean_rel_floor']:.3g} (w={best['window']}, "
            f"{snr_text(best['snr_db'])}) > ε, rel ≥ {rel:.3g}{where}; for mean_rel to stop "
            f"pass {window}--eps ≳ {best['mean_rel_floor']:.3g}")


#: why a noise-free level's ``w_times_ratio`` and ``window_needed`` are empty: the tail of
#: its run is the solve's own convergence residual, no floor a window averages down
NO_FLOOR = "no probe noise: no floor, no window for ε"


def floor_rows(rows: list[dict[str, Any]], eps: float) -> list[dict[str, Any]]:
    """Add ``w_times_ratio`` = w · mean_rel floor / rel floor (≈ 1 under the 1/w law) and
    ``window_needed`` = ⌈w · floor / ε⌉: the window whose mean_rel floor is ε (1/w law).
    Both are None (an empty cell in ``floors.csv``) at a noise-free level (SNR ∞,
    :data:`NO_FLOOR`): without probe noise the residual keeps falling as the solve
    converges, so there is no floor for a window to average down and no window to ask for
    (it read ~1 there, whatever ε)."""
    out = []
    for r in rows:
        if not math.isfinite(r["snr_db"]):
            out.append({**r, "w_times_ratio": None, "window_needed": None})
            continue
        need = r["window"] * r["mean_rel_floor"] / eps
        out.append({**r, "w_times_ratio": r["window"] * r["mean_rel_floor"] / r["rel_floor"],
                    "window_needed": math.ceil(need) if math.isfinite(need) else math.nan})
    return out


def floor_line(r: dict[str, Any]) -> str:
    """The console line of one :func:`floor_rows` row (what ``floors.csv`` and the figure
    hold: a noise-free level's residual with :data:`NO_FLOOR`, no window)."""
    head = (f"  SNR {r['snr_db']:>5g} w={r['window']:<4} rel {r['rel_floor']:.3g}  "
            f"mean_rel {r['mean_rel_floor']:.3g}")
    if r["window_needed"] is None:
        return f"{head}  ({NO_FLOOR})"
    return f"{head}  (window for ε: ~{r['window_needed']})"


def plot_floors(rows: list[dict[str, Any]], eps: float, stem: Path,
                title: str = "") -> list[Path]:
    """mean_rel noise floor against the window length per SNR, with ε and a 1/w guide; a
    noise-free level (no floor: :func:`floor_rows`) is drawn grey and hollow, without a
    guide, its legend entry saying so."""
    snrs = sorted({r["snr_db"] for r in rows})
    colour = dict(zip(snrs, shades("deq", len(snrs)), strict=True))
    with styled() as plt:
        fig, ax = plt.subplots(figsize=(5.5, 3.9))
        for snr in snrs:
            rs = sorted((r for r in rows if r["snr_db"] == snr), key=lambda r: r["window"])
            ws = [r["window"] for r in rs]
            if not math.isfinite(snr):  # the solve's own residual, no floor
                ax.plot(ws, [r["mean_rel_floor"] for r in rs], "o--", color="0.55",
                        mfc="white", lw=1,
                        label=f"{snr_text(snr)}: the solve's residual, no floor")
                continue
            ax.plot(ws, [r["mean_rel_floor"] for r in rs], "o-", color=colour[snr],
                    label=snr_text(snr))
            ax.plot(ws, [rs[0]["mean_rel_floor"] * ws[0] / w for w in ws], ":",
                    color=colour[snr], lw=1)
        ax.axhline(eps, color="crimson", ls="--", lw=1, label=f"ε = {eps:g}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("window w")
        ax.set_ylabel("median mean_rel floor (unroll)")
        ax.set_title("mean_rel noise floor vs window (dotted: ∝ 1/w)"
                     + (f"\n{title}" if title else ""), fontsize=8)
        ax.legend(frameon=False, fontsize=7, title="signal SNR")
        layout(fig)
        return save_figure(fig, stem, rows)


def plot_accuracy(rows: list[dict[str, Any]], stem: Path, title: str = "") -> list[Path]:
    """Fig. 6 claim: accuracy against test SNR per solver (∞ = no noise at the right)."""
    from noisydeq.figures import snr_axis, snr_positions

    names = list(dict.fromkeys(r["solver"] for r in rows))
    colour = category_colours(names)
    pos = snr_positions([r["snr_db"] for r in rows])
    with styled() as plt:
        fig, ax = plt.subplots(figsize=(5.5, 3.9))
        for k, name in enumerate(names):
            rs = sorted((r for r in rows if r["solver"] == name), key=lambda r: r["snr_db"])
            ax.plot([pos[r["snr_db"]] for r in rs], [r["accuracy"] for r in rs], "-",
                    marker=_MARKERS[k % len(_MARKERS)], color=colour[name], label=name)
        snr_axis(ax, pos)
        ax.set_xlabel("test signal SNR (dB)")
        ax.set_ylabel("test accuracy")
        ax.set_title("Accuracy per solver (Fig. 6 claim)" + (f"\n{title}" if title else ""),
                     fontsize=8)
        ax.legend(frameon=False, title="solver")
        layout(fig)
        return save_figure(fig, stem, rows)


def write_traces(traces: list[TraceSet], out: Path) -> list[Path]:
    return plot_traces(traces, out / "traces", trace_rows(traces))


def write_counts(counts: list, eps: float, max_iter: int, out: Path,
                 title: str = "", note: str | None = None) -> tuple[list, list[Path]]:
    rows = count_rows(counts)
    return rows, plot_counts(rows, eps, max_iter, out / "iterations", title, note)


def write_accuracy(rows: list[dict[str, Any]], out: Path, title: str = "") -> list[Path]:
    return plot_accuracy(rows, out / "accuracy", title)


def member_title(m: Any, n_inputs: int, on: Any = None,
                 over: str = "median / mean") -> str:
    """The context of the figures of one family DEQ: task, device (``on``:
    :class:`noisydeq.analysis.on_device.OnDevice`, else digital weights), width, seed,
    training; on the second line what each point is ``over`` the inputs (``accuracy`` for
    the accuracy figure, not a median or mean)."""
    where = f"on {on.describe()}" if on is not None else "digital weights"
    note = input_note(getattr(m.model, "input_act", None))
    return context_title("", task=m.task, device=where, noise="signal noise",
                         trained=f"DEQ width {m.width} (depth {m.depth}), seed {m.seed}, "
                                 + training_text(m)
                                 + (f", {note}" if note else ""),
                         band=f"{over} over {n_inputs} test inputs")
