"""The code fingerprint the caches key by (noisydeq.fingerprint): a function of what the code
computes (each module's syntax without docstrings, with its path), memoised in the cache under
the digest of the modules' bytes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import noisydeq
from noisydeq import fingerprint, store

BASE = '''"""A module's docstring."""

import math

SCALE = 2.0  # a comment
MESSAGE = "box"


class Box:
    """A class docstring."""

    def area(self, w, h=1):
        """A function docstring."""
        return w * h * SCALE


def root(x):
    return math.sqrt(x) + 1
'''

#: edits that change nothing the code computes
SAME = {
    "module docstring": BASE.replace("A module's docstring.", "Another text entirely."),
    "class docstring": BASE.replace("A class docstring.", "Boxes, described at length."),
    "function docstring": BASE.replace('"""A function docstring."""', '"""Area.\n\n    More."""'),
    "docstring added": BASE.replace("    return math", '    """Added."""\n    return math'),
    "docstring removed": BASE.replace('        """A function docstring."""\n', ""),
    "comment": BASE.replace("# a comment", "# another, longer comment").replace(
        "import math", "import math  # why"),
    "blank lines": BASE.replace("\n\n", "\n\n\n\n").replace("import math\n", "\nimport math\n"),
    "layout": BASE.replace("w * h * SCALE", "(w*h\n                * SCALE)"),
}
#: edits that change what it computes
OTHER = {
    "constant": BASE.replace("SCALE = 2.0", "SCALE = 3.0"),
    "int for float": BASE.replace("SCALE = 2.0", "SCALE = 2"),
    "operator": BASE.replace("w * h", "w + h"),
    "default argument": BASE.replace("h=1", "h=2"),
    "string literal": BASE.replace('"box"', '"boxes"'),
    "name": BASE.replace("def root", "def square_root"),
}


def _tree(root, text, name="a.py"):
    """A package directory ``root`` holding ``text`` as ``name`` and two fixed modules."""
    (root / "sub").mkdir(parents=True, exist_ok=True)
    (root / "__init__.py").write_text('"""The package."""\n__version__ = "0"\n')
    (root / "sub" / "__init__.py").write_text("")
    (root / "sub" / "b.py").write_text("def twice(x):\n    return 2 * x\n")
    (root / name).write_text(text)
    return root


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """code_fingerprint of a package at a path of the test's choosing (``noisydeq.__file__``
    pointed at it), memoised in the cache ``tmp_path/cache``, computed anew on each call."""
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("NOISYDEQ_CACHE", str(cache))

    def compute(root):
        monkeypatch.setattr(noisydeq, "__file__", str(root / "__init__.py"))
        fingerprint.code_fingerprints.cache_clear()
        try:
            return fingerprint.code_fingerprint()
        finally:
            fingerprint.code_fingerprints.cache_clear()

    yield compute
    fingerprint.code_fingerprints.cache_clear()


@pytest.mark.parametrize("edit", sorted(SAME))
def test_docstrings_comments_and_layout_leave_the_fingerprint(fresh, tmp_path, edit):
    assert SAME[edit] != BASE
    base = fresh(_tree(tmp_path / "base", BASE))
    assert fresh(_tree(tmp_path / "edited", SAME[edit])) == base


@pytest.mark.parametrize("edit", sorted(OTHER))
def test_a_change_to_what_the_code_computes_changes_it(fresh, tmp_path, edit):
    base = fresh(_tree(tmp_path / "base", BASE))
    assert fresh(_tree(tmp_path / "edited", OTHER[edit])) != base


def test_a_renamed_or_added_module_changes_it(fresh, tmp_path):
    base = fresh(_tree(tmp_path / "base", BASE))
    assert fresh(_tree(tmp_path / "renamed", BASE, name="c.py")) != base
    added = _tree(tmp_path / "added", BASE)
    (added / "empty.py").write_text("# nothing but a comment\n")
    assert fresh(added) != base


def test_the_fingerprint_is_16_hex_and_the_memo_holds_it(fresh, tmp_path):
    root = _tree(tmp_path / "pkg", BASE)
    value = fresh(root)
    assert len(value) == 16 and int(value, 16) >= 0
    assert value == fingerprint.fingerprint_of(root, None)  # without the memo: the same
    memos = list((tmp_path / "cache" / fingerprint.MEMO_DIRECTORY).iterdir())
    assert len(memos) == 1
    memo = store.read_signed_json(memos[0])
    assert memo["code"] == memo["codes"]["package"] == value
    assert set(memo["codes"]) == {"package", *fingerprint.KINDS}
    assert memo["raw"] == fingerprint.raw_digest(fingerprint._modules(root))


def _forge(path, raw, code):
    """A memo of ``raw`` giving ``code`` for every kind."""
    codes = dict.fromkeys(("package", *fingerprint.KINDS), code)
    store.write_signed_json(path, {"format": fingerprint.MEMO_FORMAT, "raw": raw, "code": code,
                                   "codes": codes})


def test_the_memo_is_served_only_for_the_bytes_it_was_written_for(fresh, tmp_path):
    """A memo entry is used when it names the modules' bytes (shown by a forged value), and
    an edit after it was written is another key: the new code is parsed, not served the
    value of the old."""
    root = _tree(tmp_path / "pkg", BASE)
    real = fresh(root)
    (memo,) = (tmp_path / "cache" / fingerprint.MEMO_DIRECTORY).iterdir()
    raw = fingerprint.raw_digest(fingerprint._modules(root))
    _forge(memo, raw, "0123456789abcdef")
    assert fresh(root) == "0123456789abcdef"  # a hit: nothing parsed
    _forge(memo, "f" * 16, "0123456789abcdef")  # a memo of other bytes under this name
    assert fresh(root) == real
    _forge(memo, raw, "0123456789abcdef")
    (root / "a.py").write_text(OTHER["constant"])  # the code changes after the memo
    changed = fresh(root)
    assert changed != "0123456789abcdef" and changed != real
    assert changed == fingerprint.fingerprint_of(root, None)
    (root / "a.py").write_text(SAME["comment"])  # a comment only: another memo entry, parsed
    assert fresh(root) == real


@pytest.mark.parametrize("damage", ["truncated", "edited", "not json", "bad value", "empty"])
def test_a_corrupt_memo_is_computed_again_silently_and_replaced(fresh, tmp_path, capsys,
                                                               damage):
    root = _tree(tmp_path / "pkg", BASE)
    real = fresh(root)
    (memo,) = (tmp_path / "cache" / fingerprint.MEMO_DIRECTORY).iterdir()
    text = memo.read_text()
    raw = fingerprint.raw_digest(fingerprint._modules(root))
    if damage == "truncated":
        memo.write_text(text[:len(text) // 2])
    elif damage == "edited":
        memo.write_text(text.replace(real, "0123456789abcdef"))  # the digest no longer fits
    elif damage == "not json":
        memo.write_bytes(b"\xff\x00 binary")
    elif damage == "bad value":
        _forge(memo, raw, "not a fingerprint")
    else:
        memo.write_text("")
    assert fresh(root) == real
    assert capsys.readouterr().err == ""
    assert store.read_signed_json(memo)["code"] == real  # replaced by the right value


def test_an_unwritable_or_missing_cache_still_gives_the_fingerprint(fresh, tmp_path,
                                                                    monkeypatch):
    root = _tree(tmp_path / "pkg", BASE)
    real = fingerprint.fingerprint_of(root, None)
    cache = tmp_path / "cache"
    (cache / fingerprint.MEMO_DIRECTORY).write_text("a file where the memo directory goes")
    assert fresh(root) == real
    missing = tmp_path / "no-cache"
    monkeypatch.setenv("NOISYDEQ_CACHE", str(missing))
    assert fresh(root) == real
    assert not missing.exists()  # the memo never creates a cache


def test_the_oldest_memos_beyond_the_limit_are_deleted(fresh, tmp_path, monkeypatch):
    monkeypatch.setattr(fingerprint, "MEMO_KEEP", 2)
    root = _tree(tmp_path / "pkg", BASE)
    memos = tmp_path / "cache" / fingerprint.MEMO_DIRECTORY
    memos.mkdir()
    (memos / "notes.txt").write_text("not a memo: never deleted")
    names = []
    for i, text in enumerate((BASE, OTHER["constant"], OTHER["operator"])):
        (root / "a.py").write_text(text)
        fresh(root)
        new = {p.name for p in memos.iterdir()} - set(names) - {"notes.txt"}
        names += sorted(new)
        os.utime(memos / names[-1], (1e9 + i, 1e9 + i))  # written in this order
    assert len(names) == 3
    assert sorted(p.name for p in memos.iterdir()) == sorted([*names[1:], "notes.txt"])


def test_the_package_fingerprint_matches_its_parse_and_old_entries_are_stale():
    """This package's fingerprint is the parse of its modules; a device entry recorded with
    the fingerprint of earlier versions (a hash of the modules' bytes) is stale for
    ``noisydeq cache``, so ``noisydeq cache prune --stale`` removes it."""
    import hashlib

    from noisydeq.cachedir.current import device_fields, device_status

    root = fingerprint.package_root()
    assert fingerprint.code_fingerprint() == fingerprint.fingerprint_of(root, None)
    h = hashlib.blake2b(digest_size=8)  # the fingerprint up to this version
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    env = device_fields("calibration")
    meta = {"format": env["format"], "env": {**env, "threads": 1}}
    assert device_status("calibration", meta) == ("current", "")
    meta["env"]["code"] = h.hexdigest()
    assert device_status("calibration", meta) == ("stale", f"code {h.hexdigest()}")


def test_the_cache_with_a_memo_is_a_cache_and_each_memo_a_code_entry(tmp_path):
    """The memo directory belongs to a cache; each memo file is an entry of kind ``code``:
    current when it is the one this code and Python read, else stale (other code: its
    fingerprint named; these modules' bytes under another name: another Python)."""
    from noisydeq.cachedir.inventory import scan

    cache = tmp_path / "cache"
    memos = cache / fingerprint.MEMO_DIRECTORY
    memos.mkdir(parents=True)
    (cache / "calibration").mkdir()
    name, raw = fingerprint.current_memo()
    _forge(memos / ("a" * 32 + ".json"), "0" * 16, "1" * 16)
    _forge(memos / ("b" * 32 + ".json"), raw, fingerprint.code_fingerprint())
    _forge(memos / name, raw, fingerprint.code_fingerprint())
    (memos / "notes.txt").write_text("mine")
    inv = scan(cache)
    assert sorted((e.name, e.status, e.reason) for e in inv.entries) == sorted([
        (f"code/{'a' * 32}.json", "stale", "code 1111111111111111"),
        (f"code/{'b' * 32}.json", "stale", "another Python or memo format"),
        (f"code/{name}", "current", "")])
    assert [p.name for p, _ in inv.other] == ["notes.txt"]


PROBE = """
import json, sys
from noisydeq.cli import main
seen = {}
for args in json.loads(sys.argv[1]):
    try:
        main(args)
    except SystemExit:
        pass
    fp = sys.modules.get("noisydeq.fingerprint")
    seen[" ".join(args)] = 0 if fp is None else fp.code_fingerprints.cache_info().misses
print(json.dumps(seen))
"""


def test_help_and_listing_commands_never_compute_it(tmp_path):
    """In one fresh interpreter: ``--help`` of the CLI and of every command, and commands
    that key nothing, never fingerprint the code; ``noisydeq cache`` does (the probe can
    fail)."""
    from noisydeq.cli import COMMANDS

    light = [["--help"], ["--version"], *([name, "--help"] for name, _, _ in COMMANDS),
             ["cache", "prune", "--help"], ["run", "--list"], ["runs"], ["devices", "ideal"]]
    env = {**os.environ, "NOISYDEQ_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-c", PROBE, json.dumps([*light, ["cache"]])],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {k: v for k, v in seen.items() if k != "cache"} == {
        " ".join(a): 0 for a in light}
    assert seen["cache"] == 1


def test_f_string_literal_parts_count_by_their_text_not_their_split():
    """Python 3.12.1 ends a nested format spec with an empty literal part that 3.11 and
    3.13 do not make: an f-string's text counts, not how the parser split it."""
    import ast

    parsed = ast.parse('f"{x:<{w}}"')
    split = ast.parse('f"{x:<{w}}"')
    spec = split.body[0].value.values[0].format_spec
    spec.values.append(ast.Constant(value=""))
    spec.values[0:1] = [ast.Constant(value=""), ast.Constant(value="<")]
    assert fingerprint.tree_text(split) == fingerprint.tree_text(parsed)
    other = ast.parse('f"{x:>{w}}"')
    assert fingerprint.tree_text(other) != fingerprint.tree_text(parsed)
    joined = ast.parse('f"a{x}b"')
    joined.body[0].value.values[0:1] = [ast.Constant(value=""), ast.Constant(value="a")]
    assert fingerprint.tree_text(joined) == fingerprint.tree_text(ast.parse('f"a{x}b"'))
    assert fingerprint.tree_text(ast.parse('f"a{x}c"')) != fingerprint.tree_text(joined)
    halves = ast.parse('f"ab{x}"')
    halves.body[0].value.values[0:1] = [ast.Constant(value="a"), ast.Constant(value="b")]
    assert fingerprint.tree_text(halves) == fingerprint.tree_text(ast.parse('f"ab{x}"'))


MEMO_PROBE = """
import json, sys
from noisydeq import fingerprint
calls = []
real = fingerprint.digests
fingerprint.digests = lambda modules: calls.append(1) or real(modules)
from noisydeq.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(json.dumps({"parsed": len(calls), "code": fingerprint.code_fingerprint()}))
"""


@pytest.mark.parametrize("how", ["--cache", "env"])
def test_the_memo_follows_the_cache_the_command_reads(tmp_path, how):
    """``noisydeq cache --cache DIR`` keeps the memo in DIR (not in ``$NOISYDEQ_CACHE``),
    ``$NOISYDEQ_CACHE`` in that cache; a second process reuses it: the package is parsed
    (``digests``) once in the two."""
    default, custom = tmp_path / "default", tmp_path / "custom"
    default.mkdir()
    custom.mkdir()
    env = {**os.environ, "NOISYDEQ_CACHE": str(default if how == "--cache" else custom)}
    args = ["cache", "--json", *(["--cache", str(custom)] if how == "--cache" else [])]
    seen = []
    for _ in range(2):
        proc = subprocess.run([sys.executable, "-c", MEMO_PROBE, *args], capture_output=True,
                              text=True, cwd=tmp_path, env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr
        seen.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    assert [s["parsed"] for s in seen] == [1, 0]
    assert seen[0]["code"] == seen[1]["code"] == fingerprint.code_fingerprint()
    (memo,) = (custom / fingerprint.MEMO_DIRECTORY).iterdir()
    assert store.read_signed_json(memo)["code"] == seen[0]["code"]
    assert not (default / fingerprint.MEMO_DIRECTORY).exists()
