"""Monotone parameterisations (Theorem 3.1, 3.3; Winston & Kolter 2020), Lemma 3.4 and
Example 3.6 checked numerically, the splitting solvers against each other."""

from __future__ import annotations

import pytest
import torch

from noisydeq.certify.fixed_point import IntervalOperator, iteration_gaps
from noisydeq.certify.interval import Interval
from noisydeq.config import SolverSpec
from noisydeq.models.splitting import (
    cg_resolvent,
    dense_resolvent,
    forward_backward,
    peaceman_rachford,
    solve_splitting,
)
from noisydeq.solvers import solve
from tests.certify.helpers import dense_from_op, small_model


def lmin_sym(a: torch.Tensor) -> float:
    return float(torch.linalg.eigvalsh((a + a.T) / 2).min())


def cell_matrix(model) -> torch.Tensor:
    """W_y of the cell (dense, or a small convolution applied to the basis)."""
    cell = model.cell
    if not cell.conv:
        return cell.weight_matrix()
    shape = (cell.width, 4, 4)
    n = shape[0] * shape[1] * shape[2]
    ops = cell.ops(shape)
    return dense_from_op(lambda e: ops.mv(e.reshape(n, *shape)).reshape(n, -1), n)


@pytest.mark.parametrize("param", ["ibp", "lben", "mon"])
@pytest.mark.parametrize("cell", ["mlp", "conv"])
@pytest.mark.parametrize("m", [0.05, 0.5])
def test_i_minus_w_at_least_m(param, cell, m):
    """I − W ⪰ m·I: smallest eigenvalue of the symmetric part ≥ m − 1e-6 (for LBEN in its
    y-coordinates, i.e. Λ − ΛW ⪰ mΛ with Λ = Γ⁻²); for ibp/lben also I − |W| ⪰ m·I and
    I₂ₕ − Ŵ ⪰ m·I (Lemma 3.4), which makes the interval fixed point exist."""
    model = small_model(param=param, cell=cell, m=m, width=3 if cell == "conv" else 12)
    with torch.no_grad():
        w = cell_matrix(model)
        eye = torch.eye(w.shape[0], dtype=w.dtype)
        assert lmin_sym(eye - w) >= m - 1e-6
        if param != "mon":
            assert lmin_sym(eye - w.abs()) >= m - 1e-6
            big = torch.cat([torch.cat([w.clamp(min=0), w.clamp(max=0)], 1),
                             torch.cat([w.clamp(max=0), w.clamp(min=0)], 1)], 0)
            assert lmin_sym(torch.eye(2 * w.shape[0], dtype=w.dtype) - big) >= m - 1e-6
        if param == "lben" and cell == "mlp":
            g = model.cell.scale()
            w_z = g[:, None] * w / g[None, :]  # W in z-coordinates (Eq. 3.7)
            lam = torch.diag(g ** -2)
            gen = torch.linalg.eigvals(torch.linalg.solve(lam, (lam - lam @ w_z
                                                                + (lam - lam @ w_z).T) / 2))
            assert float(gen.real.min()) >= m - 1e-6


@pytest.mark.parametrize("seed", range(5))
def test_theorem_31_random_m_makes_interval_iteration_contract(seed):
    """Random M (any scale): W = D^{-1/2}MD^{-1/2} gives I₂ₕ − Ŵ ⪰ m·I, and the damped
    interval iteration from two different starts reaches the same point, contracting."""
    g = torch.Generator().manual_seed(seed)
    h, m = 20, 0.1
    mm = torch.randn(h, h, generator=g, dtype=torch.float64) * (10.0 ** (seed - 2))
    d = ((mm.abs().sum(1) + mm.abs().sum(0)) / (2 * (1 - m))).rsqrt()
    w = d[:, None] * mm * d[None, :]
    wp, wn = w.clamp(min=0), w.clamp(max=0)
    big = torch.cat([torch.cat([wp, wn], 1), torch.cat([wn, wp], 1)], 0)
    assert lmin_sym(torch.eye(2 * h, dtype=w.dtype) - big) >= m - 1e-9
    v = torch.randn(2, 2 * h, generator=g, dtype=torch.float64)
    v[:, :h] += 1.0
    alpha = m / float(torch.linalg.matrix_norm(torch.eye(2 * h, dtype=w.dtype) - big, 2)) ** 2

    def step(y):
        return torch.relu((1 - alpha) * y + alpha * (y @ big.T + v))

    a, b = torch.zeros(2, 2 * h, dtype=w.dtype), 10 * torch.rand(2, 2 * h, generator=g,
                                                                  dtype=w.dtype)
    dist = [float((a - b).norm())]
    for _ in range(3000):
        a, b = step(a), step(b)
        dist.append(float((a - b).norm()))
    assert all(d1 <= d0 + 1e-12 for d0, d1 in zip(dist, dist[1:], strict=False))
    assert dist[-1] < 1e-6 * dist[0]


