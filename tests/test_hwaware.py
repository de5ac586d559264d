"""Hardware-aware training: device-trained vs digital twin on the device, layers kept
digital (exact, straight-through gradients), per-epoch device validation, cache keys that
follow the device's content, sweep options and their bad input."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import Tensor, nn

from noisydeq.config import FamilySpec, SweepSpec, TrainSpec, build
from noisydeq.errors import NoisyDEQError
from noisydeq.hardware import get_device
from noisydeq.hardware.base import DeviceLayer, calibrate, device_layers
from noisydeq.noise import NoiseStream, derive_seed
from noisydeq.tasks import load_task
from noisydeq.train import train_model
from tests.cli_helpers import refused_writing_nothing


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(64, 48), nn.Linear(48, 10)

    def forward(self, x, noise=None):
        return self.b(torch.tanh(self.a(x)))


def _tiny() -> Tiny:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return Tiny()


def _device_loss(model: nn.Module, task, device: str, snr: float, chips: range) -> float:
    """Mean test cross-entropy of ``model`` on ``device`` at ``snr`` over ``chips`` (each
    calibrated on training inputs; read noise keyed by test-sample index)."""
    losses = []
    for chip in chips:
        net = get_device(device, snr_db=snr, chip=chip).deploy(model).eval()
        calibrate(net, task.x_train[:256])
        rows = torch.arange(len(task.x_test))
        for name, layer in device_layers(net).items():
            layer.stream = NoiseStream.from_seed(derive_seed(99, chip, name), samples=rows)
        with torch.no_grad():
            losses.append(float(nn.functional.cross_entropy(net(task.x_test), task.y_test)))
    return sum(losses) / len(losses)


@pytest.mark.parametrize("device, snr, epochs, lr", [("snr", 5.0, 3, 3e-3),
                                                   ("snr-additive", 3.0, 10, 1e-2),
                                                   ("rram", 3.0, 10, 1e-2),
                                                   ("photonic", 3.0, 10, 1e-2)])
def test_device_trained_model_beats_its_digital_twin_on_the_device(digits, device, snr,
                                                                   epochs, lr):
    """Measured (seeds 0-2, chips 100-102, test loss on the device, device − digital;
    docs/devices.md, "Hardware-aware training"): snr 5 dB 3 epochs −0.040 [−0.051, −0.032];
    snr-additive 3 dB −0.68 [−0.70, −0.66]; rram 3 dB −0.19 [−0.25, −0.10]; photonic 3 dB
    −0.67 [−0.69, −0.66] (10 epochs, lr 1e-2). With the plain straight-through gradient:
    +0.024, +3.05, +0.61, +3.66 (worse the longer it trained)."""
    spec = TrainSpec(epochs=epochs, batch_size=32, lr=lr, seed=0)
    digital = train_model(_tiny(), digits, spec).model
    on_chip = train_model(_tiny(), digits, spec.model_copy(
        update={"device": device, "device_snr_db": snr})).model
    chips = range(100, 103)  # the same chips for both, none of them seen in training
    ours, twin = (_device_loss(m, digits, device, snr, chips) for m in (on_chip, digital))
    assert ours < twin - 0.02, (ours, twin)


def _frozen(layer: DeviceLayer, x: Tensor) -> Tensor:
    """The layer's device output (no bias) for ``x`` with draws fixed by sample index."""
    layer.stream = NoiseStream.from_seed(5, samples=torch.arange(len(x)))
    with torch.no_grad():
        return layer.device_output(x, layer.resolve_controls(len(x)))


