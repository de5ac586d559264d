"""The CLI loads torch, aihwkit and matplotlib only for the commands that compute: help and
listing commands start without them (a fresh interpreter each, so nothing is preloaded)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

HEAVY = ("torch", "aihwkit", "matplotlib")
PROBE = """
import json, sys
from noisydeq.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(json.dumps([m for m in {heavy!r} if m in sys.modules]))
"""


def _fresh(code: str, *args: str, cwd=None) -> tuple[subprocess.CompletedProcess, Any]:
    """Run ``code`` with ``args`` in a fresh interpreter (nothing preloaded): the finished
    process and the JSON its last line of output prints."""
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          cwd=cwd, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc, json.loads(proc.stdout.strip().splitlines()[-1])


def _heavy_modules(args: list[str], tmp_path) -> list[str]:
    return _fresh(PROBE.format(heavy=HEAVY), *args, cwd=tmp_path)[1]


@pytest.mark.parametrize("args", [["--help"], ["runs", "--help"], ["table", "--help"],
                                  ["devices", "--help"]])
def test_help_does_not_import_torch_aihwkit_or_matplotlib(args, tmp_path) -> None:
    assert _heavy_modules(args, tmp_path) == []


def test_the_probe_sees_torch_when_a_command_needs_it(tmp_path) -> None:
    """The same probe on `noisydeq devices` (it measures every preset): torch is loaded, so
    the check above can fail."""
    assert "torch" in _heavy_modules(["devices", "ideal"], tmp_path)


def test_help_lists_commands_without_importing_their_modules(tmp_path) -> None:
    """`noisydeq --help` lists the commands from cli.COMMANDS: no command module and no
    pydantic spec is imported (they were ~0.2 s of a 0.25 s help)."""
    code = PROBE.format(heavy=("pydantic", "noisydeq.specs", "noisydeq.commands.sweep",
                               "noisydeq.commands.runs"))
    proc, loaded = _fresh(code, "--help", cwd=tmp_path)
    assert "sweep" in proc.stdout and "runs" in proc.stdout
    assert loaded == []


def test_the_help_table_matches_the_commands() -> None:
    """cli.COMMANDS names every command of every module, in order, with the first paragraph
    of its help: the listing equals click's own at every width."""
    from click.utils import make_default_short_help

    from noisydeq.cli import COMMAND_MODULES, COMMANDS, _module_commands

    real = [(c.name, m, c) for m in COMMAND_MODULES for c in _module_commands(m)
            if not c.hidden]
    assert [(n, m) for n, m, _ in real] == [(n, m) for n, m, _ in COMMANDS]
    for (_, _, cmd), (_, _, text) in zip(real, COMMANDS, strict=True):
        for limit in (30, 45, 68, 120, 400):
            assert cmd.get_short_help_str(limit) == make_default_short_help(text, limit)


#: modules that take seconds to import under load (torch, or noisydeq's torch-side layers)
SLOW = ("torch", "matplotlib", "aihwkit", "noisydeq.models", "noisydeq.tasks",
        "noisydeq.hardware", "noisydeq.analysis.family", "noisydeq.analysis.traces",
        "noisydeq.studies", "noisydeq.attacks.grid", "noisydeq.analysis.lyapunov_experiment")
AFTER_HEARTBEAT = """
import json, sys
from noisydeq import progress
seen = []
enter = progress.heartbeat.__enter__
def spy(self):
    seen.append(set(sys.modules))
    return enter(self)
progress.heartbeat.__enter__ = spy
from noisydeq.cli import main
try:
    main(sys.argv[1:])
except SystemExit as exit:
    code = exit.code
slow = {slow!r}
late = sorted(m for m in slow if m in sys.modules and seen and m not in seen[0])
print(json.dumps([code, bool(seen), late]))
"""


