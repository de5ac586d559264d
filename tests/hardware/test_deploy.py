"""Deployment contracts: state_dict, gradients, static vs dynamic noise, per-sample SNR batches."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from noisydeq import hardware as hw
from noisydeq.errors import NoisyDEQError
from noisydeq.noise import NoiseStream

NOISY = ["snr", "rram-wan2022", "photonic"]


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 32), nn.Tanh(), nn.Linear(32, 10))


@pytest.mark.parametrize("name", ["ideal", *NOISY])
def test_state_dict_keys_and_values_kept(name: str) -> None:
    model = _mlp()
    dep = hw.get_device(name).deploy(model)
    assert dep.state_dict().keys() == model.state_dict().keys()
    for k, v in model.state_dict().items():
        assert torch.equal(dep.state_dict()[k], v)
    dep.load_state_dict(model.state_dict())
    assert isinstance(model[0], nn.Linear)  # the user's model is untouched


def test_ideal_is_exact_on_linear_and_conv() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(3 * 25, 4))
    x = torch.randn(5, 2, 5, 5)
    assert torch.allclose(hw.get_device("ideal").deploy(model)(x), model(x), atol=1e-6)


@pytest.mark.parametrize("name", ["rram-wan2022", "photonic"])
def test_conv_layers_run_patchwise_close_to_exact(name: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(3, 8, 3, padding=1), nn.Tanh(), nn.Conv1d(8, 4, 2, stride=2))
    model2 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, stride=2))
    for m, x in ((model, torch.rand(4, 3, 12) * 2 - 1), (model2, torch.rand(4, 3, 9, 9))):
        dep = hw.get_device(name).deploy(m)
        hw.set_measure(dep, True)
        with torch.no_grad():
            y, ref = dep(x), m(x)
        assert y.shape == ref.shape
        assert all(v > 10.0 for v in hw.layer_snr_report(dep).values())


@pytest.mark.parametrize("name", NOISY)
def test_gradients_reach_digital_weights(name: str) -> None:
    model = _mlp()
    dep = hw.get_device(name).deploy(model)
    x = torch.randn(16, 20, requires_grad=True)
    (dep(x) * torch.randn(16, 10)).sum().backward()
    for n, p in dep.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, n
    assert x.grad is not None and torch.isfinite(x.grad).all()
    if name != "snr":  # straight-through: one layer's gradients are the exact layer's
        lin = model[0]
        layer = hw.get_device(name).deploy(lin)
        c = torch.randn(16, 32)
        (layer(x) * c).sum().backward()
        g_dev = layer.weight.grad.clone()
        lin.weight.grad = None
        (lin(x) * c).sum().backward()
        assert torch.allclose(g_dev, lin.weight.grad, atol=1e-5)


def test_training_step_reprograms_the_chip() -> None:
    dep = hw.get_device("rram-wan2022").deploy(_mlp())
    x = torch.randn(8, 20)
    hw.set_stream(dep, NoiseStream.from_seed(0))
    with torch.no_grad():
        y0 = dep(x)
    opt = torch.optim.SGD(dep.parameters(), lr=0.1)
    dep(x).pow(2).sum().backward()
    opt.step()
    hw.set_stream(dep, NoiseStream.from_seed(0))
    with torch.no_grad():
        y1 = dep(x)
    assert not torch.allclose(y0, y1)


@pytest.mark.parametrize("name", ["rram-wan2022", "photonic"])
def test_static_noise_per_chip_dynamic_noise_per_forward(name: str) -> None:
    model = _mlp()
    x = torch.rand(8, 20) * 2 - 1
    kw = {"weight_error_std": 0.05} if name == "photonic" else {}
    spec = hw.load_spec(name).model_copy(update=kw)

    def run(chip: int, seed: int) -> torch.Tensor:
        dep = hw.device_from_spec(spec, chip_seed=chip).deploy(model)
        hw.set_stream(dep, NoiseStream.from_seed(seed))
        with torch.no_grad():
            return dep(x)

    assert torch.equal(run(1, 0), run(1, 0))  # same chip, same stream: identical
    assert not torch.allclose(run(1, 0), run(2, 0))  # another chip
    dep = hw.device_from_spec(spec, chip_seed=1).deploy(model)
    with torch.no_grad():
        assert not torch.allclose(dep(x), dep(x))  # dynamic noise differs per forward


@pytest.mark.parametrize("name", NOISY)
def test_per_sample_snr_batch_equals_separate_runs(name: str) -> None:
    model = _mlp()
    levels, rows, seeds = [0.0, 10.0, 20.0], [5, 3, 4], [11, 12, 13]
    torch.manual_seed(1)
    xs = [torch.rand(r, 20) * 2 - 1 for r in rows]
    device = hw.get_device(name).new_chip(4)
    separate = []
    for snr, x, seed in zip(levels, xs, seeds, strict=True):
        dep = device.at_snr(snr).deploy(model)
        hw.set_stream(dep, NoiseStream.from_seed(seed))
        with torch.no_grad():
            separate.append(dep(x))
    dep = device.deploy(model)
    hw.set_stream(dep, NoiseStream.from_blocks(seeds, rows))
    snr = torch.cat([torch.full((r,), s) for s, r in zip(levels, rows, strict=True)])
    hw.set_sample_snr(dep, snr)
    with torch.no_grad():
        batched = dep(torch.cat(xs))
    assert torch.allclose(batched, torch.cat(separate), atol=1e-5, rtol=1e-5)


def test_unmappable_layers_are_named() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Embedding(10, 4), nn.LayerNorm(4))
    with pytest.raises(NoisyDEQError, match=r"2 \(Embedding\)"):
        hw.get_device("rram-wan2022").deploy(model)
    with pytest.raises(NoisyDEQError, match="groups=1"):
        hw.get_device("snr").deploy(nn.Conv2d(4, 4, 3, groups=2))


def test_presets_lookup_and_errors(tmp_path) -> None:
    names = hw.preset_names()
    for n in ["ideal", "snr", "rram-wan2022", "rram-wan2022-1day", "rram-wan2022-2days",
              "photonic"]:
        assert n in names
        assert hw.get_device(n).kind == hw.load_spec(n).kind
    with pytest.raises(NoisyDEQError, match="did you mean 'rram-wan2022'"):
        hw.get_device("rram-wan")
    with pytest.raises(NoisyDEQError, match="did you mean 'rram'"):  # bare kinds too
        hw.get_device("rarm")
    with pytest.raises(NoisyDEQError, match="rram = rram-wan2022; or the path"):
        hw.get_device("nothing-like-it")  # the list names what the bare kind means
    own = tmp_path / "mine.toml"
    own.write_text('kind = "rram"\nt_inference_s = 86400\nout_noise = 0.02\n')
    dev = hw.get_device(str(own))
    assert dev.spec.out_noise == 0.02 and dev.name == "mine"
    own.write_text('kind = "rrem"\n')
    with pytest.raises(NoisyDEQError, match="did you mean 'rram'"):
        hw.get_device(str(own))
    with pytest.raises(NoisyDEQError, match="exact"):
        hw.get_device("ideal").at_snr(10.0)
    knobs = hw.get_device("snr", snr_db=7.0).deploy(nn.Linear(3, 3)).resolve_controls(1)
    assert knobs == pytest.approx((0.0, 10 ** (-7.0 / 20)))  # no weight error; r = SNR^-1/2


def test_measure_is_optional() -> None:
    dep = hw.get_device("snr").deploy(_mlp())
    with torch.no_grad():
        dep(torch.randn(4, 20))
    assert all(v != v for v in hw.layer_snr_report(dep).values())  # nan when off


def test_calibrate_on_real_activations() -> None:
    model = _mlp()
    dep = hw.get_device("rram-wan2022").at_snr(15.0).deploy(model)
    x = torch.randn(256, 20) * 3
    hw.calibrate(dep, x)
    hw.set_measure(dep, True)
    with torch.no_grad():
        dep(x)
    rep = hw.layer_snr_report(dep)
    # first layer sees exactly the calibration inputs; the second the noisy tanh outputs
    assert abs(rep["0"] - 15.0) < 0.5 and abs(rep["2"] - 15.0) < 1.0


def test_cli_devices_lists_presets_as_json() -> None:
    import json

    from click.testing import CliRunner

    from noisydeq.cli import cli

    res = CliRunner().invoke(cli, ["devices", "snr", "ideal", "--json"])
    assert res.exit_code == 0, res.output
    rows = {r["name"]: r for r in json.loads(res.output)}
    assert rows["snr"]["native_snr_db"] == 20.0 and rows["ideal"]["native_snr_db"] is None
