"""CLI sub-commands, one module each (registered in noisydeq.cli), and :func:`cache_option`,
the ``--cache`` every command that reads or writes the cache declares."""

from __future__ import annotations

from typing import Any

import click

#: the help of ``--cache`` (one text on every command that has it)
CACHE_HELP = ("The cache root: models, calibrations, programmed chips, figures and the code "
              "memo are read and written under DIR (default $NOISYDEQ_CACHE, else the user "
              "cache dir).")


def _enter_cache(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value is None:
        return
    if not value.strip():
        from noisydeq.errors import NoisyDEQError

        raise NoisyDEQError("--cache '': expected a directory")
    from noisydeq.runtime import cache_at

    # held by the root context: restored when the whole command ends (a group's
    # sub-command given its own --cache: that one, entered last, wins)
    ctx.find_root().with_resource(cache_at(value))


def cache_option(f: Any) -> Any:
    """``--cache DIR``: DIR is the cache root of the whole command and the processes it
    starts (:func:`noisydeq.runtime.cache_at`), for every kind of entry — the command reads
    it with :func:`noisydeq.runtime.cache_root`, so no path is threaded through. Nothing is
    checked or written here: a command that writes checks it first
    (:func:`noisydeq.runtime.check_cache`, naming ``--cache``)."""
    return click.option("--cache", default=None, metavar="DIR", expose_value=False,
                        callback=_enter_cache, help=CACHE_HELP)(f)
