"""One exception type for every user-facing error.

The CLI turns a :class:`NoisyDEQError` into one readable line and a non-zero exit; library
users catch it like any ``ValueError``.
"""


class NoisyDEQError(ValueError):
    """A user-facing error: bad input, bad config, bad data or a run that cannot proceed."""
