"""Hardware-aware training with the device calibrated to its training SNR per step
(``TrainSpec.device_calibration``): the values the field takes, its cache key (left out at
the default ``epoch``, so earlier models keep theirs), the steps a run calibrates at, that
the realised SNR on the calibration inputs is the target at every calibrated step (and
drifts without), the sweep's ``train_calibration`` and the CLI's one-line refusals."""

from __future__ import annotations

import pytest
import torch

from noisydeq.config import TrainSpec
from noisydeq.errors import NoisyDEQError
from noisydeq.hardware.controls import device_layers
from noisydeq.specs.base import build
from noisydeq.train_config import spec_dump
from noisydeq.train_device import calibration_due
from tests.cli_helpers import refused_writing_nothing
from tests.hardware.hold_helpers import digits_mlp


def _spec(**kw) -> TrainSpec:
    return build(TrainSpec, {"device": "rram", "device_snr_db": 10.0, **kw}, where="train")


@pytest.mark.parametrize(("given", "held"), [("epoch", None), (None, None), ("step", "step"),
                                             (1, "step"), ("1", "step"), (4, 4), (" 4 ", 4)])
def test_values(given, held) -> None:
    assert _spec(device_calibration=given).device_calibration == held


@pytest.mark.parametrize("bad", [0, -2, "x", 2.5, True, "every"])
def test_bad_values_are_one_line(bad) -> None:
    with pytest.raises(NoisyDEQError, match="device_calibration: want 'epoch', 'step' or a "
                                            "number of steps"):
        _spec(device_calibration=bad)


def test_needs_a_device_and_a_training_snr() -> None:
    with pytest.raises(NoisyDEQError, match="device_calibration: set for a training device"):
        build(TrainSpec, {"device_calibration": "step"}, where="train")
    with pytest.raises(NoisyDEQError, match="at the native SNR"):
        build(TrainSpec, {"device": "rram", "device_calibration": "step"}, where="train")


def test_cache_key_unchanged_at_the_default() -> None:
    plain = spec_dump(_spec())
    assert "device_calibration" not in plain  # configs keyed before the option keep it
    assert spec_dump(_spec(device_calibration="epoch")) == plain
    assert spec_dump(_spec(device_calibration="step"))["device_calibration"] == "step"
    assert spec_dump(_spec(device_calibration=1)) == spec_dump(_spec(device_calibration="step"))
    assert spec_dump(_spec(device_calibration=3))["device_calibration"] == 3


def test_calibration_due() -> None:
    assert [calibration_due(_spec(), b) for b in range(4)] == [False] * 4
    assert [calibration_due(_spec(device_calibration="step"), b)
            for b in range(4)] == [False, True, True, True]  # step 0: the epoch's own
    assert [calibration_due(_spec(device_calibration=3), b)
            for b in range(7)] == [False, False, False, True, False, False, True]


def _train(monkeypatch, spec: TrainSpec, probe=None) -> int:
    """Train a small digits MLP with ``spec`` (5 batches per epoch); the number of times the
    device was calibrated. ``probe(net)`` runs before every step's forward."""
    import noisydeq.hardware.controls as controls
    import noisydeq.train as train_mod
    from noisydeq.tasks import load_task

    calls = [0]
    real_calibrate, real_streams = controls.calibrate, train_mod._device_streams

    def counting(*args, **kwargs):
        calls[0] += 1
        return real_calibrate(*args, **kwargs)

    def streams(net, *args):
        if probe is not None:
            probe(net)
        return real_streams(net, *args)

    with monkeypatch.context() as m:
        m.setattr(controls, "calibrate", counting)
        m.setattr(train_mod, "_device_streams", streams)
        train_mod.train_model(digits_mlp(), load_task("digits", seed=0), spec)
    return calls[0]


@pytest.mark.parametrize(("every", "calls"), [("epoch", 2 * (1 + 1)), ("step", 2 * (1 + 4 + 1)),
                                              (2, 2 * (1 + 2 + 1)), (5, 2 * (1 + 1))])
