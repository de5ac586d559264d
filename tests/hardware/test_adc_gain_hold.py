"""Hardware-aware training with the photonic ADC gain measured once per chip
(``TrainSpec.device_adc_gain = "epoch"``) instead of at every step: held while the weights
train, measured afresh on a new chip or new calibration inputs, its own cache key, and the
default path unchanged."""

from __future__ import annotations

import pydantic
import pytest
import torch
from torch import nn

from noisydeq.config import TrainSpec
from noisydeq.errors import NoisyDEQError
from noisydeq.hardware import get_device
from noisydeq.hardware.controls import device_layers
from noisydeq.tasks import load_task
from noisydeq.train import train_model
from noisydeq.train_config import spec_dump
from noisydeq.train_device import _deploy, _on_chip
from tests.cli_helpers import one_line_error, run_cli


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 5))


def _train_step(net: nn.Module, k: int) -> None:
    g = torch.Generator().manual_seed(k)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)


def _measured(layer) -> float:
    """The ADC gain measured from scratch with the layer's current weights."""
    hold, cache = layer.hold_adc_gain, layer._adc
    layer.hold_adc_gain, layer._adc = False, None
    try:
        return layer.adc_scale()
    finally:
        layer.hold_adc_gain, layer._adc = hold, cache


def test_held_gain_stays_while_weights_train_and_the_default_remeasures() -> None:
    held = get_device("photonic", chip=1).deploy(_net())
    per_step = get_device("photonic", chip=1).deploy(_net())
    for layer in device_layers(held).values():
        layer.hold_adc_gain = True
    first = {n: layer.adc_scale() for n, layer in device_layers(held).items()}
    for k in range(3):
        _train_step(held, k)
        _train_step(per_step, k)
        for name, layer in device_layers(held).items():
            assert layer.adc_scale() == first[name]  # held
            other = device_layers(per_step)[name]
            assert other.adc_scale() == _measured(other)  # default: every weight version
            assert _measured(layer) != first[name]  # the weights did move the gain
    layer = device_layers(held)["0"]
    layer.calib_x = torch.rand(64, 12) * 2 - 1  # new calibration inputs: measured again
    assert layer.adc_scale() == _measured(layer)


def test_training_holds_the_gain_per_chip_and_the_validation_chip_measures_its_own() -> None:
    spec = TrainSpec(device="photonic", device_adc_gain="epoch")
    net = _deploy(_net(), spec, 0)
    x = torch.rand(32, 12)
    gains = {n: layer.adc_scale() for n, layer in device_layers(net).items()}
    _train_step(net, 0)
    assert {n: layer.adc_scale() for n, layer in device_layers(net).items()} == gains
    _on_chip(net, spec, 5, x)  # next epoch's chip: measured with the current weights
    for layer in device_layers(net).values():
        assert layer.hold_adc_gain and layer.adc_scale() == _measured(layer)


def test_the_option_has_its_own_cache_key_and_needs_a_device() -> None:
    plain = spec_dump(TrainSpec(device="photonic"))
    assert "device_adc_gain" not in plain  # configs keyed before the option keep their hash
    assert spec_dump(TrainSpec(device="photonic", device_adc_gain="step")) == plain
    assert spec_dump(TrainSpec(device="photonic", device_adc_gain="epoch"))[
        "device_adc_gain"] == "epoch"
    with pytest.raises(pydantic.ValidationError, match="device_adc_gain"):
        TrainSpec(device_adc_gain="epoch")
    with pytest.raises(NoisyDEQError, match="measures no ADC gain"):
        _deploy(_net(), TrainSpec(device="rram", device_adc_gain="epoch"), 0)


def test_epoch_gain_trains_and_differs_from_the_per_step_gain() -> None:
    task = load_task("digits", seed=0)
    common = dict(epochs=1, batch_size=32, max_train_samples=128, device="photonic")

    class Mlp(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(64, 24), nn.Linear(24, 10)

        def forward(self, x, noise=None):
            return self.b(torch.tanh(self.a(x)))

    def model() -> nn.Module:
        torch.manual_seed(1)
        return Mlp()

    step = train_model(model(), task, TrainSpec(**common))
    epoch = train_model(model(), task, TrainSpec(**common, device_adc_gain="epoch"))
    again = train_model(model(), task, TrainSpec(**common, device_adc_gain="epoch"))
    w = {k: v for k, v in epoch.model.state_dict().items()}
    assert all(torch.equal(w[k], v) for k, v in again.model.state_dict().items())
    assert any(not torch.equal(w[k], v) for k, v in step.model.state_dict().items())
    assert step.config != epoch.config


@pytest.mark.parametrize("args, needle", [
    (["--device-adc-gain", "epoch"], "needs a training --device"),
    (["--device", "rram", "--device-adc-gain", "epoch"], "measures no ADC gain"),
])
def test_bad_adc_gain_option_is_one_line(tmp_path, capsys, args, needle) -> None:
    code, _, err = run_cli(["train", "--task", "digits", "--kind", "ffw", "--depths", "1",
                            "--out", str(tmp_path / "o"), *args], capsys)
    one_line_error(code, err, needle)
    assert not (tmp_path / "o").exists()


def test_sweep_option_reaches_the_photonic_families_only() -> None:
    from noisydeq.config import SweepSpec, build
    from noisydeq.families import family_spec_for_sweep

    plain = build(SweepSpec, {"device": "photonic", "train_device": "photonic"}, where="sweep")
    assert "train_adc_gain" not in plain.model_dump()  # earlier sweeps keep their identity
    sweep = build(SweepSpec, {"device": "photonic", "train_device": "rram,photonic",
                              "train_adc_gain": "epoch"}, where="sweep")
    assert sweep.model_dump()["train_adc_gain"] == "epoch"
    for dev, want in (("photonic", "epoch"), ("rram", None)):
        fspec = family_spec_for_sweep(sweep, 0, float("inf"), dev, None)
        assert fspec.train_spec("ffw").device_adc_gain == want
    with pytest.raises(NoisyDEQError, match="train_adc_gain"):
        build(SweepSpec, {"train_adc_gain": "epoch"}, where="sweep")


def test_sweep_adc_gain_without_a_measuring_device_is_one_line(tmp_path, capsys,
                                                               monkeypatch) -> None:
    monkeypatch.setenv("NOISYDEQ_CACHE", str(tmp_path / "cache"))
    code, _, err = run_cli(["sweep", "--depths", "1", "--snr", "0,10", "--chips", "1",
                            "--epochs", "1", "--out", str(tmp_path / "run"), "--quiet",
                            "--train-device", "rram", "--train-device-adc-gain", "epoch"],
                           capsys)
    one_line_error(code, err, "train_adc_gain", "measures an ADC gain")
    assert not (tmp_path / "run").exists()
