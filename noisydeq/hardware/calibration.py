"""Calibration: find the one control value of a device layer that yields a target SNR.

A device layer's knobs (its static and dynamic noise, or one scale on both: the noise
modes of :mod:`noisydeq.hardware.modes`) each move a measured SNR part monotonically, e.g.
the RRAM noise scales (SNR falls as they grow) and the photonic optical power per MAC ``P``
(SNR rises with ``P``). The SNR is the one of DESIGN §1, ‖y‖²/E‖ε‖² over a calibration
batch (:mod:`noisydeq.hardware.parts`). The measurement uses common random numbers (a
fixed calibration stream and the layer's own chip), so it is a deterministic function of
the knob and a search in log-space converges to the target.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from noisydeq.errors import NoisyDEQError
from noisydeq.summary import fmt_db

#: prior slope of SNR (dB) per natural-log unit of the knob for the first secant step:
#: 20 dB/decade, the noise-amplitude-limited regime of RRAM (s) and thermal-limited photonic (P)
PRIOR_DB_PER_NAT = 20.0 / math.log(10.0)


def bisect_log(
    snr_of: Callable[[float], float],
    target_db: float,
    lo: float,
    hi: float,
    *,
    increasing: bool,
    tol_db: float = 0.02,
    max_iter: int = 40,
    x0: float | None = None,
    known: tuple[float, float] | None = None,
) -> float:
    """Knob value in [lo, hi] where ``snr_of(knob)`` ≈ ``target_db`` (within ``tol_db``).

    Safeguarded secant search in log(knob): each measurement shrinks a bracket [a, b] that
    holds the target (as bisection does); the next point is the secant through the last two
    measurements (the first step uses a 20 dB/decade prior slope), replaced by the bracket's
    midpoint when it is not strictly inside the bracket. SNR is close to linear in log(knob)
    where the calibration targets lie: on a 467×467 layer, targets 0-30 dB, it takes 4.2 (RRAM)
    and 4.8 (photonic) measurements per target where plain bisection of the bracket took 10.0
    and 10.9 — calibration was half of the default sweep's evaluation time.
    ``snr_of`` must be monotone (increasing or decreasing as stated). The caller checks
    that the target is reachable; values outside the bracket are clamped to its ends.
    ``x0`` (optional) is the first point instead of the bracket's midpoint, and ``known``
    an already measured ``(knob, snr)`` that seeds the first secant instead of the prior.
    """
    if not (lo > 0 and hi > lo):
        raise ValueError("bisect_log needs 0 < lo < hi")
    a, b = math.log(lo), math.log(hi)
    sign = 1.0 if increasing else -1.0
    best, best_err = math.exp(0.5 * (a + b)), math.inf
    m = 0.5 * (a + b)
    if x0 is not None and a < math.log(x0) < b:
        m = math.log(x0)
    prev: tuple[float, float] | None = None
    if known is not None:
        prev = (math.log(known[0]), known[1] - target_db)
    for _ in range(max_iter):
        value = snr_of(math.exp(m))
        err = value - target_db
        if abs(err) < best_err:
            best, best_err = math.exp(m), abs(err)
        if abs(err) <= tol_db:
            break
        if (err < 0) == increasing:
            a = m  # need more SNR: move the knob up if SNR increases with it
        else:
            b = m
        if b - a < 1e-9:
            break
        slope = sign * PRIOR_DB_PER_NAT
        if prev is not None and prev[0] != m and math.isfinite(err) and math.isfinite(prev[1]):
            secant = (err - prev[1]) / (m - prev[0])
            if secant * sign > 0:  # only a slope of the stated direction is trusted
                slope = secant
        prev = (m, err)
        nxt = m - err / slope if math.isfinite(err) else math.nan
        margin = 1e-3 * (b - a)
        m = nxt if a + margin < nxt < b - margin else 0.5 * (a + b)
    return best


#: spacing of a :class:`KnobTable` grid in log(knob): a quarter decade (~5 dB at 20 dB/decade)
TABLE_STEP = math.log(10.0) / 4.0
#: most measurements of one target's search inside its bracket (:class:`KnobTable`)
SEARCH_STEPS = 12


class KnobTable:
    """One layer's measured SNR-vs-knob curve, shared by all its targets (and chips).

    Calibrating every target with its own search costs ~4 measurements per target (and per
    chip when each chip searched alone). The table measures grid points
    ``start · 10^(k/4)`` lazily, walking from ``start`` until a target is bracketed; the
    target's search starts at the linear interpolant in (log knob, dB) of the two bracketing
    grid points (SNR is near-linear in log knob: 20 dB/decade where noise dominates) and
    refines with :func:`bisect_log` inside that bracket, secant seeded by the nearer grid
    point. All measurements are memoised: the default sweep (36 layers × 31 targets, 0-30 dB)
    takes 1.54 measurements per target, grid included, instead of 3.2-4.2 per target; a
    128×128 layer, 31 targets: 47 instead of 100.
    """

    def __init__(
        self,
        snr_of: Callable[[float], float],
        lo: float,
        hi: float,
        *,
        increasing: bool,
        start: float = 1.0,
        tol_db: float = 0.05,
    ) -> None:
        if not (0 < lo <= start <= hi):
            raise ValueError("KnobTable needs 0 < lo <= start <= hi")
        self.snr_of, self.increasing, self.tol_db = snr_of, increasing, tol_db
        self.lo, self.hi, self.start = math.log(lo), math.log(hi), math.log(start)
        self.measured: dict[float, float] = {}  # knob -> SNR (dB)
        #: measurements per search: the quarter-decade bracket shrinks to ~1e-4 in log knob
        #: after 12 bisections; a target still missed then sits on a jump of the curve
        #: (quantisation), where more steps do not help (the closest knob is returned)
        self.max_iter = SEARCH_STEPS
        self.probes = 0

    def _at(self, log_knob: float) -> float:
        return self._memo(math.exp(log_knob))

    def _memo(self, knob: float) -> float:
        # keyed by the knob itself: the value returned is the one measured (a chip cache
        # keyed by the knob then holds the chip the forward needs)
        if knob not in self.measured:
            self.measured[knob] = float(self.snr_of(knob))
            self.probes += 1
        return self.measured[knob]

    def _grid(self, k: int) -> float:
        return min(max(self.start + k * TABLE_STEP, self.lo), self.hi)

    def knob_for(self, target_db: float) -> float:
        """Knob where the measured SNR is within ``tol_db`` of ``target_db`` (clamped)."""
        k, m = 0, self._grid(0)
        v = self._at(m)
        if abs(v - target_db) <= self.tol_db:
            return math.exp(m)
        step = 1 if (v < target_db) == self.increasing else -1
        while True:
            k += step
            m2 = self._grid(k)
            if m2 == m:  # ran into the bracket's end without crossing the target
                return math.exp(m)
            v2 = self._at(m2)
            if abs(v2 - target_db) <= self.tol_db:
                return math.exp(m2)
            if (v2 < target_db) != (v < target_db):
                break
            m, v = m2, v2
        (a, va), (b, vb) = sorted([(m, v), (m2, v2)])
        side_a = va < target_db
        for knob, val in self.measured.items():  # narrow to the nearest measured points
            lk = math.log(knob)
            if a < lk < b:
                if (val < target_db) == side_a:
                    a, va = lk, val
                else:
                    b, vb = lk, val
        guess = a + (target_db - va) * (b - a) / (vb - va) if vb != va else 0.5 * (a + b)
        near = (a, va) if abs(va - target_db) < abs(vb - target_db) else (b, vb)
        return bisect_log(
            self._memo, target_db, math.exp(a), math.exp(b), increasing=self.increasing,
            tol_db=self.tol_db, max_iter=self.max_iter, x0=math.exp(guess),
            known=(math.exp(near[0]), near[1]),
        )


def check_reachable(
    target_db: float, reach: tuple[float, float], what: str, mode: str | None = None
) -> None:
    """One clear error when ``target_db`` lies outside the reachable range ``reach``.

    ``reach`` = (lowest, highest) SNR in dB; either end may be ±inf (no limit on that side)
    or nan (undefined: the error then says so), and every value is formatted readably.
    """
    lo, hi = reach
    in_mode = f" in noise mode '{mode}'" if mode else ""
    span = f"reachable: minimum {fmt_db(lo, 'message')}, maximum {fmt_db(hi, 'message')}"
    if math.isnan(target_db) or math.isnan(lo) or math.isnan(hi):
        raise NoisyDEQError(
            f"target SNR {fmt_db(target_db, 'message')} cannot be set on {what}{in_mode}: its "
            f"SNR is undefined ({span})"
        )
    if target_db > hi:
        raise NoisyDEQError(
            f"target SNR {target_db:g} dB is above what {what} can reach{in_mode} ({span}); "
            f"choose a target <= {math.floor(hi * 10) / 10:g} dB"
        )
    if target_db < lo:
        raise NoisyDEQError(
            f"target SNR {target_db:g} dB is below what {what} can reach{in_mode} ({span}); "
            f"choose a target >= {math.ceil(lo * 10) / 10:g} dB"
        )
