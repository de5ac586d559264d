"""Noise modes: which part of a device's noise a target SNR sets (docs/devices.md, "Noise modes").

Every device layer has two knobs, one for its static noise (per chip) and one for its
dynamic noise (per read), with physical values (the preset's) called *native*; each knob
moves the SNR of its part monotonically (:mod:`noisydeq.hardware.parts` defines the parts).
A target SNR is met by moving one knob, or both along the device's *joint* path (one scale s
on every noise source, s = 1 at the native point), as the mode says:

* ``dynamic`` — the dynamic knob; the static part stays at its physical level. The target
  is the **dynamic** SNR: a chip is programmed once, whatever the level.
* ``static`` — the static knob; the dynamic part stays physical. The target is the
  **static** SNR: the reads are the same at every level.
* ``both`` — the joint path; the target is the **total** SNR (one knob on everything).
* ``physical`` (default) — the target is the **total** SNR. Below the layer's native total
  SNR only the dynamic knob moves (programming keeps its physical precision: a device run
  with less read energy, lower optical power, coarser converters); above it the joint path
  from the native point (more precise programming *and* quieter reads: a better device).

A layer searches its knob on its own weights and calibration inputs with common random
numbers (:mod:`noisydeq.hardware.calibration`), so the measured part is a deterministic
function of the knob. A layer with no signal on its inputs (Σ‖Wx‖² = 0: all-zero inputs or
zero weights) has no SNR; it keeps the native knobs and is not calibrated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from noisydeq.errors import NoisyDEQError
from noisydeq.hardware.calibration import (
    PRIOR_DB_PER_NAT,
    KnobTable,
    bisect_log,
    check_reachable,
)
from noisydeq.specs.base import suggest_name
from noisydeq.specs.device import NOISE_MODES

#: (static knob, dynamic knob) of a device layer
Knobs = tuple[float, float]
#: a device layer (:class:`noisydeq.hardware.base.DeviceLayer`; not imported: base uses this)
DeviceLayer = Any

DEFAULT_MODE = NOISE_MODES[0]
#: the SNR part a target refers to in each mode
TARGET_PART = {"physical": "total", "both": "total", "dynamic": "dynamic", "static": "static"}
#: a search that ends further than this from its target checks the reachable range
MISS_DB = 0.3
#: tolerance of a search (dB): knobs within it of the target are kept
TOL_DB = 0.05


def check_mode(mode: object, where: str = "noise_mode") -> str:
    """``mode`` if it is a noise mode; otherwise one clear error with a suggestion."""
    if mode in NOISE_MODES:
        return str(mode)
    raise NoisyDEQError(f"{where}: {suggest_name('noise mode', mode, NOISE_MODES)}")


@dataclass(frozen=True)
class Route:
    """One knob path of a layer: which knob moves, in which bracket, and the part it meets."""

    path: str  # "static", "dynamic" or "joint"
    part: str  # "static", "dynamic" or "total"
    lo: float
    hi: float
    increasing: bool  # the part's SNR rises with the knob
    start: float  # the native point's knob on this path (clamped into the bracket)

    def knobs(self, layer: DeviceLayer, k: float) -> Knobs:
        static, dynamic = layer.native_knobs()
        if self.path == "static":
            return (float(k), dynamic)
        if self.path == "dynamic":
            return (static, float(k))
        return layer.joint_knobs(float(k))

    def knob_of(self, layer: DeviceLayer, knobs: Knobs) -> float | None:
        """The knob on this path that gives ``knobs`` (None if they are not on it)."""
        static, dynamic = layer.native_knobs()
        if self.path == "static":
            k = knobs[0] if knobs[1] == dynamic else None
        elif self.path == "dynamic":
            k = knobs[1] if knobs[0] == static else None
        else:
            k = layer.joint_scale(knobs)
        return k if k is not None and self.lo <= k <= self.hi else None

    def snr(self, layer: DeviceLayer, k: float, x: Tensor) -> float:
        parts = layer.measure_parts(self.knobs(layer, k), x, dynamic=self.part != "static")
        return parts.db(self.part)

    def low_db(self, layer: DeviceLayer, x: Tensor) -> float:
        """Lowest SNR of the part along the path (at the noisier end of its bracket)."""
        return self.snr(layer, self.hi if not self.increasing else self.lo, x)

    def high_db(self, layer: DeviceLayer, x: Tensor) -> float:
        """Highest SNR of the part along the path (at the quieter end of its bracket)."""
        return self.snr(layer, self.lo if not self.increasing else self.hi, x)


def _clamp(v: float, lo: float, hi: float) -> float:
    return min(max(v, lo), hi)


def _path(layer: DeviceLayer, path: str, part: str, lo: float | None = None,
          hi: float | None = None) -> Route:
    static, dynamic = layer.native_knobs()
    if path == "joint":
        b_lo, b_hi = layer.joint_bounds()
        start, increasing = 1.0, False
    else:
        which = 0 if path == "static" else 1
        b_lo, b_hi = layer.knob_bounds(which)
        start, increasing = (static, dynamic)[which], layer.raises_snr[which]
    lo = b_lo if lo is None else lo
    hi = b_hi if hi is None else hi
    return Route(path, part, lo, hi, increasing, _clamp(start, lo, hi))


def routes(layer: DeviceLayer, mode: str) -> list[Route]:
    """The paths of ``mode``, lowest SNRs first (two for ``physical``: below and above the
    native point)."""
    part = TARGET_PART[mode]
    if mode in ("static", "dynamic"):
        return [_path(layer, mode, part)]
    if mode == "both":
        return [_path(layer, "joint", part)]
    # physical: the dynamic knob towards lower SNR from the native point, then the joint
    # path towards higher SNR from it (s <= 1)
    dynamic = layer.native_knobs()[1]
    lo, hi = layer.knob_bounds(1)
    down = (_path(layer, "dynamic", part, lo=lo, hi=_clamp(dynamic, lo, hi))
            if layer.raises_snr[1] else _path(layer, "dynamic", part, lo=_clamp(dynamic, lo, hi),
                                              hi=hi))
    j_lo, j_hi = layer.joint_bounds()
    up = _path(layer, "joint", part, lo=j_lo, hi=_clamp(1.0, j_lo, j_hi))
    return [down, up]


def route_for(layer: DeviceLayer, mode: str, target: float, x: Tensor) -> Route:
    """The path that meets ``target`` (physical: by the layer's native total SNR on ``x``)."""
    paths = routes(layer, mode)
    if len(paths) == 1:
        return paths[0]
    native = layer.measure_parts(layer.native_knobs(), x).total_db
    return paths[0] if target <= native else paths[1]


def snr_range(layer: DeviceLayer, x: Tensor, mode: str) -> tuple[float, float]:
    """(lowest, highest) SNR of the mode's target part the layer reaches on ``x``."""
    if not layer.signal_power(x) > 0:
        return (math.nan, math.nan)
    paths = routes(layer, mode)
    return (paths[0].low_db(layer, x), paths[-1].high_db(layer, x))


def calibrate(
    layer: DeviceLayer, target: float, x: Tensor, mode: str, *, start: Knobs | None = None,
    table: bool = False, what: str = "",
) -> Knobs:
    """Knobs at which ``layer`` meets ``target`` (dB) in ``mode`` on the inputs ``x``
    (:func:`search`)."""
    return search(layer, target, x, mode, start=start, table=table, what=what)[0]


def search(
    layer: DeviceLayer, target: float, x: Tensor, mode: str, *, start: Knobs | None = None,
    prior: tuple[Knobs, float] | None = None, table: bool = False, what: str = "",
) -> tuple[Knobs, float]:
    """(knobs meeting ``target`` on ``x``, the target part's SNR at ``start`` on ``x``).

    ``table``: search through the layer's :class:`KnobTable` for ``x`` (shared by every
    target calibrated on the same inputs); otherwise a secant search from ``start`` (the
    knobs found for nearby inputs, e.g. the previous in-network round; kept when they are
    within the tolerance already). ``prior`` = (knobs, SNR) of an earlier round whose inputs
    were made with those knobs: when ``x`` was made with ``start`` the two points give the
    slope of the *self-consistent* SNR (a DEQ cell's inputs move with its own knob), and the
    knob is one secant step along it instead of a search on the fixed ``x``. A target
    outside the layer's reachable range is one clear error naming it; a layer without
    signal keeps its native knobs (module docstring). The second value is ``nan`` without
    ``start`` or signal.
    """
    if not layer.signal_power(x) > 0:
        return layer.native_knobs(), math.nan
    paths = routes(layer, mode)
    route, k0, was = None, None, math.nan
    if start is not None:
        on = [(p, k) for p in paths if (k := p.knob_of(layer, start)) is not None]
        if on:
            k0 = on[0][1]
            was = on[0][0].snr(layer, k0, x)
            for p, k in on:  # the path certainly holds the target (monotone from native)
                below, above = p is paths[0] and target <= was, p is paths[-1] and target >= was
                if len(paths) == 1 or below or above:
                    route, k0 = p, k
                    break
    if route is None:
        route = route_for(layer, mode, target, x)
        k0 = route.knob_of(layer, start) if start is not None else None

    def snr(k: float) -> float:
        return route.snr(layer, k, x)

    if k0 is not None and abs(was - target) <= TOL_DB:
        return start, was  # type: ignore[return-value]
    step = _secant(route, layer, k0, was, prior, target)
    if step is not None and route.lo < step < route.hi:
        return route.knobs(layer, step), was
    # no slope, or a step to the bracket's end: search (and check the range) on ``x``
    if table:
        k = layer.knob_table(route, x, snr).knob_for(target)
    elif k0 is not None and math.isfinite(was):
        sign = 1.0 if route.increasing else -1.0
        guess = math.exp(math.log(k0) + sign * (target - was) / PRIOR_DB_PER_NAT)
        k = bisect_log(snr, target, route.lo, route.hi, increasing=route.increasing,
                       tol_db=TOL_DB, max_iter=12, x0=_clamp(guess, route.lo, route.hi),
                       known=(k0, was))
    else:
        k = bisect_log(snr, target, route.lo, route.hi, increasing=route.increasing,
                       tol_db=TOL_DB, max_iter=12, x0=route.start)
    miss = abs(snr(k) - target)
    if not miss <= MISS_DB:  # also nan
        reach = snr_range(layer, x, mode)
        check_reachable(target, reach, what or f"layer '{layer.layer_name}'", mode)
    return route.knobs(layer, k), was


def _secant(route: Route, layer: DeviceLayer, k0: float | None, was: float,
            prior: tuple[Knobs, float] | None, target: float) -> float | None:
    """One secant step towards ``target`` through (prior knob, prior SNR) and (k0, was), or
    None when the two points do not give a slope of the path's direction."""
    if prior is None or k0 is None or not (math.isfinite(was) and math.isfinite(prior[1])):
        return None
    kp = route.knob_of(layer, prior[0])
    if kp is None or abs(math.log(k0) - math.log(kp)) < 1e-6:
        return None
    slope = (was - prior[1]) / (math.log(k0) - math.log(kp))
    if (slope > 0) != route.increasing or abs(slope) < 0.1 * PRIOR_DB_PER_NAT:
        return None
    move = max(-math.log(10.0), min(math.log(10.0), (target - was) / slope))
    return _clamp(math.exp(math.log(k0) + move), route.lo, route.hi)


def shifted(layer: DeviceLayer, mode: str, knobs: Knobs, ref_from: Knobs,
            ref_to: Knobs) -> Knobs | None:
    """``knobs`` moved along their path by the ratio that took ``ref_from`` to ``ref_to``
    (clamped to the bracket), or None when the three are not on one path of ``mode``.

    E.g. a level's clean knobs shifted by the previous level's in-network correction (a
    start for its in-network search: the correction changes slowly with the level)."""
    for route in routes(layer, mode):
        k, a, b = (route.knob_of(layer, v) for v in (knobs, ref_from, ref_to))
        if k is not None and a is not None and b is not None and a > 0:
            return route.knobs(layer, _clamp(k * b / a, route.lo, route.hi))
    return None


def new_table(route: Route, snr) -> KnobTable:
    """A :class:`KnobTable` for ``route`` (the layer keeps one per path and inputs)."""
    return KnobTable(snr, route.lo, route.hi, increasing=route.increasing, start=route.start,
                     tol_db=TOL_DB)
