"""Matrix-free sensitivity and spectra (JVPs) against the explicit-Jacobian analyses."""

import math

import pytest
import torch
import torch.nn.functional as F

from noisydeq.analysis import operators as ops
from noisydeq.analysis import probe
from noisydeq.analysis.sensitivity import deq_sensitivity, ffw_sensitivity
from noisydeq.config import NoiseSpec
from noisydeq.models import DEQ, FFW, build_model

SPEC = NoiseSpec(site="signal", kind="additive", eta=0.1)


def small_mlp(kind):
    torch.manual_seed(0)
    if kind == "deq":
        m = DEQ(6, 10, 3)
        with torch.no_grad():
            m.cell.W.weight.mul_(0.5)
    else:
        m = FFW(6, 10, 3, 3)
    return probe.prepared(m, torch.zeros(1, dtype=torch.float64))


@pytest.mark.parametrize("site", ["signal", "state"])
def test_jvp_sensitivity_with_every_column_equals_the_explicit_jacobian(site):
    spec = NoiseSpec(site=site, kind="multiplicative" if site == "state" else "additive",
                     snr_db=10.0, eta=0.1)
    x = torch.rand(3, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    m = small_mlp("deq")
    xt = probe.inputs_to_injection(m, x)
    from noisydeq.analysis.adapters import cell_fn

    want = deq_sensitivity(cell_fn(m.cell, spec), xt, 10, n_noise=4,
                           generator=torch.Generator().manual_seed(5))
    got = ops.deq_sensitivity_jvp(ops.deq_operator(m, spec, xt), xt, n_noise=4, columns=None,
                                  generator=torch.Generator().manual_seed(5))
    assert torch.allclose(got.per_sample, want.per_sample, rtol=1e-6)
    assert torch.allclose(got.abs_entry, want.abs_entry, rtol=1e-6)
    f = small_mlp("ffw")
    xt = probe.inputs_to_injection(f, x)
    want = ffw_sensitivity(probe.ffw_forward(f, spec), xt, 10, n_noise=4,
                           generator=torch.Generator().manual_seed(5))
    fwd, d = ops.ffw_forward(f, spec, xt)
    got = ops.ffw_sensitivity_jvp(fwd, d, xt, n_noise=4, columns=None,
                                  generator=torch.Generator().manual_seed(5))
    assert d == 10 and torch.allclose(got.per_sample, want.per_sample, rtol=1e-9)


def test_sampled_columns_estimate_the_mean_without_bias():
    m = small_mlp("deq")
    x = torch.rand(2, 6, dtype=torch.float64)
    xt = probe.inputs_to_injection(m, x)
    op = ops.deq_operator(m, SPEC, xt)
    exact = ops.deq_sensitivity_jvp(op, xt, n_noise=3, columns=None,
                                    generator=torch.Generator().manual_seed(2))
    est = ops.deq_sensitivity_jvp(op, xt, n_noise=3, columns=200,
                                  generator=torch.Generator().manual_seed(2))
    assert abs(est.mean - exact.mean) < 0.05 * exact.mean


def conv_matrix(weight, length):
    """The (C·L)×(C·L) matrix of a 'same' conv1d, column by column."""
    c = weight.shape[0]
    eye = torch.eye(c * length, dtype=torch.float64).reshape(-1, c, length)
    return F.conv1d(eye, weight.double(), padding=weight.shape[-1] // 2).reshape(-1, c * length).T


def halved_conv1d_deq():
    """A conv1d DEQ of 3 channels (seed 0) with its W halved, a contraction, and 4 inputs
    of length 7 (seed 3)."""
    torch.manual_seed(0)
    deq = build_model(dict(cell="conv1d", in_features=1, out_features=2, width=3,
                           weight_norm=False, input_act="identity"))
    with torch.no_grad():
        deq.cell.layer.W.weight.mul_(0.5)
    x = torch.rand(4, 1, 7, generator=torch.Generator().manual_seed(3))
    return deq, x


def test_conv1d_spectra_match_explicit_operators():
    deq, x = halved_conv1d_deq()
    rep = probe.spectrum(deq, x, generator=torch.Generator().manual_seed(0), tol=1e-8)
    W = conv_matrix(deq.cell.layer.W.weight.detach(), 7)
    assert rep.rho == pytest.approx(float(torch.linalg.eigvals(W).abs().max()), rel=1e-4)
    # ρ(∂f/∂z) at z*: J = diag(1 − z*²) W for the tanh conv cell
    with torch.no_grad():
        z = deq.double()(x.double(), return_solution=True).z
    for b in range(4):
        J = torch.diag(1 - z[b].reshape(-1) ** 2) @ W
        want = float(torch.linalg.eigvals(J).abs().max())
        assert bool(rep.jac_converged[b])
        assert float(rep.jac_rho[b]) == pytest.approx(want, rel=1e-3)
    for form, acting in (("eq57x", 3), ("eq57", 2)):  # eq57: W1 acts on z0 = 0
        ffw = build_model(dict(kind="ffw", cell="conv1d", in_features=1, out_features=2,
                               width=3, depth=3, weight_norm=False, ffw_form=form))
        rep = probe.spectrum(ffw, x, generator=torch.Generator().manual_seed(0), tol=1e-8)
        Ws = [conv_matrix(layer.W.weight.detach(), 7) for layer in ffw.layers][3 - acting:]
        prod = Ws[0]
        for w in Ws[1:]:
            prod = w @ prod
        want = float(torch.linalg.eigvals(prod).abs().max())
        assert rep.rho == pytest.approx(want, rel=1e-3) and len(rep.radii) == acting


@pytest.mark.parametrize("cell", ["residual", "mlp_stack", "mdeq"])
def test_multi_layer_cells_get_jacobian_radius_and_sensitivity(cell):
    torch.manual_seed(0)
    kw = {"residual": dict(in_features=3, out_features=2, width=2, weight_norm=False),
          "mlp_stack": dict(in_features=5, out_features=3, width=6),
          "mdeq": dict(in_features=16, out_features=3, width=2, norm_groups=2, pool=2)}[cell]
    x = {"residual": torch.rand(2, 3, 5, 5), "mlp_stack": torch.rand(2, 5),
         "mdeq": torch.rand(2, 16)}[cell]
    deq = build_model(dict(cell=cell, **kw))
    with torch.no_grad():  # a contraction, so the fixed point exists and is found
        for name, p in deq.cell.named_parameters():
            if name.endswith(".g") or (p.ndim > 1 and not name.startswith("proj")
                                       and "W2" not in name):
                p.mul_(0.3)  # (the residual cell's skip needs a large conv₂ h: see docs)
    rep = probe.spectrum(deq, x, generator=torch.Generator().manual_seed(0))
    assert math.isnan(rep.rho) and rep.jac_rho is not None and bool(rep.jac_converged.all())
    assert 0 < float(rep.jac_rho.max()) < 1
    s = probe.sensitivity(deq, x, SPEC, n_noise=2, generator=torch.Generator().manual_seed(0),
                          columns=4)
    assert s.n + s.n_failed == 4 and s.n > 0 and s.mean > 0
    ffw = build_model(dict(kind="ffw", cell=cell, depth=2, **kw))
    s = probe.sensitivity(ffw, x, SPEC, n_noise=2, generator=torch.Generator().manual_seed(0),
                          columns=4)
    assert s.n == 4 and s.mean > 0
    assert math.isnan(probe.eq12_bounds(deq, 0.1).paper)


def test_fixed_points_anderson_leaves_unconverged_are_solved_by_broyden(monkeypatch):
    """Samples whose Anderson solve fails get the Broyden fallback (operators.solve_fixed_point):
    with Anderson capped at 2 iterations, ρ(∂f/∂z*) and the sensitivity equal the uncapped
    ones; with both capped every sample fails and is reported so (NaN, counted)."""
    deq, x = halved_conv1d_deq()

    def measure():
        rep = probe.spectrum(deq, x, generator=torch.Generator().manual_seed(0), tol=1e-8)
        s = probe.sensitivity(deq, x, SPEC, n_noise=2, columns=4,
                              generator=torch.Generator().manual_seed(0))
        return rep, s

    want, s_want = measure()
    assert bool(want.jac_converged.all()) and s_want.n_failed == 0
    capped = ops.FIXED_POINT.model_copy(update={"max_iter": 2})
    monkeypatch.setattr(ops, "FIXED_POINT", capped)
    m = probe.prepared(deq, x.double())
    xt = probe.inputs_to_injection(m, x.double())

    def f(z):
        return m.cell(z.reshape(-1, 3, 7), xt).reshape(z.shape[0], -1)

    with torch.no_grad():  # the cap does fail on its own
        assert not bool(ops._solve(f, xt.new_zeros(4, 3 * 7), capped).converged.any())
    got, s_got = measure()
    assert bool(got.jac_converged.all())
    assert torch.allclose(got.jac_rho, want.jac_rho, rtol=1e-6)
    assert (s_got.n, s_got.n_failed) == (s_want.n, 0)
    assert s_got.mean == pytest.approx(s_want.mean, rel=1e-6)
    monkeypatch.setattr(ops, "FIXED_POINT_FALLBACK",
                        ops.FIXED_POINT_FALLBACK.model_copy(update={"max_iter": 2}))
    rep = probe.spectrum(deq, x, generator=torch.Generator().manual_seed(0), tol=1e-8)
    assert bool(rep.jac_rho.isnan().all()) and not bool(rep.jac_converged.any())