@pytest.mark.parametrize("name", ["rram", "photonic", "snr"])
def test_scaled_gradient_is_the_device_derivative_along_the_scale(name):
    """With every draw fixed, the device read of c·W or c·x is c times that of W or x (inputs
    normalised by max|x|, conductances by max|W|; snr noise ∝ ‖Wx‖), so d/dc L(y(cW)) at
    c = 1 is Σ g·y_dev: a central difference of the device itself. The scaled estimator's
    ⟨∇_W L, W⟩ and ⟨∇_x L, x⟩ give it; the plain one gives Σ g·Wx (the noise-free value)."""
    torch.manual_seed(0)
    lin = nn.Linear(32, 24, bias=False)
    layer = get_device(name, snr_db=6.0, chip=2).deploy(lin)
    x = torch.rand(64, 32) * 2 - 1
    layer.calib_x = x.clone()
    g = torch.randn(64, 24)
    y = _frozen(layer, x)
    h, w0 = 1e-3, lin.weight.detach().clone()

    def weights(c: float) -> None:
        with torch.no_grad():  # a new weight version: the chip is programmed again
            layer.weight.copy_(w0 * c)

    for which in ("W", "x"):
        ups = []
        for c in (1 + h, 1 - h):
            weights(c if which == "W" else 1.0)
            ups.append(float((g * _frozen(layer, x * (c if which == "x" else 1.0))).sum()))
        weights(1.0)
        fd = (ups[0] - ups[1]) / (2 * h)
        assert fd == pytest.approx(float((g * y).sum()), rel=2e-3), which
    for on in (True, False):
        layer.scaled_gradient = on
        layer.weight.grad = None
        xr = x.clone().requires_grad_(True)
        layer.stream = NoiseStream.from_seed(5, samples=torch.arange(len(x)))
        out = layer(xr)
        assert torch.allclose(out.detach(), y, atol=1e-6)  # same forward (up to rounding)
        (g * out).sum().backward()
        along_w = float((layer.weight.grad * layer.weight.detach()).sum())
        along_x = float((xr.grad * x).sum())
        want = float((g * y).sum()) if on else float((g * (x @ lin.weight.detach().T)).sum())
        assert along_w == pytest.approx(want, rel=1e-4)
        assert along_x == pytest.approx(want, rel=1e-4)


def test_calibrated_gradient_of_the_additive_channel_follows_its_calibration():
    """At a target SNR the additive channel's η is set on the calibration inputs, η² =
    mean‖Wx‖²/(d·SNR): with the batch as those inputs and ξ fixed, the device output
    recalibrated at every W is a smooth function of W, and the scaled estimator's gradient
    is its derivative (central differences in a random direction, float64); the gradient at
    fixed η (plain straight-through) is not."""
    torch.manual_seed(2)
    lin = nn.Linear(16, 12, bias=False).double()
    x = torch.rand(8, 16, dtype=torch.float64) * 2 - 1
    g, v = torch.randn(8, 12, dtype=torch.float64), torch.randn(12, 16, dtype=torch.float64)

    def device_loss(layer: DeviceLayer) -> float:
        layer.calib_x = x.clone()
        layer.reset_calibration()  # calibrated again for the current weights
        return float((g * _frozen(layer, x)).sum())

    layer = get_device("snr-additive", snr_db=3.0).deploy(lin)
    w0, h, ups = layer.weight.detach().clone(), 1e-6, []
    for t in (h, -h):
        with torch.no_grad():
            layer.weight.copy_(w0 + t * v)
        ups.append(device_loss(layer))
    with torch.no_grad():
        layer.weight.copy_(w0)
    fd = (ups[0] - ups[1]) / (2 * h)
    for scaled in (True, False):
        device_loss(layer)
        layer.scaled_gradient, layer.weight.grad = scaled, None
        layer.stream = NoiseStream.from_seed(5, samples=torch.arange(8))
        (g * layer(x)).sum().backward()
        along = float((layer.weight.grad * v).sum())
        assert (along == pytest.approx(fd, rel=1e-6)) is scaled


