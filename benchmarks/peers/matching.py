"""When the sweep and the aihwkit peer script ran *the same* noise, and whether their
accuracies then agree (the peer benchmark's check, :mod:`benchmarks.peer_sweep`).

The two are different noise implementations calibrated by different procedures, so a point
(model, SNR) is *matched* when every layer's total SNR as realised in the test forward —
the sweep's ``layers.csv``, the peer's ``--measure`` meter — agrees within
:data:`MATCH_DB` (chip means). There the chip-mean accuracies must agree within
``max(ACC_TOL, chip range)``; unmatched points are reported with their SNR gap, not judged.
"""

from __future__ import annotations

import csv
import math
import statistics
from pathlib import Path
from typing import Any

ACC_TOL = 0.03
#: a point's layers realise the same SNR on both sides when they agree within this (dB)
MATCH_DB = 1.0


def sweep_accuracies(results_csv: Path) -> dict[tuple[str, float, int], float]:
    with open(results_csv, newline="", encoding="utf-8") as fh:
        return {(r["model_id"], float(r["snr_db"]), int(r["chip"])): float(r["value"])
                for r in csv.DictReader(fh) if r["metric"] == "accuracy"}


def peer_accuracies(rows: list[dict[str, Any]]) -> dict[tuple[str, float, int], float]:
    return {(r["model_id"], float(r["snr_db"]), int(r["chip"])): r["accuracy"] for r in rows}


def sweep_layer_snr(layers_csv: Path) -> dict[tuple[str, float, int, str], float]:
    """Each layer's realised total SNR in the sweep's test forward (``layers.csv``)."""
    with open(layers_csv, newline="", encoding="utf-8") as fh:
        return {(r["model_id"], float(r["snr_db"]), int(r["chip"]), r["layer"]):
                float(r["total_snr_db"]) for r in csv.DictReader(fh)}


def peer_layer_snr(rows: list[dict[str, Any]]) -> dict[tuple[str, float, int, str], float]:
    """Each layer's realised total SNR in the peer's test forward (``--measure``)."""
    return {(r["model_id"], float(r["snr_db"]), int(r["chip"]), n): v
            for r in rows for n, v in r.get("test_snr_db", {}).items()}


def snr_gaps(sweep: dict, peer: dict) -> dict[tuple[str, float], float]:
    """Per (model, SNR): the largest |peer − sweep| over layers of the chip-mean realised
    SNR (dB); inf where a layer is metered on one side only."""
    by: dict[tuple[str, float, str], list[list[float]]] = {}
    for src, table in ((0, sweep), (1, peer)):
        for (mid, snr, _chip, layer), v in table.items():
            by.setdefault((mid, snr, layer), [[], []])[src].append(v)
    gaps: dict[tuple[str, float], float] = {}
    for (mid, snr, _layer), (a, b) in by.items():
        fin = a and b and all(math.isfinite(v) for v in a + b)
        gap = abs(statistics.fmean(b) - statistics.fmean(a)) if fin else math.inf
        gaps[(mid, snr)] = max(gaps.get((mid, snr), 0.0), gap)
    return gaps


def compare_accuracy(sweep: dict, peer: dict,
                     gaps: dict[tuple[str, float], float] | None = None) -> list[dict[str, Any]]:
    """Per (model, SNR): both sides' chip-mean accuracy, the difference and its tolerance.

    With ``gaps`` (:func:`snr_gaps`) a point is *matched* when every layer's realised SNR
    agrees within :data:`MATCH_DB`; an unmatched point is reported, not judged (``ok`` None).
    """
    points: dict[tuple[str, float], list[tuple[float, float]]] = {}
    if set(sweep) != set(peer):
        return [{"model_id": "grid", "snr_db": math.nan, "ok": False, "delta": math.inf,
                 "tol": 0.0, "snr_gap": math.inf}]
    for key, acc in sweep.items():
        points.setdefault(key[:2], []).append((acc, peer[key]))
    out = []
    for (mid, snr), pairs in sorted(points.items()):
        s = [a for a, _ in pairs]
        p = [b for _, b in pairs]
        delta = statistics.fmean(p) - statistics.fmean(s)
        tol = max(ACC_TOL, max(s) - min(s), max(p) - min(p))
        gap = math.nan if gaps is None else gaps.get((mid, snr), math.inf)
        matched = gaps is None or gap <= MATCH_DB
        out.append({"model_id": mid, "snr_db": snr, "sweep": statistics.fmean(s),
                    "peer": statistics.fmean(p), "delta": delta, "tol": tol, "snr_gap": gap,
                    "ok": (abs(delta) <= tol) if matched else None})
    return out
