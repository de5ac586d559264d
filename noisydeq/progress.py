"""Progress for humans and for log files.

On a terminal, :func:`progress` is a tqdm bar. Anywhere else (CI, ``nohup``, Slurm, a pipe)
carriage returns and ANSI codes garble the log, so progress is plain lines instead: one line
at most every ``every_s`` seconds (default 10) while work goes on, and one closing line for
work that printed anything, e.g. ::

    noisydeq: sweep 12/48 cells (25%), 0:41 elapsed, ~2:03 left
    noisydeq: sweep 48/48 cells in 2:44

Both kinds take the same calls (``update``, ``set_postfix``, ``set_postfix_str``, ``close``,
iteration over an iterable, ``with``), so callers do not care which one they hold.
``NOISYDEQ_PROGRESS=bar|lines`` overrides the terminal check and
``NOISYDEQ_PROGRESS_EVERY=S`` sets the seconds between lines.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TextIO

#: seconds between two plain progress lines
EVERY_S = 10.0


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
        self.postfix = ""
        self.printed = self.closed = False

    # tqdm's calls ------------------------------------------------------------------
    def update(self, n: int = 1) -> None:
        self.n += n
        if self.clock() - self.last >= self.every_s:
            self._line(final=False)

    def set_postfix(self, refresh: bool = True, **values: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def set_postfix_str(self, text: str = "", refresh: bool = True) -> None:
        self.postfix = text

    def close(self) -> None:
        if not self.closed and self.printed:
            self._line(final=True)
        self.closed = True

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
        elapsed = now - self.t0
        of = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        text = f"noisydeq: {self.desc} {of} {self.unit}"
        if final:
            text += f" in {_clock(elapsed)}"
        else:
            if self.total:
                text += f" ({100 * self.n / self.total:.0f}%)"
            text += f", {_clock(elapsed)} elapsed"
            done = self.n - self.start_n
            if self.total and done > 0 and elapsed > 0:
                left = (self.total - self.n) * elapsed / done
                text += f", ~{_clock(left)} left"
        if self.postfix:
            text += f"; {self.postfix}"
        print(text, file=self.stream or sys.stderr, flush=True)
        self.printed, self.last = True, now


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
    """A tqdm bar on a terminal, :class:`LineProgress` otherwise (nothing when ``disable``)."""
    if disable or not _lines_wanted():
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, disable=disable, leave=leave,
                    initial=initial)
    return LineProgress(iterable, total=total, desc=desc, unit=unit, initial=initial,
                        every_s=_every_s())


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
