"""Shared parts of the tests of the per-chip holds of hardware-aware training
(``TrainSpec.device_adc_gain`` / ``device_drift_alpha = "epoch"``): a small net, a fake
training step, the train-twice check and the CLI's one-line refusal."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from noisydeq.config import TrainSpec
from noisydeq.errors import NoisyDEQError
from noisydeq.tasks import load_task
from noisydeq.train import train_model
from noisydeq.train_config import spec_dump
from noisydeq.train_device import _deploy
from tests.cli_helpers import one_line_error, run_cli


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 5))


def train_step(net: nn.Module, k: int) -> None:
    """Move every parameter (a stand-in for an optimiser step)."""
    g = torch.Generator().manual_seed(k)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)


def check_cache_key(field: str, device: str, other: str, refusal: str) -> None:
    """``field`` is left out of the config while unset or ``step`` (earlier keys kept), set
    it is in the key, it needs a training device and is refused for ``other``."""
    plain = spec_dump(TrainSpec(device=device))
    assert field not in plain  # configs keyed before the option keep their hash
    assert spec_dump(TrainSpec(device=device, **{field: "step"})) == plain
    assert spec_dump(TrainSpec(device=device, **{field: "epoch"}))[field] == "epoch"
    with pytest.raises(NoisyDEQError, match=field):
        TrainSpec(**{field: "epoch"})
    with pytest.raises(NoisyDEQError, match=refusal):
        _deploy(small_net(), TrainSpec(device=other, **{field: "epoch"}), 0)


class DigitsMlp(nn.Module):
    """64 → 24 → 10 on digits (``train_model`` passes ``noise``)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(64, 24), nn.Linear(24, 10)

    def forward(self, x, noise=None):
        return self.b(torch.tanh(self.a(x)))


def digits_mlp(seed: int = 1) -> nn.Module:
    torch.manual_seed(seed)
    return DigitsMlp()


def check_epoch_option_trains(device: str, field: str) -> None:
    """With ``field = "epoch"`` a short training run is reproducible, differs from the
    per-step default and has another config."""
    task = load_task("digits", seed=0)
    common = dict(epochs=1, batch_size=32, max_train_samples=128, device=device)
    model = digits_mlp

    step = train_model(model(), task, TrainSpec(**common))
    epoch = train_model(model(), task, TrainSpec(**common, **{field: "epoch"}))
    again = train_model(model(), task, TrainSpec(**common, **{field: "epoch"}))
    w = dict(epoch.model.state_dict())
    assert all(torch.equal(w[k], v) for k, v in again.model.state_dict().items())
    assert any(not torch.equal(w[k], v) for k, v in step.model.state_dict().items())
    assert step.config != epoch.config


def check_bad_train_option(tmp_path, capsys, args: list[str], needle: str) -> None:
    """``noisydeq train`` with ``args`` fails in one line naming ``needle``, writing nothing."""
    code, _, err = run_cli(["train", "--task", "digits", "--kind", "ffw", "--depths", "1",
                            "--out", str(tmp_path / "o"), *args], capsys)
    one_line_error(code, err, needle)
    assert not (tmp_path / "o").exists()
