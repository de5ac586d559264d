"""What the running code is, as the on-disk cache entries record it — without torch.

The device caches (:mod:`noisydeq.hardware.calibration_store`, :mod:`~noisydeq.hardware.
chip_store`), the figure cache and a sweep's cell keys hold the code that computes them
(:func:`code_fingerprint`), the torch version and the machine, among others; the cells of
attack runs, studies, certify runs and LyaDEQ experiments record it beside their key
(:attr:`noisydeq.results.LockedDir.code_kind`); ``noisydeq
cache`` compares what an entry recorded with what this process would key
(:func:`torch_version`, :func:`machine`) to tell the entries no run of this code can hit
again, without paying for ``import torch``.

The fingerprint is a function of what the code computes, not of its text: every module's
syntax tree without docstrings (so comments, docstrings, blank lines and layout do not
count). Each kind of entry (:data:`KINDS`) hashes only the modules its computing code can
import: the transitive closure of every ``import`` / ``from … import`` anywhere in a module
(in functions too) from the kind's roots, the packages above each module included
(:func:`closure`). Imports by a name read at run time are bounded where a constant names
them (``import_module(f"noisydeq.sweep.{home}")``: every module below ``noisydeq.sweep``);
any other (a file, entry points, ``exec``, an unknown name) makes the kind the whole
package. A module-level ``__getattr__`` importing under ``if name == "X"`` (the root
package's lazy ``load_results``) counts where a module of the closure may ask for ``X``
(:func:`_asks`). Objects a kind's code receives from its caller (a model handed to the
calibration) are covered by naming their modules as roots; ``tests/
test_fingerprint_kinds.py`` checks that every ``nn.Module`` and ``autograd.Function`` class
of the package is under the device roots and every caller of the figure cache under the
figure roots.

Measured on this package (218 modules, 2026-12-08): ``device`` reaches 97 modules (44 %),
``sweep`` 144 (66 %), ``figures`` 160 (73 %); without the ``__getattr__`` rule (its import
followed everywhere) 152, 164 and 165. ``attacks`` 154 (71 %), ``studies`` 144 (66 %),
``certify`` 149 (68 %), ``lyapunov`` 148 (68 %). Outside every kind: the CLI and its
commands, :mod:`noisydeq.cachedir`, :mod:`noisydeq.loading`, :mod:`noisydeq.compare`,
:mod:`noisydeq.config` and a few analyses (``analysis.runs``, ``fig13``, ...) — an edit
there keeps every cached calibration, chip, figure and every cell; an edit to
:mod:`noisydeq.plots` keeps the calibrations and chips.

Parsing the package's ~220 modules and reading their imports takes ~0.8 CPU s (the syntax
alone ~0.4), so the values are memoised in the cache under the digest of the modules'
bytes (:data:`MEMO_DIRECTORY`), which takes ~6 ms to compute: a fresh process pays about
that (plus ~10 ms of imports where :mod:`noisydeq.store` is not imported yet).
"""

from __future__ import annotations

import ast
import functools
import hashlib
import platform
import re
import sys
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path

#: the memo's directory under the cache (``runtime.cache_root``): one small signed JSON file
#: per code state and Python seen, ``<32 hex>.json``, the newest :data:`MEMO_KEEP` kept
MEMO_DIRECTORY = "code"
#: format of a memo file (part of its name: a new format is a new file); 2: one
#: fingerprint per kind (``codes``)
MEMO_FORMAT = "noisydeq-code-memo/2"
#: how many memo files the cache keeps (the oldest are deleted when one is written)
MEMO_KEEP = 64
#: a memo file's name
MEMO_NAME = re.compile(r"^[0-9a-f]{32}\.json$")
_FINGERPRINT = re.compile(r"^[0-9a-f]{16}$")


def package_root() -> Path:
    """The directory of the ``noisydeq`` package whose code is fingerprinted."""
    import noisydeq

    return Path(noisydeq.__file__).parent


def _modules(root: Path) -> list[tuple[str, bytes]]:
    """(path relative to ``root``, POSIX form; bytes) of every ``.py`` file below ``root``,
    sorted by path."""
    return sorted((p.relative_to(root).as_posix(), p.read_bytes()) for p in root.rglob("*.py"))


