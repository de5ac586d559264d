"""CHANGELOG.md's table "Cache and file formats" cannot go stale silently.

Each constant the table names as `` `noisydeq.module.NAME` = `value` `` must hold that value
in the code (read from the module's source, as ``cachedir.current.constant`` does, so no
torch is imported), and every format / version / schema constant of the package must be
named there (a new format is a line a user upgrading needs). Library version pins are
exempt by name below.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "noisydeq"
CHANGELOG = ROOT / "CHANGELOG.md"
#: a constant named in the table and its value: `noisydeq.a.b.NAME` = `value`
NAMED = re.compile(r"`(noisydeq(?:\.\w+)+)\.([A-Z][A-Z0-9_]*)` = `([^`]*)`")
#: the top-level names that are format, version or schema constants
CONSTANT = re.compile(r"(?:[A-Z0-9]+_)*(?:FORMAT|VERSION|SCHEMA)")
#: constants of that shape that are no format of noisydeq's own files
EXEMPT = {
    "noisydeq.cluster.RAY_VERSION": "the Ray version pinned for clusters",
    "noisydeq.hardware.rram_program.AIHWKIT_VERSION": "the aihwkit version matched",
    "noisydeq.attacks.library.VERSION": "the torchattacks version pinned",
    "noisydeq.cachedir.current.SCHEMA": "a pointer to train_config.TRAIN_SCHEMA",
}


def _table() -> str:
    """The section "Cache and file formats" of CHANGELOG.md, up to its dated sub-headings."""
    text = CHANGELOG.read_text(encoding="utf-8")
    start = text.index("### Cache and file formats")
    end = text.index("\n#### ", start)
    return text[start:end]


def _module_path(module: str) -> Path:
    rel = Path(*module.split(".")[1:])
    for path in (PACKAGE / rel.with_suffix(".py"), PACKAGE / rel / "__init__.py"):
        if path.is_file():
            return path
    raise AssertionError(f"CHANGELOG.md names {module}, which is no module of the package")


def _constants(path: Path) -> dict[str, object]:
    """The top-level ``NAME = <literal>`` assignments of a module (others are skipped)."""
    out = {}
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        try:
            literal = ast.literal_eval(value)
        except ValueError:
            continue
        out.update({t.id: literal for t in targets if isinstance(t, ast.Name)})
    return out


def _named() -> list[tuple[str, str, str]]:
    return NAMED.findall(_table())


def test_the_table_names_constants():
    names = {f"{m}.{n}" for m, n, _ in _named()}
    assert len(names) >= 10, names  # the parser still reads the table


@pytest.mark.parametrize(("module", "name", "value"), _named(),
                         ids=[f"{m}.{n}" for m, n, _ in _named()])
def test_each_named_constant_has_its_value_in_the_code(module, name, value):
    constants = _constants(_module_path(module))
    assert name in constants, f"{module} has no constant {name} (CHANGELOG.md names it)"
    assert str(constants[name]) == value, (
        f"CHANGELOG.md says {module}.{name} = {value!r}, the code has {constants[name]!r}: "
        "update the table (and say when and what a user does)")


def test_every_format_constant_of_the_package_is_in_the_table():
    named = {f"{m}.{n}" for m, n, _ in _named()}
    found = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        found |= {f"{module}.{name}" for name in _constants(path) if CONSTANT.fullmatch(name)}
    assert "noisydeq.hardware.calibration_store.FORMAT" in found  # the scan finds them
    missing = sorted(found - named - set(EXEMPT))
    assert not missing, f"format/version constants not in CHANGELOG.md's table: {missing}"
    assert not set(EXEMPT) - found, "an exemption names a constant that no longer exists"


def test_readme_and_docs_index_link_the_changelog():
    assert "](CHANGELOG.md)" in (ROOT / "README.md").read_text(encoding="utf-8")
    assert "](../CHANGELOG.md)" in (ROOT / "docs" / "index.md").read_text(encoding="utf-8")
