"""DEQ fixed points, FFW layer loops, width matching, states, counts and bad input."""

import math

import pytest
import torch
from torch import nn

from noisydeq.config import JacobianRegSpec, ModelSpec, SolverSpec
from noisydeq.errors import NoisyDEQError
from noisydeq.models import (
    DEQ,
    FFW,
    PAPER_DEPTHS,
    PAPER_WIDTHS,
    MLPCell,
    ModelOutput,
    build_model,
    matched_width,
    paper_solver,
)
from noisydeq.models.matching import ffw_hidden_parameter_count


def x_batch(n=6, d=10, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ------------------------------------------------------------------------- DEQ fixed point


def test_deq_solution_is_a_fixed_point_of_the_cell():
    torch.manual_seed(0)
    solver = SolverSpec(name="unroll", max_iter=200, tol=1e-10, stop="rel", window=1)
    model = DEQ(10, 16, 4, solver=solver).double()
    x = x_batch()
    with torch.no_grad():
        out = model(x, return_solution=True)
    z = out.z
    xt = torch.relu(x @ model.cell.proj.U.weight.T)
    fz = torch.tanh(z @ model.cell.W.weight.T + model.cell.W.bias + xt)  # Eq. 57 by hand
    assert out.solution.converged.all()
    assert ((fz - z).norm(dim=1) / fz.norm(dim=1)).max() < 1e-9
    assert torch.allclose(out.logits, model.head(z))
    assert model.last_solution is out.solution


def test_last_solution_kept_and_output_types():
    torch.manual_seed(0)
    model = DEQ(10, 8, 3).double()
    logits = model(x_batch())
    assert isinstance(logits, torch.Tensor) and logits.shape == (6, 3)
    assert model.last_solution is not None and model.last_solution.steps.shape == (6,)
    out = model(x_batch(), return_solution=True)
    assert isinstance(out, ModelOutput) and out.states is None and out.jac_loss is None


def test_train_and_test_solver_used_by_mode():
    torch.manual_seed(0)
    model = DEQ(10, 8, 3, solver=paper_solver(train=True),
                test_solver=paper_solver(train=False)).double()
    model(x_batch())
    assert model.last_solution.trace["rel"].shape[0] == model.last_solution.n_iter
    assert model.active_solver().stop == "rel" and model.active_solver().tol == 1e-3
    model.eval()
    assert model.active_solver().stop == "mean_rel" and model.active_solver().tol == 0.05


def test_paper_solver_presets_follow_table_1():
    train, train_noisy, test = paper_solver(True), paper_solver(True, True), paper_solver(False)
    assert (train.name, train.max_iter, train.tol, train.stop) == ("unroll", 60, 1e-3, "rel")
    assert (train_noisy.tol, train_noisy.stop) == (0.05, "mean_rel")
    assert (test.name, test.max_iter, test.tol, test.stop) == ("unroll", 60, 0.05, "mean_rel")


# --------------------------------------------------------------------------------- states


def test_deq_states_are_the_unroll_iterates():
    torch.manual_seed(0)
    solver = SolverSpec(name="unroll", max_iter=7, tol=1e-30, stop="abs", window=1)
    model = DEQ(10, 8, 3, solver=solver).double()
    x = x_batch()
    with torch.no_grad():
        out = model(x, return_states=True)
    assert len(out.states) == out.solution.n_iter == 7
    z = torch.zeros(6, 8, dtype=torch.float64)
    xt = model.cell.project(x)
    for s in out.states:
        z = model.cell(z, xt)
        assert torch.allclose(s, z)
    assert torch.allclose(out.states[-1], out.z)


def test_states_not_kept_by_default():
    torch.manual_seed(0)
    model = DEQ(10, 8, 3).double()
    out = model(x_batch(), return_solution=True)
    assert out.states is None
    tensors = [v for v in vars(model).values() if isinstance(v, (list, torch.Tensor))]
    assert not tensors  # nothing per-iteration stored on the module


def test_ffw_states_are_per_layer():
    torch.manual_seed(0)
    model = FFW(10, 8, 4, 3).double()
    out = model(x_batch(), return_states=True)
    assert len(out.states) == 4 and out.solution is None
    assert torch.equal(out.states[-1], out.z)


# ------------------------------------------------------------------------------------ FFW


def hand_ffw(model: FFW, x: torch.Tensor, form: str) -> torch.Tensor:
    xt = torch.relu(x @ model.proj.U.weight.T)
    z = torch.zeros_like(xt) if form == "eq57" else xt
    for layer in model.layers:
        inj = 0.0 if form == "eq32" else xt
        z = torch.tanh(z @ layer.W.weight.T + layer.W.bias + inj)
    return z @ model.head.weight.T + model.head.bias


def test_default_ffw_form_is_eq57x():
    assert FFW(10, 8, 2, 3).form == "eq57x"
    assert ModelSpec(kind="ffw", in_features=4, out_features=2).ffw_form == "eq57x"


@pytest.mark.parametrize("form", ["eq57x", "eq57", "eq32"])
def test_ffw_equals_hand_written_loop(form):
    torch.manual_seed(0)
    model = FFW(10, 8, 5, 3, form=form).double()
    x = x_batch()
    assert torch.allclose(model(x), hand_ffw(model, x, form), atol=1e-14)
    weights = {id(layer.W.weight) for layer in model.layers}
    assert len(weights) == 5  # distinct layers


def test_weight_tied_ffw_is_the_unrolled_deq():
    """Eq. 57 with all W_m = W: n layers from z⁰=0 equal n DEQ unroll steps from z⁰=0."""
    torch.manual_seed(0)
    n = 6
    deq = DEQ(10, 8, 3, solver=SolverSpec(name="unroll", max_iter=n, tol=1e-30, stop="abs",
                                          window=1)).double()
    ffw = FFW(10, 8, n, 3, form="eq57").double()
    with torch.no_grad():
        ffw.proj.U.weight.copy_(deq.cell.proj.U.weight)
        ffw.head.load_state_dict(deq.head.state_dict())
        for layer in ffw.layers:
            layer.W.load_state_dict(deq.cell.W.state_dict())
        x = x_batch()
        assert torch.allclose(ffw(x), deq(x), atol=1e-14)


def test_eq57_first_layer_weight_gets_no_gradient():
    """Documented consequence of z⁰ = 0: W_0 multiplies zero (not counted as acting)."""
    torch.manual_seed(0)
    model = FFW(10, 8, 3, 3, form="eq57").double()
    model(x_batch()).sum().backward()
    assert model.layers[0].W.weight.grad.abs().max() == 0
    assert model.layers[1].W.weight.grad.abs().max() > 0
    assert model.acting_weight_count() == model.hidden_weight_count() - 8 * 8


@pytest.mark.parametrize("depth", range(1, 14))
def test_every_counted_hidden_matrix_of_the_default_ffw_acts(depth):
    """Default form: every W_m gets a non-zero gradient, so the parameter match counts only
    matrices that act, and the matched DEQ width is within 1 % of the paper's list."""
    torch.manual_seed(depth)
    model = FFW(10, 8, depth, 3).double()
    model(x_batch()).pow(2).sum().backward()
    for m, layer in enumerate(model.layers):
        assert layer.W.weight.grad.abs().max() > 0, f"W_{m} got no gradient"
    assert model.acting_weight_count() == model.hidden_weight_count() == depth * (64 + 8)
    full = build_model(ModelSpec(kind="ffw", in_features=10, out_features=3, width=128,
                                 depth=depth))
    assert full.acting_weight_count() == ffw_hidden_parameter_count(depth, 128)
    d = matched_width(depth, 128)
    deq = build_model(ModelSpec(kind="deq", in_features=10, out_features=3, depth=depth))
    assert deq.width == d
    if depth in PAPER_DEPTHS:
        paper = PAPER_WIDTHS[PAPER_DEPTHS.index(depth)]
        assert abs(d - paper) / paper < 0.01
    # d(d+1) is the nearest DEQ count to the FFW's acting count (within one width step)
    assert abs(deq.hidden_weight_count() - full.acting_weight_count()) <= 2 * d + 2


# ------------------------------------------------------------------------------- matching


def test_matched_width_within_one_percent_of_paper_list():
    for depth, paper in zip(PAPER_DEPTHS, PAPER_WIDTHS, strict=True):
        got = matched_width(depth, 128)
        assert abs(got - paper) / paper < 0.01, (depth, got, paper)
    assert [matched_width(d) for d in PAPER_DEPTHS] == [128, 222, 287, 339, 385, 426, 463]


def test_weights_only_formula_misses_paper_by_more_than_one_percent():
    """Why the bias-inclusive count was chosen: h·√13 = 461.5 is 1.2 % below 467."""
    assert abs(128 * math.sqrt(13) - 467) / 467 > 0.01


@pytest.mark.parametrize("depth", PAPER_DEPTHS)
def test_matched_pairs_have_equal_hidden_parameter_counts(depth):
    deq = build_model(ModelSpec(kind="deq", in_features=64, out_features=10, depth=depth))
    ffw = build_model(ModelSpec(kind="ffw", in_features=64, out_features=10, depth=depth))
    assert deq.width == matched_width(depth) and ffw.width == 128
    assert deq.depth == ffw.depth == depth
    a, b = deq.hidden_weight_count(), ffw.hidden_weight_count()
    # rounding d to an integer moves d(d+1) by at most ~d
    assert abs(a - b) <= deq.width, (a, b)
    assert abs(a - b) / b < 0.01
    assert ffw.hidden_weight_count(include_bias=False) == depth * 128 * 128


def test_parameter_count_matches_torch():
    torch.manual_seed(0)
    model = FFW(10, 8, 3, 4)
    assert model.parameter_count() == 10 * 8 + 3 * (8 * 8 + 8) + 8 * 4 + 4
    deq = DEQ(10, 8, 4)
    assert deq.parameter_count() == 10 * 8 + 8 * 8 + 8 + 8 * 4 + 4
    assert deq.hidden_weight_count() == 72 and deq.hidden_weight_count(False) == 64


def test_all_mvms_run_through_linear_modules():
    """Devices replace nn.Linear modules: swapping W's forward must change the DEQ."""
    torch.manual_seed(0)
    model = DEQ(10, 8, 3).double()
    x = x_batch()
    base = model(x).detach()
    calls = {"n": 0}

    def hook(mod, inp, out):
        calls["n"] += 1
        return out * 0.5

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Linear)]
    changed = model(x).detach()
    for h in handles:
        h.remove()
    assert calls["n"] > 3 and not torch.allclose(base, changed)


