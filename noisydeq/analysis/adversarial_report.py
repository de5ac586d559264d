"""Tables and figures of an adversarial-training experiment
(:mod:`noisydeq.analysis.adversarial_experiment`).

Per evaluation (one attack table over every trained model), at the evaluation's headline
ε (its ``steps_eps``):

* ``summary.csv`` — one row per model and test-time defence: clean accuracy (the PGD
  curve at ε = 0, with the model's inference noise), PGD (minimum over every PGD attack,
  step count and gradient estimator at ε), AA, AA-rand, and ``all`` = the minimum over
  every gradient and query attack (the regulation paper's "ALL"), with the entropy
  shift P / ΔH (Eq. 12-13) averaged over the PGD cells, training seconds, selected epoch;
* ``summary_mean.csv`` and ``summary.md`` — the same averaged over seeds (mean ± sample
  standard deviation), per model kind × method × training defence × test defence, plus,
  when present, the T_f × R table of entropy-reduction defences (regulation paper
  Table 5) and the P / ΔH statistics over the intermediate-state attacks (Tables 6-7);
* figures: ``pgd_<method>`` — PGD accuracy against steps and against ε, one line per
  training defence, DEQ above FFW (main paper Fig. 3a-b, 14); ``best_<method>`` — the
  strongest defence of each kind against every attack curve (Fig. 3c-f, 16-17);
  ``states`` — accuracy under the intermediate-state attacks against the attacked state,
  the strongest unroll per λ (regulation paper Fig. 3a, 5).
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from noisydeq.store import atomic_write_text

GRADIENT = ("pgd", "ifgsm", "apgd-ce", "apgd-t", "fab", "aa", "aa-rand", "square")
METRICS = ("clean", "pgd", "aa", "aa_rand", "all")
UNROLLED = re.compile(r"unrolled\(z(\d+) k=(\d+) λ=([\d.]+)\)")
ENTROPY = re.compile(r"R=(\d+) Tf=(\d+)")


def _close(a: float, b: float) -> bool:
    return abs(a - b) < 1e-9


def _min(values: Sequence[float]) -> float:
    return min(values) if values else math.nan


def _mean(values: Sequence[float]) -> float:
    vals = [v for v in values if isinstance(v, float) and math.isfinite(v)]
    return sum(vals) / len(vals) if vals else math.nan


def model_summary(rows: Sequence[dict[str, Any]], eps: float,
                  info: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (model, test defence): see the module docstring."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["model_id"], r["defence"]), []).append(r)
    out = []
    for (mid, defence), rs in groups.items():
        at = [r for r in rs if r["x_name"] == "eps" and _close(r["eps"], eps)
              and r["attack_name"] in GRADIENT]
        pgd = [r for r in at if r["attack_name"] == "pgd"]
        clean = [r["value"] for r in rs if r["attack_name"] == "pgd" and r["x_name"] == "eps"
                 and r["eps"] == 0]
        worst = min(at, key=lambda r: r["value"]) if at else None
        meta = info.get(mid, {})
        out.append({
            "model_id": mid, "kind": rs[0]["kind"], "method": meta.get("method", ""),
            "train_defence": meta.get("defence", ""), "seed": rs[0]["seed"],
            "defence": defence, "eps": eps,
            "clean": _mean(clean),
            "pgd": _min([r["value"] for r in pgd]),
            "aa": _min([r["value"] for r in at if r["attack_name"] == "aa"]),
            "aa_rand": _min([r["value"] for r in at if r["attack_name"] == "aa-rand"]),
            "all": _min([r["value"] for r in at]),
            "worst_attack": "" if worst is None else f"{worst['attack']} / {worst['estimator']}",
            "entropy_p": _mean([r.get("entropy_p", math.nan) for r in pgd]),
            "entropy_dh": _mean([r.get("entropy_dh", math.nan) for r in pgd]),
            "train_seconds": meta.get("train_seconds", math.nan),
            "epochs": meta.get("epochs", 0), "selected_epoch": meta.get("selected_epoch"),
        })
    return sorted(out, key=lambda r: (r["kind"], r["method"], r["train_defence"],
                                      r["defence"], r["seed"]))


def aggregate(summary: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and sample standard deviation over seeds of every metric."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in summary:
        groups.setdefault((r["kind"], r["method"], r["train_defence"], r["defence"]),
                          []).append(r)
    out = []
    for (kind, method, tdef, defence), rs in groups.items():
        row: dict[str, Any] = {"kind": kind, "method": method, "train_defence": tdef,
                               "defence": defence, "seeds": len(rs)}
        for k in (*METRICS, "entropy_p", "entropy_dh", "train_seconds"):
            vals = [r[k] for r in rs if isinstance(r[k], float) and math.isfinite(r[k])]
            row[k] = statistics.fmean(vals) if vals else math.nan
            row[f"{k}_sd"] = statistics.stdev(vals) if len(vals) > 1 else math.nan
        out.append(row)
    return out


def _pm(mean: float, sd: float) -> str:
    if not math.isfinite(mean):
        return "–"
    return f"{mean:.3f}" if not math.isfinite(sd) else f"{mean:.3f} ± {sd:.3f}"


def markdown(agg: Sequence[dict[str, Any]], eps: float) -> str:
    """The seed-averaged table as Markdown."""
    lines = [f"accuracy at ε = {eps:g} on the attacked test inputs (mean ± sd over seeds; "
             "PGD: worst PGD attack and estimator; ALL: worst attack)", "",
             "| kind | method | training defence | test defence | seeds | clean | PGD | AA "
             "| ALL | train time |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in agg:
        t = r["train_seconds"]
        time_s = "–" if not math.isfinite(t) else (f"{t:.0f} s" if t < 120 else
                                                   f"{t / 60:.1f} min")
        lines.append(
            f"| {r['kind'].upper()} | {r['method']} | {r['train_defence']} | {r['defence']} "
            f"| {r['seeds']} | {_pm(r['clean'], r['clean_sd'])} | {_pm(r['pgd'], r['pgd_sd'])} "
            f"| {_pm(r['aa'], r['aa_sd'])} | {_pm(r['all'], r['all_sd'])} | {time_s} |")
    return "\n".join(lines) + "\n"


def entropy_grid(agg: Sequence[dict[str, Any]]) -> str:
    """T_f × R table of the entropy-reduction defences (regulation paper Table 5)."""
    cells: dict[tuple[str, str, str], dict[tuple[int, int], float]] = {}
    for r in agg:
        m = ENTROPY.search(r["defence"]) if r["defence"].startswith("entropy") else None
        if m is None or r["kind"] != "deq":
            continue
        cells.setdefault((r["method"], r["train_defence"], "all"), {})[
            (int(m.group(2)), int(m.group(1)))] = r["all"]
    if not cells:
        return ""
    out = []
    for (method, tdef, _), grid in cells.items():
        tfs = sorted({k[0] for k in grid})
        rs = sorted({k[1] for k in grid})
        if len(tfs) * len(rs) < 2:
            continue
        out.append(f"\nentropy reduction, {method} / {tdef}: worst-attack accuracy by T_f (rows) "
                   "and R (columns)\n")
        out.append("| T_f \\ R | " + " | ".join(str(r) for r in rs) + " |")
        out.append("|---" * (len(rs) + 1) + "|")
        for tf in tfs:
            vals = [grid.get((tf, r), math.nan) for r in rs]
            out.append(f"| {tf} | " + " | ".join("–" if not math.isfinite(v) else f"{v:.3f}"
                                                for v in vals) + " |")
    return "\n".join(out) + "\n" if out else ""


def entropy_stats(rows: Sequence[dict[str, Any]], eps: float,
                  info: dict[str, dict[str, Any]]) -> str:
    """P and ΔH over the intermediate-state PGD attacks (regulation paper Tables 6-7)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        if (r["kind"] == "deq" and r["defence"] == "final" and r["attack_name"] == "pgd"
                and _close(r["eps"], eps) and UNROLLED.match(r["estimator"])
                and math.isfinite(r.get("entropy_p", math.nan))):
            meta = info.get(r["model_id"], {})
            groups.setdefault((meta.get("method", ""), meta.get("defence", "")), []).append(r)
    if not groups:
        return ""
    out = ["\nentropy shift over the intermediate-state attacks (final state; Eq. 12-13)\n",
           "| method | training defence | attacks | P avg | P min | P max | ΔH avg | ΔH min "
           "| ΔH max |", "|---|---|---|---|---|---|---|---|---|"]
    for (method, tdef), rs in sorted(groups.items()):
        p = [r["entropy_p"] for r in rs]
        d = [r["entropy_dh"] for r in rs]
        out.append(f"| {method} | {tdef} | {len(rs)} | {_mean(p):.1f}% | {min(p):.1f}% | "
                   f"{max(p):.1f}% | {_mean(d):.4f} | {min(d):.4f} | {max(d):.4f} |")
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------------- figures


