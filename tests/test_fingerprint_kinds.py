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
    ("commands/cache.py", '"', '"x', set(fingerprint.KINDS), set()),
    # a plot: the device entries keep theirs; the figures change, and a sweep's cells (the
    # sweep package draws its figures: sweep.write imports the plots)
    ("plots.py", "def ", "X_PLOT = 1\n\n\ndef ", {"device"}, {"figures", "sweep"}),
    # the sweep's evaluation: its cells, not the device entries
    ("sweep/evaluate.py", "def ", "X_EVAL = 1\n\n\ndef ", {"device"}, {"sweep"}),
    # the results loader, which the root package serves lazily (noisydeq.load_results):
    # no kind asks for it
    ("loading.py", "def ", "X_LOAD = 1\n\n\ndef ", set(fingerprint.KINDS), set()),
    # an RRAM chip's programming: every kind that runs it
    ("hardware/rram_program.py", "def ", "X_RRAM = 1\n\n\ndef ", set(),
     {"device", "sweep", "attacks", "studies", "certify", "lyapunov"}),
    # each cell store's command (a statement added: its messages, its options): no kind
    # changes
    ("commands/attack.py", "def ", "X_CLI = 1\n\n\ndef ", set(fingerprint.KINDS), set()),
    ("commands/study.py", "def ", "X_CLI = 1\n\n\ndef ", set(fingerprint.KINDS), set()),
    ("commands/certify.py", "def ", "X_CLI = 1\n\n\ndef ", set(fingerprint.KINDS), set()),
    ("commands/lyapunov.py", "def ", "X_CLI = 1\n\n\ndef ", set(fingerprint.KINDS), set()),
    ("commands/runs.py", "def ", "X_CLI = 1\n\n\ndef ", set(fingerprint.KINDS), set()),
    # inside each cell store's computation: its kind changes, the device entries' stays
    ("attacks/runner.py", "def ", "X_ATTACK = 1\n\n\ndef ",
     {"device", "studies", "certify", "lyapunov"}, {"attacks"}),
    ("attacks/ray_cells.py", "def ", "X_ATTACK = 1\n\n\ndef ", {"device"}, {"attacks"}),
    ("analysis/family.py", "def ", "X_FAMILY = 1\n\n\ndef ", {"device", "studies"},
     {"attacks", "certify"}),
    ("studies/evaluate.py", "def ", "X_STUDY = 1\n\n\ndef ",
     {"device", "attacks", "certify", "lyapunov"}, {"studies"}),
    ("studies/ray_models.py", "def ", "X_STUDY = 1\n\n\ndef ", {"device"}, {"studies"}),
    ("analysis/certified.py", "def ", "X_CERT = 1\n\n\ndef ",
     {"device", "attacks", "studies", "lyapunov"}, {"certify"}),
    ("analysis/certify_ray.py", "def ", "X_CERT = 1\n\n\ndef ", {"device"}, {"certify"}),
    ("analysis/lyapunov_experiment.py", "def ", "X_LYA = 1\n\n\ndef ",
     {"device", "attacks", "studies", "certify"}, {"lyapunov"}),
    # the cells' store (what a cell records and when it is served): every cell kind
    ("results.py", "def ", "X_RESULTS = 1\n\n\ndef ", {"device"},
     {"sweep", "attacks", "studies", "certify", "lyapunov"}),
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
    assert len(set(codes.values())) == len(codes)  # every kind its own, none the package's
    for kind, command in (("attacks", "attack"), ("studies", "study"),
                          ("certify", "certify"), ("lyapunov", "lyapunov")):
        assert f"noisydeq.commands.{command}" not in fingerprint.closure(
            fingerprint.KINDS[kind].roots, graph), kind  # each cell store's command outside


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


# --- the cell stores' kinds, checked at run time ------------------------------------------


def _ran_within(entries, run, skip=()):
    """The modules of the package whose functions ran while one of ``entries`` (module,
    function name) — a cell's computation — was on the stack, while ``run()`` ran; not
    counting what ran inside one of ``skip`` (what a run does besides its cells: the
    figures, a caller's table writer)."""
    import sys
    from pathlib import Path

    root = fingerprint.package_root()
    names: dict[str, str | None] = {}

    def module(filename):
        if filename not in names:
            path = Path(filename)
            names[filename] = (fingerprint.module_name(path.relative_to(root).as_posix())
                               if path.is_relative_to(root) else None)
        return names[filename]

    depth, skipped, ran = [0], [0], set()

    def profile(frame, event, arg):
        if event not in ("call", "return"):
            return
        code = frame.f_code
        name = module(code.co_filename)
        if name is None:
            return
        entry, aside = (name, code.co_name) in entries, (name, code.co_name) in skip
        if event == "call":
            depth[0] += entry
            skipped[0] += aside
            if depth[0] and not skipped[0]:
                ran.add(name)
        else:
            depth[0] -= entry
            skipped[0] -= aside

    sys.setprofile(profile)
    try:
        run()
    finally:
        sys.setprofile(None)
    assert depth[0] == 0 and skipped[0] == 0
    return ran


