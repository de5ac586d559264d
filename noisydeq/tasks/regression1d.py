"""``regression1d``: the paper's 1-D regression target (App. D.1).

y = 2 (exp(−x² / (2σ²)) − 0.5) with σ = 0.25, for 10,000 points x drawn uniformly from
[−1, 1] with the task seed. 2,000 of them (a seeded random 20 %) are held out for testing.
Targets have shape (N, 1); the metric is the mean squared error.
"""

from __future__ import annotations

import torch
from torch import Tensor

from noisydeq.tasks.base import Task, random_split

SIGMA = 0.25
N_POINTS = 10_000
N_TEST = 2_000


def target(x: Tensor, sigma: float = SIGMA) -> Tensor:
    """The App. D.1 function y = 2 (exp(−x²/(2σ²)) − 0.5)."""
    return 2.0 * (torch.exp(-x.pow(2) / (2.0 * sigma**2)) - 0.5)


def load(seed: int = 0) -> Task:
    """10,000 seeded points in [−1, 1] and their targets, split 8,000 / 2,000."""
    g = torch.Generator().manual_seed(int(seed))
    x = torch.rand((N_POINTS, 1), generator=g, dtype=torch.float32) * 2.0 - 1.0
    y = target(x)
    train_idx, test_idx = random_split(N_POINTS, N_TEST, seed + 1)
    return Task(
        name="regression1d",
        kind="regression",
        x_train=x[train_idx],
        y_train=y[train_idx],
        x_test=x[test_idx],
        y_test=y[test_idx],
        in_features=1,
        out_features=1,
        seed=seed,
        source="generated (paper App. D.1, sigma=0.25)",
    )
