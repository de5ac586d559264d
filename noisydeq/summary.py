"""Aggregation of the tidy sweep table and the condensed text summary printed by the CLI.

Aggregates are over chip instances and seeds: mean, min and max of the metric per
(model kind, depth, train SNR, inference SNR) — the quantities plotted in Fig. 1 / 7-12 —
with the fractions of samples whose solve diverged or did not meet its stop rule.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from noisydeq.errors import NoisyDEQError


@dataclass(frozen=True)
class Agg:
    """Metric statistics over chips and seeds for one (model, train SNR, SNR) point."""

    mean: float
    lo: float
    hi: float
    std: float
    count: int
    diverged_frac: float
    #: mean fraction of samples whose solve met its stop rule (1 for an FFW)
    converged_frac: float = 1.0


def _agg(values: Sequence[float], diverged: Sequence[float],
         converged: Sequence[float] | None = None) -> Agg:
    vals = [v for v in values if not math.isnan(v)]
    div = sum(diverged) / len(diverged)
    conv = sum(converged) / len(converged) if converged else 1.0
    if not vals:
        return Agg(math.nan, math.nan, math.nan, math.nan, 0, div, conv)
    mean = sum(vals) / len(vals)
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / len(vals))
    return Agg(mean, min(vals), max(vals), std, len(vals), div, conv)


ModelKey = tuple[str, int, int, int, float]  # kind, depth, width, params, train_snr_db


def aggregate(rows: Iterable[dict[str, Any]]) -> dict[ModelKey, dict[float, Agg]]:
    """{(kind, depth, width, params, train_snr): {snr_db: Agg}} over chips and seeds."""
    groups: dict[ModelKey, dict[float, tuple[list[float], ...]]] = defaultdict(dict)
    for r in rows:
        key = (r["kind"], int(r["depth"]), int(r["width"]), int(r["params"]), r["train_snr_db"])
        vals, div, conv = groups[key].setdefault(float(r["snr_db"]), ([], [], []))
        vals.append(float(r["value"]))
        div.append(float(r["diverged_frac"]))
        conv.append(float(r.get("converged_frac", 1.0)))
    return {
        k: {s: _agg(v, d, c) for s, (v, d, c) in sorted(levels.items())}
        for k, levels in sorted(groups.items(), key=lambda kv: (kv[0][4], kv[0][1], kv[0][0]))
    }


def split_native_rows(rows: Iterable[dict[str, Any]]
                      ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The rows of the SNR grid and those of the native level (``native`` true: the
    device at its own knobs, :class:`~noisydeq.specs.sweep.SweepSpec`); a table without
    the ``native`` column is all grid."""
    grid: list[dict[str, Any]] = []
    native: list[dict[str, Any]] = []
    for r in rows:
        (native if r.get("native") is True else grid).append(r)
    return grid, native


def condensed_levels(levels: Sequence[float], limit: int = 8) -> list[float]:
    """At most about ``limit`` columns: every level if few, else multiples of 5 dB (+ ∞)."""
    levels = sorted(levels)
    if len(levels) <= limit:
        return levels
    finite = [s for s in levels if math.isfinite(s)]
    for step in (5, 10, 20):
        picked = [s for s in finite if abs(s / step - round(s / step)) < 1e-9]
        if 2 <= len(picked) <= limit:
            break
    else:
        idx = sorted({round(i * (len(finite) - 1) / (limit - 1)) for i in range(limit)})
        picked = [finite[i] for i in idx]
    return picked + [s for s in levels if math.isinf(s)]


#: what a swept SNR sets in each noise mode (device noise; docs/devices.md, "Noise modes")
MODE_TEXT = {
    "physical": "total SNR; below each layer's native SNR only dynamic noise grows, above it "
                "static and dynamic noise shrink together",
    "dynamic": "dynamic SNR (read noise, converters); static noise at its physical level",
    "static": "static SNR (the chip's weight error); reads at their physical level",
    "both": "total SNR; one scale on static and dynamic noise",
}
#: what a swept SNR sets on a device with no static noise (static SNR ∞ at every level it ran,
#: e.g. the ``snr`` presets): its total SNR is its dynamic SNR; ``static`` mode adds one
NO_STATIC_TEXT = {
    "physical": "total SNR, which is the dynamic SNR: this device has no static noise "
                "(static SNR ∞)",
    "dynamic": "dynamic SNR (read noise, converters); this device has no static noise "
               "(static SNR ∞)",
    "both": "total SNR, one scale on the dynamic noise: this device has no static noise "
            "(static SNR ∞)",
}
#: the device that runs the digital weights as they are, adding no noise at any SNR level
IDEAL = "ideal"
#: what a sweep of device noise on the ideal device varied (figure titles, summary line)
IDEAL_TEXT = "ideal device: no noise at any level"
#: the SNR part each mode's level refers to (axis labels)
MODE_PART = {"physical": "total", "both": "total", "dynamic": "dynamic", "static": "static"}