def test_training_calibrates_at_the_asked_steps(monkeypatch, every, calls) -> None:
    """Per epoch: the chip's calibration, the asked steps of 5 and the validation chip's."""
    spec = _spec(epochs=2, batch_size=32, max_train_samples=160, device_calibration=every)
    assert _train(monkeypatch, spec) == calls


@pytest.mark.parametrize("device", ["rram", "photonic"])
def test_the_realised_snr_is_the_target_at_every_calibrated_step(monkeypatch, device) -> None:
    """Each device layer's total SNR on its calibration inputs (the clean activations it was
    calibrated on) at the weights of every step: at the target (10 dB) when calibrated per
    step; with the default per-epoch calibration it drifts away as the weights train (a large
    learning rate moves them within the epoch) — the check can fail."""
    seen: dict[str, list[list[float]]] = {"step": [], "epoch": []}

    def probe(key):
        def fn(net):
            seen[key].append([
                layer.measure_parts(layer.control_for(10.0), layer.calibration_inputs()).total_db
                for layer in device_layers(net).values()])
        return fn

    for key in seen:
        spec = build(TrainSpec, {"device": device, "device_snr_db": 10.0, "epochs": 1,
                                 "batch_size": 32, "max_train_samples": 320, "lr": 0.03,
                                 "device_calibration": key}, where="train")
        _train(monkeypatch, spec, probe(key))
    step = torch.tensor(seen["step"])
    epoch = torch.tensor(seen["epoch"])
    assert step.shape == epoch.shape == (10, 2)
    assert torch.equal(step[0], epoch[0])  # the epoch's calibration: the same start
    assert (step - 10.0).abs().max() < 0.2
    assert (epoch - 10.0).abs().max() > 1.0


def test_sweep_field_reaches_the_family_spec_and_keeps_identities() -> None:
    from noisydeq.families import family_spec_for_sweep
    from noisydeq.specs.sweep import SweepSpec

    base = {"task": "digits", "depths": [1], "train_device": ["rram"],
            "train_device_snr_db": [10]}
    plain = build(SweepSpec, base, where="sweep")
    assert "train_calibration" not in plain.model_dump()
    assert build(SweepSpec, {**base, "train_calibration": "epoch"},
                 where="sweep").model_dump() == plain.model_dump()
    for given, held in (("step", "step"), ("1", "step"), (8, 8)):
        spec = build(SweepSpec, {**base, "train_calibration": given}, where="sweep")
        assert spec.model_dump()["train_calibration"] == held
        fam = family_spec_for_sweep(spec, 0, float("inf"), "rram", 10.0)
        assert fam.train_spec("ffw").device_calibration == held
    assert family_spec_for_sweep(plain, 0, float("inf"), "rram", 10.0).train_spec(
        "ffw").device_calibration is None
    with pytest.raises(NoisyDEQError, match="train_calibration: set for a training device"):
        build(SweepSpec, {"task": "digits", "train_calibration": "step"}, where="sweep")
    with pytest.raises(NoisyDEQError, match="train_calibration: calibrates the training "):
        build(SweepSpec, {**base, "train_device_snr_db": [], "train_calibration": "step"},
              where="sweep")


@pytest.mark.parametrize(("args", "message"), [
    (["--device-calibration", "step"], "--device-calibration: needs a training --device"),
    (["--device", "rram", "--device-calibration", "step"],
     "--device-calibration: calibrates the device to --device-snr"),
    (["--device", "rram", "--device-snr", "10", "--device-calibration", "0"],
     "--device-calibration: want 'epoch', 'step' or a number of steps"),
])
def test_train_cli_refusals_are_one_line(tmp_path, monkeypatch, capsys, args,
                                         message) -> None:
    refused_writing_nothing(["train", "--task", "digits", "--kind", "ffw", "--depth", "1",
                             *args], tmp_path, monkeypatch, capsys, message)


