"""Every command's ``--help`` shows examples, and every example parses: its options exist,
their values pass click's types, and bundled experiment names resolve."""

from __future__ import annotations

import re
import shlex

import click
import pytest

from noisydeq.cli import cli

COMMANDS = cli.list_commands(click.Context(cli))


def _examples(command: click.Command) -> list[list[str]]:
    """The example command lines under the ``Examples:`` heading of the help text."""
    text = command.help or ""
    block = text.split("Examples:", 1)[1] if "Examples:" in text else ""
    lines = []
    for line in block.splitlines()[1:]:  # the lines after the heading
        if not line.strip():
            break
        lines.append(shlex.split(line.strip(), comments=True))  # `# ...` explains
    return lines


def test_the_command_list_is_complete() -> None:
    assert {"sweep", "train", "run", "attack", "certify", "study", "runs"} <= set(COMMANDS)


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_help_has_examples_that_parse(name, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    command = cli.get_command(click.Context(cli), name)
    examples = _examples(command)
    assert examples, f"`noisydeq {name} --help` has no example"
    for argv in examples:
        assert argv[:2] == ["noisydeq", name], argv
        for token in argv:
            if re.fullmatch(r"runs/[\w.-]+", token):  # example run dirs: make them exist
                (tmp_path / token).mkdir(parents=True, exist_ok=True)
        ctx = command.make_context(name, argv[2:])  # raises on unknown options/bad values
        assert not ctx.args, f"unparsed tokens in {argv}: {ctx.args}"


@pytest.mark.parametrize("name,argument", [("run", "experiment"), ("study", "experiment"),
                                           ("adversarial", "experiment"),
                                           ("lyapunov", "experiment"), ("certify", "source")])
def test_example_experiment_names_are_bundled(name, argument, tmp_path, monkeypatch) -> None:
    """A bare name in an example (not a path or a .toml file) is a bundled experiment."""
    from noisydeq.bundled import experiment_names

    monkeypatch.chdir(tmp_path)
    command = cli.get_command(click.Context(cli), name)
    bundled = set(experiment_names())
    named = 0
    for argv in _examples(command):
        value = command.make_context(name, argv[2:]).params.get(argument)
        text = str(value) if value is not None else ""
        if text and "/" not in text and not text.endswith(".toml"):
            assert text in bundled, f"{argv}: {text!r} is not a bundled experiment"
            named += 1
    assert named, f"no example of `noisydeq {name}` names a bundled experiment"


def test_family_help_names_every_kind_of_directory_it_accepts(tmp_path) -> None:
    """``--family`` reads any directory holding checkpoints, a study run's ``models/<id>/``
    among them (``noisydeq attack --family`` on a study: tests/attacks/test_per_position.py),
    but its help named sweep, run and train only."""
    from noisydeq.analysis.locate import locate

    for name in ("attack", "sensitivity", "spectrum", "solvers"):
        command = cli.get_command(click.Context(cli), name)
        option = next(p for p in command.params if p.name == "family")
        assert "'noisydeq study'" in option.help and "'noisydeq sweep'" in option.help, name
    ckpt = tmp_path / "study" / "models" / "deq" / "model.safetensors"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"")
    (tmp_path / "study" / "study.toml").write_text("")
    assert locate(tmp_path / "study").checkpoints == [ckpt]


#: options of other programs a help text may name: ``ray start --head``, and the sweep's
#: ``--train-device`` in ``noisydeq solvers --member-train-device``
OTHER_PROGRAMS = {"--head", "--train-device"}


def _own_options(command: click.Command) -> set[str]:
    """The command's options; a group's help may also name its subcommands' options."""
    own = {o for p in command.params for o in [*getattr(p, "opts", []),
                                              *getattr(p, "secondary_opts", [])]}
    for sub in getattr(command, "commands", {}).values():
        own |= _own_options(sub)
    return own


@pytest.mark.parametrize("name", COMMANDS)
def test_help_names_only_options_the_command_has(name) -> None:
    """An option a help text tells the reader to use (``--jobs``) exists on that command."""
    command = cli.get_command(click.Context(cli), name)
    own = _own_options(command) | OTHER_PROGRAMS
    texts = [command.help or ""] + [getattr(p, "help", None) or "" for p in command.params]
    named = {m for t in texts for m in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", t)}
    assert not named - own, f"`noisydeq {name} --help` names {sorted(named - own)}"


@pytest.mark.parametrize("name", COMMANDS)
def test_every_option_says_what_it_does(name) -> None:
    command = cli.get_command(click.Context(cli), name)
    bare = [p.opts[0] for p in command.params
            if isinstance(p, click.Option) and not p.hidden and not p.help]
    assert not bare, f"`noisydeq {name} --help`: no help for {bare}"


@pytest.mark.parametrize("name", ["sweep", "train"])
def test_task_help_names_every_task(name) -> None:
    from noisydeq.specs.task_names import TASK_NAMES

    command = cli.get_command(click.Context(cli), name)
    text = next(p.help for p in command.params if p.name == "task")
    missing = [t for t in TASK_NAMES if not re.search(rf"\b{t}\b", text)]
    assert not missing, f"`noisydeq {name} --task` help lacks {missing}"


@pytest.mark.parametrize("name,experiment,fail_fast", [
    ("run", "regression-identity", ["--set", "hiddn=3"]),
    ("study", "algorithmic-mazes", ["--set", "seedz=[0]"]),
    ("certify", "certify-mnist", ["--data-dir", "no-such-dir"]),
    ("adversarial", "adversarial-fig3", ["--set", "grid.seedz=[0]"])])
def test_quick_and_full_together_are_refused(name, experiment, fail_fast, tmp_path,
                                             monkeypatch):
    """The two flags shared one value, so the last won silently: `noisydeq run NAME --quick
    --full` started the paper-scale variant (hours) without a word. (``fail_fast`` stops
    a command that does not refuse them at once, instead of running it.)"""
    from click.testing import CliRunner

    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(cli, [name, experiment, "--quick", "--full", *fail_fast])
    assert res.exit_code == 2 and "--quick and --full: give one of them" in res.output
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("flags,variant", [([], "quick"), (["--quick"], "quick"),
                                           (["--full"], "full")])
def test_the_variant_flag_reaches_the_experiment(flags, variant, tmp_path, monkeypatch):
    from click.testing import CliRunner

    monkeypatch.chdir(tmp_path)
    for name, experiment, key in [("run", "regression-identity", "hiddn=3"),
                                  ("study", "algorithmic-mazes", "seedz=[0]")]:
        res = CliRunner().invoke(cli, [name, experiment, *flags, "--set", key])
        assert res.exit_code != 0
        assert f"[{variant}] --set: unknown key" in str(res.exception), (name, res.exception)
