"""Gradient methods vs finite differences, autograd through explicit unrolls, each other."""

from __future__ import annotations

import pytest
import torch

from noisydeq.config import GradientSpec, SolverSpec, build
from noisydeq.errors import NoisyDEQError
from noisydeq.solvers import attach_gradient, jacobian_frobenius_hutchinson, solve, solve_with_grad

D, B = 6, 3
FWD = SolverSpec(name="anderson", max_iter=200, tol=1e-13, stop="abs")


def _params(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(D, D, generator=g, dtype=torch.float64) * (0.8 / D**0.5)
    b = torch.randn(D, generator=g, dtype=torch.float64) * 0.5
    x = torch.randn(B, D, generator=g, dtype=torch.float64)
    return w, b, x


def _cell(w: torch.Tensor, b: torch.Tensor, x: torch.Tensor):
    return lambda z: torch.tanh(z @ w.T + b + x)


def _loss(z: torch.Tensor) -> torch.Tensor:
    target = torch.linspace(-1, 1, D, dtype=torch.float64)
    return ((z - target) ** 2).sum() + z[:, 0].sum() ** 3


def _deq_loss(w, b, x, grad: GradientSpec | None = None) -> torch.Tensor:
    f = _cell(w, b, x)
    sol = solve(f, torch.zeros_like(x), FWD)
    assert sol.converged.all()
    z = sol.z if grad is None else attach_gradient(f, sol.z, grad)
    return _loss(z)


def _grads(grad: GradientSpec, seed: int = 0) -> list[torch.Tensor]:
    params = [p.clone().requires_grad_(True) for p in _params(seed)]
    _deq_loss(*params, grad).backward()
    return [p.grad for p in params]


N_DIRS = 4


def _directions(seed: int = 0) -> list[list[torch.Tensor]]:
    """Random joint directions in (W, b, x) space for directional derivatives."""
    g = torch.Generator().manual_seed(100 + seed)
    return [
        [torch.randn(p.shape, generator=g, dtype=torch.float64) for p in _params(seed)]
        for _ in range(N_DIRS)
    ]


def _finite_differences(seed: int = 0, eps: float = 1e-6) -> torch.Tensor:
    """Central differences of the DEQ loss along each direction, shape (N_DIRS,)."""
    params = list(_params(seed))
    out = []
    for v in _directions(seed):
        plus = [p + eps * d for p, d in zip(params, v, strict=True)]
        minus = [p - eps * d for p, d in zip(params, v, strict=True)]
        out.append((_deq_loss(*plus).item() - _deq_loss(*minus).item()) / (2 * eps))
    return torch.tensor(out, dtype=torch.float64)


@pytest.fixture(scope="module")
def fd_grads() -> torch.Tensor:
    return _finite_differences()


def _rel(grads: list[torch.Tensor], fd: torch.Tensor) -> float:
    """Relative error of the directional derivatives ⟨grad, v⟩ against finite differences."""
    dirs = _directions()
    ours = torch.tensor(
        [sum((g * d).sum() for g, d in zip(grads, v, strict=True)) for v in dirs],
        dtype=torch.float64,
    )
    return float((ours - fd).norm() / fd.norm())


@pytest.mark.parametrize("backward", ["anderson", "broyden", "unroll"])
def test_ift_matches_finite_differences(fd_grads, backward: str) -> None:
    spec = GradientSpec(
        name="ift",
        backward_solver=SolverSpec(name=backward, max_iter=300, tol=1e-12, stop="rel", window=1),
    )
    err = _rel(_grads(spec), fd_grads)
    print(
        f"ift ({backward} backward) vs finite differences along {N_DIRS} random "
        f"directions in (W, b, x): rel err {err:.2e}"
    )
    assert err < 1e-4


def test_phantom_approaches_ift_as_k_grows(fd_grads) -> None:
    errs = []
    for k in (1, 3, 9, 27):
        spec = GradientSpec(name="phantom", phantom_steps=k, phantom_lambda=0.5)
        errs.append(_rel(_grads(spec), fd_grads))
    print("phantom rel err vs exact gradient for k=1,3,9,27:", [f"{e:.1e}" for e in errs])
    assert all(a > b for a, b in zip(errs, errs[1:], strict=False))
    assert errs[-1] < 1e-4 < errs[0]


def test_jfb_is_finite_and_not_exact(fd_grads) -> None:
    g = _grads(GradientSpec(name="jfb"))
    assert all(torch.isfinite(t).all() for t in g)
    exact = _grads(GradientSpec(name="ift"))
    cos = sum((x * y).sum() for x, y in zip(g, exact, strict=True)) / (
        sum(x.pow(2).sum() for x in g) ** 0.5 * sum(y.pow(2).sum() for y in exact) ** 0.5
    )
    print(
        f"jfb: cosine with the exact (IFT) gradient {float(cos):.3f}, "
        f"directional rel err {_rel(g, fd_grads):.2f}"
    )
    assert 0.0 < float(cos) < 1.0 - 1e-6  # a descent direction, but an approximation


def test_bptt_equals_autograd_through_explicit_unroll() -> None:
    w, b, x = (p.clone().requires_grad_(True) for p in _params(1))
    f = _cell(w, b, x)
    # per-sample stopping: rows stop at different steps; bptt must match a per-row unroll
    sol = solve_with_grad(
        f, torch.zeros_like(x), SolverSpec(name="unroll", max_iter=40, tol=1e-4, stop="abs")
    )
    assert sol.z.requires_grad
    _loss(sol.z).backward()
    got = [w.grad.clone(), b.grad.clone(), x.grad.clone()]
    for p in (w, b, x):
        p.grad = None
    steps = sol.steps.tolist()
    rows = []
    for r, k in enumerate(steps):
        z = torch.zeros(1, D, dtype=torch.float64)
        for _ in range(k):  # k evaluations; the solution is f of the last point = k-th image
            z = torch.tanh(z @ w.T + b + x[r : r + 1])
        rows.append(z)
    _loss(torch.cat(rows)).backward()
    ref = [w.grad, b.grad, x.grad]
    print("bptt steps per sample", steps)
    assert all(torch.isfinite(t).all() for t in got)
    for a, c in zip(got, ref, strict=True):
        torch.testing.assert_close(a, c, rtol=1e-10, atol=1e-12)


def test_bptt_through_stochastic_solver_is_finite() -> None:
    w, b, x = (p.clone().requires_grad_(True) for p in _params(2))
    sol = solve_with_grad(
        _cell(w, b, x),
        torch.zeros_like(x),
        SolverSpec(name="stochastic", max_iter=30, tol=1e-6, window=5),
    )
    _loss(sol.z).backward()
    assert torch.isfinite(w.grad).all() and w.grad.abs().sum() > 0


def test_gradient_spec_errors_name_the_field() -> None:
    with pytest.raises(NoisyDEQError, match="name"):
        build(GradientSpec, {"name": "implicit"})
    with pytest.raises(NoisyDEQError, match="phantom_steps"):
        attach_gradient(lambda z: z, torch.zeros(1, 2), {"phantom_steps": 0})
    with pytest.raises(NoisyDEQError, match="backward_solver: window"):
        build(GradientSpec, {"backward_solver": {"max_iter": 3, "window": 5}})
    with pytest.raises(NoisyDEQError, match="solve_with_grad"):
        attach_gradient(lambda z: z, torch.zeros(1, 2), GradientSpec(name="bptt"))
    with pytest.raises(NoisyDEQError, match="allowed: unroll, stochastic"):
        solve_with_grad(lambda z: z, torch.zeros(1, 2), SolverSpec(name="anderson"))


def test_hutchinson_matches_exact_jacobian_norm() -> None:
    w, b, x = _params(3)
    z = torch.randn(B, D, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    z.requires_grad_(True)
    fz = _cell(w, b, x)(z)
    exact = sum(
        torch.autograd.functional.jacobian(_cell(w, b, x[i : i + 1]), z[i : i + 1].detach())
        .pow(2)
        .sum()
        for i in range(B)
    ) / (B * D)
    g = torch.Generator().manual_seed(0)
    est = jacobian_frobenius_hutchinson(fz, z, n_samples=5000, generator=g, create_graph=False)
    print(f"hutchinson {est.item():.5f} vs exact ‖J‖²_F/d {exact.item():.5f}")
    assert abs(est.item() - exact.item()) < 0.03 * exact.item()
    # seeded and reproducible; differentiable when create_graph=True
    a = jacobian_frobenius_hutchinson(fz, z, 2, torch.Generator().manual_seed(1))
    c = jacobian_frobenius_hutchinson(fz, z, 2, torch.Generator().manual_seed(1))
    assert torch.equal(a, c) and a.requires_grad


def test_torchdeq_jac_reg_uses_the_same_normalisation() -> None:
    jac = pytest.importorskip("torchdeq.loss.jacobian")
    a = torch.randn(D, D, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    z = torch.randn(B, D, dtype=torch.float64, requires_grad=True)
    fz = z @ a.T  # constant Jacobian: both estimators converge to ‖A‖²_F / D
    torch.manual_seed(0)
    theirs = jac.jac_reg(fz, z, vecs=4000, create_graph=False).item()
    ours = jacobian_frobenius_hutchinson(
        fz, z, 4000, torch.Generator().manual_seed(0), create_graph=False
    ).item()
    exact = a.pow(2).sum().item() / D
    print(f"ours {ours:.4f} torchdeq {theirs:.4f} exact {exact:.4f}")
    assert abs(ours - exact) < 0.05 * exact and abs(theirs - exact) < 0.05 * exact


@pytest.mark.parametrize("name", ["ift", "phantom", "jfb"])
def test_grad_mode_is_respected_and_value_unchanged(name: str) -> None:
    w, b, x = _params(4)
    x = x.clone().requires_grad_(True)
    f = _cell(w, b, x)
    z_star = solve(f, torch.zeros_like(x), FWD).z
    with torch.no_grad():
        z_ng = attach_gradient(f, z_star, GradientSpec(name=name))
    z_g = attach_gradient(f, z_star, GradientSpec(name=name))
    assert not z_ng.requires_grad and z_g.requires_grad
    torch.testing.assert_close(z_ng, z_g.detach(), rtol=0, atol=0)
    torch.testing.assert_close(z_g.detach(), z_star, rtol=0, atol=1e-12)  # at the fixed point
    # input gradients exist (what adversarial attacks need), finite
    (gx,) = torch.autograd.grad(z_g.sum(), x)
    assert torch.isfinite(gx).all() and gx.abs().sum() > 0


def test_ift_backward_solve_skips_traces_with_the_same_gradient(monkeypatch) -> None:
    # the hook reads only z and diverged of its solve: traces are switched off whatever the
    # spec says, and the gradient is bit-for-bit the one of a solve that records them
    # (the stop rule 'rel' needs no window; Anderson's estimate is f(z) either way)
    from noisydeq.solvers import gradients

    real = gradients.solve
    seen: list[bool] = []
    forced: list[bool] = []

    def spy(f, z0, spec, **kw):
        seen.append(spec.traces)
        if forced:  # the reference: the solve as the spec asks, traces recorded
            spec = spec.model_copy(update={"traces": True})
        sol = real(f, z0, spec, **kw)
        assert sol.trace["rel"].shape[0] == (sol.n_iter if spec.traces else 0)
        return sol

    monkeypatch.setattr(gradients, "solve", spy)
    spec = GradientSpec(name="ift", backward_solver=SolverSpec(
        name="anderson", max_iter=60, tol=1e-10, stop="rel", window=1, traces=True))
    off = _grads(spec)
    forced.append(True)
    on = _grads(spec)
    assert seen == [False, False]
    assert all(torch.equal(a, b) for a, b in zip(off, on, strict=True))


def test_ift_with_gmres_backward_matches_finite_differences(fd_grads) -> None:
    spec = GradientSpec(name="ift", backward_method="gmres", backward_solver=SolverSpec(
        name="anderson", max_iter=D, tol=1e-12, stop="rel", window=1))
    assert _rel(_grads(spec), fd_grads) < 1e-4


def test_ift_with_the_gmres_fallback_matches_finite_differences(fd_grads) -> None:
    # an Anderson cap of D leaves rows short of rel 1e-12: GMRES re-solves those (≤ D
    # products from their iterate, exact in exact arithmetic)
    from noisydeq.solvers.gradients import tally_backward

    solver = SolverSpec(name="anderson", max_iter=D, tol=1e-12, stop="rel", window=1)
    with tally_backward() as plain:
        anderson = _grads(GradientSpec(name="ift", backward_solver=solver))
    with tally_backward() as t:
        grads = _grads(GradientSpec(name="ift", backward_method="fallback",
                                    backward_solver=solver))
    assert plain.unconverged == B and t.fallback == B and t.unconverged == 0
    assert _rel(grads, fd_grads) < 1e-6 and _rel(anderson, fd_grads) > 1e-4
    # opt-in for training: the method is in the spec's dump (a trained model's key) only
    # when chosen; the default's dump is unchanged
    assert GradientSpec(backward_method="fallback").model_dump()["backward_method"] == \
        "fallback"
    assert "backward_method" not in GradientSpec().model_dump()
