"""The CLI loads torch, aihwkit and matplotlib only for the commands that compute: help and
listing commands start without them (a fresh interpreter each, so nothing is preloaded)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "aihwkit", "matplotlib")
PROBE = """
import json, sys
from noisydeq.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(json.dumps([m for m in {heavy!r} if m in sys.modules]))
"""


def _heavy_modules(args: list[str], tmp_path) -> list[str]:
    code = PROBE.format(heavy=HEAVY)
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("args", [["--help"], ["runs", "--help"], ["table", "--help"],
                                  ["devices", "--help"]])
def test_help_does_not_import_torch_aihwkit_or_matplotlib(args, tmp_path) -> None:
    assert _heavy_modules(args, tmp_path) == []


def test_the_probe_sees_torch_when_a_command_needs_it(tmp_path) -> None:
    """The same probe on `noisydeq devices` (it measures every preset): torch is loaded, so
    the check above can fail."""
    assert "torch" in _heavy_modules(["devices", "ideal"], tmp_path)


def test_help_lists_commands_without_importing_their_modules(tmp_path) -> None:
    """`noisydeq --help` lists the commands from cli.COMMANDS: no command module and no
    pydantic spec is imported (they were ~0.2 s of a 0.25 s help)."""
    code = PROBE.format(heavy=("pydantic", "noisydeq.specs", "noisydeq.commands.sweep",
                               "noisydeq.commands.runs"))
    proc = subprocess.run([sys.executable, "-c", code, "--help"], capture_output=True,
                          text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "sweep" in proc.stdout and "runs" in proc.stdout
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []


def test_the_help_table_matches_the_commands() -> None:
    """cli.COMMANDS names every command of every module, in order, with the first paragraph
    of its help: the listing equals click's own at every width."""
    from click.utils import make_default_short_help

    from noisydeq.cli import COMMAND_MODULES, COMMANDS, _module_commands

    real = [(c.name, m, c) for m in COMMAND_MODULES for c in _module_commands(m)
            if not c.hidden]
    assert [(n, m) for n, m, _ in real] == [(n, m) for n, m, _ in COMMANDS]
    for (_, _, cmd), (_, _, text) in zip(real, COMMANDS, strict=True):
        for limit in (30, 45, 68, 120, 400):
            assert cmd.get_short_help_str(limit) == make_default_short_help(text, limit)