def _curves(rows: Sequence[dict[str, Any]], family: str, label: str | None = None
            ) -> dict[str, dict[float, float]]:
    """model -> {x: accuracy}, worst over estimators and modes (white-box, transfer),
    final defence."""
    acc: dict[str, dict[float, dict[tuple[str, str], float]]] = {}
    for r in rows:
        if r["family"] != family or r["defence"] != "final" or (label and r["attack"] != label):
            continue
        acc.setdefault(r["model_id"], {}).setdefault(r["x"], {})[
            (r["estimator"], r["mode"])] = r["value"]
    return {m: {x: min(v.values()) for x, v in xs.items()} for m, xs in acc.items()}


def _by_group(curves: dict[str, dict[float, float]], info: dict[str, dict[str, Any]],
              key: str) -> dict[tuple[str, str], list[dict[float, float]]]:
    out: dict[tuple[str, str], list[dict[float, float]]] = {}
    for mid, c in curves.items():
        meta = info.get(mid, {})
        out.setdefault((meta.get("kind", "?"), meta.get(key, "?")), []).append(c)
    return out


def _mean_curve(cs: list[dict[float, float]]) -> tuple[list[float], list[float], list[float],
                                                      list[float]]:
    xs = sorted(set.intersection(*(set(c) for c in cs)))
    mean = [statistics.fmean(c[x] for c in cs) for x in xs]
    return xs, mean, [min(c[x] for c in cs) for x in xs], [max(c[x] for c in cs) for x in xs]