def raw_digest(modules: list[tuple[str, bytes]]) -> str:
    """Hash of the modules' paths and bytes: any edit changes it (the memo's key)."""
    h = hashlib.blake2b(digest_size=8)
    for rel, data in modules:
        h.update(rel.encode() + b"\0" + len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def _is_string_statement(node: ast.AST) -> bool:
    """A statement that is a bare string: a docstring (of a module, class or function) or
    any other string expression statement, which the compiler drops."""
    return (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str))


def _fstring_parts(values: list[ast.expr]) -> list[ast.expr]:
    """An f-string's parts with adjacent literal parts joined and empty ones dropped: the
    Pythons split them differently (3.12.1 ends a format spec with an empty literal)."""
    out: list[ast.expr] = []
    for part in values:
        if isinstance(part, ast.Constant) and isinstance(part.value, str):
            if not part.value:
                continue
            if out and isinstance(out[-1], ast.Constant) and isinstance(out[-1].value, str):
                out[-1] = ast.Constant(value=out[-1].value + part.value)
                continue
        out.append(part)
    return out


def tree_text(tree: ast.AST) -> str:
    """The syntax tree ``tree`` as text, without docstrings (every bare-string statement),
    positions (line, column) or type comments; a field that is ``None`` or an empty list is
    left out, a constant's ``u`` prefix (``kind``) ignored and an f-string's literal parts
    joined, so the text does not depend on fields newer Pythons add with empty defaults
    (e.g. 3.12's ``type_params``) nor on how they split an f-string (the package gives the
    same fingerprint under Python 3.9 to 3.13)."""
    out: list[str] = []

    def walk(value: object) -> None:
        if isinstance(value, ast.AST):
            out.append(type(value).__name__ + "(")
            for name in value._fields:
                field = getattr(value, name, None)
                if isinstance(value, ast.JoinedStr) and name == "values":
                    field = _fstring_parts(field)
                if field is None or field == [] or name == "type_comment" or (
                        name == "kind" and isinstance(value, ast.Constant)):
                    continue
                out.append(name + "=")
                walk(field)
                out.append(",")
            out.append(")")
        elif isinstance(value, list):
            out.append("[")
            for item in value:
                if not _is_string_statement(item):
                    walk(item)
                    out.append(",")
            out.append("]")
        else:  # a constant's value, an identifier, an operator's int flags
            out.append(repr(value))

    walk(tree)
    return "".join(out)


def _module_text(rel: str, data: bytes) -> tuple[bytes, ast.Module | None]:
    """(what enters a digest for the module ``rel``: its :func:`tree_text`, or its bytes
    when it does not parse; its syntax tree, None when it does not parse)."""
    try:
        tree = ast.parse(data, filename=rel)
    except (SyntaxError, ValueError):
        return b"unparsed\0" + data, None
    return tree_text(tree).encode(), tree


def _digest(texts: list[tuple[str, bytes]]) -> str:
    """Hash of (relative path, text) pairs, in the order given (16 hex)."""
    h = hashlib.blake2b(digest_size=8)
    for rel, text in texts:
        h.update(rel.encode() + b"\0" + len(text).to_bytes(8, "little"))
        h.update(text)
    return h.hexdigest()


def semantic_digest(modules: list[tuple[str, bytes]]) -> str:
    """Hash of each module's :func:`tree_text` with its relative path, in path order (16
    hex). A module that does not parse enters with its bytes."""
    return _digest([(rel, _module_text(rel, data)[0]) for rel, data in modules])


# --- what each kind of entry is computed by: import closures -------------------------------

#: the package's import name (the modules' dotted names are built on it)
PACKAGE = "noisydeq"


class Kind:
    """The code a kind of cache entry is computed by: the ``roots`` (dotted module names;
    one ending in ``.*`` names every module below that package, the package included) and
    every module they can import (:func:`closure`). (Plain classes here: ``dataclasses``
    would add ~7 ms to importing this module, which ``noisydeq cache`` pays.)"""

    __slots__ = ("roots",)

    def __init__(self, roots: tuple[str, ...]) -> None:
        self.roots = tuple(roots)

    def __repr__(self) -> str:
        return f"Kind({self.roots!r})"


