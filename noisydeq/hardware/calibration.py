"""Calibration: find the one control value of a device layer that yields a target SNR.

Every physical device here has one knob that moves its measured MVM-output SNR
monotonically: the RRAM noise scale ``s`` (multiplies programming, drift and read noise;
SNR falls as ``s`` grows) and the photonic optical power per MAC ``P`` (SNR rises with
``P``). The SNR is the one of DESIGN §1, ‖y‖²/E‖ε‖² over a calibration batch
(:func:`noisydeq.noise.measured_snr_db`). The measurement uses common random numbers (a
fixed calibration stream and the layer's own chip), so it is a deterministic function of
the knob and a bisection in log-space converges to the target.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from noisydeq.errors import NoisyDEQError


def bisect_log(
    snr_of: Callable[[float], float],
    target_db: float,
    lo: float,
    hi: float,
    *,
    increasing: bool,
    tol_db: float = 0.02,
    max_iter: int = 40,
) -> float:
    """Knob value in [lo, hi] (geometric bisection) where ``snr_of(knob)`` ≈ ``target_db``.

    ``snr_of`` must be monotone (increasing or decreasing as stated). The caller checks
    that the target is reachable; values outside the bracket are clamped to its ends.
    """
    if not (lo > 0 and hi > lo):
        raise ValueError("bisect_log needs 0 < lo < hi")
    a, b = math.log(lo), math.log(hi)
    best, best_err = math.exp(0.5 * (a + b)), math.inf
    for _ in range(max_iter):
        m = 0.5 * (a + b)
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
    return best


def check_reachable(target_db: float, max_db: float, what: str) -> None:
    """Raise one clear error when ``target_db`` exceeds the device's reachable maximum."""
    if target_db > max_db:
        raise NoisyDEQError(
            f"target SNR {target_db:g} dB is beyond what {what} can reach "
            f"(maximum {max_db:.2f} dB); choose snr_db <= {math.floor(max_db * 10) / 10:g}"
        )
