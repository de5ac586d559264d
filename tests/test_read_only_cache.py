"""A shared cache that this process cannot write in (a read-only mount, a colleague's
directory) serves every command that finds there each entry it needs — sweep, run, train
--depths, adversarial, lyapunov, study — writing only its own run directory, with the
table a writable cache gives; a cache that lacks one is refused in one line naming the first
missing entry (model, calibration, programmed chips: kind, what and key), before anything
is written. These commands refused a read-only cache up front ('--cache C: cannot write in
C (Read-only file system)') even when it held everything.

The cache is made read-only in-process by :func:`tests.test_cache_root.install_read_only`
(every write below it fails with EROFS: chmod cannot stop root, who runs CI); spawned
workers do not inherit that, so one test mounts a real read-only bind of the cache in a
private mount namespace (``unshare -m``) where the machine allows it."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli_helpers import one_line_error, run_cli
from tests.test_cache_root import CLI, SWEEP, _files, install_read_only
from tests.test_runs_kinds import TINY

pytestmark = pytest.mark.slow

#: the refusal's words after the entry: nothing written, what to do
TAIL = "nothing was written: run the command once with a writable cache (--cache DIR) to make it"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A cache filled by the tiny rram sweep (depth 1, two chips, 0 and 10 dB) and its run
    directory: (cache, run)."""
    root = tmp_path_factory.mktemp("base")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NOISYDEQ_CACHE", str(root / "env"))
        from noisydeq.cli import main

        try:
            main([*SWEEP, "--chips", "2", "--jobs", "1", "--cache", str(root / "cache"),
                  "--out", str(root / "run")])
        except SystemExit as e:
            assert e.code == 0
    return root / "cache", root / "run"


@pytest.fixture
def read_only(monkeypatch):
    """``read_only(root)``: every write below ``root`` fails with EROFS from now on."""
    return lambda root: install_read_only(monkeypatch, root)


@pytest.fixture
def cache(base, tmp_path, monkeypatch):
    """A copy of the base cache (each test may fill its own), ``$NOISYDEQ_CACHE`` elsewhere
    (the warnings said once per process, entries not cached, are said again in each test:
    tests/conftest.py)."""
    monkeypatch.setenv("NOISYDEQ_CACHE", str(tmp_path / "env"))
    monkeypatch.delenv("NOISYDEQ_FIGURE_CACHE", raising=False)
    shutil.copytree(base[0], tmp_path / "cache")
    return tmp_path / "cache"


def _warnings_only(err: str) -> None:
    """Nothing on stderr but 'figures not cached' (a figure whose inputs hold a time)."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert all("figures not cached" in ln and "Read-only file system" in ln
               for ln in lines), err
    assert len(lines) <= 1, err


def _writable_then_read_only(argv, cache: Path, tmp_path: Path, capsys, read_only):
    """``argv --out tmp_path/w`` on the writable ``cache``, then ``argv --out tmp_path/r``
    with it read-only: both exit 0, the second says at most that a figure is not cached.
    Returns the cache's files as they were between the two."""
    code, _, err = run_cli([*argv, "--out", str(tmp_path / "w")], capsys)
    assert code == 0, err
    before = _files(cache)
    read_only(cache)
    code, _, err = run_cli([*argv, "--out", str(tmp_path / "r")], capsys)
    assert code == 0, err
    _warnings_only(err)
    return before


def _refused(argv, out: Path, capsys, *needles) -> None:
    code, _, err = run_cli([*argv, "--out", str(out)], capsys)
    one_line_error(code, err, *needles, TAIL)
    assert not out.exists()


def test_sweep_serves_a_read_only_complete_cache(base, cache, tmp_path, capsys, read_only):
    """The same sweep on the read-only copy: the same results and per-layer tables byte
    for byte, not a word on stderr, the cache untouched (no lock, no entry)."""
    before = _files(cache)
    read_only(cache)
    out = tmp_path / "ro"
    code, _, err = run_cli([*SWEEP, "--chips", "2", "--jobs", "1", "--cache", str(cache),
                            "--out", str(out)], capsys)
    assert code == 0 and not err.strip(), err
    for name in ("results.csv", "layers.csv"):
        assert (out / name).read_bytes() == (base[1] / name).read_bytes()
    assert _files(cache) == before
    # resumed from its own run directory: every cell served, nothing needed, nothing said
    code, _, err = run_cli([*SWEEP, "--chips", "2", "--jobs", "1", "--cache", str(cache),
                            "--out", str(out)], capsys)
    assert code == 0 and not err.strip(), err
    assert (out / "results.csv").read_bytes() == (base[1] / "results.csv").read_bytes()
    assert _files(cache) == before


