"""``noisydeq spectrum``: eigenvalues of W and W_m⋯W₁, spectral radii, ρ(J) at z* (Fig. 2a/13)."""

from __future__ import annotations

import click

from noisydeq import store
from noisydeq.commands import cache_option
from noisydeq.commands.sensitivity import (
    MAX_COUNT,
    SEED,
    check_analysis,
    device_options,
    family_option,
    on_device,
    out_option,
    threads_option,
    torch_device_option,
)
from noisydeq.errors import NoisyDEQError
from noisydeq.progress import with_heartbeat
from noisydeq.specs.task_names import check_data_dir


@click.command("spectrum")
@family_option
@click.option("--inputs", type=int, default=16, show_default=True,
              help="test inputs at whose DEQ fixed points ρ(∂f/∂z) is measured (0 = skip).")
@click.option("--seed", type=SEED, default=0, show_default=True,
              help="seed of the random draws of the spectral-radius estimates.")
@click.option("--data-dir", default=None,
              help="data directory for MNIST tasks (default: the one a sweep recorded).")
@out_option("spectrum")
@cache_option
@device_options
@torch_device_option
@threads_option
@with_heartbeat("spectrum")
def command(family, inputs, seed, data_dir, out, device, chips, device_snr,
            torch_device, threads) -> None:
    """Eigen-spectra and spectral radii of every DEQ and FFW of a family.

    \b
    Examples:
      noisydeq spectrum --family runs/sweep-1a2b3c
      noisydeq spectrum --family runs/sweep-1a2b3c --inputs 64 --out runs/spectra
      noisydeq spectrum --family runs/sweep-1a2b3c --device rram --chips 3
    """
    data_dir = check_data_dir(data_dir)
    if not 0 <= inputs <= MAX_COUNT:
        raise NoisyDEQError(f"--inputs: must be an integer in 0..{MAX_COUNT}, got {inputs}")
    out_dir = check_analysis(family, device, out, "spectrum")
    from noisydeq.analysis.family import load_family, pairs
    from noisydeq.analysis.runs import family_inputs, run_spectrum
    from noisydeq.runtime import num_threads, resolve_torch_device

    with num_threads(threads):
        dev = resolve_torch_device(torch_device)
        members = load_family(family, dev, data_dir=data_dir)
        for pair in pairs(members):
            warn = pair.count_warning()
            if warn:
                click.echo(warn, err=True)
        x = family_inputs(members, inputs, data_dir, dev) if inputs > 0 else None
        members, on = on_device(family, device, chips, device_snr, members, data_dir, dev)
        rows, paths = run_spectrum(members, x, out_dir, seed=seed, on=on)
        paths.append(store.write_manifest(out_dir, paths))  # sha256sum -c SHA256SUMS
        click.echo(f"{'chip':>4} {'kind':>4} {'depth':>5} {'width':>5} {'rho':>10} "
                   f"{'rho(J*) mean':>13}  ({on.describe() if on else 'digital weights'})")
        for r in rows:
            # ρ(J*) is measured at DEQ fixed points only: an FFW (or --inputs 0) has none, "-"
            # here as in the chip column, an empty cell in spectrum.csv
            jr = f"{r['jac_rho_mean']:#.4g}" if "jac_rho_mean" in r else "-"
            chip = str(r["chip"]) if on else "-"
            click.echo(f"{chip:>4} {r['kind']:>4} {r['depth']:>5} {r['width']:>5} "
                       f"{r['rho']:>#10.4g} {jr:>13}")
        for p in paths:
            click.echo(f"wrote {p}")
