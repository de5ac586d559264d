"""A data directory given twice, by ``--data-dir`` and by ``--set data_dir=...``: every
command that takes both (found by walking the click tree) refuses two different values in
one line naming both, before anything is read or written, and takes the same value twice
as it takes either alone. ``study`` and ``adversarial`` let ``--data-dir`` win, while
``run``, ``sweep`` and ``attack`` let ``--set`` win (``specs.task_names.one_data_dir``)."""

from __future__ import annotations

from pathlib import Path

import click
import pytest

from noisydeq.errors import NoisyDEQError
from noisydeq.specs.task_names import one_data_dir
from tests.fuzz.test_click_tree import BASE, _commands
from tests.fuzz.test_list_repeats import _run

#: the spec key ``--set`` gives the directory by, where it is not ``data_dir``
KEY = {"adversarial": "family.data_dir"}


def _both() -> list[str]:
    out = []
    for path, cmd in _commands():
        flags = {o for p in cmd.params if isinstance(p, click.Option) for o in p.opts}
        if {"--data-dir", "--set"} <= flags:
            out.append(path)
    return out


COMMANDS = _both()


def test_the_walk_finds_the_commands_that_take_both():
    assert sorted(COMMANDS) == ["adversarial", "attack", "run", "study", "sweep"], COMMANDS


def _argv(path: str, d: Path, *extra: str) -> list[str]:
    return [*path.split(), *[a.replace("{d}", str(d)) for a in BASE[path]], *extra]


@pytest.mark.parametrize("path", COMMANDS)
def test_two_different_data_dirs_are_one_line_naming_both(path, tmp_path, monkeypatch, capsys):
    (tmp_path / "other").mkdir()
    key = KEY.get(path, "data_dir")
    one, two = str(tmp_path / "empty"), str(tmp_path / "other")
    line = _run(_argv(path, tmp_path, "--data-dir", one, "--set", f"{key}={two!r}"),
                tmp_path, monkeypatch, capsys)
    assert line == (f"noisydeq: error: --data-dir '{one}' and --set {key}='{two}': two "
                    "different data directories; give one of them (or the same in both)"), line


@pytest.mark.parametrize("path", COMMANDS)
def test_the_same_data_dir_twice_is_taken_as_either_alone(path, tmp_path, monkeypatch, capsys):
    """The run goes on to its next check (here each refuses something later: a task that
    reads no data files, an empty family, another command's file), as with one of them."""
    key = KEY.get(path, "data_dir")
    one = str(tmp_path / "empty")
    option, assignment = ["--data-dir", one], ["--set", f"{key}={one!r}"]
    both = _run(_argv(path, tmp_path, *option, *assignment), tmp_path, monkeypatch, capsys)
    alone = {_run(_argv(path, tmp_path, *given), tmp_path, monkeypatch, capsys)
             for given in (option, assignment)}
    assert "two different data directories" not in both and both in alone, (both, alone)


def test_the_same_directory_spelt_otherwise_is_the_same(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "d").mkdir()
    for option, value in ((str(tmp_path / "d"), f"{tmp_path}/x/../d/"), ("~/d", "~/./d"),
                          ("", ""), ("", None)):
        one_data_dir(option, {"data_dir": value})
    one_data_dir(None, {"data_dir": "elsewhere"})  # one of them only
    one_data_dir("elsewhere", {"seeds": [0]})
    for option, value in (("~/d", "d2"), ("", "d"), ("d", ""), ("d", 5), ("d", True)):
        with pytest.raises(NoisyDEQError, match="two different data directories"):
            one_data_dir(option, {"data_dir": value})
