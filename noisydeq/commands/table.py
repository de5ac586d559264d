"""``noisydeq table RUN_DIR... [--snr 0]``: DEQ vs matched FFW tables of finished sweeps.

Prints, for every run directory, a Markdown heading naming what was swept (device and noise
mode, or the model-noise site) and the paired table of :func:`noisydeq.summary.paired_table`
(mean ± std over chips and seeds, DEQ − FFW) at one inference SNR — the tables of
docs/reproduction.md — or at the native level (``--snr native``).
"""

from __future__ import annotations

from pathlib import Path

import click

from noisydeq.commands.sweep import parse_grid
from noisydeq.errors import NoisyDEQError
from noisydeq.specs.noise import NATIVE


def parse_level(snr: str) -> float | None:
    """The one level of a finished sweep's table that ``--snr`` names: dB, or ``None`` for
    ``native`` (the device at its own knobs, in sweeps run with ``--snr ...,native``)."""
    if snr.strip().lower() == NATIVE:
        return None
    levels = parse_grid("--snr", snr)
    if len(levels) != 1:
        raise NoisyDEQError(f"--snr '{snr}': give one level, e.g. --snr 0 (or native)")
    return levels[0]


@click.command("table")
@click.argument("run_dirs", nargs=-1, required=True)
@click.option("--snr", "snr", default="0", show_default=True,
              help="Inference SNR (dB) of the table (a level of the sweeps), or native "
                   "(the native level of sweeps run with --snr ...,native).")
def command(run_dirs: tuple[str, ...], snr: str) -> None:
    """DEQ vs matched-FFW tables (Markdown) of finished sweeps at one inference SNR.

    \b
    Examples:
      noisydeq table runs/sweep-1a2b3c --snr 0
      noisydeq table runs/sweep-1a2b3c runs/sweep-4d5e6f --snr 10
      noisydeq table runs/sweep-1a2b3c --snr native
    """
    from noisydeq.results import read_csv
    from noisydeq.summary import paired_table, rows_at_level, swept_description

    wanted = parse_level(snr)
    native = wanted is None
    tables = []
    for run in run_dirs:
        path = Path(run) / "results.csv"
        if not path.is_file():
            raise NoisyDEQError(f"{run}: no results.csv (not a finished sweep's run directory)")
        rows, level = rows_at_level(read_csv(path), wanted, run)
        at = [r for r in rows if r["snr_db"] == level]
        if not at:
            from noisydeq.specs.noise import snr_grid_text

            shown = snr_grid_text(sorted({r["snr_db"] for r in rows}))  # 0:30, not 31 levels
            raise NoisyDEQError(f"{run}: no level {level:g} dB in its results ({shown})")
        at_native = f"; native level ({level:.1f} dB: the device at its own knobs)" \
            if native else ""
        tables.append(f"### {Path(run).name}: {swept_description(rows)}{at_native}\n\n"
                      f"{paired_table(rows, level)}\n")
    click.echo("\n".join(tables), nl=False)