def test_sweep_serves_a_cache_without_write_permission(base, cache, tmp_path, capsys):
    """``chmod -R a-w`` (a colleague's cache: EACCES, not EROFS): served the same table, a
    missing entry one line. Skipped where chmod cannot stop this process (root with
    CAP_DAC_OVERRIDE: ``os.access`` would say yes either way, so writing is tried)."""
    from noisydeq.store import try_writing

    before = _files(cache)
    modes = {p: p.stat().st_mode for p in [cache, *cache.rglob("*")]}
    for p, mode in modes.items():
        p.chmod(mode & ~0o222)
    try:
        try:
            try_writing(cache)
        except PermissionError:
            pass
        else:
            pytest.skip("chmod a-w does not stop this process from writing (root)")
        argv = [*SWEEP, "--chips", "2", "--jobs", "1", "--cache", str(cache)]
        code, _, err = run_cli([*argv, "--out", str(tmp_path / "r")], capsys)
        assert code == 0 and not err.strip(), err
        assert (tmp_path / "r" / "results.csv").read_bytes() == (
            base[1] / "results.csv").read_bytes()
        _refused([*argv, "--depths", "1,3"], tmp_path / "x", capsys,
                 "lacks the model entry of deq d3 w14 seed 0 (models/")
    finally:
        for p, mode in modes.items():
            p.chmod(mode)
    assert _files(cache) == before


def test_sweep_names_the_first_entry_a_read_only_cache_lacks(base, cache, tmp_path, capsys,
                                                             read_only):
    """A model, a chip's calibration, an extension's calibration and the programmed chips
    the cache lacks: one line each naming the entry, no run directory made, an existing one
    left as it was (still sealed), the cache untouched."""
    chipless = tmp_path / "chipless"
    shutil.copytree(cache, chipless)
    for entry in (chipless / "chips").iterdir():
        entry.unlink()
    run = tmp_path / "run"
    shutil.copytree(base[1], run)
    before, run_before = _files(cache), _files(run)
    read_only(cache)
    read_only(chipless)
    argv = [*SWEEP, "--jobs", "1", "--cache", str(cache)]
    _refused([*argv, "--chips", "2", "--depths", "1,3"], tmp_path / "o1", capsys,
             f"--cache {cache}: read-only, and it lacks the model entry of deq d3 w14 seed 0 "
             "(models/")
    _refused([*argv, "--chips", "3"], tmp_path / "o2", capsys,
             "lacks the calibration entry of deq-d1-w8-s0-tinf chip 2 at 0,10 dB (calibration/")
    # extending the run directory: its new level is calibrated apart (a group of its own)
    code, _, err = run_cli([*argv, "--chips", "2", "--snr", "0,10,20", "--out", str(run)],
                           capsys)
    one_line_error(code, err, "lacks the calibration entry of deq-d1-w8-s0-tinf chip 0 at "
                   "20 dB (calibration/", TAIL)
    assert _files(run) == run_before and (run / "SHA256SUMS").is_file()
    _refused([*SWEEP, "--jobs", "1", "--cache", str(chipless), "--chips", "2"],
             tmp_path / "o3", capsys, f"--cache {chipless}: read-only, and it lacks the "
             "programmed chips entry of deq-d1-w8-s0-tinf chip 0 (chips/")
    assert _files(cache) == before


def _experiment(path: Path) -> Path:
    """The base sweep as an experiment file (``noisydeq run FILE``)."""
    path.write_text(
        'name = "tiny-rram"\ntitle = "t"\nfigures = []\ndescription = "d"\n'
        '[sweep]\ntask = "digits"\ndevice = "rram"\nnoise_site = "device"\nchips = 2\n'
        'hidden = 8\nepochs = 1\nmax_train_samples = 128\n'
        '[quick]\ndepths = [1]\nsnr_db = [0.0, 10.0]\n'
        '[full]\ndepths = [1]\nsnr_db = [0.0, 10.0]\n', encoding="utf-8")
    return path


