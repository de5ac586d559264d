"""Sensitivity dz*/dξ vs closed forms, finite differences and the recursion of Eq. 9-11."""

import math

import pytest
import torch

from noisydeq.analysis.adapters import cell_fn, layers_fn
from noisydeq.analysis.sensitivity import (
    Sensitivity,
    check_samples,
    column_norms,
    deq_noise_jacobian,
    deq_sensitivity,
    ffw_noise_jacobian,
    ffw_sensitivity,
    fixed_point,
)
from noisydeq.config import NoiseSpec
from noisydeq.errors import NoisyDEQError
from noisydeq.models.cells import TanhLayer

D = torch.float64


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _layer(width, seed, scale=1.0):
    torch.manual_seed(seed)
    layer = TanhLayer(width).to(D)
    with torch.no_grad():
        layer.W.weight.mul_(scale)
    return layer


def test_linear_cell_matches_closed_form():
    """z = W z + x̃ + η ξ  ⇒  dz*/dξ = η (I − W)⁻¹ exactly (ξ enters linearly)."""
    d, eta = 7, 0.3
    g = _gen(1)
    W = torch.randn(d, d, generator=g, dtype=D)
    W = 0.8 * W / torch.linalg.eigvals(W).abs().max()

    def f(z, xi, xt):
        return z @ W.T + xt + eta * xi

    xt = torch.randn(3, d, generator=g, dtype=D)
    xi = torch.randn(3, d, generator=g, dtype=D)
    fp = fixed_point(f, torch.zeros(3, d, dtype=D), xi, xt, tol=1e-12)
    assert bool(fp.converged.all())
    jac = deq_noise_jacobian(f, fp.z, xi, xt)
    exact = eta * torch.linalg.inv(torch.eye(d, dtype=D) - W)
    torch.testing.assert_close(jac, exact.expand(3, d, d), rtol=1e-10, atol=1e-12)
    sens = deq_sensitivity(f, xt, d, n_noise=4, generator=_gen(2))
    expected = exact.norm(dim=0).mean()
    torch.testing.assert_close(sens.per_sample, expected.expand(12), rtol=1e-10, atol=0)


def _fd_deq(f, xi, xt, width, h=1e-5):
    """Central differences of the re-solved fixed point w.r.t. each ξ_i (independent check)."""
    cols = []
    for i in range(width):
        e = torch.zeros_like(xi)
        e[:, i] = h
        zp = fixed_point(f, torch.zeros_like(xi), xi + e, xt, tol=1e-13).z
        zm = fixed_point(f, torch.zeros_like(xi), xi - e, xt, tol=1e-13).z
        cols.append((zp - zm) / (2 * h))
    return torch.stack(cols, dim=-1)


@pytest.mark.parametrize(
    "spec",
    [
        NoiseSpec(site="signal", kind="additive", eta=0.2),
        NoiseSpec(site="signal", kind="multiplicative", snr_db=0.0),
        NoiseSpec(site="state", kind="multiplicative", snr_db=5.0),
    ],
    ids=["additive-signal", "mult-signal", "mult-state"],
)
def test_deq_autograd_matches_finite_differences(spec):
    d = 6
    layer = _layer(d, 3, scale=2.0)  # ρ(W) > 1 would not matter: Newton polishing
    f = cell_fn(layer, spec)
    g = _gen(4)
    xt = torch.randn(2, d, generator=g, dtype=D)
    xi = torch.randn(2, d, generator=g, dtype=D)
    fp = fixed_point(f, torch.zeros(2, d, dtype=D), xi, xt, tol=1e-13)
    assert bool(fp.converged.all())
    jac = deq_noise_jacobian(f, fp.z, xi, xt)
    fd = _fd_deq(f, xi, xt, d)
    rel = (jac - fd).norm() / fd.norm()
    assert rel < 1e-5
    s_auto, s_fd = column_norms(jac), column_norms(fd)
    assert torch.all((s_auto - s_fd).abs() / s_fd < 0.02)