@pytest.mark.parametrize("args,needle", [
    (["spectrum", "--family", "{d}", "--inputs", "-1"], "--inputs"),
    (["spectrum", "--family", "{d}/nope"], "does not exist"),
    (["spectrum", "--family", "{d}/damaged"], "config.toml is damaged"),
    (["sensitivity", "--family", "{d}", "--samples", "1"], "--samples"),
    (["solvers", "--solvers", "bogus"], "unknown solver"),
    (["solvers", "--max-iter", "0"], "--max-iter"),
    (["solvers", "--device", "rram"], "give --family"),
    (["certify", "{d}/nope"], "does not exist"),
    (["certify", "{d}/damaged"], "config.toml is damaged"),
    (["attack", "--family", "{d}", "--data-dir", "{d}/nope"], "--data-dir"),
    (["attack", "--family", "{d}", "--attacks", "pgd"], "names two curves"),
    (["attack", "--family", "{d}", "--attacks", "pgd-epz"], "did you mean 'pgd-eps'"),
    (["spectrum", "--family", "{d}", "--out", "{d}/file/sub"], "not a directory"),
    (["sensitivity", "--family", "{d}", "--out", "{d}/file"], "not a directory"),
    (["solvers", "--out", "{d}/file/x"], "not a directory"),
    (["lyapunov", "nope-exp"], "unknown experiment"),
    (["lyapunov", "lyapunov-table1", "--seeds", "a"], "--seeds 'a': seeds are integers"),
    (["study", "nope-exp"], "unknown experiment"),
    (["train", "--task", "digitz"], "did you mean 'digits'"),
    (["sweep", "--device", "nope", "--out", "{d}/o"], "unknown device 'nope'"),
    (["sweep", "--device", "rram-wan2020", "--out", "{d}/o"], "did you mean 'rram-wan2022"),
    (["sweep", "--train-device", "photonik", "--out", "{d}/o"],
     "train_device: unknown device 'photonik'; did you mean 'photonic'"),
    (["sweep", "--device", "{d}/missing.toml", "--out", "{d}/o"], "preset file not found"),
    # a preset file without its kind said "kind 'None' is not a device kind"
    (["sweep", "--device", "{d}/kindless.toml", "--out", "{d}/o"],
     "kindless.toml: no 'kind' (one of: ideal, snr, rram"),
    (["attack", "--family", "{d}", "--eps", "2"], "eps: 2 is outside [0, 1]"),
    (["attack", "--family", "{d}", "--norm", "l3"], "unknown norm 'l3'"),
    (["attack", "--family", "{d}", "--estimators", "exactt"], "did you mean 'exact'"),
    (["attack", "--family", "{d}", "--defences", "fnal"], "did you mean 'final'"),
    (["attack", "--family", "{d}", "--defences", "entropy:beta=-1"], "the step β"),
    (["certify", "{d}", "--eps", "-1"], "ε must be ≥ 0"),
    (["certify", "{d}", "--eps", "0.1,1.5"], "ε 1.5 is outside [0, 1]"),
    (["certify", "{d}", "--chip", "1"], "--chip needs --device"),
    (["certify", "{d}", "--k", "1"], "--k needs --device"),
    (["certify", "certify-mnist", "--eps", "x"], "'x' is not a number"),
    (["certify", "{d}/bad-certify.toml"], "[certify]: eps"),
    (["certify", "{d}/certify.toml", "--n-test", "0"], "command line: --inputs: must be ≥ 1"),
    # a --device preset is read torch-free (specs.device_presets), by every command taking it
    (["certify", "{d}", "--device", "nope"], "unknown device 'nope'"),
    (["certify", "{d}", "--device", "photonic"], "certify supports rram envelopes and ideal"),
    (["certify", "{d}", "--device", "rram", "--dynamic"], "add --read-noise-k"),
    (["certify", "{d}/certify.toml", "--device", "snr"], "'snr' (snr) adds Gaussian noise"),
    (["train", "--task", "digits", "--device", "rram-wan2O22"], "did you mean 'rram-wan2022'"),
    (["train", "--task", "digits", "--device", "{d}/file.toml"], "preset file not found"),
    (["train", "--task", "digits", "--device", "rram", "--device-adc-gain", "epoch"],
     "--device-adc-gain: only for a photonic device"),
    (["train", "--task", "digits", "--device", "photonic", "--device-drift-alpha", "epoch"],
     "--device-drift-alpha: only for an rram device"),
    (["sweep", "--device", "ideal", "--train-device", "rrm", "--out", "{d}/o"],
     "train_device: unknown device 'rrm'; did you mean 'rram'"),
    (["attack", "--family", "{d}", "--device", "nope"], "unknown device 'nope'"),
    (["sensitivity", "--family", "{d}", "--device", "nope"], "unknown device 'nope'"),
    (["spectrum", "--family", "{d}", "--device", "photonik"], "did you mean 'photonic'"),
    (["solvers", "--family", "{d}", "--device", "nope"], "unknown device 'nope'"),
    # found by the fresh-clone audit: these were checked after torch loaded (a heartbeat
    # line first at load 5-7)
    (["sweep", "--task", "nosuch", "--out", "{d}/o"], "unknown task 'nosuch'"),
    (["sweep", "--device", "snr", "--out", "{d}/file"], "is a file, not a directory"),
    (["train", "--lr", "-1"], "--lr: must be > 0, got -1.0"),
    (["train", "--train-snr", "10:0"], "--train-snr: SNR value '10:0'"),
    (["train", "--out", "{d}/file/sub"], "not a directory"),
    (["spectrum", "--family", "{d}/empty"], "no trained model (model.safetensors)"),
    (["sensitivity", "--family", "{d}/empty"], "no trained model (model.safetensors)"),
    (["attack", "--family", "{d}/empty"], "no trained model (model.safetensors)"),
    # certify takes its source as an argument: the message does not name --family
    (["certify", "{d}/empty"], "error: certify: no trained model (model.safetensors)"),
])
def test_bad_input_is_refused_before_slow_imports_under_the_heartbeat(args, needle,
                                                                      tmp_path) -> None:
    """A heartbeat prints its first line 5 s after a command starts: bad input is refused
    before the command's slow imports (seconds under load), so its one error line is never
    preceded by 'noisydeq: X: 0:05 elapsed'."""
    (tmp_path / "damaged").mkdir()
    (tmp_path / "damaged" / "config.toml").write_text("# sha256 00\nseeds = [0]\n")
    (tmp_path / "file").write_text("x")
    (tmp_path / "empty").mkdir()
    (tmp_path / "kindless.toml").write_text("[device]\nsnr_db = 20\n")
    (tmp_path / "bad-certify.toml").write_text('name = "x"\n[certify]\neps = [-1]\n')
    (tmp_path / "certify.toml").write_text('name = "x"\n[certify]\neps = [0.1]\n')
    argv = [a.replace("{d}", str(tmp_path)) for a in args]
    proc, (code, started, late) = _fresh(AFTER_HEARTBEAT.format(slow=SLOW), *argv,
                                         cwd=tmp_path)
    assert code == 2 and needle in proc.stderr, proc.stderr
    assert started and late == [], (late, proc.stderr)


