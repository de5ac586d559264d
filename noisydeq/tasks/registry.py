"""The task registry: task names and :func:`load_task`, above the concrete tasks.

Each task module (:mod:`~noisydeq.tasks.digits`, :mod:`~noisydeq.tasks.regression1d`,
:mod:`~noisydeq.tasks.mnist`, :mod:`~noisydeq.tasks.cifar10` and the algorithmic tasks)
builds a :class:`~noisydeq.tasks.base.Task`; this module maps names to their loaders.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from noisydeq.errors import NoisyDEQError, did_you_mean
from noisydeq.specs.task_names import (  # noqa: F401 (re-exported)
    FILE_TASKS,
    TASK_NAMES,
    check_task_name,
)
from noisydeq.tasks.base import Task

Loader = Callable[..., Task]


def _registry() -> dict[str, Loader]:
    from noisydeq.tasks import cifar10, digits, matrix_add, mazes, mnist, prefix_sums, regression1d

    return {
        "digits": digits.load,
        "regression1d": regression1d.load,
        "mnist": mnist.load_mnist,
        "mnist10k": mnist.load_mnist10k,
        "cifar10": cifar10.load_cifar10,
        "prefix_sums": prefix_sums.load,
        "mazes": mazes.load,
        "matrix_add": matrix_add.load,
    }


def task_names() -> list[str]:
    """Names accepted by :func:`load_task` (:data:`noisydeq.specs.task_names.TASK_NAMES`, the
    registry's keys)."""
    return list(TASK_NAMES)


def load_task(
    name: str,
    data_dir: str | Path | None = None,
    seed: int = 0,
    *,
    download: bool | None = None,
    **options: Any,
) -> Task:
    """Load a task by name: ``digits`` (default), ``regression1d``, ``mnist``, ``mnist10k``,
    ``cifar10`` (official binary files), or the generated algorithmic tasks ``prefix_sums``,
    ``mazes``, ``matrix_add`` (App. D.4 / E.4).

    ``seed`` fixes the train/test split (and every generated sample). ``data_dir`` /
    ``download`` only matter for the file tasks (see :mod:`noisydeq.tasks.mnist`,
    :mod:`noisydeq.tasks.cifar10`). ``options`` are the generator arguments of the
    algorithmic tasks (sizes, counts; see their modules); other tasks take none.
    """
    loader = _registry()[check_task_name(name)]
    if name in FILE_TASKS:
        if options:
            raise NoisyDEQError(f"task '{name}': takes no options, got {sorted(options)}")
        if name == "cifar10":
            return loader(data_dir=data_dir, seed=seed)
        return loader(data_dir=data_dir, seed=seed, download=download)
    allowed = [p for p in inspect.signature(loader).parameters if p != "seed"]
    unknown = [k for k in options if k not in allowed]
    if unknown:
        hint = did_you_mean(unknown[0], allowed)
        what = f"allowed: {', '.join(allowed)}" if allowed else "it takes no options"
        raise NoisyDEQError(f"task '{name}': unknown option '{unknown[0]}'{hint} ({what})")
    return loader(seed=seed, **options)  # data_dir is ignored: generated or bundled data
