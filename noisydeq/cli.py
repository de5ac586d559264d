"""The ``noisydeq`` command line (click).

Sub-commands live in ``noisydeq/commands/<name>.py``, each exposing a click command called
``command`` (or a list ``commands``); they are registered here so that modules stay small.
Every :class:`~noisydeq.errors.NoisyDEQError` (and click usage error) becomes one readable
line on stderr and a non-zero exit — never a traceback.
"""

from __future__ import annotations

import importlib
import sys

import click

from noisydeq import __version__
from noisydeq.errors import NoisyDEQError

# Command modules under noisydeq/commands, in help order. A module missing from an
# install is skipped so the core CLI keeps working.
COMMAND_MODULES = [
    "sweep",
    "train",
    "run",
    "devices",
    "sensitivity",
    "spectrum",
    "solvers",
    "study",
]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="noisydeq")
def cli() -> None:
    """Run DEQ and feed-forward networks on simulated noisy analog and optical hardware."""


def _register() -> None:
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"noisydeq.commands.{name}")
        except ModuleNotFoundError as err:
            if err.name == f"noisydeq.commands.{name}":
                continue
            raise
        cmds = getattr(module, "commands", None) or [module.command]
        for cmd in cmds:
            cli.add_command(cmd)


_register()


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: user errors become one line and exit code 2."""
    try:
        cli.main(args=argv, prog_name="noisydeq", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("noisydeq: interrupted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo("noisydeq: interrupted (finished work is kept; run again to resume)", err=True)
        sys.exit(130)
    except click.ClickException as err:
        click.echo(f"noisydeq: error: {err.format_message()}", err=True)
        sys.exit(err.exit_code or 2)
    except NoisyDEQError as err:
        click.echo(f"noisydeq: error: {err}", err=True)
        sys.exit(2)
    except click.exceptions.Exit as err:
        sys.exit(err.exit_code)


if __name__ == "__main__":  # pragma: no cover
    main()