def _seed_band(curves: dict[tuple[str, str], list[dict[float, float]]]) -> str:
    n = max((len(cs) for cs in curves.values()), default=1)
    return f"band: min-max over {n} seeds" if n > 1 else "one seed (no band)"


def plot_report(rows: Sequence[dict[str, Any]], info: dict[str, dict[str, Any]],
                summary: Sequence[dict[str, Any]], fig_dir: Path, title: str) -> list[Path]:
    """The house look (:mod:`noisydeq.figures`): a DEQ panel's defences in blues (solid), an
    FFW panel's in oranges (dashed), a darker shade for a later defence; each figure's
    plotted means and ranges are its CSV."""
    from noisydeq.figures import context_title, kind_line, save_figure, shades, styled

    paths: list[Path] = []
    methods = sorted({m["method"] for m in info.values()})
    families = {r["family"] for r in rows}
    with styled() as plt:
        for method in methods:
            sub = [r for r in rows if info.get(r["model_id"], {}).get("method") == method]
            panels = [(f, lab) for f, lab in (("pgd-steps", None), ("pgd-eps", "PGD-10"))
                      if f in families]
            kinds = [k for k in ("deq", "ffw") if any(m["kind"] == k and m["method"] == method
                                                      for m in info.values())]
            if panels and kinds:
                fig, axes = plt.subplots(len(kinds), len(panels), squeeze=False,
                                         figsize=(4.2 * len(panels), 3.0 * len(kinds)),
                                         layout="constrained")
                table: list[dict[str, Any]] = []
                band = ""
                for j, (fam, lab) in enumerate(panels):
                    groups = _by_group(_curves(sub, fam, lab), info, "defence")
                    band = _seed_band(groups)
                    defences = sorted({d for _, d in groups})
                    for i, kind in enumerate(kinds):
                        ax = axes[i][j]
                        colours = shades(kind, len(defences))
                        for c_i, d in enumerate(defences):
                            cs = groups.get((kind, d))
                            if not cs:
                                continue
                            xs, mean, lo, hi = _mean_curve(cs)
                            look = kind_line(kind, colours[c_i])
                            ax.plot(xs, mean, ms=3, label=d, **look)
                            if len(cs) > 1:
                                ax.fill_between(xs, lo, hi, color=look["color"], alpha=0.15,
                                                lw=0)
                            table += [{"kind": kind, "family": fam, "defence": d, "x": x,
                                       "mean": m, "lo": lo_, "hi": hi_, "seeds": len(cs)}
                                      for x, m, lo_, hi_ in zip(xs, mean, lo, hi, strict=True)]
                        ax.set_title(f"{kind.upper()}, {method}: "
                                     f"{'PGD vs steps' if fam == 'pgd-steps' else 'PGD-10 vs ε'}",
                                     fontsize=9)
                        ax.set_xlabel("PGD steps" if fam == "pgd-steps" else "ε")
                        if fam == "pgd-steps":
                            ax.set_xscale("log")
                        ax.set_ylabel("accuracy")
                        ax.set_ylim(-0.02, 1.02)
                        if ax.get_legend_handles_labels()[1]:
                            ax.legend(frameon=False, fontsize=7, title="defence")
                        else:  # this kind was not attacked this way: say so, no empty legend
                            ax.text(0.5, 0.5, f"no {kind.upper()} runs", ha="center",
                                    va="center", transform=ax.transAxes, fontsize=8,
                                    color="0.4")
                fig.suptitle(context_title(title, band=band), fontsize=10)
                paths += save_figure(fig, fig_dir / f"pgd_{method}", table)
            paths += _plot_best(plt, save_figure, sub, info, summary, method, fig_dir, title)
        paths += _plot_states(plt, save_figure, rows, info, fig_dir, title)
    return paths


