"""Spectra (eigvals, products, power method) and Eq. 12 bounds against direct computations."""

import math

import pytest
import torch

from noisydeq.analysis import bounds, probe, spectra
from noisydeq.analysis.jacobians import jacobians
from noisydeq.config import NoiseSpec
from noisydeq.errors import NoisyDEQError
from noisydeq.models import DEQ, FFW

D = torch.float64


def _g(seed):
    return torch.Generator().manual_seed(seed)


def test_products_and_radii_match_numpy():
    import numpy as np

    g = _g(0)
    Ws = [torch.randn(6, 6, generator=g, dtype=D) for _ in range(3)]
    rhos = spectra.product_spectral_radii(Ws)
    npW = [W.numpy() for W in Ws]
    P = np.eye(6)
    for k, W in enumerate(npW):
        P = W @ P
        assert rhos[k] == pytest.approx(np.abs(np.linalg.eigvals(P)).max(), rel=1e-10)


def test_power_method_real_and_rotating_dominant_modes():
    g = _g(1)
    q, _ = torch.linalg.qr(torch.randn(12, 12, generator=g, dtype=D))
    sym = q @ torch.diag(torch.linspace(-1.5, 1.0, 12, dtype=D)) @ q.T  # ρ = 1.5 (negative)
    rot = torch.zeros(12, 12, dtype=D)
    rot[:2, :2] = torch.tensor([[0.6, -0.8], [0.8, 0.6]], dtype=D) * 1.3  # complex pair |λ|=1.3
    rot[2:, 2:] = torch.diag(torch.linspace(0.1, 0.9, 10, dtype=D))
    rot = q @ rot @ q.T
    for M, rho in ((sym, 1.5), (rot, 1.3)):
        batch = torch.stack([M, 0.5 * M])
        res = spectra.jacobian_spectral_radius(
            lambda v, B=batch: torch.einsum("bij,bj->bi", B, v), (2, 12), _g(2), block=3
        )
        assert bool(res.converged.all())
        torch.testing.assert_close(res.rho, torch.tensor([rho, rho / 2], dtype=D), rtol=1e-4,
                                   atol=0)


def test_deq_jacobian_radius_matches_eigvals_of_explicit_jacobian():
    torch.manual_seed(3)
    model = DEQ(5, 16, 3).to(D)
    with torch.no_grad():
        model.cell.W.weight.mul_(3.0)
    x = torch.randn(4, 5, generator=_g(4), dtype=D)
    rho, ok = probe.deq_jacobian_radius(model, x, generator=_g(5))
    m = probe.prepared(model, x)
    xt = m.inject(x)

    def f(z, xi, c):
        return m.cell(z, c)

    from noisydeq.analysis.sensitivity import fixed_point

    fp = fixed_point(f, torch.zeros_like(xt), xt, xt, tol=1e-12)
    (jz,) = jacobians(f, fp.z, xt, xt, wrt=(0,))
    exact = torch.linalg.eigvals(jz).abs().amax(dim=1)
    # W·3 leaves some inputs without a reachable fixed point: those are flagged, not guessed
    assert int(ok.sum()) >= 2 and torch.equal(ok, fp.converged)
    assert bool(torch.isnan(rho[~ok]).all())
    assert float(exact[ok].max()) > 1.0  # unstable fixed points are measured too
    torch.testing.assert_close(rho[ok], exact[ok], rtol=1e-3, atol=0)


def test_ffw_spectrum_uses_acting_matrices_only():
    torch.manual_seed(6)
    ffw = FFW(5, 8, 4, 3, form="eq57").to(D)
    rep = probe.spectrum(ffw)
    Ws = [layer.W.weight for layer in ffw.layers][1:]  # eq57: layer 0 multiplies z⁰ = 0
    assert len(rep.radii) == 3
    assert rep.rho == pytest.approx(spectra.spectral_radius(Ws[2] @ Ws[1] @ Ws[0]), rel=1e-10)
    for form in ("eq57x", "eq32"):  # z⁰ = x̃: every layer acts
        ffw_all = FFW(5, 8, 4, 3, form=form).to(D)
        Ws = [layer.W.weight for layer in ffw_all.layers]
        rep = probe.spectrum(ffw_all)
        assert len(rep.radii) == 4
        assert rep.rho == pytest.approx(
            spectra.spectral_radius(Ws[3] @ Ws[2] @ Ws[1] @ Ws[0]), rel=1e-10)


def test_eq12_forms():
    assert bounds.deq_bound_paper(0.5, eta=0.1) == pytest.approx(0.1 / (1 - 0.5))
    assert bounds.deq_bound_paper(0.5, eta=0.1, m=3) == pytest.approx(0.1 * (1 + 0.5 + 0.25))
    assert math.isinf(bounds.deq_bound_paper(1.2, eta=0.1))
    assert bounds.ffw_bound_paper([2.0, 3.0], depth=3, eta=0.5) == pytest.approx(0.5 * 6.0)


@pytest.mark.parametrize("kind", ["deq", "ffw"])
def test_norm_bound_holds_for_measured_sensitivity(kind):
    """The guaranteed (norm) form of Eq. 12 is never below the measured E|dz*/dξ_i|."""
    torch.manual_seed(7)
    model = DEQ(5, 10, 3) if kind == "deq" else FFW(5, 10, 5, 3)
    if kind == "deq":
        with torch.no_grad():
            model.cell.W.weight.mul_(0.5)
    eta = 0.2
    x = torch.randn(3, 5, generator=_g(8), dtype=D)
    sens = probe.sensitivity(model, x, NoiseSpec(site="signal", kind="additive", eta=eta),
                             n_noise=20, generator=_g(9))
    rep = probe.eq12_bounds(model, eta)
    assert math.isfinite(rep.norm)
    assert float(sens.per_sample.max()) <= rep.norm * (1 + 1e-9)


def test_conv_or_unknown_models_are_rejected():
    with pytest.raises(NoisyDEQError, match="MLP DEQ and FFW"):
        probe.check_mlp_model(torch.nn.Linear(2, 2))
