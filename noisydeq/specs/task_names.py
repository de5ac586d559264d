"""The task names ``load_task`` accepts (:mod:`noisydeq.tasks.registry` maps each to its
loader), checked without torch: ``noisydeq train`` refuses a bad ``--task`` before its
heavy imports."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from noisydeq.errors import NoisyDEQError
from noisydeq.specs.base import suggest_name

#: every task :func:`noisydeq.tasks.load_task` loads, in the registry's order
TASK_NAMES = ("digits", "regression1d", "mnist", "mnist10k", "cifar10", "prefix_sums",
              "mazes", "matrix_add")
#: the tasks read from files (``data_dir`` / ``download`` matter); the others are generated
#: or ship with a package
FILE_TASKS = ("mnist", "mnist10k", "cifar10")


def check_task_name(name: str) -> str:
    """Return ``name`` if it is a known task, else raise one line with a suggestion."""
    if name in TASK_NAMES:
        return name
    raise NoisyDEQError(f"task: {suggest_name('task', name, TASK_NAMES)}")


def refuse_data_dir(data_dir: object, tasks: Iterable[str], whose: str) -> None:
    """One line when ``--data-dir`` is given (not None or empty: an empty one names none)
    and no task of ``tasks`` — every task the run reads, ``whose`` says whose ("the
    sweep's") — reads data files: every command refuses it so, as it refuses its other
    options that do not apply. A run with one file task among others takes it."""
    names = list(dict.fromkeys(tasks))
    if data_dir in (None, "") or not names or set(names) & set(FILE_TASKS):
        return
    listed = ", ".join(f"'{t}'" for t in names)
    what = f"task {listed} reads" if len(names) == 1 else f"tasks {listed} read"
    raise NoisyDEQError(f"--data-dir {data_dir}: {whose} {what} no data files (only "
                        f"{', '.join(FILE_TASKS)} do); leave --data-dir out")


def check_data_dir(path: str | None) -> str | None:
    """A ``--data-dir`` that exists (tilde expanded), None when not given or empty (an empty
    one names none, as in :func:`refuse_data_dir`), or one line: every command that takes
    ``--data-dir`` checks it so, before reading or writing anything."""
    if path is None or str(path) == "":
        return None
    p = Path(path).expanduser()
    if not p.is_dir():
        raise NoisyDEQError(f"--data-dir {path}: no such directory")
    return str(p)
