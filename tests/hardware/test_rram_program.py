"""Fast RRAM programming from cached draws == aihwkit's noise model; the shared knob table."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from noisydeq import hardware as hw
from noisydeq.hardware.calibration import KnobTable, bisect_log
from noisydeq.hardware.rram import program_weights
from noisydeq.hardware.rram_program import ChipDraw


@pytest.mark.parametrize("preset", ["rram-wan2022", "rram-wan2022-2days"])
@pytest.mark.parametrize("shape", [(16, 24), (10, 128)])
def test_chip_draw_bit_identical_to_aihwkit_noise_model(preset: str, shape: tuple) -> None:
    spec = hw.get_device(preset).spec
    g = torch.Generator().manual_seed(sum(shape))
    w = torch.randn(*shape, generator=g)
    w = w / w.abs().max()
    draw = ChipDraw(w, spec, seed=77)
    state = torch.random.get_rng_state()
    for s in (0.0, 1e-3, 0.3, 1.0, 7.0, 300.0):  # 300: heavy clamping at g = 0
        ref_prog, ref_t = program_weights(w, spec, s, 77)
        prog, w_t = draw.program(s)
        assert torch.equal(prog, ref_prog) and torch.equal(w_t, ref_t), s
    assert torch.equal(torch.random.get_rng_state(), state)  # caller's RNG untouched


def test_layer_chips_use_the_draw_and_stay_per_chip() -> None:
    torch.manual_seed(3)
    lin = nn.Linear(12, 9, bias=False)
    dev = hw.get_device("rram")
    a, b = dev.new_chip(1).deploy(lin), dev.new_chip(2).deploy(lin)
    w_norm = lin.weight.detach() / lin.weight.detach().abs().max()
    for s in (0.5, 2.0):
        _, ref_t = program_weights(w_norm, a.spec, s, a.static_seed)
        assert torch.equal(a.chip(s)[0], ref_t)
        assert not torch.equal(b.chip(s)[0], ref_t)


def test_knob_table_hits_targets_and_reuses_measurements() -> None:
    calls: list[float] = []

    def snr_of(s: float) -> float:  # noise floor + quantisation ceiling (RRAM-like), monotone
        calls.append(s)
        return -10 * math.log10(0.01 * s**2 + 10 ** (-3.5))

    table = KnobTable(snr_of, 1e-4, 1e3, increasing=False, tol_db=0.05)
    targets = [float(t) for t in range(0, 31)]
    for t in targets:
        s = table.knob_for(t)
        assert abs(table.measured[s] - t) <= 0.05  # the returned knob was measured
    n_table = table.probes
    assert n_table == len(calls) == len(set(calls))  # every knob measured once (memo)
    assert all(abs(snr_of(table.knob_for(t)) - t) <= 0.05 for t in targets)
    calls.clear()
    for t in targets:
        bisect_log(snr_of, t, 1e-4, 1e3, increasing=False, tol_db=0.05)
    assert n_table < 0.7 * len(calls)  # the table saves measurements vs independent searches
    assert table.knob_for(40.0) == pytest.approx(1e-4)  # unreachable: clamped to the bracket end


def test_chips_of_earlier_weights_are_dropped_and_the_chip_is_unchanged() -> None:
    """Training changes the weights every step: the layer keeps the chips of the current
    weights only (the cache used to hold up to 256 MiB of dead chips per layer), and the chip
    it programs equals a fresh layer's on the same weights."""
    torch.manual_seed(5)
    dev = hw.get_device("rram")
    layer = dev.deploy(nn.Linear(12, 9))
    for _ in range(5):
        with torch.no_grad():
            layer.weight.mul_(0.99)
        for s in (0.5, 1.0):
            layer.chip(s)
    assert len(layer._chips) == 2
    twin = nn.Linear(12, 9)
    twin.weight.data.copy_(layer.weight.detach())
    fresh = dev.deploy(twin)
    for s in (0.5, 1.0):
        (w_a, alpha_a), (w_b, alpha_b) = layer.chip(s), fresh.chip(s)
        assert torch.equal(w_a, w_b) and alpha_a == alpha_b


def test_a_large_layer_keeps_its_read_weights_alone_with_the_same_chip(monkeypatch) -> None:
    """A chip keeps W_prog and W_t in one tensor, except where 8 such pairs would not fit in
    the cache's budget: then W_t is kept alone (the memory of before). Either way the chip
    and the read are the same."""
    import noisydeq.hardware.rram as rram
    from noisydeq.noise import NoiseStream

    torch.manual_seed(6)
    lin = nn.Linear(20, 16)
    x = torch.rand(32, 20) * 2 - 1
    dev = hw.get_device("rram")
    outs = []
    for budget in (rram.CHIP_CACHE_BYTES, 1):
        monkeypatch.setattr(rram, "CHIP_CACHE_BYTES", budget)
        layer = dev.deploy(lin)
        hw.set_stream(layer, NoiseStream.from_seed(3))
        w_t, alpha = layer.chip(1.0)
        held = w_t.untyped_storage().nbytes()
        assert held == (2 if budget > 1 else 1) * w_t.numel() * w_t.element_size()
        with torch.no_grad():
            outs.append((w_t, alpha, layer(x)))
    (w_a, alpha_a, y_a), (w_b, alpha_b, y_b) = outs
    assert torch.equal(w_a, w_b) and alpha_a == alpha_b and torch.equal(y_a, y_b)
