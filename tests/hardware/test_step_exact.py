"""The hardware-aware training step's exact speed-up of round 8 (benchmarks/RESULTS.md):
every device layer's noise streams of a batch taken from one table per epoch
(``_Rng.streams``) instead of a split per batch. A training run must end with the weights
and losses of the code before, bit for bit."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from noisydeq.config import TrainSpec
from noisydeq.hardware.controls import device_layers
from noisydeq.noise import NoiseStream, derive_seed
from noisydeq.tasks import load_task
from noisydeq.train import train_model


def _streams_split_per_batch(net, rng, epoch, samples) -> None:
    """``_device_streams`` as it was: ``NoiseStream.many`` per batch, then the draws ahead
    (one call per row length)."""
    layers = device_layers(net)
    keys = [derive_seed(rng.seed, "train", "device", epoch, name) for name in layers]
    streams = NoiseStream.many(keys, rng.dev, samples)
    for layer, stream in zip(layers.values(), streams, strict=True):
        layer.stream = stream
    ahead = [(s, (len(samples), layer.n_out))
             for layer, s in zip(layers.values(), streams, strict=True)
             if layer.draws_output_noise and layer.op == "linear"]
    for width in {shape[1] for _, shape in ahead}:  # one call per row length
        same = [(s, shape) for s, shape in ahead if shape[1] == width]
        NoiseStream.draw_ahead([s for s, _ in same], [shape for _, shape in same],
                               torch.float32, rng.dev)


class _Mlp(nn.Module):
    """64 → 24 → 24 → 10 on digits: two same-width device layers (their first draws made
    together) and a narrower head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.a, self.b, self.c = nn.Linear(64, 24), nn.Linear(24, 24), nn.Linear(24, 10)

    def forward(self, x, noise=None):
        return self.c(torch.tanh(self.b(torch.tanh(self.a(x)))))


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().view(torch.int32)


@pytest.mark.parametrize("device,options", [
    ("rram", {}), ("rram-wan2022-2days", {}), ("photonic", {}),
    ("rram", {"device_programming": "epoch", "device_drift_alpha": "epoch"}),
    ("photonic", {"device_programming": "epoch", "device_adc_gain": "epoch"}),
])
def test_device_training_ends_with_the_weights_of_the_code_before(monkeypatch, device, options):
    """Two epochs of 6 batches (the last one short: 29 of 32 rows) through ``train_model``,
    against the same run with the streams split per batch: the same losses and weights,
    bit for bit (zero signs included)."""
    task = load_task("digits", seed=0)
    spec = TrainSpec(epochs=2, batch_size=32, max_train_samples=189, device=device, seed=3,
                     weight_decay=1e-4, **options)
    new = train_model(_Mlp(), task, spec)

    import noisydeq.train as train_module

    monkeypatch.setattr(train_module, "_device_streams", _streams_split_per_batch)
    old = train_model(_Mlp(), task, spec)
    assert [h["loss"] for h in new.history] == [h["loss"] for h in old.history]
    for (name, a), b in zip(new.model.state_dict().items(), old.model.state_dict().values(),
                            strict=True):
        assert torch.equal(_bits(a), _bits(b)), name
