"""One exception type for every user-facing error.

The CLI turns a :class:`NoisyDEQError` into one readable line and a non-zero exit; library
users catch it like any ``ValueError``.
"""

from __future__ import annotations

import os


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
