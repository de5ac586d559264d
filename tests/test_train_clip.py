"""Gradient clipping (``TrainSpec.optimizer.grad_clip``): every optimizer step sees a gradient
of at most that norm, and a bound no gradient reaches trains exactly like plain Adam."""

import pytest
import torch

from noisydeq.config import TrainSpec
from noisydeq.models import build_model
from noisydeq.tasks import load_task
from noisydeq.train import train_model


def _train(task, monkeypatch, **over):
    seen = []
    original = torch.optim.Adam.step

    def step(self, *a, **kw):
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        seen.append(float(torch.linalg.vector_norm(torch.stack(
            [torch.linalg.vector_norm(g) for g in grads]))))
        return original(self, *a, **kw)

    monkeypatch.setattr(torch.optim.Adam, "step", step)
    torch.manual_seed(0)
    model = build_model(dict(kind="ffw", in_features=task.in_features,
                             out_features=task.out_features, width=16, depth=2))
    train_model(model, task, TrainSpec(epochs=1, batch_size=128, max_train_samples=512, **over))
    monkeypatch.setattr(torch.optim.Adam, "step", original)
    return model, seen


def test_gradients_are_clipped(monkeypatch):
    task = load_task("digits")
    _, plain = _train(task, monkeypatch)
    assert max(plain) > 0.05  # the bound below acts
    _, clipped = _train(task, monkeypatch, optimizer={"grad_clip": 0.05})
    assert clipped and max(clipped) <= 0.05 * (1 + 1e-5)


@pytest.mark.parametrize("task_name", ["digits", "regression1d"])
def test_unreached_bound_trains_like_plain_adam(monkeypatch, task_name):
    """Same weights as plain Adam, with the task's own loss (MSE for a regression task)."""
    task = load_task(task_name)
    plain, _ = _train(task, monkeypatch)
    loose, _ = _train(task, monkeypatch, optimizer={"grad_clip": 1e9})
    for a, b in zip(plain.state_dict().values(), loose.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
