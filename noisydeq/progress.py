"""Progress for humans and for log files.

On a terminal, :func:`progress` is a tqdm bar. Anywhere else (CI, ``nohup``, Slurm, a pipe)
carriage returns and ANSI codes garble the log, so progress is plain lines instead: one line
at most every ``every_s`` seconds (default 10) while work goes on, and one closing line for
work that printed anything, e.g. ::

    noisydeq: sweep 12/48 cells (25%), 0:41 elapsed, ~2:03 left
    noisydeq: sweep 48/48 cells in 2:44

A caller whose items cost unequally may give the time left itself (:func:`set_time_left`,
e.g. a :class:`TimeLeft` that learns what its units cost; until it can: ``, estimating time
left``).

Both kinds take the same calls (``update``, ``set_postfix``, ``set_postfix_str``, ``close``,
iteration over an iterable, ``with``), so callers do not care which one they hold.
``NOISYDEQ_PROGRESS=bar|lines`` overrides the terminal check and
``NOISYDEQ_PROGRESS_EVERY=S`` sets the seconds between lines. With ``--log-json`` every bar
also sends JSON ``progress`` events (:mod:`noisydeq.events`); :func:`heartbeat` gives work
without a count (one long computation) a line every ``every_s`` seconds.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from typing import Any, TextIO

#: seconds between two plain progress lines
EVERY_S = 10.0

#: when the last progress line was printed (monotonic s): a heartbeat stays silent meanwhile
_LAST_LINE = [0.0]

#: the running command's clock and the moment it started (set by the outermost
#: :class:`heartbeat`): every line's ``elapsed`` counts from there, so a heartbeat line and
#: a bar's line printed at the same moment say the same time; None outside a command
_ORIGIN: list[tuple[Callable[[], float], float] | None] = [None]

#: the line-mode bars not yet closed, newest last (weak: an abandoned bar is forgotten): a
#: heartbeat lets the newest one speak
_OPEN: list[weakref.ref[LineProgress]] = []


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    return f"{h}:{rem // 60:02d}:{rem % 60:02d}" if h else f"{rem // 60}:{rem % 60:02d}"


class LineProgress:
    """A progress report written as whole lines (see the module docstring)."""

    def __init__(
        self, iterable: Iterable[Any] | None = None, total: int | None = None, desc: str = "",
        unit: str = "it", every_s: float = EVERY_S, stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic, initial: int = 0,
    ) -> None:
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total, self.desc, self.unit = total, desc, unit
        self.every_s, self.stream, self.clock = every_s, stream, clock
        self.n = self.start_n = initial  # work found done (a resumed sweep) is not a rate
        self.t0 = self.last = clock()
        #: where ``elapsed`` counts from: the command's start when a heartbeat on the same
        #: clock runs (one clock for all its lines), else this bar's; rates use ``t0``
        origin = _ORIGIN[0]
        self.origin = origin[1] if origin is not None and origin[0] is clock else self.t0
        self.postfix = ""
        self.printed = self.closed = False
        #: the seconds left at a moment, when the caller knows better than the count
        #: (:func:`set_time_left`; None from it: not yet known); None: from the count
        self.left: Callable[[float], float | None] | None = None
        _OPEN.append(weakref.ref(self))

    # tqdm's calls ------------------------------------------------------------------
    def update(self, n: int = 1) -> None:
        self.n += n
        if self.clock() - self.last >= self.every_s:
            if self.total and self.n >= self.total:
                # done: the closing line says so, with its time ("2/2 models (100%), ~0:00
                # left" printed just before "2/2 models in 2:12" said nothing more)
                self.printed = True
            else:
                self._line(final=False)

    def set_postfix(self, refresh: bool = True, **values: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def set_postfix_str(self, text: str = "", refresh: bool = True) -> None:
        self.postfix = text

    def close(self) -> None:
        if not self.closed and self.printed:
            self._line(final=True)
        self.closed = True
        _OPEN[:] = [r for r in _OPEN if r() not in (None, self)]

    def __iter__(self) -> Iterator[Any]:
        for item in self.iterable or ():
            yield item
            self.update(1)
        self.close()

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------
    def _line(self, final: bool) -> None:
        now = self.clock()
        elapsed = now - self.t0  # this count's time (its rate)
        of = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        text = f"noisydeq: {self.desc} {of} {self.unit}"
        if final:
            text += f" in {_clock(elapsed)}"  # how long the count took ...
            if _clock(now - self.origin) != _clock(elapsed):  # ... and the command's clock
                text += f", {_clock(now - self.origin)} elapsed"
        else:
            if self.total:
                text += f" ({100 * self.n / self.total:.0f}%)"
            text += f", {_clock(now - self.origin)} elapsed"
            if self.left is None:
                done, total = self.n - self.start_n, (self.total or 0) - self.start_n
                if total and done > 0 and elapsed > 0:
                    left = (total - done) * elapsed / done
                    text += f", ~{_clock(left)} left"
            else:
                seconds = self.left(now)
                text += (", estimating time left" if seconds is None
                         else f", ~{_clock(seconds)} left")
        if self.postfix:
            text += f"; {self.postfix}"
        print(text, file=self.stream or sys.stderr, flush=True)
        self.printed, self.last = True, now
        _LAST_LINE[0] = now


def set_time_left(bar: Any, left: Callable[[float], float | None]) -> None:
    """Let ``left(now)`` give ``bar``'s time left (seconds; None: ``estimating time left``)
    instead of its count's rate, for counted items of unequal cost (a sweep's cells). A
    tqdm bar keeps its own estimate (a no-op)."""
    inner = getattr(bar, "_bar", bar)  # an EventProgress passes it to its bar
    if isinstance(inner, LineProgress):
        inner.left = left


class TimeLeft:
    """The time left of work made of units of unequal cost (a sweep's (model, chip) pairs),
    from a cost model learned while the work runs.

    Each unit has a kind, a size and a share (the part of it still to do: a resumed pair
    that has some cells already). Its predicted cost is what finished units of the same
    kind and size took (:meth:`spend` gives the compute seconds measured where each part
    ran; a unit's are scaled to the whole unit by its share); a size not yet seen is
    interpolated by ``seconds = c_kind * size ** alpha``, the factor per kind (the mean of
    the kinds seen for a kind not yet seen) and the exponent fitted in logs within kinds
    over the sizes seen, drawn towards 1 (cost in proportion to size: a layer's work is
    its weights) by a prior worth two sizes a factor 2 apart. Fitted alone, the first two
    sizes to finish gave an exponent of 0.13 where the sizes cost 12.5 and 13 s (the
    largest models first), and the smaller models were predicted at up to 3.5x their cost.

    The pace is measured where the compute runs: a unit's parts (a pair's cells) run one
    after another in one process, so the seconds of each part after a unit's first over
    the wall time since the part before it are what a process gets done per second (the
    machine's load in it, start-up left out). The time left is the predicted cost still to
    do over the pace of ``workers`` processes, at least the largest unit left (one process
    alone does it). A unit under way counts its cost less what it has spent and what its
    process did since its last part at that pace; the units not yet reported are taken,
    largest first as they are handed out, by the processes freed when the last
    ``workers`` units finished (those not busy with a reported unit), and count less what
    was done since. Without parts after a first (units of one part each), the pace is the
    predicted cost of the units finished since the first one finished over the wall time
    since then.

    ``self(now)`` is None — ``estimating time left`` — until ``workers`` units have
    finished after the first (units that ran alongside the first end just after it) and
    until the model has a basis for every unit left: a finished unit of its kind and size,
    two sizes of one kind for the exponent, or (a kind not seen) a finished unit of its
    size. Without measured seconds (Ray tasks) every unit costs its share, and the pace is
    units finished over wall time."""

    #: the exponent's prior (cost in proportion to size) and its weight: the log-size
    #: spread of two sizes a factor 2 apart, sum((log size - mean) ** 2)
    PRIOR_ALPHA = 1.0
    PRIOR_WEIGHT = 2 * (math.log(2) / 2) ** 2

    def __init__(self, units: Mapping[Hashable, tuple[str, float, float]], workers: int = 1,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.units = {u: (str(k), float(size), float(share))
                      for u, (k, size, share) in units.items()}
        self.workers, self.clock = max(int(workers), 1), clock
        self.pending = set(self.units)
        #: units finished, with when, in order
        self.finished: list[tuple[Hashable, float]] = []
        #: compute seconds measured so far of each unit (None: some part was not measured)
        self.spent: dict[Hashable, float | None] = {}
        #: when each unit's parts were reported, with their seconds, in order
        self.parts: dict[Hashable, list[tuple[float, float | None]]] = {}
        self._lock = threading.Lock()  # units may finish in another thread than the line's

    def spend(self, unit: Hashable, seconds: float | None) -> None:
        """``seconds`` of compute went into ``unit``: a part of it is done (now; None: not
        measured)."""
        if unit in self.units:
            with self._lock:
                had = self.spent.get(unit, 0.0)
                self.spent[unit] = None if had is None or seconds is None else had + seconds
                self.parts.setdefault(unit, []).append((self.clock(), seconds))

    def finish(self, unit: Hashable) -> None:
        """``unit`` is done (now)."""
        with self._lock:
            if unit in self.pending:
                self.pending.discard(unit)
                self.finished.append((unit, self.clock()))

    def costs(self) -> dict[Hashable, float] | None:
        """The predicted cost of every unit (finished or not), None without a basis."""
        seen: dict[tuple[str, float], list[float]] = {}
        for u, _ in self.finished:
            seconds, (kind, size, share) = self.spent.get(u), self.units[u]
            if seconds is not None and seconds > 0 and share > 0:
                seen.setdefault((kind, size), []).append(seconds / share)
        if not seen:  # nothing measured (Ray tasks): units are equal
            return {u: share for u, (_, _, share) in self.units.items()}
        mean = {ks: sum(v) / len(v) for ks, v in seen.items()}
        fit = self._fit(mean)
        at_size: dict[float, list[float]] = {}  # a kind not seen, at a size seen: the others'
        for (_, size), seconds in mean.items():
            at_size.setdefault(size, []).append(seconds)
        out: dict[Hashable, float] = {}
        for u, (kind, size, share) in self.units.items():
            if (kind, size) in mean:
                out[u] = mean[(kind, size)] * share
            elif fit is None and size in at_size and not any(k == kind for k, _ in mean):
                out[u] = sum(at_size[size]) / len(at_size[size]) * share
            elif fit is None or size <= 0:
                return None
            else:
                alpha, factor = fit
                out[u] = math.exp(factor.get(kind, sum(factor.values()) / len(factor))
                                  + alpha * math.log(size)) * share
        return out

    def _fit(self, mean: dict[tuple[str, float], float]) -> tuple[float, dict[str, float]] | None:
        """(alpha, log c per kind) of ``seconds = c_kind * size ** alpha`` over the
        measured (kind, size) means, the exponent drawn towards :attr:`PRIOR_ALPHA`; None
        while no kind has two sizes."""
        by_kind: dict[str, list[tuple[float, float]]] = {}
        for (kind, size), seconds in mean.items():
            if size > 0:
                by_kind.setdefault(kind, []).append((math.log(size), math.log(seconds)))
        sxy = sxx = 0.0
        for pts in by_kind.values():
            mx = sum(x for x, _ in pts) / len(pts)
            my = sum(y for _, y in pts) / len(pts)
            sxy += sum((x - mx) * (y - my) for x, y in pts)
            sxx += sum((x - mx) ** 2 for x, _ in pts)
        if sxx < 1e-12:
            return None
        alpha = (sxy + self.PRIOR_WEIGHT * self.PRIOR_ALPHA) / (sxx + self.PRIOR_WEIGHT)
        factor = {k: sum(y - alpha * x for x, y in pts) / len(pts) for k, pts in by_kind.items()}
        return alpha, factor

    def pace(self) -> float | None:
        """Compute seconds one process does per wall second: the seconds of every unit's
        parts after its first over the wall time since the part before; None before a
        unit has two parts (or where a part was not measured)."""
        seconds = wall = 0.0
        for parts in self.parts.values():
            for (before, _), (at, spent) in zip(parts, parts[1:], strict=False):
                if spent is None:
                    return None
                seconds, wall = seconds + spent, wall + at - before
        return seconds / wall if seconds > 0 and wall > 0 else None

    def __call__(self, now: float) -> float | None:
        with self._lock:
            return self._left(now)

    def _left(self, now: float) -> float | None:
        if not self.finished:
            return None
        t1 = self.finished[0][1]
        since = [u for u, t in self.finished if t > t1]
        if len(since) < self.workers or now <= t1:
            return None
        costs = self.costs()
        if costs is None:
            return None
        if not self.pending:
            return 0.0
        pace = self.pace()
        if pace is None:  # no part after a first, or not measured: by finished units
            rate = sum(costs[u] for u in since) / (now - t1)
            return sum(costs[u] for u in self.pending) / rate if rate > 0 else None
        left, waiting = [], []
        for u in self.pending:  # a unit under way: less what it spent and what its
            parts = self.parts.get(u)  # process has done since its last part
            if parts:
                done = (self.spent.get(u) or 0.0) + pace * (now - parts[-1][0])
                left.append(max(costs[u] - done, 0.0))
            else:
                waiting.append(costs[u])
        # each process was last free when one of the last ``workers`` units finished: the
        # first free are those with a part reported since, the next took the next units
        # (the largest first, as handed out) and have worked on them since; the last may
        # have found none
        waiting.sort(reverse=True)
        free = [t for _, t in self.finished[-self.workers:]][len(left):]
        for i, t in enumerate(free[:len(waiting)]):
            waiting[i] = max(waiting[i] - pace * (now - t), 0.0)
        left += waiting
        return max(sum(left) / (self.workers * pace), max(left) / pace)


def _lines_wanted() -> bool:
    forced = os.environ.get("NOISYDEQ_PROGRESS", "").strip().lower()
    if forced in ("bar", "lines"):
        return forced == "lines"
    try:
        return not sys.stderr.isatty()
    except (AttributeError, ValueError):  # a closed or replaced stderr
        return True


def progress(
    iterable: Iterable[Any] | None = None, *, total: int | None = None, desc: str = "",
    unit: str = "it", disable: bool = False, leave: bool = False, initial: int = 0,
) -> Any:
    """A tqdm bar on a terminal, :class:`LineProgress` otherwise (nothing when ``disable``).
    With a JSON event log (:mod:`noisydeq.events`) the bar also sends ``progress`` events,
    ``disable``d or not."""
    from noisydeq import events

    if disable or not _lines_wanted():
        from tqdm.auto import tqdm

        bar: Any = tqdm(iterable, total=total, desc=desc, unit=unit, disable=disable,
                        leave=leave, initial=initial)
    else:
        bar = LineProgress(iterable, total=total, desc=desc, unit=unit, initial=initial,
                           every_s=_every_s())
    if events.active():
        return EventProgress(bar, iterable, total=total, desc=desc, unit=unit,
                             initial=initial, every_s=_every_s())
    return bar


class EventProgress:
    """A bar (tqdm or :class:`LineProgress`) that also sends ``progress`` events: at most one
    every ``every_s`` seconds, and one when it closes. Everything else goes to the bar."""

    def __init__(self, bar: Any, iterable: Iterable[Any] | None, *, total: int | None,
                 desc: str, unit: str, initial: int = 0, every_s: float = EVERY_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self._bar, self._iterable = bar, iterable
        self._total, self._desc, self._unit = total, desc, unit
        self._n, self._every_s, self._clock = initial, every_s, clock
        self._last = clock()
        self._closed = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._bar, name)

    def _emit(self, final: bool) -> None:
        from noisydeq import events

        events.emit("progress", desc=self._desc, n=self._n, total=self._total,
                    unit=self._unit, final=final)
        self._last = self._clock()

    def update(self, n: int = 1) -> None:
        self._bar.update(n)
        self._n += n
        if self._clock() - self._last >= self._every_s:
            self._emit(final=False)

    def close(self) -> None:
        self._bar.close()
        if not self._closed:
            self._closed = True
            self._emit(final=True)

    def __iter__(self) -> Iterator[Any]:
        for item in self._iterable or ():
            yield item
            self.update(1)
        self.close()

    def __enter__(self) -> EventProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _every_s() -> float:
    text = os.environ.get("NOISYDEQ_PROGRESS_EVERY", "")
    try:
        value = float(text) if text else EVERY_S
    except ValueError:
        value = EVERY_S
    return value if value >= 0 else EVERY_S


def write(message: str, file: TextIO | None = None) -> None:
    """One line that does not break a bar on a terminal (``tqdm.write``)."""
    from tqdm import tqdm

    tqdm.write(message, file=file)


class heartbeat:  # noqa: N801 - used as ``with heartbeat("sensitivity"):``
    """Lines for work without a count: ``noisydeq: DESC: 0:15 elapsed`` after ``first_s``
    seconds (default 5) and then every ``every_s`` (``NOISYDEQ_PROGRESS_EVERY``, default 10,
    at least 1), plus a closing line when it printed; ``progress`` events with
    ``n = null`` too. Work that ends sooner prints nothing. A daemon thread writes the
    lines; ``disable`` turns it off.

    The outermost heartbeat is the command's clock: the ``elapsed`` of every line-mode bar
    opened meanwhile (on the same ``clock``) counts from its start too, so a heartbeat line
    and a bar line never show two times for one moment. While such a bar with a total is
    open, a heartbeat that falls due prints that bar's line (count and time left) instead
    of its own."""

    def __init__(self, desc: str, *, first_s: float = 5.0, every_s: float | None = None,
                 disable: bool = False, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.desc, self.first_s = desc, first_s
        # from the environment at least 1 s: NOISYDEQ_PROGRESS_EVERY=0 (every bar update)
        # made the heartbeat repeat an unchanged count every 0.5 s between the updates
        self.every_s = max(_every_s(), 1.0) if every_s is None else every_s
        self.disable, self.stream, self.clock = disable, stream, clock
        self._stop = threading.Event()
        self._thread: Any = None
        self.t0 = self.origin = clock()
        self._owns_origin = False
        self._wait = first_s
        self.printed = False

    def _say(self, text: str, final: bool) -> None:
        from noisydeq import events

        line = f"noisydeq: {self.desc}: {text}"
        if self.stream is None and _bars_open():
            write(line, file=sys.stderr)  # above the bar, not through it
        else:
            print(line, file=self.stream or sys.stderr, flush=True)
        events.emit("progress", desc=self.desc, n=None, total=None, unit="", final=final)
        self.printed = True
        _LAST_LINE[0] = self.clock()

    def _tick(self) -> float:
        """One wake-up of the thread: speak if nothing else has for the interval; the
        seconds until the next wake-up."""
        now = self.clock()
        quiet_for = now - max(_LAST_LINE[0], self.t0)
        if quiet_for >= min(self._wait, self.every_s) - 0.05 and not _bars_open():
            bar = _open_bar(self.clock)
            if bar is not None and bar.total:
                # a count is open (slow cells): its line, with count and time left, on
                # the same clock, instead of a line of our own
                bar._line(final=False)
                self.printed = True
            else:
                self._say(f"{_clock(now - self.origin)} elapsed", final=False)
            self._wait = max(self.every_s, 0.5)
        else:  # other progress spoke lately (or a bar is on screen): wait for silence
            self._wait = max(self.every_s - quiet_for, 0.5)
        return self._wait

    def _loop(self) -> None:
        wait = self.first_s
        while not self._stop.wait(wait):
            wait = self._tick()

    def __enter__(self) -> heartbeat:
        self.t0 = self.origin = self.clock()
        if _ORIGIN[0] is None:  # the outermost: the command's clock
            _ORIGIN[0], self._owns_origin = (self.clock, self.t0), True
        elif _ORIGIN[0][0] is self.clock:
            self.origin = _ORIGIN[0][1]
        self._wait = self.first_s
        if not self.disable:
            self._thread = threading.Thread(target=self._loop, name="noisydeq-heartbeat",
                                            daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._owns_origin:
            _ORIGIN[0], self._owns_origin = None, False
        if self.printed and exc[0] is None:
            self._say(f"done in {_clock(self.clock() - self.t0)}", final=True)


def _open_bar(clock: Callable[[], float] | None = None) -> LineProgress | None:
    """The newest line-mode bar not yet closed (on ``clock``, when given), if any."""
    for ref in reversed(list(_OPEN)):
        bar = ref()
        if bar is not None and not bar.closed and (clock is None or bar.clock is clock):
            return bar
    return None


def _bars_open() -> bool:
    """True while a tqdm bar is on screen (a bar is progress enough)."""
    tqdm_mod = sys.modules.get("tqdm")
    if tqdm_mod is None:
        return False
    try:
        return any(not getattr(b, "disable", False) for b in list(tqdm_mod.tqdm._instances))
    except (AttributeError, TypeError, RuntimeError):
        return False


def with_heartbeat(desc: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a command's function with :class:`heartbeat` (off with ``quiet``/``as_json``
    keyword arguments): work over 5 s that prints nothing else still shows it is alive."""
    import functools

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            off = bool(kwargs.get("quiet") or kwargs.get("as_json"))
            with heartbeat(desc, disable=off):
                return fn(*args, **kwargs)
        return run
    return wrap
