"""Certify experiment files: Table 2 (MNIST rows) and Fig. 2 right of Wei & Kolter 2022.

``table2``: for every seed and training radius ε_train (Table 3: ε_test 0.1, 0.2, 0.3, 0.4
are certified on models trained at 0.2, 0.3, 0.4, 0.4), a family of an IBP-MonDEQ and its
explicit ReLU counterpart is trained with IBP (:func:`noisydeq.families.train_family`, so
models are cached by their full config), then every model is certified on the ε grid. All
seeds share the task split of the first seed (seeds vary initialisation and data order).
``table2.md`` lists certified and clean error at the Table-3 pairs, mean ± std over seeds.

``fig2``: the interval iteration of randomly initialised dense layers, plain monDEQ
(W = (1 − m)I − AᵀA + B − Bᵀ) against IBP-MonDEQ, on test inputs (§3.1, Fig. 2 right).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from noisydeq import store
from noisydeq.analysis.certified import (
    group_rows,
    plan,
    plot_accuracy,
    write_outputs,
    write_table,
)
from noisydeq.analysis.certify_run import CertifyResult, certify_run, check_out
from noisydeq.certify.spec import CertifyExperimentSpec, CertifySpec, Fig2Spec
from noisydeq.specs.base import build
from noisydeq.specs.family import FamilySpec
from noisydeq.specs.toml import dumps_toml

#: Table 3 of the paper: the training radius of each test radius on MNIST
TABLE3 = {0.1: 0.2, 0.2: 0.3, 0.3: 0.4, 0.4: 0.4}


@dataclass
class Certifiable:
    """A trained model and the facts the certify table reports about it."""

    model: nn.Module
    kind: str
    depth: int
    width: int
    params: int
    seed: int
    eps_train: float = math.nan
    train_seconds: float = 0.0  #: training seconds spent by this call (0 when cached)


def train_models(exp: CertifyExperimentSpec, task: Any, *, data_dir: str | None,
                 cache_dir: str | None, quiet: bool, echo: Callable[[str], None]
                 ) -> list[Certifiable]:
    """Train (or load from the cache) every model of a ``table2`` experiment."""
    from noisydeq.families import train_family

    out = []
    base = build(FamilySpec, exp.family_base(exp.family), where=f"{exp.name} family")
    for seed in exp.seeds:
        for eps_train in exp.eps_train:
            for j, param in enumerate(exp.params):
                # checked when the file loaded (CertifyExperimentSpec.check_variant)
                data = exp.member_family(base.model_dump(), seed, eps_train, j, param)
                if data_dir is not None:
                    data["data_dir"] = data_dir
                fam = build(FamilySpec, data, where=f"{exp.name} family")
                family = train_family(fam, task, cache_dir=cache_dir, quiet=quiet,
                                      log=lambda s, e=eps_train, sd=seed: echo(
                                          f"seed {sd} ε_train {e:g}: {s}"))
                for m in family.members:
                    out.append(Certifiable(m.model, m.kind, m.depth, m.width,
                                           int(m.model.hidden_weight_count()), seed, eps_train,
                                           0.0 if m.cached else m.result.run_seconds))
    return out


def table2_markdown(rows: list[dict[str, Any]]) -> str:
    """Certified / clean error (%) at the Table-3 (ε_test, ε_train) pairs, mean ± std."""
    keys = sorted({(r["kind"], r["param"], r["width"]) for r in rows})
    eps_cols = [e for e in sorted(TABLE3) if any(r["eps"] == e for r in rows)]
    lines = ["| model | " + " | ".join(f"ε = {e:g} (train {TABLE3[e]:g})" for e in eps_cols)
             + " |", "|---" * (len(eps_cols) + 1) + "|"]
    for metric, col in (("certified error", "certified_err"), ("clean error", "clean_acc")):
        for kind, param, width in keys:
            cells = []
            for e in eps_cols:
                vals = [r[col] for r in rows if (r["kind"], r["param"], r["width"]) ==
                        (kind, param, width) and r["eps"] == e and r["envelope"] == "none"
                        and math.isclose(r["eps_train"], TABLE3[e])]
                vals = [100 * (1 - v) if col == "clean_acc" else 100 * v for v in vals]
                if not vals:
                    cells.append("–")
                    continue
                t = torch.tensor(vals, dtype=torch.float64)
                sd = f" ({float(t.std()):.2f})" if len(vals) > 1 else ""
                cells.append(f"{float(t.mean()):.2f}{sd}")
            name = f"{metric}: {kind}" + (f" ({param})" if param else "") + f" w{width}"
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def run_table2(exp: CertifyExperimentSpec, out: Path, *, data_dir: str | None = None,
               cache_dir: str | None = None, quiet: bool = True,
               echo: Callable[[str], None] = print,
               backend: Any = None, prune: bool = False,
               notes: Callable[[str], None] | None = None) -> CertifyResult:
    """Train, certify (resumable cells, :func:`~noisydeq.analysis.certify_run.certify_run`;
    on Ray with a Ray ``backend``, training staying in this process), write
    ``results.csv/parquet``, ``table2.md`` and the figure; ``prune``: then remove the cell
    files of ``out`` no cell of this run reads. ``notes`` (default ``echo``): the lines a
    quiet run still says (the task's notice, cells of other code)."""
    from noisydeq.tasks import load_task

    check_out(out)  # another command's run: one line, before training

    cspec = build(CertifySpec, exp.certify, where=f"{exp.name} certify")
    fam0 = build(FamilySpec, exp.family_base(exp.family), where=f"{exp.name} family")
    task = load_task(fam0.task, data_dir=data_dir or fam0.data_dir, seed=exp.seeds[0])
    if task.notice:  # the task or its data fell back: said under --quiet too (notes)
        (notes or echo)(f"note: {task.notice}")
    t0 = time.perf_counter()
    models = train_models(exp, task, data_dir=data_dir, cache_dir=cache_dir, quiet=quiet,
                          echo=echo)
    x, y = task.x_test, task.y_test
    if cspec.n_test is not None:
        x, y = x[: cspec.n_test], y[: cspec.n_test]
    plans = [plan(m, cspec, x) for m in models]  # every refusal before certifying
    result = certify_run(models, plans, x, y, cspec, out,
                         lambda rows: _write_table2(exp, rows, out), echo=echo,
                         backend=backend, meta={"experiment": exp.name, "task": task.name},
                         prune=prune, notes=notes)
    trained = sum(m.train_seconds for m in models)
    echo(f"{len(models)} models ({trained:.0f} s training), certified in "
         f"{time.perf_counter() - t0 - trained:.0f} s")
    return result


def _write_table2(exp: CertifyExperimentSpec, rows: list[dict[str, Any]], out: Path
                  ) -> list[Path]:
    files = write_table(rows, out)
    files.append(store.atomic_write_text(out / "table2.md", table2_markdown(rows)))
    files.append(store.atomic_write_text(out / "experiment.toml", dumps_toml(exp)))
    files += plot_accuracy(rows, out / "figures" / "certified_vs_eps", exp.title)
    paired = [r for r in rows if r["eps"] in TABLE3
              and math.isclose(r["eps_train"], TABLE3[r["eps"]])]
    if paired:  # Table 2's view: each ε on the model trained at its Table-3 radius
        pr = [{**r, "eps_train": math.nan} for r in paired]
        files += plot_accuracy(pr, out / "figures" / "table2_pairs",
                               f"{exp.title}: ε_test on the model trained at Table 3's ε_train")
    return files


def fig2_gaps(spec: Fig2Spec, task: Any) -> list[dict[str, Any]]:
    """Mean interval gap per iteration for mon and ibp layers, per α and seed."""
    from noisydeq.certify.fixed_point import iteration_gaps
    from noisydeq.certify.interval import Interval
    from noisydeq.models.mondeq import MonDEQ
    from noisydeq.specs.model import MonotoneSpec

    x = task.x_test[: spec.n_test].double()
    rows = []
    for seed in spec.seeds:
        for param in ("mon", "ibp"):
            for alpha in spec.alpha:
                mono = MonotoneSpec(param=param, m=spec.m, alpha=min(alpha, 1.0),
                                    batch_norm=False, ibp_init=False)
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(seed)
                    model = MonDEQ(task.in_features, spec.width, task.out_features,
                                   monotone=mono).double().eval()
                with torch.no_grad():
                    iv = Interval.box(x, spec.eps)
                    v = Interval(model.proj(iv.lo), model.proj(iv.hi)).add(model.cell.bias)
                    gaps = iteration_gaps(model, v, alpha, spec.n_iter)
                rows += [{"param": param, "alpha": alpha, "seed": seed, "iteration": k + 1,
                          "mean_gap": g} for k, g in enumerate(gaps)]
    return rows


def run_fig2(exp: CertifyExperimentSpec, out: Path, *, data_dir: str | None = None,
             echo: Callable[[str], None] = print,
             notes: Callable[[str], None] | None = None
             ) -> tuple[list[dict[str, Any]], list[Path]]:
    """Fig. 2 right: ``fig2.csv`` and ``figures/fig2_right``. ``echo``: progress lines;
    ``notes`` (default ``echo``): the task's notice (e.g. a data fallback), which a quiet
    run still says."""
    from noisydeq.tasks import load_task

    spec = build(Fig2Spec, exp.fig2, where=f"{exp.name} fig2")
    task = load_task(spec.task, data_dir=data_dir or spec.data_dir, seed=spec.seeds[0])
    if task.notice:
        (notes or echo)(f"note: {task.notice}")
    rows = fig2_gaps(spec, task)
    return rows, write_outputs(out, lambda: _write_fig2(exp, spec, rows, out, echo))


def _write_fig2(exp: CertifyExperimentSpec, spec: Fig2Spec, rows: list[dict[str, Any]],
                out: Path, echo: Callable[[str], None]) -> list[Path]:
    from noisydeq.figures import write_csv

    files = [write_csv(out / "fig2.csv", rows)]
    files.append(store.atomic_write_text(out / "experiment.toml", dumps_toml(exp)))
    return files + plot_fig2(rows, out / "figures" / "fig2_right", exp.title, spec, echo)


#: line style of each step α of a Fig. 2 figure (in ascending order of α)
FIG2_STYLES = ("-", "--", ":", "-.")


def plot_fig2(rows: list[dict[str, Any]], stem: Path, title: str, spec: Fig2Spec,
              echo: Callable[[str], None] = print) -> list[Path]:
    """Fig. 2 right from the gaps ``rows`` (per parameterisation, α, iteration and init):
    the mean gap per iteration, every line on the left panel's log axis — the monDEQ's grow
    over a hundred decades, where the IBP-MonDEQ's lie on one another — and the IBP-MonDEQ's
    alone on the right panel's; circles = monDEQ, squares = IBP-MonDEQ, a line style per
    α. The plotted means are ``stem.csv``."""
    from noisydeq.figures import (
        context_title,
        integer_axis,
        layout,
        save_figure,
        shades,
        styled,
    )

    groups = group_rows(rows, ("param", "alpha"))
    # both are monDEQs (greens): a shade per (layer, α), the plain monDEQ's darker
    colours = dict(zip(sorted(groups), shades("mondeq", len(groups)), strict=True))
    alphas = sorted({alpha for _param, alpha in groups})
    style = {a: FIG2_STYLES[i % len(FIG2_STYLES)] for i, a in enumerate(alphas)}
    table: list[dict[str, Any]] = []
    with styled() as plt:
        fig, axes = plt.subplots(1, 2, figsize=(9.0, 3.8))
        for (param, alpha), sub in groups.items():
            its = sorted({r["iteration"] for r in sub})
            mean = [sum(r["mean_gap"] for r in sub if r["iteration"] == k)
                    / max(1, sum(1 for r in sub if r["iteration"] == k)) for k in its]
            name = "monDEQ" if param == "mon" else "IBP-MonDEQ"
            for ax in axes if param != "mon" else axes[:1]:
                ax.plot(its, mean, ls=style[alpha], marker="o" if param == "mon" else "s",
                        ms=3, markevery=max(1, len(its) // 10), color=colours[(param, alpha)],
                        label=f"{name}, α = {alpha:g}")
            table += [{"param": param, "alpha": alpha, "iteration": k, "mean_gap": v}
                      for k, v in zip(its, mean, strict=True)]
            echo(f"{name} α={alpha:g}: mean gap after {its[-1]} iterations = {mean[-1]:.4g}")
        for ax, what in zip(axes, ("all lines", "IBP-MonDEQ alone, on its own scale"),
                            strict=True):
            ax.set_yscale("log")
            integer_axis(ax.xaxis)
            ax.set_xlabel("iteration k of (A.1)")
            ax.set_ylabel("mean interval width (upper − lower)")
            ax.set_title(what, fontsize=9)
        # one legend for the figure: a row per parameterisation, a column per α
        handles = dict(zip(*reversed(axes[0].get_legend_handles_labels()), strict=True))
        params = list(dict.fromkeys(param for param, _alpha in groups))
        order = [f"{'monDEQ' if p == 'mon' else 'IBP-MonDEQ'}, α = {a:g}" for a in alphas
                 for p in params if (p, a) in groups]
        fig.legend([handles[k] for k in order], order, loc="upper center",
                   bbox_to_anchor=(0.5, 0.0), ncol=len(alphas), frameon=False, fontsize=8)
        fig.suptitle(context_title(title, task=getattr(spec, "task", None),
                                   trained=f"untrained, width {spec.width}, ε = {spec.eps:g}",
                                   band=f"line: mean over {len(spec.seeds)} random init"
                                        f"{'s' * (len(spec.seeds) > 1)} of the "
                                        f"gap over {spec.n_test} inputs (no band)"),
                     fontsize=9)
        layout(fig)
        return save_figure(fig, stem, table)
