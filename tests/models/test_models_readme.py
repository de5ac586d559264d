"""The README's "Python API" example runs as printed."""

import contextlib
import io
import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def python_api_block() -> str:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Python API", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, flags=re.S)
    assert match, "README '## Python API' has no python code block"
    return match.group(1)


def test_readme_python_api_example_runs():
    code = python_api_block()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, str(README), "exec"), {"__name__": "readme"})
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("converged: all 16 samples"), lines
    assert lines[-1] == "287 82656 82560"  # the counts printed in the README comment