def _outside(kind, ran):
    graph = {}
    for rel, data in fingerprint._modules(fingerprint.package_root()):
        name = fingerprint.module_name(rel)
        graph[name] = fingerprint.imports(ast.parse(data), name, rel.endswith("__init__.py"))
    reach = fingerprint.closure(fingerprint.KINDS[kind].roots, graph)
    assert ran, kind  # the entries ran
    return sorted(ran - reach)


def test_every_function_an_attack_cell_runs_is_in_the_attacks_code(tmp_path):
    """An attack run on a device (a chip programmed, calibrated, attacked, judged, its
    cells and early-state selection written): every function of the package that ran
    inside ``run_attacks`` — the models' code the caller handed it included — lives in a
    module of the ``attacks`` closure (else an edit there would change a cell's numbers and
    not the code it records)."""
    from types import SimpleNamespace

    import torch

    from noisydeq.attacks.grid import AttackRunSpec
    from noisydeq.attacks.runner import run_attacks
    from noisydeq.config import build
    from noisydeq.swept_model import SweepModel
    from tests.attacks.helpers import small_deq

    g = torch.Generator().manual_seed(0)
    x = torch.rand(24, 16, generator=g, dtype=torch.float64)
    task = SimpleNamespace(name="toy", kind="classification", x_test=x,
                           y_test=torch.randint(0, 3, (24,), generator=g), x_train=x[:8],
                           out_features=3)
    spec = build(AttackRunSpec, {"family": "x", "attacks": "pgd-eps", "eps": "0.05",
                                 "pgd_steps": [2], "samples": 8, "val_samples": 4,
                                 "device": "rram", "snr_db": "20", "estimators": ["backprop"],
                                 "defences": ["final", "early"]})
    member = SweepModel(small_deq(), "deq", 1, 12, 64)
    ran = _ran_within({("noisydeq.attacks.runner", "run_attacks")}, lambda: run_attacks(
        spec, [member], task, tmp_path / "run", progress=False, plots=False,
        echo=lambda s: None))
    assert {"noisydeq.attacks.runner", "noisydeq.hardware.rram"} <= ran
    assert _outside("attacks", ran) == []


def test_every_function_a_study_evaluation_runs_is_in_the_studies_code(tmp_path):
    from noisydeq.studies import run_study
    from tests.test_studies import tiny

    spec = tiny(train_snr_db=["inf"], test_snr_db=["inf", 0.0], shifts=[4])
    ran = _ran_within({("noisydeq.studies.runner", "run_study")},
                      lambda: run_study(spec, tmp_path / "run", plots=False))
    assert {"noisydeq.studies.evaluate", "noisydeq.train"} <= ran
    assert _outside("studies", ran) == []


def test_every_function_a_certify_cell_runs_is_in_the_certify_code(tmp_path):
    """The certification of a model on a device (its envelope, bounds, PGD) from
    ``plan`` to the written cells: every function that ran lives in the ``certify``
    closure. (The tables and figures a caller writes afterwards are not the cells'.)"""
    from types import SimpleNamespace

    import torch

    from noisydeq.analysis.certified import plan
    from noisydeq.analysis.certify_run import certify_run
    from noisydeq.certify.spec import CertifySpec
    from tests.certify.helpers import small_model

    model = small_model("mondeq", "ibp", m=0.5)
    member = SimpleNamespace(model=model, kind="mondeq", depth=1, width=12, seed=0,
                             params=sum(p.numel() for p in model.parameters()), train={})
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 16, generator=g, dtype=torch.float64)
    y = torch.randint(0, 5, (6,), generator=g)
    spec = CertifySpec(eps=[0.01], pgd_steps=2, device="rram", k=1.0)

    def run():
        plans = [plan(member, spec, x)]
        certify_run([member], plans, x, y, spec, tmp_path / "out", lambda rows: [],
                    echo=lambda s: None)

    ran = _ran_within({("noisydeq.analysis.certified", "plan"),
                       ("noisydeq.analysis.certify_run", "certify_run")}, run)
    assert {"noisydeq.analysis.certified", "noisydeq.certify.envelope_types"} <= ran
    assert _outside("certify", ran) == []


def test_every_function_a_lyapunov_cell_runs_is_in_the_lyapunov_code():
    """A LyaDEQ attack cell (its attacks and readout statistics, on a LyaDEQ)."""
    import torch

    from noisydeq.analysis.lyapunov_experiment import AttackGrid, attack_cell, readout_stats
    from tests.test_lyapunov_integration import _model

    model = _model("both")
    x, y = torch.rand(6, 64), torch.randint(0, 10, (6,))

    def run():
        attack_cell(model, x, y, AttackGrid(eps_255=[2], batch_size=6, steps=2), seed=0)
        readout_stats(model, x)

    ran = _ran_within({("noisydeq.analysis.lyapunov_experiment", "attack_cell"),
                       ("noisydeq.analysis.lyapunov_experiment", "readout_stats")}, run)
    assert "noisydeq.analysis.iterative_attacks" in ran
    assert _outside("lyapunov", ran) == []


