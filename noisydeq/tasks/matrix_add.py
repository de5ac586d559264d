"""``matrix_add``: the sum of two random matrices (paper App. E.4, "Arithmetic Addition").

Each sample is a pair of ``side``×``side`` matrices (20×20 in the paper) with independent
entries uniform in (−s, s); the input is both matrices flattened and concatenated (800
features), the target their sum flattened (400 values), the metric the mean squared error.
Training uses scale s = 1; the paper tests s from 0.1 to 500 (:data:`TEST_SCALES`), a shift
of the input distribution (``ShiftTask.shifted(s)``). The paper's data set has 60,000 pairs
(default here: 50,000 train + 10,000 test). Targets are the float32 sums of the float32
entries (correctly rounded). Generated from the task seed; nothing downloaded.
"""

from __future__ import annotations

import torch
from torch import Tensor

from noisydeq.tasks.shift import (
    ShiftTask,
    check_count,
    check_positive_number,
    generated_task,
)

SIDE = 20
TRAIN_SCALE = 1.0
TEST_SCALES = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 50.0, 100.0, 500.0)
N_TRAIN = 50_000
N_TEST = 10_000


def check_scale(value: float) -> float:
    """The half-width s of the entry distribution U(−s, s): a finite number > 0."""
    return check_positive_number("scale", value)


def make_pairs(scale: float, n: int, seed: int, side: int = SIDE) -> tuple[Tensor, Tensor]:
    """``n`` pairs: inputs (n, 2·side²) = [A, B] flattened, targets (n, side²) = A + B."""
    scale, n = check_scale(scale), check_count("n", n)
    g = torch.Generator().manual_seed(int(seed) % (2**63 - 1))
    ab = (torch.rand((n, 2, side * side), generator=g) * 2.0 - 1.0) * scale
    return ab.reshape(n, -1), ab[:, 0] + ab[:, 1]


def load(
    seed: int = 0, scale: float = TRAIN_SCALE, n_train: int = N_TRAIN, n_test: int = N_TEST,
    side: int = SIDE,
) -> ShiftTask:
    """``n_train`` training and ``n_test`` held-out pairs at ``scale`` (seeded)."""
    scale = check_scale(scale)
    check_count("side", side)

    def make(s: float, n: int, sd: int) -> tuple[Tensor, Tensor]:
        return make_pairs(s, n, sd, side)

    return generated_task(
        "matrix_add", "regression", make=make, check=check_scale, shift_name="scale",
        train_shift=scale, test_shifts=TEST_SCALES, seed=seed, n_train=n_train,
        n_test=n_test, in_features=2 * side * side, out_features=side * side,
        source=f"generated: pairs of {side}x{side} matrices, entries U(-{scale:g}, {scale:g})",
        options={"scale": scale, "n_train": n_train, "n_test": n_test, "side": side},
    )
