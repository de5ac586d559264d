"""``train.spectral_cap``: the DEQ cell's W projected onto ‖W‖₂ ≤ c after every step.

The conv bound is checked against dense operator matrices built by autograd (float64): it
equals the circular convolution's norm on the (H + k − 1)² torus and bounds the zero-padded
one; the cap holds after training steps and makes the cell a contraction."""

import pytest
import torch
from torch.nn import functional as F

from noisydeq.errors import NoisyDEQError
from noisydeq.models import DEQ
from noisydeq.models.conv import ConvDEQ, ConvFFW
from noisydeq.models.spectral_cap import cap_spectral_norm, conv_operator_norm, spectral_norm_of
from noisydeq.specs.family import FamilySpec
from noisydeq.specs.training import TrainSpec
from noisydeq.train_config import spec_dump


def _dense_norm(fn, n):
    """‖A‖₂ of the linear map fn on R^n, A built column by column (float64)."""
    A = torch.autograd.functional.jacobian(fn, torch.zeros(n, dtype=torch.float64))
    return float(torch.linalg.matrix_norm(A, ord=2))


@pytest.mark.parametrize("c, h, k", [(2, 6, 3), (3, 5, 3), (2, 4, 5), (1, 7, 3)])
def test_conv_bound_is_the_torus_norm_and_bounds_zero_padding(c, h, k):
    torch.manual_seed(c * 100 + h * 10 + k)
    w = torch.randn(c, c, k, k, dtype=torch.float64)
    bound = float(conv_operator_norm(w, (h, h)))
    n = h + k - 1  # the torus: circular 'same' convolution on n×n

    def circular(v):
        x = F.pad(v.reshape(1, c, n, n), (k // 2,) * 4, mode="circular")
        return F.conv2d(x, w).flatten()

    def zero_padded(v):
        return F.conv2d(v.reshape(1, c, h, h), w, padding=k // 2).flatten()

    assert bound == pytest.approx(_dense_norm(circular, c * n * n), rel=1e-10)
    assert bound >= _dense_norm(zero_padded, c * h * h) * (1 - 1e-12)


def test_conv_bound_is_close_on_mnist_sized_images():
    """On 28×28 the bound is what it caps: within 1 % of the power-iteration norm."""
    torch.manual_seed(0)
    w = torch.randn(4, 4, 3, 3, dtype=torch.float64)
    v = torch.randn(1, 4, 28, 28, dtype=torch.float64)
    for _ in range(500):
        v = F.conv_transpose2d(F.conv2d(v, w, padding=1), w, padding=1)
        s = v.norm()
        v = v / s
    power = float(s.sqrt())
    bound = float(conv_operator_norm(w, (28, 28)))
    assert power <= bound * (1 + 1e-9)
    assert bound <= 1.01 * power


@pytest.mark.parametrize("weight_norm", [True, False])
def test_cap_rescales_a_conv_cell_and_leaves_a_small_one(weight_norm):
    torch.manual_seed(1)
    model = ConvDEQ(64, 4, 10, weight_norm=weight_norm).double()
    with torch.no_grad():  # make W large
        if weight_norm:
            model.cell.W.parametrizations.weight.original0.mul_(5.0)
        else:
            model.cell.W.weight.mul_(5.0)
    before = spectral_norm_of(model)
    assert before > 0.9
    assert cap_spectral_norm(model, 0.9) == pytest.approx(before)
    assert spectral_norm_of(model) == pytest.approx(0.9, rel=1e-9)
    w = model.cell.W.weight.detach()
    dense = _dense_norm(lambda v: F.conv2d(v.reshape(1, 4, 8, 8), w, padding=1).flatten(),
                        4 * 64)
    assert dense <= 0.9 + 1e-9
    state = {k: v.clone() for k, v in model.state_dict().items()}
    cap_spectral_norm(model, 2.0)  # already below: untouched
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_cap_on_the_mlp_cell_is_the_exact_norm():
    torch.manual_seed(2)
    model = DEQ(10, 6, 3).double()
    with torch.no_grad():
        model.cell.W.weight.mul_(10.0)
    cap_spectral_norm(model, 0.5)
    norm = float(torch.linalg.matrix_norm(model.cell.W.weight.detach(), ord=2))
    assert norm == pytest.approx(0.5)


def test_training_keeps_the_cap_and_the_cell_contracts():
    from noisydeq.tasks import load_task
    from noisydeq.train import train_model

    torch.manual_seed(3)
    model = ConvDEQ(64, 4, 10)
    with torch.no_grad():
        model.cell.W.parametrizations.weight.original0.mul_(4.0)
    spec = TrainSpec.preset("quick", "deq", epochs=1, max_train_samples=256, lr=0.05,
                            spectral_cap=0.8)
    norms = []
    train_model(model, load_task("digits"), spec,
                on_epoch=lambda e, r: norms.append(spectral_norm_of(model)))
    assert norms and norms[0] <= 0.8 * (1 + 1e-6)
    # a contraction: |f(z1) - f(z2)| <= 0.8 |z1 - z2| for any states of one input
    x = load_task("digits").x_test[:16]
    with torch.no_grad():
        xt = model.inject(x)
        z1, z2 = torch.randn_like(xt), torch.randn_like(xt)
        lhs = (model.cell(z1, xt) - model.cell(z2, xt)).flatten(1).norm(dim=1)
        rhs = (z1 - z2).flatten(1).norm(dim=1)
    assert bool((lhs <= 0.8 * rhs * (1 + 1e-5)).all())


def test_bad_settings_are_one_clear_error():
    with pytest.raises(NoisyDEQError, match=r"^TrainSpec: spectral_cap: must be > 0, got 0"):
        TrainSpec(spectral_cap=0.0)  # one line in the project's words, as the CLI's
    with pytest.raises(NoisyDEQError, match="not with a training device"):
        TrainSpec(spectral_cap=0.9, device="rram")
    with pytest.raises(NoisyDEQError, match="only a DEQ"):
        cap_spectral_norm(ConvFFW(64, 4, 1, 10), 0.9)
    with pytest.raises(NoisyDEQError, match="must be > 0"):
        cap_spectral_norm(ConvDEQ(64, 4, 10), -1.0)


def test_unset_keeps_cache_keys_and_ffw_members_skip_it():
    assert "spectral_cap" not in spec_dump(TrainSpec())
    assert spec_dump(TrainSpec(spectral_cap=0.9))["spectral_cap"] == 0.9
    fam = FamilySpec(task="digits", depths=[1], hidden=8, train={"spectral_cap": 0.9})
    assert fam.train_spec("deq").spectral_cap == 0.9
    assert fam.train_spec("ffw").spectral_cap is None
