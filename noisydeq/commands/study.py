"""``noisydeq study NAME|FILE.toml [--quick|--full]``: run a study experiment file.

A study trains a few named models (any cell) and evaluates them over test sizes, test SNRs
and DEQ test solvers (:mod:`noisydeq.studies`): the algorithmic extrapolation experiments
(``noisydeq/experiments/algorithmic-*.toml``) and the multiscale-DEQ comparison
(``noisydeq/experiments/mdeq-mnist.toml``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import click

from noisydeq.commands import cache_option
from noisydeq.commands.sweep import (
    backend_options,
    parse_sets,
    threads_flag,
    variant_options,
)
from noisydeq.progress import with_heartbeat


def default_out(name: str, variant: str) -> Path:
    return Path("runs") / f"{name}-{variant}"


@click.command("study")
@click.argument("experiment")
@variant_options("The quick variant (default): CPU scale (the algorithmic ones: hours).",
                 "The paper-scale variant (hours).")
@click.option("--out", default=None, help="Run directory (default runs/<name>-<variant>).")
@click.option("--data-dir", default=None, help="Data directory of file tasks (MNIST, CIFAR-10).")
@click.option("--torch-device", default=None, help="cpu, cuda, cuda:1, ...")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Override a study field (e.g. --set seeds=[0]).")
@cache_option
@threads_flag()
@click.option("--quiet", is_flag=True, help="No progress lines.")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary.")
@backend_options("study")
@with_heartbeat("study")
def command(experiment: str, variant: str, out: str | None, data_dir: str | None,
            torch_device: str | None, sets: tuple[str, ...], threads: str | None, quiet: bool,
            as_json: bool, backend: str = "local", address: str | None = None) -> None:
    """Train named models and evaluate them over sizes, test noise and solvers.

    \b
    Examples:
      noisydeq study algorithmic-prefix-sums
      noisydeq study mdeq-mnist --quick --data-dir DIR --set seeds=[0]
      noisydeq study algorithmic-prefix-sums --backend ray --address HEAD:6379
    """
    from noisydeq.bundled import find_experiment
    from noisydeq.cluster import Backend
    from noisydeq.runtime import num_threads, thread_plan
    from noisydeq.specs.study import StudyFile
    from noisydeq.specs.task_names import (
        check_data_dir,
        check_run_data_dir,
        data_dir_name,
        one_data_dir,
    )
    from noisydeq.specs.toml import load_toml

    chosen = Backend.parse(backend, address)
    n_threads = thread_plan(threads)[0]  # $NOISYDEQ_THREADS, else one thread
    path = find_experiment(experiment, "study")
    over = parse_sets(sets)
    one_data_dir(data_dir, over)  # --data-dir and --set data_dir=...: one value
    if data_dir is not None:
        over["data_dir"] = check_data_dir(data_dir)
    if torch_device is not None:
        over["torch_device"] = torch_device
    exp = load_toml(StudyFile, path)  # the file and --set: checked before torch loads
    spec = exp.resolve(variant, over)
    # one rule however the directory arrives (--data-dir, --set data_dir=..., the file)
    check_run_data_dir(
        spec.data_dir, [spec.task], "the study's",
        "--data-dir" if data_dir is not None  # the same as any --set data_dir=...
        else data_dir_name(None, over, f"{experiment} [{variant}]"))
    # the command line is checked: now the heavy imports (torch), seconds under load
    from noisydeq.studies import run_study

    target = Path(out) if out else default_out(exp.name, variant)
    talk = not (quiet or as_json)
    if talk:
        click.echo(f"{exp.name} ({variant}): {exp.title}", err=True)
    log = (lambda s: click.echo(s, err=True)) if talk else None
    with num_threads(n_threads):
        res = run_study(spec, target, name=f"{exp.name} [{variant}]", log=log,
                        progress=talk,  # each model's training batches, as a sweep's
                        title=f"{exp.title} [{variant}]" if exp.title else exp.name,
                        backend=chosen, remote=_remote(chosen))
    if as_json:
        click.echo(json.dumps({"out": str(res.out), "seconds": res.seconds,
                               "trained": res.trained, "loaded": res.loaded,
                               "served": res.served,
                               "summary": res.summary,
                               "figures": [str(p) for p in res.figures]},
                              indent=2, allow_nan=True, default=str))
        return
    _table(res.summary)
    from noisydeq.studies.summary import convergence_lines

    for line in convergence_lines(res.rows, spec.test_solvers,
                                  table=str(res.out / "results.csv")):
        click.echo(line)
    served = f", {res.served} evaluations served" if res.served else ""
    click.echo(f"{len(res.rows)} rows in {res.seconds:.1f} s ({res.trained} models trained, "
               f"{res.loaded} loaded{served}); {res.out / 'summary.csv'}")
    for p in res.figures:
        if p.suffix == ".png":
            click.echo(f"figure: {p}")
    if not res.figures:
        from noisydeq.studies.plots import NO_FIGURE

        click.echo(NO_FIGURE)


def _remote(backend):
    """The Ray model runner for a Ray ``backend`` (None for the local one)."""
    if not backend.ray:
        return None
    from noisydeq.studies.ray_models import run_on_ray

    return run_on_ray


def _fmt(v: float) -> str:
    if isinstance(v, float) and math.isinf(v):
        return "inf"
    return f"{v:g}" if isinstance(v, float) else str(v)


def _table(rows: list[dict]) -> None:
    click.echo(f"{'model':<12} {'train':>5} {'test':>5} {'shift':>7} {'budget':>6} "
               f"{'iters':>5} {'solver':>10} {'value':>9} {'±':>7} {'steps':>7}")
    for r in rows:
        click.echo(f"{r['model']:<12} {_fmt(r['train_snr_db']):>5} {_fmt(r['test_snr_db']):>5} "
                   f"{_fmt(r['shift']):>7} {r['budget']:>6} {r['max_iter']:>5} "
                   f"{r['solver']:>10} {r['value']:>9.4g} {r['value_std']:>7.2g} "
                   f"{r['mean_steps']:>7.1f}")
