"""Noise sites of the cell (paper Eq. 3-4, §3.2, App. E.1): right tensor, realised SNR, seeds."""

import math

import pytest
import torch
from torch import nn

from noisydeq.config import NoiseSpec, SolverSpec
from noisydeq.models import DEQ, FFW, MLPCell
from noisydeq.noise import Noise, NoiseStream, measured_snr_db

SNR_DB = 10.0


class CountingStream(NoiseStream):
    """A seeded stream that counts its Gaussian draws."""

    calls: int = 0

    def randn(self, shape, dtype, device):
        self.calls += 1
        return super().randn(shape, dtype, device)


def noise_at(site: str, seed: int = 5, kind: str = "multiplicative", **kw) -> Noise:
    spec = NoiseSpec(site=site, kind=kind, snr_db=kw.get("snr_db", SNR_DB), eta=kw.get("eta", 0))
    return Noise(spec, CountingStream.from_seed(seed))


def capture_inputs(module: nn.Module, store: list):
    return module.register_forward_hook(lambda m, inp, out: store.append((inp[0].detach(), out)))


def make_cell():
    torch.manual_seed(0)
    return MLPCell(20, 64, "relu").double()


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2000, 20, generator=g, dtype=torch.float64)
    z = torch.tanh(torch.randn(2000, 64, generator=g, dtype=torch.float64))
    return x, z


def test_state_noise_perturbs_z_before_w_at_nominal_snr():
    cell, (x, z) = make_cell(), batch()
    seen: list = []
    capture_inputs(cell.W, seen)
    xt = cell.project(x, noise_at("state"))
    assert torch.equal(xt, cell.project(x))  # input untouched
    out = cell(z, xt, noise_at("state"))
    w_in = seen[-1][0]
    assert abs(measured_snr_db(z, w_in) - SNR_DB) < 0.1
    assert torch.allclose(out, torch.tanh(seen[-1][1] + xt))  # nothing added after W


def test_signal_noise_perturbs_the_preactivation_at_nominal_snr():
    cell, (x, z) = make_cell(), batch()
    seen: list = []
    capture_inputs(cell.W, seen)
    xt = cell.project(x)
    noisy_s = cell.preactivation(z, xt, noise_at("signal"))
    assert torch.equal(seen[-1][0], z)  # W sees the clean state
    clean_s = cell.preactivation(z, xt)
    assert abs(measured_snr_db(clean_s, noisy_s) - SNR_DB) < 0.1
    out = cell(z, xt, noise_at("signal"))
    assert torch.allclose(out, torch.tanh(noisy_s))  # same seed, same draw


def test_input_noise_perturbs_x_before_u_at_nominal_snr():
    cell, (x, z) = make_cell(), batch()
    seen: list = []
    capture_inputs(cell.proj.U, seen)
    cell.project(x, noise_at("input"))
    assert abs(measured_snr_db(x, seen[-1][0]) - SNR_DB) < 0.1
    w_seen: list = []
    capture_inputs(cell.W, w_seen)
    cell(z, cell.project(x), noise_at("input"))
    assert torch.equal(w_seen[-1][0], z)  # the input site leaves z and s alone


def test_additive_signal_noise_has_std_eta():
    cell, (x, z) = make_cell(), batch()
    xt = cell.project(x)
    diff = cell.preactivation(z, xt, noise_at("signal", kind="additive", eta=0.3)) - \
        cell.preactivation(z, xt)
    assert abs(diff.std().item() - 0.3) < 0.005


@pytest.mark.parametrize("site", ["state", "signal"])
def test_deq_draws_fresh_noise_at_every_f_evaluation(site):
    torch.manual_seed(0)
    solver = SolverSpec(name="unroll", max_iter=40, tol=0.05, stop="mean_rel", window=5)
    model = DEQ(20, 64, 4, solver=solver).double()
    x, _ = batch()
    x = x[:64]
    noise = noise_at(site)
    calls: list = []
    capture_inputs(model.cell.W, calls)
    with torch.no_grad():
        out = model(x, noise, return_solution=True)
    assert noise.stream.calls == len(calls) == out.solution.n_iter
    model.train()
    calls.clear()
    noise = noise_at(site)
    model(x, noise)  # + one recorded f call for the gradient (Eq. 5)
    assert noise.stream.calls == len(calls) == model.last_solution.n_iter + 1


