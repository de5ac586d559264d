"""Where a sweep's work runs: this machine (``--jobs``) or a Ray cluster (``--backend ray``).

:class:`Backend` is the checked choice of the commands (``--backend local|ray``,
``--address``, ``--jobs``); :func:`connect` joins (or starts) the Ray cluster before anything
is written. Ray is optional (``pip install noisydeq[ray]``) and imported only here and in the
task modules that run on it (:mod:`noisydeq.sweep.ray_cells`,
:mod:`noisydeq.family_tasks`). On Ray, workers compute and return rows and checkpoint bytes;
the driver alone writes the run directory and the caches (:mod:`noisydeq.store`), so a
cluster needs no shared filesystem.

Address forms: ``local`` (default) starts a private single-machine cluster with
``num_cpus`` workers (one per core by default) and a small object store; ``auto`` joins the
cluster started on this machine by ``ray start --head``; ``HOST:PORT`` joins a head node's
GCS port (``ray start --head --port PORT``). An unreachable ``HOST:PORT`` is one line after
at most :data:`CONNECT_TIMEOUT_S` seconds, before anything is written.

Token authentication (Ray 2.60): ``ray start --head`` enables it when a token exists in
``~/.ray/auth_token`` (a local ``ray.init`` creates one), and so does a driver joining with
``auto``; a driver given ``HOST:PORT`` (or ``$RAY_ADDRESS``) never sends a token unless
``RAY_AUTH_MODE=token`` is set (with the head's token in ``~/.ray/auth_token``,
``$RAY_AUTH_TOKEN`` or ``$RAY_AUTH_TOKEN_PATH``). Joining such a cluster without it is one
line naming those variables (:data:`AUTH_HINT`); noisydeq never enables it itself (that
would send this machine's token to whatever address was typed).
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from noisydeq.errors import NoisyDEQError

#: the pinned, tested Ray version (pyproject's ``ray`` extra)
RAY_VERSION = "2.60.0"
INSTALL_HINT = f"pip install 'noisydeq[ray]' (or pip install ray=={RAY_VERSION})"
#: seconds to wait for a head node's port before giving up
CONNECT_TIMEOUT_S = 5.0
#: seconds a trial connection to ``auto`` / ``HOST:PORT`` may take (the whole check of an
#: unreachable address stays under 30 s)
PROBE_TIMEOUT_S = 20.0
#: object store of a cluster started by ``--address local`` (bytes): models, test and
#: training data travel through it once per run
LOCAL_OBJECT_STORE = 512 * 2**20
BACKENDS = ("local", "ray")
AUTH_HINT = ("the cluster requires Ray's token authentication: set RAY_AUTH_MODE=token and "
             "the head node's token (RAY_AUTH_TOKEN, or `ray get-auth-token` there)")
#: what Ray's GCS client logs when the cluster refuses a driver without a valid token
AUTH_FAILURES = ("InvalidAuthToken", "Unauthenticated")
#: retries of a task whose worker process died (Ray's system failures); an exception raised
#: inside a task is deterministic and not retried
MAX_RETRIES = 3

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True)
class Backend:
    """A checked backend choice: ``kind`` local (``--jobs`` processes) or ray, and for ray
    the cluster ``address`` and, for a cluster started here, its ``num_cpus``."""

    kind: str = "local"
    address: str = "local"
    num_cpus: int | None = None
    object_store_memory: int = LOCAL_OBJECT_STORE

    @property
    def ray(self) -> bool:
        return self.kind == "ray"

    @classmethod
    def parse(cls, backend: str | None, address: str | None = None,
              jobs: str | int | None = None) -> Backend:
        """The backend of ``--backend`` / ``--address`` / ``--jobs`` or one clear error:
        an unknown backend, ``--jobs`` with ray, ``--address`` without it, a malformed
        address, Ray not installed."""
        kind = (backend or "local").strip().lower()
        if kind not in BACKENDS:
            raise NoisyDEQError(f"--backend '{backend}': expected one of {', '.join(BACKENDS)}")
        if kind == "local":
            if address is not None:
                raise NoisyDEQError("--address needs --backend ray")
            return cls()
        if jobs is not None:
            raise NoisyDEQError("--jobs sets local processes; with --backend ray the cluster's "
                                "CPUs set the parallelism (drop --jobs)")
        addr = (address or "local").strip()
        if addr not in ("local", "auto"):
            _host_port(addr)
        require_ray()
        return cls("ray", addr)


def _host_port(address: str) -> tuple[str, int]:
    """(host, port) of a ``HOST:PORT`` address, or one error naming the forms."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise NoisyDEQError(f"--address '{address}': expected local, auto or HOST:PORT "
                            "(the head node's port, e.g. 10.0.0.5:6379)")
    return host.strip("[]"), int(port)