def test_the_cell_stores_record_their_kinds_code():
    from noisydeq.analysis.certify_run import CertifyDir
    from noisydeq.analysis.lyapunov_experiment import ExperimentDir
    from noisydeq.attacks.runner import AttackRunDir
    from noisydeq.studies.rundir import StudyDir

    for cls, kind in ((AttackRunDir, "attacks"), (StudyDir, "studies"),
                      (CertifyDir, "certify"), (ExperimentDir, "lyapunov")):
        assert cls.records_code and cls("unused").code == fingerprint.code_fingerprint(kind)
        # the models, solvers and devices their callers hand them (checked above for the
        # device roots: every nn.Module and autograd.Function class)
        assert set(fingerprint._MODEL_CODE) <= set(fingerprint.KINDS[kind].roots)
        assert fingerprint.code_fingerprint(kind) != fingerprint.code_fingerprint()


def test_the_ray_workers_check_their_kinds_code(monkeypatch):
    """A worker compares the driver's code with its own of the cells' kind: one whose
    package differs outside that kind (a command's message) computes the same cells."""
    from noisydeq.analysis import certify_ray
    from noisydeq.attacks import ray_cells
    from noisydeq.errors import NoisyDEQError
    from noisydeq.studies import ray_models

    for kind, check, ok, value in (
            ("attacks", ray_cells._checked,
             lambda c: ray_cells.Payload("spec", "task", c, "cpu"), "spec"),
            ("studies", ray_models._checked, lambda c: ("spec", "task", "sets", c), "spec"),
            ("certify", certify_ray._checked, lambda c: ("x", "y", "spec", c), "x")):
        mine = fingerprint.code_fingerprint(kind)
        got = check(ok(mine))
        assert (got.spec if kind == "attacks" else got[0]) == value
        with pytest.raises(NoisyDEQError, match="other noisydeq code than the driver"):
            check(ok(fingerprint.code_fingerprint()))  # the whole package's: another code


@pytest.mark.slow
def test_noisydeq_attack_computes_its_cells_with_the_attacks_code_only(tmp_path, capsys):
    """``noisydeq attack`` on a trained family (on an RRAM chip): what loads its members
    and task (:func:`noisydeq.analysis.family.attack_members`) and computes its cells
    (``run_attacks``, its figures aside: kind ``figures``) runs only code of the
    ``attacks`` closure — the command's own code is outside it, and hands on only the
    grid it records and the family's path."""
    from tests.analysis.analysis_family import tiny_sweep
    from tests.cli_helpers import run_cli

    with tiny_sweep(tmp_path, "--depths", "1", "--snr", "inf", "--chips", "1", "--device",
                    "ideal", "--noise-site", "signal", "--jobs", "1") as family:
        argv = ["attack", "--family", str(family), "--attacks", "pgd-eps", "--eps", "0,0.1",
                "--pgd-steps", "2", "--samples", "6", "--val-samples", "4", "--device",
                "rram", "--snr", "20", "--threads", "1", "--quiet", "--out",
                str(tmp_path / "attack")]
        result = {}
        ran = _ran_within({("noisydeq.analysis.family", "attack_members"),
                           ("noisydeq.attacks.runner", "run_attacks")},
                          lambda: result.update(zip(("code", "out", "err"),
                                                    run_cli(argv, capsys), strict=True)),
                          skip={("noisydeq.figure_cache", "cached_figures")})
    assert result["code"] in (0, None), result["err"]
    assert {"noisydeq.analysis.family", "noisydeq.attacks.runner",
            "noisydeq.hardware.rram"} <= ran
    assert _outside("attacks", ran) == []


@pytest.mark.slow
def test_noisydeq_certify_computes_its_cells_with_the_certify_code_only(tmp_path, capsys):
    """``noisydeq certify`` of a trained monDEQ family on a device: loading the members
    and test data, planning their envelopes and certifying (the table and figure the
    command writes aside) run only code of the ``certify`` closure."""
    import torch

    from noisydeq.config import FamilySpec, build
    from noisydeq.families import train_family
    from tests.cli_helpers import run_cli

    torch.manual_seed(0)
    spec = build(FamilySpec, {"task": "digits", "depths": [1], "kinds": ["mondeq"],
                              "hidden": 16, "train": {"epochs": 1, "batch_size": 64}})
    train_family(spec, cache_dir=tmp_path / "fam")
    argv = ["certify", str(tmp_path / "fam"), "--eps", "0.01", "--n-test", "20", "--device",
            "rram", "--k", "0.5", "--pgd-steps", "2", "--quiet", "--out",
            str(tmp_path / "out")]
    result = {}
    ran = _ran_within({("noisydeq.analysis.family", "load_family"),
                       ("noisydeq.analysis.family", "load_family_task"),
                       ("noisydeq.analysis.certified", "plan"),
                       ("noisydeq.analysis.certify_run", "certify_run")},
                      lambda: result.update(zip(("code", "out", "err"),
                                                run_cli(argv, capsys), strict=True)),
                      skip={("noisydeq.commands.certify", "<lambda>")})
    assert result["code"] in (0, None), result["err"]
    assert {"noisydeq.analysis.certified", "noisydeq.certify.pgd"} <= ran
    assert _outside("certify", ran) == []
