"""``noisydeq run noisydeq/experiments/X.toml [--quick|--full]``: run an experiment spec.

An experiment file (:class:`noisydeq.config.ExperimentSpec`) holds a base sweep and its
``quick`` (minutes on CPU) and ``full`` (the paper's Table 1/2 settings) variants.
"""

from __future__ import annotations

from pathlib import Path

import click

from noisydeq.commands.sweep import check_data_dir, default_out, execute, parse_sets
from noisydeq.config import ExperimentSpec, SweepSpec, build, load_toml


def resolve_experiment(
    path: str, variant: str, data_dir: str | None = None, torch_device: str | None = None,
    sets: tuple[str, ...] = (),
) -> tuple[ExperimentSpec, SweepSpec]:
    """Load an experiment file and resolve ``variant`` with command-line overrides."""
    _refuse_study_file(path)
    exp = load_toml(ExperimentSpec, path)
    base = exp.resolve(variant).model_dump()
    if data_dir is not None:
        base["data_dir"] = check_data_dir(data_dir)
    if torch_device is not None:
        base["torch_device"] = torch_device
    base.update(parse_sets(sets))
    return exp, build(SweepSpec, base, where=f"{path} [{variant}]")


def _refuse_study_file(path: str) -> None:
    """A study file (``[study]`` table) is run by ``noisydeq study``: say so in one line."""
    from noisydeq.config import tomllib
    from noisydeq.errors import NoisyDEQError
    from noisydeq.store import read_text

    try:
        data = tomllib.loads(read_text(path, "file"))
    except (NoisyDEQError, tomllib.TOMLDecodeError, RecursionError):
        return  # load_toml reports it in one line
    if "study" in data and "sweep" not in data:
        raise NoisyDEQError(f"{path}: a study experiment; run it with 'noisydeq study {path}'")


@click.command("run")
@click.argument("experiment")
@click.option("--quick", "variant", flag_value="quick", default=True,
              help="The quick variant (default): minutes on CPU.")
@click.option("--full", "variant", flag_value="full", help="The paper's settings (hours).")
@click.option("--out", default=None, help="Run directory (default runs/<name>-<variant>-<hash>).")
@click.option("--data-dir", default=None, help="Directory with the MNIST IDX files.")
@click.option("--torch-device", default=None, help="cpu, cuda, cuda:1, ...")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Override any sweep-spec field (e.g. --set epochs=1).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary.")
@click.option("--threads", default=None, metavar="auto|N|TRAIN,EVAL",
              help="torch threads for training and evaluation (as for noisydeq sweep).")
@click.option("--jobs", default=None, metavar="auto|N",
              help="evaluation processes (as for noisydeq sweep).")
def command(
    experiment: str, variant: str, out: str | None, data_dir: str | None,
    torch_device: str | None, sets: tuple[str, ...], quiet: bool, as_json: bool,
    threads: str | None,
    jobs: str | None,
) -> None:
    """Run an experiment spec (noisydeq/experiments/*.toml) reproducing a figure of the paper."""
    from noisydeq.runtime import job_count, thread_plan

    thread_plan(threads)  # a bad value is one error before anything runs
    job_count(jobs)
    exp, spec = resolve_experiment(experiment, variant, data_dir, torch_device, sets)
    out_dir = Path(out) if out else default_out(spec, f"{exp.name}-{variant}")
    if not quiet and not as_json:
        click.echo(f"{exp.name} ({variant}): {exp.title}", err=True)
    title = f"{exp.title} [{variant}]" if exp.title else ""
    execute(spec, out_dir, quiet=quiet or as_json, as_json=as_json, title=title,
            threads=threads, jobs=jobs)