def test_scaled_gradient_of_the_snr_channel_is_the_reparameterised_one():
    """The snr channel's noise r·‖Wx‖/√d·ξ is smooth in W: with ξ fixed, the scaled
    estimator's gradient is the full derivative (central differences in a random
    direction, float64), as signal-noise training's (noise.multiplicative)."""
    torch.manual_seed(1)
    lin = nn.Linear(16, 12, bias=False).double()
    layer = get_device("snr", snr_db=3.0).deploy(lin)
    layer.scaled_gradient = True
    x = torch.rand(8, 16, dtype=torch.float64) * 2 - 1
    layer.calib_x = x.clone()
    g, v = torch.randn(8, 12, dtype=torch.float64), torch.randn(12, 16, dtype=torch.float64)
    layer.stream = NoiseStream.from_seed(5, samples=torch.arange(8))
    (g * layer(x)).sum().backward()
    w0, h, ups = layer.weight.detach().clone(), 1e-6, []
    for t in (h, -h):
        with torch.no_grad():
            layer.weight.copy_(w0 + t * v)
        ups.append(float((g * _frozen(layer, x)).sum()))
    assert float((layer.weight.grad * v).sum()) == pytest.approx((ups[0] - ups[1]) / (2 * h),
                                                                 rel=1e-6)


def test_training_reports_the_device_per_epoch(digits, tmp_path):
    spec = TrainSpec(epochs=2, batch_size=64, max_train_samples=256, device="rram",
                     device_snr_db=10.0)
    res = train_model(_tiny(), digits, spec, out_dir=tmp_path / "m")
    for rec in res.history:
        assert 0 <= rec["val_accuracy_device"] <= 1 and 0 <= rec["val_accuracy"] <= 1
    import json

    side = json.loads((tmp_path / "m" / "model.json").read_text())
    assert side["extra"]["history"][-1]["val_accuracy_device"] == \
        res.history[-1]["val_accuracy_device"]
    assert side["config"]["device_spec"]["kind"] == "rram"
    # the device validation is on a fixed chip with fixed draws: a rerun repeats it
    again = train_model(_tiny(), digits, spec)
    assert [h["val_accuracy_device"] for h in again.history] == \
        [h["val_accuracy_device"] for h in res.history]


def test_layers_kept_digital_run_exactly_and_gradients_go_straight_through():
    model = _tiny()
    net = get_device("rram", chip=3).deploy(model, digital_layers=["b"])
    assert isinstance(net.a, DeviceLayer) and type(net.b) is nn.Linear
    x = torch.rand(16, 64) * 2 - 1
    net.a.stream = NoiseStream.from_seed(7, samples=torch.arange(16))
    ya = net.a(x)
    ya.retain_grad()
    h = torch.tanh(ya)
    h.retain_grad()
    out = net.b(h)
    assert torch.equal(out, model.b(h))  # the kept layer is exactly nn.Linear
    assert not torch.allclose(ya, model.a(x))  # the device layer is noisy
    nn.functional.cross_entropy(out, torch.arange(16) % 10).backward()
    # straight-through: dL/dW_a = (dL/dy_a)^T x, with y_a the noisy device output
    assert torch.allclose(net.a.weight.grad, ya.grad.T @ x, atol=1e-6)
    assert torch.allclose(net.a.bias.grad, ya.grad.sum(0), atol=1e-6)
    ref = nn.Linear(48, 10)
    ref.load_state_dict(model.b.state_dict())
    nn.functional.cross_entropy(ref(h.detach()), torch.arange(16) % 10).backward()
    assert torch.equal(net.b.weight.grad, ref.weight.grad)  # exact layer, exact gradient
    # the model's own parameters are the deployed ones (an optimiser on net trains them)
    assert net.a.weight.grad is not None and model.a.weight.grad is None


def test_digital_layers_by_suffix_and_unknown_names():
    from noisydeq.families import build_member, member_spec

    task = load_task("digits", seed=0)
    for kind in ("deq", "ffw"):
        m = build_member(member_spec(FamilySpec(kinds=[kind], depths=[1]), task, kind, 1), 0)
        net = get_device("photonic").deploy(m, digital_layers=["proj.U", "head"])
        kept = {n for n, mod in net.named_modules() if type(mod) is nn.Linear}
        assert kept == ({"cell.proj.U", "head"} if kind == "deq" else {"proj.U", "head"})
    with pytest.raises(NoisyDEQError, match=r"no layer 'hed'; did you mean 'head'.*its layers"):
        get_device("rram").deploy(m, digital_layers=["hed"])


