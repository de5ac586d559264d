"""``noisydeq run NAME|FILE.toml [--quick|--full]``: run an experiment spec.

An experiment file (:class:`noisydeq.config.ExperimentSpec`) holds a base sweep and its
``quick`` (minutes on CPU) and ``full`` (the paper's Table 1/2 settings) variants. ``NAME`` is
a bundled experiment (:mod:`noisydeq.bundled`; ``noisydeq run --list``), ``FILE.toml`` a
user's own.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from noisydeq.cluster import Backend
from noisydeq.commands import cache_option
from noisydeq.commands.sweep import (
    backend_options,
    default_out,
    execute,
    parse_sets,
    threads_flag,
    variant_options,
)
from noisydeq.progress import with_heartbeat
from noisydeq.specs.base import build
from noisydeq.specs.experiment import ExperimentSpec
from noisydeq.specs.sweep import SweepSpec, check_device_presets
from noisydeq.specs.task_names import (
    check_data_dir,
    check_run_data_dir,
    data_dir_name,
    one_data_dir,
)
from noisydeq.specs.toml import load_toml


def resolve_experiment(
    path: str, variant: str, data_dir: str | None = None, torch_device: str | None = None,
    sets: tuple[str, ...] = (),
) -> tuple[ExperimentSpec, SweepSpec]:
    """Load an experiment (a bundled name or a file) and resolve ``variant`` with
    command-line overrides."""
    from noisydeq.bundled import find_experiment

    given, path = path, str(find_experiment(path, "run"))  # refuses another command's file
    exp = load_toml(ExperimentSpec, path)
    base = exp.resolve(variant).model_dump()
    one_data_dir(data_dir, parse_sets(sets))  # --data-dir and --set data_dir=...: one value
    if data_dir is not None:
        base["data_dir"] = check_data_dir(data_dir)
    if torch_device is not None:
        base["torch_device"] = torch_device
    base.update(parse_sets(sets))
    # the file's own variant was validated by resolve(): what fails here is the user's --set
    # (or --data-dir/--torch-device), so name that, and a bundled experiment by its name
    where = f"{given if path != given and not given.endswith('.toml') else path} [{variant}]"
    spec = build(SweepSpec, base, where=where + (" --set" if sets else ""))
    # one rule however the directory arrives (--data-dir, --set data_dir=..., the file)
    check_run_data_dir(
        spec.data_dir, [spec.task], "the experiment's",
        data_dir_name(data_dir, parse_sets(sets), where))
    return exp, spec


def _list(as_json: bool) -> None:
    from noisydeq.bundled import bundled_experiments

    items = bundled_experiments()
    if as_json:
        click.echo(json.dumps([{"name": b.name, "command": b.command,
                                "description": b.description} for b in items], indent=2))
        return
    width = max(len(b.name) for b in items)
    cwidth = max(len(b.command) for b in items)
    for b in items:
        click.echo(f"{b.name:<{width}}  {b.command:<{cwidth}}  {b.description}")


@click.command("run")
@click.argument("experiment", required=False)
@click.option("--list", "list_", is_flag=True,
              help="List the bundled experiments (name, command, description) and exit.")
@variant_options("The quick variant (default): minutes on CPU.", "The paper's settings (hours).")
@click.option("--out", default=None, help="Run directory (default runs/<name>-<variant>-<hash>).")
@click.option("--data-dir", default=None, help="Directory with the MNIST IDX files.")
@click.option("--torch-device", default=None, help="cpu, cuda, cuda:1, ...")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Override any sweep-spec field (e.g. --set epochs=1).")
@click.option("--quiet", is_flag=True,
              help="No progress (bars, log lines, heartbeats); results are still printed.")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary.")
@cache_option
@threads_flag("torch threads for training and evaluation (as for noisydeq sweep).",
              "auto|N|TRAIN,EVAL")
@click.option("--jobs", default=None, metavar="auto|N",
              help="evaluation processes (as for noisydeq sweep).")
@backend_options("run")
@with_heartbeat("run")
def command(
    experiment: str | None, list_: bool, variant: str, out: str | None, data_dir: str | None,
    torch_device: str | None, sets: tuple[str, ...], quiet: bool, as_json: bool,
    threads: str | None,
    jobs: str | None,
    backend: str = "local", address: str | None = None,
) -> None:
    """Run an experiment: a bundled one by NAME (see --list) or a .toml FILE of your own.

    \b
    Examples:
      noisydeq run --list
      noisydeq run fig1-mnist --quick --data-dir DIR
      noisydeq run my-experiment.toml --set epochs=1
      noisydeq run fig1-mnist --full --data-dir DIR --backend ray --address HEAD:6379
    """
    from noisydeq.runtime import job_count, thread_plan

    if list_:
        _list(as_json)
        return
    if experiment is None:
        raise click.UsageError("missing EXPERIMENT: a bundled name (noisydeq run --list) or "
                               "the path of a .toml file")

    thread_plan(threads)  # a bad value is one error before anything runs
    job_count(jobs)
    chosen = Backend.parse(backend, address, jobs)
    exp, spec = resolve_experiment(experiment, variant, data_dir, torch_device, sets)
    check_device_presets(spec)  # torch-free: before default_out's and execute's imports
    out_dir = Path(out) if out else default_out(spec, f"{exp.name}-{variant}")
    if not quiet and not as_json:
        click.echo(f"{exp.name} ({variant}): {exp.title}", err=True)
    title = f"{exp.title} [{variant}]" if exp.title else ""
    execute(spec, out_dir, quiet=quiet or as_json, as_json=as_json, title=title,
            threads=threads, jobs=jobs, backend=chosen)
