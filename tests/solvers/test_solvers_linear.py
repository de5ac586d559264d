"""Every solver against closed forms (linear f) and against torchdeq (tanh cell)."""

from __future__ import annotations

import pytest
import torch

from noisydeq.config import SolverSpec, build
from noisydeq.errors import NoisyDEQError
from noisydeq.solvers import solve

D, B = 40, 6


def _linear_problem(seed: int = 0, radius: float = 0.9):
    """f(z) = A z + b with symmetric A, eigenvalues in [-radius, radius] (‖A‖₂ = radius)."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=torch.float64))
    a = q @ torch.diag(torch.linspace(-radius, radius, D, dtype=torch.float64)) @ q.T
    b = torch.randn(B, D, generator=g, dtype=torch.float64)
    z_star = torch.linalg.solve(torch.eye(D, dtype=torch.float64) - a, b.T).T
    f = lambda z, b=b: z @ a.T + b  # noqa: E731
    f.a = a
    return f, b, z_star


SPECS = {
    "unroll": dict(name="unroll", max_iter=400, tol=1e-9, stop="abs"),
    "unroll_damped": dict(name="unroll", tau=0.7, max_iter=400, tol=1e-9, stop="abs"),
    "anderson": dict(name="anderson", max_iter=200, tol=1e-9, stop="abs"),
    "anderson_mixed": dict(
        name="anderson", m=8, lam=1e-3, beta=0.7, max_iter=200, tol=1e-9, stop="abs"
    ),
    "broyden": dict(name="broyden", max_iter=200, tol=1e-9, stop="abs"),
    "broyden_m10": dict(name="broyden", m=10, max_iter=300, tol=1e-9, stop="abs"),
    "stochastic": dict(
        name="stochastic", max_iter=3000, tol=1e-9, stop="abs", alpha0=0.5, window=10
    ),
    "stochastic_rm": dict(
        name="stochastic",
        max_iter=3000,
        tol=1e-9,
        stop="mean_rel",
        alpha0=1.0,
        gamma=0.1,
        window=8,
    ),
}


@pytest.mark.parametrize("key", list(SPECS))
def test_linear_fixed_point_matches_closed_form(key: str) -> None:
    f, b, z_star = _linear_problem()
    sol = solve(f, torch.zeros_like(b), build(SolverSpec, SPECS[key]))
    err = ((sol.z - z_star).norm(dim=1) / z_star.norm(dim=1)).max().item()
    print(f"{key}: n_iter={sol.n_iter} max rel err={err:.2e} ({sol.reason})")
    assert sol.converged.all() and not sol.diverged.any()
    assert err < 1e-6
    assert sol.z.dtype == torch.float64
    assert sol.trace["abs"].shape == (sol.n_iter, B)


def test_accelerated_solvers_need_fewer_steps_than_unroll() -> None:
    f, b, _ = _linear_problem()
    steps = {
        k: solve(f, torch.zeros_like(b), build(SolverSpec, SPECS[k])).n_iter
        for k in ("unroll", "anderson", "broyden")
    }
    print(steps)
    assert steps["anderson"] < steps["unroll"] / 2
    assert steps["broyden"] < steps["unroll"] / 2


def _tanh_cell(seed: int = 3, d: int = 30, batch: int = 5):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d, d, generator=g, dtype=torch.float64) * (0.9 / d**0.5)
    x = torch.randn(batch, d, generator=g, dtype=torch.float64)
    return (lambda z: torch.tanh(z @ w.T + x)), x


@pytest.mark.parametrize(
    "ours,theirs",
    [("unroll", "fixed_point_iter"), ("anderson", "anderson"), ("broyden", "broyden")],
)
def test_fixed_points_agree_with_torchdeq(ours: str, theirs: str) -> None:
    get_solver = pytest.importorskip("torchdeq.solver").get_solver
    f, x = _tanh_cell()
    z0 = torch.zeros_like(x)
    sol = solve(f, z0, SolverSpec(name=ours, max_iter=300, tol=1e-11, stop="abs"))
    z_ref, _, _ = get_solver(theirs)(f, z0, max_iter=300, tol=1e-11, stop_mode="abs")
    diff = (sol.z - z_ref).abs().max().item()
    print(f"{ours} vs torchdeq {theirs}: max |Δz| = {diff:.2e}, ours {sol.n_iter} iterations")
    assert sol.converged.all()
    assert diff < 1e-5


@pytest.mark.parametrize("name", ["unroll", "anderson", "broyden", "stochastic"])
def test_nan_input_is_flagged_diverged_not_raised(name: str) -> None:
    f, b, z_star = _linear_problem()
    z0 = torch.zeros_like(b)
    z0[2, 5] = float("nan")
    sol = solve(f, z0, SolverSpec(name=name, max_iter=60, tol=1e-6, stop="rel"))
    assert sol.diverged.tolist() == [i == 2 for i in range(B)]
    assert not sol.converged[2]
    assert sol.steps[2] == 1
    # the other samples are unaffected by the NaN row (where-masking, guarded solves)
    others = [i for i in range(B) if i != 2]
    b_others = b[others]
    clean = solve(
        lambda z: z @ f.a.T + b_others,
        torch.zeros_like(b_others),
        SolverSpec(name=name, max_iter=60, tol=1e-6, stop="rel"),
    )
    torch.testing.assert_close(sol.z[others], clean.z, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", ["unroll", "anderson", "broyden"])
def test_blowup_is_flagged_and_last_finite_estimate_kept(name: str) -> None:
    # f(z) = 3 z + 1 on sample 0 (repelling), contractive on the others
    scale = torch.tensor([3.0, 0.5, 0.5], dtype=torch.float64)[:, None]
    f = lambda z: scale * z + 1.0  # noqa: E731
    sol = solve(
        f,
        torch.zeros(3, 4, dtype=torch.float64),
        SolverSpec(name=name, max_iter=200, tol=1e-10, stop="abs"),
    )
    if name == "unroll":  # plain iteration runs away from the repelling fixed point
        assert sol.diverged.tolist() == [True, False, False]
        assert torch.isfinite(sol.z).all()
    else:  # Anderson/Broyden solve the affine problem exactly: z = -1/2 on sample 0
        assert sol.converged.all()
        torch.testing.assert_close(sol.z[0], torch.full((4,), -0.5, dtype=torch.float64))
    torch.testing.assert_close(sol.z[1:], torch.full((2, 4), 2.0, dtype=torch.float64))


def test_overflow_to_inf_is_flagged() -> None:
    f = lambda z: z * 1e200 + 1.0  # noqa: E731
    sol = solve(
        f,
        torch.ones(2, 3, dtype=torch.float64),
        SolverSpec(name="unroll", max_iter=20, diverge_factor=1e300),
    )
    assert sol.diverged.all()
    assert torch.isfinite(sol.z).all()


@pytest.mark.parametrize(
    "data,field",
    [
        ({"name": "andersen"}, "name"),
        ({"stop": "relative"}, "stop"),
        ({"window": 50, "max_iter": 10}, "window"),
        ({"alpha0": 0.0}, "alpha0"),
        ({"alpha0": 1.5}, "alpha0"),
        ({"tol": 0.0}, "tol"),
        ({"m": 0}, "m"),
        ({"tau": 1.2}, "tau"),
        ({"gamma": -0.1}, "gamma"),
        ({"max_iter": 0}, "max_iter"),
        ({"tolerance": 1e-3}, "tol"),
    ],
)
def test_bad_solver_specs_name_the_field(data: dict, field: str) -> None:
    with pytest.raises(NoisyDEQError, match=field):
        solve(lambda z: z, torch.zeros(2, 3), data)


def test_bad_inputs_are_clear_errors() -> None:
    with pytest.raises(NoisyDEQError, match="shaped like z"):
        solve(lambda z: z[:, :2], torch.zeros(2, 3), SolverSpec(name="unroll"))
    with pytest.raises(NoisyDEQError, match="floating"):
        solve(lambda z: z, torch.zeros(2, 3, dtype=torch.long), SolverSpec(name="unroll"))
    with pytest.raises(NoisyDEQError, match="random_threshold"):
        solve(lambda z: z, torch.zeros(2, 3), SolverSpec(name="unroll", random_threshold=True))


@pytest.mark.parametrize("name", ["unroll", "anderson", "broyden", "stochastic"])
def test_trailing_shapes_and_float32(name: str) -> None:
    # conv-like state (B, C, H, W) in float32: solution keeps shape and dtype
    g = torch.Generator().manual_seed(2)
    c = torch.randn(4, 2, 3, 3, generator=g)
    f = lambda z: 0.5 * torch.tanh(z.flip(-1)) + c  # noqa: E731
    sol = solve(
        f, torch.zeros_like(c), SolverSpec(name=name, max_iter=300, tol=1e-5, stop="rel", window=5)
    )
    assert sol.z.shape == c.shape and sol.z.dtype == torch.float32
    assert sol.converged.all()
    assert (f(sol.z) - sol.z).flatten(1).norm(dim=1).max() < 1e-3