def test_run_and_train_family_serve_a_read_only_cache(base, cache, tmp_path, capsys,
                                                      read_only):
    """``run FILE`` (the base sweep as an experiment) and ``train --depths`` (a family
    trained into the copy first): served from the read-only cache with the same tables;
    a depth the cache lacks is one line."""
    train = ["train", "--task", "digits", "--depths", "1,3", "--width", "8", "--epochs", "1",
             "--threads", "1", "--quiet", "--json", "--cache", str(cache)]
    code, written, err = run_cli(train, capsys)
    assert code == 0, err
    before = _files(cache)
    read_only(cache)
    code, out, err = run_cli([
        "run", str(_experiment(tmp_path / "t.toml")), "--quick", "--threads", "1", "--jobs",
        "1", "--quiet", "--cache", str(cache), "--out", str(tmp_path / "r")], capsys)
    assert code == 0, err
    _warnings_only(err)  # its figures carry the experiment's title: not in the cache
    assert (tmp_path / "r" / "results.csv").read_bytes() == (
        base[1] / "results.csv").read_bytes()
    code, served, err = run_cli(train, capsys)
    assert code == 0 and not err.strip(), err
    import json

    keep = ("kind", "depth", "width", "params", "value", "config_hash", "path")
    rows = [{k: r[k] for k in keep} for r in json.loads(served)]
    assert rows == [{k: r[k] for k in keep} for r in json.loads(written)]
    assert all(r["loaded"] for r in json.loads(served))
    code, _, err = run_cli([*train[:4], "1,3,5", *train[5:]], capsys)
    one_line_error(code, err, "lacks the model entry of deq d5 w18 seed 0 (models/", TAIL)
    assert _files(cache) == before


ADVERSARIAL = ["adversarial", "adversarial-fig3", "--quiet",
               "--threads", "1", "--set", "family.task='digits'", "--set", "family.hidden=16",
               "--set", "grid.seeds=[0]", "--set", "grid.methods=['pgd']",
               "--set", "train.epochs=1", "--set", "train.max_train_samples=200",
               "--set", "train.adversarial={steps=2,val_steps=2}",
               "--set", "evaluations.*.samples=12", "--set", "evaluations.curves.steps=[1,2]",
               "--set", "evaluations.curves.eps=[0.0,0.3]"]


def test_adversarial_serves_a_read_only_cache(cache, tmp_path, capsys, read_only):
    """adversarial (PGD-AT, no defence): the same tables from the read-only copy; a
    defence whose models the cache lacks is one line, its --out not made."""
    argv = [*ADVERSARIAL, "--cache", str(cache), "--set", "grid.defences=['none']"]
    before = _writable_then_read_only(argv, cache, tmp_path, capsys, read_only)
    for name in ("curves/summary.csv", "curves/results.csv", "autoattack/summary.csv"):
        assert (tmp_path / "r" / name).read_bytes() == (tmp_path / "w" / name).read_bytes()
    _refused([*ADVERSARIAL, "--cache", str(cache), "--set",
              "grid.defences=['none','threshold']"], tmp_path / "x", capsys,
             "lacks the model entry of deq d1 w16 seed 0 (models/")
    assert _files(cache) == before
    # a finished experiment whose record would serve its models, from a read-only cache
    # without them: refused too (a cell computed again would train one mid-run)
    empty = tmp_path / "empty"
    empty.mkdir()
    read_only(empty)
    done = _files(tmp_path / "w")
    code, _, err = run_cli([*ADVERSARIAL, "--set", "grid.defences=['none']", "--cache",
                            str(empty), "--out", str(tmp_path / "w")], capsys)
    one_line_error(code, err, f"--cache {empty}: read-only, and it lacks the model entry of "
                   "deq d1 w16 seed 0 (models/", TAIL)
    assert _files(tmp_path / "w") == done


def _untimed(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(fh)]