def test_deq_ift_equals_the_papers_recursion_iterated():
    """Iterating Eq. 9, dz^{m+1}/dξ = diag(σ'(s_m)) (W dz^m/dξ + η I), converges to the IFT."""
    d, eta = 8, 0.1
    layer = _layer(d, 5)
    spec = NoiseSpec(site="signal", kind="additive", eta=eta)
    f = cell_fn(layer, spec)
    g = _gen(6)
    xt = torch.randn(1, d, generator=g, dtype=D)
    xi = torch.randn(1, d, generator=g, dtype=D)
    W, b = layer.W.weight.detach(), layer.W.bias.detach()
    z = torch.zeros(d, dtype=D)
    dz = torch.zeros(d, d, dtype=D)
    for _ in range(400):
        s = W @ z + b + xt[0] + eta * xi[0]
        ds = 1 - torch.tanh(s) ** 2
        dz = ds[:, None] * (W @ dz + eta * torch.eye(d, dtype=D))
        z = torch.tanh(s)
    fp = fixed_point(f, torch.zeros(1, d, dtype=D), xi, xt, tol=1e-13)
    jac = deq_noise_jacobian(f, fp.z, xi, xt)[0]
    torch.testing.assert_close(jac, dz, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("kind", ["additive", "multiplicative"])
def test_ffw_autograd_matches_finite_differences_and_eq40(kind):
    d, depth = 5, 4
    layers = [_layer(d, 10 + k, scale=1.5) for k in range(depth)]
    spec = NoiseSpec(site="signal", kind=kind, eta=0.3, snr_db=3.0)
    fwd = layers_fn(layers, spec)
    g = _gen(7)
    xt = torch.randn(3, d, generator=g, dtype=D)
    xi = torch.randn(3, d, generator=g, dtype=D)
    jac = ffw_noise_jacobian(fwd, xi, xt)
    h = 1e-6
    cols = []
    for i in range(d):
        e = torch.zeros_like(xi)
        e[:, i] = h
        cols.append((fwd(xi + e, xt) - fwd(xi - e, xt)).detach() / (2 * h))
    fd = torch.stack(cols, dim=-1)
    assert (jac - fd).norm() / fd.norm() < 1e-6
    if kind == "additive":  # Eq. 33-34 recursion, layer by layer
        dz = torch.zeros(3, d, d, dtype=D)
        z = torch.zeros(3, d, dtype=D)
        for layer in layers:
            s = z @ layer.W.weight.T + layer.W.bias + xt + 0.3 * xi
            ds = (1 - torch.tanh(s) ** 2).detach()
            dz = ds[:, :, None] * (layer.W.weight.detach() @ dz + 0.3 * torch.eye(d, dtype=D))
            z = torch.tanh(s)
        torch.testing.assert_close(jac, dz, rtol=1e-10, atol=1e-12)


def test_sampling_is_seeded_and_averages_all_samples():
    d = 5
    layer = _layer(d, 8)
    spec = NoiseSpec(site="signal", kind="additive", eta=0.1)
    xt = torch.randn(2, d, generator=_gen(9), dtype=D)
    a = deq_sensitivity(cell_fn(layer, spec), xt, d, n_noise=10, generator=_gen(11))
    b = deq_sensitivity(cell_fn(layer, spec), xt, d, n_noise=10, generator=_gen(11))
    assert a.n == 20 and a.n_failed == 0
    torch.testing.assert_close(a.per_sample, b.per_sample, rtol=0, atol=0)
    c = ffw_sensitivity(layers_fn([layer], spec), xt, d, n_noise=10, generator=_gen(11))
    assert c.n == 20 and math.isfinite(c.mean) and c.mean > 0


def test_too_few_samples_for_precision_is_one_clear_error():
    s = Sensitivity("deq", torch.tensor([1.0, 2.0, 3.0], dtype=D), torch.ones(3, dtype=D))
    s.check_precision(0.5)
    with pytest.raises(NoisyDEQError, match=r"samples: 3 samples .* use about \d+ samples"):
        s.check_precision(0.01)
    with pytest.raises(NoisyDEQError, match="at least 2"):
        check_samples(1)


def test_input_site_is_rejected():
    with pytest.raises(NoisyDEQError, match="allowed: signal, state"):
        cell_fn(_layer(3, 0), NoiseSpec(site="input", kind="additive", eta=0.1))
