"""The code fingerprint of each kind of cache entry (noisydeq.fingerprint.KINDS): the hash of
only the modules its computing code can import (every import statement anywhere in a module,
lazy ones in functions included; a module named at run time beyond static reading: the
whole package), so an edit outside that closure keeps the kind's entries."""

from __future__ import annotations

import ast
import shutil

import pytest

from noisydeq import fingerprint
from noisydeq.fingerprint import Kind, digests


def _package(**edits: str) -> list[tuple[str, bytes]]:
    """A small package named ``noisydeq`` (the modules as ``_modules`` lists them): ``core``
    imports ``sub.low`` lazily inside a function, ``cli`` imports ``core``; ``edits``
    (relative path with ``/`` written ``__``, without ``.py``) replaces a module's text."""
    text = {
        "__init__": '__version__ = "0"\n',
        "core": "def run(x):\n    from noisydeq.sub import low\n    return low.f(x)\n",
        "sub/__init__": "",
        "sub/low": "def f(x):\n    return 2 * x\n",
        "sub/other": "def g(x):\n    return 3 * x\n",
        "cli": "from noisydeq import core\nMESSAGE = 'hello'\n",
        "plots": "import math\nTITLE = 'a plot'\n",
    }
    for name, body in edits.items():
        text[name.replace("__", "/") if name != "__init__" else name] = body
    return sorted((f"{k}.py", v.encode()) for k, v in text.items())


KINDS = {"core": Kind(("noisydeq.core",)), "sub": Kind(("noisydeq.sub.*",))}


def _codes(**edits: str) -> dict[str, str]:
    return digests(_package(**edits), KINDS)


def test_an_edit_outside_a_kinds_closure_keeps_its_key_and_one_inside_changes_it():
    base = _codes()
    outside = _codes(cli="from noisydeq import core\nMESSAGE = 'hello, world'\n")
    assert outside["package"] != base["package"]
    assert outside["core"] == base["core"] and outside["sub"] == base["sub"]
    inside = _codes(sub__low="def f(x):\n    return 4 * x\n")
    assert inside["core"] != base["core"] and inside["sub"] != base["sub"]
    # a module the root's package holds but never imports is outside a module root's closure
    other = _codes(sub__other="def g(x):\n    return 5 * x\n")
    assert other["core"] == base["core"] and other["sub"] != base["sub"]
    # the package above an imported module runs first: inside
    assert _codes(__init__='__version__ = "1"\n')["core"] != base["core"]


def test_a_lazy_import_inside_a_function_is_followed():
    """``core`` reaches ``sub.low`` only through an import in a function body."""
    base = _codes()
    assert _codes(sub__low="def f(x):\n    return x\n")["core"] != base["core"]
    # the same code without that import: sub.low is outside and its edits keep the key
    alone = {"core": "def run(x):\n    return x\n"}
    assert (_codes(**alone, sub__low="def f(x):\n    return x\n")["core"]
            == _codes(**alone)["core"])


@pytest.mark.parametrize("call", [
    "importlib.import_module(name)",
    "__import__(name)",
    "importlib.util.spec_from_file_location('m', name)",
    "importlib.metadata.entry_points()",
    "exec(name)",
    "importlib.import_module(f'{name}.x')",
    "importlib.import_module('.' + name, 'noisydeq')",
])
def test_a_module_named_at_run_time_makes_the_closure_the_whole_package(call):
    core = f"import importlib\n\ndef run(name):\n    return {call}\n"
    codes = _codes(core=core)
    assert codes["core"] == codes["package"]
    assert codes["sub"] != codes["package"]  # a closure without it stays bounded


def test_a_name_with_a_package_prefix_bounds_the_closure_to_that_package():
    """``import_module(f"noisydeq.sub.{name}")``: every module below ``noisydeq.sub``."""
    core = ("import importlib\n\ndef run(name):\n"
            "    return importlib.import_module(f'noisydeq.sub.{name}')\n")
    base = _codes(core=core)
    assert base["core"] != base["package"]
    assert _codes(core=core, sub__other="G = 1\n")["core"] != base["core"]
    assert _codes(core=core, plots="TITLE = 'b'\n")["core"] == base["core"]
    # a constant name is that module; a module outside the package is none of its code
    const = "import importlib\nlow = importlib.import_module('noisydeq.sub.low')\n" \
            "spec = importlib.util.find_spec('sklearn')\n"
    assert _codes(core=const, sub__other="G = 1\n")["core"] == _codes(core=const)["core"]
    assert _codes(core=const, sub__low="G = 1\n")["core"] != _codes(core=const)["core"]


