"""Tables and figures of a LyaDEQ experiment (:mod:`noisydeq.analysis.lyapunov_experiment`).

* ``report.md`` — the attack table in the layout of Chu et al. (2024) Table 1 (accuracy in %,
  mean ± standard deviation over seeds, the paper's MNIST numbers beside ours) and the
  device table (accuracy at a few device SNRs, mean over seeds and chips with the min-max).
* ``figures/attack.png|svg`` — accuracy vs ε per variant, one panel per attack.
* ``figures/device.png|svg`` — accuracy vs device SNR per model, one panel per device.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from noisydeq.store import atomic_write_text

#: Chu et al. (2024) Table 1, MNIST rows (accuracy %): clean, then ε = 2, 4, 6, 8 /255
PAPER_MNIST: dict[str, dict[str, list[float]]] = {
    "plain": {"none": [96.99], "ifgsm": [50.24, 49.89, 49.67, 49.34],
              "pgd": [45.98, 45.80, 45.47, 45.23]},
    "orthogonal": {"none": [96.56], "ifgsm": [29.98, 29.91, 29.60, 29.44],
                   "pgd": [29.94, 29.94, 29.71, 29.53]},
    "lyapunov": {"none": [97.10], "ifgsm": [23.18, 23.28, 23.21, 23.25],
                 "pgd": [23.17, 23.26, 23.24, 23.23]},
    "both": {"none": [96.59], "ifgsm": [50.78, 50.60, 50.55, 50.43],
             "pgd": [50.72, 50.54, 50.52, 50.35]},
}
PAPER_EPS_255 = (2.0, 4.0, 6.0, 8.0)
VARIANT_NAMES = {
    "plain": "DEQ (Eq. 7)",
    "orthogonal": "DEQ + orthogonal FC",
    "lyapunov": "LyaDEQ w/o orthogonal FC",
    "both": "LyaDEQ (+ orthogonal FC)",
}
ATTACK_NAMES = {"ifgsm": "I-FGSM", "pgd": "PGD"}
#: labels of the device comparison's model groups
GROUP_NAMES = {
    "lyadeq": "LyaDEQ (Eq. 7 + Lyapunov + orthogonal FC)",
    "lyadeq-plain": "DEQ (Eq. 7)",
    "lyadeq-lyapunov": "Eq. 7 + Lyapunov",
    "lyadeq-orthogonal": "Eq. 7 + orthogonal FC",
    "deq": "DEQ (Eq. 57, matched)",
    "ffw": "FFW (Eq. 57)",
}


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    m = statistics.fmean(values)
    return m, (statistics.stdev(values) if len(values) > 1 else 0.0)


def _cell(values: Sequence[float]) -> str:
    m, s = _mean_std([100.0 * v for v in values])
    return f"{m:.2f} ± {s:.2f}" if len(values) > 1 else f"{m:.2f}"


def attack_table(rows: Sequence[dict[str, Any]], paper: bool = True) -> str:
    """Markdown table: variant × attack rows, clean and per-ε accuracy (%), with the paper's
    numbers beside when ``paper`` (the attacks ran with its protocol)."""
    by: dict[tuple[str, str, float], list[float]] = defaultdict(list)
    seeds: dict[str, set[int]] = defaultdict(set)
    for r in rows:
        by[(r["variant"], r["attack"], float(r["eps_255"]))].append(float(r["accuracy"]))
        seeds[r["variant"]].add(int(r["seed"]))
    eps = sorted({float(r["eps_255"]) for r in rows if r["attack"] != "none"})
    attacks = [a for a in ("ifgsm", "pgd") if any(r["attack"] == a for r in rows)]
    head = "| model | seeds | clean | attack | " + " | ".join(
        f"ε = {e:g}/255" for e in eps) + " |"
    out = [head, "|" + "---|" * (4 + len(eps))]
    for variant in VARIANT_NAMES:
        if variant not in seeds:
            continue
        clean = _cell(by[(variant, "none", 0.0)])
        for j, attack in enumerate(attacks):
            cells = [_cell(by[(variant, attack, e)]) for e in eps]
            first = (f"{VARIANT_NAMES[variant]} | {len(seeds[variant])} | {clean}" if j == 0
                     else " | | ")
            out.append(f"| {first} | {ATTACK_NAMES[attack]} | " + " | ".join(cells) + " |")
            if not paper:
                continue
            ref = PAPER_MNIST[variant]
            pcells = [f"{ref[attack][PAPER_EPS_255.index(e)]:.2f}" if e in PAPER_EPS_255
                      else "" for e in eps]
            pclean = f"*{ref['none'][0]:.2f}*" if j == 0 else ""
            out.append(f"| *paper (MNIST)* | | {pclean} | *{ATTACK_NAMES[attack]}* | "
                       + " | ".join(f"*{c}*" if c else "" for c in pcells) + " |")
    return "\n".join(out)


def attack_times(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown table: per variant, mean training time, attack time and clean solver stats."""
    by: dict[str, dict[int, dict[str, Any]]] = defaultdict(dict)
    att: dict[tuple[str, int], float] = defaultdict(float)
    for r in rows:
        by[r["variant"]][int(r["seed"])] = r
        if r["attack"] != "none":
            att[(r["variant"], int(r["seed"]))] += float(r["seconds"])
    out = ["| model | params | train s | attacks s | solver steps | V(z*) | projected |",
           "|---|---|---|---|---|---|---|"]
    for variant in VARIANT_NAMES:
        if variant not in by:
            continue
        cells = list(by[variant].values())
        train = _mean_std([float(c["train_seconds"]) for c in cells])[0]
        atk = _mean_std([att[(variant, s)] for s in by[variant]])[0]
        steps = _mean_std([float(c["mean_steps"]) for c in cells])[0]
        v = [float(c["mean_V"]) for c in cells if "mean_V" in c and c["mean_V"] != ""]
        p = [float(c["projected_frac"]) for c in cells if "projected_frac" in c
             and c["projected_frac"] != ""]
        out.append(f"| {VARIANT_NAMES[variant]} | {cells[0]['params']} | {train:.0f} | "
                   f"{atk:.0f} | {steps:.1f} | "
                   f"{(f'{_mean_std(v)[0]:.1f}' if v else '–')} | "
                   f"{(f'{100 * _mean_std(p)[0]:.0f} %' if p else '–')} |")
    return "\n".join(out)