def test_example_36_satisfies_eq34_with_norm_19():
    """Example 3.6: W = [[0, 1.9], [0.05, 0]] = D^{-1/2}MD^{-1/2} with M = W, D = I satisfies
    the condition of Theorem 3.1 although ‖W‖_op = 1.9; its interval iteration converges."""
    w = torch.tensor([[0.0, 1.9], [0.05, 0.0]], dtype=torch.float64)
    dd = (w.abs().sum(1) + w.abs().sum(0)) / 2
    assert bool((torch.ones(2, dtype=w.dtype) > dd).all())
    assert float(torch.linalg.matrix_norm(w, 2)) == pytest.approx(1.9)
    assert lmin_sym(torch.eye(2, dtype=w.dtype) - w.abs()) > 0
    big = torch.cat([torch.cat([w.clamp(min=0), w.clamp(max=0)], 1),
                     torch.cat([w.clamp(max=0), w.clamp(min=0)], 1)], 0)
    v = torch.tensor([[1.0, 0.5, -1.0, 0.2]], dtype=w.dtype)  # [v̄; v̲]
    y = torch.zeros(1, 4, dtype=w.dtype)
    for _ in range(2000):
        y = torch.relu(0.5 * y + 0.5 * (y @ big.T + v))
    assert float((torch.relu(y @ big.T + v) - y).norm()) < 1e-10
    assert bool((y[:, :2] >= y[:, 2:]).all())


def test_monotone_deq_whose_interval_iteration_diverges():
    """A monDEQ with I − W ⪰ 0.1·I (W = 0.9 I + a cyclic skew S) whose standard iteration
    converges but whose interval iteration (Eq. 3.3) diverges: |W| = 0.9 I + a(C + Cᵀ) has
    eigenvalue 0.9 + 2a > 1 (Lemma 3.4), and once the lower bounds sit at 0 the upper ones
    follow W₊ = 0.9 I + a C, of spectral radius 0.9 + a > 1."""
    m, a = 0.1, 0.5
    c = torch.roll(torch.eye(3, dtype=torch.float64), 1, dims=1)  # cyclic permutation
    w = (1 - m) * torch.eye(3, dtype=torch.float64) + a * (c - c.T)
    eye = torch.eye(3, dtype=w.dtype)
    assert lmin_sym(eye - w) == pytest.approx(m)
    assert lmin_sym(eye - w.abs()) == pytest.approx(m - 2 * a)
    v = torch.tensor([[0.3, 0.2, 0.1]], dtype=w.dtype)
    alpha = 0.1
    z = torch.zeros_like(v)
    for _ in range(3000):
        z = torch.relu((1 - alpha) * z + alpha * (z @ w.T + v))
    assert float((torch.relu(z @ w.T + v) - z).norm()) < 1e-8  # the DEQ is fine
    big = torch.cat([torch.cat([w.clamp(min=0), w.clamp(max=0)], 1),
                     torch.cat([w.clamp(max=0), w.clamp(min=0)], 1)], 0)
    vb = torch.cat([v + 0.1, v - 0.1], 1)
    y = torch.zeros_like(vb)
    gaps = []
    for _ in range(3000):
        y = torch.relu((1 - alpha) * y + alpha * (y @ big.T + vb))
        gaps.append(float((y[:, :3] - y[:, 3:]).mean()))
    assert gaps[-1] > 1e30 and gaps[-1] > 1e10 * gaps[100]


