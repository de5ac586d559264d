"""The task registry: task names and :func:`load_task`, above the concrete tasks.

Each task module (:mod:`~noisydeq.tasks.digits`, :mod:`~noisydeq.tasks.regression1d`,
:mod:`~noisydeq.tasks.mnist`) builds a :class:`~noisydeq.tasks.base.Task`; this module maps
names to their loaders.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from pathlib import Path

from noisydeq.errors import NoisyDEQError
from noisydeq.tasks.base import Task

Loader = Callable[..., Task]


def _registry() -> dict[str, Loader]:
    from noisydeq.tasks import digits, mnist, regression1d

    return {
        "digits": digits.load,
        "regression1d": regression1d.load,
        "mnist": mnist.load_mnist,
        "mnist10k": mnist.load_mnist10k,
    }


def task_names() -> list[str]:
    """Names accepted by :func:`load_task`."""
    return list(_registry())


def check_task_name(name: str) -> str:
    """Return ``name`` if it is a known task, else raise one line with a suggestion."""
    names = task_names()
    if name in names:
        return name
    close = difflib.get_close_matches(str(name), names, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    raise NoisyDEQError(f"task: unknown task '{name}'{hint} (allowed: {', '.join(names)})")


def load_task(
    name: str,
    data_dir: str | Path | None = None,
    seed: int = 0,
    *,
    download: bool | None = None,
) -> Task:
    """Load a task by name: ``digits`` (default), ``regression1d``, ``mnist``, ``mnist10k``.

    ``seed`` fixes the train/test split (and the sampled points of ``regression1d``).
    ``data_dir`` / ``download`` only matter for the MNIST tasks (see :mod:`noisydeq.tasks.mnist`).
    """
    loader = _registry()[check_task_name(name)]
    if name.startswith("mnist"):
        return loader(data_dir=data_dir, seed=seed, download=download)
    return loader(seed=seed)  # data_dir is ignored: these tasks ship with the package
