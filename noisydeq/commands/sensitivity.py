"""``noisydeq sensitivity``: DEQ/FFW noise-sensitivity ratio vs depth (paper Fig. 2b, Eq. 12)."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import click

from noisydeq import limits, store
from noisydeq.commands import cache_option
from noisydeq.commands.sweep import threads_flag
from noisydeq.errors import NoisyDEQError
from noisydeq.progress import with_heartbeat
from noisydeq.specs.base import build
from noisydeq.specs.noise import NoiseSpec, parse_snr_value
from noisydeq.specs.task_names import check_data_dir

#: a seed option's type (seeds are 63-bit: ``derive_seed``, torch generators)
SEED = click.IntRange(0, limits.MAX_SEED)
#: most inputs or noise samples an analysis command takes
MAX_COUNT = 1_000_000


def torch_device_option(f):
    return click.option("--torch-device", default="cpu", show_default=True,
                        help="torch device to compute on (cpu, cuda, cuda:0).")(f)


def threads_option(f):
    """``--threads auto|N``: a bad value is one line at once, torch-free; the command gets
    ``threads``, the evaluation count of :func:`noisydeq.runtime.thread_plan` (default
    ``$NOISYDEQ_THREADS``, else one), and runs its work with that many torch threads
    (:class:`noisydeq.runtime.num_threads`) once its own input is checked: torch loads
    only then."""

    @functools.wraps(f)
    def checked(*args, threads=None, **kwargs):
        from noisydeq.runtime import thread_plan

        return f(*args, threads=thread_plan(threads)[1], **kwargs)

    return threads_flag()(checked)


def check_family(family: Path) -> None:
    """``--family``'s one-line refusals that need no torch (missing path, damaged run
    config): before a command's heavy imports, so no heartbeat line precedes them."""
    from noisydeq.analysis.locate import check_family as check

    check(family)


def check_models(family: Path) -> None:
    """A ``--family`` folder with no trained model: one line, torch-free; called last among a
    command's checks (the others' messages come first), before its heavy imports."""
    from noisydeq.analysis.locate import check_models as check

    check(family)


def check_device(device: str | None) -> None:
    """A named ``--device`` is a readable, valid preset: one line, torch-free
    (:mod:`noisydeq.specs.device_presets`), before the family loads and before a command's
    heavy imports."""
    if device is not None:
        from noisydeq.specs.device_presets import load_spec

        load_spec(device)


def family_option(f):
    return click.option("--family", "family", required=True,
                        type=click.Path(path_type=Path),
                        help="run dir of 'noisydeq sweep', 'noisydeq study' or 'noisydeq "
                             "run' (a bundled sweep or study), output dir of 'noisydeq "
                             "train', or a checkpoint.")(f)


def _finite_snr(ctx: click.Context, param: click.Parameter, value: float | None
                ) -> float | None:
    """``--device-snr`` is a finite level, refused as it is parsed (it was checked only once
    the family had loaded, and after a missing family's message)."""
    if value is not None and not math.isfinite(value):
        raise click.BadParameter("give a finite SNR in dB (∞ is the digital model: --device "
                                 f"ideal), got {value}", ctx, param)
    return value


def device_options(f):
    """``--device``, ``--chips``, ``--device-snr``: which device the family's models are
    analysed on (:mod:`noisydeq.analysis.on_device`; default: the sweep run's own)."""
    f = click.option("--device-snr", "device_snr", default=None, type=float,
                     callback=_finite_snr,
                     help="program the chips at the static knob the sweep's calibration finds "
                          "for this SNR in dB (default: the device's native setting).")(f)
    f = click.option("--chips", "chips", default=None, type=click.IntRange(1, limits.MAX_CHIPS),
                     help="chips to analyse on (default: the run's).")(f)
    return click.option("--device", "device", default=None, metavar="NAME|PATH|ideal",
                        help="device the models are analysed on, as programmed on each chip "
                             "(default: the sweep run's device when its noise was the "
                             "device's; 'ideal' = digital weights).")(f)


def on_device(family: Path, device, chips, device_snr, members, data_dir, dev):
    """(the members on the chosen device's chips, the :class:`OnDevice` or None); says which
    on stderr."""
    from noisydeq.analysis.on_device import on_chips, resolve

    on = resolve(family, device, chips, device_snr)
    click.echo(f"device: {on.describe()} (models as programmed on each chip)" if on else
               "device: none (digital weights)", err=True)
    return on_chips(members, on, data_dir, dev), on


def out_option(name: str):
    def deco(f):
        return click.option("--out", type=click.Path(path_type=Path), default=None,
                            help=f"output directory (default: <family>/analysis/{name}).")(f)
    return deco


def default_out(family: Path, out: Path | None, name: str) -> Path:
    if out is not None:
        return out
    base = family if family.is_dir() else family.parent
    return base / "analysis" / name


def check_analysis(family: Path, device: str | None, out: Path | None, name: str) -> Path:
    """The torch-free checks of an analysis ``name`` of ``--family`` on ``--device``, in the
    order their one-line refusals come (device, family, output directory, trained models);
    returns the output directory (:func:`default_out`)."""
    check_device(device)
    check_family(family)
    out_dir = default_out(family, out, name)
    store.check_out_dir(out_dir)
    check_models(family)
    return out_dir


