"""A DEQ and an FFW trained on digits run on every device; accuracy falls as the SNR falls."""

from __future__ import annotations

import pytest
import torch

from noisydeq import hardware as hw
from noisydeq.config import GradientSpec, SolverSpec
from noisydeq.models import DEQ, FFW
from noisydeq.noise import NoiseStream
from noisydeq.tasks import load_task


@pytest.fixture(scope="module")
def trained():
    task = load_task("digits", seed=0)
    torch.manual_seed(0)
    models = {
        "deq": DEQ(
            task.in_features,
            32,
            task.out_features,
            solver=SolverSpec(name="unroll", max_iter=15, tol=1e-2, stop="rel"),
            gradient=GradientSpec(name="phantom", phantom_steps=5),
        ),
        "ffw": FFW(task.in_features, 32, 3, task.out_features),
    }
    for model in models.values():
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        g = torch.Generator().manual_seed(0)
        for _ in range(10):
            perm = torch.randperm(task.x_train.shape[0], generator=g)
            for i in range(0, perm.numel(), 64):
                idx = perm[i : i + 64]
                loss = torch.nn.functional.cross_entropy(model(task.x_train[idx]),
                                                         task.y_train[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
        model.eval()
    return task, models


def _accuracy(model, task, device) -> float:
    dep = device.deploy(model)
    hw.set_stream(dep, NoiseStream.from_seed(0))
    x = task.x_test[:300]
    with torch.no_grad():
        out = dep(x, return_solution=True) if isinstance(model, DEQ) else dep(x)
    logits = out.logits if hasattr(out, "logits") else out
    if hasattr(out, "solution") and out.solution is not None:
        sol = out.solution
        assert bool((sol.converged | sol.diverged | (sol.steps > 0)).all())
    assert torch.isfinite(logits).all()
    return float((logits.argmax(1) == task.y_test[:300]).float().mean())


@pytest.mark.slow
@pytest.mark.parametrize("name", ["snr", "rram-wan2022", "photonic"])
@pytest.mark.parametrize("kind", ["deq", "ffw"])
def test_accuracy_falls_with_snr(trained, name: str, kind: str) -> None:
    task, models = trained
    model = models[kind]
    clean = _accuracy(model, task, hw.get_device("ideal"))
    assert clean > 0.85
    device = hw.get_device(name)
    high, low = (_accuracy(model, task, device.at_snr(s)) for s in (25.0, -5.0))
    assert clean + 0.02 >= high > low + 0.1, (clean, high, low)
