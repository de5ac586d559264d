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