def test_random_dense_mondeq_interval_gap_blows_up_ibp_settles():
    """Fig. 2 right on random layers: the mean interval width of the plain monDEQ grows
    without bound, the IBP-MonDEQ's settles (same m, α = 0.1)."""
    from noisydeq.config import MonotoneSpec
    from noisydeq.models.mondeq import MonDEQ

    x = torch.rand(20, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = {}
    for param in ("mon", "ibp"):
        torch.manual_seed(0)
        model = MonDEQ(16, 32, 4, monotone=MonotoneSpec(param=param, batch_norm=False,
                                                        ibp_init=False)).double().eval()
        iv = Interval.box(x, 0.1)
        with torch.no_grad():
            v = Interval(model.proj(iv.lo), model.proj(iv.hi)).add(model.cell.bias)
        out[param] = iteration_gaps(model, v, 0.1, 300)
    assert out["mon"][-1] > 1e6 * out["mon"][0]
    assert out["ibp"][-1] == pytest.approx(out["ibp"][-2], rel=1e-6)
    assert out["ibp"][-1] < 10 * max(out["ibp"][:5])


@pytest.mark.parametrize("param", ["ibp", "lben", "mon"])
@pytest.mark.parametrize("cell", ["mlp", "conv"])
def test_splittings_and_methods_agree(param, cell):
    """Forward–backward (unroll, α < 1), FB + Anderson and Peaceman–Rachford (dense LU or
    conjugate gradients) reach the same equilibrium z = relu(Wz + v)."""
    model = small_model(param=param, cell=cell, width=3 if cell == "conv" else 12)
    cellm = model.cell
    x = torch.rand(6, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        v = cellm.to_y(model.inject(x))
        ops = cellm.ops(tuple(v.shape[1:]) if cellm.conv else None)

        def pre(y):
            return ops.mv(y) + v

        tight = SolverSpec(name="unroll", max_iter=20000, tol=1e-12, stop="abs", window=1,
                           traces=False)
        fb = solve_splitting("fb", 0.05, pre, torch.zeros_like(v), tight)
        anderson = solve_splitting("fb", 0.5, pre, torch.zeros_like(v),
                                   tight.model_copy(update={"name": "anderson", "max_iter": 500}))
        res = ops.resolvent(1.0)
        pr = solve_splitting("pr", 1.0, pre, torch.zeros_like(v),
                             tight.model_copy(update={"max_iter": 2000}), resolvent=res, v=v)
        for sol in (fb, anderson, pr):
            assert bool(sol.converged.all()), sol.reason
            assert float((torch.relu(pre(sol.z)) - sol.z).abs().max()) < 1e-8
        assert torch.allclose(fb.z, anderson.z, atol=1e-8)
        assert torch.allclose(fb.z, pr.z, atol=1e-8)


def test_resolvents_solve_the_linear_system():
    g = torch.Generator().manual_seed(3)
    w = torch.randn(7, 7, generator=g, dtype=torch.float64) * 0.3
    r = torch.randn(4, 7, generator=g, dtype=torch.float64)
    a = (1 + 0.7) * torch.eye(7, dtype=w.dtype) - 0.7 * w
    want = torch.linalg.solve(a, r.T).T
    assert torch.allclose(dense_resolvent(w, 0.7)(r), want, atol=1e-12)
    cg = cg_resolvent(lambda y: y @ w.T, lambda y: y @ w, 0.7)
    assert torch.allclose(cg(r), want, atol=1e-8)


def test_pr_converges_where_plain_iteration_does_not():
    """A monotone W = diag(−4, 0.5) (I − W ⪰ 0.5·I): the plain iteration z ← relu(Wz + v)
    oscillates between 0 and 1 in the first unit, Peaceman–Rachford (any α > 0) converges to
    the equilibrium (1/5, 2)."""
    w = torch.tensor([[-4.0, 0.0], [0.0, 0.5]], dtype=torch.float64)
    v = torch.tensor([[1.0, 1.0]], dtype=w.dtype)

    def pre(y):
        return y @ w.T + v

    spec = SolverSpec(name="unroll", max_iter=400, tol=1e-10, stop="abs", window=1)
    plain = solve(forward_backward(pre, 1.0), torch.zeros_like(v), spec)
    pr = solve(peaceman_rachford(dense_resolvent(w, 1.0), v, 1.0), torch.zeros_like(v), spec)
    assert not bool(plain.converged.any())
    assert bool(pr.converged.all())
    z = torch.relu(pr.z)
    assert torch.allclose(z, torch.tensor([[0.2, 2.0]], dtype=w.dtype), atol=1e-9)


def test_lben_is_ibp_in_rescaled_coordinates():
    """z* of the LBEN cell = Γ · (the IBP cell's equilibrium for the injection Γ⁻¹v), and
    the LBEN interval operator is Γ̂ Ŵ_ibp Γ̂⁻¹ (positive diagonal scaling)."""
    model = small_model(param="lben")
    cell = model.cell
    x = torch.rand(5, 16, dtype=torch.float64)
    with torch.no_grad():
        z = model(x, return_solution=True).z
        g = cell.scale()
        w_z = g[:, None] * cell.weight_matrix() / g[None, :]
        v = model.inject(x)
        assert float((torch.relu(z @ w_z.T + v) - z).abs().max()) < 1e-5
        op = IntervalOperator(cell, cell.diag_inv_sqrt())
        y = torch.rand(3, 2, 12, dtype=torch.float64)
        lhs = op(y / g) * g
        wp, wn = w_z.clamp(min=0), w_z.clamp(max=0)
        rhs = torch.stack((y[:, 0] @ wp.T + y[:, 1] @ wn.T, y[:, 0] @ wn.T + y[:, 1] @ wp.T), 1)
        assert torch.allclose(lhs, rhs, atol=1e-12)
