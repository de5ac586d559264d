"""``noisydeq runs [DIR...]``: the run directories below DIR (default ``runs``), what each is
(``kind``: a sweep, an attack run, or a sweep of a LyaDEQ experiment's device table, with
the experiment it belongs to), their specs and status — finished (table written, digests
good), partial (cells written, resumable), running (another process holds the directory's
lock) or damaged (a file fails its check).

Reads only; takes no lock and writes nothing.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import click

from noisydeq.errors import NoisyDEQError

CONFIG = "config.toml"
LOCK = ".noisydeq.lock"


def _compact(values: Any) -> str:
    if isinstance(values, list):
        return ",".join(_compact(v) for v in values)
    if isinstance(values, float) and math.isinf(values):
        return "inf"
    if isinstance(values, float) and values.is_integer():
        return str(int(values))
    return str(values)


def _held(run: Path) -> bool:
    """Whether another process holds the run's lock (tested without creating anything)."""
    lock = run / LOCK
    if not lock.is_file():
        return False
    import fcntl

    try:
        with open(lock, "rb") as fh:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return True
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
    except OSError:
        return False
    return False


#: the kinds of run directory (``kind``): a sweep; an attack run (``noisydeq attack``, its
#: config an attack grid on a family); a sweep a LyaDEQ experiment ran for its device table
#: (``<experiment>/device/<device>-<group>``, ``noisydeq lyapunov``)
SWEEP, ATTACK, LYAPUNOV_SWEEP = "sweep", "attack", "lyapunov sweep"


def _experiment_of(run: Path) -> Path | None:
    """The LyaDEQ experiment directory that ran ``run`` for its device table, if any: its
    config (digest checked) names the experiment and holds an attack or device table."""
    from noisydeq.loading import read_run_config

    top = run.parent.parent
    if run.parent.name != "device" or not (top / CONFIG).is_file():
        return None
    try:
        spec = read_run_config(top)
    except NoisyDEQError:
        return None
    tables = [spec.get("attack"), spec.get("device")]
    return top if "name" in spec and any(isinstance(t, dict) for t in tables) else None


def run_kind(run: Path, spec: dict[str, Any]) -> tuple[str, Path | None]:
    """What ``run`` is (:data:`SWEEP`, :data:`ATTACK`, :data:`LYAPUNOV_SWEEP`) and the
    experiment directory it belongs to (a LyaDEQ experiment's sweep; else None)."""
    if "attacks" in spec and "family" in spec:
        return ATTACK, None
    experiment = _experiment_of(run)
    return (LYAPUNOV_SWEEP, experiment) if experiment is not None else (SWEEP, None)


def describe(run: Path) -> dict[str, Any]:
    """One run directory: what it is, its spec's main fields, cell count and status. A
    purely digital attack (the ideal device, no model noise) has no device or noise site
    (None, ``-`` in the table): it attacks the digital weights."""
    from noisydeq import store
    from noisydeq.loading import read_run_config

    info: dict[str, Any] = {"run": str(run), "kind": "", "cells":
                            len(list(run.glob("cells/*.json")))}
    try:
        spec = read_run_config(run)
    except NoisyDEQError as err:
        return {**info, "status": f"damaged ({str(err).splitlines()[0]})"}
    kind, experiment = run_kind(run, spec)
    info["kind"] = kind
    if experiment is not None:
        info["experiment"] = str(experiment)
    for key in ("task", "device", "noise_site", "depths", "snr_db", "chips", "seeds",
                "train_snr_db"):
        info[key] = _compact(spec.get(key, ""))
    if kind == ATTACK and spec.get("device", "ideal") == "ideal" \
            and spec.get("noise_site", "device") == "device":
        info["device"] = info["noise_site"] = None
    levels = spec.get("snr_db")
    if isinstance(levels, list) and levels:
        from noisydeq.specs.noise import NATIVE, snr_grid_text

        numbers = [v for v in levels if v != NATIVE]  # the native level: its item, last
        if all(isinstance(v, (int, float)) for v in numbers):
            text = snr_grid_text([float(v) for v in numbers])  # 0:30, not 31 levels
            info["snr_db"] = ",".join(p for p in (text, NATIVE * (NATIVE in levels)) if p)
    if _held(run):
        status = "running"
    elif (run / "results.csv").is_file() and (run / store.MANIFEST).is_file():
        try:
            store.verify_manifest(run)
            status = "finished"
        except NoisyDEQError as err:
            status = f"damaged ({str(err).splitlines()[0]})"
    else:
        status = "partial (run the same command again to resume)"
    info["status"] = status
    info["modified"] = time.strftime("%Y-%m-%d %H:%M", time.localtime(_modified(run)))
    return info


