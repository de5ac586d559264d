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
