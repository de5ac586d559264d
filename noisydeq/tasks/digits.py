"""``digits``: scikit-learn's bundled 8×8 handwritten digits — the default task, fully offline.

1,797 images of 64 pixels with integer intensities 0…16 (scikit-learn's copy of the UCI
"Optical Recognition of Handwritten Digits" test set). Inputs are divided by 16 so they lie in
[0, 1]; the split is stratified by class and seeded: 20 % of the samples (360) are held out
for testing, chosen by :func:`noisydeq.tasks.base.stratified_split` with the task seed.
"""

from __future__ import annotations

import torch

from noisydeq.tasks.base import Task, stratified_split

N_TEST = 360  # 20 % of 1,797, rounded to a whole number per the largest-remainder split
MAX_INTENSITY = 16.0


def load(seed: int = 0) -> Task:
    """The digits task with a seeded stratified 1,437 / 360 split, inputs in [0, 1]."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.as_tensor(data.data, dtype=torch.float32) / MAX_INTENSITY
    y = torch.as_tensor(data.target, dtype=torch.long)
    train_idx, test_idx = stratified_split(y, N_TEST, seed)
    return Task(
        name="digits",
        kind="classification",
        x_train=x[train_idx],
        y_train=y[train_idx],
        x_test=x[test_idx],
        y_test=y[test_idx],
        in_features=x.shape[1],
        out_features=10,
        seed=seed,
        source="sklearn.datasets.load_digits",
    )
