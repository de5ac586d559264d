"""``noisydeq runs [DIR...]``: the run directories below DIR (default ``runs``), what each is
(``kind``: a sweep, an attack run — its seed and the family or checkpoint it attacked —, a
LyaDEQ experiment's own folder, or a sweep of its device table, with the experiment it
belongs to, or a certify run — ``noisydeq certify --out``: what it certified, its device and
ε grid and its cells complete, missing or of no current grid), their specs and status —
finished (table written, digests good; an experiment: report and the tables of its spec
written), partial (cells written, resumable), running (another process holds the
directory's lock) or damaged (a file fails its check).

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
META = "meta.json"


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
#: a certify run (``noisydeq certify --out``: no config.toml, its meta.json says
#: ``"run": "certify"``, :mod:`noisydeq.analysis.certify_run`)
CERTIFY = "certify"
#: the meta.json entry of a certify run listing its grid's cell files
#: (:data:`noisydeq.analysis.certify_run.GRID`, not imported: it loads torch)
GRID = "grid_cells"


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
    from noisydeq.loading import read_run_config

    info: dict[str, Any] = {"run": str(run), "kind": "", "cells":
                            len(list(run.glob("cells/*.json")))}
    if _is_certify(run):
        return _describe_certify(run, info)
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
    info["status"] = _table_status(run)
    info["modified"] = time.strftime("%Y-%m-%d %H:%M", time.localtime(_modified(run)))
    return info


def _table_status(run: Path, damaged: str = "") -> str:
    """The status of a run of cells and a sealed table: running (its lock held), damaged
    (``damaged``: a file the caller found failing its check; or the tables fail
    ``SHA256SUMS``), finished (table written, digests good), else partial."""
    from noisydeq import store

    if _held(run):
        return "running"
    if damaged:
        return f"damaged ({damaged})"
    if (run / "results.csv").is_file() and (run / store.MANIFEST).is_file():
        try:
            store.verify_manifest(run)
        except NoisyDEQError as err:
            return f"damaged ({str(err).splitlines()[0]})"
        return "finished"
    return "partial (run the same command again to resume)"


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


#: what a certify run writes (no config.toml)
CERTIFY_WRITTEN = (META, "cells", "results.csv", "SHA256SUMS")


def _loose_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, its digest unchecked (to tell what a directory is);
    None when there is none."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def _is_certify(p: Path) -> bool:
    """A certify run directory: no config.toml, cells or a table written, and its
    meta.json a certify run's — or, a meta.json damaged past reading, a cell of one (a
    study's directory holds cells and a meta.json too)."""
    if (p / CONFIG).exists() or not _is_run(p):
        return False
    meta = _loose_json(p / META)
    if meta is not None:
        return meta.get("run") == CERTIFY
    cell = next(iter(sorted(p.glob("cells/*.json"))), None)
    key = (_loose_json(cell) or {}).get("key") if cell is not None else None
    return isinstance(key, str) and key.startswith(f"{CERTIFY}|")


def _grid_cells(run: Path, grid: set[str] | None) -> tuple[dict[str, int | None], str]:
    """The cells of a certify run: of its grid (file names, None: a run from before the
    grid was recorded) complete and missing, the other cells (of no current grid: another
    ε grid, models or settings; None without a grid) and the files of ``cells/`` that are
    no readable cell; and the first grid cell that fails its check ('' for none) — what the
    same command would refuse. Digests and keys are checked; nothing is loaded or
    written."""
    from noisydeq import store
    from noisydeq.results import CELL_FORMAT, RunDir

    complete = other = unreadable = 0
    damaged = ""
    files = sorted(run.glob("cells/*.json"))
    for path in files:
        ours = grid is not None and path.name in grid
        try:
            record = store.read_signed_json(path, "cell file")
            key = record.get("key")
            if record.get("format") != CELL_FORMAT or not isinstance(key, str):
                raise NoisyDEQError(f"{path}: has format {record.get('format')!r}, not "
                                    f"{CELL_FORMAT}")
            if RunDir.cell_file_name(key) != path.name:
                raise NoisyDEQError(f"{path}: holds the cell of another key ({key!r})")
        except NoisyDEQError as err:
            if ours:
                damaged = damaged or str(err).splitlines()[0]
            else:
                unreadable += 1
            continue
        complete += ours
        other += not ours
    if grid is None:
        return {"complete": None, "missing": None, "other": None,
                "unreadable": unreadable}, ""
    return {"complete": complete, "missing": len(grid - {p.name for p in files}),
            "other": other, "unreadable": unreadable}, damaged