def test_deq_signal_snr_measured_inside_the_solve():
    """Hook the cell: each f call's pre-activation has the nominal SNR (per batch)."""
    torch.manual_seed(0)
    model = DEQ(20, 64, 4, solver=SolverSpec(name="unroll", max_iter=6, tol=1e-30,
                                             stop="abs", window=1)).double()
    x, _ = batch()
    x = x[:500]
    noise = noise_at("signal", snr_db=3.0)
    records: list = []
    model.cell.register_forward_hook(
        lambda m, inp, out: records.append((inp[0].detach(), inp[1].detach(), out.detach()))
    )
    with torch.no_grad():
        model(x, noise)
        for z, xt, out in records:
            clean = model.cell.preactivation(z, xt)
            noisy = torch.atanh(out.clamp(-1 + 1e-15, 1 - 1e-15))
            assert abs(measured_snr_db(clean, noisy) - 3.0) < 0.15
    assert len(records) == 6


def test_input_noise_drawn_once_per_forward():
    """Eq. 3 gives ε_x no iteration index: one draw per forward, however many iterations."""
    torch.manual_seed(0)
    model = DEQ(20, 16, 4, solver=SolverSpec(name="unroll", max_iter=12, tol=1e-30,
                                             stop="abs", window=1)).double()
    x, _ = batch()
    noise = noise_at("input")
    with torch.no_grad():
        model(x[:8], noise)
    assert noise.stream.calls == 1


@pytest.mark.parametrize("site", ["input", "state", "signal"])
def test_ffw_noise_at_every_layer(site):
    torch.manual_seed(0)
    model = FFW(20, 16, 5, 4).double()
    x, _ = batch()
    noise = noise_at(site)
    model(x[:8], noise)
    # eq57: z⁰ = 0 so layer 0's state noise is zero-scaled but still drawn
    assert noise.stream.calls == (1 if site == "input" else 5)


@pytest.mark.parametrize("model_cls", ["deq", "ffw"])
def test_same_seed_same_result_different_seed_differs(model_cls):
    torch.manual_seed(0)
    model = (DEQ(20, 16, 4) if model_cls == "deq" else FFW(20, 16, 3, 4)).double()
    x, _ = batch()
    x = x[:16]
    with torch.no_grad():
        a = model(x, noise_at("signal", seed=11))
        b = model(x, noise_at("signal", seed=11))
        c = model(x, noise_at("signal", seed=12))
        clean = model(x)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert not torch.allclose(a, clean)


def test_infinite_snr_is_exactly_clean():
    torch.manual_seed(0)
    model = DEQ(20, 16, 4).double()
    x, _ = batch()
    with torch.no_grad():
        noisy = model(x[:8], noise_at("signal", snr_db=math.inf))
        assert torch.equal(noisy, model(x[:8]))


def test_per_sample_snr_levels_in_one_batch():
    """A (B,) SNR tensor gives each row its own level (batched sweeps)."""
    cell, (x, z) = make_cell(), batch()
    xt = cell.project(x)
    levels = torch.tensor([0.0] * 1000 + [20.0] * 1000, dtype=torch.float64)
    noise = Noise(NoiseSpec(site="signal"), NoiseStream.from_seed(1), snr_db=levels)
    noisy, clean = cell.preactivation(z, xt, noise), cell.preactivation(z, xt)
    assert abs(measured_snr_db(clean[:1000], noisy[:1000]) - 0.0) < 0.15
    assert abs(measured_snr_db(clean[1000:], noisy[1000:]) - 20.0) < 0.15
