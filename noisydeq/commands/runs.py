"""``noisydeq runs [DIR...]``: the run directories below DIR (default ``runs``), what each is
(``kind``: a sweep, an attack run — its seed and the family or checkpoint it attacked —, a
LyaDEQ experiment's own folder, or a sweep of its device table, with the experiment it
belongs to), their specs and status — finished (table written, digests good; an experiment:
report and the tables of its spec written), partial (cells written, resumable), running
(another process holds the directory's lock) or damaged (a file fails its check).

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
#: config an attack grid on a family); a LyaDEQ experiment's own folder (``noisydeq
#: lyapunov``: its attack cells, tables and report); a sweep it ran for its device table
#: (``<experiment>/device/<device>-<group>``)
SWEEP, ATTACK, LYAPUNOV, LYAPUNOV_SWEEP = "sweep", "attack", "lyapunov", "lyapunov sweep"


def _is_experiment(spec: dict[str, Any]) -> bool:
    """Whether a config is a LyaDEQ experiment's: it names the experiment and holds an
    attack or device table."""
    tables = [spec.get("attack"), spec.get("device")]
    return "name" in spec and any(isinstance(t, dict) for t in tables)


#: what a LyaDEQ experiment's own folder holds beside its config (its sweeps, below
#: ``device/``, hold cells and tables of their own)
EXPERIMENT_OWN = ("attack", "attack.csv", "device", "device.csv", "report.md")


def _is_experiment_dir(top: Path) -> bool:
    """Whether directory ``top`` is a LyaDEQ experiment's folder: its config (digest
    checked) is an experiment's, or — a config that fails its check, so cannot say — it is
    no sweep or attack run and holds what an experiment's folder holds
    (:data:`EXPERIMENT_OWN`): listed as damaged, as a damaged sweep is."""
    from noisydeq.loading import read_run_config

    if not (top / CONFIG).is_file():
        return False
    try:
        spec = read_run_config(top)
    except NoisyDEQError:
        return not _is_run(top) and any((top / name).exists() for name in EXPERIMENT_OWN)
    return _is_experiment(spec)


def _experiment_of(run: Path) -> Path | None:
    """The LyaDEQ experiment directory that ran ``run`` for its device table, if any."""
    top = run.parent.parent
    if run.parent.name != "device" or not _is_experiment_dir(top):
        return None
    return top


def run_kind(run: Path, spec: dict[str, Any]) -> tuple[str, Path | None]:
    """What ``run`` is (:data:`SWEEP`, :data:`ATTACK`, :data:`LYAPUNOV`,
    :data:`LYAPUNOV_SWEEP`) and the experiment directory it belongs to (a LyaDEQ
    experiment's sweep; else None)."""
    if "attacks" in spec and "family" in spec:
        return ATTACK, None
    if _is_experiment(spec):
        return LYAPUNOV, None
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
        if _is_experiment_dir(run):  # an experiment's folder (its layout says so)
            info.update(kind=LYAPUNOV, cells=len(list(run.glob("attack/*.json"))))
        return {**info, "status": f"damaged ({str(err).splitlines()[0]})"}
    kind, experiment = run_kind(run, spec)
    info["kind"] = kind
    if kind == LYAPUNOV:
        return {**info, **_describe_experiment(run, spec)}
    if experiment is not None:
        info["experiment"] = str(experiment)
    for key in ("task", "device", "noise_site", "depths", "snr_db", "chips", "seeds",
                "train_snr_db"):
        info[key] = _compact(spec.get(key, ""))
    if kind == ATTACK:
        # one seed (its noise, starts and samples), on the family or checkpoint recorded;
        # the depths and training SNRs are the family's, which the config does not hold
        info["seeds"] = _compact(spec.get("seed", ""))
        info["depths"] = info["train_snr_db"] = None
        info["attacked"] = str(spec.get("family", "")) or None
        if spec.get("device", "ideal") == "ideal" \
                and spec.get("noise_site", "device") == "device":
            info["device"] = info["noise_site"] = None
    info["snr_db"] = _snr_text(spec.get("snr_db"), info["snr_db"])
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
#: what a LyaDEQ experiment writes in its own folder (its sweeps: ``device/``)
EXPERIMENT_WRITTEN = (CONFIG, "attack", "attack.csv", "device", "device.csv", "report.md")


def _snr_text(levels: Any, text: str) -> str:
    """An SNR grid as its compact range text (0:30, not 31 levels; the native level last),
    else ``text``."""
    if isinstance(levels, list) and levels:
        from noisydeq.specs.noise import NATIVE, snr_grid_text, split_native

        numbers, native = split_native(levels)  # the native level: its item, last
        numbers = numbers or []
        if all(isinstance(v, (int, float)) for v in numbers):
            grid = snr_grid_text([float(v) for v in numbers]) if numbers else ""
            return ",".join(p for p in (grid, NATIVE if native else "") if p)
    return text


def _describe_experiment(run: Path, spec: dict[str, Any]) -> dict[str, Any]:
    """A LyaDEQ experiment's folder: its task and seeds, the devices, depths, SNRs and
    chips of its device table, its attack cells written (``cells``) and its status —
    finished when ``report.md`` and the table of each of its spec's tables (``attack.csv``,
    ``device.csv``) are written (the cells and sweeps were checked by the run that wrote
    them; each sweep is listed on its own), partial when one is missing (``--only``, or
    stopped), running while its lock is held."""
    device = spec.get("device") if isinstance(spec.get("device"), dict) else None
    info: dict[str, Any] = {
        "cells": len(list(run.glob("attack/*.json"))), "task": _compact(spec.get("task", "")),
        "device": _compact(list(device.get("groups", {}))) if device else None,
        "noise_site": "device" if device else None,
        "depths": None,  # the LyaDEQs are one cell; the device table's depths: its baselines
        "snr_db": _snr_text(device.get("snr_db"), _compact(device.get("snr_db", "")))
        if device else None,
        "chips": _compact(device.get("chips", "")) if device else None,
        "seeds": _compact(spec.get("seeds", "")), "train_snr_db": None,
    }
    missing = [f"{t}.csv" for t in ("attack", "device")
               if isinstance(spec.get(t), dict) and not (run / f"{t}.csv").is_file()]
    if not (run / "report.md").is_file():
        missing.append("report.md")
    if _held(run):
        info["status"] = "running"
    elif missing:
        info["status"] = (f"partial ({', '.join(missing)} not written yet: run `noisydeq "
                          "lyapunov` on the experiment again, without --only, to resume)")
    else:
        info["status"] = "finished"
    info["modified"] = time.strftime("%Y-%m-%d %H:%M",
                                     time.localtime(_modified(run, EXPERIMENT_WRITTEN)))
    return info


def _modified(run: Path, written: tuple[str, ...] = WRITTEN) -> float:
    """When ``run`` last changed: the latest mtime of ``written`` (``cells/``: a cell
    written or replaced in it). Was config.toml's alone, which a resume never rewrites."""
    times = []
    for name in written:
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
        # a run given itself: that run; else (an experiment's folder too: it, then its
        # sweeps) every run below
        one = (root / CONFIG).is_file() and _is_run(root) and not _is_experiment_dir(root)
        cands = [root] if one else sorted(p.parent for p in root.rglob(CONFIG))
        out += [p for p in cands if p not in out
                and (_is_run(p) or _is_experiment_dir(p))]
    return out


def _is_run(p: Path) -> bool:
    """A sweep or attack run directory: cells or a results table written."""
    return (p / "cells").is_dir() or (p / "results.csv").is_file()


@click.command("runs")
@click.argument("dirs", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def command(dirs: tuple[str, ...], as_json: bool) -> None:
    """List run directories below DIRS (default: runs): what each is (sweep, attack,
    lyapunov experiment, lyapunov sweep), its spec and status.

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
        if i.get("attacked"):
            notes.append(f"{i['run']}: attack on {i['attacked']}")
    width = {c: max(len(c), *(len(str(i.get(c, ""))) for i in rows)) for c in cols}
    click.echo("  ".join(c.ljust(width[c]) for c in cols).rstrip())
    for i in rows:
        click.echo("  ".join(str(i.get(c, "")).ljust(width[c]) for c in cols).rstrip())
    if notes:
        click.echo("")
        for note in notes:
            click.echo(note)
