"""The ``noisydeq`` command line (click).

Sub-commands live in ``noisydeq/commands/<name>.py``, each exposing a click command called
``command`` (or a list ``commands``); they are loaded on first use (:class:`LazyGroup`) so
that modules stay small and the command line starts fast.
Every :class:`~noisydeq.errors.NoisyDEQError` (and click usage error) becomes one readable
line on stderr and a non-zero exit — never a traceback; an interrupted run says how to
resume it.
"""

from __future__ import annotations

import errno
import importlib
import importlib.util
import os
import shlex
import signal
import sys
import threading
from typing import Any

import click

from noisydeq import __version__
from noisydeq.errors import NoisyDEQError, did_you_mean

#: (command, its module under noisydeq/commands, the first paragraph of its help), in help
#: order. ``noisydeq --help`` lists the commands from here without importing their modules
#: (which import the pydantic specs: ~0.2 s of a 0.25 s help); tests/test_cli_imports.py
#: checks the table against the commands themselves. A module missing from an install is
#: skipped so the core CLI keeps working.
COMMANDS: list[tuple[str, str, str]] = [
    ("sweep", "sweep",
     "Sweep parameter-matched DEQ vs FFW accuracy across SNR on a simulated device."),
    ("train", "train", "Train one model or a depth-matched DEQ/FFW family on a task."),
    ("run", "run",
     "Run an experiment: a bundled one by NAME (see --list) or a .toml FILE of your own."),
    ("devices", "devices",
     "List device presets (or the given names / .toml paths) with their native SNR."),
    ("table", "table",
     "DEQ vs matched-FFW tables (Markdown) of finished sweeps at one inference SNR."),
    ("plot", "plot",
     "Redraw a finished run's figures from its results.csv (nothing is recomputed)."),
    ("sensitivity", "sensitivity",
     "E_ξ|dz*/dξ_i| of each DEQ and FFW in a family, the DEQ/FFW ratio and Eq. 12 bounds."),
    ("spectrum", "spectrum",
     "Eigen-spectra and spectral radii of every DEQ and FFW of a family."),
    ("solvers", "solvers",
     "Noisy fixed-point solving: traces, stop-rule iteration counts, accuracy per solver."),
    ("study", "study",
     "Train named models and evaluate them over sizes, test noise and solvers."),
    ("compare", "compare",
     "Compare DEQs with their parameter-matched FFWs (e.g. one run per FFW form)."),
    ("certify", "certify",
     "Certified robustness (interval bounds) of monotone DEQs and explicit networks."),
    ("attack", "attack",
     "Attack a family's DEQs and FFWs (PGD, AutoAttack, noise; DEQ estimators, defences)."),
    ("lyapunov", "lyapunov",
     "Reproduce the LyaDEQ paper's Table 1 and compare LyaDEQ/DEQ/FFW on devices."),
    ("adversarial", "adversarial",
     "Adversarial training grid (PGD-AT/TRADES x defences) and its attack tables."),
    ("runs", "runs",
     "List run directories below DIRS (default: runs): what each is (sweep, attack, "
     "lyapunov experiment, lyapunov sweep, certify), its spec and status."),
    ("cache", "cache",
     "Show and prune the on-disk cache (models, calibrations, chips, figures, code memo)."),
]
# Command modules under noisydeq/commands, in help order.
COMMAND_MODULES = list(dict.fromkeys(module for _, module, _ in COMMANDS))


def _module_commands(name: str) -> list[click.Command]:
    """The click commands of ``noisydeq/commands/<name>.py`` ([] when not installed)."""
    try:
        module = importlib.import_module(f"noisydeq.commands.{name}")
    except ModuleNotFoundError as err:
        if err.name == f"noisydeq.commands.{name}":
            return []
        raise
    cmds = list(getattr(module, "commands", None) or [module.command])
    for cmd in cmds:  # a group's sub-commands too (``cache prune``)
        for sub in [cmd, *getattr(cmd, "commands", {}).values()]:
            _suggesting(sub)
    return cmds


def _installed(module: str) -> bool:
    """Whether ``noisydeq/commands/<module>.py`` is there (found, not imported)."""
    return importlib.util.find_spec(f"noisydeq.commands.{module}") is not None


class Choice(click.Choice):
    """A click choice whose refusal carries the project's "did you mean" (click lists the
    choices only): ``--noise-site sigal`` → ``'sigal' is not one of 'device', 'signal', …;
    did you mean 'signal'?``."""

    def get_invalid_choice_message(self, value: Any, ctx: click.Context | None) -> str:
        text = super().get_invalid_choice_message(value, ctx)
        hint = did_you_mean(value, [str(c) for c in self.choices])
        return text.rstrip(".") + hint if hint else text


