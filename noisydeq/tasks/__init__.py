"""Tasks (data sets in memory): ``digits`` (default), ``regression1d``, ``mnist``, ``mnist10k``,
``cifar10`` and the generated algorithmic tasks ``prefix_sums``, ``mazes``, ``matrix_add``.

``load_task(name, data_dir=None, seed=0) -> Task``; see :mod:`noisydeq.tasks.registry`
and :mod:`noisydeq.tasks.base`.
"""

from noisydeq.tasks.base import Task
from noisydeq.tasks.registry import check_task_name, load_task, task_names

__all__ = ["Task", "check_task_name", "load_task", "task_names"]
