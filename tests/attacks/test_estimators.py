"""DEQ gradient estimators against the exact implicit gradient, states, warm starts."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from noisydeq.attacks import EstimatorSpec, make_estimator, parse_estimator, record_states
from noisydeq.attacks import adjoint as adj
from noisydeq.config import SolverSpec
from noisydeq.errors import NoisyDEQError
from tests.attacks.helpers import small_deq, small_ffw


def _grad(est, x, y):
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(est(xr), y, reduction="sum"), xr)
    return g


def _cos(a, b):
    return float(F.cosine_similarity(a.flatten(), b.flatten(), dim=0))


@pytest.fixture
def data():
    torch.manual_seed(1)
    return torch.rand(6, 16, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2])


@pytest.mark.parametrize("solver", ["broyden", "unroll"])
@pytest.mark.parametrize("name", ["adjoint", "adjoint:beta=1", "phantom:k=40,lam=1",
                                  "unrolled:k=40,lam=0.8", "adjoint-ensemble",
                                  "unrolled-ensemble:k=5"])
def test_estimators_approach_the_exact_gradient_at_convergence(data, solver, name) -> None:
    x, y = data
    m = small_deq(SolverSpec(name=solver, max_iter=60, tol=1e-10, stop="abs"))
    exact = _grad(make_estimator(m, EstimatorSpec(name="exact")), x, y)
    g = _grad(make_estimator(m, parse_estimator(name)), x, y)
    assert _cos(g, exact) >= 0.99


def test_adjoint_uses_the_transpose_of_broydens_inverse_jacobian(data, monkeypatch) -> None:
    # with B_nᵀ the adjoint state converges to u* (Eq. 3); B_n itself is off by the
    # asymmetric part of J_f (truncated at 12 steps to see the difference)
    x, y = data
    m = small_deq(SolverSpec(name="broyden", max_iter=12, tol=1e-10, stop="abs"), scale=0.9)
    ref = small_deq(SolverSpec(name="broyden", max_iter=80, tol=1e-12, stop="abs"), scale=0.9)
    exact = _grad(make_estimator(ref, EstimatorSpec(name="exact")), x, y)
    est = parse_estimator("adjoint:beta=1")
    err_t = (_grad(make_estimator(m, est), x, y) - exact).norm() / exact.norm()

    def untransposed(self, n, v):
        c, b = self.counts[n], self.broyden
        return adj.combine(adj.coefs(b.V[:, :c], v), b.U[:, :c]) - v

    monkeypatch.setattr(adj.AdjointRecord, "bt", untransposed)
    err_b = (_grad(make_estimator(m, est), x, y) - exact).norm() / exact.norm()
    assert float(err_t) < 1e-2
    assert float(err_t) < float(err_b)


def test_states_are_the_unroll_iterates_and_the_ensemble_their_mean(data) -> None:
    x, _ = data
    m = small_deq(SolverSpec(name="unroll", max_iter=7, tol=1e-12, stop="abs"))
    st = record_states(m, x)
    xt = m.inject(x)
    z = torch.zeros_like(xt)
    iterates = []
    for _ in range(7):
        z = m.cell(z, xt)
        iterates.append(z)
    for n in range(1, 8):
        assert torch.allclose(st.at(n), iterates[n - 1], atol=1e-12)
    assert torch.allclose(st.mean(), torch.stack(iterates).mean(0), atol=1e-12)


def test_state_after_a_samples_stop_is_its_solution(data) -> None:
    x, _ = data
    m = small_deq(SolverSpec(name="unroll", max_iter=40, tol=1e-4, stop="abs"))
    st = record_states(m, x)
    steps = st.solution.steps
    assert int(steps.min()) < st.n_max or int(steps.max()) <= st.n_max
    assert torch.equal(st.at(st.n_max + 5), st.solution.z)
    b = int(steps.argmin())
    assert torch.equal(st.at(int(steps[b]))[b], st.solution.z[b])


def test_warm_start_keeps_the_gradient_and_saves_solver_steps(data) -> None:
    x, y = data
    m = small_deq(SolverSpec(name="anderson", max_iter=60, tol=1e-8, stop="rel"))
    cold = make_estimator(m, parse_estimator("exact:warm=false"))
    warm = make_estimator(m, EstimatorSpec(name="exact"))
    for est in (cold, warm):
        est(x)  # first solve from 0
        est.solves = 0
    xs = x + 1e-3 * torch.randn_like(x)
    g_cold, g_warm = _grad(cold, xs, y), _grad(warm, xs, y)
    assert torch.allclose(g_cold, g_warm, atol=1e-6)
    assert warm.solves < cold.solves


def test_deq_forward_z0_argument(data) -> None:
    x, _ = data
    m = small_deq()
    base = m(x, return_solution=True)
    again = m(x, return_solution=True, z0=base.solution.z)
    assert torch.allclose(again.logits, base.logits, atol=1e-9)
    assert int(again.solution.steps.max()) < int(base.solution.steps.max())
    with pytest.raises(NoisyDEQError, match="z0"):
        m(x, z0=torch.zeros(2, 3, dtype=torch.float64))


def test_estimator_errors() -> None:
    with pytest.raises(NoisyDEQError, match="only for DEQs"):
        make_estimator(small_ffw(), EstimatorSpec(name="exact"))
    m = small_deq(SolverSpec(name="anderson", max_iter=10))
    est = make_estimator(m, EstimatorSpec(name="adjoint"))
    with pytest.raises(NoisyDEQError, match="inverse-Jacobian"):
        est(torch.rand(2, 16, dtype=torch.float64))
    with pytest.raises(NoisyDEQError, match="did you mean 'adjoint'"):
        parse_estimator("ajoint")
    with pytest.raises(NoisyDEQError, match="did you mean 'lam'"):
        parse_estimator("phantom:lma=0.5")


def test_adjoint_gradient_approaches_the_exact_one_as_the_solve_converges(data) -> None:
    x, y = data
    ref = small_deq(SolverSpec(name="broyden", max_iter=80, tol=1e-12, stop="abs"), scale=0.9)
    exact = _grad(make_estimator(ref, EstimatorSpec(name="exact")), x, y)
    cos = []
    for n in (2, 6, 40):
        m = small_deq(SolverSpec(name="broyden", max_iter=n, tol=1e-12, stop="abs", window=1),
                      scale=0.9)
        cos.append(_cos(_grad(make_estimator(m, EstimatorSpec(name="adjoint")), x, y), exact))
    assert cos[0] < cos[1] < cos[2] and cos[2] >= 0.99


def test_eot_through_a_noisy_deployed_model_averages_the_device_noise(data) -> None:
    from noisydeq.attacks.pgd import loss_and_grad
    from noisydeq.hardware import get_device, set_stream
    from noisydeq.noise import NoiseStream

    x, y = data
    m = small_deq(SolverSpec(name="unroll", max_iter=40, tol=1e-8, stop="abs"), dtype=torch.float32)
    x = x.float()
    clean = _grad(make_estimator(m, EstimatorSpec(name="exact")), x, y)
    chip = get_device("snr").new_chip(1).at_snr(5.0).deploy(m).eval()
    set_stream(chip, NoiseStream.from_seed(0))
    est = make_estimator(chip, EstimatorSpec(name="exact"))
    _, one = loss_and_grad(est, x, y, eot=1)
    _, many = loss_and_grad(est, x, y, eot=32)
    assert one.abs().sum() > 0  # straight-through gradients reach the input
    assert _cos(many, clean) > _cos(one, clean)


def test_conv_deq_estimators_and_defences_run_on_image_states() -> None:
    from noisydeq.attacks import defended_correct, parse_defence, pgd
    from noisydeq.models import ConvDEQ
    from tests.attacks.helpers import frozen

    torch.manual_seed(0)
    m = frozen(ConvDEQ(64, 4, 3, solver=SolverSpec(name="unroll", max_iter=20, tol=1e-6,
                                                    stop="abs")))
    x, y = torch.rand(5, 64), torch.tensor([0, 1, 2, 0, 1])
    exact = _grad(make_estimator(m, EstimatorSpec(name="exact")), x, y)
    for name, least in (("adjoint", 0.99), ("unrolled:k=20,lam=1", 0.99),
                        ("unrolled-ensemble:k=1", 0.5)):  # the ensemble includes early states
        g = _grad(make_estimator(m, parse_estimator(name)), x, y)
        assert g.shape == x.shape and _cos(g, exact) > least
    adv = pgd(make_estimator(m, EstimatorSpec(name="exact")), x, y, eps=0.1, steps=3,
              generator=torch.Generator().manual_seed(0))
    ok = defended_correct(m, adv, y, [parse_defence("early:n=2"), parse_defence("ensemble")])
    assert set(ok) == {"early(z2)", "ensemble"} and ok["ensemble"].shape == (5,)
