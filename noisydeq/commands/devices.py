"""``noisydeq devices``: list device presets with their native SNR and key parameters."""

from __future__ import annotations

import json
import math

import click

from noisydeq.errors import NoisyDEQError


def _db(v: float) -> float | None:
    return None if math.isinf(v) or math.isnan(v) else round(v, 2)


def _row(name: str, listing: bool = False) -> dict[str, object]:
    # imported here: the hardware package loads torch, which `noisydeq --help` does not need
    from noisydeq.hardware.presets import device_from_spec, load_spec
    from noisydeq.specs.device_presets import is_preset_file

    spec = load_spec(name)
    # the preset's own name (a file's ``name``, a bare kind's default preset), and the
    # file it came from when given a path
    where = {"path": str(name)} if is_preset_file(name) else {}
    name = spec.name
    try:
        device = device_from_spec(spec)
    except NoisyDEQError as err:  # e.g. rram without its optional aihwkit
        if not listing:
            raise
        return {"name": name, "kind": spec.kind, "native_snr_db": None,
                "native_static_snr_db": None, "native_dynamic_snr_db": None, "params": {},
                "description": spec.description, **where, "unavailable": str(err)}
    parts = device.native_parts()
    return {
        "name": name,
        "kind": spec.kind,
        "native_snr_db": _db(parts["total"]),
        "native_static_snr_db": _db(parts["static"]),
        "native_dynamic_snr_db": _db(parts["dynamic"]),
        "params": device.describe(),
        "description": spec.description,
        **where,
    }


@click.command("devices")
@click.argument("presets", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of text.")
def command(presets: tuple[str, ...], as_json: bool) -> None:
    """List device presets (or the given names / .toml paths) with their native SNR.

    Each row shows the preset's name (a .toml file's ``name``, its file name without one)
    and, for a file, the path it came from.

    The native SNR (total, and its static and dynamic parts) is measured on the reference
    MVM: a 467x467 nn.Linear (default init, seed 0) with inputs uniform in [-1, 1].

    \b
    Examples:
      noisydeq devices
      noisydeq devices rram            # a bare kind: its default preset, rram-wan2022
      noisydeq devices rram-wan2022 photonic --json
      noisydeq devices my-chip.toml
    """
    from noisydeq.hardware.presets import preset_names

    rows = [_row(p) for p in presets] if presets else [_row(p, True) for p in preset_names()]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    width = max(len(r["name"]) for r in rows)
    def fmt(v: object) -> str:
        return "inf" if v is None else f"{v:.1f}"

    for r in rows:
        if "unavailable" in r:
            click.echo(f"{r['name']:<{width}}  {r['kind']:<8}  unavailable: {r['unavailable']}")
            continue
        snr = (f"native {fmt(r['native_snr_db']):>5} dB (static {fmt(r['native_static_snr_db'])},"
               f" dynamic {fmt(r['native_dynamic_snr_db'])})")
        params = " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                          for k, v in r["params"].items())
        source = f"  (from {r['path']})" if "path" in r else ""
        click.echo(f"{r['name']:<{width}}  {r['kind']:<8}  {snr}  {params}{source}")
