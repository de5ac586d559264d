"""Convergence at the end of a run: one line per model whose evaluated samples missed their
solver's stop rule ("divergence is reported, never averaged in").

Every command that evaluates DEQs keeps per-cell convergence numbers in its table (the
sweep's ``converged_frac`` / ``diverged_frac``, the attack's ``fwd_unconverged`` /
``fwd_residual`` / ``fwd_residual_max``, ...). A user reading only the terminal learns of
them here: a :class:`Tally` per model sums the cells' numbers and :func:`report_lines` turns
the tallies into at most ``limit`` lines, worst model first, nothing when every sample met
its stop rule. Two cases are worded apart:

* **missed the stop rule** — the solve ended at its step budget (or, noise on the state, at
  the noise's floor) without reaching the tolerance; the output is the state it reached,
  whose residual (where the table records it) says how far from the fixed point it is;
* **diverged** — a non-finite state or a residual past the solver's blow-up limit
  (``diverge_factor`` × max(initial residual, ‖f(z0)‖, 1), :func:`noisydeq.solvers.stop
  .blowup_scale`); such a sample counts wrong (classification) or is left out of an MSE.

Only messages: nothing here changes a table, a cell or a key. Pure (no torch, no I/O).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

#: how :func:`stop_rule` names a solver's stop criterion
STOP_WORDS = {"rel": "relative residual", "abs": "absolute residual",
              "mean_rel": "Eq. 54 relative residual"}


def stop_rule(model: Any) -> str:
    """The stop rule of ``model``'s test solver in words (``relative residual ≤ 0.001
    within 8 broyden steps``), '' for a model without a solver (feed-forward). Read from
    ``test_solver`` (else ``solver``) without changing the model's mode."""
    spec = getattr(model, "test_solver", None) or getattr(model, "solver", None)
    return solver_rule(spec) if spec is not None else ""


def solver_rule(spec: Any) -> str:
    """A :class:`~noisydeq.specs.solver.SolverSpec`'s stop rule in words."""
    what = STOP_WORDS.get(spec.stop, f"{spec.stop} residual")
    if spec.stop == "mean_rel":
        what = f"Eq. 54 relative residual over a window of {spec.window}"
    steps = "step" if spec.max_iter == 1 and not spec.random_threshold else "steps"
    cap = (f"a random cap of 1-{spec.max_iter}" if spec.random_threshold
           else f"{spec.max_iter}")
    return f"{what} ≤ {spec.tol:g} within {cap} {spec.name} {steps}"


@dataclass
class Tally:
    """One model's evaluated samples, summed over the cells (or solves) of a run.

    ``unconverged`` / ``diverged``: samples (counts; a cell's fraction × its samples) that
    missed the stop rule without diverging / that diverged — ``diverged`` None where the
    table does not record it (then ``unconverged`` includes them). ``medians``: each cell's
    median relative residual where recorded; ``largest`` the largest of any sample
    (``inf``: a non-finite one, in ``nonfinite`` cells). ``worst``: the label and fraction of
    the cell with the largest share of samples that missed the rule."""

    model: str
    rule: str = ""
    n: float = 0.0
    unconverged: float = 0.0
    diverged: float | None = 0.0
    cells: int = 0
    cells_missed: int = 0
    medians: list[float] = field(default_factory=list)
    largest: float = math.nan
    nonfinite: int = 0
    worst: tuple[str, float] = ("", 0.0)
    #: what :meth:`add` counts, as the line names it ("cells", "solves")
    unit: str = "cells"

    def add(self, n: float, unconverged: float, diverged: float | None = 0.0, *,
            residual: float = math.nan, residual_max: float = math.nan,
            label: str = "") -> None:
        """One cell of ``n`` samples: the fractions that missed the stop rule without
        diverging (``unconverged``) and that diverged (``diverged``; None: not recorded,
        ``unconverged`` then counts them), its median and largest relative residual."""
        if math.isnan(unconverged):  # no solve (a feed-forward row)
            return
        missed = unconverged + (diverged or 0.0)
        self.n += n
        self.cells += 1
        self.unconverged += n * unconverged
        if diverged is None or self.diverged is None:
            self.diverged = None
        else:
            self.diverged += n * diverged
        if missed > 0:
            self.cells_missed += 1
            if missed > self.worst[1]:
                self.worst = (label, missed)
        if not math.isnan(residual):
            self.medians.append(residual)
        if not math.isnan(residual_max):
            if not math.isfinite(residual_max):
                self.nonfinite += 1
            self.largest = residual_max if math.isnan(self.largest) else max(self.largest,
                                                                             residual_max)

    @property
    def missed(self) -> float:
        """Fraction of the samples that missed the stop rule (diverged included)."""
        return (self.unconverged + (self.diverged or 0.0)) / self.n if self.n else 0.0

    @property
    def any_missed(self) -> bool:
        """Some sample missed the rule or diverged (a line is due)."""
        return self.cells_missed > 0 or self.nonfinite > 0

    def line(self, columns: str) -> str:
        """The model's summary line (see :func:`report_lines`)."""
        parts = []
        div = self.diverged
        if div is not None and div > 0:
            why = ("non-finite, or residual past the solver's blow-up limit" if self.rule
                   else "non-finite output")
            parts.append(f"{_pct(div / self.n)} diverged ({why})")
        unc = self.unconverged / self.n if self.n else 0.0
        if unc > 0:
            tail = (" without diverging" if parts else
                    " or diverged" if div is None and self.nonfinite else "")
            parts.append(f"{_pct(unc)} missed the stop rule"
                         + (f" ({self.rule})" if self.rule else "") + tail)
        out = (f"convergence: {self.model}: of {round(self.n):,} evaluated samples, "
               + ("; ".join(parts) if parts else "none counted as unconverged")
               + f" — in {self.cells_missed} of {self.cells} {self.unit}")
        if self.worst[0] and self.worst[1] > self.missed + 1e-9:
            out += f", most at {self.worst[0]} ({_pct(self.worst[1])})"
        if self.medians or not math.isnan(self.largest):
            out += "; relative residual: " + _residuals(self.medians, self.largest)
        if self.nonfinite:
            out += f"; diverged samples (a non-finite residual) in {self.nonfinite} of them"
        return f"{out}. Detail: {columns}"


