"""Input entropy reduction along a DEQ's dynamics (regulation paper Algorithm 1, Eq. 6-8)."""

import pytest
import torch

from noisydeq.config import ModelSpec, TrainSpec
from noisydeq.models import build_model
from noisydeq.regulation.entropy import EntropySpec, entropy_reduced_solve, prediction_entropy
from noisydeq.regulation.states import entropy_shift
from noisydeq.tasks import load_task
from noisydeq.train import train_model


@pytest.fixture(scope="module")
def trained_deq():
    task = load_task("digits", seed=0)
    before = torch.get_num_threads()  # module fixtures run before conftest's 1-thread one
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_model(ModelSpec(kind="deq", in_features=64, out_features=10, width=32,
                                  depth=1, matched=False))
    train_model(model, task, TrainSpec.preset("quick", "deq").model_copy(
        update={"epochs": 3}), quiet=True)
    torch.set_num_threads(before)
    return model.eval(), task


def test_prediction_entropy_closed_form():
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [100.0, 0.0, 0.0, 0.0]])
    h = prediction_entropy(logits)
    assert torch.allclose(h, torch.tensor([torch.log(torch.tensor(4.0)), 0.0]), atol=1e-6)
    p, dh = entropy_shift(torch.tensor([0.1, 0.5, 0.2]), torch.tensor([0.3, 0.4, 0.9]))
    assert p == pytest.approx(200 / 3) and dh == pytest.approx((-0.2 + 0.1 - 0.7) / 3)


def test_beta_zero_is_the_models_own_n_step_solve(trained_deq):
    """β = 0: Algorithm 1 is the model's own solver run for exactly N iterations (the
    redone iterations restore the solver's state)."""
    model, task = trained_deq
    x = task.x_test[:40]
    solver = model.active_solver()
    red = entropy_reduced_solve(model, x, EntropySpec(beta=0.0, tf=1, r=2))
    fixed = solver.model_copy(update={"tol": 1e-300, "stop": "abs"})
    saved = model.test_solver
    model.test_solver = fixed
    try:
        with torch.no_grad():
            out = model(x, return_solution=True)
    finally:
        model.test_solver = saved
    assert int(out.solution.steps.min()) == solver.max_iter
    assert torch.equal(red.x, x)
    assert torch.allclose(red.logits, out.logits, atol=1e-5)


def test_entropy_reduction_lowers_entropy_and_stays_in_the_ball(trained_deq):
    model, task = trained_deq
    x = task.x_test[:120]
    spec = EntropySpec(beta=0.02, r=5, tf=2, eps=0.1)
    plain = entropy_reduced_solve(model, x, spec.model_copy(update={"beta": 0.0}))
    red = entropy_reduced_solve(model, x, spec)
    h0, h1 = prediction_entropy(plain.logits), prediction_entropy(red.logits)
    assert float(h1.mean()) < float(h0.mean())
    assert float((red.x - x).abs().max()) <= 0.1 + 1e-6
    assert float(red.x.min()) >= 0.0 and float(red.x.max()) <= 1.0
    assert float((red.x - x).abs().max()) > 0.05  # the input did move
    assert len(red.entropies) == (spec.iters or model.active_solver().max_iter)
