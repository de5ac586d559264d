"""``prefix_sums``: cumulative parity of bit strings (App. E.4, after Schwarzschild et al.).

Each sample is a string of ``length`` uniformly random bits b_1 … b_L; the label of position i
is the parity of the prefix, p_i = b_1 ⊕ … ⊕ b_i (equivalently (Σ_{j≤i} b_j) mod 2), so a
model must carry information along the whole string. Inputs are float (N, 1, L) with the bits
as 0/1, labels long (N, L); a model outputs (N, 2, L) class scores. The metric is the
fraction of strings whose every bit is right (App. D.4: "fully correct").

Training uses ``length`` = 32 bits; the paper tests 16, 18, 20, 24, 32, 64, 72, 128, 256
and 512 bits (:data:`TEST_LENGTHS`, :meth:`ShiftTask.shifted`). Everything is generated from
the task seed; nothing is downloaded.
"""

from __future__ import annotations

import torch
from torch import Tensor

from noisydeq.errors import NoisyDEQError
from noisydeq.tasks.shift import ShiftTask, check_count, generated_task

TRAIN_LENGTH = 32
TEST_LENGTHS = (16, 18, 20, 24, 32, 64, 72, 128, 256, 512)
N_TRAIN = 10_000
N_TEST = 1_000


def check_length(value: float) -> int:
    """A string length: a whole number of bits ≥ 1."""
    if isinstance(value, bool) or float(value) != int(value) or int(value) < 1:
        raise NoisyDEQError(f"length: must be a whole number of bits >= 1, got {value!r}")
    return int(value)


def random_bits(n: int, length: int, seed: int) -> Tensor:
    """(n, length) long tensor of independent fair bits from a generator seeded by ``seed``."""
    g = torch.Generator().manual_seed(int(seed) % (2**63 - 1))
    return torch.randint(0, 2, (n, length), generator=g)


def prefix_parity(bits: Tensor) -> Tensor:
    """p_i = (Σ_{j≤i} b_j) mod 2 along the last dimension (the cumulative XOR)."""
    return torch.remainder(torch.cumsum(bits.long(), dim=-1), 2)


def make(length: float, n: int, seed: int) -> tuple[Tensor, Tensor]:
    """``n`` strings of ``length`` bits: inputs (n, 1, length) float, labels (n, length) long."""
    bits = random_bits(check_count("n", n), check_length(length), seed)
    return bits.to(torch.float32).unsqueeze(1), prefix_parity(bits)


def load(
    seed: int = 0, length: int = TRAIN_LENGTH, n_train: int = N_TRAIN, n_test: int = N_TEST,
) -> ShiftTask:
    """``n_train`` training and ``n_test`` held-out strings of ``length`` bits (seeded)."""
    length = check_length(length)
    return generated_task(
        "prefix_sums", "classification", make=make, check=check_length, shift_name="length",
        train_shift=length, test_shifts=TEST_LENGTHS, seed=seed, n_train=n_train,
        n_test=n_test, in_features=1, out_features=2,
        source=f"generated: {length}-bit strings, cumulative parity", in_shape=(1, length),
        options={"length": length, "n_train": n_train, "n_test": n_test}, per_position=True,
    )
