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


#: where :func:`convergence_lines` sends the reader for a study's per-row numbers
CONVERGENCE_COLUMNS = ("converged_frac, diverged_frac (with solver, budget, max_iter) in "
                       "{table} (a study records no residuals)")


def convergence_lines(rows: list[dict[str, Any]], test_solvers: dict[str, Any] | None = None,
                      limit: int = 5, table: str = "results.csv") -> list[str]:
    """The study's convergence summary (:func:`noisydeq.convergence.report_lines`): one
    line per model (name and seed) whose samples diverged or missed their test solver's
    stop rule in some row (test set × budget × test solver × test SNR), from the rows'
    ``converged_frac`` / ``diverged_frac``. The stop rule is said per named test solver
    (``test_solvers``, the spec's; the model's own: its method only) with the caps the rows
    ran (a budget scales them with the problem size); ``table``: the study's table, as the
    lines name it."""
    from noisydeq.convergence import STOP_WORDS, report_lines, tally_rows

    test_solvers = test_solvers or {}
    caps: dict[tuple[str, int], dict[str, set[int]]] = {}
    for r in rows:
        caps.setdefault((r["model"], r["seed"]), {}).setdefault(
            (r["solver"], r["solver_name"]), set()).add(int(r["max_iter"]))

    def rule(model: str, seed: int) -> str:
        out = []
        for (sname, method), its in caps[(model, seed)].items():
            if method == "-":
                continue
            spec = test_solvers.get(sname)
            what = (f"{STOP_WORDS.get(spec.stop, spec.stop)} ≤ {spec.tol:g}" if spec
                    else "the model's own test_solver's rule")
            cap = (f"{min(its)}" if len(its) == 1 else f"{min(its)}-{max(its)}")
            out.append(f"{sname}: {what} within {cap} {method} steps")
        return "; ".join(out)

    def name(r: dict[str, Any]) -> str:
        return f"{r['model']} seed {r['seed']}"

    def where(r: dict[str, Any]) -> str:
        shift = "" if isinstance(r["shift"], float) and math.isnan(r["shift"]) else \
            f"size {r['shift']:g}, "
        snr = r["test_snr_db"]
        snr_text = "inf" if isinstance(snr, float) and math.isinf(snr) else f"{snr:g}"
        return (f"{shift}solver {r['solver']}, budget {r['budget']}, max_iter {r['max_iter']}, "
                f"SNR {snr_text} dB")

    rules = {name(r): rule(r["model"], r["seed"]) for r in rows}
    tallies = tally_rows(rows, name, rules, where, unit="rows")
    return report_lines(tallies, CONVERGENCE_COLUMNS.format(table=table), limit)