# ---------------------------------------------------------------------- Jacobian regulariser


def test_jacobian_regulariser_estimates_frobenius_norm_at_fixed_point():
    torch.manual_seed(0)
    solver = SolverSpec(name="unroll", max_iter=200, tol=1e-12, stop="abs", window=1)
    model = DEQ(10, 6, 3, solver=solver, jac_reg=JacobianRegSpec(weight=2.0, n_samples=400))
    model = model.double().train()
    x = x_batch(3)
    out = model(x, return_solution=True, generator=torch.Generator().manual_seed(3))
    xt = model.cell.project(x).detach()
    exact = 0.0
    for b in range(3):
        jac = torch.autograd.functional.jacobian(
            lambda z, b=b: model.cell(z[None], xt[b : b + 1])[0], out.z[b].detach()
        )
        exact += jac.pow(2).sum().item() / 6
    exact = 2.0 * exact / 3
    assert out.jac_loss is not None and out.jac_loss.requires_grad
    assert abs(out.jac_loss.item() - exact) / exact < 0.1, (out.jac_loss.item(), exact)
    out.jac_loss.backward()
    assert model.cell.W.weight.grad.abs().sum() > 0
    model.eval()
    assert model(x, return_solution=True).jac_loss is None
    model.train()
    model.jac_reg_active = False
    assert model(x, return_solution=True).jac_loss is None


