"""``noisydeq adversarial NAME|FILE.toml [--quick|--full]``: train a grid of adversarially
trained DEQ/FFW families with defences and attack them
(:mod:`noisydeq.analysis.adversarial_experiment`).

Everything is validated (spec, every training spec of the grid, every attack table, data,
output directory) before a model is trained. Trained models go to the model cache; each
evaluation is a resumable attack run under ``--out``, which records the models' weights
digests and training info: a second run loads or trains only the models of cells to compute
(:class:`~noisydeq.analysis.adversarial_experiment.GridModels`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click

from noisydeq.commands import cache_option
from noisydeq.commands.sweep import parse_sets, threads_flag, variant_options
from noisydeq.errors import NoisyDEQError
from noisydeq.progress import with_heartbeat
from noisydeq.specs.task_names import check_data_dir


def nested_sets(items: tuple[str, ...], evaluations: list[str]) -> dict[str, Any]:
    """``--set part.key=value`` (``grid.seeds=[0]``, ``train.epochs=1``,
    ``evaluations.main.samples=20``; ``evaluations.*.key`` sets every evaluation)."""
    out: dict[str, Any] = {}
    for key, value in parse_sets(items).items():
        path = key.split(".")
        if len(path) < 2 or path[0] not in ("family", "train", "grid", "evaluations"):
            raise NoisyDEQError(f"--set '{key}': expected family.KEY, train.KEY, grid.KEY or "
                                "evaluations.NAME.KEY")
        if path[0] == "evaluations":
            if len(path) < 3:
                raise NoisyDEQError(f"--set '{key}': expected evaluations.NAME.KEY")
            names = evaluations if path[1] == "*" else [path[1]]
            if path[1] != "*" and path[1] not in evaluations:
                raise NoisyDEQError(f"--set '{key}': no evaluation '{path[1]}' "
                                    f"(have: {', '.join(evaluations)})")
            targets = [["evaluations", n, *path[2:]] for n in names]
        else:
            targets = [path]
        for t in targets:
            node = out
            for part in t[:-1]:
                node = node.setdefault(part, {})
            node[t[-1]] = value
    return out


def _default_out(name: str, variant: str, resolved: Any) -> Path:
    import hashlib

    ident = json.dumps({"family": resolved.family, "train": resolved.train,
                        "grid": resolved.grid.model_dump(), "evaluations": resolved.evaluations},
                       sort_keys=True, default=str)
    digest = hashlib.blake2b(ident.encode(), digest_size=5).hexdigest()
    return Path("runs") / f"{name}-{variant}-{digest}"


@click.command("adversarial")
@click.argument("experiment")
@variant_options("The quick variant (default): sized for a CPU.", "The paper's settings (long).")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Experiment directory (default runs/<name>-<variant>-<hash>; re-running "
                   "resumes).")
@click.option("--data-dir", default=None, help="Directory with the MNIST IDX files.")
@click.option("--set", "sets", multiple=True, metavar="PART.KEY=VALUE",
              help="Override a field: grid.seeds=[0], train.epochs=1, family.hidden=16, "
                   "evaluations.NAME.samples=50 (NAME = * for all).")
@cache_option
@threads_flag()
@click.option("--keep-other-code", is_flag=True,
              help="Resuming: serve the attack cells other noisydeq code computed (default: "
                   "compute them again), the tables then mixing two codes' results.")
@click.option("--quiet", is_flag=True, help="No progress output.")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary.")
@with_heartbeat("adversarial")
def command(experiment: str, variant: str, out: Path | None, data_dir: str | None,
            sets: tuple[str, ...], threads: str | None,
            keep_other_code: bool, quiet: bool, as_json: bool) -> None:
    """Adversarial training grid (PGD-AT/TRADES x defences) and its attack tables.

    \b
    Examples:
      noisydeq adversarial adversarial-fig3 --quick --data-dir DIR
      noisydeq adversarial adversarial-regulation --set grid.seeds=[0] --set train.epochs=1
    """
    from noisydeq.analysis.adversarial_experiment import load_experiment, run_experiment
    from noisydeq.bundled import find_experiment
    from noisydeq.runtime import check_cache, num_threads, thread_plan
    from noisydeq.specs.task_names import check_run_data_dir, data_dir_name, one_data_dir
    from noisydeq.store import check_out_dir

    train_threads, _ = thread_plan(threads)
    # --data-dir and --set family.data_dir=...: one value
    one_data_dir(data_dir, parse_sets(sets), "family.data_dir")
    data_dir = check_data_dir(data_dir)
    exp = load_experiment(find_experiment(experiment, "adversarial"))
    try:
        resolved = exp.resolve(variant, **nested_sets(sets, list(exp.evaluations)))
    except ValueError as err:
        raise NoisyDEQError(f"{experiment}: {err}") from None
    # one rule however the directory arrives (--data-dir, --set family.data_dir=... — the
    # same value, if both: one_data_dir —, the file's family table)
    check_run_data_dir(
        data_dir or resolved.family.get("data_dir"), [c.spec.task for c in resolved.cells],
        "the experiment's", "--data-dir" if data_dir else data_dir_name(
            None, parse_sets(sets), f"{experiment} [{variant}]", "family.data_dir"))
    out_dir = out or _default_out(exp.name, variant, resolved)
    check_out_dir(out_dir)
    # the trained models go there: writable, or one line; a read-only cache serves the
    # families it holds whole (noisydeq.families.train_family: the first member it lacks
    # is one line, before the experiment writes)
    check_cache(reading=True)
    echo = (lambda s: None) if quiet or as_json else (lambda s: click.echo(s, err=True))
    echo(f"{exp.name} ({variant}): {exp.title}")
    t0 = time.perf_counter()
    with num_threads(train_threads):
        res = run_experiment(resolved, out_dir, data_dir=data_dir,
                             quiet=quiet or as_json, echo=echo,
                             keep_other_code=keep_other_code)
    report = {"out": str(out_dir), "models": len(res.members),
              "evaluations": {k: str(v.run_dir.path) for k, v in res.evaluations.items()},
              "cells_other_code": {k: v.other_code_cells for k, v in res.evaluations.items()},
              "cells_other_weights": {k: v.other_weights_cells
                                      for k, v in res.evaluations.items()},
              "seconds": round(time.perf_counter() - t0, 1)}
    if as_json:
        report["summary"] = {k: str(Path(v.run_dir.path) / "summary.csv")
                             for k, v in res.evaluations.items()}
        click.echo(json.dumps(report, indent=2))
        return
    for r in res.evaluations.values():
        md = Path(r.run_dir.path) / "summary.md"
        click.echo(md.read_text(encoding="utf-8"))
    click.echo(f"{len(res.members)} models; {report['seconds']:.0f} s; results in {out_dir}")
