"""``noisydeq sweep``: train depth-matched DEQ/FFW families and sweep the inference SNR.

Validates everything (SNR grid, task, device, data directory, output directory) before
anything is written, then trains or loads the families, evaluates models × SNR × chips
(resuming a previous run in the same ``--out``), writes the tidy table and the figures, and
prints a condensed summary with the paths.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import click

from noisydeq import limits
from noisydeq.cluster import Backend
from noisydeq.commands import cache_option
from noisydeq.errors import NoisyDEQError
from noisydeq.progress import with_heartbeat
from noisydeq.specs.base import build, refuse_repeats
from noisydeq.specs.noise import NATIVE, parse_snr_range, split_native
from noisydeq.specs.sweep import SweepSpec, adc_gain_lines, check_device_presets
from noisydeq.specs.task_names import check_data_dir, one_data_dir
from noisydeq.specs.toml import parse_assignments


def parse_grid(flag: str, text: str) -> list[float]:
    """An SNR grid for ``flag``; errors name the flag once (``--snr: 0 is given twice``)."""
    return parse_snr_range(text, flag)


def parse_seeds(text: str, flag: str = "--seed") -> list[int]:
    """``0`` or ``0,1,2`` → list of integer seeds (``flag``: the option, for the message)."""
    try:
        seeds = [int(p) for p in str(text).split(",") if p.strip() != ""]
    except ValueError:
        raise NoisyDEQError(f"{flag} '{text}': seeds are integers, e.g. 0 or 0,1,2") from None
    if not seeds:
        raise NoisyDEQError(f"{flag}: give at least one integer seed")
    for seed in seeds:
        if not 0 <= seed <= limits.MAX_SEED:
            raise NoisyDEQError(f"{flag}: seed {seed} is outside 0..2^63-1")
    try:
        return refuse_repeats(seeds)  # as every spec's grid (StrictModel.NO_REPEATS)
    except ValueError as err:
        raise NoisyDEQError(f"{flag}: {err}") from None


def parse_sets(items: tuple[str, ...]) -> dict[str, Any]:
    """``--set key=value`` overrides of SweepSpec fields (values parsed as TOML, else text)."""
    return parse_assignments(items, "--set")


def option_names(fields: Any, sets: dict[str, Any] | None = None,
                 **param_of: str) -> dict[str, str]:
    """The option of the running command that set each spec field in ``fields``, for the
    spec's error messages (``chips`` → ``--chips``): the option whose parameter is the field,
    or ``param_of[field]`` (``snr_db="snr"``); a field ``--set`` gave (in ``sets``) keeps
    its own name."""
    ctx = click.get_current_context(silent=True)
    flags = {p.name: p.opts[0] for p in (ctx.command.params if ctx else [])
             if isinstance(p, click.Option) and p.name}
    return {f: flags[param_of.get(f, f)] for f in fields
            if f not in (sets or {}) and param_of.get(f, f) in flags}


def threads_flag(help: str = "torch threads (default $NOISYDEQ_THREADS, else 1).",
                 metavar: str = "auto|N") -> Any:
    """The ``--threads`` option every command declares (a string the command reads with
    :func:`noisydeq.runtime.thread_plan`: ``auto``, ``N`` or, for ``metavar``
    ``auto|N|TRAIN,EVAL``, a training and an evaluation count)."""
    return click.option("--threads", default=None, metavar=metavar, help=help)


#: what ``--backend ray`` distributes, per command (its ``--help``): sweep and run have
#: local processes (``--jobs``); the others compute in the command's own process
BACKEND_WORK = {
    "sweep": "Where evaluation cells and family training run: local processes (--jobs)",
    "attack": "Where the attack cells run (a Ray task per model, SNR level and chip): this "
              "process",
    "certify": "Where the certificates are computed (a Ray task per model and ε): this "
               "process",
    "study": "Where the models train and are evaluated (a Ray task per model): this process",
}


def backend_options(command: str) -> Any:
    """``--backend`` and ``--address``, their help saying what ``command`` distributes
    (a key of :data:`BACKEND_WORK`; ``run`` is a sweep)."""
    work = BACKEND_WORK["sweep" if command == "run" else command]

    def decorate(f: Any) -> Any:
        f = click.option("--address", default=None, metavar="local|auto|HOST:PORT",
                         help="Ray cluster for --backend ray: local (default; a private "
                              "cluster on this machine), auto (the one 'ray start --head' "
                              "started here) or the head node's HOST:PORT.")(f)
        return click.option("--backend", type=click.Choice(["local", "ray"]), default="local",
                            show_default=True,
                            help=f"{work} or a Ray cluster (pip install 'noisydeq[ray]'); "
                                 "the same table either way.")(f)

    return decorate


def variant_options(quick: str, full: str) -> Any:
    """``--quick`` (default) and ``--full`` of an experiment command, with help texts
    ``quick`` and ``full``; the command gets ``variant="quick"|"full"``. Both flags at once
    are refused (one shared flag value let the last one win silently: ``--quick --full``
    ran the paper-scale variant)."""
    import functools

    def decorate(f: Any) -> Any:
        @functools.wraps(f)
        def command(*args: Any, quick_flag: bool = False, full_flag: bool = False,
                    **kwargs: Any) -> Any:
            if quick_flag and full_flag:
                raise click.UsageError("--quick and --full: give one of them (--quick is "
                                       "the default)")
            return f(*args, variant="full" if full_flag else "quick", **kwargs)

        command = click.option("--full", "full_flag", is_flag=True, help=full)(command)
        return click.option("--quick", "quick_flag", is_flag=True, help=quick)(command)

    return decorate


def default_out(spec: SweepSpec, prefix: str = "sweep") -> Path:
    """``runs/<prefix>-<config hash>``: re-running the same command resumes the same run."""
    from noisydeq.results import spec_hash

    return Path("runs") / f"{prefix}-{spec_hash(spec)}"


def describe_extension(added: dict[str, Any]) -> str:
    """One line of what an extension added (:func:`noisydeq.extension.added_grids`)."""
    parts = []
    for name, value in added.items():
        if name == "chips":
            parts.append(f"chips {value[0]} → {value[1]}")
        else:
            parts.append(f"{name} + {','.join(str(v) for v in value)}")
    return "; ".join(parts)


def execute(
    spec: SweepSpec, out: Path, *, quiet: bool, as_json: bool, title: str = "",
    threads: str | None = None,
    jobs: str | None = None,
    backend: Backend | None = None,
) -> dict[str, Any]:
    """Run (or resume) ``spec`` into ``out`` and report on stdout (text or JSON)."""
    from noisydeq.summary import (
        convergence_lines,
        summary_json,
        summary_table,
        training_groups,
    )
    from noisydeq.sweep import run_sweep

    t0 = time.perf_counter()
    res = run_sweep(spec, out, progress=not quiet, title=title, threads=threads, jobs=jobs,
                    backend=backend, echo=lambda s: click.echo(s, err=True))
    seconds = time.perf_counter() - t0
    report = {
        "run_dir": str(res.run_dir.path),
        "results_csv": str(res.run_dir.csv_path),
        "results_parquet": str(res.run_dir.parquet_path),
        "figures": [str(p) for p in res.figures],
        "native_snr_db": res.native_snr_db if math.isfinite(res.native_snr_db) else "inf",
        "native_snr_parts_db": {p: (v if math.isfinite(v) else "inf")
                                for p, v in res.native_parts.items()},
        "noise_mode": spec.swept_mode,
        "cells_computed": res.computed_cells,
        "cells_resumed": res.skipped_cells,
        "cells_superseded": res.superseded_cells,
        "cells_pruned": res.pruned_cells,
        "extended": res.extended,
        "seconds": round(seconds, 2),
    }
    if as_json:
        click.echo(json.dumps({**report, "summary": summary_json(res.rows)}, indent=2))
        return report
    for label, rows in training_groups(res.rows):  # one table per training regime
        if label:
            click.echo(f"trained {label}:")
        click.echo(summary_table(rows))
        click.echo("")
    for line in convergence_lines(res.rows, res.stop_rules, table=str(res.run_dir.csv_path)):
        click.echo(line)
    native = res.native_parts
    if spec.noise_site == "device" and native and math.isfinite(native["total"]):
        parts = ", ".join(f"{p} {'inf' if math.isinf(v) else f'{v:.1f}'}"
                          for p, v in native.items())
        click.echo(f"device {spec.device}: native SNR {parts} dB (reference MVM)")
    for line in adc_gain_lines(spec):
        click.echo(line)
    if res.extended:
        click.echo(f"extended {res.run_dir.path}: {describe_extension(res.extended)}")
    resumed = f", {res.skipped_cells} resumed" if res.skipped_cells else ""
    click.echo(f"cells: {res.computed_cells} computed{resumed}; {seconds:.1f} s")
    click.echo(f"results: {res.run_dir.csv_path}")
    click.echo(f"         {res.run_dir.parquet_path}")
    pngs = [p for p in res.figures if p.suffix == ".png"]
    if pngs:
        click.echo("figures: " + "\n         ".join(str(p) for p in pngs) + "  (+ .svg)")
    return report


@click.command("sweep")
@click.option("--device", default="rram", show_default=True,
              help="Device preset name or path of a preset .toml (see `noisydeq devices`).")
@click.option("--snr", "snr", default="0:30", show_default=True,
              help="Inference SNR grid in dB: 0:30 (1 dB steps), 0:30:2, 0,10,20,inf; "
                   "'native' adds the device at its own knobs (0:30,native).")
@click.option("--task", default="digits", show_default=True,
              help="digits, mnist (offline: the seeded mnist10k split), mnist10k, "
                   "regression1d, cifar10 (binary files in --data-dir), prefix_sums, mazes "
                   "(these two need a per-position cell: --set cell=conv1d or residual) or "
                   "matrix_add.")
@click.option("--data-dir", default=None,
              help="Directory with the MNIST IDX files (else $NOISYDEQ_MNIST_DIR) or the "
                   "CIFAR-10 binary files (else $NOISYDEQ_CIFAR10_DIR).")
@click.option("--depths", default="1,3,5,7", show_default=True,
              help="FFW depths; each gets a parameter-matched DEQ.")
@click.option("--train-snr", default="inf", show_default=True,
              help="Training signal-noise SNR(s) in dB (inf = no training noise), e.g. inf,10,0.")
@click.option("--train-device", default=None, metavar="DEVICE,...",
              help="Train every family member with this device in the loop (preset name or "
                   ".toml path; several: one family each; 'none': also a digital family).")
@click.option("--train-device-snr", default=None,
              help="SNR grid (dB) the training device is calibrated to (default: native).")
@click.option("--train-noise-mode", default=None,
              help="Which part of the training device's noise --train-device-snr sets: "
                   "physical (default), dynamic, static or both.")
@click.option("--train-device-adc-gain", "train_adc_gain",
              type=click.Choice(["step", "epoch"]), default=None,
              help="Photonic training devices with a calibrated ADC gain: measure it with "
                   "every step's weights (step, default) or once per epoch's chip (epoch).")
@click.option("--train-device-drift-alpha", "train_drift_alpha",
              type=click.Choice(["step", "epoch"]), default=None,
              help="rram training devices with drift compensation: measure its α with every "
                   "step's programmed chip (step, default) or once per epoch's chip (epoch).")
@click.option("--train-device-programming", "train_programming",
              type=click.Choice(["step", "epoch"]), default=None,
              help="rram or photonic training devices: program the chip with every step's "
                   "weights (step, default) or once per epoch's chip, holding its "
                   "programming error on later weights (epoch).")
@click.option("--train-device-calibration", "train_calibration", default=None,
              metavar="epoch|step|N",
              help="Training devices at a --train-device-snr: calibrate the noise scale to it "
                   "once per epoch's chip (epoch, default), before every step (step) or every "
                   "N steps.")
@click.option("--digital-layers", default=None, metavar="NAME,...",
              help="Layers kept digital on the devices (training and evaluation), e.g. "
                   "proj.U,head.")
@click.option("--chips", type=click.IntRange(min=1), default=3, show_default=True,
              help="Chip instances (draws of static device noise).")
@click.option("--epochs", type=click.IntRange(min=0), default=None,
              help="Training epochs (default: the training preset's).")
@click.option("--train-preset", default="quick", show_default=True,
              help="quick (minutes on CPU), paper (Tables 1-2), adversarial (Tables "
                   "5-6) or adversarial-quick; train takes the same option.")
@click.option("--noise-site", type=click.Choice(["device", "signal", "state", "input"]),
              default="device", show_default=True,
              help="Where the swept SNR applies: the device's MVMs, or the paper's model noise.")
@click.option("--kinds", default="deq,ffw", show_default=True,
              help="Model kinds of each family, comma-separated (e.g. --kinds deq).")
@click.option("--noise-mode", default="physical", show_default=True,
              help="Which part of the device's noise the swept SNR sets: physical (total SNR; "
                   "below native only dynamic noise grows, above it both shrink), dynamic, "
                   "static or both (docs/devices.md).")
@click.option("--ffw-form", default=None,
              help="FFW layer form: eq57x (default; z0 = x~, every hidden matrix acts), eq57 "
                   "(z0 = 0, the previous default) or eq32 (z0 = x~, no injection).")
@click.option("--snr-scale", default="realised", show_default=True,
              help="How model-noise SNRs are read: realised (realised SNR = nominal at every "
                   "width) or paper (Eq. 4 literally: nominal - 10 log10(width)).")
@click.option("--out", default=None,
              help="Run directory (default runs/sweep-<config hash>; re-running resumes; "
                   "more SNR levels, chips, seeds, depths or kinds extend it).")
@click.option("--seed", default="0", show_default=True,
              help="Seed or seeds (0,1,2): weights, data order, noise, chips. The data "
                   "split is --data-seed's, so --seed 2 alone trains exactly member 2 of "
                   "--seed 0,1,2.")
@click.option("--data-seed", type=click.IntRange(0, limits.MAX_SEED), default=0,
              show_default=True,
              help="Seed of the train/test split (mnist10k, digits) and of a generated "
                   "task's data, the same for every --seed. Runs made before it existed drew "
                   "the split with their first seed: a first seed other than 0 now gives "
                   "another run (--data-seed N with --seed N,... reproduces one).")
@click.option("--torch-device", default="cpu", show_default=True, help="cpu, cuda, cuda:1, ...")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Override any sweep-spec field (e.g. --set max_rows=8192).")
@click.option("--quiet", is_flag=True,
              help="No progress (bars, log lines, heartbeats); results are still printed.")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary.")
@cache_option
@threads_flag("torch threads for training and evaluation (default $NOISYDEQ_THREADS, else "
              "auto = 1 per process; processes are the parallelism).", "auto|N|TRAIN,EVAL")
@click.option("--jobs", default=None, metavar="auto|N",
              help="evaluation processes (default $NOISYDEQ_JOBS, else auto = one per CPU "
                   "core; with more than one, each evaluates with one thread).")
@backend_options("sweep")
@with_heartbeat("sweep")
def command(
    device: str, snr: str, task: str, data_dir: str | None, depths: str, train_snr: str,
    chips: int, epochs: int | None, train_preset: str, noise_site: str, noise_mode: str,
    kinds: str,
    ffw_form: str | None, snr_scale: str, out: str | None,
    seed: str, torch_device: str, sets: tuple[str, ...], quiet: bool, as_json: bool,
    threads: str | None,
    jobs: str | None,
    data_seed: int = 0,
    train_device: str | None = None, train_device_snr: str | None = None,
    train_noise_mode: str | None = None, digital_layers: str | None = None,
    train_adc_gain: str | None = None, train_drift_alpha: str | None = None,
    train_programming: str | None = None, train_calibration: str | None = None,
    backend: str = "local", address: str | None = None,
) -> None:
    """Sweep parameter-matched DEQ vs FFW accuracy across SNR on a simulated device.

    \b
    Examples:
      noisydeq sweep --device rram --snr 0:30
      noisydeq sweep --device photonic --snr 0,10,20,inf --chips 3 --seed 0,1,2
      noisydeq sweep --device rram --snr 0:30:5,native   # + the chip as it is
      noisydeq sweep --device rram --noise-mode static --depths 1,3,5
      noisydeq sweep --task mnist --data-dir DIR --train-snr inf,10,0
      noisydeq sweep --snr 0:30:5 --out runs/r1   # extends runs/r1 (was --snr 0:30:10)
      noisydeq sweep --backend ray --address auto   # on the cluster of 'ray start --head'
    """
    from noisydeq.runtime import job_count, thread_plan

    thread_plan(threads)  # a bad value is one error before anything runs
    job_count(jobs)
    chosen = Backend.parse(backend, address, jobs)
    rest, native = split_native(snr)  # the native level: --snr 0:30,native
    snr_grid: list[Any] = [] if rest is None else parse_grid("--snr", rest)
    snr_grid += [NATIVE] * native
    train_grid = parse_grid("--train-snr", train_snr)
    one_data_dir(data_dir, parse_sets(sets))  # --data-dir and --set data_dir=...: one value
    data = {
        "device": device, "snr_db": snr_grid, "task": task, "data_dir": check_data_dir(data_dir),
        "depths": depths, "train_snr_db": train_grid, "chips": chips, "epochs": epochs,
        "train_preset": train_preset, "noise_site": noise_site, "noise_mode": noise_mode,
        "kinds": [k.strip() for k in kinds.split(",") if k.strip()], "ffw_form": ffw_form,
        "snr_scale": snr_scale, "seeds": parse_seeds(seed), "data_seed": data_seed,
        "torch_device": torch_device,
        **{k: v for k, v in (("train_device", train_device),
                             ("train_noise_mode", train_noise_mode),
                             ("train_adc_gain", train_adc_gain),
                             ("train_drift_alpha", train_drift_alpha),
                             ("train_programming", train_programming),
                             ("train_calibration", train_calibration),
                             ("digital_layers", digital_layers)) if v is not None},
        **({"train_device_snr_db": parse_grid("--train-device-snr", train_device_snr)}
           if train_device_snr is not None else {}),
        **parse_sets(sets),
    }
    names = option_names(data, parse_sets(sets), snr_db="snr", seeds="seed",
                         train_snr_db="train_snr", train_device_snr_db="train_device_snr")
    spec = build(SweepSpec, data, where="sweep", names=names)
    check_device_presets(spec)  # torch-free: before execute's heavy imports
    # torch-free too: a bad task or --out is one line before the heartbeat can speak
    from noisydeq.specs.task_names import check_run_data_dir, check_task_name, data_dir_name
    from noisydeq.store import check_out_dir

    check_task_name(spec.task)
    # one rule however the directory arrives (--data-dir or --set data_dir=..., which
    # agree: one_data_dir)
    check_run_data_dir(spec.data_dir, [spec.task], "the sweep's",
                       data_dir_name(data_dir, parse_sets(sets)))
    if out:
        check_out_dir(out)
    execute(spec, Path(out) if out else default_out(spec), quiet=quiet or as_json,
            as_json=as_json, threads=threads, jobs=jobs, backend=chosen)
    sys.stdout.flush()
