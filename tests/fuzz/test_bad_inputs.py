"""Every malformed input of every command and file type: one readable line, a non-zero exit,
no traceback, and nothing written — neither in the output nor in the cache directory.

The commands run in-process (``noisydeq.cli.main``) in a fresh directory holding only the
case's input files; the directory tree (names, sizes, modification times) must be the same
afterwards and the model cache (``$NOISYDEQ_CACHE``, inside it) must not exist.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from noisydeq.cli import main
from tests.fuzz.cases import all_cases

CASES = all_cases()


def test_at_least_150_distinct_bad_inputs():
    assert len(CASES) >= 150, len(CASES)
    assert len({c.id for c in CASES}) == len(CASES)
    assert {c.argv[0] for c in CASES} == {"sweep", "train", "run", "devices", "sensitivity",
                                          "spectrum", "solvers", "attack", "lyapunov",
                                          "study"}


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size if p.is_file() else -1,
                                       p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*"))}


def _materialise(case, d: Path) -> list[str]:
    for name, content in case.files.items():
        if callable(content):
            content(d)
            continue
        path = d / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    return [a.replace("{d}", str(d)) for a in case.argv]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_and_writes_nothing(case, tmp_path, monkeypatch, capsys):
    d = tmp_path / "case"
    d.mkdir()
    monkeypatch.chdir(d)
    monkeypatch.setenv("NOISYDEQ_CACHE", str(d / "cache"))
    monkeypatch.delenv("NOISYDEQ_MNIST_DIR", raising=False)
    argv = _materialise(case, d)
    before = _tree(d)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    out, err = capsys.readouterr()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert exit_.value.code not in (0, None), (out, err)
    assert "Traceback" not in err and "Traceback" not in out
    assert len(lines) == 1, err
    assert lines[0].startswith("noisydeq: error: "), lines[0]  # not an "internal error"
    assert case.needle in lines[0], lines[0]
    assert out == "", out
    assert _tree(d) == before, "the command wrote files"
    assert not (d / "cache").exists()
