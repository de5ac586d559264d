"""``noisydeq attack``: adversarial and black-box attacks on a family's DEQs and FFWs.

Validates everything (family, attack grid, estimators, defences, device, SNR levels, data,
output directory) before anything is written, then runs or resumes the grid
(:mod:`noisydeq.attacks.runner`) and prints the white-box robustness summary.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from noisydeq.commands import cache_option
from noisydeq.commands.sensitivity import (
    check_device,
    check_family,
    check_models,
    default_out,
    family_option,
)
from noisydeq.commands.sweep import (
    backend_options,
    option_names,
    parse_sets,
    threads_flag,
)
from noisydeq.errors import NoisyDEQError
from noisydeq.progress import with_heartbeat
from noisydeq.specs.attack_run import AttackRunSpec
from noisydeq.specs.base import build
from noisydeq.specs.task_names import check_data_dir, data_dir_name, one_data_dir


def _per_position_attacks(spec: AttackRunSpec, task: Any) -> dict[str, Any]:
    """A per-position task (prefix sums, mazes) attacked with the default ``--attacks``:
    the default without AutoAttack's curves (torchattacks scores one class per sample), said
    in one line; named explicitly, they are refused (:func:`noisydeq.attacks.runner.validate`).
    A regression task (matrix addition) drops salt-and-pepper too (no input box)."""
    from noisydeq.attacks.spec import LIBRARY_ATTACKS

    ctx = click.get_current_context(silent=True)
    given = ctx is not None and ctx.get_parameter_source("attacks") not in (
        click.core.ParameterSource.DEFAULT, click.core.ParameterSource.DEFAULT_MAP, None)
    regression = getattr(task, "kind", "classification") == "regression"
    if given or not (regression or getattr(task, "per_position", False)):
        return {}
    refused = (*LIBRARY_ATTACKS, "salt-pepper") if regression else LIBRARY_ATTACKS
    kept = [a for a in spec.attacks if a not in refused]
    if kept == spec.attacks:
        return {}
    dropped = [a for a in spec.attacks if a in refused]
    what = ("is a regression task (metric mse)" if regression
            else "predicts a class per position")
    why = ("AutoAttack scores classes, salt-and-pepper needs an input box" if regression
           else "one class per sample")
    click.echo(f"attack: task '{task.name}' {what}; the default "
               f"attacks run without {', '.join(dropped)} ({why})", err=True)
    return {"attacks": kept}


@click.command("attack")
@family_option
@click.option("--attacks", default="pgd-eps,pgd-steps,aa,aa-rand,speckle,salt-pepper",
              show_default=True,
              help="attack curves: pgd-eps (PGD-s over --eps for s in --pgd-steps), pgd-steps, "
                   "ifgsm, aa, aa-rand, apgd-ce, apgd-t, fab, square, speckle, salt-pepper "
                   "(a per-position task, prefix sums or mazes: not aa … square; a regression "
                   "task, matrix addition: not aa … square nor salt-pepper, and the value is "
                   "the attacked MSE).")
@click.option("--eps", default="0:0.4:0.05", show_default=True,
              help="ε grid (start:stop:step or a list) for the ε curves.")
@click.option("--pgd-steps", default="10,50", show_default=True,
              help="PGD steps of the ε curves (PGD-10, PGD-50).")
@click.option("--steps", default="1,2,5,10,20,50", show_default=True,
              help="steps grid of the pgd-steps curve.")
@click.option("--steps-eps", type=float, default=0.3, show_default=True,
              help="ε of the pgd-steps curve, of the early-state selection and of the "
                   "white-box summary (off the --eps grid: the summary is at the grid's "
                   "nearest point).")
@click.option("--sigma", default="0,0.25,0.5,1,1.5,2", show_default=True,
              help="speckle σ grid (x + x·n, n ~ N(0, σ²)).")
@click.option("--fraction", default="0,0.05,0.1,0.2,0.3,0.4", show_default=True,
              help="salt-and-pepper fractions.")
@click.option("--norm", default="linf", show_default=True, help="linf or l2.")
@click.option("--eot", type=click.IntRange(min=1), default=1, show_default=True,
              help="gradients averaged over this many draws of the model's noise.")
@click.option("--estimators", default="exact", show_default=True,
              help="DEQ gradient estimators: exact[:btol=1e-6,bsolver=fallback] (IFT "
                   "backward-solve tolerance; fallback (default: Anderson, then GMRES on the "
                   "inputs it left unconverged), fixed-point/anderson (Anderson alone) or "
                   "gmres), phantom[:k=5,lam=0.5], "
                   "unrolled:state=N[,k=..,lam=..], unrolled-ensemble, adjoint[:beta=0.5,state=N], "
                   "adjoint-ensemble, backprop (the model's own gradient), unrolled-grid"
                   "[:n=8,k=9,lam=0.5/1] (every intermediate-state attack of that grid).")
@click.option("--defences", default="final", show_default=True,
              help="DEQ defences: final, early (n chosen on validation) or early:n=N, ensemble, "
                   "entropy[:beta=..,r=..,tf=..,eps=..] (test-time input entropy reduction).")
@click.option("--device", default="ideal", show_default=True,
              help="device preset (see `noisydeq devices`) the models are deployed on with "
                   "--noise-site device; ideal = digital.")
@click.option("--noise-site", type=click.Choice(["device", "signal", "state", "input"]),
              default="device", show_default=True,
              help="where --snr applies: the device's MVMs or the model's own noise site.")
@click.option("--snr", default="inf", show_default=True, help="SNR levels in dB (0,10,20,inf).")
@click.option("--chips", type=click.IntRange(min=1), default=1, show_default=True,
              help="chip instances per finite SNR level (device noise).")
@click.option("--transfer", is_flag=True,
              help="also judge examples crafted on the noise-free digital twin.")
@click.option("--train-noise/--no-train-noise", default=True, show_default=True,
              help="models trained with noise on x or z (a defence) run with it at inference.")
@click.option("--inputs", "--samples", "samples", type=click.IntRange(min=1), default=200,
              show_default=True,
              help="test inputs attacked (the first of the test split; --samples: the same "
                   "option, its older spelling).")
@click.option("--val-inputs", "--val-samples", "val_samples", type=click.IntRange(min=0),
              default=100, show_default=True,
              help="validation inputs (the last of the test split) for the early state "
                   "(--val-samples: the same option, its older spelling).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="seed of the attacks' random starts and of the noise draws.")
@click.option("--data-dir", default=None,
              help="data directory (default: the one a sweep or study run recorded — a "
                   "train folder records none —, else $NOISYDEQ_MNIST_DIR / "
                   "$NOISYDEQ_CIFAR10_DIR).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="any other run-spec field (alpha, restarts, queries).")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="run directory (default <family>/analysis/attack-<hash>; re-running resumes).")
@cache_option
@click.option("--torch-device", default="cpu", show_default=True,
              help="torch device to compute on (cpu, cuda, cuda:0).")
@threads_flag()
@click.option("--keep-other-code", is_flag=True,
              help="resuming: serve the cells other noisydeq code computed (default: "
                   "compute them again), the table then mixing two codes' results.")
@click.option("--quiet", is_flag=True, help="no progress bar.")
@click.option("--json", "as_json", is_flag=True, help="print a machine-readable summary.")
@backend_options("attack")
@with_heartbeat("attack")
def command(family, attacks, eps, pgd_steps, steps, steps_eps, sigma, fraction, norm, eot,
            estimators, defences, device, noise_site, snr, chips, transfer, train_noise, samples,
            val_samples, seed, data_dir, sets, out, torch_device, threads,
            keep_other_code, quiet, as_json, backend="local", address=None) -> None:
    """Attack a family's DEQs and FFWs (PGD, AutoAttack, noise; DEQ estimators, defences).

    \b
    Examples:
      noisydeq attack --family runs/sweep-1a2b3c
      noisydeq attack --family runs/sweep-1a2b3c --attacks pgd-eps --eps 0:0.3:0.05 --norm linf
      noisydeq attack --family runs/sweep-1a2b3c --device rram --snr 0,10,inf --chips 3
      noisydeq attack --family runs/sweep-1a2b3c --backend ray --address auto
    """
    from noisydeq.cluster import Backend
    from noisydeq.runtime import num_threads, thread_plan

    chosen = Backend.parse(backend, address)
    _, eval_threads = thread_plan(threads)
    one_data_dir(data_dir, parse_sets(sets))  # --data-dir and --set data_dir=...: one value
    data_dir = check_data_dir(data_dir)
    data: dict[str, Any] = {
        "family": str(Path(family).resolve()), "attacks": attacks, "eps": eps,
        "pgd_steps": pgd_steps, "steps": steps, "steps_eps": steps_eps, "sigma": sigma,
        "fraction": fraction, "norm": norm, "eot": eot, "estimators": estimators,
        "defences": defences, "device": device, "noise_site": noise_site, "snr_db": snr,
        "chips": chips, "transfer": transfer, "train_noise": train_noise, "samples": samples,
        "val_samples": val_samples,
        "seed": seed, "data_dir": data_dir, "torch_device": torch_device, **parse_sets(sets),
    }
    # the whole attack grid, torch-free (specs.attack_run), before the heavy imports; a bad
    # option is named before a missing --family, as everywhere, so the family comes after
    spec = build(AttackRunSpec, data, where="attack",
                 names=option_names(data, parse_sets(sets), snr_db="snr"))
    # --data-dir or --set data_dir=...: one check (the family's tasks refuse it, if they
    # read no data files, when the family loads)
    data_dir_as = data_dir_name(data_dir, parse_sets(sets))
    data_dir = check_data_dir(spec.data_dir, data_dir_as)
    if spec.transfer_from is not None:
        raise NoisyDEQError("attack: transfer_from names a training defence of a `noisydeq "
                            "adversarial` grid; a family has none (use --transfer for the "
                            "noise-free twin)")
    check_device(device)  # the preset, torch-free; its SNR levels are checked on the device
    check_family(Path(family))
    check_models(Path(family))
    from noisydeq.analysis.family import attack_members
    from noisydeq.attacks.ray_cells import run_on_ray
    from noisydeq.attacks.runner import run_attacks
    from noisydeq.results import spec_hash

    members, task, recorded = attack_members(Path(family), data_dir, data_dir_as)
    spec = spec.model_copy(update={"task": task.name, "data_dir": data_dir or recorded,
                                   **_per_position_attacks(spec, task)})
    out_dir = out or default_out(Path(family), None, f"attack-{spec_hash(spec)}")
    t0 = time.perf_counter()
    with num_threads(eval_threads):
        res = run_attacks(spec, members, task, out_dir, progress=not (quiet or as_json),
                          echo=lambda s: click.echo(s, err=True), backend=chosen,
                          remote=run_on_ray if chosen.ray else None,
                          keep_other_code=keep_other_code)
    seconds = time.perf_counter() - t0
    report = {"run_dir": str(res.run_dir.path), "results_csv": str(res.run_dir.csv_path),
              "results_parquet": str(res.run_dir.parquet_path),
              "whitebox_csv": str(res.run_dir.whitebox_path),
              "figures": [str(p) for p in res.figures], "cells_computed": res.computed_cells,
              "cells_resumed": res.skipped_cells, "cells_other_code": res.other_code_cells,
              "cells_other_weights": res.other_weights_cells,
              "seconds": round(seconds, 2)}
    if as_json:
        click.echo(json.dumps({**report, "whitebox": res.whitebox}, indent=2, default=str))
        return
    _summary(res.whitebox, spec.steps_eps, getattr(task, "metric_name", "accuracy"),
             uses=_steps_eps_uses(spec, "steps_eps" in parse_sets(sets)))
    resumed = f", {res.skipped_cells} resumed" if res.skipped_cells else ""
    click.echo(f"cells: {res.computed_cells} computed{resumed}; {seconds:.1f} s")
    click.echo(f"results: {res.run_dir.csv_path}\n         {res.run_dir.parquet_path}")
    click.echo(f"white-box: {res.run_dir.whitebox_path}")
    pngs = [p for p in res.figures if p.suffix == ".png"]
    if pngs:
        click.echo("figures: " + "\n         ".join(str(p) for p in pngs) + "  (+ .svg)")
    sys.stdout.flush()


def _steps_eps_uses(spec: AttackRunSpec, set_given: bool = False) -> list[str] | None:
    """What ran at ``--steps-eps`` besides the summary, for the off-grid line: the
    pgd-steps curve, the early-state selection; ``None`` where nothing did and the user
    never gave it (the default ε then says nothing the user asked about: no line)."""
    uses = (["the pgd-steps curve"] if "pgd-steps" in spec.attacks else []) + (
        ["the early-state selection"]
        if any(d.split(":")[0] == "early" for d in spec.defences) else [])
    ctx = click.get_current_context(silent=True)
    given = set_given or (ctx is not None and ctx.get_parameter_source("steps_eps") not in (
        click.core.ParameterSource.DEFAULT, click.core.ParameterSource.DEFAULT_MAP, None))
    return uses if (uses or given) else None


def _summary(whitebox: list[dict[str, Any]], steps_eps: float,
             metric: str = "accuracy", uses: list[str] | None = None) -> None:
    """The white-box table (``whitebox.csv``) at its ε: ``--steps-eps``, or the point of the
    ε grid nearest to it; one line why where there is none. The off-grid case is said in
    one line where ``uses`` is not None (the user gave ``--steps-eps``, or something else
    ran at it: ``uses`` names those), never for an untouched default."""
    if not whitebox:
        click.echo("(no white-box summary: no attack ran over the --eps grid; pgd-eps, "
                   "ifgsm, aa, aa-rand, apgd-ce, apgd-t, fab and square do)")
        return
    eps = whitebox[0]["eps"]
    if abs(eps - steps_eps) > 1e-12 and uses is not None:
        ran = f"; {' and '.join(uses)} ran at ε = {steps_eps:g}" if uses else ""
        click.echo(f"(--steps-eps {steps_eps:g} is not on the --eps grid: the summary below "
                   f"is at its nearest point, ε = {eps:g}{ran}; add {steps_eps:g} to --eps "
                   f"for a summary at ε = {steps_eps:g})")
    what = "MSE, lower is better: worst = largest" if metric == "mse" else "accuracy"
    click.echo(f"white-box robustness at ε = {eps:g} (per defence: worst attack / estimator; "
               f"robustness = best defence, marked *; {what})")
    # columns as wide as their longest entry (an entropy defence's parameters, a
    # transfer-source mode, a defended member's id), so the values stay aligned
    mw = max(24, *(len(str(r["model_id"])) for r in whitebox))
    ow = max(9, *(len(str(r["mode"])) for r in whitebox))
    dw = max(12, *(len(str(r["defence"])) for r in whitebox))
    click.echo(f"{'model':<{mw}} {'mode':<{ow}} {'SNR':>5} {'chip':>4} {'defence':<{dw}} "
               f"{'worst':>6}  worst attack")
    for r in whitebox:
        snr = "inf" if r["snr_db"] == float("inf") else f"{r['snr_db']:g}"
        star = " *" if r["defence"] == r["best_defence"] else ""
        click.echo(f"{r['model_id']:<{mw}} {r['mode']:<{ow}} {snr:>5} {r['chip']:>4} "
                   f"{r['defence']:<{dw}} {r['worst_value']:>6.3f}  {r['worst_attack']}{star}")