def test_relative_imports_and_model_eval_calls():
    """``from .sub import low`` resolves against the package; a method named ``eval``
    (``model.eval()``) is not the builtin."""
    core = "from .sub import low\n\ndef run(model):\n    return low.f(model.eval())\n"
    base = _codes(core=core)
    assert base["core"] != base["package"]
    assert _codes(core=core, sub__low="G = 1\n")["core"] != base["core"]
    assert _codes(core=core, cli="M = 1\n")["core"] == base["core"]


LAZY = ('__version__ = "0"\n\n\ndef __getattr__(name):\n'
        '    if name == "heavy":\n        from noisydeq.sub.other import g\n\n'
        '        return g\n    raise AttributeError(name)\n')


@pytest.mark.parametrize("core, asks", [
    ("from noisydeq.sub import low\n", False),
    ("import noisydeq\nV = noisydeq.__version__\n", False),
    ("from noisydeq import heavy\n", True),
    ("import noisydeq\n\ndef run():\n    return noisydeq.heavy\n", True),
    ("import noisydeq as nd\n\ndef run(name):\n    return getattr(nd, name)\n", True),
    ("import noisydeq\nPACKAGE = noisydeq\n", True),
    ("import sys\n\ndef run(name):\n    return sys.modules[name]\n", True),
    ("import sys\nTORCH = sys.modules.get('torch')\n", False),
    ("from noisydeq import *\n", True),
])
def test_a_lazy_attribute_of_a_package_counts_where_it_may_be_asked_for(core, asks):
    """A module-level ``__getattr__`` importing under ``if name == "heavy"``: its import
    counts in a closure where a module names ``heavy`` or hands the package on (to
    ``getattr``, a variable, ``sys.modules``), not where it only imports below it."""
    base = _codes(__init__=LAZY, core=core)
    edited = _codes(__init__=LAZY, core=core, sub__other="def g(x):\n    return 5 * x\n")
    assert (edited["core"] != base["core"]) is asks


def test_an_unguarded_import_in_a_module_getattr_always_counts():
    init = ('def __getattr__(name):\n    from noisydeq.sub import other\n'
            '    return getattr(other, name)\n')
    core = "from noisydeq.sub import low\n"
    base = _codes(__init__=init, core=core)
    assert _codes(__init__=init, core=core, sub__other="G = 1\n")["core"] != base["core"]


def test_a_module_that_does_not_parse_is_unbounded():
    codes = _codes(sub__low="def f(x:\n")
    assert codes["core"] == codes["package"]


def _edit(root, rel, old, new):
    path = root / rel
    text = path.read_text(encoding="utf-8")
    assert old in text, (rel, old)
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


@pytest.fixture(scope="module")
def copy(tmp_path_factory):
    """A copy of this package, and its fingerprints."""
    root = tmp_path_factory.mktemp("pkg") / "noisydeq"
    shutil.copytree(fingerprint.package_root(), root,
                    ignore=shutil.ignore_patterns("__pycache__"))
    return root, fingerprint.fingerprints_of(root, None)


@pytest.mark.parametrize("rel, old, new, kept, changed", [
    # a command's message: no kind changes
    ("commands/cache.py", '"', '"x', {"device", "sweep", "figures"}, set()),
    # a plot: the device entries keep theirs; the figures change, and a sweep's cells (the
    # sweep package draws its figures: sweep.write imports the plots)
    ("plots.py", "def ", "X_PLOT = 1\n\n\ndef ", {"device"}, {"figures", "sweep"}),
    # the sweep's evaluation: its cells, not the device entries
    ("sweep/evaluate.py", "def ", "X_EVAL = 1\n\n\ndef ", {"device"}, {"sweep"}),
    # the results loader, which the root package serves lazily (noisydeq.load_results):
    # no kind asks for it
    ("loading.py", "def ", "X_LOAD = 1\n\n\ndef ", {"device", "sweep", "figures"}, set()),
    # an RRAM chip's programming: every kind that runs it
    ("hardware/rram_program.py", "def ", "X_RRAM = 1\n\n\ndef ", set(), {"device", "sweep"}),
])
def test_this_package_an_edit_changes_only_the_kinds_that_import_it(
        copy, rel, old, new, kept, changed):
    """On a copy of this package: which kinds an edit keeps and which it changes."""
    base_root, base = copy
    root = base_root.parent.parent / f"edited-{rel.replace('/', '-')}" / "noisydeq"
    shutil.copytree(base_root, root)
    _edit(root, rel, old, new)
    codes = fingerprint.fingerprints_of(root, None)
    assert codes["package"] != base["package"]
    assert {k for k in fingerprint.KINDS if codes[k] == base[k]} >= kept
    assert {k for k in fingerprint.KINDS if codes[k] != base[k]} >= changed


