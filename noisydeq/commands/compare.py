"""``noisydeq compare RUN_DIR... [--snr 0|native]``: DEQ vs matched FFW(s) across finished sweeps.

Prints Markdown tables (:mod:`noisydeq.compare`): per training SNR and depth, the DEQ's and
each FFW form's metric at one inference SNR over seeds, DEQ − FFW, which model is better in
every seed, and the change that training noise makes. Reads the runs' tables only.
"""

from __future__ import annotations

import json
import math

import click


@click.command("compare")
@click.argument("runs", nargs=-1, required=True)
@click.option("--snr", "snr", default="0", show_default=True,
              help="Inference SNR in dB at which the models are compared (inf = no noise), or "
                   "native (the native level of sweeps run with --snr ...,native).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def command(runs: tuple[str, ...], snr: str, as_json: bool) -> None:
    """Compare DEQs with their parameter-matched FFWs (e.g. one run per FFW form).

    \b
    Examples:
      noisydeq compare runs/sweep-1a2b3c --snr 0
      noisydeq compare runs/sweep-new-form runs/sweep-old-form --snr 0 --json
      noisydeq compare runs/sweep-1a2b3c --snr native
    """
    from noisydeq.commands.table import parse_level
    from noisydeq.compare import at_level, comparison, load_run, markdown

    wanted = parse_level(snr)  # dB, or None: the native level
    found, level = at_level([load_run(r) for r in runs], wanted)
    data = comparison(found, level)
    data["native"] = wanted is None
    if not as_json:
        click.echo(markdown(data))
        return

    def safe(v: float) -> float | str:
        return v if math.isfinite(v) else str(v)

    def table(cells):
        return [{"train_snr_db": safe(k[0]), "depth": k[1], "width": c.width,
                 "by_seed": c.by_seed, "mean": c.mean, "std": c.std,
                 "converged_frac": c.converged_frac} for k, c in sorted(cells.items())]

    click.echo(json.dumps({
        "metric": data["metric"], "snr_db": safe(level), "native": data["native"],
        "deq": table(data["deq"]),
        "ffw": {form: table(c) for form, c in data["ffw"].items()}, "notes": data["notes"],
    }, indent=2))
