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

from noisydeq.analysis.solver_names import (  # noqa: F401 (SOLVER_NAMES: re-exported)
    SOLVER_NAMES,
    check_solvers,
    parse_windows,
)
from noisydeq.errors import NoisyDEQError
from noisydeq.models.cells import TanhLayer
from noisydeq.noise import Noise, NoiseStream, derive_seed
from noisydeq.specs.base import build
from noisydeq.specs.noise import NoiseSpec
from noisydeq.specs.solver import SolverSpec


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


def ar1_floor_ratio(rho: float, window: int) -> float:
    """Noise floor of ``mean_rel`` over that of ``rel`` for unrolling, linear model (Eq. 54).

    Undamped unrolling evaluates f at z_i and moves to z_{i+1} = f(z_i), so the window sums
    of Eq. 54 telescope: Σ_i (f(z_i) − z_i) = z_{k+1} − z_{k+1−w}, and
    mean_rel = ‖z_{k+1} − z_{k+1−w}‖ / (w ‖z̄‖) exactly. Near the fixed point with
    independent noise e_k per step, δ_{k+1} = ρ δ_k + e_k (Jacobian ρI) is stationary AR(1)
    with E‖δ_{k+w} − δ_k‖² = 2 tr Σ (1 − ρ^w), so the RMS ratio to ``rel`` (w = 1) is

        R(w) = (1/w) · √((1 − ρ^w) / (1 − ρ)).

    It falls like 1/√w while w ≪ 1/(1 − ρ) (slow contraction) and like 1/w beyond, with the
    prefactor 1/√(1 − ρ); for ρ = 0 it is exactly 1/w.
    """
    if window < 1:
        raise NoisyDEQError(f"window: must be a positive integer, got {window}")
    if not -1.0 < rho < 1.0:
        raise NoisyDEQError(f"rho: the iteration must contract (|rho| < 1), got {rho:g}")
    return math.sqrt((1.0 - rho**window) / (1.0 - rho)) / window


@dataclass
class IterationCount:
    """Steps the solver took per sample with one stop rule at one SNR.

    ``window`` is the averaging window of ``mean_rel`` (``rel`` is ``mean_rel`` with w = 1).
    """

    stop: str
    snr_db: float
    steps: Tensor
    converged: Tensor
    window: int = 1


def _signal_noise(snr: float, seed: int, device: torch.device) -> Noise | None:
    """Fig. 5 signal noise at ``snr``; one stream per SNR so every rule sees the same draws."""
    spec = build(NoiseSpec, {"site": "signal", "kind": "multiplicative", "snr_db": snr})
    stream = NoiseStream.from_seed(derive_seed(seed, "fig5", snr), device)
    return Noise(spec, stream) if spec.active else None


def iteration_counts(
    model: nn.Module, x: Tensor, snr_db: Sequence[float], *, eps: float = 0.01,
    stops: Sequence[str] = ("rel", "mean_rel"), max_iter: int = 100, solver: str = "unroll",
    window: int | Sequence[int] = 5, seed: int = 0,
) -> list[IterationCount]:
    """Fig. 5: iterations to meet ``rel`` / ``mean_rel`` < ``eps`` under signal noise.

    ``window`` may list several lengths: ``mean_rel`` is then counted once per window.
    """
    if getattr(model, "kind", None) != "deq":
        raise NoisyDEQError("iteration counts need a DEQ model")
    check_solvers([solver])
    windows = parse_windows(window)
    if max(windows) > max_iter:
        raise NoisyDEQError(f"--window {max(windows)}: exceeds the iteration cap {max_iter} "
                            "(mean_rel can only stop once its window is full)")
    out = []
    with torch.no_grad():
        xt = model.inject(x)
        for snr in snr_db:
            for stop in stops:
                for w in (windows if stop == "mean_rel" else windows[:1]):
                    sol = _solve(model.cell_fn(xt, _signal_noise(snr, seed, x.device)),
                                 model.initial_state(xt),
                                 solver_spec(solver, max_iter, eps, stop, w))
                    out.append(IterationCount(stop, float(snr), sol.steps.cpu(),
                                              sol.converged.cpu(),
                                              w if stop == "mean_rel" else 1))
    return out


def residual_floors(
    model: nn.Module, x: Tensor, snr_db: Sequence[float], windows: Sequence[int], *,
    n_iter: int = 100, solver: str = "unroll", seed: int = 0,
) -> list[dict]:
    """Noise floors of ``rel`` and ``mean_rel`` (Eq. 54) per SNR and window, Fig. 5 setting.

    The solver runs ``n_iter`` steps without stopping; a floor is the median over samples
    and the last half of the iterations (after the transient). ``window_needed_eps`` in the
    rows of :func:`floor_rows` extrapolates with the 1/w law of :func:`ar1_floor_ratio`.
    """
    if getattr(model, "kind", None) != "deq":
        raise NoisyDEQError("residual floors need a DEQ model")
    windows = parse_windows(list(windows))
    if max(windows) > n_iter // 2:
        raise NoisyDEQError(f"--window {max(windows)}: the floors need runs of at least twice "
                            f"the window, got {n_iter} steps")
    rows = []
    with torch.no_grad():
        xt = model.inject(x)
        for snr in snr_db:
            for w in windows:
                sol = _solve(model.cell_fn(xt, _signal_noise(snr, seed, x.device)),
                             model.initial_state(xt), solver_spec(solver, n_iter, 1e-30, "rel", w))
                tail = slice(n_iter // 2, None)
                rel = sol.trace["rel"][tail].double()
                mrel = sol.trace["mean_rel"][tail].double()
                rows.append({"snr_db": float(snr), "window": w,
                             "rel_floor": float(rel.nanmedian()),
                             "mean_rel_floor": float(mrel.nanmedian()),
                             "mean_rel_p10": float(mrel.nanquantile(0.1))})
    return rows


def accuracy_under_noise(
    model: nn.Module, x: Tensor, y: Tensor, snr_db: Sequence[float], solvers: Sequence[str], *,
    max_iter: int = 40, tol: float = 0.01, stop: str = "mean_rel", seed: int = 0,
    batch: int = 1000, window: int = 5,
) -> list[dict]:
    """Fig. 6 claim: test accuracy of a DEQ solved by each solver under signal noise."""
    if getattr(model, "kind", None) != "deq":
        raise NoisyDEQError("accuracy under noise needs a DEQ model")
    rows = []
    saved = model.test_solver
    model.eval()
    try:
        for name in check_solvers(solvers):
            model.test_solver = solver_spec(name, max_iter, tol, stop, window)
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