#: what a sweep writes as it goes (config.toml only when made or extended): the latest is
#: when the run last changed — a resumed or recomputed run's cells and tables included
WRITTEN = (CONFIG, "cells", "results.csv", "meta.json", "SHA256SUMS")


def _modified(run: Path) -> float:
    """When ``run`` last changed: the latest mtime of :data:`WRITTEN` (``cells/``: a cell
    written or replaced in it). Was config.toml's alone, which a resume never rewrites."""
    times = []
    for name in WRITTEN:
        try:
            times.append((run / name).stat().st_mtime)
        except OSError:
            continue
    return max(times)


def find(roots: tuple[str, ...]) -> list[Path]:
    out: list[Path] = []
    if not roots and not Path("runs").exists():
        return out  # the default folder before any sweep: nothing to list, not an error
    for root in map(Path, roots or ("runs",)):
        if not root.is_dir():
            raise NoisyDEQError(f"runs: {root} is not a directory")
        cands = [root] if (root / CONFIG).is_file() else sorted(
            p.parent for p in root.rglob(CONFIG))
        out += [p for p in cands if p not in out
                and ((p / "cells").is_dir() or (p / "results.csv").is_file())]
    return out


@click.command("runs")
@click.argument("dirs", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def command(dirs: tuple[str, ...], as_json: bool) -> None:
    """List run directories below DIRS (default: runs): what each is (sweep, attack,
    lyapunov sweep), its spec and status.

    \b
    Examples:
      noisydeq runs
      noisydeq runs runs/ ~/experiments/ --json
    """
    infos = [describe(r) for r in find(dirs)]
    if as_json:
        click.echo(json.dumps(infos, indent=2))
        return
    if not infos:
        absent = "" if dirs or Path("runs").exists() else (
            " (there is no runs/ here yet: a sweep writes its run directory there by default)")
        click.echo(f"no run directories below {', '.join(dirs or ('runs',))}{absent}")
        return
    cols = ["run", "kind", "status", "cells", "task", "device", "noise_site", "depths", "snr_db",
            "chips", "seeds", "train_snr_db", "modified"]
    # the table holds the status word; why a run is damaged (a path and a digest message)
    # or how to resume it follows the table, so one long reason does not push every column
    notes = []
    rows = []
    for i in infos:
        word, _, why = str(i.get("status", "")).partition(" (")
        rows.append({**{k: "-" if v is None else v for k, v in i.items()}, "status": word})
        if why:
            notes.append(f"{i['run']}: {word}: {why[:-1] if why.endswith(')') else why}")
        if "experiment" in i:
            notes.append(f"{i['run']}: {i['kind']} of the experiment in {i['experiment']}")
    width = {c: max(len(c), *(len(str(i.get(c, ""))) for i in rows)) for c in cols}
    click.echo("  ".join(c.ljust(width[c]) for c in cols).rstrip())
    for i in rows:
        click.echo("  ".join(str(i.get(c, "")).ljust(width[c]) for c in cols).rstrip())
    if notes:
        click.echo("")
        for note in notes:
            click.echo(note)
