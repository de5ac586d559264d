"""Delta-orthogonal initialisation of per-position cells (noisydeq.models.orthinit).

The kernel is an orthogonal centre tap and zeros (Xiao et al. 2018, Alg. 2), with and without
weight norm, 1-d and 2-d; the option changes neither shapes nor parameter counts; and it does
what it is for: in a 32-layer tanh conv1d FFW the first layer's gradient is within a few
orders of magnitude of the last's, where PyTorch's default leaves it ~10⁻⁹ of it.
"""

import pytest
import torch
import torch.nn.functional as F

from noisydeq.config import ModelSpec
from noisydeq.errors import NoisyDEQError
from noisydeq.models import build_model
from noisydeq.models.orthinit import delta_orthogonal_, hidden_convolutions
from noisydeq.models.wnconv import WeightNorm, conv


def spec(cell="conv1d", **kw):
    base = dict(kind="ffw", cell=cell, in_features=1, out_features=2, width=8, depth=3,
                kernel_size=3, weight_norm=False, input_act="identity")
    return ModelSpec(**{**base, **kw})


@pytest.mark.parametrize("ndim,weight_norm", [(1, False), (1, True), (2, False), (2, True)])
def test_kernel_is_an_orthogonal_centre_tap(ndim, weight_norm):
    torch.manual_seed(0)
    layer = conv(ndim, 6, 6, 5, weight_norm=weight_norm)
    delta_orthogonal_(layer)
    w = layer.weight.detach()  # the effective weight (g v/‖v‖ under weight norm)
    centre = (slice(None), slice(None)) + (2,) * ndim
    q = w[centre]
    assert torch.allclose(q.T @ q, torch.eye(6), atol=1e-5)
    rest = w.clone()
    rest[centre] = 0
    assert float(rest.abs().max()) == 0.0
    if weight_norm:
        assert isinstance(layer, WeightNorm)
        assert torch.allclose(layer.g, torch.ones(6), atol=1e-5)
    # with zero bias the layer is an isometry of the channels at every position
    x = torch.randn(3, 6, *([7] * ndim))
    with torch.no_grad():
        y = layer(x) - (layer.bias.reshape((1, -1) + (1,) * ndim))
    assert torch.allclose(y.pow(2).sum(1), x.pow(2).sum(1), atol=1e-4)


@pytest.mark.parametrize("cell", ["conv1d", "residual"])
@pytest.mark.parametrize("kind", ["ffw", "deq"])
def test_init_keeps_shapes_and_parameter_counts(cell, kind):
    s = spec(cell, kind=kind, matched=False)
    torch.manual_seed(1)
    a = build_model(s)
    torch.manual_seed(1)
    b = build_model(s.model_copy(update={"init": "delta_orthogonal"}))
    na = {n: p.shape for n, p in a.named_parameters()}
    assert na == {n: p.shape for n, p in b.named_parameters()}
    per_cell = 1 if cell == "conv1d" else 2
    assert len(hidden_convolutions(b)) == per_cell * (3 if kind == "ffw" else 1)
    x = torch.rand(4, 1, 10) if cell == "conv1d" else torch.rand(4, 1, 5, 5)
    b.eval()
    with torch.no_grad():
        assert b(x).shape == (4, 2, *x.shape[2:])
    # only the hidden convolutions changed: projection and head are the default draw's
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    changed = {n for n in pa if not torch.equal(pa[n], pb[n])}
    assert changed and all(".W" in n and n.endswith("weight") for n in changed), changed


def test_default_init_is_left_out_of_the_serialised_spec():
    assert "init" not in spec().model_dump(mode="json")
    assert spec(init="delta_orthogonal").model_dump(mode="json")["init"] == "delta_orthogonal"


def _layer_gradients(init):
    torch.manual_seed(0)
    m = build_model(spec(width=16, depth=32, init=init))
    g = torch.Generator().manual_seed(0)
    bits = torch.randint(0, 2, (64, 32), generator=g)
    y = torch.remainder(torch.cumsum(bits, -1), 2)
    F.cross_entropy(m(bits.float().unsqueeze(1)), y).backward()
    return [float(layer.W.weight.grad.norm()) for layer in m.layers]


def test_delta_orthogonal_keeps_the_first_layers_gradient_alive_at_depth_32():
    default, orth = _layer_gradients("default"), _layer_gradients("delta_orthogonal")
    assert default[0] / default[-1] < 1e-6  # the failure it fixes (measured ~1e-9)
    assert orth[0] / orth[-1] > 1e-3


@pytest.mark.parametrize("bad", [dict(cell="mlp_stack", in_features=8, init="delta_orthogonal"),
                                 dict(init="xavier")])
def test_bad_init_is_one_clear_error(bad):
    with pytest.raises((NoisyDEQError, ValueError), match="init"):
        build_model({**spec().model_dump(mode="json"), **bad})
