"""Every ``noisydeq`` command the user documentation shows parses: the command exists, its
options exist and take the values shown, and a bundled experiment it names exists and is
run by that command. Nothing is run (click parses each line into a context, as
``--help``-level validation), so drift between the docs and the CLI fails here.

Two kinds of lines are checked:

* each line of a fenced shell block (```` ```bash ````, ```` ```sh ````, or no language) that
  starts a ``noisydeq`` command: parsed in full, with its placeholders (``RUN``, ``DIR``,
  ``runs/sweep-<hash>``, ...) replaced by a folder that exists;
* each inline span `` `noisydeq ...` `` of the prose: often a fragment (``noisydeq certify
  --backend ray``), so only its command, its options and its experiment name are checked.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

from noisydeq.bundled import bundled_experiments
from noisydeq.cli import cli

ROOT = Path(__file__).resolve().parents[1]
#: the documents whose commands are checked
DOCS = ["README.md", "docs/index.md", "docs/devices.md", "docs/analysis.md", "docs/scaling.md",
        "docs/architecture.md", "docs/reproduction.md", "docs/robustness.md",
        "docs/robustness-standard.md", "docs/robustness-attack-cost.md",
        "docs/robustness-adversarial.md", "docs/robustness-conv.md",
        "docs/robustness-lyapunov-certified.md", "CHANGELOG.md", "docs/python-api.md"]
#: commands whose first argument may name a bundled experiment
RUNS_EXPERIMENTS = {"run", "study", "adversarial", "lyapunov", "certify"}
#: placeholder values the docs use for an option's value (``--noise-mode MODE``)
VALUES = {"COMMAND": "COMMAND", "MODE": "physical", "K": "models", "D": "rram", "S": "0",
          "k": "0", "N": "1", "PORT": "6379", "T": "title", "DAYS": "30", "PATH": "run.jsonl"}
FIG13 = "python -m noisydeq.analysis.fig13"


def _fenced(text: str) -> list[tuple[int, str]]:
    """(line number, command) of each shell line in fenced blocks, continuations joined."""
    out, inside, shell, pending = [], False, False, None
    for i, line in enumerate(text.splitlines(), 1):
        fence = re.match(r"\s*```(\w*)", line)
        if fence:
            inside, shell = not inside, fence.group(1) in ("bash", "sh", "shell", "")
            continue
        s = line.strip()
        if not (inside and shell) or (not s and pending is None) or s.startswith("#"):
            continue
        if pending is not None:
            pending = (pending[0], pending[1] + " " + s.rstrip("\\"))
        else:
            pending = (i, s.rstrip("\\"))
        if not s.endswith("\\"):
            out.append(pending)
            pending = None
    return out


def _inline(text: str) -> list[tuple[int, str]]:
    """(line number, span) of each `` `noisydeq ...` `` span outside fenced blocks."""
    out, inside = [], False
    for i, line in enumerate(text.splitlines(), 1):
        if re.match(r"\s*```", line):
            inside = not inside
        elif not inside:
            out += [(i, m) for m in re.findall(rf"`((?:noisydeq|{FIG13}) [^`]*)`", line)]
    return out


def _lines(kind: str) -> list[tuple[str, str]]:
    items = []
    for doc in DOCS:
        text = (ROOT / doc).read_text(encoding="utf-8")
        for line, command in (_fenced if kind == "block" else _inline)(text):
            words = command.split()
            while words and (re.fullmatch(r"[A-Z_]+=\S*", words[0]) or words[0] == "nice"):
                words = words[3:] if words[0] == "nice" else words[1:]  # env, `nice -n 5`
            command = " ".join(words)
            if command.startswith(("noisydeq ", FIG13)):
                items.append((f"{doc}:{line}", command))
    return items


def _alternatives(command: str) -> str:
    """The first of each ``{a,b}``, ``[--x|--y]``, ``a\\|b`` alternative; ``[...]`` kept."""
    command = re.sub(r"\{([^{}=]*?),[^{}=]*?\}", r"\1", command)  # {rram,photonic} -> rram
    command = command.replace("\\|", "|")
    command = re.sub(r"\[([^\[\]|]*)\|[^\[\]]*\]", r"\1", command)
    command = re.sub(r"\[(--[^\[\]]*)\]", r"\1", command)  # [--family DIR] -> --family DIR
    command = re.sub(r"(--[\w-]+)(\|--[\w-]+)+", r"\1", command)  # --quick|--full -> --quick
    return re.sub(r"=([\w.-]+)\|[\w.|-]+", r"=\1", command)  # input_act=silu|relu -> silu


def _argv(command: str, tmp: Path) -> list[str]:
    """The tokens of ``command`` after its program name, placeholders replaced by values
    that exist (folders under ``tmp``) or that the option accepts."""
    argv = []
    command = re.sub(r"(\.\.\.|…) [^.…]+ (\.\.\.|…)", " ", command)  # "... elided prose ..."
    for token in shlex.split(_alternatives(command), comments=True)[1:]:
        if token in ("...", "…"):
            continue
        token = token.rstrip(".…") if re.fullmatch(r"[A-Z_0-9′]+(\.\.\.|…)", token) else token
        if token in VALUES:
            token = VALUES[token]
        elif token in OUTS or re.fullmatch(r"[A-Z][A-Z_0-9]*′?|runs/[\w.<>-]+|<[\w-]+>", token):
            folder = tmp / re.sub(r"[<>′]", "_", token)
            folder.mkdir(parents=True, exist_ok=True)
            token = str(folder)
        argv.append(token)
    return argv


def _outs() -> set[str]:
    """Folders the documented commands write (``--out fam``), named by later commands."""
    found: set[str] = set()
    for doc in DOCS:
        text = (ROOT / doc).read_text(encoding="utf-8")
        found |= set(re.findall(r"--out ([\w./-]+)", text))
    return found


OUTS = _outs()


def _command(argv: list[str]) -> tuple[click.Command, list[str], click.Context]:
    """The (sub)command ``argv`` names, its own arguments and the parent context."""
    ctx = cli.make_context("noisydeq", list(argv))
    rest = [*(getattr(ctx, "_protected_args", None) or []), *ctx.args]
    command: click.Command = cli
    while isinstance(command, click.Group) and rest and not rest[0].startswith("-"):
        sub = command.get_command(ctx, rest[0])
        assert sub is not None, f"no command {rest[0]!r}"
        command, rest = sub, rest[1:]
        if isinstance(command, click.Group) and rest and not rest[0].startswith("-") \
                and rest[0] in command.list_commands(ctx):
            continue
        break
    return command, rest, ctx


def _check_experiment(command: click.Command, params: dict) -> None:
    """A bare first argument of run/study/... is a bundled experiment that command runs."""
    if command.name not in RUNS_EXPERIMENTS:
        return
    value = params.get("experiment", params.get("source"))
    text = "" if value is None else str(value)
    if not text or "/" in text or text.endswith(".toml"):
        return
    which = {b.name: b.command for b in bundled_experiments()}
    assert text in which, f"{text!r} is not a bundled experiment"
    assert which[text] == command.name, f"{text!r} is run by `noisydeq {which[text]}`"


BLOCKS = _lines("block")
INLINE = _lines("inline")


def test_the_docs_show_commands():
    """The extraction finds the commands (it cannot silently check nothing)."""
    assert len(BLOCKS) >= 40 and len(INLINE) >= 80, (len(BLOCKS), len(INLINE))


@pytest.mark.parametrize("where,command", BLOCKS, ids=[w for w, _ in BLOCKS])
def test_block_command_parses(where, command, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = _argv(command, tmp_path)
    if command.startswith(FIG13):
        assert argv[len(FIG13.split()) - 1] in {b.name for b in bundled_experiments()}
        return
    target, rest, parent = _command(argv)
    ctx = target.make_context(target.name, rest, parent=parent)  # raises on a bad option
    assert not ctx.args, f"{where}: unparsed tokens {ctx.args} in {command!r}"
    _check_experiment(target, ctx.params)


@pytest.mark.parametrize("where,command", INLINE, ids=[w for w, _ in INLINE])
def test_inline_command_names_real_options(where, command, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = _argv(command, tmp_path)
    if command.startswith(FIG13):
        name = argv[len(FIG13.split()) - 1] if len(argv) >= len(FIG13.split()) else ""
        assert not name or name in {b.name for b in bundled_experiments()}, where
        return
    if "COMMAND" in argv or all(t.startswith("-") for t in argv):
        named = {t for t in argv if t.startswith("--")}  # `noisydeq --tracker`: the group's
        assert named <= {o for p in cli.params for o in p.opts}, where
        return
    target, rest, parent = _command(argv)
    own = {o for p in target.params for o in [*getattr(p, "opts", []),
                                              *getattr(p, "secondary_opts", [])]}
    named = {t.split("=")[0] for t in rest if t.startswith("--")}
    assert named <= own, f"{where}: `{command}` names {sorted(named - own)}"
    bare = [t for t in rest if not t.startswith("-")]
    if bare and target.name in RUNS_EXPERIMENTS:
        try:
            ctx = target.make_context(target.name, rest, parent=parent,
                                      resilient_parsing=True)
        except click.UsageError:
            return
        _check_experiment(target, ctx.params)


def _set_keys(command: str) -> list[str]:
    """The KEY of each ``--set KEY=VALUE`` (or ``--set 'KEY=VALUE'``) in ``command``."""
    return re.findall(r"--set\s+['\"]?([A-Za-z_][\w.]*)=", command)


SETS = [(w, c) for w, c in BLOCKS + INLINE
        if _set_keys(c) and c.split()[1] in ("sweep", "run", "study", "adversarial")]


def test_the_docs_show_set_overrides():
    assert len(SETS) >= 20, len(SETS)


@pytest.mark.parametrize("where,command", SETS, ids=[w for w, _ in SETS])
def test_set_overrides_name_real_fields(where, command):
    """Each ``--set KEY=...`` a documented command gives names a field of the spec it
    overrides (parsing alone accepts any key: a renamed field would only fail when run)."""
    from noisydeq.analysis.adversarial_experiment import PARTS, GridSpec
    from noisydeq.specs.family import FamilySpec
    from noisydeq.specs.study import StudySpec
    from noisydeq.specs.sweep import SweepSpec
    from noisydeq.specs.training import TrainSpec

    name = command.split()[1]
    for key in _set_keys(command):
        head, _, rest = key.partition(".")
        if name in ("sweep", "run"):
            assert head in SweepSpec.model_fields, f"{where}: {key} is no SweepSpec field"
        elif name == "study":
            assert head in StudySpec.model_fields, f"{where}: {key} is no StudySpec field"
        else:
            assert head in PARTS, f"{where}: {key}: no part {head!r} ({PARTS})"
            sub = rest.split(".")[0]
            spec = {"grid": GridSpec, "family": FamilySpec, "train": TrainSpec}.get(head)
            if spec is not None:
                assert sub in spec.model_fields, f"{where}: {key} is no {spec.__name__} field"