@pytest.mark.parametrize(("args", "message"), [
    (["--train-device", "rram", "--train-device-snr", "10", "--train-device-calibration",
      "often"], "--train-device-calibration: want 'epoch', 'step'"),
    # the options a command-line user gives are named, not the spec fields alone
    (["--train-device-calibration", "step"], "--train-device-calibration: set for a training "
     "device, but none is given (--train-device, train_device)"),
    (["--train-device", "rram", "--train-device-calibration", "step"],
     "--train-device-calibration: calibrates the training device to its SNR "
     "(--train-device-snr, train_device_snr_db)"),
])
def test_sweep_cli_refusal_is_one_line(tmp_path, monkeypatch, capsys, args, message) -> None:
    refused_writing_nothing(["sweep", "--task", "digits", "--depths", "1", "--snr", "10",
                             *args], tmp_path, monkeypatch, capsys, message)


def test_resumed_training_ends_with_the_same_weights_and_differs_from_per_epoch(
        tmp_path) -> None:
    """Calibrating per step is a function of the step's weights and chip: a run resumed
    after its second epoch ends with the weights of an uninterrupted one, and those are
    not the per-epoch calibration's (the option changes the training)."""
    from noisydeq.tasks import load_task
    from noisydeq.train import train_model

    task = load_task("digits", seed=0)
    spec = _spec(epochs=3, batch_size=32, max_train_samples=128, device_calibration=2)
    ref = train_model(digits_mlp(3), task, spec)

    def stop(epoch, record):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_model(digits_mlp(3), task, spec, out_dir=tmp_path, on_epoch=stop)
    resumed = train_model(digits_mlp(3), task, spec, out_dir=tmp_path)
    assert resumed.start_epoch == 2
    for k, v in ref.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[k], v), k
    plain = train_model(digits_mlp(3), task, _spec(epochs=3, batch_size=32,
                                                   max_train_samples=128))
    assert not torch.equal(plain.model.a.weight, ref.model.a.weight)


def test_drift_benchmark_probe_leaves_the_training_unchanged() -> None:
    """benchmarks/calib_drift.py: probing the layers' SNR between steps draws nothing from
    the training's streams (the weights equal an unprobed run's), probes the asked steps
    and reads the total SNR right after the epoch's calibration near the target."""
    from benchmarks.calib_drift import probe_batches, train_probed
    from noisydeq.tasks import load_task
    from noisydeq.train import train_model

    assert probe_batches(23, 10) == [0, 2, 5, 7, 10, 12, 15, 17, 20, 22]
    assert probe_batches(3, 10) == [0, 1, 2]
    task = load_task("digits", seed=0)
    spec = _spec(epochs=2, batch_size=32, max_train_samples=160, lr=0.01)
    rows, probed, _ = train_probed(digits_mlp(2), task, spec, 3)
    plain = train_model(digits_mlp(2), task, spec)
    for k, v in plain.model.state_dict().items():
        assert torch.equal(probed.model.state_dict()[k], v), k
    assert [(r["epoch"], r["batch"]) for r in rows][::2] == [
        (e, b) for e in (0, 1) for b in (0, 2, 4)]
    assert {r["layer"] for r in rows} == {"a", "b"}
    first = [r["total_snr_db"] for r in rows if r["batch"] == 0]
    assert all(abs(t - 10.0) < 1.5 for t in first), first


@pytest.mark.parametrize("value", ["step", 10])
def test_toml_specs_round_trip(value) -> None:
    from noisydeq.specs.sweep import SweepSpec
    from noisydeq.specs.toml import dumps_toml, loads_toml

    train = _spec(device_calibration=value)
    assert f"device_calibration = {value!r}".replace("'", '"') in dumps_toml(train)
    assert loads_toml(TrainSpec, dumps_toml(train)) == train
    sweep = build(SweepSpec, {"task": "digits", "depths": [1], "train_device": ["rram"],
                              "train_device_snr_db": [10], "train_calibration": value},
                  where="sweep")
    assert loads_toml(SweepSpec, dumps_toml(sweep)) == sweep
    assert loads_toml(TrainSpec, 'device = "rram"\ndevice_snr_db = 10\n'
                      'device_calibration = "epoch"\n').device_calibration is None
