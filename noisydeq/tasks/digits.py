"""``digits``: scikit-learn's bundled 8×8 handwritten digits — the default task, fully offline.

1,797 images of 64 pixels with integer intensities 0…16 (scikit-learn's copy of the UCI
"Optical Recognition of Handwritten Digits" test set). Inputs are divided by 16 so they lie in
[0, 1]; the split is stratified by class and seeded: 20 % of the samples (360) are held out
for testing, chosen by :func:`noisydeq.tasks.base.stratified_split` with the task seed.

The bundled file (``sklearn/datasets/data/digits.csv.gz``: 64 pixels and the label per row)
is read directly, as ``load_digits`` reads it: importing ``sklearn.datasets`` pulls in SciPy
and took 0.8 of the 0.85 s this task needed to load (a tenth of a warm default sweep).
``load_digits`` is the fallback when the file is not where scikit-learn keeps it.
"""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np
import torch

from noisydeq.tasks.base import Task, stratified_split

N_TEST = 360  # 20 % of 1,797, rounded to a whole number per the largest-remainder split
MAX_INTENSITY = 16.0


def bundled_file() -> Path | None:
    """scikit-learn's ``digits.csv.gz``, located without importing scikit-learn."""
    spec = importlib.util.find_spec("sklearn")
    for root in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(root) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            return path
    return None


def read_digits() -> tuple[np.ndarray, np.ndarray]:
    """(pixels (1797, 64) float, labels (1797,) int) of scikit-learn's bundled digits."""
    path = bundled_file()
    if path is None:
        from sklearn.datasets import load_digits

        data = load_digits()
        return data.data, data.target
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",")
    return table[:, :-1], table[:, -1].astype(int)


def load(seed: int = 0) -> Task:
    """The digits task with a seeded stratified 1,437 / 360 split, inputs in [0, 1]."""
    pixels, labels = read_digits()
    x = torch.as_tensor(pixels, dtype=torch.float32) / MAX_INTENSITY
    y = torch.as_tensor(labels, dtype=torch.long)
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