def _suggesting(cmd: click.Command) -> click.Command:
    """``cmd`` with each plain :class:`click.Choice` option a :class:`Choice` (commands
    declare click's; every one gets the suggestion here, where they are loaded)."""
    for p in cmd.params:
        if type(p.type) is click.Choice:
            p.type = Choice(p.type.choices, p.type.case_sensitive)
    return cmd


class LazyGroup(click.Group):
    """A group that imports a command's module only when that command runs (or help lists
    them): ``noisydeq sweep --snr ...`` loads neither torch nor the other commands before
    it has validated its input, and a spawned worker process starts in a fraction of a
    second (it imports this module as its ``__main__``)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        names = []
        for module in COMMAND_MODULES:
            names += [c.name for c in _module_commands(module) if c.name not in names]
        return names

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The commands section of the help, from :data:`COMMANDS` (no command module is
        imported; the same text as click's own listing)."""
        rows = [(name, text) for name, module, text in COMMANDS if _installed(module)]
        if rows:
            limit = formatter.width - 6 - max(len(name) for name, _ in rows)
            with formatter.section("Commands"):
                formatter.write_dl([(name, click.Command(name, help=text).get_short_help_str(limit))
                                    for name, text in rows])

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        for module in ([name] if name in COMMAND_MODULES else []) + COMMAND_MODULES:
            for cmd in _module_commands(module):
                if cmd.name == name:
                    return cmd
        return None

    def resolve_command(self, ctx: click.Context, args: list[str]) -> Any:
        name = args[0] if args else ""
        if args and not name.startswith("-") and self.get_command(ctx, name) is None:
            hint = did_you_mean(name, self.list_commands(ctx))
            ctx.fail(f"no such command '{name}'{hint} "
                     f"(commands: {', '.join(self.list_commands(ctx))})")
        return super().resolve_command(ctx, args)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="noisydeq")
@click.option("--log-json", "log_json", default=None, metavar="PATH",
              help="Append machine-readable JSON-lines events (start, progress, cell, end, "
                   "error) to PATH (also $NOISYDEQ_LOG_JSON).")
@click.option("--tracker", type=Choice(["tensorboard", "wandb", "mlflow"]), default=None,
              help="Also log parameters, training epochs and sweep results to this experiment "
                   "tracker through its own library (off by default).")
@click.option("--tracker-dir", default=None, metavar="DIR",
              help="Where the tracker writes (TensorBoard/W&B default: ./tracker; MLflow: "
                   "its own default); TensorBoard: one <command>-<time>/ folder per run.")
@click.pass_context
def cli(ctx: click.Context, log_json: str | None, tracker: str | None,
        tracker_dir: str | None) -> None:
    """Run DEQ and feed-forward networks on simulated noisy analog and optical hardware.

    \b
    Examples:
      noisydeq sweep --device snr --snr 0:30:5
      noisydeq run --list
      noisydeq --log-json run.jsonl sweep --device rram
      noisydeq --tracker tensorboard --tracker-dir tb sweep --device snr
    """
    from noisydeq import events

    if tracker_dir is not None and tracker is None:  # it was ignored without a tracker
        raise NoisyDEQError("--tracker-dir: needs --tracker (tensorboard, wandb or mlflow)")
    # $NOISYDEQ_LOG_JSON is opened like --log-json: checked before any work, and the start
    # time its events' ``elapsed`` counts from (without it, every ``elapsed`` was -0.0)
    env_log = events.env_log() if log_json is None else None
    t0 = _RUN["t0"] or None  # when main() began (None: the group called some other way)
    if log_json is not None or env_log is not None:
        events.open_log(log_json or env_log,
                        "--log-json" if log_json is not None else events.ENV, t0=t0)
        _RUN["opened"] = True
    if tracker is not None:
        import time

        from noisydeq.trackers import open_tracker

        name = f"{ctx.invoked_subcommand}-{time.strftime('%Y%m%d-%H%M%S')}"
        events.set_sink(open_tracker(tracker, tracker_dir, name), t0=t0)
        _RUN["tracker"] = True
    if events.active() and not _RUN["started"]:
        _RUN["started"] = True
        _RUN["command"] = ctx.invoked_subcommand
        events.emit("start", command=ctx.invoked_subcommand, argv=_RUN["argv"],
                    version=__version__, cwd=os.getcwd())


