"""The task names ``load_task`` accepts (:mod:`noisydeq.tasks.registry` maps each to its
loader), checked without torch: ``noisydeq train`` refuses a bad ``--task`` before its
heavy imports."""

from __future__ import annotations

import difflib

from noisydeq.errors import NoisyDEQError

#: every task :func:`noisydeq.tasks.load_task` loads, in the registry's order
TASK_NAMES = ("digits", "regression1d", "mnist", "mnist10k", "cifar10", "prefix_sums",
              "mazes", "matrix_add")


def check_task_name(name: str) -> str:
    """Return ``name`` if it is a known task, else raise one line with a suggestion."""
    if name in TASK_NAMES:
        return name
    close = difflib.get_close_matches(str(name), TASK_NAMES, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    raise NoisyDEQError(f"task: unknown task '{name}'{hint} (allowed: {', '.join(TASK_NAMES)})")
