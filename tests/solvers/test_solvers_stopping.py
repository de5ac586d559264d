"""Per-sample stop rules, freezing, random thresholds (paper E.3) and traces."""

from __future__ import annotations

import math

import pytest
import torch

from noisydeq.config import SolverSpec
from noisydeq.solvers import solve


class Spy:
    """f(z) = s ⊙ z + c per sample (scalar contraction s_b), recording every input batch."""

    def __init__(self, s: list[float], c: float = 1.0, d: int = 3) -> None:
        self.s = torch.tensor(s, dtype=torch.float64)[:, None]
        self.c = c
        self.d = d
        self.inputs: list[torch.Tensor] = []

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        self.inputs.append(z.clone())
        return self.s * z + self.c


class TanhSpy(Spy):
    """f(z) = tanh(s_b W z + x) per sample: harder (slower) for larger s_b; records inputs."""

    def __init__(self, s: list[float], d: int = 8) -> None:
        super().__init__(s, d=d)
        g = torch.Generator().manual_seed(5)
        w = torch.randn(d, d, generator=g, dtype=torch.float64)
        self.w = w / torch.linalg.matrix_norm(w, 2)
        self.x = torch.randn(len(s), d, generator=g, dtype=torch.float64)

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        self.inputs.append(z.clone())
        return torch.tanh(self.s * (z @ self.w.T) + self.x)


def test_unroll_stop_steps_match_closed_form_per_sample() -> None:
    # From z0 = 0, x_k = c (1 − s^k)/(1 − s) and ‖f(x_k) − x_k‖ = c s^k √d, so the abs rule
    # first holds at k* = ceil(log(tol / (c √d)) / log s) and the sample makes k* + 1 calls.
    s = [0.1, 0.5, 0.8, 0.95]
    f = Spy(s)
    tol = 1e-8
    sol = solve(
        f,
        torch.zeros(4, 3, dtype=torch.float64),
        SolverSpec(name="unroll", max_iter=1000, tol=tol, stop="abs"),
    )
    expected = [math.ceil(math.log(tol / math.sqrt(3)) / math.log(si)) + 1 for si in s]
    print("steps", sol.steps.tolist(), "expected", expected)
    assert sol.steps.tolist() == expected
    assert sol.n_iter == max(expected)
    assert sol.converged.all()
    # every call sees the full batch (block noise streams stay aligned)
    assert all(z.shape == (4, 3) for z in f.inputs)


@pytest.mark.parametrize("name", ["unroll", "anderson", "broyden", "stochastic"])
def test_stopped_samples_are_frozen(name: str) -> None:
    f = TanhSpy([0.1, 0.5, 0.95])
    sol = solve(
        f,
        torch.zeros(3, 8, dtype=torch.float64),
        SolverSpec(name=name, max_iter=400, tol=1e-7, stop="rel", window=3),
    )
    assert sol.converged.all()
    steps = sol.steps.tolist()
    print(name, "steps", steps)
    assert steps[0] < steps[2]  # different difficulties stop at different steps
    for b, k in enumerate(steps):
        frozen = [z[b] for z in f.inputs[k - 1 :]]
        for z in frozen:
            torch.testing.assert_close(z, frozen[0], rtol=0, atol=0)
        rel = sol.trace["rel"][:, b]
        assert torch.isfinite(rel[:k]).all() and torch.isnan(rel[k:]).all()
        assert rel[k - 1] < 1e-7 <= rel[: k - 1].min() or name == "stochastic"


def test_solution_matches_stop_point_definition() -> None:
    f = Spy([0.3, 0.7])
    sol = solve(
        f,
        torch.zeros(2, 3, dtype=torch.float64),
        SolverSpec(name="unroll", max_iter=100, tol=1e-6, stop="abs"),
    )
    for b, k in enumerate(sol.steps.tolist()):
        x_last = f.inputs[k - 1][b]
        torch.testing.assert_close(sol.z[b], f.s[b] * x_last + 1.0)  # f of the last point


def test_random_threshold_steps_in_range_and_seeded() -> None:
    m, batch = 8, 400
    spec = SolverSpec(
        name="unroll", max_iter=m, tol=1e-30, stop="abs", random_threshold=True, window=1
    )
    f = lambda z: 0.9 * z + 1.0  # noqa: E731

    def run(seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return solve(f, torch.zeros(batch, 2, dtype=torch.float64), spec, generator=g).steps

    a, b, c = run(0), run(0), run(1)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.min() >= 1 and a.max() <= m
    counts = torch.bincount(a, minlength=m + 1)[1:]
    print("threshold histogram", counts.tolist())
    assert (counts > 0).all()  # every value 1..M is drawn
    # uniform: each bin within 5 sigma of batch/M
    sigma = math.sqrt(batch * (1 / m) * (1 - 1 / m))
    assert ((counts.double() - batch / m).abs() < 5 * sigma).all()


def test_mean_rel_trace_is_eq54_for_affine_f() -> None:
    # For affine f the window-mean of f(z_i) equals f(z̃), so the trace must equal Eq. 54.
    f = Spy([0.5, 0.9], d=3)
    w = 4
    sol = solve(
        f,
        torch.zeros(2, 3, dtype=torch.float64),
        SolverSpec(name="unroll", max_iter=30, tol=1e-30, stop="abs", window=w),
    )
    xs = torch.stack(f.inputs)  # (n_iter, B, D)
    for k in range(sol.n_iter):
        zt = xs[max(0, k - w + 1) : k + 1].mean(0)
        fzt = f.s * zt + 1.0
        ref = (fzt - zt).norm(dim=1) / fzt.norm(dim=1)
        torch.testing.assert_close(sol.trace["mean_rel"][k], ref)


def test_mean_rel_waits_for_a_full_window() -> None:
    f = Spy([0.0])  # f is constant: rel residual is 0 from the second call on
    sol = solve(
        f,
        torch.zeros(1, 3, dtype=torch.float64),
        SolverSpec(name="unroll", max_iter=50, tol=1e-3, stop="mean_rel", window=6),
    )
    assert sol.steps.item() >= 6


def test_traces_can_be_disabled_without_changing_the_result() -> None:
    spec = dict(name="anderson", max_iter=100, tol=1e-9, stop="mean_rel", window=3)
    on = solve(Spy([0.4, 0.8]), torch.zeros(2, 3, dtype=torch.float64), SolverSpec(**spec))
    off = solve(
        Spy([0.4, 0.8]), torch.zeros(2, 3, dtype=torch.float64), SolverSpec(**spec, traces=False)
    )
    assert torch.equal(on.z, off.z) and torch.equal(on.steps, off.steps)
    assert off.trace["abs"].shape == (0, 2)
    assert on.final("mean_rel").max() < 1e-9


def test_same_inputs_same_results() -> None:
    spec = SolverSpec(name="broyden", max_iter=50, tol=1e-8)
    a = solve(Spy([0.4, 0.8]), torch.zeros(2, 3, dtype=torch.float64), spec)
    b = solve(Spy([0.4, 0.8]), torch.zeros(2, 3, dtype=torch.float64), spec)
    assert torch.equal(a.z, b.z) and torch.equal(
        a.trace["rel"].nan_to_num(), b.trace["rel"].nan_to_num()
    )