def _pct(frac: float) -> str:
    """A fraction as a percentage that never rounds a miss to 0 or to 100."""
    if frac <= 0:
        return "0%"
    if frac >= 1:
        return "100%"
    p = 100 * frac
    if p < 0.1:
        return "<0.1%"
    if p > 99.9:
        return ">99.9%"
    return f"{p:.1f}%" if p < 10 or p > 90 else f"{p:.0f}%"


def _residuals(medians: Sequence[float], largest: float) -> str:
    """``medians a-b, largest c`` (two significant digits; one median: ``median a``)."""
    finite = sorted(m for m in medians if math.isfinite(m))
    text = []
    if finite:
        lo, hi = finite[0], finite[-1]
        one = f"{lo:.2g}" if f"{lo:.2g}" == f"{hi:.2g}" else f"{lo:.2g}-{hi:.2g}"
        text.append(f"median {one}" if len(medians) == 1 else f"medians {one}")
    elif medians:
        text.append("medians inf" if len(medians) > 1 else "median inf")
    if not math.isnan(largest):
        text.append(f"largest {largest:.2g}")
    return ", ".join(text)


def report_lines(tallies: Iterable[Tally], columns: str, limit: int = 5) -> list[str]:
    """One line per model whose samples missed their stop rule, worst first (diverged,
    then the share that missed), at most ``limit`` and a last line counting the others;
    ``[]`` when every sample of every model met it. ``columns``: where the per-cell
    numbers are (a column list and file), said on each line."""
    bad = [t for t in tallies if t.any_missed]
    bad.sort(key=lambda t: (-(t.diverged or 0.0) / max(t.n, 1.0), -t.nonfinite, -t.missed,
                            -(0.0 if math.isnan(t.largest) else t.largest), t.model))
    lines = [t.line(columns) for t in bad[:limit]]
    if len(bad) > limit:
        lines.append(f"convergence: {len(bad) - limit} more model(s) missed their stop rule "
                     f"too. Detail: {columns}")
    return lines


def tally_rows(rows: Iterable[dict[str, Any]], key: Any, rules: dict[str, str] | None = None,
               label: Any = None, unit: str = "cells") -> list[Tally]:
    """Tallies of a table with ``converged_frac`` / ``diverged_frac`` / ``n_samples`` (or
    ``n``) columns (the sweep's, a study's): ``key(row)`` names the model (its rules from
    ``rules``), ``label(row)`` the cell in the line's "most at" (a row whose
    ``converged_frac`` is missing or NaN has no solve and is left out); ``unit``: what a
    row is, as the line names it."""
    out: dict[str, Tally] = {}
    for r in rows:
        conv = float(r.get("converged_frac", math.nan))
        if math.isnan(conv):
            continue
        div = float(r.get("diverged_frac", 0.0))
        name = key(r)
        t = out.setdefault(name, Tally(name, (rules or {}).get(name, ""), unit=unit))
        n = int(r.get("n_samples", r.get("n", 1)))
        # the fractions are counts / n: back to counts, so rounding leaves no phantom miss
        n_conv, n_div = round(conv * n), round(div * n)
        t.add(n, max(0, n - n_conv - n_div) / n, n_div / n, label=label(r) if label else "")
    return list(out.values())
