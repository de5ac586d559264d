"""Solver behaviour under noise (paper App. B): residual traces, stop-rule iterations, accuracy.

* Fig. 4: relative (Eq. 1) and mean-relative (Eq. 54) residual traces of ``unroll``,
  ``stochastic``, ``anderson`` and ``broyden`` on a random tanh cell of width 100 with
  W ~ U(−1/√100, 1/√100) and multiplicative state noise (Eq. 3-4) at chosen SNRs.
* Fig. 5: iterations the unrolling solver needs with stop rule ``rel`` vs ``mean_rel`` at
  ε = 0.01 on a trained DEQ with pre-activation (signal) noise, across SNRs.
* Fig. 6 (claim): test accuracy with the stochastic solver vs Broyden under signal noise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from noisydeq.config import NoiseSpec, SolverSpec, build
from noisydeq.errors import NoisyDEQError
from noisydeq.models.cells import TanhLayer
from noisydeq.noise import Noise, NoiseStream, derive_seed

SOLVER_NAMES = ("unroll", "stochastic", "anderson", "broyden")


def check_solvers(names: Sequence[str]) -> list[str]:
    """Validate solver names (one clear error listing the allowed ones)."""
    out = []
    for n in names:
        n = n.strip()
        if n not in SOLVER_NAMES:
            import difflib

            close = difflib.get_close_matches(n, SOLVER_NAMES, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise NoisyDEQError(
                f"--solvers: unknown solver '{n}'{hint} (allowed: {', '.join(SOLVER_NAMES)})"
            )
        out.append(n)
    if not out:
        raise NoisyDEQError(f"--solvers: empty list (allowed: {', '.join(SOLVER_NAMES)})")
    return out


def fig4_cell(width: int = 100, batch: int = 16, seed: int = 0,
              dtype: torch.dtype = torch.float32,
              device: torch.device | str = "cpu") -> tuple[nn.Module, Tensor]:
    """The App. B test cell: tanh(W z + x̃), W ~ U(−1/√d, 1/√d), no bias, x̃ ~ N(0, I) per sample."""
    g = torch.Generator().manual_seed(derive_seed(seed, "fig4-cell"))
    cell = TanhLayer(width)
    bound = 1.0 / math.sqrt(width)
    with torch.no_grad():
        cell.W.weight.copy_(torch.rand(width, width, generator=g) * 2 * bound - bound)
        cell.W.bias.zero_()
    xt = torch.randn(batch, width, generator=g)
    return cell.to(device=device, dtype=dtype).eval(), xt.to(device=device, dtype=dtype)


def solver_spec(name: str, max_iter: int, tol: float, stop: str, window: int = 5) -> SolverSpec:
    """A solver spec for these studies (stochastic: Robbins–Monro α = 0.5, window average)."""
    return build(SolverSpec, {"name": name, "max_iter": max_iter, "tol": tol, "stop": stop,
                              "window": min(window, max_iter)}, where="solver")


@dataclass
class TraceSet:
    """Residual traces (n_iter, B) of one solver at one SNR: ``rel`` and ``mean_rel``."""

    solver: str
    snr_db: float
    rel: Tensor
    mean_rel: Tensor


def residual_traces(
    cell: nn.Module, xt: Tensor, snr_db: Sequence[float], solvers: Sequence[str], *,
    max_iter: int = 100, site: str = "state", seed: int = 0, window: int = 5,
) -> list[TraceSet]:
    """Run every solver for ``max_iter`` steps (no early stop) under multiplicative noise."""
    out = []
    for snr in snr_db:
        spec = build(NoiseSpec, {"site": site, "kind": "multiplicative", "snr_db": snr})
        for name in check_solvers(solvers):
            stream = NoiseStream.from_seed(derive_seed(seed, "fig4", name, snr), xt.device)
            noise = Noise(spec, stream) if spec.active else None

            def f(z: Tensor, noise=noise) -> Tensor:
                return cell(z, xt, noise)

            # tol below any reachable residual: the full trace is recorded
            sol = _solve(f, torch.zeros_like(xt), solver_spec(name, max_iter, 1e-30, "rel",
                                                              window))
            out.append(TraceSet(name, float(snr), sol.trace["rel"].cpu(),
                                sol.trace["mean_rel"].cpu()))
    return out


def _solve(f, z0, spec):
    from noisydeq.solvers import solve

    return solve(f, z0, spec)


@dataclass
class IterationCount:
    """Steps the solver took per sample with one stop rule at one SNR."""

    stop: str
    snr_db: float
    steps: Tensor
    converged: Tensor


def iteration_counts(
    model: nn.Module, x: Tensor, snr_db: Sequence[float], *, eps: float = 0.01,
    stops: Sequence[str] = ("rel", "mean_rel"), max_iter: int = 100, solver: str = "unroll",
    window: int = 5, seed: int = 0,
) -> list[IterationCount]:
    """Fig. 5: iterations to meet ``rel`` / ``mean_rel`` < ``eps`` under signal noise."""
    if getattr(model, "kind", None) != "deq":
        raise NoisyDEQError("iteration counts need a DEQ model")
    check_solvers([solver])
    out = []
    with torch.no_grad():
        xt = model.inject(x)
        for snr in snr_db:
            spec = build(NoiseSpec, {"site": "signal", "kind": "multiplicative", "snr_db": snr})
            for stop in stops:
                stream = NoiseStream.from_seed(derive_seed(seed, "fig5", snr), x.device)
                noise = Noise(spec, stream) if spec.active else None
                sol = _solve(model.cell_fn(xt, noise), model.initial_state(xt),
                             solver_spec(solver, max_iter, eps, stop, window))
                out.append(IterationCount(stop, float(snr), sol.steps.cpu(),
                                          sol.converged.cpu()))
    return out


def accuracy_under_noise(
    model: nn.Module, x: Tensor, y: Tensor, snr_db: Sequence[float], solvers: Sequence[str], *,
    max_iter: int = 40, tol: float = 0.01, stop: str = "mean_rel", seed: int = 0,
    batch: int = 1000,
) -> list[dict]:
    """Fig. 6 claim: test accuracy of a DEQ solved by each solver under signal noise."""
    if getattr(model, "kind", None) != "deq":
        raise NoisyDEQError("accuracy under noise needs a DEQ model")
    rows = []
    saved = model.test_solver
    model.eval()
    try:
        for name in check_solvers(solvers):
            model.test_solver = solver_spec(name, max_iter, tol, stop)
            for snr in snr_db:
                spec = build(NoiseSpec, {"site": "signal", "kind": "multiplicative",
                                         "snr_db": snr})
                stream = NoiseStream.from_seed(derive_seed(seed, "fig6", name, snr), x.device)
                noise = Noise(spec, stream) if spec.active else None
                correct, steps = 0, 0.0
                with torch.no_grad():
                    for i in range(0, len(x), batch):
                        out = model(x[i:i + batch], noise, return_solution=True)
                        correct += int((out.logits.argmax(1) == y[i:i + batch]).sum())
                        steps += float(out.solution.steps.float().sum())
                rows.append({"solver": name, "snr_db": float(snr),
                             "accuracy": correct / len(x), "mean_steps": steps / len(x)})
    finally:
        model.test_solver = saved
    return rows