def swept_part(rows: Sequence[dict[str, Any]]) -> str:
    """The SNR the level of ``rows`` refers to, for axis labels: ``device total SNR``,
    ``device dynamic SNR``, ``signal SNR`` (model noise at its site), ..."""
    if not rows:
        return "SNR"
    r = rows[0]
    if r.get("noise_site") != "device":
        return f"{r.get('noise_site', 'model')} SNR"
    return f"device {MODE_PART.get(r.get('noise_mode', ''), 'total')} SNR"


def swept_description(rows: Sequence[dict[str, Any]]) -> str:
    """One line saying what the sweep varied (device and noise mode, or the model-noise site)."""
    if not rows:
        return ""
    r = rows[0]
    if r.get("noise_site") != "device":
        return (f"swept: multiplicative {r.get('noise_site')} noise (paper Eq. 3-4) on device "
                f"{r.get('device')}")
    if r.get("device") == IDEAL:
        return f"swept: nothing ({IDEAL_TEXT}; it runs the digital weights)"
    mode = r.get("noise_mode", "")
    text = NO_STATIC_TEXT[mode] if mode in NO_STATIC_TEXT and no_static_noise(rows) \
        else MODE_TEXT.get(mode, mode)
    return f"swept: device {r.get('device')}, noise mode {mode}: {text}"


def no_static_noise(rows: Sequence[dict[str, Any]]) -> bool:
    """True when the device-noise ``rows`` measured no static noise at any finite level
    (``static_snr_db`` +∞ on every such row: the device has none, so no mode's level moves
    it); False when a row has some, or when nothing says (no finite level, no column)."""
    finite = [r for r in rows if math.isfinite(float(r.get("snr_db", math.inf)))]
    static = [float(r.get("static_snr_db", math.nan)) for r in finite]
    return bool(static) and all(v == math.inf for v in static)


def _fmt_value(v: float, metric: str) -> str:
    if math.isnan(v):
        return "nan"
    return f"{v:.3f}" if metric == "accuracy" else f"{v:.2e}"


def fmt_db(value: float,
           style: Literal["key", "table", "legend", "message"] = "key") -> str:
    """Text of an SNR in dB, the one function every id, key, table, figure and message writes
    it with. ``key`` (model ids, cell and cache keys, seeds): compact, ``12.5``, ``inf`` for
    no noise; ``table`` (tables, summaries, SNR tick labels): the same with ``∞``;
    ``legend`` (legend entries, the comparison tables' cells): ``12.5 dB``, or ``∞`` alone
    (no noise, as in ``train ∞``); ``message``: ``12.34 dB``, ``inf dB`` / ``-inf dB`` (no
    limit on that side) or ``undefined`` (nan) — any float gives a readable text."""
    if style == "legend":
        return "∞" if math.isinf(value) else f"{value:g} dB"
    if style == "message":
        if math.isnan(value):
            return "undefined"
        if math.isinf(value):
            return "inf dB" if value > 0 else "-inf dB"
        return f"{value:.2f} dB"
    if math.isinf(value):
        return "∞" if style == "table" else "inf"
    return f"{value:g}"


