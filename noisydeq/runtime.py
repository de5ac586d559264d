"""Run-time choices shared by the commands: torch device, thread counts, sweep processes.

torch is imported by the functions that need it, so a command can check its options
(threads, jobs) before paying for the import.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from noisydeq.errors import NoisyDEQError

if TYPE_CHECKING:  # pragma: no cover
    import torch


def resolve_torch_device(name: str) -> torch.device:
    """A torch device from ``--torch-device`` (``cpu``, ``cuda``, ``cuda:1``, ...).

    An unparsable name or CUDA on a machine without it is one clear error.
    """
    import torch

    try:
        dev = torch.device(name)
    except RuntimeError:
        raise NoisyDEQError(
            f"--torch-device '{name}': not a torch device (e.g. cpu, cuda, cuda:0)"
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise NoisyDEQError(f"--torch-device '{name}': CUDA is not available on this machine")
    return dev


#: environment variable naming the on-disk cache (see :func:`cache_root`)
ENV_CACHE = "NOISYDEQ_CACHE"

#: the cache root ``--cache DIR`` chose for this process (:func:`cache_at`); None: none given
_chosen: Path | None = None


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The on-disk cache (models, calibrations, programmed chips, figures, code memo):
    ``cache_dir``, else the one ``--cache DIR`` chose (:func:`cache_at`), else
    ``$NOISYDEQ_CACHE``, else the user cache dir."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if _chosen is not None:
        return _chosen
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE]).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("noisydeq"))


@contextlib.contextmanager
def cache_at(cache_dir: str | os.PathLike) -> Iterator[Path]:
    """Inside ``with``, ``cache_dir`` is the cache root of this process — every kind
    :func:`cache_root` serves: models, calibrations, chips, figures, code memo — and of
    the processes it starts (spawned sweep workers read ``$NOISYDEQ_CACHE``, set to it as
    an absolute path); both are restored after. What ``--cache DIR`` does
    (:func:`noisydeq.commands.cache_option`). Only the root moves: no cache key names it."""
    global _chosen
    root = Path(cache_dir).expanduser()
    before, env = _chosen, os.environ.get(ENV_CACHE)
    _chosen = root
    os.environ[ENV_CACHE] = os.path.abspath(root)
    try:
        yield root
    finally:
        _chosen = before
        if env is None:
            os.environ.pop(ENV_CACHE, None)
        else:
            os.environ[ENV_CACHE] = env


def check_cache(cache_dir: str | os.PathLike | None = None, *, reading: bool = False) -> Path:
    """:func:`cache_root`, refused in one line naming where it came from (``--cache``,
    ``$NOISYDEQ_CACHE`` or the user cache dir) when it is a file, lies below one or cannot
    be created or written (:func:`noisydeq.store.check_out_dir`): a command checks it before
    it writes anything — else the first model or lock file failed after the run directory
    was made, in a line naming neither the cache nor the variable. ``reading``: an existing
    directory passes even when it cannot be written (a read-only cache that may hold all a
    command needs: what it lacks is refused where it would be written, naming the entry)."""
    from noisydeq.store import check_out_dir

    root = cache_root(cache_dir)
    if not (reading and root.is_dir()):
        check_out_dir(root, cache_source(cache_dir))
    return root


def cache_source(cache_dir: str | os.PathLike | None = None) -> str:
    """Where :func:`cache_root` came from, as a one-line refusal names it: ``--cache``,
    ``$NOISYDEQ_CACHE`` or ``cache`` (the user cache dir)."""
    return ("--cache" if cache_dir is not None or _chosen is not None
            else f"${ENV_CACHE}" if os.environ.get(ENV_CACHE) else "cache")


def read_only_cache(cache_dir: str | os.PathLike | None = None) -> bool:
    """Whether the cache (:func:`cache_root`) is an existing directory this process cannot
    write in (:data:`noisydeq.store.NOT_WRITABLE`: a read-only mount, a colleague's
    directory without write permission). Writing is tried, not predicted
    (:func:`noisydeq.store.try_writing`: ``os.access`` says yes to root everywhere). A
    command that writes into the cache then runs only when the cache holds every entry it
    needs, checked before it writes anything (:func:`cache_lacks` names the first missing
    one); what it writes goes to its own run directory."""
    from noisydeq.store import NOT_WRITABLE, try_writing

    root = cache_root(cache_dir)
    if not root.is_dir():
        return False
    try:
        try_writing(root)
    except OSError as err:
        return err.errno in NOT_WRITABLE
    return False


def cache_lacks(kind: str, what: str, path: str | os.PathLike,
                cache_dir: str | os.PathLike | None = None) -> NoisyDEQError:
    """The one line refusing a read-only cache (:func:`read_only_cache`; ``cache_dir`` as
    :func:`cache_root` takes it) that lacks an entry a command needs: ``kind`` (model,
    calibration, programmed chips), ``what`` it is of and the entry's ``path`` (its key),
    before the command wrote anything."""
    root = cache_root(cache_dir)
    where = Path(path)
    try:
        where = where.relative_to(root)
    except ValueError:
        pass
    return NoisyDEQError(
        f"{cache_source(cache_dir)} {root}: read-only, and it lacks the {kind} entry of {what} "
        f"({where}); nothing was written: run the command once with a writable cache "
        "(--cache DIR) to make it")


#: environment variable with the torch thread counts of the commands (see :func:`thread_plan`)
ENV_THREADS = "NOISYDEQ_THREADS"


#: torch threads per process of ``--threads auto`` in training and evaluation
AUTO_THREADS = 1


#: environment variable with the sweep's evaluation process count (see :func:`job_count`)
ENV_JOBS = "NOISYDEQ_JOBS"


def job_count(text: str | int | None = None) -> int:
    """Sweep evaluation processes from ``--jobs`` / ``$NOISYDEQ_JOBS``: ``auto`` (default)
    is one per CPU core, else a positive integer (see :func:`noisydeq.sweep.resolve_jobs`)."""
    value = text if text is not None else os.environ.get(ENV_JOBS, "auto")
    value = str(value).strip().lower()
    if value in ("", "auto"):
        return os.cpu_count() or 1
    if not value.isdigit() or int(value) < 1:
        raise NoisyDEQError(f"{_source('jobs', ENV_JOBS, text)} '{value}': expected auto or a "
                            "positive integer")
    return int(value)


def thread_plan(text: str | int | None = None) -> tuple[int | None, int | None]:
    """(training, evaluation) torch thread counts from ``--threads`` / ``$NOISYDEQ_THREADS``.

    ``N`` uses N threads in both phases, ``T,E`` T for training and E for evaluation, and
    ``auto`` (the default) one thread in both: processes (``--jobs``, Ray workers) are the
    parallelism. Measured on the 2-core box (default sweep's family, digits, fresh cache):
    quiet, 7.3 s with 1 thread vs 5.9 s with 2; beside other jobs (load 11-16), 64-85 s wall
    / 14 CPU s with 1 thread vs 768 s wall / 195 CPU s with 2 — a second thread spin-waits
    on a busy core (``benchmarks/RESULTS.md``, thread rule). The count also changes
    floating-point rounding (parallel reductions), so trained weights depend on it: it is
    a fixed choice, never derived from the load or the core count, and it is part of a
    trained model's cache key (:func:`noisydeq.train_config.run_config`). ``None`` in the
    result = keep torch's current count.
    """
    given = text
    text = text if text is not None else os.environ.get(ENV_THREADS, "auto")
    text = str(text).strip().lower()
    if text in ("", "auto"):
        return AUTO_THREADS, AUTO_THREADS
    parts = text.split(",")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or any(v < 1 for v in values):
        raise NoisyDEQError(
            f"{_source('threads', ENV_THREADS, given)} '{text}': expected auto, N or TRAIN,EVAL "
            "with positive integers (e.g. 2 or 1,2)"
        )
    return values[0], values[-1]


def _source(option: str, env: str, given: object) -> str:
    """What a bad value came from, for its one line: the option's name, or ``$ENV`` when the
    command line gave none (a user who typed no ``--threads`` looks for the variable)."""
    return f"--{option}" if given is not None else f"${env}"


class num_threads:
    """Context manager: torch's intra-op thread count set to ``n`` inside, restored after.

    ``None`` leaves the count unchanged.
    """

    def __init__(self, n: int | None) -> None:
        self.n = n
        self.before: int | None = None

    def __enter__(self) -> num_threads:
        import torch

        if self.n is not None:
            self.before = torch.get_num_threads()
            torch.set_num_threads(self.n)
        return self

    def __exit__(self, *exc: object) -> None:
        import torch

        if self.before is not None:
            torch.set_num_threads(self.before)
