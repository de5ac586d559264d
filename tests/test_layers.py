"""Every import inside ``noisydeq/`` points down a floor and none closes a circle.

The floors and the known exceptions are the tables of docs/architecture.md ("Layers"),
read here, so the page and the code cannot drift apart. Imports are read with ``ast``
(nothing is imported): every ``import`` / ``from ... import`` of a module of the package,
at the top of a file or inside a function (``importlib.import_module`` calls are not
followed: ``cli`` loads ``commands`` that way, downwards).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "architecture.md"
ROOT = "noisydeq"


def modules(package_dir: Path) -> dict[str, tuple[Path, bool]]:
    """Dotted name -> (file, is package) of every module under ``package_dir``."""
    out = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return out


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (``from pkg import sub`` is ``pkg.sub``
    when that is a module, else ``pkg``)."""
    mods = modules(package_dir)
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, (path, is_pkg) in mods.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the module's package, level - 1 up
                    pkg = mod.split(".")[: None if is_pkg else -1]
                    pkg = pkg[: len(pkg) - node.level + 1]
                    base = ".".join([*pkg, base] if base else pkg)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base
                           for a in node.names]
            else:
                continue
            graph[mod].update(t for t in targets if t in mods and t != mod)
    return graph


def read_layers(text: str) -> tuple[dict[str, int], dict[tuple[str, str], str]]:
    """(module name -> floor, (importer, imported) -> reason) from the page's tables."""
    block = text.split("<!-- layers:begin -->")[1].split("<!-- layers:end -->")[0]
    floors: dict[str, int] = {}
    exceptions: dict[tuple[str, str], str] = {}
    for line in block.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].isdigit():
            for name in re.findall(r"`([\w.]+)`", cells[2]):
                assert name not in floors, f"{name} is on two floors"
                floors[name] = int(cells[0])
        elif len(cells) == 3 and cells[0].startswith("`") and cells[1].startswith("`"):
            exceptions[(cells[0].strip("`"), cells[1].strip("`"))] = cells[2]
    return floors, exceptions


def floor_of(module: str, floors: dict[str, int]) -> int | None:
    """The floor of the most specific row naming ``module`` or a package above it (the bare
    root name stands for the root ``__init__`` only)."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        name = ".".join(parts[:n])
        if name in floors and (n == len(parts) or n > 1):
            return floors[name]
    return None


def upward(graph: dict[str, set[str]], floors: dict[str, int],
           allowed: set[tuple[str, str]]) -> list[str]:
    """Every import from a lower floor to a higher one that is not a known exception."""
    found = []
    for mod in sorted(graph):
        for dep in sorted(graph[mod]):
            if (mod, dep) not in allowed and floor_of(dep, floors) > floor_of(mod, floors):
                found.append(f"{mod} (floor {floor_of(mod, floors)}) imports {dep} "
                             f"(floor {floor_of(dep, floors)})")
    return found


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:  # recursion depth ≤ number of modules (a few hundred)
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return groups


def without(graph: dict[str, set[str]], edges: set[tuple[str, str]]) -> dict[str, set[str]]:
    return {m: {d for d in deps if (m, d) not in edges} for m, deps in graph.items()}


@pytest.fixture(scope="module")
def house() -> tuple[dict[str, set[str]], dict[str, int], dict[tuple[str, str], str]]:
    floors, exceptions = read_layers(DOC.read_text(encoding="utf-8"))
    return import_graph(REPO / ROOT), floors, exceptions


def test_every_module_has_a_floor(house):
    graph, floors, _ = house
    assert floors, "no layer table found in docs/architecture.md"
    missing = [m for m in graph if floor_of(m, floors) is None]
    assert not missing, f"modules on no floor of docs/architecture.md (Layers): {missing}"
    unused = [name for name in floors if name not in graph
              and not any(m.startswith(name + ".") for m in graph)]
    assert not unused, f"the layer table names modules that do not exist: {unused}"


def test_no_import_points_up_a_floor(house):
    graph, floors, exceptions = house
    found = upward(graph, floors, set(exceptions))
    assert not found, "imports pointing up a floor:\n" + "\n".join(found)


def test_known_exceptions_are_real_and_explained(house):
    graph, floors, exceptions = house
    for (mod, dep), why in exceptions.items():
        assert len(why.split()) >= 5, f"{mod} -> {dep}: the exception needs its reason"
        assert dep in graph.get(mod, ()), f"{mod} no longer imports {dep}: drop the exception"
        assert floor_of(dep, floors) > floor_of(mod, floors), f"{mod} -> {dep} points down"


def test_no_import_circle(house):
    graph, _, exceptions = house
    found = circles(without(graph, set(exceptions)))
    assert not found, "import circles:\n" + "\n".join(" <-> ".join(g) for g in found)


def test_the_checks_catch_a_circle_and_an_upward_import(tmp_path):
    """The checker itself, on a made-up package: a circle (one import inside a function,
    one relative) and an import from floor 0 to floor 1 are both found."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "low.py").write_text("import os\nfrom pkg.sub import high\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "high.py").write_text("def f():\n    from ..sub import other\n")
    (pkg / "sub" / "other.py").write_text("from pkg.sub.high import f\n")
    graph = import_graph(pkg)
    assert graph["pkg.low"] == {"pkg.sub.high"}
    assert graph["pkg.sub.high"] == {"pkg.sub.other"}
    assert circles(graph) == [["pkg.sub.high", "pkg.sub.other"]]
    floors, exceptions = read_layers(
        "<!-- layers:begin -->\n| floor | layer | modules |\n|---|---|---|\n"
        "| 0 | low | `pkg`, `pkg.low` |\n| 1 | high | `pkg.sub` |\n"
        "| from | to | why |\n|---|---|---|\n"
        "| `pkg.sub.other` | `pkg.low` | a reason in words |\n<!-- layers:end -->\n"
    )
    assert floor_of("pkg.sub.other", floors) == 1 and floor_of("pkg.x", floors) is None
    assert upward(graph, floors, set(exceptions)) == [
        "pkg.low (floor 0) imports pkg.sub.high (floor 1)"
    ]