def _describe_certify(run: Path, info: dict[str, Any]) -> dict[str, Any]:
    """A certify run (``noisydeq certify --out``), from its meta.json and cell files alone
    (no model read): what it certified (``certified``: the source, or the experiment), its
    models' labels, task, device (``-``: the digital weights alone), chip (``chip``: a
    measured chip's index; ``chips`` stays empty, a count of the other kinds), PGD seed and ε
    grid; its cells complete, missing and of no current grid; and its status by the rules
    of the other kinds — damaged when meta.json, a cell of its grid or a table fails its
    check, finished when its table is written and sealed (its grid complete), else partial
    (the same command resumes it), running while its lock is held."""
    from noisydeq import store

    info["kind"] = CERTIFY
    modified = time.strftime("%Y-%m-%d %H:%M",
                             time.localtime(_modified(run, CERTIFY_WRITTEN)))
    try:
        meta = store.read_signed_json(run / META, "meta.json")
    except NoisyDEQError as err:
        return {**info, "status": f"damaged ({str(err).splitlines()[0]})",
                "modified": modified}
    settings = meta.get("settings") if isinstance(meta.get("settings"), dict) else {}
    grid = meta.get(GRID)
    grid = set(map(str, grid)) if isinstance(grid, list) else None
    counts, damaged = _grid_cells(run, grid)
    chip, models = settings.get("chip"), meta.get("models")
    experiment = meta.get("experiment")
    info.update({
        "task": _compact(meta.get("task", "")), "device": settings.get("device"),
        "noise_site": None, "depths": None, "snr_db": None,
        # the chips column counts a sweep's or an attack's simulated chips; a certify run's
        # envelope covers every chip, or one measured chip (``chip``: its index)
        "chips": None, "chip": None if chip is None else _compact(chip),
        "seeds": _compact(settings.get("seed", "")), "train_snr_db": None,
        "eps": _compact(settings.get("eps", "")),
        "certified": meta.get("source") or (f"experiment {experiment}" if experiment
                                            else None),
        "models": models if isinstance(models, list) else None,
        **{f"cells_{k}": v for k, v in counts.items()},
    })
    missing = counts["missing"]
    status = _table_status(run, damaged)
    if status == "finished" and missing:  # a cell of its grid gone since the table
        status = (f"partial ({missing} cell{'s' * (missing != 1)} of its grid missing: "
                  "run the same command again to resume)")
    return {**info, "status": status, "modified": modified}


def _certify_note(i: dict[str, Any]) -> str:
    """The line after the table that tells a certify run from another: what it certified,
    its models, device and ε grid, and its cells."""
    models = i.get("models") or []
    shown = ", ".join(models[:3]) + (f", … ({len(models)} models)" if len(models) > 3 else "")
    what = f"certify of {i.get('certified') or '?'}" + (f" ({shown})" if shown else "")
    if i.get("device"):
        where = f"on {i['device']}" + (f" chip {i['chip']}" if i.get("chip") else "")
    else:
        where = "digital weights only"
    if i.get("cells_complete") is None:
        parts = ["its grid not recorded (a certify run of an older noisydeq)"]
    else:
        parts = [f"{i['cells_complete']} complete", f"{i['cells_missing']} missing"]
    if i.get("cells_other"):
        parts.append(f"{i['cells_other']} of no current grid")
    if i.get("cells_unreadable"):
        parts.append(f"{i['cells_unreadable']} no readable cell")
    return f"{i['run']}: {what}, {where}, ε {i.get('eps') or '?'}; cells: {', '.join(parts)}"


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
        # sweeps) every run below, certify runs (no config.toml: their meta.json) too
        one = ((root / CONFIG).is_file() and _is_run(root)
               and not _is_experiment_dir(root)) or _is_certify(root)
        cands = [root] if one else sorted(
            {p.parent for p in root.rglob(CONFIG)}
            | {p.parent for p in root.rglob(META) if _is_certify(p.parent)})
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
    lyapunov experiment, lyapunov sweep, certify), its spec and status.

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
        if i.get("kind") == CERTIFY and "cells_missing" in i:
            notes.append(_certify_note(i))
    width = {c: max(len(c), *(len(str(i.get(c, ""))) for i in rows)) for c in cols}
    click.echo("  ".join(c.ljust(width[c]) for c in cols).rstrip())
    for i in rows:
        click.echo("  ".join(str(i.get(c, "")).ljust(width[c]) for c in cols).rstrip())
    if notes:
        click.echo("")
        for note in notes:
            click.echo(note)