#: where the objects a device entry's computation receives from its caller are defined:
#: every model, layer and autograd function class (``tests/test_fingerprint_kinds.py``
#: checks that every ``nn.Module`` / ``autograd.Function`` subclass of the package lives
#: in one), the solvers (chosen by name from their registry) and the noise models
_MODEL_CODE = ("noisydeq.models.*", "noisydeq.solvers.*", "noisydeq.hardware.*",
               "noisydeq.noise", "noisydeq.regulation.*", "noisydeq.attacks.adjoint",
               "noisydeq.attacks.estimators", "noisydeq.analysis.jacobian_ffw",
               "noisydeq.swept_model")
#: the kinds of code fingerprint (:func:`code_fingerprint`): ``package`` is every module
KINDS: dict[str, Kind] = {
    # calibration entries and programmed chips: the stores and the code of the objects
    # their caller (``noisydeq.sweep.hardware``) passes them — everything else it passes
    # (weights, model settings, device spec, chip seed, inputs, levels) is in their keys
    "device": Kind(("noisydeq.hardware.calibration_store", "noisydeq.hardware.chip_store",
                    *_MODEL_CODE)),
    # a sweep's cells (their keys' content digest): the sweep package (plan, evaluation,
    # the cells' writing) over the device code
    "sweep": Kind(("noisydeq.sweep.*", "noisydeq.results", "noisydeq.hardware.calibration_store",
                   "noisydeq.hardware.chip_store", *_MODEL_CODE)),
    # figure entries: the cache, the plots and every module that hands it a drawing
    # function (checked by the test: every caller of ``cached_figures``)
    "figures": Kind(("noisydeq.figure_cache", "noisydeq.plots", "noisydeq.sweep.write",
                     "noisydeq.studies.runner", "noisydeq.attacks.runner",
                     "noisydeq.analysis.adversarial_report",
                     "noisydeq.analysis.lyapunov_report")),
    # an attack run's cells (``noisydeq attack``, an adversarial experiment's evaluations;
    # they record their code, :class:`noisydeq.results.LockedDir`): the attack package (the
    # grid, the runner, its Ray workers) over the model code, and the callers' code that
    # loads or trains the members and the task they are handed — the family loader
    # (``noisydeq attack``) and the adversarial experiment
    "attacks": Kind(("noisydeq.attacks.*", "noisydeq.results", "noisydeq.analysis.family",
                     "noisydeq.analysis.adversarial_experiment", *_MODEL_CODE)),
    # a study's model evaluations: the studies package (it builds, trains and evaluates its
    # models from the recorded spec, on Ray too) over the model code
    "studies": Kind(("noisydeq.studies.*", "noisydeq.results", *_MODEL_CODE)),
    # a certify run's cells: the run and its Ray workers, the certification (plans, bounds,
    # the certify package) and the callers handing it models (the family loader, the
    # certify experiments), over the model code
    "certify": Kind(("noisydeq.analysis.certify_run", "noisydeq.analysis.certify_ray",
                     "noisydeq.analysis.certified", "noisydeq.analysis.certify_experiments",
                     "noisydeq.certify.*", "noisydeq.analysis.family", "noisydeq.results",
                     *_MODEL_CODE)),
    # a LyaDEQ experiment's attack cells: the experiment (it trains its models through the
    # family cache and attacks them) over the model code
    "lyapunov": Kind(("noisydeq.analysis.lyapunov_experiment", "noisydeq.results",
                      *_MODEL_CODE)),
}
#: calls that import code named at run time: their module name is read when it is a
#: string or starts with one (an f-string or ``+``): a name of a module of the package, or
#: a prefix ending in ``.`` (every module below that package); else the importing module's
#: imports are unbounded
_IMPORT_CALLS = frozenset({"import_module", "__import__", "find_spec", "run_module"})
#: calls that import or run code no static reading bounds (files, entry points, strings)
_UNBOUNDED_CALLS = frozenset({"spec_from_file_location", "spec_from_loader",
                              "module_from_spec", "exec_module", "load_module", "run_path",
                              "entry_points", "iter_modules", "walk_packages", "reload",
                              "SourceFileLoader", "load_entry_point"})
#: builtins that run code from a string (called by their bare name)
_UNBOUNDED_BUILTINS = frozenset({"exec", "eval", "compile"})


