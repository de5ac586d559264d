"""PGD's random starts are counter-based: a sample's attack is a function of (seed, its
dataset index), not of the batch it is evaluated in or of its position there."""

from __future__ import annotations

import torch

from noisydeq.certify.pgd import pgd_robust
from tests.certify.helpers import small_model


def _setting():
    model = small_model("ffw_relu", width=12)
    g = torch.Generator().manual_seed(3)
    x = torch.rand(300, 16, generator=g, dtype=torch.float64)
    y = model(x).argmax(dim=1)  # every sample clean-correct: only the attack decides
    return model, x, y


def _robust(model, x, y, seed, samples=None):
    # one short step from the random start: the outcome depends on where the start lies
    return pgd_robust(model, x, y, 0.3, steps=1, step=0.02, clip=None, seed=seed,
                      samples=samples)


def test_pgd_outcome_follows_the_sample_not_the_batch():
    model, x, y = _setting()
    whole = _robust(model, x, y, seed=11)
    assert 0.05 < whole.double().mean() < 0.95  # the start matters for this setting
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(1))
    shuffled = _robust(model, x[perm], y[perm], seed=11, samples=perm)
    assert torch.equal(shuffled, whole[perm])
    halves = torch.cat([_robust(model, x[:97], y[:97], 11, torch.arange(97)),
                        _robust(model, x[97:], y[97:], 11, torch.arange(97, len(x)))])
    assert torch.equal(halves, whole)
    assert not torch.equal(_robust(model, x, y, seed=12), whole)  # another seed, other starts