def _plot_best(plt: Any, save: Any, rows: Sequence[dict[str, Any]],
               info: dict[str, dict[str, Any]], summary: Sequence[dict[str, Any]],
               method: str, fig_dir: Path, title: str) -> list[Path]:
    """Strongest training defence per kind (highest mean ALL at ε) against every curve."""
    from noisydeq.figures import context_title, kind_line

    score: dict[tuple[str, str], list[float]] = {}
    for s in summary:
        if s["method"] == method and s["defence"] == "final" and math.isfinite(s["all"]):
            score.setdefault((s["kind"], s["train_defence"]), []).append(s["all"])
    best = {}
    for (kind, d), v in score.items():
        if kind not in best or statistics.fmean(v) > statistics.fmean(score[(kind, best[kind])]):
            best[kind] = d
    if not best:
        return []
    labels = list(dict.fromkeys((r["family"], r["attack"], r["x_name"]) for r in rows))
    n = len(labels)
    cols = min(n, 4)
    fig, axes = plt.subplots(math.ceil(n / cols), cols, squeeze=False,
                             figsize=(3.4 * cols, 2.9 * math.ceil(n / cols)),
                             layout="constrained")
    table: list[dict[str, Any]] = []
    band = ""
    for ax, (fam, lab, xname) in zip(axes.flat, labels, strict=False):
        groups = _by_group(_curves(rows, fam, lab), info, "defence")
        band = band or _seed_band(groups)
        axis = {"eps": "ε", "steps": "PGD steps", "sigma": "speckle σ",
                "fraction": "salt-and-pepper p"}.get(xname, xname)
        plotted = [(kind, d, _mean_curve(groups[(kind, d)]), len(groups[(kind, d)]))
                   for kind, d in sorted(best.items()) if groups.get((kind, d))]
        # one strength (e.g. AutoAttack at a single ε): a marker per model, not a curve
        single = len({x for _, _, (xs, *_), _ in plotted for x in xs}) == 1
        for pos, (kind, d, (xs, mean, lo, hi), seeds) in enumerate(plotted):
            look = kind_line(kind)
            name = f"{kind.upper()} ({d})"
            if single:
                err = [[mean[0] - lo[0]], [hi[0] - mean[0]]] if seeds > 1 else None
                ax.errorbar([pos], mean, yerr=err, fmt=look.get("marker", "o"), ms=6,
                            color=look["color"], capsize=4, label=name)
            else:
                ax.plot(xs, mean, ms=3, label=name, **look)
                if seeds > 1:
                    ax.fill_between(xs, lo, hi, color=look["color"], alpha=0.15, lw=0)
            table += [{"attack": lab, "kind": kind, "defence": d, "x": x, "mean": m,
                       "lo": lo_, "hi": hi_, "seeds": seeds}
                      for x, m, lo_, hi_ in zip(xs, mean, lo, hi, strict=True)]
        if single:
            x0 = plotted[0][2][0][0]
            ax.set_title(f"{lab} at {axis} = {x0:g}", fontsize=9)
            ax.set_xticks(range(len(plotted)), [f"{k.upper()} ({d})" for k, d, *_ in plotted])
            ax.set_xlim(-0.6, len(plotted) - 0.4)
            ax.set_xlabel("model" + (" (bar: seed range)" if band.startswith("band") else ""))
        else:
            ax.set_title(lab, fontsize=9)
            ax.set_xlabel(axis)
            if plotted:
                ax.legend(frameon=False, fontsize=7)
        ax.set_ylim(-0.02, 1.02)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle(context_title(f"{title}: strongest defence, {method}", band=band or None),
                 fontsize=10)
    return save(fig, fig_dir / f"best_{method}", table)


