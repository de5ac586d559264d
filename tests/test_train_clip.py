"""TrainSpec.clip_grad_norm: every optimizer step sees a gradient of at most that norm."""

import torch

from noisydeq.config import TrainSpec
from noisydeq.models import build_model
from noisydeq.tasks import load_task
from noisydeq.train import run_config, train_model


def test_gradients_are_clipped_and_unset_clip_keeps_config_hash(monkeypatch):
    task = load_task("digits")
    seen = []
    original = torch.optim.Adam.step

    def step(self, *a, **kw):
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        seen.append(float(torch.linalg.vector_norm(torch.stack(
            [torch.linalg.vector_norm(g) for g in grads]))))
        return original(self, *a, **kw)

    monkeypatch.setattr(torch.optim.Adam, "step", step)
    torch.manual_seed(0)
    model = build_model(dict(kind="ffw", in_features=64, out_features=10, width=16, depth=2))
    train_model(model, task, TrainSpec(epochs=1, batch_size=128, clip_grad_norm=0.05))
    assert seen and max(seen) <= 0.05 * (1 + 1e-5)
    cfg = run_config(model, task, TrainSpec(epochs=1), torch.device("cpu"))
    assert "clip_grad_norm" not in cfg["train"]