def require_ray() -> None:
    """Ray importable, or one line saying how to install it."""
    try:
        import ray  # noqa: F401
    except ImportError:
        raise NoisyDEQError(f"--backend ray needs Ray, which is not installed: {INSTALL_HINT}"
                            ) from None


def connect(backend: Backend) -> bool:
    """Join (or start) ``backend``'s Ray cluster, unless this process already has (False);
    one line and nothing started when it cannot be reached."""
    import ray

    if ray.is_initialized():
        return False
    quiet = {"log_to_driver": False, "logging_level": "error", "configure_logging": False}
    addr = backend.address
    if addr == "local":
        try:
            with _stderr_muted():  # Ray's start-up notices; a failure is raised, not logged
                ray.init(address="local", num_cpus=backend.num_cpus or os.cpu_count() or 1,
                         include_dashboard=False,
                         object_store_memory=backend.object_store_memory, **quiet)
        except Exception as err:  # noqa: BLE001 - any start-up failure: one line
            raise NoisyDEQError(f"--backend ray: cannot start a local Ray cluster "
                                f"({type(err).__name__}: {_first_line(str(err))})") from None
        return True
    if addr != "auto":
        host, port = _host_port(addr)
        try:  # a closed or filtered port: one line now, not Ray's minutes of retries
            socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
        except OSError as err:
            raise NoisyDEQError(f"--address {addr}: no Ray head node answers there "
                                f"({err.strerror or type(err).__name__}); start one with "
                                f"'ray start --head --port {port}'") from None
    _probe(addr)
    try:
        with _stderr_muted():  # Ray's C++ client logs every retry (once a second) there
            ray.init(address=addr, **quiet)
        return True
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise NoisyDEQError(f"--address {addr}: cannot join the Ray cluster "
                            f"({_first_line(str(err)) or type(err).__name__})") from None


def _first_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines and lines[-1].startswith(("ConnectionError", "RuntimeError")) \
        else (lines[0] if lines else "")


_PROBE = ("import sys, ray\n"
          "ray.init(address=sys.argv[1], log_to_driver=False, logging_level='error')\n"
          "ray.shutdown()\n")


