"""DEQ against its parameter-matched FFW(s) at one inference SNR, across sweep runs.

The paper's comparison (Fig. 1a-c, Fig. 7-9): per training SNR and FFW depth, the metric of
the DEQ and of each FFW form at one inference SNR, mean ± standard deviation over seeds with
the per-seed values, the paired difference DEQ − FFW per seed and a verdict that needs every
seed to agree. Several run directories may be given — typically one per FFW form (the
default ``eq57x`` and the previous ``eq57``) of the same study; the DEQs of such runs are the
same cached models evaluated with the same seeds, which is checked. A second table gives the
effect of training noise on each model's metric at that SNR (Fig. 1d).

Everything is read from the runs' ``results.csv`` and ``config.toml``; nothing is recomputed.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from noisydeq.errors import NoisyDEQError
from noisydeq.results import read_csv
from noisydeq.specs.model import FFW_FORMS
from noisydeq.specs.sweep import SweepSpec
from noisydeq.specs.toml import loads_toml
from noisydeq.summary import _fmt_value, fmt_db, rows_at_level

Key = tuple[float, int]  # (training SNR, FFW depth)

#: SweepSpec fields that runs compared side by side must share
SAME_FIELDS = ("task", "device", "noise_site", "snr_scale", "hidden", "input_act",
               "train_site", "train_preset", "epochs", "max_train_samples", "max_test_samples")


@dataclass
class Run:
    """One sweep run directory: its resolved spec and its tidy rows."""

    path: Path
    spec: SweepSpec
    rows: list[dict[str, Any]]

    @property
    def form(self) -> str:
        """The FFW form its FFWs were built with (``None`` in the spec = the default)."""
        return self.spec.ffw_form or FFW_FORMS[0]


def load_run(path: str | Path, what: str = "compare") -> Run:
    """Read a run directory of ``noisydeq sweep`` / ``noisydeq run``; one clear error (led
    by ``what``, the command) if not."""
    p = Path(path)
    config, csv_path = p / "config.toml", p / "results.csv"
    if not config.is_file() or not csv_path.is_file():
        raise NoisyDEQError(
            f"{what}: {p} is not a finished sweep run directory (needs config.toml and "
            "results.csv)"
        )
    spec = loads_toml(SweepSpec, config.read_text(encoding="utf-8"), where=str(config))
    return Run(p, spec, read_csv(csv_path))


def at_level(runs: list[Run], level: float | None) -> tuple[list[Run], float]:
    """``runs`` and the inference level (dB) to compare them at: ``level``, or with ``level``
    None (``--snr native``) each run's native level rows (their level, one for all runs)."""
    if level is not None:
        return runs, level
    found = []
    for run in runs:
        rows, at = rows_at_level(run.rows, None, f"compare: {run.path}")
        found.append((replace(run, rows=rows), at))
    levels = sorted({at for _, at in found})
    if len(levels) > 1:
        raise NoisyDEQError("compare: the runs' native levels differ ("
                            + ", ".join(f"{v:.4f}" for v in levels) + " dB): compare them "
                            "one at a time")
    return [r for r, _ in found], levels[0]


@dataclass
class Cell:
    """Per-seed metric values (mean over chips) of one model at one SNR, and convergence."""

    width: int
    by_seed: dict[int, float] = field(default_factory=dict)
    converged: list[float] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.by_seed.values())

    @property
    def std(self) -> float:
        """Sample standard deviation over seeds (0 for one seed)."""
        vals = list(self.by_seed.values())
        return statistics.stdev(vals) if len(vals) > 1 else 0.0

    @property
    def converged_frac(self) -> float:
        return statistics.fmean(self.converged) if self.converged else math.nan


