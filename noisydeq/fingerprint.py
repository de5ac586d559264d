"""What the running code is, as the on-disk cache entries record it — without torch.

The device caches (:mod:`noisydeq.hardware.calibration_store`, :mod:`~noisydeq.hardware.
chip_store`), the figure cache and a sweep's cell keys hold the package's code
(:func:`code_fingerprint`), the torch version and the machine, among others; ``noisydeq
cache`` compares what an entry recorded with what this process would key
(:func:`torch_version`, :func:`machine`) to tell the entries no run of this code can hit
again, without paying for ``import torch``.

The fingerprint is a function of what the code computes, not of its text: every module's
syntax tree without docstrings (so comments, docstrings, blank lines and layout do not
count). Parsing the package's ~220 modules takes ~0.4 CPU s, so the value is memoised in
the cache under the digest of the modules' bytes (:data:`MEMO_DIRECTORY`), which takes
~6 ms to compute: a fresh process pays about that (plus ~10 ms of imports where
:mod:`noisydeq.store` is not imported yet).
"""

from __future__ import annotations

import ast
import functools
import hashlib
import platform
import re
import sys
from importlib import metadata
from pathlib import Path

#: the memo's directory under the cache (``runtime.cache_root``): one small signed JSON file
#: per code state and Python seen, ``<32 hex>.json``, the newest :data:`MEMO_KEEP` kept
MEMO_DIRECTORY = "code"
#: format of a memo file (part of its name: a new format is a new file)
MEMO_FORMAT = "noisydeq-code-memo/1"
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


def semantic_digest(modules: list[tuple[str, bytes]]) -> str:
    """Hash of each module's :func:`tree_text` with its relative path, in path order (16
    hex). A module that does not parse enters with its bytes."""
    h = hashlib.blake2b(digest_size=8)
    for rel, data in modules:
        try:
            text = tree_text(ast.parse(data, filename=rel)).encode()
        except (SyntaxError, ValueError):
            text = b"unparsed\0" + data
        h.update(rel.encode() + b"\0" + len(text).to_bytes(8, "little"))
        h.update(text)
    return h.hexdigest()


def _memo_path(cache: Path, raw: str) -> Path:
    """The memo file of the code whose bytes hash to ``raw``, parsed by this Python."""
    python = f"{sys.implementation.name}-{sys.version_info[0]}.{sys.version_info[1]}"
    name = hashlib.sha256(f"{MEMO_FORMAT}|{python}|{raw}".encode()).hexdigest()[:32]
    return cache / MEMO_DIRECTORY / f"{name}.json"


def _read_memo(path: Path, raw: str) -> str | None:
    """The fingerprint the memo ``path`` holds for ``raw``; None when it is missing, does
    not check out (digest, format, key) or cannot be read."""
    from noisydeq import store
    from noisydeq.errors import NoisyDEQError

    try:
        if not path.is_file():
            return None
        memo = store.read_signed_json(path, "code fingerprint memo")
    except (OSError, NoisyDEQError):
        return None
    code = memo.get("code")
    if (memo.get("format") != MEMO_FORMAT or memo.get("raw") != raw
            or not isinstance(code, str) or not _FINGERPRINT.match(code)):
        return None
    return code


def _write_memo(path: Path, raw: str, code: str) -> None:
    """Store ``code`` as the fingerprint of ``raw`` (only in an existing cache: the memo
    never creates one), then delete the oldest memo files beyond :data:`MEMO_KEEP`; an
    unwritable cache is ignored."""
    from noisydeq import store
    from noisydeq.errors import NoisyDEQError

    cache = path.parent.parent
    try:
        if not cache.is_dir():
            return
        path.parent.mkdir(exist_ok=True)
        store.write_signed_json(path, {"format": MEMO_FORMAT, "raw": raw, "code": code})
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


def fingerprint_of(root: Path, cache: Path | None) -> str:
    """The code fingerprint of the package at ``root`` (:func:`code_fingerprint`), through
    the memo in ``cache`` (None: no memo)."""
    modules = _modules(root)
    if cache is None:
        return semantic_digest(modules)
    raw = raw_digest(modules)
    path = _memo_path(cache, raw)
    code = _read_memo(path, raw)
    if code is None:
        code = semantic_digest(modules)
        _write_memo(path, raw, code)
    return code


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """Hash of what the package's code computes (16 hex): every module (``noisydeq.rng``
    included) below the package directory, as its syntax tree with its path.

    Counted: every statement and expression — constants, operators, default argument
    values, string literals that are not bare statements (error messages, f-strings),
    annotations, imports — and each module's path (a renamed module is another code).
    Not counted: docstrings of modules, classes and functions (and any other bare-string
    statement), comments, blank lines and layout, so editing them leaves every cache entry
    hit. Files other than ``.py`` are not read: the shipped device presets and experiment
    files enter the keys by their resolved content (a device spec's JSON, a sweep's
    resolved config), so editing one changes the keys of what it changes.

    Memoised in the process and in the cache (``<cache>/code/``, see the module; the
    cache :func:`noisydeq.runtime.cache_root` names — a command's ``--cache DIR``, else
    the default one): a missing, corrupt or unwritable memo is computed again silently."""
    from noisydeq.runtime import cache_root

    return fingerprint_of(package_root(), cache_root())


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