def summary_table(rows: Sequence[dict[str, Any]], limit: int = 8) -> str:
    """Text table: one line per model, the mean metric at (condensed) SNR columns.

    A trailing ``~`` marks points where some samples' solves did not meet their stop rule
    (``converged_frac`` < 1: their outputs are the iterates at the threshold), a trailing
    ``*`` points where some samples diverged (``diverged_frac`` > 0).
    """
    if not rows:
        return "(no results)"
    metric = rows[0]["metric"]
    grid, native = split_native_rows(rows)
    agg = aggregate(grid)
    native_agg = aggregate(native)
    for key in native_agg:  # a sweep of the native level alone
        agg.setdefault(key, {})
    levels = condensed_levels(sorted({float(r["snr_db"]) for r in grid}), limit)
    multi_train = len({k[4] for k in agg}) > 1
    head = ["model", "depth", "width", "params"] + (["train SNR"] if multi_train else [])
    head += [f"{fmt_db(s, 'table')} dB" for s in levels]
    native_db = sorted({float(r["snr_db"]) for r in native})
    if native:  # the device at its own knobs: a column of its own, after the grid's
        head.append("native " + "/".join(f"{s:.1f}" for s in native_db) + " dB")
    lines = []
    for (kind, depth, width, params, tsnr), by_snr in agg.items():
        cells = [kind.upper(), str(depth), str(width), f"{params:,}"]
        if multi_train:
            cells.append(f"{fmt_db(tsnr, 'table')} dB")
        for s in levels:
            a = by_snr.get(s)
            if a is None:
                cells.append("-")
            else:
                cells.append(_fmt_value(a.mean, metric) + _marks(a))
        if native:
            found = list(native_agg.get((kind, depth, width, params, tsnr), {}).values())
            cells.append(_fmt_value(found[0].mean, metric) + _marks(found[0])
                         if found else "-")
        lines.append(cells)
    widths = [max(len(h), *(len(c[i]) for c in lines)) for i, h in enumerate(head)]
    out = ["  ".join(h.rjust(w) for h, w in zip(head, widths, strict=False))]
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(c.rjust(w) for c, w in zip(cells, widths, strict=False)) for cells in lines]
    n_chips = len({r["chip"] for r in rows})
    n_seeds = len({r["seed"] for r in rows})
    notes = []
    if any(float(r.get("converged_frac", 1.0)) < 1 for r in rows):
        notes.append("~ = some samples did not converge (converged_frac < 1 in the table)")
    if any(r["diverged_frac"] > 0 for r in rows):
        notes.append("* = some samples diverged")
    out.append(
        f"{metric} (inference {swept_part(rows)} columns), mean over {n_chips} chip(s) × "
        f"{n_seeds} seed(s)"
        + "".join(f"; {n}" for n in notes)
    )
    out.append(swept_description(rows))
    return "\n".join(out)


def _marks(a: Agg) -> str:
    """``~`` when not every sample converged, ``*`` when some diverged (:func:`summary_table`)."""
    return ("~" if a.converged_frac < 1 else "") + ("*" if a.diverged_frac > 0 else "")


