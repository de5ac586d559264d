"""Noise primitives against their defining formulas (paper Eq. 3-4, Eq. 8; DESIGN §1)."""

import math

import pytest
import torch

from noisydeq.config import NoiseSpec
from noisydeq.noise import (
    Noise,
    NoiseStream,
    additive,
    db_to_linear,
    derive_seed,
    linear_to_db,
    make_noise,
    measured_snr_db,
    measured_snr_db_per_sample,
    multiplicative,
    paper_literal_snr_db,
)


@pytest.mark.parametrize("width", [8, 32, 128, 467, 1024])
@pytest.mark.parametrize("snr_db", [-10.0, 0.0, 10.0, 20.0, 30.0, 40.0])
def test_realised_snr_equals_nominal_at_every_width(width, snr_db):
    gen = torch.Generator().manual_seed(1234)
    y = torch.randn(4096, width, generator=gen, dtype=torch.float64) * 3.0 + 0.5
    noisy = multiplicative(y, snr_db, NoiseStream.from_seed(7))
    assert abs(measured_snr_db(y, noisy) - snr_db) < 0.2


def test_paper_literal_formula_loses_10log10_width():
    """Eq. 4 taken literally (per-element std ‖y‖/√SNR) realises SNR/d."""
    width, snr_db = 100, 20.0
    gen = torch.Generator().manual_seed(0)
    y = torch.randn(2000, width, generator=gen, dtype=torch.float64)
    eps = y.norm(dim=1, keepdim=True) / math.sqrt(db_to_linear(snr_db))
    literal = y + eps * torch.randn(y.shape, generator=gen, dtype=torch.float64)
    assert abs(measured_snr_db(y, literal) - paper_literal_snr_db(snr_db, width)) < 0.2


def test_per_sample_snr_levels_share_one_batch():
    levels = torch.tensor([0.0, 10.0, 20.0, math.inf], dtype=torch.float64)
    rows = 2000
    snr = levels.repeat_interleave(rows)
    y = torch.randn(len(snr), 64, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    noisy = multiplicative(y, snr, NoiseStream.from_seed(5))
    for k, level in enumerate(levels.tolist()):
        block = slice(k * rows, (k + 1) * rows)
        got = measured_snr_db(y[block], noisy[block])
        if math.isinf(level):
            assert math.isinf(got)
        else:
            assert abs(got - level) < 0.2


def test_block_stream_matches_separate_streams():
    """A batch stacking levels draws exactly what separate per-level runs draw."""
    seeds = [derive_seed(0, "m", s) for s in (0.0, 10.0)]
    y = torch.randn(10, 16, generator=torch.Generator().manual_seed(1))
    snr = torch.tensor([0.0] * 5 + [10.0] * 5)
    batched = multiplicative(y, snr, NoiseStream.from_blocks(seeds, [5, 5]))
    first = multiplicative(y[:5], 0.0, NoiseStream.from_seed(seeds[0]))
    second = multiplicative(y[5:], 10.0, NoiseStream.from_seed(seeds[1]))
    torch.testing.assert_close(batched, torch.cat([first, second]), rtol=0, atol=1e-6)


def test_same_seed_same_noise_and_inf_is_exact():
    y = torch.randn(3, 5)
    a = multiplicative(y, 3.0, NoiseStream.from_seed(9))
    b = multiplicative(y, 3.0, NoiseStream.from_seed(9))
    assert torch.equal(a, b)
    assert torch.equal(multiplicative(y, math.inf, NoiseStream.from_seed(9)), y)


def test_additive_noise_has_amplitude_eta():
    y = torch.zeros(20000, 8, dtype=torch.float64)
    out = additive(y, 0.3, NoiseStream.from_seed(2))
    assert abs(out.std().item() - 0.3) < 0.01
    assert abs(out.mean().item()) < 0.01


def test_db_conversions_and_per_sample_measure():
    assert db_to_linear(10.0) == pytest.approx(10.0)
    assert linear_to_db(100.0) == pytest.approx(20.0)
    assert math.isinf(db_to_linear(math.inf))
    y = torch.ones(2, 4, dtype=torch.float64)
    noisy = y + torch.tensor([[0.1] * 4, [1.0] * 4], dtype=torch.float64)
    torch.testing.assert_close(
        measured_snr_db_per_sample(y, noisy), torch.tensor([20.0, 0.0], dtype=torch.float64)
    )


def test_noise_injector_only_touches_its_site():
    spec = NoiseSpec(site="state", snr_db=0.0)
    noise = Noise(spec, NoiseStream.from_seed(0))
    y = torch.randn(4, 6)
    assert torch.equal(noise.apply("signal", y), y)
    assert not torch.equal(noise.apply("state", y), y)
    assert make_noise(NoiseSpec(site="signal")) is None  # inf SNR injects nothing
    assert make_noise(NoiseSpec(site="signal", snr_db=10.0)) is not None


def test_gradient_flows_through_multiplicative_noise():
    y = torch.randn(4, 6, requires_grad=True)
    multiplicative(y, 5.0, NoiseStream.from_seed(0)).sum().backward()
    assert y.grad is not None and torch.isfinite(y.grad).all()


def test_replay_stream_gives_the_numbers_of_a_fresh_seeded_stream():
    from noisydeq.noise import ReplayStream

    cpu = torch.device("cpu")

    def fresh(shapes):
        s = NoiseStream.from_seed(7)
        return [s.randn(sh, torch.float32, cpu) for sh in shapes]

    replay = ReplayStream(7)
    for shapes in ([(5, 3), (2, 4)], [(5, 3), (2, 4)], [(5, 3), (6, 1)], [(5, 3), (2, 4)]):
        replay.rewind()
        got = [replay.randn(sh, torch.float32, cpu) for sh in shapes]
        for a, b in zip(got, fresh(shapes), strict=True):
            assert torch.equal(a, b)
        got[0].mul_(0.0)  # callers may modify a draw in place: the recording is untouched
    replay.rewind()
    assert torch.equal(replay.randn((5, 3), torch.float32, cpu), fresh([(5, 3)])[0])