def module_name(rel: str) -> str:
    """The dotted name of the module at ``rel`` (relative to the package directory)."""
    parts = [PACKAGE, *rel[:-len(".py")].split("/")]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _call_name(func: ast.expr) -> str:
    return func.attr if isinstance(func, ast.Attribute) else (
        func.id if isinstance(func, ast.Name) else "")


def _leading_text(arg: ast.expr) -> tuple[str, bool]:
    """(the constant text ``arg`` starts with, whether that is all of it)."""
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return arg.value, True
    if isinstance(arg, ast.JoinedStr) and arg.values:
        first = arg.values[0]
        if isinstance(first, ast.Constant) and isinstance(first.value, str):
            return first.value, False
    if isinstance(arg, ast.BinOp) and isinstance(arg.op, ast.Add):
        text, _ = _leading_text(arg.left)
        return text, False
    return "", False


class Imports:
    """What one module can import (:func:`imports`)."""

    __slots__ = ("escapes", "found", "names", "served", "unbounded")

    def __init__(self, unbounded: bool = False) -> None:
        #: dotted names it imports anywhere — at its top, in functions, under conditions —
        #: and package prefixes ending in ``.`` (every module below), except ``served``
        self.found: set[str] = set()
        #: code imported or run by a name no static reading bounds (the kind falls back)
        self.unbounded = unbounded
        #: a module-level ``__getattr__``'s imports under ``if name == "X"`` (or ``in``):
        #: the names X -> the imports they run; they count where a module of the closure
        #: may ask this module for X (:func:`_asks`)
        self.served: dict[str, set[str]] = {}
        #: every identifier, attribute name, imported name and string constant (docstrings
        #: aside) it holds; ``*P`` for ``from P import *``
        self.names: set[str] = set()
        #: the dotted names of the objects it reaches through the names its imports bind
        #: that it uses otherwise than by reading a named attribute (passes on, assigns,
        #: hands to ``getattr``): a module there may be asked for any attribute; ``*``: any
        #: module (``sys.modules[name]``, ``import_module`` of a name not a constant)
        self.escapes: set[str] = set()


def _guard_names(test: ast.expr, param: str) -> set[str] | None:
    """The names ``if <param> == "X"`` / ``if <param> in ("X", ...)`` admits; None for
    any other test."""
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(
            test.left, ast.Name) and test.left.id == param):
        return None
    right = test.comparators[0]
    if isinstance(test.ops[0], ast.Eq) and isinstance(right, ast.Constant) and isinstance(
            right.value, str):
        return {right.value}
    if isinstance(test.ops[0], ast.In) and isinstance(right, (ast.Tuple, ast.List, ast.Set)) \
            and all(isinstance(e, ast.Constant) and isinstance(e.value, str)
                    for e in right.elts):
        return {e.value for e in right.elts}
    return None


def _served(tree: ast.Module) -> dict[int, set[str]]:
    """id of each import statement inside a module-level ``__getattr__`` that only runs
    under an ``if <name> == "X"`` (or ``in``) at the function's top -> those names."""
    out: dict[int, set[str]] = {}
    for fn in tree.body:
        if not (isinstance(fn, ast.FunctionDef) and fn.name == "__getattr__" and fn.args.args):
            continue
        param = fn.args.args[0].arg
        for stmt in fn.body:
            names = _guard_names(stmt.test, param) if isinstance(stmt, ast.If) else None
            if names is None:
                continue
            for part in stmt.body:
                for node in ast.walk(part):
                    if isinstance(node, (ast.Import, ast.ImportFrom)):
                        out[id(node)] = names
    return out


def _bindings(nodes: list[ast.AST], package: str) -> dict[str, str]:
    """The names the module's imports bind (anywhere: scopes are not told apart) -> the
    dotted name they bind (``import a.b``: ``a`` -> ``a``; ``import a.b as z``: ``z`` ->
    ``a.b``; ``from a import b``: ``b`` -> ``a.b``)."""
    bound: dict[str, str] = {}
    for node in nodes:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    bound[alias.asname] = alias.name
                else:
                    bound[alias.name.split(".")[0]] = alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            base = _from_base(node, package)
            for alias in node.names:
                if alias.name != "*":
                    bound[alias.asname or alias.name] = f"{base}.{alias.name}"
    return bound


