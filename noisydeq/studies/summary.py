"""Aggregate a study's rows over seeds: mean, standard deviation, min and max per group."""

from __future__ import annotations

import math
import statistics
from typing import Any

#: columns that identify a row group (everything but the seed and the measured values)
GROUP = ("task", "model", "kind", "cell", "width", "depth", "params", "train_snr_db",
         "shift_name", "shift", "budget", "max_iter", "solver", "solver_name", "noise_site",
         "test_snr_db", "metric")
MEASURED = ("value", "position_acc", "mean_steps", "converged_frac", "diverged_frac",
            "train_seconds", "eval_seconds")


def _key(row: dict[str, Any]) -> tuple:
    # NaN != NaN: give a missing shift a stable key
    return tuple("nan" if isinstance(row[c], float) and math.isnan(row[c]) else row[c]
                 for c in GROUP)


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per group with ``<measure>`` (mean), ``value_std``, ``value_min``, ``value_max``
    and ``seeds`` (how many were averaged); groups keep the order of first appearance."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(_key(r), []).append(r)
    out = []
    for members in groups.values():
        first = members[0]
        row = {c: first[c] for c in GROUP}
        vals = [m["value"] for m in members]
        finite = [v for v in vals if not math.isnan(v)]
        for c in MEASURED:
            xs = [m[c] for m in members if not math.isnan(m[c])]
            row[c] = sum(xs) / len(xs) if xs else math.nan
        row["value_std"] = statistics.stdev(finite) if len(finite) > 1 else 0.0
        row["value_min"] = min(finite) if finite else math.nan
        row["value_max"] = max(finite) if finite else math.nan
        row["seeds"] = len(members)
        out.append(row)
    return out