def _plot_states(plt: Any, save: Any, rows: Sequence[dict[str, Any]],
                 info: dict[str, dict[str, Any]], fig_dir: Path, title: str) -> list[Path]:
    """Accuracy under the intermediate-state attacks by attacked state (strongest K per λ);
    DEQ states, so blues (solid for λ < 1, dotted otherwise), darker = later group."""
    from noisydeq.figures import integer_axis, shades

    acc: dict[tuple[str, str, float], dict[int, list[float]]] = {}
    for r in rows:
        m = UNROLLED.match(r["estimator"])
        if m is None or r["defence"] != "final" or r["attack_name"] != "pgd":
            continue
        meta = info.get(r["model_id"], {})
        key = (meta.get("method", ""), meta.get("defence", ""), float(m.group(3)))
        acc.setdefault(key, {}).setdefault(int(m.group(1)), []).append(r["value"])
    if not acc:
        return []
    fig, ax = plt.subplots(figsize=(5.6, 3.6))
    colours = shades("deq", len(acc))
    table: list[dict[str, Any]] = []
    for colour, (key, per_state) in zip(colours, sorted(acc.items()), strict=True):
        xs = sorted(per_state)
        ax.plot(xs, [min(per_state[x]) for x in xs], marker="o", ms=3, color=colour,
                ls="-" if key[2] < 1 else ":", label=f"{key[0]} / {key[1]}, λ={key[2]:g}")
        table += [{"method": key[0], "defence": key[1], "lambda": key[2], "state": x,
                   "accuracy_min": min(per_state[x])} for x in xs]
    integer_axis(ax.xaxis)
    ax.set_xlabel("attacked intermediate state z[i]")
    ax.set_ylabel("accuracy (strongest K_a, min over seeds)")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(frameon=False, fontsize=7)
    ax.set_title(title + "\nDEQ intermediate-state attacks (min over seeds, no band)",
                 fontsize=9)
    return save(fig, fig_dir / "states", table)


#: how the line of an evaluation's seconds in its ``summary.md`` begins
TIMING = "attack run:"


def timing_line(seconds: float, computed: int, served: int, old_md: Path) -> str:
    """The ``summary.md`` line of an evaluation's seconds: this run's when it computed
    every cell; with cells served from an earlier run, how many it computed; a run that
    computed none keeps the line of the run(s) before (``old_md``'s, when it has one), so a
    resume that computes nothing leaves the report byte for byte as it was."""
    if computed == 0 and old_md.is_file():
        for line in old_md.read_text(encoding="utf-8").splitlines():
            if line.startswith(TIMING):
                return line
    if served == 0:
        return f"{TIMING} {seconds:.0f} s"
    return (f"{TIMING} {seconds:.0f} s (this run computed {computed} of {computed + served} "
            "cells, an earlier run the others)")


def report_title(resolved: Any, evaluation: str) -> str:
    """``mnist10k: adversarial-fig3 [quick] curves``: the figures' title — the task first,
    as in every other figure's title (the experiment's name alone did not say which data
    the accuracies are of), then the experiment, its variant and the evaluation."""
    tasks = sorted({c.spec.task for c in resolved.cells})
    head = f"{', '.join(tasks)}: " if tasks else ""
    return f"{head}{resolved.name} [{resolved.variant}] {evaluation}"


def write_report(result: Any, specs: dict[str, Any]) -> list[Path]:
    """Write every evaluation's tables and figures into its run directory and list them,
    with the attack run's files, in its ``SHA256SUMS`` (under the directory's lock)."""
    from noisydeq.figure_cache import cached_figures
    from noisydeq.figures import write_csv
    from noisydeq.runtime import cache_root

    paths: list[Path] = []
    for name, res in result.evaluations.items():
        spec = specs[name]
        eps = spec.steps_eps
        summary = model_summary(res.rows, eps, result.info)
        agg = aggregate(summary)
        rd = res.run_dir
        run = Path(rd.path)
        with rd.lock:
            mine = [write_csv(run / "summary.csv", summary),
                    write_csv(run / "summary_mean.csv", agg)]
            timing = timing_line(result.eval_seconds.get(name, math.nan), res.computed_cells,
                                 res.skipped_cells, run / "summary.md")
            md = (f"# {result.resolved.name} [{result.resolved.variant}]: {name}\n\n"
                  + markdown(agg, eps) + entropy_grid(agg) + entropy_stats(res.rows, eps,
                                                                           result.info)
                  + f"\n{timing}\n")
            mine.append(atomic_write_text(run / "summary.md", md))
            title = report_title(result.resolved, name)

            def draw(rows: Any = res.rows, summary: Any = summary,
                     folder: Path = run / "figures", title: str = title) -> list[Path]:
                return plot_report(rows, result.info, summary, folder, title)

            # the same rows, models, summary and title (and code): the figures of the cache
            inputs = {"figures": "adversarial", "rows": res.rows, "info": result.info,
                      "summary": summary, "title": title}
            figures = cached_figures(inputs, run / "figures", draw, cache_root())
            rd.seal([*res.figures, *figures], extra=[rd.whitebox_path, *mine])
        paths += mine + figures
    return paths
