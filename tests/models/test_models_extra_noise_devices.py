"""The cells beyond Eq. 57 under model noise (sites, draws, realised SNR) and on devices."""

import pytest
import torch
from torch import nn

from noisydeq import hardware as hw
from noisydeq.config import NoiseSpec, SolverSpec
from noisydeq.models import build_model
from noisydeq.models.wnconv import WeightNorm
from noisydeq.noise import Noise, NoiseStream, measured_snr_db

CELLS = {
    "conv1d": (dict(in_features=1, out_features=2, width=4, weight_norm=False), (6, 1, 12)),
    "residual": (dict(in_features=3, out_features=2, width=4, weight_norm=True), (6, 3, 7, 7)),
    "mlp_stack": (dict(in_features=10, out_features=5, width=8, layers=3), (6, 10)),
    "mdeq": (dict(in_features=64, out_features=10, width=4, scales=3), (6, 64)),
}
#: draws per cell call: ``signal`` one per pre-activation, ``state`` one per hidden vector
#: entering a weight layer (the cell's input z and, in multi-layer cells, the inner h)
SIGNAL_DRAWS = {"conv1d": 1, "residual": 2, "mlp_stack": 3, "mdeq": 6}
STATE_DRAWS = {"conv1d": 1, "residual": 2, "mlp_stack": 3, "mdeq": 1}
FIXED = SolverSpec(name="unroll", max_iter=5, tol=1e-30, stop="abs", window=1)


class CountingStream(NoiseStream):
    def __init__(self, seed):
        super().__init__([seed])
        self.shapes = []

    def randn(self, shape, dtype, device):
        self.shapes.append(tuple(shape))
        return super().randn(shape, dtype, device)


def make(cell, kind="deq", depth=2):
    torch.manual_seed(0)
    kw, shape = CELLS[cell]
    m = build_model(dict(kind=kind, cell=cell, depth=depth, matched=False, **kw),
                    **({"solver": FIXED} if kind == "deq" else {}))
    return m.eval(), torch.rand(shape)


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("kind", ["deq", "ffw"])
def test_noise_sites_draw_where_and_as_often_as_stated(cell, kind):
    m, x = make(cell, kind)
    calls = FIXED.max_iter if kind == "deq" else 2  # cell calls: solver steps / FFW layers
    with torch.no_grad():
        clean = m(x)
        for site, per_call in (("input", 0), ("state", STATE_DRAWS[cell]),
                               ("signal", SIGNAL_DRAWS[cell])):
            stream = CountingStream(7)
            out = m(x, Noise(NoiseSpec(site=site, snr_db=0.0), stream))
            want = 1 if site == "input" else per_call * calls
            assert len(stream.shapes) == want, (site, stream.shapes)
            assert all(s[0] == x.shape[0] for s in stream.shapes)  # batch first
            assert not torch.allclose(out, clean), site


@pytest.mark.parametrize("cell", list(CELLS))
def test_state_noise_has_the_nominal_snr_per_sample(cell):
    m, x = make(cell)
    seen = []
    with torch.no_grad():
        xt = m.inject(x)
        z = torch.tanh(torch.randn_like(m.initial_state(xt)) + 0.3)
        x_big = xt.repeat(300, *([1] * (xt.ndim - 1)))
        z_big = z.repeat(300, *([1] * (z.ndim - 1)))

        class Spy(Noise):
            def apply(self, site, y):
                out = super().apply(site, y)
                if site == "state":
                    seen.append((y, out))
                return out

        m.cell(z_big, x_big, Spy(NoiseSpec(site="state", snr_db=10.0),
                                 NoiseStream.from_seed(3)))
    clean, noisy = seen[0]
    assert abs(measured_snr_db(clean, noisy) - 10.0) < 0.15


def mappable(model):
    return [n for n, mod in model.named_modules() if type(mod) in (nn.Linear, nn.Conv1d,
                                                                   nn.Conv2d)]


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("kind", ["deq", "ffw"])
def test_every_matrix_runs_on_the_device(cell, kind):
    m, x = make(cell, kind)
    layers = mappable(m)
    assert layers
    ideal = hw.get_device("ideal").deploy(m)
    assert sorted(hw.device_layers(ideal)) == sorted(layers)
    with torch.no_grad():
        assert torch.allclose(ideal(x), m(x), atol=1e-5)
    dev = hw.get_device("rram").at_snr(10.0).deploy(m)
    hw.set_stream(dev, NoiseStream.from_seed(0))
    with torch.no_grad():
        out = dev(x)
    assert torch.isfinite(out).all() and not torch.allclose(out, m(x), atol=1e-4)
    # weight norm: the crossbar holds v, the gain g/‖v‖ stays digital next to it
    for name, mod in m.named_modules():
        if isinstance(mod, WeightNorm):
            assert f"{name}.inner" in hw.device_layers(dev)
    # the deployed copy keeps the digital parameters under the same names
    assert set(dev.state_dict()) == set(m.state_dict())