def test_the_torch_free_task_names_are_the_registry_s() -> None:
    """``noisydeq train`` checks ``--task`` against specs.task_names before torch loads: the
    names are exactly the loaders of the task registry."""
    from noisydeq.specs.task_names import TASK_NAMES
    from noisydeq.tasks.registry import _registry

    assert tuple(_registry()) == TASK_NAMES


def test_the_checks_before_the_heartbeat_import_no_torch() -> None:
    """The modules commands validate with before their heavy imports (every spec module,
    the attack grid, certify's specs, the task names) load neither torch nor a torch-side
    layer of noisydeq, in a fresh interpreter."""
    code = ("import json, sys, pkgutil, importlib, noisydeq.specs, noisydeq.analysis\n"
            "for m in pkgutil.iter_modules(noisydeq.specs.__path__):\n"
            "    importlib.import_module('noisydeq.specs.' + m.name)\n"
            "import noisydeq.analysis.locate, noisydeq.analysis.solver_names\n"
            f"print(json.dumps([m for m in {SLOW!r} if m in sys.modules]))")
    assert _fresh(code)[1] == []


NO_TORCH = """
import json, sys
from noisydeq.cli import main
code = None
try:
    main(sys.argv[1:])
except SystemExit as exit:
    code = exit.code
print(json.dumps([code, "torch" in sys.modules]))
"""


