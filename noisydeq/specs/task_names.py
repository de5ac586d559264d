"""The task names ``load_task`` accepts (:mod:`noisydeq.tasks.registry` maps each to its
loader), checked without torch: ``noisydeq train`` refuses a bad ``--task`` before its
heavy imports."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
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


def refuse_data_dir(data_dir: object, tasks: Iterable[str], whose: str,
                    name: str = "--data-dir") -> None:
    """One line when ``--data-dir`` is given (not None or empty: an empty one names none)
    and no task of ``tasks`` — every task the run reads, ``whose`` says whose ("the
    sweep's") — reads data files: every command refuses it so, as it refuses its other
    options that do not apply. A run with one file task among others takes it. ``name``:
    how the directory arrived (:func:`data_dir_name`)."""
    names = list(dict.fromkeys(tasks))
    if data_dir in (None, "") or not names or set(names) & set(FILE_TASKS):
        return
    listed = ", ".join(f"'{t}'" for t in names)
    what = f"task {listed} reads" if len(names) == 1 else f"tasks {listed} read"
    leave = name.rsplit(": ", 1)[-1]  # a file's field: "FILE: data_dir"
    raise NoisyDEQError(f"{name} {data_dir}: {whose} {what} no data files (only "
                        f"{', '.join(FILE_TASKS)} do); leave {leave} out")


def check_data_dir(path: str | None, name: str = "--data-dir") -> str | None:
    """A ``--data-dir`` that exists (tilde expanded), None when not given or empty (an empty
    one names none, as in :func:`refuse_data_dir`), or one line: every command that takes
    ``--data-dir`` checks it so, before reading or writing anything. ``name``: how the
    directory arrived (:func:`data_dir_name`)."""
    if path is None or str(path) == "":
        return None
    if not isinstance(path, str):  # a file's or --set's value of another type
        raise NoisyDEQError(f"{name} {path!r}: not a directory name (a string)")
    p = Path(path).expanduser()
    if not p.is_dir():
        raise NoisyDEQError(f"{name} {path}: no such directory")
    return str(p)


def check_run_data_dir(data_dir: str | None, tasks: Iterable[str], whose: str,
                       name: str = "data_dir") -> str | None:
    """The one rule for a run's data directory, however it arrives — ``--data-dir``, ``--set
    data_dir=...``, an experiment file's ``data_dir``, a spec given to the Python API: none
    (None or empty), or a directory that exists (:func:`check_data_dir`, returned tilde
    expanded) for a run with a task that reads data files (:func:`refuse_data_dir`); else
    one line led by ``name``."""
    path = check_data_dir(data_dir, name)
    refuse_data_dir(path, tasks, whose, name)
    return path


def one_data_dir(option: str | None, sets: Mapping[str, object],
                 key: str = "data_dir") -> None:
    """Refuse in one line a command given its data directory twice, by ``--data-dir`` and
    by ``--set KEY=...`` (``key``: its place in the spec), with different values: neither
    wins silently. The same directory twice is fine (compared tilde expanded and resolved;
    an empty value names none, as in :func:`check_data_dir`). Every command that takes
    both calls this before it merges them."""
    if option is None or key not in sets:
        return

    def where(value: object) -> object:
        if value is None or value == "":
            return None
        if isinstance(value, str):
            return Path(value).expanduser().resolve()
        return value  # a --set value of another type: never a directory name

    value = sets[key]
    if where(option) != where(value):
        shown = f"'{value}'" if isinstance(value, str) else repr(value)
        raise NoisyDEQError(
            f"--data-dir '{option}' and --set {key}={shown}: two different data "
            f"directories; give one of them (or the same in both)")


def data_dir_name(option: str | None, sets: Mapping[str, object], where: str = "",
                  key: str = "data_dir") -> str:
    """How a command's data directory arrived, to lead its refusal: ``--set data_dir``
    (``key``: its place in the spec) when an assignment gives it, else ``--data-dir`` when
    the option does, else the experiment file's field (``where``: the file)."""
    if key in sets:
        return f"--set {key}"
    if option not in (None, ""):
        return "--data-dir"
    return f"{where}: {key}" if where else key