# ------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "kw, field",
    [
        ({"width": 0}, "width"),
        ({"depth": -1}, "depth"),
        ({"input_act": "tanhh"}, "input_act"),
        ({"kind": "rnn"}, "kind"),
        ({"widht": 3}, "width"),
        ({"in_features": 0}, "in_features"),
    ],
)
def test_bad_spec_names_the_field(kw, field):
    with pytest.raises(NoisyDEQError, match=field):
        build_model({"in_features": 64, "out_features": 10, **kw})


@pytest.mark.parametrize(
    "make, field",
    [
        (lambda: DEQ(10, 0, 3), "width"),
        (lambda: FFW(10, 8, -1, 3), "depth"),
        (lambda: FFW(10, 8, 2, 3, input_act="gelu"), "input_act"),
        (lambda: MLPCell(10, 8, input_act="softmax"), "input_act"),
        (lambda: DEQ(0, 8, 3), "in_features"),
        (lambda: FFW(10, 8, 2, 3, form="eq99"), "ffw_form"),
        (lambda: matched_width(0), "depth"),
    ],
)
def test_bad_constructor_arguments_name_the_field(make, field):
    with pytest.raises(NoisyDEQError, match=field) as info:
        make()
    assert "\n" not in str(info.value)


def test_paper_noisy_solver_converges_under_10db_signal_noise():
    """The window of paper_solver(noisy) lets mean_rel (Eq. 54) stop at 10 dB."""
    from noisydeq.config import NoiseSpec
    from noisydeq.noise import Noise, NoiseStream

    torch.manual_seed(0)
    model = DEQ(64, 128, 10, solver=paper_solver(train=True, noisy=True))
    x = torch.rand(64, 64, generator=torch.Generator().manual_seed(0))
    noise = Noise(NoiseSpec(site="signal", snr_db=10.0), NoiseStream.from_seed(1))
    with torch.no_grad():
        sol = model(x, noise, return_solution=True).solution
    assert sol.converged.float().mean() > 0.9
    assert sol.steps.float().mean() < 45