def test_the_help_s_digital_layers_example_names_layers_of_a_deq_and_an_ffw():
    """`train --help` named `cell.U,head`, a layer no DEQ has (its input projection is
    cell.proj.U): the example a user copies must deploy both kinds of a family."""
    import re

    from noisydeq.cli import cli
    from noisydeq.families import build_member, member_spec

    text = CliRunner().invoke(cli, ["train", "--help"], terminal_width=200).output
    names = re.search(r"--digital-layers NAME,\.\.\.\s+.*?e\.g\. ([\w.,]+)", text,
                      re.S).group(1).strip(".,").split(",")
    task = load_task("digits", seed=0)
    for kind in ("deq", "ffw"):
        m = build_member(member_spec(FamilySpec(kinds=[kind], depths=[1]), task, kind, 1), 0)
        get_device("rram").deploy(m, digital_layers=names)  # raises on an unknown name


def test_rechip_keeps_parameters_and_redraws_static_noise():
    model = _tiny()
    dev = get_device("rram", chip=1)
    net = dev.deploy(model)
    w = net.a.weight
    before = net.a.chip_matrix(1.0).clone()
    dev.new_chip(2).rechip(net)
    assert net.a.weight is w and net.a.device_model.chip_seed == 2
    assert not torch.equal(net.a.chip_matrix(1.0), before)
    dev.rechip(net)
    assert torch.equal(net.a.chip_matrix(1.0), before)


def test_cache_key_follows_the_training_device_content(tmp_path, digits):
    from noisydeq.families import prepared_member
    from noisydeq.hardware.presets import presets_dir

    preset = tmp_path / "chip.toml"
    shutil.copy(presets_dir() / "rram-wan2022.toml", preset)
    spec = FamilySpec(kinds=["ffw"], depths=[1], device=str(preset))
    dev = torch.device("cpu")
    _, _, first = prepared_member(spec, digits, "ffw", 1, tmp_path, dev)
    _, _, again = prepared_member(spec, digits, "ffw", 1, tmp_path, dev)
    text = preset.read_text()
    preset.write_text(text.replace("out_noise = 0.06", "out_noise = 0.07"))
    _, _, changed = prepared_member(spec, digits, "ffw", 1, tmp_path, dev)
    _, _, digital = prepared_member(FamilySpec(kinds=["ffw"], depths=[1]), digits, "ffw", 1,
                                    tmp_path, dev)
    assert first == again and changed != first and digital not in (first, changed)


def test_sweep_spec_training_devices_and_identity():
    plain = SweepSpec()
    assert "train_device" not in plain.model_dump() and plain.training_devices() == [(None, None)]
    spec = build(SweepSpec, {"train_device": "none,rram", "train_device_snr_db": "0,10"},
                 where="sweep")
    assert spec.training_devices() == [(None, None), ("rram", 0.0), ("rram", 10.0)]
    with pytest.raises(NoisyDEQError, match="train_noise_mode"):
        build(SweepSpec, {"train_noise_mode": "dynamic"}, where="sweep")
    with pytest.raises(NoisyDEQError, match="did you mean 'dynamic'"):
        build(SweepSpec, {"train_device": "rram", "train_noise_mode": "dynamc"}, where="sweep")


@pytest.mark.parametrize("args, message", [
    (["--train-device", "rrm"], "train_device: unknown device 'rrm'; did you mean 'rram'"),
    (["--train-device", "rram", "--train-device-snr", "80"], "above what device"),
    (["--train-device", "rram", "--digital-layers", "hed"], "no layer 'hed'"),
])
def test_sweep_bad_training_input_is_one_line_and_writes_nothing(tmp_path, args, message,
                                                                   monkeypatch, capsys):
    refused_writing_nothing(["sweep", "--depths", "1", "--snr", "0,10", "--chips", "1",
                             "--epochs", "1", "--quiet", *args],
                            tmp_path, monkeypatch, capsys, message)