def test_lyapunov_serves_a_read_only_cache(cache, tmp_path, capsys, read_only):
    """A tiny LyaDEQ experiment (attack table and an rram device sweep): the same tables
    from the read-only copy (the device table byte for byte; the attack table but its
    timing column); with a chip the cache has no calibration for, one line and no
    experiment directory."""
    def exp(chips: int) -> str:
        path = tmp_path / f"tiny{chips}.toml"
        # test_runs_kinds' tiny experiment, its device sweep on rram (calibrated chips)
        text = TINY.replace("chips = 1", f"chips = {chips}").replace("{snr = ", "{rram = ")
        assert text.count("rram") == 1 and text.count(f"chips = {chips}") == 1
        path.write_text(text, encoding="utf-8")
        return str(path)

    argv = ["lyapunov", exp(1), "--quiet", "--threads", "1", "--cache", str(cache)]
    before = _writable_then_read_only(argv, cache, tmp_path, capsys, read_only)
    w, r = tmp_path / "w", tmp_path / "r"
    assert (r / "device.csv").read_bytes() == (w / "device.csv").read_bytes()
    assert _untimed(r / "attack.csv") == _untimed(w / "attack.csv")
    _refused(["lyapunov", exp(2), "--quiet", "--threads", "1", "--cache", str(cache)],
             tmp_path / "x", capsys,
             "lacks the calibration entry of lyadeq-d1-w8-s0-tinf chip 1 at 0,15,30 dB")
    assert _files(cache) == before


def test_study_runs_beside_a_read_only_cache(cache, tmp_path, read_only):
    """A study keeps its models in its run directory: from a read-only cache (figures and
    code memo not written) the same rows."""
    from noisydeq import runtime
    from noisydeq.studies.runner import run_study
    from tests.test_studies import tiny

    grid = {"shifts": [4, 8], "budgets": ["train"], "train_snr_db": ["inf"],
            "test_snr_db": ["inf"], "seeds": [0]}
    with runtime.cache_at(cache):
        first = run_study(tiny(**grid), tmp_path / "w", plots=True)
        before = _files(cache)
        read_only(cache)
        again = run_study(tiny(**grid), tmp_path / "r", plots=True)
    untimed = [[{k: v for k, v in r.items() if "seconds" not in k} for r in res.rows]
               for res in (first, again)]
    assert untimed[0] == untimed[1]
    assert _files(cache) == before


def _private_ro_mount() -> bool:
    """Whether this process may bind-mount read-only in a private mount namespace."""
    if shutil.which("unshare") is None or os.geteuid() != 0:
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount --bind -o ro / /mnt"],
                           capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _private_ro_mount(),
                    reason="needs root and mount namespaces (unshare -m) for a read-only bind")
def test_sweep_with_workers_from_a_real_read_only_mount(base, tmp_path):
    """The cache bind-mounted read-only (a private namespace of the command alone) and two
    evaluation processes (spawned workers reload the models from it): the same table; an
    incomplete one is one line, exit 2, no run directory."""
    ro = tmp_path / "ro"
    ro.mkdir()
    before = _files(base[0])
    env = {k: v for k, v in os.environ.items() if k != "NOISYDEQ_FIGURE_CACHE"}
    env.update(NOISYDEQ_CACHE=str(tmp_path / "env"), OMP_NUM_THREADS="1")

    def noisydeq(*args: str) -> subprocess.CompletedProcess:
        line = " ".join(["mount --bind -o ro", str(base[0]), str(ro), "&& exec",
                         sys.executable, "-c", f'"{CLI}"', *args])
        return subprocess.run(["unshare", "-m", "sh", "-c", line], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=900)

    argv = [*SWEEP, "--chips", "2", "--jobs", "2", "--cache", str(ro)]
    proc = noisydeq(*argv, "--out", str(tmp_path / "r"))
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr
    assert (tmp_path / "r" / "results.csv").read_bytes() == (
        base[1] / "results.csv").read_bytes()
    proc = noisydeq(*argv, "--depths", "1,3", "--out", str(tmp_path / "x"))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "read-only, and it lacks the model entry of deq d3 w14 seed 0" in lines[0]
    assert not (tmp_path / "x").exists() and not (tmp_path / "env").exists()
    assert _files(base[0]) == before