def cells(rows: list[dict[str, Any]], kind: str, snr_db: float) -> dict[Key, Cell]:
    """{(training SNR, depth): Cell} of ``kind`` at inference SNR ``snr_db``."""
    acc: dict[Key, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    out: dict[Key, Cell] = {}
    for r in rows:
        if r["kind"] != kind or float(r["snr_db"]) != snr_db:
            continue
        key = (float(r["train_snr_db"]), int(r["depth"]))
        acc[key][int(r["seed"])].append(float(r["value"]))
        cell = out.setdefault(key, Cell(int(r["width"])))
        cell.converged.append(float(r["converged_frac"]))
    for key, seeds in acc.items():
        out[key].by_seed = {s: statistics.fmean(v) for s, v in sorted(seeds.items())}
    return out


def verdict(deq: Cell, ffw: Cell, higher_is_better: bool) -> str:
    """``DEQ`` / ``FFW`` when that model is better in every common seed, ``equal`` when they
    tie in every seed, else ``mixed``."""
    seeds = sorted(set(deq.by_seed) & set(ffw.by_seed))
    if not seeds:
        return "-"
    sign = 1.0 if higher_is_better else -1.0
    diffs = [sign * (deq.by_seed[s] - ffw.by_seed[s]) for s in seeds]
    if all(d > 0 for d in diffs):
        return "DEQ"
    if all(d < 0 for d in diffs):
        return "FFW"
    return "equal" if all(d == 0 for d in diffs) else "mixed"


def _cell_text(c: Cell, metric: str) -> str:
    seeds = ", ".join(_fmt_value(v, metric) for v in c.by_seed.values())
    spread = f" ± {_fmt_value(c.std, metric)}" if len(c.by_seed) > 1 else ""
    return f"{_fmt_value(c.mean, metric)}{spread} ({seeds})"


def comparison(runs: list[Run], snr_db: float) -> dict[str, Any]:
    """The DEQ-vs-FFW table data of ``runs`` at ``snr_db`` (see the module docstring)."""
    if not runs:
        raise NoisyDEQError("compare: give at least one run directory")
    metrics = {r["metric"] for run in runs for r in run.rows}
    if len(metrics) != 1:
        raise NoisyDEQError(f"compare: the runs report different metrics {sorted(metrics)}")
    metric = metrics.pop()
    for name in SAME_FIELDS:
        values = {repr(getattr(run.spec, name)) for run in runs}
        if len(values) > 1:
            raise NoisyDEQError(
                f"compare: the runs differ in {name} ({', '.join(sorted(values))}); compare "
                "runs of one study (they may differ in ffw_form, kinds, seeds and grids)"
            )
    levels = sorted({float(r["snr_db"]) for run in runs for r in run.rows})
    if snr_db not in levels:
        have = ", ".join(fmt_db(s, "legend") for s in levels) if len(levels) <= 8 else (
            f"{fmt_db(levels[0], 'legend')} … {fmt_db(levels[-1], 'legend')}, {len(levels)} levels")
        raise NoisyDEQError(
            f"compare: no results at {fmt_db(snr_db, 'legend')} (the runs have {have})")
    deq: dict[Key, Cell] = {}
    ffw: dict[str, dict[Key, Cell]] = {}
    notes: list[str] = []
    for run in runs:
        for key, c in cells(run.rows, "deq", snr_db).items():
            if key in deq and deq[key].by_seed != c.by_seed:
                notes.append(f"DEQ at training SNR {fmt_db(key[0], 'legend')}, depth {key[1]} "
                             f"differs between runs ({run.path}); the first run's values are used")
            deq.setdefault(key, c)
        found = cells(run.rows, "ffw", snr_db)
        if found:
            if run.form in ffw:
                raise NoisyDEQError(f"compare: two runs hold FFWs of form {run.form}")
            ffw[run.form] = found
    return {"metric": metric, "snr_db": snr_db, "deq": deq, "ffw": ffw, "notes": notes}


def markdown(data: dict[str, Any]) -> str:
    """Markdown tables of :func:`comparison`: DEQ vs each FFW form, and the effect of
    training noise on each model."""
    metric, snr = data["metric"], data["snr_db"]
    higher = metric == "accuracy"
    deq, ffw = data["deq"], data["ffw"]
    forms = sorted(ffw, key=lambda f: FFW_FORMS.index(f) if f in FFW_FORMS else 99)
    keys = sorted(set(deq) | {k for f in forms for k in ffw[f]}, key=lambda k: (-k[0], k[1]))
    head = ["training SNR", "FFW depth", "DEQ width", f"DEQ {metric}", "DEQ converged"]
    for f in forms:
        head += [f"FFW {f} {metric}", f"DEQ − FFW {f}", "better (every seed)"]
    at = f"the native level ({snr:.1f} dB: the device at its own knobs)" \
        if data.get("native") else f"{fmt_db(snr, 'legend')} inference SNR"
    lines = [f"{metric} at {at}; mean ± sample std over seeds (per seed)",
             "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key in keys:
        d = deq.get(key)
        row = [fmt_db(key[0], "legend"), str(key[1]), str(d.width) if d else "-",
               _cell_text(d, metric) if d else "-",
               f"{d.converged_frac:.2f}" if d else "-"]
        for f in forms:
            c = ffw[f].get(key)
            if c is None:
                row += ["-", "-", "-"]
                continue
            diff = f"{d.mean - c.mean:+.3g}" if d else "-"
            row += [_cell_text(c, metric), diff, verdict(d, c, higher) if d else "-"]
        lines.append("| " + " | ".join(row) + " |")
    effect = _training_effect(deq, ffw, forms, metric)
    if effect:
        lines += ["", effect]
    lines += [f"note: {n}" for n in data["notes"]]
    return "\n".join(lines)


def _training_effect(deq: dict[Key, Cell], ffw: dict[str, dict[Key, Cell]], forms: list[str],
                     metric: str) -> str:
    """Per model and depth: the metric at each training SNR minus the noise-free one."""
    models = [("DEQ", deq)] + [(f"FFW {f}", ffw[f]) for f in forms]
    trains = sorted({k[0] for _, t in models for k in t}, key=lambda s: -s)
    if len(trains) < 2 or not math.isinf(trains[0]):
        return ""
    head = ["model", "depth"] + [f"train {fmt_db(s, 'legend')} − train ∞" for s in trains[1:]]
    lines = [f"change of the {metric} by training noise (paired by seed)", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, table in models:
        for depth in sorted({k[1] for k in table}):
            base = table.get((math.inf, depth))
            if base is None:
                continue
            row = [name, str(depth)]
            for s in trains[1:]:
                c = table.get((s, depth))
                seeds = sorted(set(base.by_seed) & set(c.by_seed)) if c else []
                if not seeds:
                    row.append("-")
                    continue
                diffs = [c.by_seed[k] - base.by_seed[k] for k in seeds]
                every = " (every seed)" if all(x > 0 for x in diffs) or all(
                    x < 0 for x in diffs) else ""
                row.append(f"{statistics.fmean(diffs):+.3g}{every}")
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)
