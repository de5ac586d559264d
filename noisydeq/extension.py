"""Extending a sweep's run directory: the grids a run may grow in, and the union spec.

A run directory holds one sweep. Asked again for the same sweep with more inference SNR
levels, chips, seeds, depths or kinds (the :data:`GROWABLE` grids), it grows into the
*union* of what it holds and what was asked (:func:`union_spec`): every cell it already has
is reused (a cell's key names its model, chip and levels, never the grid around them), only
the new ones are computed, and the tables and figures are rewritten over all cells. Any
other field (task, device, noise site or mode, training SNRs, epochs, ...) changes the
existing cells and is refused by :meth:`noisydeq.results.RunDir.check`.

What each extension added is recorded in ``meta.json`` (``extensions``, :func:`added_grids`),
because the SNR chunks of the cells already written follow the grid they were computed
with: :func:`level_groups` gives the original grid and each extension's new levels, chunked
separately, so the old cells are found again under their keys. A device is calibrated per
group too (:meth:`noisydeq.sweep.hardware.Hardware.chip`: in-network calibration searches a
grid's levels in ascending order, each from the one before), so every row of an extended
run is the row a fresh run of its level's group gives — a fresh run of the union, byte for
byte, wherever calibration does not depend on the grid (model noise, no calibration data).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

from noisydeq.specs.base import build
from noisydeq.specs.noise import NATIVE
from noisydeq.specs.sweep import SweepSpec

#: the sweep fields a run directory may grow in (every other field identifies its cells)
GROWABLE: tuple[str, ...] = ("snr_db", "chips", "seeds", "depths", "kinds")


def _ordered_union(a: Sequence[Any], b: Sequence[Any]) -> list[Any]:
    return list(dict.fromkeys([*a, *b]))


def union_spec(recorded: SweepSpec, requested: SweepSpec) -> SweepSpec:
    """``requested`` with its grids grown to hold ``recorded``'s too: SNR levels and depths
    merged (sorted, as their fields are), seeds and kinds the recorded ones first, chips the
    larger count. Validated again (e.g. the bound on seeds), one line naming the field."""
    grown = {
        "snr_db": sorted(set(recorded.snr_db) | set(requested.snr_db)),
        "depths": sorted(set(recorded.depths) | set(requested.depths)),
        "seeds": _ordered_union(recorded.seeds, requested.seeds),
        "kinds": _ordered_union(recorded.kinds, requested.kinds),
        "chips": max(recorded.chips, requested.chips),
        # the native level (serialised in snr_db): held by either, held by the union
        "snr_native": recorded.snr_native or requested.snr_native,
    }
    return build(SweepSpec, {**requested.model_dump(), **grown}, where="extended sweep")


def _db_text(v: float) -> str:
    return "inf" if math.isinf(v) else repr(float(v))


def added_grids(recorded: SweepSpec, grown: SweepSpec) -> dict[str, Any]:
    """What ``grown`` adds to ``recorded``, JSON-ready (SNR levels as text, ``inf`` spelled
    out; chips as the counts before and after); empty when it adds nothing."""
    out: dict[str, Any] = {}
    snr = [_db_text(s) for s in grown.snr_db if s not in set(recorded.snr_db)]
    if grown.snr_native and not recorded.snr_native:
        snr.append(NATIVE)  # a cell of its own: no calibration group (level_groups)
    if snr:
        out["snr_db"] = snr
    for name in ("seeds", "depths", "kinds"):
        new = [v for v in getattr(grown, name) if v not in set(getattr(recorded, name))]
        if new:
            out[name] = new
    if grown.chips > recorded.chips:
        out["chips"] = [recorded.chips, grown.chips]
    return out


def history_entry(added: dict[str, Any]) -> dict[str, Any]:
    """One ``meta.json`` ``extensions`` entry: when, and what was added."""
    return {"at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "added": added}


def level_groups(snr_db: Sequence[float], extensions: Any) -> list[list[float]]:
    """The SNR grid ``snr_db`` cut into the grid the run began with and the levels each
    recorded extension added (each group in grid order; a level belongs to the first
    extension that added it; groups left empty are dropped). Without extensions: one group."""
    entries = extensions if isinstance(extensions, list) else []
    owner: dict[float, int] = {}
    for i, entry in enumerate(entries, start=1):
        added = entry.get("added", {}) if isinstance(entry, dict) else {}
        levels = added.get("snr_db", []) if isinstance(added, dict) else []
        for text in levels if isinstance(levels, list) else []:
            try:
                owner.setdefault(float(text), i)
            except (TypeError, ValueError):
                continue
    groups: list[list[float]] = [[] for _ in range(len(entries) + 1)]
    for s in snr_db:
        groups[owner.get(float(s), 0)].append(s)
    return [g for g in groups if g]