@pytest.mark.slow
def test_sweep_trains_one_family_per_training_device(tmp_path, monkeypatch):
    from noisydeq.cli import cli
    from noisydeq.results import COLUMNS, TRAIN_DEVICE_COLUMNS, read_csv

    monkeypatch.setenv("NOISYDEQ_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    res = CliRunner().invoke(cli, [
        "sweep", "--depths", "1", "--kinds", "ffw", "--snr", "0,10", "--chips", "1",
        "--epochs", "1", "--set", "max_train_samples=256", "--train-device", "none,rram",
        "--train-device-snr", "10", "--digital-layers", "head", "--out", str(out), "--quiet",
        "--jobs", "1", "--threads", "1"])
    assert res.exit_code == 0, res.output
    assert "trained digital:" in res.output and "trained on rram 10 dB:" in res.output
    rows = read_csv(out / "results.csv")
    assert list(rows[0]) == [*COLUMNS, *TRAIN_DEVICE_COLUMNS]
    ids = {r["model_id"]: r for r in rows}
    assert set(ids) == {"ffw-d1-w128-s0-tinf", "ffw-d1-w128-s0-tinf-hwrram@10"}
    hw = ids["ffw-d1-w128-s0-tinf-hwrram@10"]
    assert (hw["train_device"], hw["train_device_snr_db"], hw["train_noise_mode"]) == (
        "rram", 10.0, "physical")
    assert ids["ffw-d1-w128-s0-tinf"]["train_device"] == "none"
    assert math.isnan(ids["ffw-d1-w128-s0-tinf"]["train_device_snr_db"])
    assert (out / "figures" / "training_effect.png").is_file()
    assert Path(out / "figures" / "metric_vs_snr-2.png").is_file()


@pytest.mark.parametrize("conv", [nn.Conv1d(3, 5, 3, padding=2, dilation=2),
                                  nn.Conv2d(3, 5, (3, 2), stride=(2, 1), padding=(1, 1)),
                                  nn.Conv2d(2, 4, 3, padding=3)])
def test_input_peaks_of_a_convolution_are_the_patch_maxima(conv):
    from noisydeq.hardware.base import input_peaks

    layer = get_device("rram").deploy(conv)
    x = torch.randn(2, conv.in_channels, *((9,) if isinstance(conv, nn.Conv1d) else (7, 6)))
    cols, out_shape = layer._patches(x)  # (B, L, n_in)
    want = cols.abs().amax(-1).reshape(2, 1, *out_shape)
    got = input_peaks(x, layer.op, layer.conv, conv.weight.shape[2:])
    assert torch.equal(got, want)


def test_device_training_config_names_its_gradient_and_digital_configs_do_not(digits):
    from noisydeq.train import DEVICE_GRADIENT, run_config

    cpu = torch.device("cpu")
    digital = run_config(_tiny(), digits, TrainSpec(), cpu)
    hw = run_config(_tiny(), digits, TrainSpec(device="snr", device_snr_db=5.0), cpu)
    assert "device_gradient" not in digital  # digital caches keep their keys
    assert hw["device_gradient"] == DEVICE_GRADIENT == "scaled-straight-through"


def test_streams_set_up_together_draw_what_separate_streams_draw():
    rows = torch.tensor([5, 0, 17, 3])
    together = NoiseStream.many([11, 12, 13], samples=rows)
    for seed, stream in zip([11, 12, 13], together, strict=True):
        alone = NoiseStream.from_seed(seed, samples=rows)
        for shape in ((4, 7), (4, 3)):  # the second call continues each row's count
            assert torch.equal(stream.randn(shape, torch.float32, torch.device("cpu")),
                               alone.randn(shape, torch.float32, torch.device("cpu")))