@pytest.mark.parametrize("args,needle", [
    # an experiment file whose [sweep] device is no preset: refused like `sweep --device`
    (["run", "{d}/bad-device.toml"], "unknown device 'nope'"),
    (["run", "{d}/bad-train-device.toml"],
     "train_device: unknown device 'rrm'; did you mean 'rram'"),
    # the --threads option of the family commands loads no torch before their own checks
    (["spectrum", "--family", "{d}", "--inputs", "-1"], "--inputs"),
    (["sensitivity", "--family", "{d}", "--samples", "1"], "--samples"),
    (["solvers", "--max-iter", "0"], "--max-iter"),
    (["spectrum", "--family", "{d}", "--threads", "x"], "threads 'x'"),
    # a study's spec lived in noisydeq.studies (it imports torch): a typo came after torch
    # loaded, a heartbeat line first under load
    (["study", "algorithmic-prefix-sums", "--set", "seedz=[0]"],
     "[quick] --set: unknown key 'seedz'; did you mean 'seeds'?"),
    (["study", "{d}/bad-study.toml"], "[study]: unknown key 'seedz'; did you mean 'seeds'?"),
    (["sweep", "--kinds", "deq,fw", "--out", "{d}/o"],
     "kinds: unknown model kind 'fw'; did you mean 'ffw'?"),
])
def test_bad_input_is_refused_without_importing_torch(args, needle, tmp_path) -> None:
    """Bad input of a command whose checks are torch-free is one line and exit 2 in a fresh
    interpreter that never imports torch (not just before the heartbeat's first line)."""
    (tmp_path / "bad-device.toml").write_text('name = "x"\n[sweep]\ndevice = "nope"\n')
    from noisydeq.bundled import find_experiment

    study = Path(find_experiment("algorithmic-prefix-sums", "study")).read_text()
    (tmp_path / "bad-study.toml").write_text(study.replace("\nseeds =", "\nseedz =", 1))
    (tmp_path / "bad-train-device.toml").write_text(
        'name = "x"\n[sweep]\ndevice = "ideal"\ntrain_device = ["rrm"]\n')
    argv = [a.replace("{d}", str(tmp_path)) for a in args]
    proc, (code, torch_loaded) = _fresh(NO_TORCH, *argv, cwd=tmp_path)
    assert code == 2 and needle in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not torch_loaded, proc.stderr


def test_a_sweep_s_identity_reads_its_presets_without_the_hardware_layer() -> None:
    """``results.spec_identity`` (a sweep's default run directory, ``noisydeq run``'s and
    ``sweep``'s) reads the device presets torch-free (specs.device_presets), in a fresh
    interpreter: neither torch nor noisydeq.hardware is imported."""
    code = ("import json, sys\n"
            "from noisydeq.config import SweepSpec, build\n"
            "from noisydeq.results import spec_identity\n"
            "spec = build(SweepSpec, {'device': 'rram', 'train_device': 'photonic'}, "
            "where='sweep')\n"
            "ident = spec_identity(spec)\n"
            "print(json.dumps([ident['device_spec']['kind'], "
            "sorted(ident['train_device_specs']), "
            f"[m for m in {SLOW!r} if m in sys.modules]]))")
    assert _fresh(code)[1] == ["rram", ["photonic"], []]


def test_the_torch_free_checkpoint_name_is_train_s() -> None:
    from noisydeq.analysis.locate import CHECKPOINT
    from noisydeq.train import MODEL_FILE

    assert CHECKPOINT == MODEL_FILE
