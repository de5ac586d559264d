"""``noisydeq certify``: certified (IBP), PGD and clean accuracy vs ε, optionally for every
chip in a device envelope.

``SOURCE`` is a checkpoint, the output dir of ``noisydeq train`` (one model or a family),
the run dir of a ``noisydeq sweep`` — or a certify experiment (a bundled name such as
``certify-mnist``, or a ``.toml`` file; ``--quick``/``--full``) that trains its models with
IBP first. Writes ``results.csv``, ``results.parquet`` and ``figures/`` into ``--out``; nothing
is written when the input is refused. Certificates are kept per (model, ε) in ``--out``'s
``cells/`` (:mod:`noisydeq.analysis.certify_run`): the same command resumes a stopped run,
another ε grid computes only its new radii (the other grid's cells kept and counted;
``--prune`` removes them).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import click

from noisydeq.commands import cache_option
from noisydeq.commands.sweep import backend_options, threads_flag, variant_options
from noisydeq.errors import NoisyDEQError, did_you_mean
from noisydeq.progress import with_heartbeat
from noisydeq.specs.base import build


def _spec(opts: dict[str, Any]):
    """The run's settings: the options given, the others at CertifySpec's defaults (the
    options' own), so that the spec knows which were given (``--coverage``: refused
    without ``--device``, :func:`~noisydeq.specs.certify.check_device_options`)."""
    from noisydeq.specs.certify import CertifySpec

    return build(CertifySpec, _given(opts), where="certify", names=OPTION_NAMES)


# certify options by their CertifySpec field: what the command line sets over an experiment's
# [certify] table, and what names a run's default --out
_SETTINGS = {"eps": "eps", "device": "device", "chip": "chip", "coverage": "coverage",
             "k": "k", "dynamic": "dynamic", "read_noise_k": "read_k", "n_test": "n_test",
             "batch_size": "batch_size", "pgd_steps": "pgd_steps",
             "pgd_restarts": "pgd_restarts", "clip": "clip", "seed": "seed"}
#: a CertifySpec field by the option that sets it, for its error messages (``--inputs``)
OPTION_NAMES = {key: "--" + opt.replace("_", "-") for opt, key in _SETTINGS.items()} | {
    "n_test": "--inputs"}


def _given(opts: dict[str, Any]) -> dict[str, Any]:
    """The certify settings given on the command line (not left at their defaults)."""
    ctx = click.get_current_context()
    return {key: opts[opt] for opt, key in _SETTINGS.items()
            if ctx.get_parameter_source(opt) is not click.core.ParameterSource.DEFAULT}


def _default_out(stem: str, given: dict[str, Any]) -> Path:
    """``runs/<stem>``, or ``runs/<stem>-<hash>`` when settings are given: another command
    (other ε, a device envelope) gets another folder instead of overwriting the results of
    the first."""
    if not given:
        return Path("runs") / stem
    import hashlib

    text = json.dumps(given, sort_keys=True, default=str)
    return Path("runs") / f"{stem}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def _check_device(spec, names: dict[str, str] | None = None) -> None:
    """The device options (none given without ``--device``: they would change nothing;
    nor ``--coverage``/``--k`` with ``--chip``) and the ``--device`` preset: it exists and
    is one certify bounds (torch-free: the preset is read by
    :mod:`noisydeq.specs.device_presets`). ``names``: a setting's name where it was given
    (default: its option)."""
    from noisydeq.specs.certify import check_device_options

    check_device_options(spec, {**OPTION_NAMES, **(names or {})}, "--device")
    if spec.device is None:
        return
    from noisydeq.specs.device_presets import load_spec

    dev = load_spec(spec.device)  # unknown device: one line, before any work
    if dev.kind not in ("rram", "ideal"):
        raise NoisyDEQError(
            f"--device: '{spec.device}' ({dev.kind}) adds Gaussian noise to every read, scaled "
            "with the signal, with no finite bound; certify supports rram envelopes and ideal"
        )
    if spec.dynamic and dev.kind == "rram" and dev.out_noise > 0 and spec.read_k is None:
        raise NoisyDEQError(
            f"--dynamic: the rram read noise is Gaussian (σ = {dev.out_noise:g} of full scale) "
            "and has no finite bound; add --read-noise-k K for a stated K·σ envelope"
        )


def _writable(out: Path) -> None:
    from noisydeq.store import check_out_dir

    check_out_dir(out)


@click.command("certify")
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--eps", default="0.1,0.2,0.3,0.4", show_default=True,
              help="ℓ∞ radii in [0, 1] (input units), e.g. 0.1,0.2,0.3,0.4.")
@click.option("--device", default=None,
              help="certify for every chip of this device's envelope too (rram preset or "
                   "ideal), e.g. rram, rram-wan2022-1day.")
@click.option("--chip", type=int, default=None,
              help="use the measured error of this programmed chip instead of the model "
                   "envelope.")
@click.option("--coverage", type=float, default=0.99, show_default=True,
              help="model envelope: fraction of chips it must contain (sets k).")
@click.option("--k", type=float, default=None,
              help="model envelope: conductances within k·σ (overrides --coverage).")
@click.option("--dynamic", is_flag=True,
              help="also bound each read's DAC/ADC rounding and read noise.")
@click.option("--read-noise-k", type=float, default=None,
              help="with --dynamic: read noise within this many σ (it is Gaussian).")
@click.option("--inputs", "--n-test", "n_test", type=int, default=None,
              help="test inputs: the first N of the test split (default all; --n-test: the "
                   "same option, its older spelling).")
@click.option("--batch-size", type=int, default=500, show_default=True,
              help="test samples bounded per batch.")
@click.option("--pgd-steps", type=int, default=20, show_default=True,
              help="steps of the PGD attack the empirical accuracy is measured with.")
@click.option("--pgd-restarts", type=int, default=1, show_default=True,
              help="random restarts of that attack.")
@click.option("--clip/--no-clip", default=True, show_default=True,
              help="intersect the ε-box with the input range [0, 1].")
@click.option("--seed", type=int, default=0, show_default=True,
              help="seed of the PGD random starts.")
@variant_options("experiment file: the quick variant (default).",
                 "experiment file: the full variant.")
@click.option("--data-dir", default=None,
              help="MNIST directory (else the one a sweep run recorded — a train folder "
                   "records none —, else $NOISYDEQ_MNIST_DIR).")
@cache_option
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="output directory (default runs/certify-<source>, an experiment's "
                   "runs/<name>-<variant>; with certify options given, -<hash of them> "
                   "appended).")
@click.option("--prune", is_flag=True,
              help="once the table is written, remove the cell files of --out that no cell "
                   "of this run reads (other radii, models or settings; kept otherwise, and "
                   "counted: a run asking for them serves them).")
@threads_flag()
@click.option("--json", "as_json", is_flag=True, help="print the rows as JSON.")
@click.option("--quiet", "-q", is_flag=True, help="no per-model lines.")
@backend_options("certify")
@with_heartbeat("certify")
def command(source: Path, **opts: Any) -> None:
    """Certified robustness (interval bounds) of monotone DEQs and explicit networks.

    \b
    Examples:
      noisydeq certify certify-mnist --quick --data-dir DIR
      noisydeq certify runs/train-mondeq --eps 0.1,0.2,0.3 --device rram
      noisydeq certify runs/train-mondeq --backend ray --address HEAD:6379
    """
    from noisydeq.bundled import find_experiment, is_bundled
    from noisydeq.cluster import Backend
    from noisydeq.runtime import num_threads, thread_plan
    from noisydeq.specs.task_names import check_data_dir

    threads = thread_plan(opts["threads"])[0]  # a bad value: one line, first
    opts["data_dir"] = check_data_dir(opts["data_dir"])
    opts["backend"] = Backend.parse(opts["backend"], opts["address"])
    echo = (lambda s: None) if opts["quiet"] or opts["as_json"] else (
        lambda s: click.echo(s, err=True))
    experiment = source.suffix == ".toml" or is_bundled(source)
    # the paths, the options and an experiment file first, torch-free: before num_threads
    # and the heavy imports load torch
    if experiment:
        exp, out = _experiment_spec(find_experiment(source, "certify"), opts)
    else:
        out = _check_source(source, opts)
        spec = _spec(opts)
        _check_device(spec)
        from noisydeq.analysis.locate import check_models

        check_models(source, "certify")  # last: the other checks' messages first
    with num_threads(threads):
        if experiment:
            rows, files, line = _experiment(exp, out, opts, echo)
        else:
            rows, files, line = _models(source, out, spec, opts, echo)
    if opts["as_json"]:
        click.echo(json.dumps(rows, indent=2, allow_nan=True))
        for note in line.splitlines()[1:]:  # cells kept or removed: said, on stderr
            click.echo(note, err=True)
        return
    if rows and "model_id" in rows[0]:
        _print(rows)
    bad = sum(r.get("violations", 0) for r in rows)
    if bad:
        raise NoisyDEQError(f"{bad} certified sample(s) were broken by PGD: a bound is wrong")
    if line:
        click.echo(line)
    for f in files:
        click.echo(f"wrote {f}")


def _check_source(source: Path, opts: dict[str, Any]) -> Path:
    """The ``--out`` of certifying the models at ``source``, after the torch-free checks of
    both (missing source, damaged run config, unwritable output)."""
    from noisydeq.analysis.locate import check_family

    if not source.exists():
        if source.parent == Path(".") and source.suffix != ".toml":  # a bare name: mistyped?
            from noisydeq.bundled import bundled_experiments

            names = [b.name for b in bundled_experiments() if b.command == "certify"]
            raise NoisyDEQError(
                f"certify: {source} does not exist and is not a bundled experiment"
                f"{did_you_mean(source.name, names)} (bundled: {', '.join(names)})")
        raise NoisyDEQError(f"certify: {source} does not exist")
    check_family(source)
    name = source.stem if source.is_file() else source.name
    out = opts["out"] or _default_out(f"certify-{name}", _given(opts))
    _writable(out)
    return out


def _models(source: Path, out: Path, spec, opts: dict[str, Any], echo
            ) -> tuple[list[dict], list[Path], str]:
    from noisydeq.analysis.certified import plan, plot_accuracy, write_table
    from noisydeq.analysis.certify_run import cells_line, certify_run, check_out
    from noisydeq.analysis.family import load_family, load_family_task
    from noisydeq.certify.checks import check_certifiable
    from noisydeq.cluster import session

    check_out(out)  # another command's run: one line, before any model loads
    members = load_family(source, data_dir=opts["data_dir"], check=check_certifiable)
    task = load_family_task(members, opts["data_dir"])
    x, y = task.x_test, task.y_test
    if spec.n_test is not None:
        x, y = x[: spec.n_test], y[: spec.n_test]
    plans = [plan(m, spec, x) for m in members]  # every refusal before any work
    for m in members:
        m.eps_train = _eps_train(m.train)
    with session(opts["backend"]):  # unreachable: one line, nothing written
        result = certify_run(members, plans, x, y, spec, out, lambda rows: [
            *write_table(rows, out),
            *plot_accuracy(rows, out / "figures" / "certified_vs_eps",
                           f"{task.name}: certify {source.name}"),
        ], echo=echo, backend=opts["backend"],
            meta={"task": task.name, "source": str(source.resolve())},
            prune=opts["prune"], notes=_note)
    return result.rows, result.files, cells_line(result, out)


def _note(line: str) -> None:
    """What --quiet and --json still say, on stderr: cells of other code computed again,
    the task's notice (e.g. MNIST's training files absent: mnist10k instead)."""
    click.echo(line, err=True)


def _eps_train(train: dict[str, Any]) -> float:
    """The IBP training radius in a member's training config (nan: trained without IBP).
    Read from the checkpoint's own metadata (``Member.train``, digest-checked when the
    model was loaded), not its ``model.json`` sidecar: a missing or damaged sidecar made it
    nan in the table, silently."""
    ibp = train.get("ibp")
    return float(ibp.get("eps", math.nan)) if isinstance(ibp, dict) else math.nan


def _experiment_spec(source: Path, opts: dict[str, Any]):
    """The certify experiment at ``source`` (its ``--quick``/``--full`` variant, with the
    command line's settings over its ``[certify]`` table, their device preset included) and
    its ``--out``, checked without torch."""
    from noisydeq.specs.certify import CertifyExperimentSpec
    from noisydeq.specs.task_names import check_run_data_dir, data_dir_name
    from noisydeq.specs.toml import load_toml

    file = load_toml(CertifyExperimentSpec, source)
    exp = file.resolve(opts["variant"])
    # one rule however the directory arrives (--data-dir, which wins, or the file's table)
    table = "fig2" if exp.kind == "fig2" else "family"
    check_run_data_dir(
        opts["data_dir"] or getattr(exp, table).get("data_dir"), [exp.task()],
        "the experiment's", data_dir_name(opts["data_dir"], {}, str(source),
                                          f"{table}.data_dir"))
    given = _given(opts)
    out = opts["out"] or _default_out(f"{exp.name}-{opts['variant']}", given)
    _writable(out)
    if exp.kind == "fig2":
        if opts["backend"].ray:
            raise NoisyDEQError(f"--backend ray: '{exp.name}' iterates random layers, not "
                                "certify cells; run it without --backend ray")
        return exp, out
    from noisydeq.runtime import check_cache

    # table2 trains its models there: writable, or one line; a read-only cache serves the
    # models it holds, one it lacks is refused before anything is written to --out
    check_cache(reading=True)
    if given:  # command-line settings win over the file's [certify] table
        # checked before the (validated) assignment; an error names the option's table
        # a setting the command line did not give is named by the file's table
        _check_device(file.section(opts["variant"], given, names=OPTION_NAMES),
                      {f: name for f, name in file.key_names(opts["variant"]).items()
                       if f not in given})
        exp.certify = {**exp.certify, **given}
    return exp, out


def _experiment(exp, out: Path, opts: dict[str, Any], echo
                ) -> tuple[list[dict], list[Path], str]:
    from noisydeq.analysis.certify_experiments import run_fig2, run_table2
    from noisydeq.analysis.certify_run import cells_line
    from noisydeq.cluster import session

    if exp.kind == "fig2":
        return (*run_fig2(exp, out, data_dir=opts["data_dir"], echo=echo, notes=_note), "")
    bars = not opts["quiet"] and not opts["as_json"] and sys.stderr.isatty()
    with session(opts["backend"]):  # unreachable: one line, before training writes
        result = run_table2(exp, out, data_dir=opts["data_dir"],
                            quiet=not bars, echo=echo, backend=opts["backend"],
                            prune=opts["prune"], notes=_note)
    return result.rows, result.files, cells_line(result, out)


def _print(rows: list[dict]) -> None:
    click.echo(f"{'model':<34} {'envelope':<22} {'eps':>5} {'clean':>7} {'PGD':>7} "
               f"{'certified':>9}")
    for r in rows:
        click.echo(f"{r['model_id']:<34} {r['envelope'][:22]:<22} {r['eps']:>5g} "
                   f"{r['clean_acc']:>7.4f} {r['pgd_acc']:>7.4f} {r['certified_acc']:>9.4f}")
    envs = {r["envelope"]: r["assumption"] for r in rows if r["envelope"] != "none"}
    for label, text in envs.items():
        click.echo(f"assumption [{label}]: {text}")