def summary_json(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Machine-readable aggregate: one record per model and SNR (JSON-safe: ∞ as "inf")."""

    def safe(v: float) -> float | str:
        return v if math.isfinite(v) else ("nan" if math.isnan(v) else ("inf" if v > 0 else "-inf"))

    out = []
    for label, group in training_groups(rows):  # a sweep trained on devices: per family
        hw = {}
        if label:
            first = group[0]
            hw = {"train_device": first["train_device"],
                  "train_device_snr_db": safe(float(first["train_device_snr_db"])),
                  "train_noise_mode": first["train_noise_mode"]}
        grid, native = split_native_rows(group)
        flagged = "native" in group[0]  # the sweep's grid held the native level
        for part, is_native in ((grid, False), (native, True)):
            for (kind, depth, width, params, tsnr), by_snr in aggregate(part).items():
                for s, a in by_snr.items():
                    out.append(
                        {
                            "kind": kind, "depth": depth, "width": width, "params": params,
                            "train_snr_db": safe(tsnr), **hw, "snr_db": safe(s),
                            **({"native": is_native} if flagged else {}),
                            "mean": safe(a.mean), "min": safe(a.lo), "max": safe(a.hi),
                            "n": a.count, "diverged_frac": a.diverged_frac,
                            "converged_frac": a.converged_frac,
                        }
                    )
    return out


def paired_table(rows: Sequence[dict[str, Any]], snr_db: float) -> str:
    """Markdown table: DEQ vs its matched FFW at one inference SNR, per training SNR and depth.

    Mean ± std over chips and seeds (the mean alone from a single chip and seed), and the
    difference DEQ − FFW (paper Fig. 1a-c).
    """
    metric = rows[0]["metric"]
    agg = aggregate(r for r in rows if float(r["snr_db"]) == snr_db)
    pairs: dict[tuple[float, int], dict[str, tuple[int, Agg]]] = defaultdict(dict)
    for (kind, depth, width, _params, tsnr), by_snr in agg.items():
        pairs[(tsnr, depth)][kind] = (width, by_snr[snr_db])
    fmt = (lambda v: f"{v:.3f}") if metric == "accuracy" else (lambda v: f"{v:.2e}")

    def spread(a: Agg) -> str:  # one chip of one seed has no spread: no "± 0.000"
        return f"{fmt(a.mean)} ± {fmt(a.std)}" if a.count > 1 else fmt(a.mean)

    out = [
        f"| training SNR | FFW depth | DEQ width | DEQ {metric} | FFW {metric} | DEQ − FFW |",
        "|---|---|---|---|---|---|",
    ]
    for (tsnr, depth), kinds in sorted(pairs.items(), key=lambda kv: (-kv[0][0], kv[0][1])):
        if "deq" not in kinds or "ffw" not in kinds:
            continue
        (w, d), (_, f) = kinds["deq"], kinds["ffw"]
        out.append(
            f"| {fmt_db(tsnr, 'table')} dB | {depth} | {w} | {spread(d)} | {spread(f)} | "
            f"{d.mean - f.mean:+.3g} |"
        )
    return "\n".join(out)


def training_label(row: dict[str, Any]) -> str:
    """How the model of a results row was trained, in words: ``digital`` or ``on <device>``
    (at its SNR or native, in its noise mode), plus signal training noise if any."""
    dev = row.get("train_device", "none")
    tsnr = float(row["train_snr_db"])
    noise = "" if math.isinf(tsnr) else f"signal noise {tsnr:g} dB"
    if dev in (None, "none"):
        return f"digital, {noise}" if noise else "digital"
    dsnr = float(row["train_device_snr_db"])
    where = "native" if math.isnan(dsnr) else f"{dsnr:g} dB"
    mode = row.get("train_noise_mode", "physical")
    text = f"on {dev} {where}" + ("" if mode == "physical" else f" ({mode})")
    return f"{text}, {noise}" if noise else text


def training_groups(rows: Sequence[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    """Rows split by :func:`training_label` (one group per family of a sweep that trains
    on devices, in the order of first appearance); one unnamed group otherwise."""
    if not rows or "train_device" not in rows[0]:
        return [("", list(rows))]
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(training_label(r), []).append(r)
    return list(groups.items())


#: where :func:`convergence_lines` sends the reader for a sweep's per-cell numbers
SWEEP_CONVERGENCE_COLUMNS = ("converged_frac, diverged_frac in {table} (a sweep records no "
                             "residuals)")


def convergence_lines(rows: Sequence[dict[str, Any]], rules: dict[str, str] | None = None,
                      limit: int = 5, key: Callable[[dict[str, Any]], str] | None = None,
                      columns: str = SWEEP_CONVERGENCE_COLUMNS, table: str = "results.csv"
                      ) -> list[str]:
    """The sweep's convergence summary (:func:`noisydeq.convergence.report_lines`): one line
    per model whose samples diverged or missed their stop rule at some (SNR level, chip),
    from the table's ``converged_frac`` / ``diverged_frac`` (a resumed run says the same);
    ``rules``: model name → its test solver's stop rule in words; ``key``: a row's model
    name (default its ``model_id``); ``columns``: where the lines say the detail is, with
    ``{table}`` replaced by ``table`` (the run's table)."""
    from noisydeq.convergence import report_lines, tally_rows

    def where(r: dict[str, Any]) -> str:
        chips = f", chip {r['chip']}" if r.get("chip") else ""
        native = " (native)" if r.get("native") is True else ""
        return f"SNR {fmt_db(float(r['snr_db']))} dB{native}{chips}"

    tallies = tally_rows(rows, key or (lambda r: r["model_id"]), rules, where,
                         unit="points (SNR, chip)")
    return report_lines(tallies, columns.format(table=table), limit)


def rows_at_level(rows: list[dict[str, Any]], level: float | None, run: Any
                  ) -> tuple[list[dict[str, Any]], float]:
    """A sweep's rows and the level in dB to read them at: all rows at ``level``, or with
    ``level`` None its native level's rows (the ``native`` column) at their ``snr_db``;
    one line naming ``run`` when it has no native level."""
    if level is not None:
        return rows, level
    _grid, rows = split_native_rows(rows)
    if not rows:
        raise NoisyDEQError(f"{run}: no native level in its results (a sweep with "
                            "--snr ...,native has one)")
    return rows, rows[0]["snr_db"]
