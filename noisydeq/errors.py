"""One exception type for every user-facing error.

The CLI turns a :class:`NoisyDEQError` into one readable line and a non-zero exit; library
users catch it like any ``ValueError``. :func:`did_you_mean` is the suggestion every
"unknown name" message carries (``specs.base.suggest_name`` the whole message of a name
field).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable


def did_you_mean(value: object, allowed: Iterable[str]) -> str:
    """``"; did you mean 'X'?"`` with the closest of ``allowed`` to ``value`` (difflib's
    default cutoff 0.6), or ``""`` when none is close."""
    close = difflib.get_close_matches(str(value), list(allowed), n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


class NoisyDEQError(ValueError):
    """A user-facing error: bad input, bad config, bad data or a run that cannot proceed."""


class CorruptArtefact(NoisyDEQError):
    """A stored file failed its integrity check (digest, format or contents).

    ``path`` names the file. Cache entries are recomputed after one warning line; results
    (a run directory's cells, table, config) are refused with this message.
    """

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")