def device_table(rows: Sequence[dict[str, Any]], levels: Sequence[float]) -> str:
    """Markdown table: accuracy (%) per device and model at the SNR ``levels`` (mean over
    seeds and chips, [min, max] below)."""
    by: dict[tuple[str, str, float], list[float]] = defaultdict(list)
    for r in rows:
        by[(r["device"], r["model"], float(r["snr_db"]))].append(float(r["value"]))
    have = sorted({float(r["snr_db"]) for r in rows})
    cols = [s for s in levels if s in have]
    out = ["| device | model | " + " | ".join(
        "SNR ∞" if math.isinf(s) else f"{s:g} dB" for s in cols) + " |",
        "|" + "---|" * (2 + len(cols))]
    models = list(dict.fromkeys(r["model"] for r in rows))
    for device in dict.fromkeys(r["device"] for r in rows):
        for model in models:
            vals = [by.get((device, model, s), []) for s in cols]
            if not any(vals):
                continue
            cells = [f"{100 * statistics.fmean(v):.1f} [{100 * min(v):.1f}, {100 * max(v):.1f}]"
                     if v else "" for v in vals]
            name = GROUP_NAMES.get(model, model)
            out.append(f"| {device} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(out)


# ------------------------------------------------------------------------ figures


#: each variant / model group's kind (its colour family and line style) and shade: plain
#: DEQs blue (solid), LyaDEQs purple (dotted), the FFW orange (dashed); the more of the
#: paper's additions a model has, the darker
VARIANT_LOOK = {"plain": ("deq", 0.55), "orthogonal": ("deq", 0.9),
                "lyapunov": ("lyadeq", 0.55), "both": ("lyadeq", 0.9)}
GROUP_LOOK = {"lyadeq": ("lyadeq", 0.9), "lyadeq-plain": ("deq", 0.45),
              "lyadeq-lyapunov": ("lyadeq", 0.55), "lyadeq-orthogonal": ("deq", 0.65),
              "deq": ("deq", 0.9), "ffw": ("ffw", 0.8)}


def _look(table: dict[str, tuple[str, float]], name: str) -> dict[str, Any]:
    from noisydeq.figures import kind_colour, kind_line

    kind, shade = table.get(name, ("deq", 0.8))
    return kind_line(kind, kind_colour(kind, shade))


def _spread(rows: Sequence[dict[str, Any]], x: str, value: str,
            where: dict[str, tuple[Any, ...]], **keys: Any) -> list[dict[str, Any]]:
    """The plotted statistics of the ``rows`` whose every ``where`` column holds one of its
    values: per ``x`` (ascending) the mean, min and max of ``value`` in % and their count,
    each row led by the ``keys`` columns (empty when no row matches)."""
    pts: dict[float, list[float]] = defaultdict(list)
    for r in rows:
        if all(r[col] in allowed for col, allowed in where.items()):
            pts[float(r[x])].append(100.0 * float(r[value]))
    return [{**keys, x: e, "accuracy_pct_mean": statistics.fmean(pts[e]),
             "accuracy_pct_min": min(pts[e]), "accuracy_pct_max": max(pts[e]),
             "n": len(pts[e])} for e in sorted(pts)]


def _band(rows: Sequence[dict[str, Any]], *, chips: bool) -> str:
    seeds = len({r.get("seed", 0) for r in rows})
    n_chips = len({r.get("chip", 0) for r in rows}) if chips else 1
    parts = [f"{seeds} seeds"] * (seeds > 1) + [f"{n_chips} chips"] * (n_chips > 1)
    what = "band" if chips else "bars"
    if not parts:  # nothing spans: say what is not drawn (error bars, or a band)
        return ("one seed, one chip (no band)" if chips
                else "one seed (no error bars)")
    return f"{what}: min-max over " + " × ".join(parts)


#: width (inches) of one panel and of the legend column right of the panels: the legend's
#: longest name ("LyaDEQ (Eq. 7 + Lyapunov + orthogonal FC)") takes ~2.7 in, which a fixed
#: 4.4 in per panel took from a lone panel's axes (one attack, one device: ~1 in wide)
PANEL_W, LEGEND_W = 3.0, 3.0


def _figsize(panels: int) -> tuple[float, float]:
    """Figure size of a row of ``panels`` panels with the legend column right of them."""
    return PANEL_W * panels + LEGEND_W, 3.6


def plot_attack(rows: Sequence[dict[str, Any]], out: Path, paper: bool = True,
                task: str | None = None) -> list[Path]:
    """Accuracy vs ε (0 = clean) per variant, I-FGSM and PGD panels; bars = min-max over seeds.
    The plotted means and ranges are ``attack.csv``."""
    from noisydeq.figures import context_title, layout, save_figure, styled

    attacks = [a for a in ("ifgsm", "pgd") if any(r["attack"] == a for r in rows)]
    table: list[dict[str, Any]] = []
    with styled() as plt:
        fig, axes = plt.subplots(1, len(attacks), figsize=_figsize(len(attacks)),
                                 squeeze=False, sharey=True)
        for ax, attack in zip(axes[0], attacks, strict=True):
            for variant in VARIANT_NAMES:
                stats = _spread(rows, "eps_255", "accuracy",
                                {"variant": (variant,), "attack": ("none", attack)},
                                attack=attack, variant=variant)
                if not stats:
                    continue
                xs = [s["eps_255"] for s in stats]
                mean = [s["accuracy_pct_mean"] for s in stats]
                err = [[s["accuracy_pct_mean"] - s["accuracy_pct_min"] for s in stats],
                       [s["accuracy_pct_max"] - s["accuracy_pct_mean"] for s in stats]]
                look = _look(VARIANT_LOOK, variant)
                ax.errorbar(xs, mean, yerr=err, ms=3.5, lw=1.4, capsize=2, **look,
                            label=VARIANT_NAMES[variant])
                table += stats
                if paper:
                    ref = PAPER_MNIST[variant]
                    ax.plot([0.0, *PAPER_EPS_255], [ref["none"][0], *ref[attack]],
                            color=look["color"], ls=(0, (1, 2)), lw=1, alpha=0.6)
            ax.set_title(f"{ATTACK_NAMES[attack]}"
                         + (" (thin dotted: paper, MNIST)" if paper else ""))
            ax.set_xlabel("ε (× 1/255)")
            ax.set_ylim(0, 100)
        axes[0][0].set_ylabel("test accuracy (%)")
        axes[0][-1].legend(frameon=False, loc="center left", bbox_to_anchor=(1.02, 0.5))
        fig.suptitle(context_title("LyaDEQ under attack (Table 1)", task=task,
                                   noise="white-box ℓ∞ attacks",
                                   band=_band(rows, chips=False)))
        layout(fig)
        return save_figure(fig, out / "attack", table)


def plot_device(rows: Sequence[dict[str, Any]], out: Path, task: str | None = None) -> list[Path]:
    """Accuracy vs device SNR per model (mean over seeds and chips, band = min-max); the
    plotted means and ranges are ``device.csv`` beside the figure."""
    from noisydeq.figures import (
        context_title,
        layout,
        save_figure,
        snr_axis,
        snr_positions,
        styled,
    )

    devices = list(dict.fromkeys(r["device"] for r in rows))
    models = list(dict.fromkeys(r["model"] for r in rows))
    levels = sorted({float(r["snr_db"]) for r in rows})
    pos = snr_positions(levels)
    modes = sorted({str(r["noise_mode"]) for r in rows if r.get("noise_mode")})
    table: list[dict[str, Any]] = []
    with styled() as plt:
        fig, axes = plt.subplots(1, len(devices), figsize=_figsize(len(devices)),
                                 squeeze=False, sharey=True)
        for ax, device in zip(axes[0], devices, strict=True):
            for model in models:
                stats = _spread(rows, "snr_db", "value",
                                {"device": (device,), "model": (model,)},
                                device=device, model=model)
                if not stats:
                    continue
                xs = [pos[s["snr_db"]] for s in stats]
                look = _look(GROUP_LOOK, model)
                ax.plot(xs, [s["accuracy_pct_mean"] for s in stats], ms=3,
                        lw=1.4, label=GROUP_NAMES.get(model, model), **look)
                ax.fill_between(xs, [s["accuracy_pct_min"] for s in stats],
                                [s["accuracy_pct_max"] for s in stats], color=look["color"],
                                alpha=0.15, lw=0)
                table += stats
            snr_axis(ax, pos, every=6 if len(levels) > 8 else None)
            ax.set_title(device)
            ax.set_xlabel("device SNR (dB)")
            ax.set_ylim(0, 100)
        axes[0][0].set_ylabel("test accuracy (%)")
        seen: dict[str, Any] = {}  # every model once, whichever panel drew it
        for ax in axes[0]:
            for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
                seen.setdefault(label, h)
        axes[0][-1].legend(list(seen.values()), list(seen), frameon=False, loc="center left",
                           bbox_to_anchor=(1.02, 0.5))
        fig.suptitle(context_title(
            "LyaDEQ on devices", task=task, device=", ".join(devices),
            noise=f"noise mode {', '.join(modes)}" if modes else "device noise",
            band=_band(rows, chips=True)))
        layout(fig)
        return save_figure(fig, out / "device", table)


def _cached(folder: Path, inputs: dict[str, Any], draw: Any) -> list[Path]:
    """The figures ``draw()`` writes into ``folder``, from the figure cache when the same
    ``inputs`` (rows, options) were drawn by this code and libraries
    (:func:`noisydeq.figure_cache.cached_figures`)."""
    from noisydeq.figure_cache import cached_figures
    from noisydeq.runtime import cache_root

    return cached_figures(inputs, folder, draw, cache_root())


def write_report(spec: Any, out: Path, attack_rows: Sequence[dict[str, Any]],
                 device_rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """``report.md`` and the figures for whatever tables were computed; returns their paths
    and the markdown."""
    parts = [f"# {spec.title or spec.name}", ""]
    figures: list[Path] = []
    if attack_rows:
        grid = spec.attack
        paper = grid is None or (grid.steps is None and grid.alpha_255 == 1.0)
        parts += ["## Accuracy (%) under attack", "", attack_table(attack_rows, paper), "",
                  "## Models and run times (mean over seeds)", "", attack_times(attack_rows), ""]
        figures += _cached(out / "figures", {"figures": "lyapunov-attack", "rows": attack_rows,
                                             "paper": paper, "task": spec.task},
                           lambda: plot_attack(attack_rows, out / "figures", paper, spec.task))
    if device_rows:
        have = sorted({float(r["snr_db"]) for r in device_rows})
        levels = have if len(have) <= 8 else [
            s for s in have if math.isinf(s) or s % 6 == 0]
        parts += ["## Accuracy (%) vs device SNR", "", device_table(device_rows, levels), ""]
        figures += _cached(out / "figures", {"figures": "lyapunov-device", "rows": device_rows,
                                             "task": spec.task},
                           lambda: plot_device(device_rows, out / "figures", spec.task))
    text = "\n".join(parts)
    atomic_write_text(out / "report.md", text)
    return {"report": str(out / "report.md"), "figures": [str(p) for p in figures],
            "markdown": text}
