"""The sweep's per-part SNR meter on conv device layers, against a direct computation, and
counter-based device noise on the conv cells (a sample's outputs do not depend on the batch)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from noisydeq import hardware as hw
from noisydeq.config import SolverSpec
from noisydeq.models import build_model
from noisydeq.noise import NoiseStream
from noisydeq.sweep import DeviceMeter

#: conv cells: 1-d (conv1d, biased convolutions), 2-d (residual, weight-normed inner
#: convolutions without bias) and multiscale (strided, several resolutions); their inputs
CELLS = {
    "conv1d": (dict(in_features=2, out_features=2, width=3, weight_norm=False), (10, 2, 11)),
    "residual": (dict(in_features=3, out_features=2, width=4, weight_norm=True), (10, 3, 5, 5)),
    "mdeq": (dict(in_features=64, out_features=3, width=4, scales=2), (10, 64)),
}
FIXED = SolverSpec(name="unroll", max_iter=4, tol=1e-30, stop="abs", window=1)


def _deployed(cell: str, kind: str, seed: int = 0):
    torch.manual_seed(seed)
    kw, shape = CELLS[cell]
    model = build_model(dict(kind=kind, cell=cell, depth=2, matched=False, **kw),
                        **({"solver": FIXED} if kind == "deq" else {})).eval()
    x = torch.rand(shape)
    return hw.get_device("rram").new_chip(3).deploy(model), x


def _direct(layer, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """(signal, static, dynamic, total) per sample from F.conv on the stored maps, float64."""
    fn = F.conv1d if layer.op == "conv1d" else F.conv2d
    x = x.double()
    w = layer.weight.detach().double()
    chip = layer.chip_matrix(layer.native_knobs()[0]).double().reshape(w.shape)
    exact = fn(x, w, None, **layer.conv)
    on_chip = fn(x, chip, None, **layer.conv)
    y = out.double()
    if layer.bias is not None:
        y = y - layer.bias.detach().double().reshape((-1,) + (1,) * (y.ndim - 2))
    return torch.stack([exact.square().flatten(1).sum(1),
                        (on_chip - exact).square().flatten(1).sum(1),
                        (y - on_chip).square().flatten(1).sum(1),
                        (y - exact).square().flatten(1).sum(1)], dim=1)


@pytest.mark.parametrize("cell", list(CELLS))
def test_meter_on_conv_layers_equals_a_direct_computation(cell):
    net, x = _deployed(cell, "ffw")
    layers = hw.device_layers(net)
    convs = {n: layer for n, layer in layers.items() if layer.op != "linear"}
    assert convs
    seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    hooks = [layer.register_forward_hook(
        lambda mod, inp, out, name=name: seen.__setitem__(name, (inp[0].detach().clone(),
                                                                 out.detach().clone())))
        for name, layer in layers.items()]
    hw.set_stream(net, NoiseStream.from_seed(5))
    meter = DeviceMeter(layers, blocks=1, rows=len(x), first_sample=0, total=len(x))
    with torch.no_grad():
        net(x)
    meter.close()
    for h in hooks:
        h.remove()
    powers = meter.per_sample(0)
    assert set(powers) == set(layers)  # conv layers are metered (linear only before)
    for name, layer in convs.items():
        got = torch.tensor(powers[name], dtype=torch.float64)
        want = _direct(layer, *seen[name])
        assert got.shape == (len(x), 4)
        assert (want[:, 1:] > 0).all()  # rram: static and dynamic parts both present
        # the meter removes the bias from the float32 output (as for linear layers): ~1e-7
        torch.testing.assert_close(got, want, rtol=1e-6, atol=0)


@pytest.mark.parametrize("cell", list(CELLS))
def test_conv_cell_rows_on_a_device_do_not_depend_on_the_batch(cell):
    """Every device draw is a function of (seed, chip, layer, step, sample): a DEQ of the conv
    cell run on 4 of its samples gives those samples' outputs of the full batch, and a
    sample's row moves with its index, not its position."""
    net, x = _deployed(cell, "deq")
    idx = torch.tensor([7, 2, 9, 0])
    with torch.no_grad():
        hw.set_stream(net, NoiseStream.from_seed(11, samples=torch.arange(len(x))))
        full = net(x)
        hw.set_stream(net, NoiseStream.from_seed(11, samples=idx))
        part = net(x[idx])
        hw.set_stream(net, NoiseStream.from_seed(11, samples=torch.arange(len(x)) + 1))
        shifted = net(x)
    torch.testing.assert_close(part, full[idx], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(shifted, full, atol=1e-4)  # the draws do follow the index
