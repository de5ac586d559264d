"""Machine-readable events: a JSON-lines log of what a command does (``--log-json PATH``).

``noisydeq --log-json PATH COMMAND ...`` (or ``NOISYDEQ_LOG_JSON=PATH``) appends one JSON
object per line to PATH::

    {"event": "start", "command": "sweep", "argv": [...], "version": "0.1.0", ...}
    {"event": "progress", "desc": "sweep", "n": 12, "total": 48, "unit": "cells", ...}
    {"event": "cell", "run": "runs/sweep-...", "key": "...", ...}
    {"event": "end", "command": "sweep", "status": 0, "seconds": 164.2, ...}
    {"event": "error", "command": "sweep", "message": "...", "status": 2, ...}

Every event carries ``ts`` (Unix time, s), ``elapsed`` (s since the invocation started,
start-up included: the ``start`` event's ``elapsed`` is the start-up time) and ``pid``.
``end``/``error`` also carry ``seconds``: the whole invocation, the same clock and the same
value as their ``elapsed``. ``start`` is first and ``end`` (success, ``status`` 0) or
``error`` (one line's message and the exit status; interrupts are errors with status
130/143) is last.
``epoch`` after every training epoch (``model``, ``epoch`` and the epoch record: loss,
metric, learning rate, ...). ``progress`` events come at most every
``NOISYDEQ_PROGRESS_EVERY`` seconds per bar (default 10) and once when a bar closes;
``cell`` when a sweep records a finished cell (with ``values``: model, chip, metric, SNR
and value of each of its rows). With ``--tracker`` the same events also go to an
experiment tracker (:func:`set_sink`, :mod:`noisydeq.trackers`).

Append semantics: the file is opened with ``O_APPEND`` and each event is one ``write`` of a
whole line (:func:`noisydeq.store.append_bytes`), so the lines of concurrent writers
(evaluation worker processes inherit the log through the environment; several commands may
share one file) never interleave within a line on a local file system, and a reader sees
whole lines only, except possibly a last, partial line while a write is in flight or after a
crash (skip a line that does not parse). The log is
never truncated: delete it to start afresh. A log that cannot be opened is one error line
before the command runs; a failed write later is ignored (the command's work matters more).
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

from noisydeq import store
from noisydeq.errors import NoisyDEQError

ENV = "NOISYDEQ_LOG_JSON"
_T0_ENV = "NOISYDEQ_LOG_JSON_T0"

_state: dict[str, Any] = {"path": None, "t0": None, "sink": None}


def open_log(path: str | os.PathLike, source: str = "--log-json",
             t0: float | None = None) -> None:
    """Send events to ``path`` (created if missing, appended to) from now on, in this process
    and in the worker processes it starts; ``source`` (the option or variable that named
    it) is what an error names; ``t0`` (Unix time; default now) is when the invocation
    started, what every ``elapsed`` counts from."""
    path = os.fspath(path)
    try:
        store.append_bytes(path)
    except OSError as err:
        raise NoisyDEQError(f"{source}: cannot append to {path} "
                            f"({err.strerror or err})") from None
    t0 = time.time() if t0 is None else float(t0)
    _state.update(path=path, t0=t0)
    os.environ[ENV] = path
    os.environ[_T0_ENV] = repr(t0)


def env_log() -> str | None:
    """The log ``$NOISYDEQ_LOG_JSON`` names for a command started afresh (``None`` in a
    worker process of a command that logs: it inherits its parent's log and start time)."""
    if os.environ.get(_T0_ENV):
        return None
    return os.environ.get(ENV) or None


def close_log() -> None:
    """Stop sending events (the environment no longer names the log)."""
    _state.update(path=None, t0=None)
    os.environ.pop(ENV, None)
    os.environ.pop(_T0_ENV, None)


def set_sink(sink: Any, t0: float | None = None) -> None:
    """Also hand every event of this process (a dict, as written to the log) to
    ``sink(record)`` — an experiment tracker (:mod:`noisydeq.trackers`); ``None`` stops.
    The sink is not inherited by worker processes. ``t0`` as for :func:`open_log`."""
    _state["sink"] = sink
    if sink is not None and _state["t0"] is None and not os.environ.get(_T0_ENV):
        _state["t0"] = time.time() if t0 is None else float(t0)


def take_sink() -> Any:
    """The tracker sink (or ``None``), no longer handed events."""
    sink, _state["sink"] = _state["sink"], None
    return sink


def active() -> bool:
    """True when events are written (this process or an inherited log) or handed to a
    tracker."""
    return _path() is not None or _state["sink"] is not None


def _path() -> str | None:
    return _state["path"] or os.environ.get(ENV) or None


def since_start(now: float) -> float:
    """Seconds from the invocation's start (what ``elapsed`` counts from) to ``now``."""
    return round(now - _t0(), 3)


def _t0() -> float:
    if _state["t0"] is not None:
        return _state["t0"]
    try:
        return float(os.environ.get(_T0_ENV, ""))
    except ValueError:
        return time.time()


def _clean(value: Any) -> Any:
    """JSON without NaN/inf (strict parsers refuse them): those become strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def emit(event: str, /, *, _now: float | None = None, **fields: Any) -> None:
    """Append one event (a no-op without a log); ``_now`` (Unix time) is its time when the
    caller already read the clock for one of its fields (default: now)."""
    path, sink = _path(), _state["sink"]
    if path is None and sink is None:
        return
    now = time.time() if _now is None else _now
    record = {"event": event, "ts": round(now, 3), "elapsed": since_start(now),
              "pid": os.getpid(), **_clean(fields)}
    if path is not None:
        line = (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
        try:
            store.append_bytes(path, line)
        except OSError:
            pass  # the log is a by-product; the command's work goes on
    if sink is not None:
        try:
            sink(record)
        except Exception as err:  # noqa: BLE001 - a tracker never stops the command
            _state["sink"] = None
            store.warn(f"tracker: stopped logging ({err.__class__.__name__}: {err})")
