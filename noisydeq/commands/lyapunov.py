"""``noisydeq lyapunov NAME|FILE.toml``: LyaDEQ under attack and on devices.

Runs (or resumes) a LyaDEQ experiment (:mod:`noisydeq.analysis.lyapunov_experiment`): the
Table 1 grid of Chu et al. (2024) — plain DEQ, + Lyapunov module, + orthogonal head, both —
under I-FGSM and PGD, and/or accuracy against device SNR for the LyaDEQ, its plain DEQ and
the DEQ/FFW family. Writes ``attack.csv``, ``device.csv``, ``report.md`` and figures.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from noisydeq.commands import cache_option
from noisydeq.commands.sweep import threads_flag
from noisydeq.progress import with_heartbeat


@click.command("lyapunov")
@click.argument("experiment")
@click.option("--out", default=None,
              help="Output directory (default runs/<experiment name>; with --seeds "
                   "runs/<experiment name>-seeds-<seeds>).")
@click.option("--data-dir", default=None, help="Directory with the MNIST IDX files.")
@click.option("--seeds", default=None, help="Override the experiment's seeds, e.g. 0,1,2.")
@click.option("--only", type=click.Choice(["attack", "device"]), default=None,
              help="Run only one of the experiment's tables.")
@cache_option
@threads_flag("torch threads (as for noisydeq sweep; the evaluation count is used).",
              "auto|N|TRAIN,EVAL")
@click.option("--keep-other-code", is_flag=True,
              help="Resuming: serve the attack cells other noisydeq code computed (default: "
                   "compute them again), the table then mixing two codes' results.")
@click.option("--quiet", is_flag=True, help="No progress output.")
@click.option("--json", "as_json", is_flag=True, help="Print the report's paths as JSON.")
@with_heartbeat("lyapunov")
def command(experiment: str, out: str | None, data_dir: str | None, seeds: str | None,
            only: str | None, threads: str | None, keep_other_code: bool, quiet: bool,
            as_json: bool) -> None:
    """Reproduce the LyaDEQ paper's Table 1 and compare LyaDEQ/DEQ/FFW on devices.

    \b
    Examples:
      noisydeq lyapunov lyapunov-table1 --data-dir DIR
      noisydeq lyapunov lyapunov-device --data-dir DIR --seeds 0 --only device
    """
    from noisydeq.bundled import find_experiment
    from noisydeq.commands.sweep import parse_seeds
    from noisydeq.runtime import check_cache, num_threads, thread_plan
    from noisydeq.specs.task_names import check_data_dir, check_run_data_dir, data_dir_name

    _train, eval_threads = thread_plan(threads)
    path = find_experiment(experiment, "lyapunov")
    data_dir_as = data_dir_name(data_dir, {}, str(path))
    data_dir = check_data_dir(data_dir)
    seed_list = parse_seeds(seeds, "--seeds") if seeds is not None else None
    # the command line is checked: now the heavy imports (torch), seconds under load
    from noisydeq.analysis.lyapunov_experiment import load_experiment, run_experiment

    spec = load_experiment(path, data_dir=data_dir, seeds=seed_list)
    # one rule however the directory arrives (--data-dir or the file's data_dir)
    check_run_data_dir(spec.data_dir, [spec.task], "the experiment's", data_dir_as)
    # a subset of the seeds gets its own folder: the run with every seed would be refused
    # in runs/<name> (its config.toml holds another experiment)
    stem = spec.name if seed_list is None else f"{spec.name}-seeds-{'-'.join(map(str, seed_list))}"
    out_dir = Path(out) if out else Path("runs") / stem
    # the trained models go there: writable, or one line, before out_dir; a read-only
    # cache serves the experiment when it holds all it needs (run_experiment checks)
    check_cache(reading=True)

    def log(text: str) -> None:
        if not (quiet or as_json):
            click.echo(text, err=True)

    with num_threads(eval_threads):
        report = run_experiment(spec, out_dir, only=only, progress=not (quiet or as_json),
                                log=log, keep_other_code=keep_other_code)
    if as_json:
        click.echo(json.dumps({k: v for k, v in report.items() if k != "markdown"}, indent=2))
        return
    click.echo(report["markdown"])
    click.echo(f"\nreport: {report['report']}")
    for p in report["figures"]:
        if p.endswith(".png"):
            click.echo(f"figure: {p}")