def _probe(addr: str) -> None:
    """Join ``addr`` once in a child process, killed after :data:`PROBE_TIMEOUT_S`: a port
    that accepts but never answers as Ray's GCS would hang ``ray.init`` for minutes. The
    child is killed as soon as it logs that the cluster refused it for want of a token
    (Ray would retry that for seconds): one line saying so (:data:`AUTH_HINT`)."""
    import subprocess
    import threading
    import time

    child = subprocess.Popen([sys.executable, "-c", _PROBE, addr], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    assert child.stderr is not None
    def read() -> None:
        for line in child.stderr:  # type: ignore[union-attr]
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + PROBE_TIMEOUT_S
    refused = False
    while child.poll() is None and time.monotonic() < deadline:
        if any(word in line for line in list(lines) for word in AUTH_FAILURES):
            refused = True
            break
        time.sleep(0.05)
    running = child.poll() is None
    if running:
        child.kill()
    child.wait()
    reader.join(timeout=5)
    text = "".join(lines)
    if refused or any(word in text for word in AUTH_FAILURES):
        raise NoisyDEQError(f"--address {addr}: {AUTH_HINT}")
    if running:
        raise NoisyDEQError(f"--address {addr}: no Ray cluster answered within "
                            f"{PROBE_TIMEOUT_S:.0f} s")
    if child.returncode != 0:
        why = _first_line(text) or f"exit status {child.returncode}"
        raise NoisyDEQError(f"--address {addr}: cannot join the Ray cluster ({why})")


@contextlib.contextmanager
def _stderr_muted() -> Iterator[None]:
    """File descriptor 2 points to /dev/null inside (the C++ side writes there directly)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


#: what this worker process unpacked of the run it serves: key -> (run token, value)
_KEPT: dict[str, tuple[str, Any]] = {}


def kept(token: str, key: str, box: list[Any], *, run: bool = False,
         make: Callable[[Any], Any] | None = None) -> Any:
    """The object in ``box`` (its object reference in a list, so Ray passes the reference
    and the worker fetches it once), kept in this worker process for the run ``token``:
    a task of the same run finds it unpacked. ``run``: the run-level object (a new token
    drops what was kept of earlier runs); ``make``: what to keep of the fetched value
    (e.g. a runner built from it; it may refuse the value)."""
    held = _KEPT.get(key)
    if held is not None and held[0] == token:
        return held[1]
    import ray

    value = ray.get(box[0])
    if make is not None:
        value = make(value)
    if run:
        _KEPT.clear()
    _KEPT[key] = (token, value)
    return value


def same_code(driver: str, worker: str) -> None:
    """Refuse a worker whose noisydeq code (fingerprint) is not the driver's, in one line."""
    if driver != worker:
        raise NoisyDEQError(f"the Ray worker on {socket.gethostname()} runs other noisydeq "
                            "code than the driver (install the same version on every node)")


def remote(fn: Callable[..., Any], name: str, gpu: bool = False) -> Any:
    """``fn`` as a Ray task of one CPU (and one GPU with ``gpu``), retried
    :data:`MAX_RETRIES` times when its worker dies, never when it raises.

    Its worker's ``$NOISYDEQ_CACHE`` is this driver's cache root now (``--cache DIR`` or the
    driver's own; an absolute path), set by Ray's ``runtime_env``: a cluster's workers are
    not this process's children (it may have been started before, with another cache), so
    what a task reads or writes there — the code memo of :func:`noisydeq.fingerprint.
    code_fingerprint` — goes where the command's other entries go. A node without that
    directory writes no memo (it never creates a cache)."""
    import ray

    from noisydeq.runtime import ENV_CACHE, cache_root

    env = {"env_vars": {ENV_CACHE: os.path.abspath(cache_root())}}
    return ray.remote(fn).options(num_cpus=1, num_gpus=1 if gpu else 0,
                                  max_retries=MAX_RETRIES, retry_exceptions=False, name=name,
                                  runtime_env=env)


def finished(futures: dict[Any, K], what: Callable[[K], str]) -> Iterator[tuple[K, Any]]:
    """``(key, result)`` of each Ray future in ``futures`` (future → key) as it finishes.

    An exception raised inside a task is one line, ``<what(key)> failed on Ray: …`` (a
    :class:`NoisyDEQError`'s own first line, otherwise its type and first line); workers
    that died more than :data:`MAX_RETRIES` times are one line saying that a re-run
    resumes. Whatever is still queued or running when the caller stops (an error,
    Ctrl-C, a broken loop) is cancelled."""
    import ray
    from ray.exceptions import RayError, RayTaskError

    pending = dict(futures)
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for fut in done:
                key = pending.pop(fut)
                try:
                    result = ray.get(fut)
                except RayTaskError as err:  # raised inside the task: deterministic
                    cause = err.cause if isinstance(err.cause, Exception) else err
                    text = str(cause).strip().splitlines()
                    msg = text[0] if text and isinstance(cause, NoisyDEQError) else (
                        f"{type(cause).__name__}: {text[0] if text else ''}")
                    raise NoisyDEQError(f"{what(key)} failed on Ray: {msg}") from None
                except RayError as err:  # its workers died more than MAX_RETRIES times
                    raise NoisyDEQError(
                        f"{what(key)}: {type(err).__name__} after {MAX_RETRIES} retries "
                        "(run the command again to resume)") from None
                yield key, result
    finally:
        for fut in pending:
            ray.cancel(fut, force=True)


def disconnect() -> None:
    """Leave the Ray cluster this process joined (a cluster it started stops)."""
    import ray

    if ray.is_initialized():
        ray.shutdown()


@contextlib.contextmanager
def session(backend: Backend) -> Iterator[None]:
    """Inside: ``backend``'s Ray cluster joined (or started) when it is Ray — one line and
    nothing started when it cannot be reached — and left at the end if this call joined
    it; nothing at all for the local backend."""
    joined = connect(backend) if backend.ray else False
    try:
        yield
    finally:
        if joined:
            disconnect()
