"""The result of a fixed-point solve (paper Eq. 2/6): solution, per-sample stop data, traces."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

TRACE_KEYS = ("abs", "rel", "mean_rel")


@dataclass
class Solution:
    """What a solver returns.

    ``z``: the solution, shaped like ``z0``. For ``unroll`` and ``anderson`` it is f of the
    last point evaluated for the sample (one free extra step), for ``broyden`` the last
    evaluated point itself, for ``stochastic`` the mean of the last ``window`` iterates
    (Polyak average, Eq. 7/53). Frozen once a sample stops; a diverged sample keeps its last
    finite estimate (``z0`` if it never had one, e.g. a NaN input).
    ``steps`` (B,) long: f-evaluations until the sample stopped. ``converged`` (B,) bool: the
    stop rule was met. ``diverged`` (B,) bool: NaN/inf or residual blow-up.
    ``trace``: ``abs``, ``rel``, ``mean_rel`` each (n_iter, B); entries after a sample
    stopped are NaN (empty (0, B) tensors when traces are disabled).
    ``n_iter``: full-batch f-evaluations made. ``reason``: one readable line.
    """

    z: Tensor
    steps: Tensor
    converged: Tensor
    diverged: Tensor
    trace: dict[str, Tensor] = field(default_factory=dict)
    n_iter: int = 0
    reason: str = ""

    @property
    def stopped_by_cap(self) -> Tensor:
        """(B,) bool: samples that hit their iteration cap without meeting the rule."""
        return ~(self.converged | self.diverged)

    def final(self, key: str) -> Tensor:
        """Last recorded value of trace ``key`` per sample (its value when it stopped)."""
        t = self.trace[key]
        if t.shape[0] == 0:
            raise ValueError("traces were disabled for this solve")
        idx = (self.steps.clamp(min=1) - 1).to(t.device)
        return t.gather(0, idx[None, :])[0]


def describe(converged: Tensor, diverged: Tensor) -> str:
    """One line summarising why a batch stopped (one host sync, at the end of a solve)."""
    b = converged.numel()
    n_conv = int(converged.sum())
    n_div = int(diverged.sum())
    n_cap = b - n_conv - n_div
    if n_conv == b:
        return f"converged: all {b} samples met the stop rule"
    parts = [f"converged {n_conv}/{b}"]
    if n_cap:
        parts.append(f"{n_cap} hit the iteration cap")
    if n_div:
        parts.append(f"{n_div} diverged")
    return ", ".join(parts)


def empty_traces(batch: int, device: torch.device, dtype: torch.dtype) -> dict[str, Tensor]:
    """Trace dict with (0, B) tensors (traces disabled)."""
    return {k: torch.empty((0, batch), device=device, dtype=dtype) for k in TRACE_KEYS}
