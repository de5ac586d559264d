"""Cells beyond Eq. 57: conv1d, residual, mlp_stack, multiscale (App. E.1/E.4, §4.1.2).

Each cell is checked against a direct re-computation with ``torch.nn.functional``; DEQ
gradients (IFT) against central finite differences in float64; the multiscale fixed point
against three solvers; parameter matching; bad input.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from noisydeq.config import GradientSpec, ModelSpec, SolverSpec
from noisydeq.errors import NoisyDEQError
from noisydeq.models import build_model
from noisydeq.models.budget import IterationBudget
from noisydeq.models.wnconv import WeightNorm
from noisydeq.solvers import solve

TIGHT = SolverSpec(name="anderson", max_iter=400, tol=1e-13, stop="abs", window=1)
TIGHT_BACK = SolverSpec(name="unroll", max_iter=600, tol=1e-14, stop="abs", window=1)
IFT = GradientSpec(name="ift", backward_solver=TIGHT_BACK)


def shrink(model: nn.Module, factor: float) -> None:
    """Scale every weight (or weight-norm gain) of the cell: a contraction for the tests."""
    with torch.no_grad():
        for mod in model.cell.modules():
            if isinstance(mod, WeightNorm):
                mod.g.mul_(factor)
            elif isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Linear)) and mod.bias is not None:
                mod.weight.mul_(factor)


def test_weight_norm_matches_torch_parametrization():
    torch.manual_seed(0)
    ours = WeightNorm(nn.Conv2d(3, 4, 3, padding=1, bias=False))
    ref = nn.utils.parametrizations.weight_norm(nn.Conv2d(3, 4, 3, padding=1))
    with torch.no_grad():
        ref.parametrizations.weight.original1.copy_(ours.inner.weight)
        ours.g.mul_(torch.linspace(0.5, 2.0, 4))
        ref.parametrizations.weight.original0.copy_(ours.g.reshape(4, 1, 1, 1))
        ref.bias.copy_(ours.bias)
    x = torch.randn(2, 3, 5, 5, dtype=torch.float32)
    a, b = ours(x), ref(x)
    assert torch.allclose(a, b, atol=1e-5)
    assert torch.allclose(ours.weight, ref.weight, atol=1e-6)
    a.square().sum().backward()
    b.square().sum().backward()
    assert torch.allclose(ours.g.grad, ref.parametrizations.weight.original0.grad.flatten(),
                          rtol=1e-4, atol=1e-5)
    assert torch.allclose(ours.inner.weight.grad, ref.parametrizations.weight.original1.grad,
                          rtol=1e-4, atol=1e-5)


def spec(cell, kind="deq", **kw):
    base = {"conv1d": dict(in_features=1, out_features=2, width=3, weight_norm=False),
            "residual": dict(in_features=3, out_features=2, width=2, weight_norm=False),
            "mlp_stack": dict(in_features=6, out_features=4, width=5, layers=3,
                              input_act="identity"),
            "mdeq": dict(in_features=16, out_features=3, width=2, scales=2, norm_groups=2,
                         pool=2)}[cell]
    return ModelSpec(kind=kind, cell=cell, **{**base, **kw})


def inputs(cell, n=3, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    shape = {"conv1d": (n, 1, 6), "residual": (n, 3, 5, 5), "mlp_stack": (n, 6),
             "mdeq": (n, 16)}[cell]
    return torch.rand(shape, generator=g, dtype=dtype)


def test_conv1d_and_residual_fixed_points_are_the_stated_maps():
    torch.manual_seed(0)
    m = build_model(spec("conv1d"), solver=TIGHT).double()
    shrink(m, 0.5)
    x = inputs("conv1d")
    with torch.no_grad():
        out = m(x, return_solution=True)
    W, U = m.cell.layer.W, m.cell.proj.U
    xt = torch.relu(F.conv1d(x, U.weight, padding=1))
    fz = torch.tanh(F.conv1d(out.z, W.weight, W.bias, padding=1) + xt)
    assert torch.allclose(fz, out.z, atol=1e-11) and out.logits.shape == (3, 2, 6)
    m = build_model(spec("residual"), solver=TIGHT).double()
    shrink(m, 0.5)
    x = inputs("residual")
    with torch.no_grad():
        out = m(x, return_solution=True)
    lay = m.cell.layer
    xt = torch.relu(F.conv2d(x, m.cell.proj.U.weight, padding=1))
    h = torch.tanh(F.conv2d(out.z, lay.W1.weight, lay.W1.bias, padding=1) + xt)
    fz = torch.tanh(F.conv2d(h, lay.W2.weight, lay.W2.bias, padding=1) + out.z)
    assert torch.allclose(fz, out.z, atol=1e-11) and out.logits.shape == (3, 2, 5, 5)


@pytest.mark.parametrize("cell", ["conv1d", "residual"])
def test_bptt_training_gradients_equal_a_hand_written_unroll(cell):
    """What the algorithmic studies train (App. E.4): backpropagation through a fixed
    T-step unroll from z⁰ = 0, identity injection, a per-position cross-entropy. Loss and
    every parameter's gradient equal those of the same recurrence written directly with
    ``torch.nn.functional`` (the model is the stated network, in training mode too)."""
    steps = 7
    unroll = SolverSpec(name="unroll", max_iter=steps, tol=1e-30, stop="abs", window=1)
    torch.manual_seed(1)
    m = build_model(spec(cell, input_act="identity"), solver=unroll,
                    gradient=GradientSpec(name="bptt")).double().train()
    x = inputs(cell)
    y = torch.randint(0, 2, (x.shape[0], *x.shape[2:]), generator=torch.Generator().manual_seed(2))
    F.cross_entropy(m(x), y).backward()
    ours = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.zero_grad()
    conv = F.conv1d if cell == "conv1d" else F.conv2d
    lay, U, head = m.cell.layer, m.cell.proj.U, m.head.conv
    xt = conv(x, U.weight, padding=1)
    z = torch.zeros_like(xt)
    for _ in range(steps):
        if cell == "conv1d":
            z = torch.tanh(conv(z, lay.W.weight, lay.W.bias, padding=1) + xt)
        else:
            h = torch.tanh(conv(z, lay.W1.weight, lay.W1.bias, padding=1) + xt)
            z = torch.tanh(conv(h, lay.W2.weight, lay.W2.bias, padding=1) + z)
    F.cross_entropy(conv(z, head.weight, head.bias, padding=1), y).backward()
    for n, p in m.named_parameters():
        assert p.grad.abs().sum() > 0, n
        assert torch.allclose(ours[n], p.grad, rtol=1e-10, atol=1e-12), n


def test_stack_cell_runs_its_layers_with_injection_into_the_first():
    torch.manual_seed(0)
    m = build_model(spec("mlp_stack"), solver=TIGHT).double()
    shrink(m, 0.5)
    x = inputs("mlp_stack")
    with torch.no_grad():
        out = m(x, return_solution=True)
    h = out.z
    for i, lin in enumerate(m.cell.W):
        h = torch.tanh(h @ lin.weight.T + lin.bias + (x @ m.cell.proj.U.weight.T if i == 0
                                                       else 0))
    assert torch.allclose(h, out.z, atol=1e-11)


def fd_check(model, x, y, loss_fn, entries=3, h=1e-6, seed=0):
    """Autograd (IFT) gradient vs central differences on ``entries`` entries per tensor."""
    model.zero_grad()
    loss_fn(model(x), y).backward()
    g = torch.Generator().manual_seed(seed)
    worst = 0.0
    for name, p in model.named_parameters():
        flat = p.data.view(-1)
        idx = torch.randperm(flat.numel(), generator=g)[:entries]
        fd = torch.zeros(len(idx), dtype=torch.float64)
        with torch.no_grad():
            for k, i in enumerate(idx.tolist()):
                old = flat[i].item()
                flat[i] = old + h
                up = loss_fn(model(x), y).item()
                flat[i] = old - h
                fd[k] = (up - loss_fn(model(x), y).item()) / (2 * h)
                flat[i] = old
        got = p.grad.view(-1)[idx]
        err = float((got - fd).abs().max() / fd.abs().max().clamp_min(1e-3))
        worst = max(worst, err)
        assert err < 1e-5, (name, err, got, fd)
    return worst


@pytest.mark.parametrize("cell", ["conv1d", "residual", "mdeq"])
def test_ift_gradients_match_finite_differences(cell):
    torch.manual_seed(1)
    m = build_model(spec(cell), solver=TIGHT, gradient=IFT).double().train()
    shrink(m, 0.4)
    x = inputs(cell, n=2)
    if cell == "mdeq":
        y = torch.tensor([0, 2])
        loss_fn = F.cross_entropy
    else:
        y = torch.randint(0, 2, x.shape[:1] + x.shape[2:], generator=torch.Generator()
                          .manual_seed(3))
        loss_fn = F.cross_entropy
    fd_check(m, x, y, loss_fn)


@pytest.mark.parametrize("scales", [2, 3])
def test_multiscale_fixed_point_agrees_between_solvers(scales):
    torch.manual_seed(0)
    m = build_model(ModelSpec(cell="mdeq", in_features=36, out_features=3, width=4,
                              scales=scales, in_shape=[1, 6, 6])).double()
    shrink(m, 0.4)
    x = inputs("mdeq", n=3).new_empty(3, 36).uniform_(0, 1)
    with torch.no_grad():
        xt = m.inject(x)
        f = m.cell_fn(xt)
        z = {}
        for name in ("unroll", "anderson", "broyden"):
            sol = solve(f, m.initial_state(xt), SolverSpec(name=name, max_iter=400, tol=1e-11,
                                                           stop="rel", window=1))
            assert bool(sol.converged.all()), (name, sol.steps)
            z[name] = sol.z
    assert float((z["unroll"] - z["anderson"]).abs().max()) < 1e-5
    assert float((z["unroll"] - z["broyden"]).abs().max()) < 1e-5


@pytest.mark.parametrize("cell", ["conv1d", "residual", "mlp_stack", "mdeq"])
def test_parameter_matching(cell):
    base = spec(cell, width=32, depth=4) if cell != "mdeq" else spec(cell, width=8, depth=4,
                                                                     norm_groups=4)
    deq = build_model(base)
    ffw = build_model(base.model_copy(update={"kind": "ffw"}))
    assert deq.width > ffw.width == base.width
    a, b = deq.hidden_weight_count(), ffw.hidden_weight_count()
    tol = 0.05 if cell != "mdeq" else 0.35  # mdeq widths come in multiples of norm_groups
    assert abs(a - b) / b < tol, (a, b)


def test_iteration_budget_scales_the_test_solver_with_the_input_size():
    b = IterationBudget(train_size=32, exponent=1.0, cap=500)
    s = SolverSpec(name="unroll", max_iter=40, window=10, tol=1e-3)
    assert b.solver_for(s, 32) is s
    assert b.solver_for(s, 128).max_iter == 160 and b.solver_for(s, 512).max_iter == 500
    assert b.solver_for(s, 16).max_iter == 20 and b.solver_for(s, 2).window == 3
    assert IterationBudget(train_size=9, exponent=2).max_iter(30, 27) == 270
    torch.manual_seed(0)
    never = SolverSpec(name="unroll", max_iter=8, tol=1e-30, stop="abs", window=1)
    m = build_model(spec("conv1d"), solver=never, test_solver=never).eval()
    m.budget = IterationBudget(train_size=6)
    with torch.no_grad():
        m(inputs("conv1d", dtype=torch.float32))
        assert m.last_solution.n_iter == 8
        m(torch.rand(2, 1, 18))
        assert m.last_solution.n_iter == 24
        m.train()
        m(torch.rand(2, 1, 18))
        assert m.last_solution.n_iter == 8  # training keeps its solver


@pytest.mark.parametrize("bad,match", [
    (dict(cell="conv1d", in_features=1, out_features=2, width=0), "width"),
    (dict(cell="residual", in_features=3, out_features=2, width=0), "width"),
    (dict(cell="residual", in_features=3, out_features=2, width=-4), "width"),
    (dict(cell="mdeq", in_features=64, out_features=10, width=0), "width"),
    (dict(cell="mlp_stack", in_features=8, out_features=2, width=0), "width"),
    (dict(cell="conv1d", in_features=0, out_features=2), "in_features"),
    (dict(cell="residual", in_features=3, out_features=2, kernel_size=4), "kernel_size"),
    (dict(cell="mdeq", in_features=64, out_features=10, width=6), "norm_groups"),
    (dict(cell="mdeq", in_features=64, out_features=10, scales=5), "scales"),
    (dict(cell="mdeq", in_features=64, out_features=10, in_shape=[1, 64]), "in_shape"),
    (dict(cell="mlp_stack", in_features=8, out_features=2, layers=0), "layers"),
])
def test_bad_model_specs_are_one_clear_error(bad, match):
    with pytest.raises(NoisyDEQError, match=match):
        build_model(bad)


def test_wrong_input_layout_is_one_clear_error():
    m = build_model(spec("conv1d"))
    with pytest.raises(NoisyDEQError, match=r"needs inputs \(B, C, L\)"):
        m(torch.rand(2, 1, 4, 4))
