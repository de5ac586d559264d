"""GMRES for the IFT backward system (I − J_fᵀ) u = v against dense solves."""

from __future__ import annotations

import pytest
import torch

from noisydeq.config import GradientSpec, SolverSpec, build
from noisydeq.errors import NoisyDEQError
from noisydeq.solvers import solve
from noisydeq.solvers.krylov import gmres

B, D = 5, 30


def _system(radius: float, seed: int = 0, dtype=torch.float64):
    """Per-sample J (B, D, D) with spectral radius ``radius`` (nonsymmetric), and v."""
    g = torch.Generator().manual_seed(seed)
    j = torch.randn(B, D, D, generator=g, dtype=dtype)
    rho = torch.linalg.eigvals(j).abs().max(dim=1).values
    j = j * (radius / rho)[:, None, None]
    v = torch.randn(B, D, generator=g, dtype=dtype)
    exact = torch.linalg.solve(torch.eye(D, dtype=dtype) - j.transpose(1, 2), v)
    return j, v, exact


def _jt(j):
    return lambda p: (p.unsqueeze(1) @ j).squeeze(1)  # Jᵀ p, row form


def _rel(u, exact):
    return (u - exact).norm(dim=1) / exact.norm(dim=1)


def test_gmres_solves_the_linear_system_to_its_tolerance() -> None:
    j, v, exact = _system(0.9)
    spec = SolverSpec(name="anderson", max_iter=D, tol=1e-10, stop="rel", window=1)
    sol = gmres(_jt(j), v, v, spec)
    assert sol.converged.all() and not sol.diverged.any()
    assert float(_rel(sol.z, exact).max()) < 1e-8
    # the stop rule is the fixed-point one: ‖f(u) − u‖ / ‖f(u)‖ < tol, f(u) = Jᵀu + v
    fu = _jt(j)(sol.z) + v
    assert float(((fu - sol.z).norm(dim=1) / fu.norm(dim=1)).max()) < 1e-9
    # at most D products after the first: GMRES is exact in dimension D
    assert int(sol.steps.max()) <= D + 1


def test_gmres_converges_where_the_fixed_point_iteration_diverges() -> None:
    # ρ(J) = 1.5: u ← Jᵀu + v blows up, Anderson (memory 5) does not reach the tolerance;
    # the linear system is still nonsingular and GMRES solves it within D products
    j, v, exact = _system(1.5, seed=1)
    spec = SolverSpec(name="anderson", max_iter=D, tol=1e-9, stop="rel", window=1)
    fixed = solve(lambda u: _jt(j)(u) + v, v, spec)
    assert not fixed.converged.all()
    sol = gmres(_jt(j), v, v, spec)
    assert sol.converged.all()
    assert float(_rel(sol.z, exact).max()) < 1e-6


def test_gmres_warm_start_and_abs_stop() -> None:
    j, v, exact = _system(0.8, seed=2)
    spec = SolverSpec(name="anderson", max_iter=D, tol=1e-9, stop="abs", window=1)
    # from the solution: converged by the initial residual, one product
    sol = gmres(_jt(j), v, exact, spec)
    assert sol.converged.all() and int(sol.steps.max()) == 1
    assert float(_rel(sol.z, exact).max()) < 1e-12
    # from a perturbed start: fewer products than from v, same answer
    start = exact + 1e-4 * torch.randn(B, D, generator=torch.Generator().manual_seed(3),
                                       dtype=exact.dtype)
    warm, cold = gmres(_jt(j), v, start, spec), gmres(_jt(j), v, v, spec)
    assert warm.converged.all() and cold.converged.all()
    assert int(warm.steps.max()) < int(cold.steps.max())
    assert float((warm.z - v - _jt(j)(warm.z)).norm(dim=1).max()) < 1e-8


def test_gmres_rows_are_independent_and_non_finite_rows_are_flagged() -> None:
    j, v, exact = _system(0.9, seed=4)
    v = v.clone()
    v[2] = float("nan")
    spec = SolverSpec(name="anderson", max_iter=D, tol=1e-10, stop="rel", window=1)
    sol = gmres(_jt(j), v, v, spec)
    ok = torch.arange(B) != 2
    assert sol.diverged.tolist() == (~ok).tolist()
    assert sol.converged[ok].all()
    assert float(_rel(sol.z[ok], exact[ok]).max()) < 1e-8


def test_gmres_backward_method_rejects_mean_rel_and_unknown_names() -> None:
    with pytest.raises(NoisyDEQError, match="gmres"):
        build(GradientSpec, {"backward_method": "gmres",
                             "backward_solver": {"stop": "mean_rel"}})
    with pytest.raises(NoisyDEQError, match="backward_method"):
        build(GradientSpec, {"backward_method": "cg"})
    assert GradientSpec().backward_method == "fixed-point"  # the training default


def test_default_backward_method_leaves_earlier_dumps_and_keys_unchanged():
    """``backward_method`` came after models were cached: its default is left out of a dump
    (every earlier cache key holds), GMRES is written and read back."""
    from noisydeq.specs.solver import GradientSpec

    assert "backward_method" not in GradientSpec().model_dump()
    dumped = GradientSpec(backward_method="gmres").model_dump()
    assert dumped["backward_method"] == "gmres"
    assert GradientSpec.model_validate(dumped).backward_method == "gmres"
    assert GradientSpec.model_validate(GradientSpec().model_dump()) == GradientSpec()