def test_this_packages_closures_are_bounded_and_narrower_than_the_package():
    modules = fingerprint._modules(fingerprint.package_root())
    graph = {}
    for rel, data in modules:
        name = fingerprint.module_name(rel)
        graph[name] = fingerprint.imports(ast.parse(data), name, rel.endswith("__init__.py"))
    for kind, spec in fingerprint.KINDS.items():
        reach = fingerprint.closure(spec.roots, graph)
        assert reach is not None, kind
        assert 0 < len(reach) < len(graph)
        assert "noisydeq.cli" not in reach and "noisydeq.commands.cache" not in reach, kind
        assert "noisydeq.loading" not in reach, kind  # served lazily; never asked for
    device = fingerprint.closure(fingerprint.KINDS["device"].roots, graph)
    assert "noisydeq.plots" not in device and "noisydeq.sweep.evaluate" not in device
    assert {"noisydeq.models.deq", "noisydeq.solvers.anderson", "noisydeq.hardware.rram",
            "noisydeq.rng"} <= device
    codes = fingerprint.code_fingerprints()
    assert len(set(codes.values())) >= 3  # device, sweep and figures differ from the package


def _classes_of(module):
    return [v for v in vars(module).values()
            if isinstance(v, type) and v.__module__ == module.__name__]


def test_every_module_class_and_autograd_function_lives_under_the_device_roots():
    """The device entries run the model objects their caller hands them: every
    ``nn.Module`` and ``autograd.Function`` subclass the package defines must live in a
    module the device roots name (else its code could change without changing the key)."""
    import importlib
    import pkgutil

    import torch

    import noisydeq

    roots = fingerprint.KINDS["device"].roots
    graph = {fingerprint.module_name(rel): None
             for rel, _ in fingerprint._modules(fingerprint.package_root())}
    rooted = {m for root in roots for m in fingerprint._matching(root, graph)}
    missing = []
    for info in pkgutil.walk_packages(noisydeq.__path__, "noisydeq."):
        try:
            module = importlib.import_module(info.name)
        except ImportError:  # an optional dependency (ray): its classes cannot be in a model
            continue
        for cls in _classes_of(module):
            if issubclass(cls, (torch.nn.Module, torch.autograd.Function)) \
                    and info.name not in rooted:
                missing.append(f"{info.name}.{cls.__name__}")
    assert missing == []


def test_every_module_handing_the_figure_cache_a_drawing_is_a_figures_root():
    roots = set(fingerprint.KINDS["figures"].roots)
    users = set()
    for rel, data in fingerprint._modules(fingerprint.package_root()):
        tree = ast.parse(data)
        if any(isinstance(n, ast.Call) and fingerprint._call_name(n.func) == "cached_figures"
               for n in ast.walk(tree)):
            users.add(fingerprint.module_name(rel))
    assert users and users <= roots


def test_noisydeq_cache_compares_a_device_entry_with_the_device_code():
    from noisydeq.cachedir.current import device_fields, device_status

    for kind, code in (("calibration", "device"), ("chips", "device"), ("figures", "figures")):
        assert device_fields(kind)["code"] == fingerprint.code_fingerprint(code)
    env = device_fields("calibration")
    meta = {"format": env["format"], "env": {**env, "threads": 1}}
    assert device_status("calibration", meta) == ("current", "")
    whole = fingerprint.code_fingerprint()
    meta["env"]["code"] = whole  # recorded by the package-wide fingerprint: stale
    assert device_status("calibration", meta) == ("stale", f"code {whole}")


def test_no_caller_hands_the_calibration_code_a_forward_from_outside_the_device_code():
    """``calibrate_levels(..., forward=f)`` would run ``f``'s code inside a device entry:
    a caller that passes one must be inside the device closure."""
    modules = fingerprint._modules(fingerprint.package_root())
    graph = {}
    for rel, data in modules:
        name = fingerprint.module_name(rel)
        graph[name] = fingerprint.imports(ast.parse(data), name, rel.endswith("__init__.py"))
    device = fingerprint.closure(fingerprint.KINDS["device"].roots, graph)
    callers = set()
    for rel, data in modules:
        for node in ast.walk(ast.parse(data)):
            if isinstance(node, ast.Call) and fingerprint._call_name(node.func) in (
                    "calibrate_levels", "calibrate_in_network") and any(
                    k.arg == "forward" for k in node.keywords):
                callers.add(fingerprint.module_name(rel))
    assert callers <= device


def test_noisydeq_cache_shows_the_device_and_figure_codes(tmp_path):
    from noisydeq.cachedir.inventory import scan
    from noisydeq.commands.cache import summary

    (tmp_path / "calibration").mkdir()
    current = summary(scan(tmp_path))["current"]
    assert current["codes"] == {"device": fingerprint.code_fingerprint("device"),
                                "figures": fingerprint.code_fingerprint("figures")}
