"""``noisydeq devices``: list device presets with their native SNR and key parameters."""

from __future__ import annotations

import json
import math

import click

from noisydeq.hardware.presets import device_from_spec, load_spec, preset_names


def _row(name: str) -> dict[str, object]:
    spec = load_spec(name)
    device = device_from_spec(spec)
    native = device.native_snr_db()
    return {
        "name": name,
        "kind": spec.kind,
        "native_snr_db": None if math.isinf(native) else round(native, 2),
        "params": device.describe(),
        "description": spec.description,
    }


@click.command("devices")
@click.argument("presets", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of text.")
def command(presets: tuple[str, ...], as_json: bool) -> None:
    """List device presets (or the given names / .toml paths) with their native SNR.

    The native SNR is measured on the reference MVM: a 467x467 nn.Linear (default init,
    seed 0) with inputs uniform in [-1, 1].
    """
    rows = [_row(p) for p in (presets or preset_names())]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        snr = "inf" if r["native_snr_db"] is None else f"{r['native_snr_db']:.1f}"
        params = " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                          for k, v in r["params"].items())
        click.echo(f"{r['name']:<{width}}  {r['kind']:<8}  native {snr:>5} dB  {params}")
