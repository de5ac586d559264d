"""LyaDEQ (Chu et al. 2024): the Lyapunov function (Eq. 5-6, 8), the projection (Eq. 4), the
readout at the fixed point, the orthogonal head and the gradients (float64 finite
differences). Every check compares with something computed independently: autograd, the KKT
conditions of the half-space projection, a trajectory of the projected flow, or central
differences of the loss."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from noisydeq.config import GradientSpec, SolverSpec
from noisydeq.errors import NoisyDEQError
from noisydeq.models import build_model
from noisydeq.models.lyapunov import (
    ICNN,
    LyaDEQ,
    LyapunovFunction,
    project,
    smooth_relu,
    smooth_relu_grad,
)

TIGHT = SolverSpec(name="anderson", max_iter=300, tol=1e-13, stop="abs", window=1)
TIGHT_GRAD = GradientSpec(name="ift", backward_solver=SolverSpec(
    name="anderson", max_iter=300, tol=1e-14, stop="abs", window=1))


def lyadeq(variant: str = "both", in_features: int = 20, width: int = 12, out: int = 4,
           seed: int = 0, **kw) -> LyaDEQ:
    torch.manual_seed(seed)
    return LyaDEQ(in_features, width, out, lyapunov={"variant": variant, "icnn_hidden": [10]},
                  **kw)


# --------------------------------------------------------------------- Eq. 8


def test_smooth_relu_is_eq8_and_c1():
    d = 0.7
    x = torch.tensor([-1.0, 0.0, 0.35, 0.7, 2.0], dtype=torch.float64)
    want = torch.tensor([0.0, 0.0, 0.35**2 / 1.4, 0.35, 2.0 - 0.35], dtype=torch.float64)
    assert torch.allclose(smooth_relu(x, d), want, atol=1e-15)
    # value and slope continuous at both joints: one-sided differences agree
    for joint in (0.0, d):
        h = 1e-7
        left = (smooth_relu(torch.tensor(joint, dtype=torch.float64), d)
                - smooth_relu(torch.tensor(joint - h, dtype=torch.float64), d)) / h
        right = (smooth_relu(torch.tensor(joint + h, dtype=torch.float64), d)
                 - smooth_relu(torch.tensor(joint, dtype=torch.float64), d)) / h
        assert abs(float(left - right)) < 1e-6
    xs = torch.linspace(-2, 3, 1001, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(smooth_relu(xs, d).sum(), xs)
    assert torch.allclose(g, smooth_relu_grad(xs.detach(), d), atol=1e-12)
    assert (g[1:] - g[:-1] >= -1e-15).all()  # non-decreasing slope: convex


@pytest.mark.parametrize("hidden", [[10], [6, 5]])
def test_closed_form_gradients_match_autograd(hidden):
    torch.manual_seed(1)
    V = LyapunovFunction(7, hidden, d=0.5).double()
    z = (3 * torch.randn(64, 7, dtype=torch.float64)).requires_grad_(True)
    v, grad = V.value_and_grad(z)
    (auto,) = torch.autograd.grad(v.sum(), z)
    assert torch.allclose(grad, auto, atol=1e-12, rtol=1e-10)
    g, dg = V.g.value_and_grad(z)
    (auto_g,) = torch.autograd.grad(g.sum(), z)
    assert torch.allclose(dg, auto_g, atol=1e-12, rtol=1e-10)


# ------------------------------------------------------------------ Eq. 5-6


def _perturbed(V: LyapunovFunction, scale: float = 1.0) -> LyapunovFunction:
    """V with all ICNN parameters moved far from their initialisation (a 'trained' V)."""
    with torch.no_grad():
        for p in V.parameters():
            p.add_(scale * torch.randn_like(p))
    return V


def test_v_is_positive_definite_and_zero_only_at_the_origin():
    torch.manual_seed(2)
    V = _perturbed(LyapunovFunction(12, [16], d=1.0).double())
    z = torch.randn(10_000, 12, dtype=torch.float64) * torch.logspace(-3, 1, 10_000,
                                                                      dtype=torch.float64)[:, None]
    v = V(z)
    assert (v > 0).all()
    assert (v >= z.pow(2).sum(1) - 1e-12).all()  # σ ≥ 0, so V ≥ ‖z‖² (Eq. 5)
    zero = torch.zeros(3, 12, dtype=torch.float64)
    v0, g0 = V.value_and_grad(zero)
    assert v0.abs().max() <= 1e-12 and g0.abs().max() <= 1e-12


def test_v_is_convex_and_icnn_weights_non_negative():
    torch.manual_seed(3)
    V = _perturbed(LyapunovFunction(12, [16, 8], d=0.3).double(), scale=2.0)
    for i in range(len(V.g.U_raw)):
        assert (V.g.U(i) >= 0).all()
    a = 3 * torch.randn(10_000, 12, dtype=torch.float64)
    b = 3 * torch.randn(10_000, 12, dtype=torch.float64)
    lam = torch.rand(10_000, 1, dtype=torch.float64)
    lhs = V(lam * a + (1 - lam) * b)
    rhs = lam[:, 0] * V(a) + (1 - lam[:, 0]) * V(b)
    assert (lhs <= rhs + 1e-9 * rhs.abs()).all()


def test_a_negative_mixing_weight_breaks_convexity():
    """The convexity check can fail: with a negative U (no softplus) g is not convex."""
    torch.manual_seed(4)
    icnn = ICNN(2, [32], d=0.1).double()
    a = torch.randn(20_000, 2, dtype=torch.float64) * 2
    b = torch.randn(20_000, 2, dtype=torch.float64) * 2
    mid = 0.5 * (a + b)
    ok = icnn(mid) <= 0.5 * (icnn(a) + icnn(b)) + 1e-12
    assert ok.all()
    icnn.U = lambda i: -torch.nn.functional.softplus(icnn.U_raw[i])  # type: ignore[method-assign]
    bad = icnn(mid) > 0.5 * (icnn(a) + icnn(b)) + 1e-9
    assert bad.any()


# --------------------------------------------------------------------- Eq. 4


def _scales(n: int) -> torch.Tensor:
    """Per-state norms from 0.01 to 30: near the origin f(0, x̃) dominates F and increases V,
    far out F ≈ -z decreases it."""
    return torch.logspace(-2, 1.5, n, dtype=torch.float64)[:, None]


def _field(model: LyaDEQ, z, x):
    xt = model.inject(x)
    stats = model.cell.statistics()
    Fz = model.cell(z, xt, stats) - z
    V, grad_V = model.lyapunov.value_and_grad(z)
    return Fz, V, grad_V


def test_projection_meets_the_kkt_conditions_of_the_half_space_projection():
    model = lyadeq().double()
    z = torch.randn(2000, 12, dtype=torch.float64) * _scales(2000)
    x = torch.rand(2000, 20, dtype=torch.float64)
    with torch.no_grad():
        Fz, V, grad_V = _field(model, z, x)
        Fhat, phi = project(Fz, V, grad_V, c=0.8)
    slack = (grad_V * Fhat).sum(1) + 0.8 * V  # feasible: ∇Vᵀ F̂ + cV ≤ 0
    assert (slack <= 1e-9 * V).all()
    diff = Fz - Fhat  # = λ ∇V with λ ≥ 0
    lam = (diff * grad_V).sum(1) / grad_V.pow(2).sum(1)
    assert torch.allclose(diff, lam[:, None] * grad_V, atol=1e-10)
    assert (lam >= 0).all()
    assert (lam * slack).abs().max() <= 1e-8 * V.max()  # complementary slackness
    assert (phi > 0).any() and (phi <= 0).any()


def test_projection_is_the_identity_where_v_already_decreases():
    model = lyadeq().double()
    z = torch.randn(3000, 12, dtype=torch.float64) * _scales(3000)
    x = torch.rand(3000, 20, dtype=torch.float64)
    with torch.no_grad():
        Fz, V, grad_V = _field(model, z, x)
        norm2 = grad_V.pow(2).sum(1)
        excess = ((grad_V * Fz).sum(1) + V) / norm2 + 0.5  # F moved inside the half-space
        decreasing = Fz - excess[:, None] * grad_V  # ∇Vᵀ F + cV = -0.5‖∇V‖² < 0
        Fhat, phi = project(decreasing, V, grad_V, c=1.0)
        assert (phi <= 0).all() and torch.equal(Fhat, decreasing)
        Fhat, phi = project(Fz, V, grad_V, c=1.0)
        keep = phi <= 0
        assert keep.any() and torch.equal(Fhat[keep], Fz[keep])
        assert not torch.allclose(Fhat[~keep], Fz[~keep])


def test_v_strictly_decreases_along_the_projected_dynamics():
    """≥ 99.9 % of 10,000 random states and inputs (float32, the model's own precision)."""
    model = lyadeq(in_features=784, width=64, out=10)
    with torch.no_grad():
        for p in model.lyapunov.parameters():  # a 'trained', non-trivial V
            p.add_(0.5 * torch.randn_like(p))
    g = torch.Generator().manual_seed(5)
    scale = torch.logspace(-2, 1.5, 10_000)[:, None]
    z = torch.randn(10_000, 64, generator=g) * scale
    x = torch.rand(10_000, 784, generator=g)
    c = model.settings.c
    with torch.no_grad():
        Fz, V, grad_V = _field(model, z, x)
        Fhat, _ = project(Fz, V, grad_V, c)
        rate = (grad_V * Fhat).sum(1)  # dV/dt along ż = F̂(z)
        assert (rate < 0).double().mean() >= 0.999
        assert (rate <= -c * V * (1 - 1e-3)).double().mean() >= 0.999  # exponential rate c
        h = 1e-3 / (1 + Fhat.norm(dim=1, keepdim=True))  # a small step along the flow
        assert (model.lyapunov(z + h * Fhat) < V).double().mean() >= 0.999
        # without the projection V increases for many of the same states
        assert ((grad_V * Fz).sum(1) > 0).double().mean() > 0.05


def test_trajectories_converge_to_the_equilibrium_at_rate_c():
    """Euler integration of ż = F̂(z) (float64): V decreases monotonically, as fast as
    e^{-ct} up to the step's error, into the O(h) ball around the origin, where V = 0."""
    model = lyadeq(width=8, in_features=5).double()
    c = model.settings.c
    x = torch.rand(16, 5, dtype=torch.float64)
    z = 3 * torch.randn(16, 8, dtype=torch.float64)
    h, steps = 2e-3, 3500
    with torch.no_grad():
        xt = model.inject(x)
        stats = model.cell.statistics()
        v0 = model.lyapunov(z)
        prev, speed = v0, 0.0
        for k in range(steps):
            Fz = model.cell(z, xt, stats) - z
            V, grad_V = model.lyapunov.value_and_grad(z)
            Fhat, _ = project(Fz, V, grad_V, c)
            speed = max(speed, float(Fhat.norm(dim=1).max()))
            z = z + h * Fhat
            now = model.lyapunov(z)
            if k < 1000:  # away from the O(h) floor V decreases at every step
                assert (now < prev).all()
            prev = now
            if k == 499:  # t = 1: V(1) ≤ V(0) e^{-c} up to the Euler error
                assert (now <= v0 * math.exp(-c) * 1.01 + h * speed**2 / c).all()
    floor = 2 * h * speed**2 / c  # Euler's steady error: V* ≈ h‖F̂‖²/c
    assert (prev <= v0 * math.exp(-c * h * steps) + floor).all()
    assert float(prev.max()) < 1e-2 * float(v0.min())
    with torch.no_grad():
        assert float(model.lyapunov(torch.zeros(1, 8, dtype=torch.float64))) <= 1e-12


# ------------------------------------------------------------------ readout


def test_readout_is_one_projected_step_from_the_fixed_point():
    model = lyadeq(solver=TIGHT, gradient=TIGHT_GRAD).double().eval()
    x = torch.rand(6, 20, dtype=torch.float64)
    with torch.no_grad():
        out = model(x, return_solution=True)
        z = out.z
        xt = model.inject(x)
        stats = model.cell.statistics()
        Fz = model.cell(z, xt, stats) - z
        assert Fz.abs().max() < 1e-10  # z is the fixed point
        V, grad_V = model.lyapunov.value_and_grad(z)
        Fhat, phi = project(Fz, V, grad_V, model.settings.c)
        h = z + Fhat
        head = model.head
        assert torch.allclose(out.logits, head(h), atol=1e-12)
        # at the fixed point φ = cV > 0: the module moves z by -cV∇V/‖∇V‖²
        step = -model.settings.c * V[:, None] * grad_V / grad_V.pow(2).sum(1, keepdim=True)
        assert torch.allclose(h - z, step, atol=1e-9)
        assert model.last_readout["projected"].all()
    plain = lyadeq("plain", solver=TIGHT, gradient=TIGHT_GRAD).double().eval()
    with torch.no_grad():
        out = plain(x, return_solution=True)
        assert torch.allclose(out.logits, plain.head(out.z), atol=1e-14)
        assert plain.last_readout is None


def test_variants_have_the_right_parts():
    for variant, lyap, orth in [("plain", False, False), ("lyapunov", True, False),
                                ("orthogonal", False, True), ("both", True, True)]:
        m = lyadeq(variant)
        assert (m.lyapunov is not None) == lyap
        assert torch.nn.utils.parametrize.is_parametrized(m.head) == orth
        assert m.kind == "lyadeq" and m.variant == variant


def test_batchnorm_is_held_during_the_solve_and_updated_once_at_the_fixed_point():
    model = lyadeq("both")
    with torch.no_grad():  # non-trivial running statistics
        model.cell.bn1.running_mean.normal_()
        model.cell.bn2.running_var.uniform_(0.5, 2.0)
    x = torch.rand(32, 20)
    before = [t.clone() for t in model.cell.statistics()]
    model.train()
    out = model(x, return_solution=True)
    # per-sample map: the first half alone gives the same logits with the same statistics
    ref = lyadeq("both")
    ref.load_state_dict({k: v for k, v in model.state_dict().items()})
    with torch.no_grad():
        for t, b in zip((ref.cell.bn1.running_mean, ref.cell.bn1.running_var,
                         ref.cell.bn2.running_mean, ref.cell.bn2.running_var), before,
                        strict=True):
            t.copy_(b)
    ref.train()
    half = ref(x[:16])
    assert torch.allclose(out.logits[:16], half, atol=1e-5)
    # the running statistics took one momentum step on the fixed point's activations
    with torch.no_grad():
        xt = model.inject(x)
        a1 = torch.relu(model.cell.W1(out.z))
        mom = model.cell.bn1.momentum
        want_mean = (1 - mom) * before[0] + mom * a1.mean(0)
        want_var = (1 - mom) * before[1] + mom * a1.var(0, unbiased=True)
    assert torch.allclose(model.cell.bn1.running_mean, want_mean, atol=1e-6)
    assert torch.allclose(model.cell.bn1.running_var, want_var, atol=1e-5)
    assert int(model.cell.bn1.num_batches_tracked) == 1
    del xt
    model.eval()
    stats = [t.clone() for t in model.cell.statistics()]
    with torch.no_grad():
        model(x)
    assert all(torch.equal(a, b) for a, b in zip(stats, model.cell.statistics(), strict=True))


# --------------------------------------------------------------- orthogonal head


def test_orthogonal_head_stays_orthogonal_through_training_steps():
    for variant, expect in (("both", True), ("lyapunov", False)):
        model = lyadeq(variant, out=4)
        opt = torch.optim.Adam(model.parameters(), lr=0.05)
        x, y = torch.rand(32, 20), torch.randint(0, 4, (32,))
        for _ in range(12):
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        W = model.head.weight.detach()
        err = float((W @ W.T - torch.eye(4)).abs().max())  # Z^T Z - I with Z = W^T
        assert (err <= 1e-5) == expect, (variant, err)


def test_orthogonal_head_needs_out_features_at_most_width():
    with pytest.raises(NoisyDEQError, match="out_features <= width"):
        LyaDEQ(20, 4, 10, lyapunov={"variant": "orthogonal"})
    LyaDEQ(20, 4, 10, lyapunov={"variant": "lyapunov"})  # fine without the constraint


# ------------------------------------------------------------------ gradients


def _loss(model, x, y):
    return nn.functional.cross_entropy(model(x), y)


@pytest.mark.parametrize("variant", ["both", "plain"])
def test_gradients_match_finite_differences(variant):
    torch.manual_seed(6)
    model = LyaDEQ(5, 6, 3, lyapunov={"variant": variant, "icnn_hidden": [4], "d": 0.5},
                   solver=TIGHT, gradient=TIGHT_GRAD, test_solver=TIGHT).double().eval()
    with torch.no_grad():
        for lin in (model.cell.W1, model.cell.W2):
            lin.weight.mul_(0.5 / torch.linalg.matrix_norm(lin.weight, ord=2))
        model.cell.bn1.running_mean.normal_(0, 0.2)
        model.cell.bn2.running_var.uniform_(0.8, 1.5)
    g = torch.Generator().manual_seed(7)
    x = torch.rand(4, 5, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 2, 1, 2])
    x.requires_grad_(True)
    model.zero_grad()
    _loss(model, x, y).backward()
    names = ["cell.W1.weight", "cell.W2.bias", "cell.bn2.weight", "cell.proj.U.weight",
             "head.bias"]
    if variant == "both":
        names += ["lyapunov.g.A.0", "lyapunov.g.U_raw.0", "lyapunov.g.b.1",
                  "head.parametrizations.weight.original"]
    params = dict(model.named_parameters())
    for name in names + ["x"]:
        t = x if name == "x" else params[name]
        auto = t.grad.clone()
        flat = t.data.view(-1)
        idx = torch.randperm(flat.numel(), generator=g)[:6]
        for i in idx.tolist():
            old = flat[i].item()
            with torch.no_grad():
                flat[i] = old + 1e-6
                up = _loss(model, x, y).item()
                flat[i] = old - 1e-6
                down = _loss(model, x, y).item()
                flat[i] = old
            fd = (up - down) / 2e-6
            assert abs(fd - auto.view(-1)[i].item()) <= 1e-6 + 1e-5 * abs(fd), (name, i)


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize(("settings", "message"), [
    ({"icnn_hidden": []}, "ICNN hidden sizes"),
    ({"icnn_hidden": [8, 0]}, "ICNN hidden sizes"),
    ({"icnn_hidden": [-3]}, "ICNN hidden sizes"),
    ({"c": 0.0}, "c: must be > 0, got 0.0"),
    ({"c": -1.0}, "c: must be > 0, got -1.0"),
    ({"d": 0.0}, "d: must be > 0, got 0.0"),
    ({"variant": "lyapunv"}, "did you mean 'lyapunov'"),
    ({"variant": "robust"}, "allowed: plain, lyapunov, orthogonal, both"),
    ({"varaint": "both"}, "did you mean 'variant'"),
])
def test_bad_settings_are_one_clear_line(settings, message):
    with pytest.raises(NoisyDEQError, match=message) as err:
        build_model({"kind": "lyadeq", "in_features": 8, "out_features": 3, "width": 8,
                     "lyapunov": settings})
    assert "\n" not in str(err.value)


def test_incompatible_solvers_are_one_clear_line():
    bptt = GradientSpec(name="bptt")
    with pytest.raises(NoisyDEQError, match="bptt"):
        LyaDEQ(8, 8, 3, solver=SolverSpec(name="anderson"), gradient=bptt)
    LyaDEQ(8, 8, 3, solver=SolverSpec(name="unroll"), gradient=bptt,
           test_solver=SolverSpec(name="unroll"))
    with pytest.raises(NoisyDEQError, match="random_threshold"):
        LyaDEQ(8, 8, 3, test_solver=SolverSpec(name="anderson", random_threshold=True))
    model = LyaDEQ(8, 8, 3)
    model.gradient = bptt  # e.g. a training override: refused at the next forward
    with pytest.raises(NoisyDEQError, match="bptt"):
        model(torch.rand(2, 8))
    with pytest.raises(NoisyDEQError, match="lyapunov: only kind 'lyadeq'"):
        build_model({"kind": "deq", "in_features": 8, "out_features": 3,
                     "lyapunov": {"variant": "both"}})
    with pytest.raises(NoisyDEQError, match="fully connected cell"):
        build_model({"kind": "lyadeq", "cell": "conv", "in_features": 16, "out_features": 3})
