"""The :class:`Task` container and seeded splits (the registry: :mod:`noisydeq.tasks.registry`).

A task is a supervised data set held in memory as tensors plus the loss and metric that
go with it: classification (cross-entropy, accuracy) for the image tasks of the paper's
Sec. 4.1 / App. D.2, regression (MSE) for the 1-D function of App. D.1.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from noisydeq.errors import NoisyDEQError
from noisydeq.store import hash_tensor

TaskKind = Literal["classification", "regression"]


@dataclass(frozen=True)
class Task:
    """A data set in memory: ``x_*`` float (N, in_features), ``y_*`` long (N,) or float (N, out).

    ``notice`` carries a one-line message for the user when the loader had to fall back
    (e.g. ``mnist`` → ``mnist10k``); ``source`` names what was loaded, for provenance.
    """

    name: str
    kind: TaskKind
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    in_features: int
    out_features: int
    seed: int = 0
    source: str = ""
    notice: str | None = None
    extra: dict[str, str] = field(default_factory=dict)
    #: shape of one input (C, H, W) / (C, L) when it is not a flat square image; inputs of
    #: tasks with a label per position are stored with this shape (``in_features`` = C)
    in_shape: tuple[int, ...] | None = None
    #: generator arguments that reproduce the data with ``load_task(name, seed=seed,
    #: **options)`` (recorded with trained models); empty for the fixed data sets
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def metric_name(self) -> str:
        """``accuracy`` (higher is better) or ``mse`` (lower is better)."""
        return "accuracy" if self.kind == "classification" else "mse"

    @property
    def higher_is_better(self) -> bool:
        return self.kind == "classification"

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        """Training loss: cross-entropy on logits (softmax head, Table 1) or MSE (App. D.1)."""
        if self.kind == "classification":
            return F.cross_entropy(output, target)
        return F.mse_loss(output, target)

    def metric(self, output: Tensor, target: Tensor) -> float:
        """Accuracy (fraction of samples correct, see :func:`sample_correct`) or MSE."""
        if self.kind == "classification":
            return float(sample_correct(output, target).double().mean())
        return float(F.mse_loss(output.double(), target.double()))

    def to(self, device: torch.device | str) -> Task:
        """The same task with every tensor on ``device``."""
        return replace(
            self,
            x_train=self.x_train.to(device),
            y_train=self.y_train.to(device),
            x_test=self.x_test.to(device),
            y_test=self.y_test.to(device),
        )

    @cached_property
    def fingerprint(self) -> str:
        """Hash of the data itself (both splits), for cache keys of trained models."""
        h = hashlib.blake2b(digest_size=16)
        h.update(f"{self.name}|{self.kind}|{self.in_features}|{self.out_features}".encode())
        for t in (self.x_train, self.y_train, self.x_test, self.y_test):
            hash_tensor(h, t)
        return h.hexdigest()

    def summary(self) -> str:
        """One line: name, sizes, metric."""
        return (
            f"{self.name}: {len(self.x_train)} train / {len(self.x_test)} test, "
            f"{self.in_features} → {self.out_features}, metric {self.metric_name}"
        )


def sample_correct(output: Tensor, target: Tensor) -> Tensor:
    """(B,) bool: every position of a sample is classified correctly.

    ``output`` holds class scores in dimension 1: (B, K) for one label per sample, or
    (B, K, L) / (B, K, H, W) for a label per position (prefix sums, mazes) with ``target``
    (B, L) / (B, H, W). A per-position sample counts only when *all* its positions are right
    (the paper's fraction of fully correct strings / mazes, App. D.4).
    """
    pred = output.argmax(dim=1)
    return (pred == target).reshape(target.shape[0], -1).all(dim=1)


def stratified_split(labels: Tensor, n_test: int, seed: int) -> tuple[Tensor, Tensor]:
    """Seeded stratified split of ``labels`` into (train_idx, test_idx) with exactly ``n_test``.

    Each class contributes ``n_test · n_c / N`` test samples, rounded by the largest-remainder
    method so the total is exact; within a class the samples are chosen by a permutation
    drawn from ``torch.Generator().manual_seed(seed)``. Indices come back sorted.
    """
    labels = labels.detach().to("cpu").long()
    n = labels.numel()
    if not 0 < n_test < n:
        raise NoisyDEQError(f"split: n_test must be in 1..{n - 1}, got {n_test}")
    classes, counts = torch.unique(labels, return_counts=True)
    quota = counts.double() * n_test / n
    take = quota.floor().long()
    short = n_test - int(take.sum())
    if short > 0:
        order = torch.argsort(quota - take.double(), descending=True, stable=True)
        take[order[:short]] += 1
    g = torch.Generator().manual_seed(int(seed))
    test_parts = []
    for c, k in zip(classes.tolist(), take.tolist(), strict=True):
        idx = torch.nonzero(labels == c, as_tuple=False).flatten()
        perm = idx[torch.randperm(idx.numel(), generator=g)]
        test_parts.append(perm[:k])
    test_idx = torch.sort(torch.cat(test_parts)).values
    mask = torch.ones(n, dtype=torch.bool)
    mask[test_idx] = False
    return torch.nonzero(mask, as_tuple=False).flatten(), test_idx


def random_split(n: int, n_test: int, seed: int) -> tuple[Tensor, Tensor]:
    """Seeded random split of ``range(n)`` into (train_idx, test_idx), indices sorted."""
    g = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(n, generator=g)
    return torch.sort(perm[n_test:]).values, torch.sort(perm[:n_test]).values


def named_data_dir(data_dir: str | os.PathLike | None, env: str, what: str) -> Path | None:
    """The data directory named by ``data_dir`` (``--data-dir``; an empty one names none) or
    else by ``$env``, which must exist (one line naming where it was named and ``what`` data
    it is for); None when neither names one."""
    if data_dir is not None and str(data_dir) != "":
        where, p = "--data-dir", Path(data_dir).expanduser()
    elif os.environ.get(env):
        where, p = env, Path(os.environ[env]).expanduser()
    else:
        return None
    if not p.is_dir():
        raise NoisyDEQError(f"{where}: {what} data directory not found: {p}")
    return p
