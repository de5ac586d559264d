"""The task names ``load_task`` accepts (:mod:`noisydeq.tasks.registry` maps each to its
loader), checked without torch: ``noisydeq train`` refuses a bad ``--task`` before its
heavy imports."""

from __future__ import annotations

from noisydeq.errors import NoisyDEQError
from noisydeq.specs.base import suggest_name

#: every task :func:`noisydeq.tasks.load_task` loads, in the registry's order
TASK_NAMES = ("digits", "regression1d", "mnist", "mnist10k", "cifar10", "prefix_sums",
              "mazes", "matrix_add")


def check_task_name(name: str) -> str:
    """Return ``name`` if it is a known task, else raise one line with a suggestion."""
    if name in TASK_NAMES:
        return name
    raise NoisyDEQError(f"task: {suggest_name('task', name, TASK_NAMES)}")
