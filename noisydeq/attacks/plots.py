"""Figures of an attack run, in the style of the main paper's Fig. 14-17 and for hardware.

* ``attacks_<mode>_<snr>.png/.svg`` — one panel per attack curve (PGD-10 vs ε, PGD-50 vs ε,
  PGD vs steps, AA, AA-rand, speckle σ, salt-and-pepper p, ...), accuracy against the
  attack's strength, DEQ (solid, blues) vs FFW (dashed, oranges), darker for a larger
  member (the package's look, :mod:`noisydeq.figures`). A DEQ
  attacked with several gradient estimators is drawn at the worst of them (the attack a
  defender must survive), predicting with its final state.
* ``robust_vs_snr.png/.svg`` (more than one SNR level, one of them noisy) — accuracy under
  one attack point (the first curve's point at the headline ε) against the device SNR,
  white-box on the device (solid) and transferred from the digital twin (dotted); mean over
  chips with the chip range as a band.

Each figure's title names the run (task, family, where its SNR levels apply) and the
figure's level (``white-box at 10 dB``, ``SNR ∞: no noise``); a run that adds no noise
(the ideal device, or SNR ∞ only) says ``no noise`` once (:func:`level_text`); its second
line what a point is over (``200 test inputs``, ``mean over 3 chips``).

Each figure's plotted values are the ``.csv`` beside it. A per-position task's run draws both
figures twice: from ``value`` (all positions right, clean and attacked) and, named
``positions_<mode>_<snr>`` / ``positions_vs_snr``, from ``position_value`` (fraction of
positions right on both). A regression task's run (matrix addition) draws them from
``value`` read as the attacked MSE (``column="mse"``): y-axis "MSE (lower is better)", not
clipped to [0, 1], and a DEQ drawn at the estimator of *largest* MSE.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _snr_label(s: float) -> str:
    return "inf" if math.isinf(s) else f"{s:g}dB"


#: per plotted column: (file name prefix of the curves, of the SNR figure; y-axis label)
COLUMN_LOOK = {"value": ("attacks", "robust_vs_snr", "accuracy"),
               "position_value": ("positions", "positions_vs_snr", "positions right"),
               "mse": ("attacks", "robust_vs_snr", "MSE (lower is better)")}
#: plotted columns where lower is better (the worst estimator is the largest), and the
#: table column each reads
LOWER_IS_BETTER = {"mse"}
READS = {"mse": "value"}


def _better_lower(column: str) -> bool:
    return column in LOWER_IS_BETTER


def _worst(rows: Sequence[dict[str, Any]], column: str = "value") -> dict[tuple, float]:
    """(model, attack label, x) -> accuracy (``column``), worst over estimators, final
    defence, mean over chips (for an MSE the worst is the largest)."""
    acc: dict[tuple, dict[str, list[float]]] = {}
    field = READS.get(column, column)
    for r in rows:
        if r["defence"] != "final":
            continue
        key = (r["model_id"], r["attack"], r["x"])
        acc.setdefault(key, {}).setdefault(r["estimator"], []).append(r[field])
    pick = max if _better_lower(column) else min
    return {k: pick(sum(v) / len(v) for v in per.values()) for k, per in acc.items()}


def adds_noise(rows: Sequence[dict[str, Any]]) -> bool:
    """Whether any level of the run's rows adds noise: a finite SNR, on a device other than
    ``ideal`` (the exact digital weights at every level) or at a noise site."""
    return any(math.isfinite(r["snr_db"]) and not (r.get("noise_site", "device") == "device"
                                                  and r.get("device") == "ideal")
               for r in rows)


def level_text(mode: str, snr_db: float, noisy: bool, own_noise: bool = False) -> str:
    """What one figure's level is, for its title: ``white-box at 10 dB``, ``SNR ∞: no
    noise`` in a run that has noisy levels, plain ``no noise`` in a run without any (its
    title then names no noise site or device); ``own_noise``: the models keep their training
    noise at inference (main paper App. E.3), said instead of "no noise"."""
    none = "only the models' training noise" if own_noise else "no noise"
    if not noisy:
        return none
    return f"SNR ∞: {none}" if math.isinf(snr_db) else f"{mode} at {snr_db:g} dB"


def plot_run(rows: Sequence[dict[str, Any]], fig_dir: Path, title: str = "",
             column: str = "value", own_noise: bool = False) -> list[Path]:
    """Write the run's figures of ``column`` (:data:`COLUMN_LOOK`); returns the paths (PNG,
    SVG and CSV). ``title``: the run (task, family and, where the run adds noise, where);
    each figure's level is appended (:func:`level_text`); ``own_noise``: the models keep
    their training noise at inference."""
    from noisydeq.figures import member_colours, styled

    with styled():
        return _plot_run(rows, fig_dir, title, member_colours, column, own_noise)


def _plot_run(rows: Sequence[dict[str, Any]], fig_dir: Path, title: str,
              member_colours: Any, column: str = "value",
              own_noise: bool = False) -> list[Path]:
    from noisydeq.figures import layout, legend_under, member_label, pyplot, save_figure

    plt = pyplot()
    prefix, _, ylabel = COLUMN_LOOK[column]
    worst_name = "mse_worst" if _better_lower(column) else "accuracy_worst"
    paths: list[Path] = []
    models = {}
    for r in rows:
        models.setdefault(r["model_id"], (r["kind"], r["depth"], r["width"]))
    # the sweep figures' look: DEQ blues, FFW oranges, darker = larger member
    colour = member_colours([(kind, depth) for kind, depth, _ in models.values()])
    by_level: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for r in rows:
        by_level.setdefault((r["mode"], r["snr_db"]), []).append(r)
    for (mode, snr), rs in sorted(by_level.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        labels = list(dict.fromkeys(r["attack"] for r in rs))
        xname = {r["attack"]: r["x_name"] for r in rs}
        worst = _worst(rs, column)
        n = len(labels)
        cols = min(n, 4)
        nrows = math.ceil(n / cols)
        fig, axes = plt.subplots(nrows, cols, figsize=(3.4 * cols, 2.9 * nrows), squeeze=False)
        table: list[dict[str, Any]] = []
        for ax, label in zip(axes.flat, labels, strict=False):
            for mid, (kind, depth, width) in sorted(models.items(),
                                                     key=lambda kv: (kv[1][1], kv[1][0])):
                pts = sorted((x, v) for (m, a, x), v in worst.items() if m == mid and a == label)
                if not pts:
                    continue
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3,
                        ls="-" if kind == "deq" else "--", color=colour[(kind, depth)],
                        label=member_label(kind, depth, width, matched=True))
                table += [{"attack": label, "x_name": xname[label], "model_id": mid,
                           "kind": kind, "depth": depth, "width": width, "x": x,
                           worst_name: v} for x, v in pts]
            ax.set_title(label, fontsize=9)
            ax.set_xlabel({"eps": "ε", "steps": "PGD steps", "sigma": "speckle σ",
                           "fraction": "salt-and-pepper p"}.get(xname[label], xname[label]))
            ax.set_ylabel(ylabel)
            if not _better_lower(column):
                ax.set_ylim(-0.02, 1.02)
            ax.grid(alpha=0.3)
        for ax in list(axes.flat)[n:]:
            ax.axis("off")
        handles, names = axes.flat[0].get_legend_handles_labels()
        legend_under(fig, handles, names, fontsize=8)
        where = level_text(mode, snr, adds_noise(rows), own_noise)
        head = f"{title} — {where}" if title else where
        fig.suptitle(f"{head} (DEQ: worst estimator, final state)"
                     + (f"\n{_over(rs)}" if _over(rs) else ""), fontsize=10)
        layout(fig)
        paths += save_figure(fig, fig_dir / f"{prefix}_{mode}_{_snr_label(snr)}", table)
    levels = sorted({r["snr_db"] for r in rows})
    if len(levels) > 1 and adds_noise(rows):  # no noise at any level: nothing varies
        paths += plot_vs_snr(rows, fig_dir, colour, title, column)
    return paths


def _over(rows: Sequence[dict[str, Any]]) -> str:
    """What each point of a level's figure is over: ``200 test inputs``, and ``mean over 3
    chips`` where the level has several (no band: the chips' range is in robust_vs_snr)."""
    n = sorted({int(r["n_samples"]) for r in rows if r.get("n_samples") is not None})
    chips = len({r.get("chip", 0) for r in rows})
    parts = ([f"{n[0]} test inputs" if len(n) == 1 else f"{n[0]}-{n[-1]} test inputs"]
             if n else []) + ([f"mean over {chips} chips"] if chips > 1 else [])
    return ", ".join(parts)


def plot_vs_snr(rows: Sequence[dict[str, Any]], fig_dir: Path,
                colour: dict[tuple[str, int], Any],
                title: str = "", column: str = "value") -> list[Path]:
    """Accuracy (``column``) against the SNR level (white-box and transfer), one panel per
    ε of the first ε curve (ε = 0: the clean accuracy under the noise)."""
    from noisydeq.figures import save_figure, styled

    with styled() as plt:
        return _plot_vs_snr(plt, save_figure, rows, fig_dir, colour, title, column)


def _plot_vs_snr(plt: Any, save_figure: Any, rows: Sequence[dict[str, Any]], fig_dir: Path,
                 colour: dict[tuple[str, int], Any], title: str,
                 column: str = "value") -> list[Path]:
    from noisydeq.figures import member_label

    _, name, ylabel = COLUMN_LOOK[column]
    field, lower = READS.get(column, column), _better_lower(column)
    grad = [r for r in rows if r["x_name"] == "eps" and r["defence"] == "final"]
    if not grad:
        return []
    label = grad[0]["attack"]
    pick = [r for r in grad if r["attack"] == label]
    widths = {r["model_id"]: int(r["width"]) for r in pick}
    finite = [r["snr_db"] for r in pick if math.isfinite(r["snr_db"])]
    if not finite:
        return []
    inf_at = max(finite) + 5
    eps_values = sorted({r["x"] for r in pick})
    fig, axes = plt.subplots(1, len(eps_values), figsize=(4.2 * len(eps_values), 3.6),
                             squeeze=False)
    table: list[dict[str, Any]] = []
    what = "mse" if lower else "accuracy"
    for ax, eps in zip(axes.flat, eps_values, strict=True):
        series: dict[tuple, dict[float, dict[str, list[float]]]] = {}
        for r in pick:
            if r["x"] != eps:
                continue
            s = r["snr_db"] if math.isfinite(r["snr_db"]) else inf_at
            modes = ("white-box", "transfer") if math.isinf(r["snr_db"]) else (r["mode"],)
            for mode in modes:
                if eps == 0 and mode == "transfer":
                    continue  # nothing is crafted at ε = 0
                k = (r["model_id"], r["kind"], r["depth"], mode)
                series.setdefault(k, {}).setdefault(s, {}).setdefault(r["estimator"],
                                                                      []).append(r[field])
        for (mid, kind, depth, mode), pts in sorted(series.items(), key=lambda kv: kv[0][2:]):
            xs = sorted(pts)
            if mode == "transfer" and len(xs) < 2:
                continue
            # the worst estimator at each level; mean over chips, band = chip range
            choose = max if lower else min
            worst = {s: choose(pts[s], key=lambda e: sum(pts[s][e]) / len(pts[s][e])) for s in xs}
            vals = [pts[s][worst[s]] for s in xs]
            ls = ("-" if kind == "deq" else "--") if mode == "white-box" else ":"
            ax.plot(xs, [sum(v) / len(v) for v in vals], ls=ls,
                    marker="o" if kind == "deq" else "s", ms=3,
                    color=colour.get((kind, depth), "k"),
                    label=f"{member_label(kind, depth, widths[mid], matched=True)}, {mode}")
            ax.fill_between(xs, [min(v) for v in vals], [max(v) for v in vals],
                            color=colour.get((kind, depth), "k"), alpha=0.12, lw=0)
            table += [{"eps": eps, "model_id": mid, "kind": kind, "depth": depth,
                       "mode": mode, "snr_db": math.inf if s == inf_at else s,
                       "estimator": worst[s], f"{what}_mean": sum(v) / len(v),
                       f"{what}_min": min(v), f"{what}_max": max(v), "chips": len(v)}
                      for s, v in zip(xs, vals, strict=True)]
        ticks = sorted(set(finite)) + [inf_at]
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks[:-1]] + ["∞"])
        ax.set_xlabel(_snr_axis(pick))
        ax.set_ylabel(ylabel)
        ax.set_title("clean" if eps == 0 else f"{label}, ε = {eps:g}", fontsize=9)
        if not lower:
            ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    handles, names = max((ax.get_legend_handles_labels() for ax in axes.flat),
                         key=lambda hn: len(hn[1]))
    from noisydeq.figures import layout, legend_under

    legend_under(fig, handles, names, fontsize=7)
    how = "white-box on the noisy model" + (
        ", transfer from the noise-free twin" if any(r["mode"] == "transfer" for r in pick)
        else "")
    fig.suptitle(f"{title}: {what} vs SNR ({how})", fontsize=10)
    layout(fig)
    return save_figure(fig, fig_dir / name, table)


def _snr_axis(rows: Sequence[dict[str, Any]]) -> str:
    """The SNR axis' label: which noise the levels set (``rram device SNR (dB)``, ``signal noise
    SNR (dB)``)."""
    r = rows[0]
    what = f"{r['device']} device" if r["noise_site"] == "device" else f"{r['noise_site']} noise"
    return f"{what} SNR (dB)"