def test_draws_made_ahead_are_the_draws_each_stream_makes():
    """NoiseStream.draw_ahead: same-length rows of several streams in one call give each
    stream's next randn exactly; another shape, a skip or a row subset drop them."""
    from noisydeq.noise import row_subset

    cpu = torch.device("cpu")
    rows = torch.tensor([5, 0, 17, 3])
    shapes = [(4, 7), (4, 7), (4, 3), (4, 7)]

    def streams():
        return NoiseStream.many([11, 12, 13, 14], samples=rows)

    ahead = streams()
    NoiseStream.draw_ahead(ahead, shapes, torch.float32, cpu)
    assert [s._ahead is not None for s in ahead] == [True, True, False, True]
    ahead[1].skip((4, 7))  # drops its draw ahead
    plain = streams()
    plain[1].skip((4, 7))
    for a, p, shape in zip(ahead, plain, shapes, strict=True):
        for _ in range(2):  # the next call continues each row's count
            assert torch.equal(a.randn(shape, torch.float32, cpu),
                               p.randn(shape, torch.float32, cpu))
    ahead, plain = streams(), streams()
    NoiseStream.draw_ahead(ahead, shapes, torch.float32, cpu)
    assert torch.equal(ahead[0].randn((4, 5), torch.float32, cpu),  # another shape
                       plain[0].randn((4, 5), torch.float32, cpu))
    with row_subset(torch.tensor([1, 3]), 4):  # a subset draws its own rows
        assert torch.equal(ahead[3].randn((4, 7), torch.float32, cpu),
                           plain[3].randn((4, 7), torch.float32, cpu))
    assert ahead[0]._ahead is None and ahead[3]._ahead is None


def test_training_batch_draws_ahead_without_changing_a_layer_output():
    from noisydeq.train import _device_streams
    from noisydeq.train_state import _Rng

    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(8, 6), nn.Tanh(), nn.Linear(6, 6), nn.Tanh(),
                          nn.Linear(6, 3))
    x, idx = torch.rand(5, 8), torch.tensor([9, 2, 4, 7, 0])
    for name in ("rram", "photonic"):
        net = get_device(name, chip=2).deploy(model)
        _device_streams(net, _Rng(3, torch.device("cpu")), 0, idx)
        drawn = [layer.stream._ahead is not None for layer in device_layers(net).values()]
        assert drawn == [True, True, False]  # the two 6-wide layers together
        with torch.no_grad():
            fast = net(x)
            for layer in device_layers(net).values():
                layer.stream._ahead = None
            _device_streams(net, _Rng(3, torch.device("cpu")), 0, idx)
            for layer in device_layers(net).values():
                layer.stream._ahead = None
            assert torch.equal(fast, net(x))


@pytest.mark.parametrize("name", ["rram", "photonic"])
def test_fused_peak_scaled_gradient_equals_the_generic_formula(name):
    """A Linear layer's fused backward (no graph of s) equals y = Wx + e·s/sg(s) built from
    autograd's amax (ties included: inputs with several entries at their max |x|)."""
    from noisydeq.hardware.base import straight_through

    torch.manual_seed(4)
    layer = get_device(name, chip=3).deploy(nn.Linear(12, 9))
    layer.scaled_gradient = True
    x = (torch.rand(6, 12) * 2 - 1).clamp(-0.8, 0.8)  # ties at ±0.8
    x[2] = 0.0  # a zero vector: no scale gradient
    g = torch.randn(6, 9)
    grads = []
    for fused in (True, False):
        layer.peak_scaled = fused
        layer.weight.grad = layer.bias.grad = None
        xr = x.clone().requires_grad_(True)
        layer.stream = NoiseStream.from_seed(1, samples=torch.arange(6))
        (g * layer(xr)).sum().backward()
        grads.append((xr.grad, layer.weight.grad.clone(), layer.bias.grad.clone()))
    layer.stream = NoiseStream.from_seed(1, samples=torch.arange(6))
    with torch.no_grad():
        y = layer.device_output(x, layer.resolve_controls(6))
    xr = x.clone().requires_grad_(True)
    w = layer.weight.detach().clone().requires_grad_(True)
    exact = xr @ w.T
    out = straight_through(exact, y.clone(), w.abs().amax() * xr.abs().amax(-1, keepdim=True))
    (g * out).sum().backward()
    for fused, generic in zip(grads[0][:2], (xr.grad, w.grad), strict=True):
        assert torch.allclose(fused, generic, atol=1e-6, rtol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads, strict=True))