#: the current invocation, for its events (``--log-json``)
_RUN: dict[str, Any] = {"argv": [], "started": False, "opened": False, "command": None,
                        "t0": 0.0, "tracker": False}  # t0: Unix time the invocation began


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that ``finally`` blocks run (workers stopped,
    locks released) as for Ctrl-C."""

    signum = signal.SIGTERM


def _on_sigterm(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not cut the clean-up
    raise Terminated()


def _resume_hint(argv: list[str]) -> str:
    return ("finished work is kept; run the same command again to resume: "
            + shlex.join(["noisydeq", *argv]))


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: user errors become one line and exit code 2.

    Ctrl-C and SIGTERM stop the run cleanly (exit 130 / 143) with one line saying how to
    resume; an ``OSError`` (disk full, permission) or ``MemoryError`` is one line too, and
    anything unexpected is one "internal error" line (``NOISYDEQ_DEBUG=1`` shows the
    traceback).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    main_thread = threading.current_thread() is threading.main_thread()
    before = signal.signal(signal.SIGTERM, _on_sigterm) if main_thread else None
    try:
        _run(argv)
    finally:
        if before is not None:
            signal.signal(signal.SIGTERM, before)


def _run(argv: list[str]) -> None:
    """:func:`main` without the signal set-up; with ``--log-json`` it brackets the command with
    ``start`` and ``end``/``error`` events."""
    import time

    from noisydeq import events

    _RUN.update(argv=list(argv), started=False, opened=False, command=None,
                t0=time.time(), tracker=False)
    try:
        _dispatch(argv)
    except SystemExit as ex:
        code = ex.code if isinstance(ex.code, int) else (0 if ex.code is None else 1)
        if code == 0:
            _event_end(0)
        raise
    else:
        _event_end(0)
    finally:
        _RUN["t0"] = 0.0
        if _RUN["opened"]:
            events.close_log()
        if _RUN["tracker"]:  # closed by the last event; here if none came (an interrupt)
            sink = events.take_sink()
            if sink is not None:
                sink.close()


def _event_end(status: int, message: str | None = None) -> None:
    """The last event of the invocation (once; nothing without a log or a start)."""
    import time

    from noisydeq import events

    if not (_RUN["started"] and events.active()):
        return
    _RUN["started"] = False
    # ``seconds`` is the whole invocation on the events' own clock: the same value as the
    # event's ``elapsed`` (both count from _RUN["t0"], start-up included)
    now = time.time()
    fields = {"command": _RUN["command"], "status": status,
              "seconds": events.since_start(now)}
    if message is None:
        events.emit("end", _now=now, **fields)
    else:
        events.emit("error", _now=now, message=message, **fields)


def _fail(line: str, status: int) -> None:
    """One line on stderr, the ``error`` event, exit ``status``."""
    click.echo(line, err=True)
    _event_end(status, line)
    sys.exit(status)


def _dispatch(argv: list[str]) -> None:
    try:
        with cli.make_context("noisydeq", argv) as ctx:
            cli.invoke(ctx)
    except click.exceptions.NoArgsIsHelpError as err:  # bare `noisydeq`: the help
        click.echo(err.ctx.get_help() if err.ctx is not None else str(err))
        sys.exit(2)
    except click.exceptions.Abort:
        _fail(f"noisydeq: interrupted; {_resume_hint(argv)}", 130)
    except KeyboardInterrupt as err:
        signum = getattr(err, "signum", signal.SIGINT)
        name = "terminated" if signum == signal.SIGTERM else "interrupted"
        _fail(f"noisydeq: {name}; {_resume_hint(argv)}", 128 + int(signum))
    except click.ClickException as err:
        _fail(f"noisydeq: error: {err.format_message()}", err.exit_code or 2)
    except NoisyDEQError as err:
        _fail(f"noisydeq: error: {err}", 2)
    except click.exceptions.Exit as err:
        sys.exit(err.exit_code)
    except MemoryError:
        _fail("noisydeq: error: out of memory (ask for fewer or smaller models, fewer "
              "rows per forward or fewer SNR levels)", 2)
    except OSError as err:
        where = f"{err.filename}: " if err.filename else ""
        full = err.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
        hint = f"; free some space; {_resume_hint(argv)}" if full else ""
        _fail(f"noisydeq: error: {where}{err.strerror or err}{hint}", 2)
    except Exception as err:  # noqa: BLE001 - the last line of defence: never a traceback
        if os.environ.get("NOISYDEQ_DEBUG"):
            raise
        msg = str(err).splitlines()[0] if str(err) else ""
        _fail(f"noisydeq: internal error: {type(err).__name__}: {msg} (please report it; "
              "NOISYDEQ_DEBUG=1 shows the traceback)", 3)


if __name__ == "__main__":  # pragma: no cover
    main()