def _from_base(node: ast.ImportFrom, package: str) -> str:
    """The absolute dotted name a ``from … import`` reads from, in ``package``."""
    if not node.level:
        return node.module or ""
    parts = package.split(".")
    base = ".".join(parts[:len(parts) - node.level + 1])
    return f"{base}.{node.module}" if node.module else base


def _chain(node: ast.expr) -> list[str] | None:
    """``a.b.c`` as ``["a", "b", "c"]``; None for any other expression."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return [node.id, *reversed(parts)]


def imports(tree: ast.Module, name: str, is_package: bool) -> Imports:
    """What module ``name`` (its syntax tree ``tree``) can import: :class:`Imports`."""
    package = name if is_package else name.rpartition(".")[0]
    out = Imports()
    served = _served(tree)
    nodes = list(ast.walk(tree))
    bound = _bindings(nodes, package)
    inner = set()  # the parts of longer attribute chains, and docstrings
    looked_up: dict[int, str] = {}  # sys.modules.get("m") and sys.modules["m"]: m

    def resolved(node: ast.expr) -> str:
        chain = _chain(node)
        return ".".join([bound[chain[0]], *chain[1:]]) if chain and chain[0] in bound else ""

    for node in nodes:
        if isinstance(node, ast.Attribute):
            inner.add(id(node.value))
        elif _is_string_statement(node):
            inner.add(id(node.value))
        if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and resolved(node.func) == "sys.modules.get":
            looked_up[id(node.func)] = str(node.args[0].value)
        elif isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) \
                and resolved(node.value) == "sys.modules":
            looked_up[id(node.value)] = str(node.slice.value)
    for node in nodes:
        found = out.found
        if id(node) in served:  # a lazy attribute of this module: counted where asked for
            found = set()
            for attr in served[id(node)]:
                out.served.setdefault(attr, set())
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _from_base(node, package)
            found.add(base)
            for alias in node.names:  # a submodule imported by name (or all of them: *)
                found.add(f"{base}." if alias.name == "*" else f"{base}.{alias.name}")
                out.names.add(f"*{base}" if alias.name == "*" else alias.name)
        elif isinstance(node, ast.Call):
            call = _call_name(node.func)
            if call in _IMPORT_CALLS and node.args:  # the module it returns escapes too
                text, whole = _leading_text(node.args[0])
                if whole and not text.startswith("."):
                    found.add(text)
                    out.escapes.add(text)
                elif not whole and text.startswith(f"{PACKAGE}."):
                    found.add(text[:text.rfind(".") + 1])  # every module below that package
                    out.escapes.add(text[:text.rfind(".")])
                elif whole or not text or PACKAGE.startswith(text) or text.startswith("."):
                    out.unbounded = True  # relative (to a package named at run time), unknown
                else:  # a module outside the package, named at run time: none of its code
                    out.escapes.add(text[:text.rfind(".")] if "." in text else "*")
            elif call in _IMPORT_CALLS or call in _UNBOUNDED_CALLS or (
                    isinstance(node.func, ast.Name) and call in _UNBOUNDED_BUILTINS):
                out.unbounded = True
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and id(node) not in inner:
            out.names.add(node.value)
        if isinstance(node, ast.Attribute):
            out.names.add(node.attr)
        elif isinstance(node, ast.Name):
            out.names.add(node.id)
        if isinstance(node, (ast.Attribute, ast.Name)) and id(node) not in inner:
            value = resolved(node)  # an imported object used as a value
            if value == "sys.modules" or value.startswith("sys.modules."):
                value = looked_up.get(id(node), "*")  # a module by name: that one, or any
            if value:
                out.escapes.add(value)
        if found is not out.found:
            for attr in served[id(node)]:
                out.served[attr] |= found
    return out


def _parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def _matching(pattern: str, names: Iterable[str]) -> list[str]:
    """The modules a root or an import names: a module and the packages above it (they
    run first); ``P.`` or ``P.*``: every module below package ``P`` and ``P``."""
    if pattern.endswith(".*") or pattern.endswith("."):
        package = pattern[:-2] if pattern.endswith(".*") else pattern[:-1]
        return [n for n in names if n == package or n.startswith(f"{package}.")]
    return [n for n in _parents(pattern) if n in names]


def _asks(user: Imports, module: str, attr: str) -> bool:
    """Whether ``user`` may ask ``module`` for its lazy attribute ``attr`` (run its
    ``__getattr__`` for it): it names ``attr`` anywhere (an attribute, an imported name, a
    string), imports everything from it (``*``), or passes on ``module`` itself or a
    package above it (:attr:`Imports.escapes`: it could be asked for any name)."""
    return attr in user.names or f"*{module}" in user.names or any(
        e == "*" or e == module or module.startswith(f"{e}.") for e in user.escapes)


def closure(roots: Iterable[str], graph: dict[str, Imports]) -> set[str] | None:
    """The modules of ``graph`` (name -> :class:`Imports`) that ``roots`` reach through
    imports — each module's parents included, and a module's lazy attributes
    (:attr:`Imports.served`) where a module reached may ask for them (:func:`_asks`); None
    when one of them has unbounded imports (the kind falls back to the whole package)."""
    seen: set[str] = set()
    asked: set[tuple[str, str]] = set()
    todo = [m for root in roots for m in _matching(root, graph)]
    while todo:
        while todo:
            name = todo.pop()
            if name in seen:
                continue
            seen.add(name)
            if graph[name].unbounded:
                return None
            todo.extend(m for pattern in graph[name].found
                        for m in _matching(pattern, graph) if m not in seen)
        for module in sorted(seen):  # lazy attributes some module reached may ask for
            for attr, found in graph[module].served.items():
                if (module, attr) not in asked and any(
                        _asks(graph[user], module, attr) for user in seen if user != module):
                    asked.add((module, attr))
                    todo.extend(m for pattern in found for m in _matching(pattern, graph))
    return seen


def digests(modules: list[tuple[str, bytes]],
            kinds: dict[str, Kind] | None = None) -> dict[str, str]:
    """Each kind's fingerprint (``package``: :func:`semantic_digest`; a kind of
    :data:`KINDS`: the same hash over the modules of its closure — the whole package's when
    its closure is not bounded), parsing every module once."""
    kinds = KINDS if kinds is None else kinds
    texts, graph = [], {}
    for rel, data in modules:
        text, tree = _module_text(rel, data)
        texts.append((rel, text))
        name = module_name(rel)
        graph[name] = (Imports(unbounded=True) if tree is None else
                       imports(tree, name, rel.endswith("__init__.py")))
    out = {"package": _digest(texts)}
    for kind, spec in kinds.items():
        reach = closure(spec.roots, graph)
        out[kind] = out["package"] if reach is None else _digest(
            [t for t in texts if module_name(t[0]) in reach])
    return out


def _memo_path(cache: Path, raw: str) -> Path:
    """The memo file of the code whose bytes hash to ``raw``, parsed by this Python."""
    python = f"{sys.implementation.name}-{sys.version_info[0]}.{sys.version_info[1]}"
    name = hashlib.sha256(f"{MEMO_FORMAT}|{python}|{raw}".encode()).hexdigest()[:32]
    return cache / MEMO_DIRECTORY / f"{name}.json"


def _read_memo(path: Path, raw: str) -> dict[str, str] | None:
    """The fingerprints (kind -> 16 hex) the memo ``path`` holds for ``raw``; None when it
    is missing, does not check out (digest, format, key, every kind there) or cannot be
    read."""
    from noisydeq import store
    from noisydeq.errors import NoisyDEQError

    try:
        if not path.is_file():
            return None
        memo = store.read_signed_json(path, "code fingerprint memo")
    except (OSError, NoisyDEQError):
        return None
    codes = memo.get("codes")
    if (memo.get("format") != MEMO_FORMAT or memo.get("raw") != raw
            or not isinstance(codes, dict) or set(codes) != {"package", *KINDS}
            or not all(isinstance(c, str) and _FINGERPRINT.match(c) for c in codes.values())
            or memo.get("code") != codes["package"]):
        return None
    return codes


def _write_memo(path: Path, raw: str, codes: dict[str, str]) -> None:
    """Store ``codes`` as the fingerprints of ``raw`` (only in an existing cache: the memo
    never creates one), then delete the oldest memo files beyond :data:`MEMO_KEEP`; an
    unwritable cache is ignored."""
    from noisydeq import store
    from noisydeq.errors import NoisyDEQError

    cache = path.parent.parent
    try:
        if not cache.is_dir():
            return
        path.parent.mkdir(exist_ok=True)
        store.write_signed_json(path, {"format": MEMO_FORMAT, "raw": raw,
                                       "code": codes["package"], "codes": codes})
        memos = [p for p in path.parent.iterdir() if MEMO_NAME.match(p.name) and p.is_file()]
        if len(memos) > MEMO_KEEP:
            memos.sort(key=lambda p: p.stat().st_mtime)
            for old in memos[:len(memos) - MEMO_KEEP]:
                store.remove_file(old)
    except (OSError, NoisyDEQError):
        pass


@functools.lru_cache(maxsize=1)
def current_memo() -> tuple[str, str]:
    """(file name, ``raw`` digest) of the memo this process reads and writes: the package's
    modules as they are now, parsed by this Python (``noisydeq cache`` tells the current
    memo from stale ones by them, without parsing anything)."""
    raw = raw_digest(_modules(package_root()))
    return _memo_path(Path(), raw).name, raw


def fingerprints_of(root: Path, cache: Path | None) -> dict[str, str]:
    """The code fingerprints of the package at ``root`` (kind -> 16 hex: ``package`` and
    each of :data:`KINDS`, :func:`digests`), through the memo in ``cache`` (None: no
    memo)."""
    modules = _modules(root)
    if cache is None:
        return digests(modules)
    raw = raw_digest(modules)
    path = _memo_path(cache, raw)
    codes = _read_memo(path, raw)
    if codes is None:
        codes = digests(modules)
        _write_memo(path, raw, codes)
    return codes


def fingerprint_of(root: Path, cache: Path | None, kind: str = "package") -> str:
    """The code fingerprint ``kind`` of the package at ``root`` (:func:`code_fingerprint`),
    through the memo in ``cache`` (None: no memo)."""
    return fingerprints_of(root, cache)[kind]


@functools.lru_cache(maxsize=1)
def code_fingerprints() -> dict[str, str]:
    """Every kind's :func:`code_fingerprint`, computed (or read from the memo) once in the
    process."""
    from noisydeq.runtime import cache_root

    return fingerprints_of(package_root(), cache_root())


def code_fingerprint(kind: str = "package") -> str:
    """Hash of what the package's code computes (16 hex): ``package``, every module
    (``noisydeq.rng`` included) below the package directory, as its syntax tree with its
    path; a kind of :data:`KINDS` (``device``: calibration entries and programmed chips;
    ``sweep``: a sweep's cells; ``figures``: figure entries; ``attacks``, ``studies``,
    ``certify``, ``lyapunov``: the cells of those runs), the same hash over only the
    modules that kind's computing code can import (:func:`closure`; the whole package
    when an import there is named at run time beyond static reading).

    Counted: every statement and expression — constants, operators, default argument
    values, string literals that are not bare statements (error messages, f-strings),
    annotations, imports — and each module's path (a renamed module is another code).
    Not counted: docstrings of modules, classes and functions (and any other bare-string
    statement), comments, blank lines and layout, so editing them leaves every cache entry
    hit; for a kind, every module outside its closure (a command's messages, the plots of
    a device entry). Files other than ``.py`` are not read: the shipped device presets and
    experiment files enter the keys by their resolved content (a device spec's JSON, a
    sweep's resolved config), so editing one changes the keys of what it changes.

    Memoised in the process (:func:`code_fingerprints`) and in the cache (``<cache>/code/``,
    see the module; the cache :func:`noisydeq.runtime.cache_root` names — a command's
    ``--cache DIR``, else the default one): a missing, corrupt or unwritable memo is
    computed again silently."""
    return code_fingerprints()[kind]


@functools.lru_cache(maxsize=1)
def torch_version() -> str:
    """``torch.__version__`` as the installed distribution states it (``2.13.0+cpu``), read
    from its metadata rather than by importing torch; ``""`` when torch is not installed."""
    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return ""


def machine() -> str:
    """The machine architecture the caches key by (``platform.machine()``)."""
    return platform.machine()