@click.command("sensitivity")
@family_option
@click.option("--kind", type=click.Choice(["additive", "multiplicative"]), default="additive",
              show_default=True, help="noise form: η ξ (Eq. 8) or ‖s‖-scaled (Eq. 22).")
@click.option("--eta", type=float, default=0.1, show_default=True, help="additive amplitude η.")
@click.option("--snr", "snr", default="10", show_default=True,
              help="multiplicative noise SNR in dB.")
@click.option("--site", type=click.Choice(["signal", "state"]), default="signal",
              show_default=True, help="where ξ enters every iteration/layer.")
@click.option("--samples", type=int, default=100, show_default=True,
              help="noise samples per input (the paper uses 100).")
@click.option("--inputs", type=int, default=8, show_default=True, help="test inputs used.")
@click.option("--precision", type=float, default=0.05, show_default=True,
              help="largest allowed relative standard error of each mean, at most 1 "
                   "(0 = no check).")
@click.option("--seed", type=SEED, default=0, show_default=True,
              help="seed of the noise samples ξ.")
@click.option("--data-dir", default=None,
              help="data directory for MNIST tasks (default: the one a sweep recorded).")
@out_option("sensitivity")
@cache_option
@device_options
@torch_device_option
@threads_option
@with_heartbeat("sensitivity")
def command(family, kind, eta, snr, site, samples, inputs, precision, seed, data_dir, out,
            device, chips, device_snr, torch_device, threads) -> None:
    """E_ξ|dz*/dξ_i| of each DEQ and FFW in a family, the DEQ/FFW ratio and Eq. 12 bounds.

    \b
    Examples:
      noisydeq sensitivity --family runs/sweep-1a2b3c
      noisydeq sensitivity --family runs/sweep-1a2b3c --kind multiplicative --snr 10 --samples 100
      noisydeq sensitivity --family runs/sweep-1a2b3c --device ideal
    """
    data_dir = check_data_dir(data_dir)
    if samples < 2:
        raise NoisyDEQError(f"--samples: need at least 2 noise samples, got {samples}")
    if samples > MAX_COUNT:
        raise NoisyDEQError(f"--samples: at most {MAX_COUNT} noise samples, got {samples}")
    if not 1 <= inputs <= MAX_COUNT:
        raise NoisyDEQError(f"--inputs: must be an integer in 1..{MAX_COUNT}, got {inputs}")
    if not 0 <= precision <= 1:  # a relative standard error above 1: no precision at all
        raise NoisyDEQError(f"--precision: must be 0 (no check) or a relative standard error "
                            f"in (0, 1], got {precision:g}")
    if not (math.isfinite(eta) and eta >= 0):
        raise NoisyDEQError(f"--eta: must be a finite number >= 0, got {eta:g}")
    try:
        snr_db = parse_snr_value(snr)
    except NoisyDEQError as err:
        raise NoisyDEQError(f"--snr: {err}") from None
    spec = build(NoiseSpec, {"site": site, "kind": kind, "eta": eta, "snr_db": snr_db},
                 where="sensitivity", names={"site": "--site", "kind": "--kind",
                                             "eta": "--eta", "snr_db": "--snr"})
    if kind == "multiplicative" and math.isinf(spec.snr_db):
        raise NoisyDEQError("--snr: multiplicative noise needs a finite SNR in dB")
    if kind == "additive" and eta <= 0:
        raise NoisyDEQError(f"--eta: additive noise needs eta > 0, got {eta:g}")
    out_dir = check_analysis(family, device, out, "sensitivity")
    # the CLI input is checked: now the heavy imports (torch), seconds under load
    from noisydeq.analysis.family import load_family
    from noisydeq.analysis.runs import family_inputs, run_sensitivity
    from noisydeq.runtime import num_threads, resolve_torch_device

    with num_threads(threads):
        dev = resolve_torch_device(torch_device)
        members = load_family(family, dev, data_dir=data_dir)
        x = family_inputs(members, inputs, data_dir, dev)
        members, on = on_device(family, device, chips, device_snr, members, data_dir, dev)
        rows, paths = run_sensitivity(
            members, spec, x, out_dir, n_noise=samples, precision=precision or None, seed=seed,
            echo=lambda s: click.echo(s, err=True), on=on,
        )
        click.echo(f"{'chip':>4} {'depth':>5} {'DEQ w':>6} {'FFW':>4} {'DEQ sens':>10} "
                   f"{'FFW sens':>10} {'ratio':>8}  (E‖dz*/dξ_i‖₂, {samples} noise x {len(x)} "
                   f"inputs; {on.describe() if on else 'digital weights'})")
        for r in rows:
            chip = str(r["chip"]) if on else "-"
            click.echo(f"{chip:>4} {r['depth']:>5} {_i(r['deq_width']):>6} {_i(r['depth']):>4} "
                       f"{r['deq_sens']:>#10.4g} {r['ffw_sens']:>#10.4g} {r['ratio']:>#8.3g}")
        paths.append(store.write_manifest(out_dir, paths))  # sha256sum -c SHA256SUMS
        for p in paths:
            click.echo(f"wrote {p}")


def _i(v) -> str:
    return "-" if v != v else str(int(v))
