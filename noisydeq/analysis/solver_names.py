"""The solver names and window lengths ``noisydeq solvers`` takes (paper App. B, Fig. 4-6),
checked without torch: the command refuses bad input before its heavy imports."""

from __future__ import annotations

from collections.abc import Sequence

from noisydeq.errors import NoisyDEQError
from noisydeq.specs.base import refuse_repeats, suggest_name

SOLVER_NAMES = ("unroll", "stochastic", "anderson", "broyden")


def check_solvers(names: Sequence[str], flag: str = "--solvers") -> list[str]:
    """Validate solver names (one clear error, led by ``flag``, listing the allowed ones;
    a name given twice refused, as every list option refuses a repeat)."""
    out = []
    for n in names:
        n = n.strip()
        if n not in SOLVER_NAMES:
            raise NoisyDEQError(f"{flag}: {suggest_name('solver', n, SOLVER_NAMES)}")
        out.append(n)
    if not out:
        raise NoisyDEQError(f"{flag}: empty list (allowed: {', '.join(SOLVER_NAMES)})")
    return _once(out, flag)


def _once(values: list, flag: str) -> list:
    try:
        return refuse_repeats(values)
    except ValueError as err:
        raise NoisyDEQError(f"{flag}: {err}") from None


def parse_windows(text: str | int | Sequence[int]) -> list[int]:
    """``--window``: one window length or a comma list (``5`` or ``5,20,50``), in order, each
    once."""
    parts = [text] if isinstance(text, int) else (
        str(text).split(",") if isinstance(text, str) else list(text))
    out: list[int] = []
    for p in parts:
        try:
            w = int(str(p).strip())
        except ValueError:
            w = 0
        if w < 1:
            raise NoisyDEQError(
                f"--window: '{str(p).strip()}' is not a positive integer (e.g. 5 or 5,20,50)"
            )
        out.append(w)
    if not out:
        raise NoisyDEQError("--window: give at least one window length (e.g. 5 or 5,20,50)")
    return _once(out, "--window")
