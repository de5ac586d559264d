"""Every Python block of docs/python-api.md runs, in order, in one namespace (a notebook
session), in a fresh folder with its own cache: a block that no longer runs, or prints
something that an ``assert`` of the page contradicts, fails here."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "python-api.md"


def python_blocks(text: str) -> list[tuple[int, str]]:
    """(first line number, code) of each fenced ```python block of ``text``."""
    blocks, code, start = [], None, 0
    for i, line in enumerate(text.splitlines(), 1):
        if code is None and re.match(r"\s*```python\s*$", line):
            code, start = [], i + 1
        elif code is not None and re.match(r"\s*```\s*$", line):
            blocks.append((start, "\n".join(code) + "\n"))
            code = None
        elif code is not None:
            code.append(line)
    assert code is None, f"{PAGE.name}: a python block opened at line {start} never closes"
    return blocks


def test_the_page_is_linked_and_has_blocks():
    assert "docs/python-api.md" in (ROOT / "README.md").read_text(encoding="utf-8")
    assert "python-api.md" in (ROOT / "docs" / "index.md").read_text(encoding="utf-8")
    assert len(python_blocks(PAGE.read_text(encoding="utf-8"))) >= 8


def test_every_python_block_of_the_page_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NOISYDEQ_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("NOISYDEQ_THREADS", "1")
    monkeypatch.setenv("NOISYDEQ_JOBS", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    namespace: dict = {"__name__": "__docs__"}
    for line, code in python_blocks(PAGE.read_text(encoding="utf-8")):
        try:
            exec(compile(code, f"{PAGE}:{line}", "exec"), namespace)  # noqa: S102
        except Exception as err:  # name the block that failed
            pytest.fail(f"docs/python-api.md, the block at line {line}: "
                        f"{type(err).__name__}: {err}")
    out = capsys.readouterr().out
    assert "SweepResult(path='runs/small', rows=32, computed_cells=8" in out
    assert "0 8" in out  # the resumed sweep computed nothing
    assert (tmp_path / "accuracy_vs_snr.png").is_file()
