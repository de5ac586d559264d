"""``--cache DIR`` is the cache root of the whole command — models, calibrations, chips,
figures, code memo, in the spawned workers too — with only the root moving (the entries'
names, the cache keys, are those of the same run under ``$NOISYDEQ_CACHE``); and a cache
that is read-only but holds every entry a command needs is served, nothing written."""

from __future__ import annotations

import builtins
import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from noisydeq import runtime
from noisydeq.cli import main
from tests.cli_helpers import one_line_error, run_cli

#: a tiny rram sweep (digits, depth 1, one epoch, 128 training samples, hidden 8)
SWEEP = ["sweep", "--task", "digits", "--device", "rram", "--noise-site", "device", "--snr",
         "0,10", "--depths", "1", "--epochs", "1", "--set", "hidden=8", "--set",
         "max_train_samples=128", "--threads", "1", "--quiet"]
CLI = "import sys; from noisydeq.cli import main; main(sys.argv[1:])"


def _files(root: Path) -> dict[str, tuple[int, int]]:
    """Every file below ``root`` (lock files included): (size, mtime_ns)."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def _rows(out: Path) -> list[dict[str, str]]:
    """``out/results.csv`` without its timing column."""
    import csv

    with open(out / "results.csv", newline="") as fh:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(fh)]


def _cli(args: list[str], cwd: Path, env_cache: Path) -> None:
    """``noisydeq ARGS`` in a fresh process (its own code-fingerprint memo, spawned workers)
    with ``$NOISYDEQ_CACHE`` = ``env_cache`` and the figure cache on."""
    env = {k: v for k, v in os.environ.items() if k != "NOISYDEQ_FIGURE_CACHE"}
    env.update(NOISYDEQ_CACHE=str(env_cache), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", CLI, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.slow
def test_cache_dir_holds_every_kind_and_only_the_root_moves(tmp_path, capsys, monkeypatch):
    """Before, --cache moved the models only: calibrations, chips, figures and the code memo
    went to $NOISYDEQ_CACHE (and with --jobs 2 the spawned workers trained the models
    there too)."""
    env_cache, chosen, other = tmp_path / "env", tmp_path / "chosen", tmp_path / "other"
    env_cache.mkdir()  # existing: the code memo would be written into it
    argv = [*SWEEP, "--chips", "2", "--jobs", "2"]
    _cli([*argv, "--cache", "chosen", "--out", "run1"], tmp_path, env_cache)
    assert list(env_cache.iterdir()) == []
    # the same run under $NOISYDEQ_CACHE: the same entries under the same names
    _cli([*argv, "--out", "run2"], tmp_path, other)
    names = sorted(_files(chosen))
    assert names == sorted(_files(other))
    assert (tmp_path / "run1" / "results.csv").read_bytes() == (
        tmp_path / "run2" / "results.csv").read_bytes()
    monkeypatch.setenv("NOISYDEQ_CACHE", str(env_cache))
    code, out, err = run_cli(["cache", "--json", "--cache", str(chosen)], capsys)
    assert code == 0, err
    info = json.loads(out)
    assert info["cache"] == str(chosen)
    assert {k: v["entries"] > 0 for k, v in info["kinds"].items()} == {
        "models": True, "calibration": True, "chips": True, "figures": True, "code": True}
    assert all(v["stale"] == 0 for v in info["kinds"].values())
    assert list(env_cache.iterdir()) == []


def test_cache_option_is_checked_named_and_restored(tmp_path, capsys, monkeypatch):
    """An unwritable --cache is refused in a line naming --cache (not $NOISYDEQ_CACHE),
    before the run directory is made; after the command the process's cache is the
    variable's again."""
    env_cache = tmp_path / "env"
    monkeypatch.setenv("NOISYDEQ_CACHE", str(env_cache))
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    for cmd in ([*SWEEP, "--out", str(tmp_path / "run")],
                ["train", "--depths", "1", "--epochs", "1", "--threads", "1", "--quiet"]):
        code, _, err = run_cli([*cmd, "--cache", str(blocker)], capsys)
        one_line_error(code, err, f"--cache {blocker}", "is a file")
        assert runtime.cache_root() == env_cache
        assert os.environ["NOISYDEQ_CACHE"] == str(env_cache)
    code, _, err = run_cli([*SWEEP, "--out", str(tmp_path / "run"), "--cache", ""], capsys)
    one_line_error(code, err, "--cache ''")
    assert not (tmp_path / "run").exists() and not env_cache.exists()


def test_cache_at_nests_and_restores(tmp_path, monkeypatch):
    monkeypatch.delenv("NOISYDEQ_CACHE")
    monkeypatch.chdir(tmp_path)
    with runtime.cache_at("a") as a:
        assert a == Path("a") and runtime.cache_root() == a
        assert os.environ["NOISYDEQ_CACHE"] == str(tmp_path / "a")  # absolute: for workers
        with runtime.cache_at(tmp_path / "b"):
            assert runtime.cache_root() == tmp_path / "b"
        assert runtime.cache_root() == a
        assert runtime.cache_root("c") == Path("c")  # an explicit directory still wins
    assert "NOISYDEQ_CACHE" not in os.environ and runtime._chosen is None


def install_read_only(monkeypatch, root: Path) -> None:
    """From now on (until ``monkeypatch`` is undone) every write below ``root`` fails with
    EROFS, as on a read-only mount (opening for writing, ``open`` for writing, creating,
    renaming and removing files or directories)."""
    root = root.resolve()

    def below(path) -> bool:
        try:
            return Path(os.fsdecode(path)).resolve().is_relative_to(root)
        except TypeError:  # a file descriptor
            return False

    def refuse(path):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(path))

    real_open, real_builtin_open = os.open, builtins.open
    writes = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def os_open(path, flags, *args, **kwargs):
        if flags & writes and below(path):
            refuse(path)
        return real_open(path, flags, *args, **kwargs)

    def builtin_open(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+") and below(file):
            refuse(file)
        return real_builtin_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(builtins, "open", builtin_open)
    for name in ("mkdir", "rmdir", "unlink", "remove"):
        real = getattr(os, name)

        def one(path, *args, _real=real, **kwargs):
            if below(path) and not (_real is os.mkdir and Path(path).is_dir()):
                refuse(path)
            return _real(path, *args, **kwargs)

        monkeypatch.setattr(os, name, one)
    for name in ("replace", "rename"):
        real = getattr(os, name)

        def two(src, dst, *args, _real=real, **kwargs):
            if below(src) or below(dst):
                refuse(dst)
            return _real(src, dst, *args, **kwargs)

        monkeypatch.setattr(os, name, two)


@pytest.fixture
def read_only(monkeypatch):
    """``read_only(root)``: :func:`install_read_only` (every write below ``root`` fails
    with EROFS)."""
    return lambda root: install_read_only(monkeypatch, root)


def _writable_then_read_only(argv, cache: Path, tmp_path: Path, capsys, read_only):
    """Run the certify ``argv`` with ``--out tmp_path/writable``, make ``cache`` read-only,
    run it again with ``--out tmp_path/read-only``: exit 0 and not a word on stderr.
    Returns the cache's files as they were between the two runs."""
    code, _, err = run_cli([*argv, "--out", str(tmp_path / "writable")], capsys)
    assert code == 0, err
    before = _files(cache)
    read_only(cache)
    code, _, err = run_cli([*argv, "--out", str(tmp_path / "read-only")], capsys)
    assert code == 0 and not err.strip(), err
    return before


@pytest.fixture(scope="module")
def certify_family(tmp_path_factory):
    """A mondeq / ffw_relu sweep on rram with --cache: (root, run dir, cache)."""
    root = tmp_path_factory.mktemp("certify")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NOISYDEQ_CACHE", str(root / "env"))
        try:
            main([*SWEEP, "--kinds", "mondeq,ffw_relu", "--chips", "1", "--jobs", "1",
                  "--cache", str(root / "cache"), "--out", str(root / "run")])
        except SystemExit as e:
            assert e.code == 0
    assert not (root / "env").exists()
    return root, root / "run", root / "cache"


@pytest.mark.slow
def test_certify_serves_a_read_only_complete_cache(certify_family, tmp_path, capsys,
                                                   monkeypatch, read_only):
    """certify on a sweep run took each model entry's lock, writing its lock file: a
    read-only cache holding every model was refused ('<entry>/.noisydeq.lock: Read-only
    file system')."""
    root, run, cache = certify_family
    monkeypatch.setenv("NOISYDEQ_CACHE", str(tmp_path / "env"))
    argv = ["certify", str(run), "--eps", "0.05", "--n-test", "40", "--threads", "1",
            "--quiet", "--cache", str(cache)]
    before = _writable_then_read_only(argv, cache, tmp_path, capsys, read_only)
    monkeypatch.undo()
    assert _files(cache) == before
    assert _rows(tmp_path / "read-only") == _rows(tmp_path / "writable")
    assert not (tmp_path / "env").exists()


@pytest.mark.slow
def test_analyses_serve_a_read_only_complete_cache(tmp_path, capsys, monkeypatch, read_only):
    """attack (with its device: calibrations, chips, figures), spectrum and sensitivity on a
    sweep run whose cache is read-only and complete: served, nothing written, not a word;
    an attack that needs a new figure entry says once that it is not cached, and goes on."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("NOISYDEQ_CACHE", str(tmp_path / "env"))
    monkeypatch.delenv("NOISYDEQ_FIGURE_CACHE", raising=False)
    code, _, err = run_cli([*SWEEP, "--chips", "1", "--jobs", "1", "--cache", str(cache),
                            "--out", str(tmp_path / "run")], capsys)
    assert code == 0, err
    attack = ["attack", "--family", str(tmp_path / "run"), "--attacks", "pgd-eps", "--eps",
              "0.1", "--samples", "20", "--val-samples", "20", "--device", "rram", "--chips",
              "1", "--threads", "1", "--quiet", "--cache", str(cache)]
    code, _, err = run_cli([*attack, "--snr", "10", "--out", str(tmp_path / "a1")], capsys)
    assert code == 0, err
    before = _files(cache)
    read_only(cache)
    code, _, err = run_cli([*attack, "--snr", "10", "--out", str(tmp_path / "a2")], capsys)
    assert code == 0 and not err.strip(), err
    assert (tmp_path / "a1" / "results.csv").read_bytes() == (
        tmp_path / "a2" / "results.csv").read_bytes()
    for argv in (["spectrum", "--inputs", "2"],
                 ["sensitivity", "--samples", "5", "--inputs", "2", "--precision", "0"]):
        code, _, err = run_cli([*argv, "--family", str(tmp_path / "run"), "--threads", "1",
                                "--cache", str(cache), "--out", str(tmp_path / argv[0])],
                               capsys)
        assert code == 0, err
    code, _, err = run_cli([*attack, "--snr", "0", "--out", str(tmp_path / "a3")], capsys)
    assert code == 0, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"noisydeq: warning: {cache}/figures/"), err
    assert "Read-only file system" in lines[0] and "not cached" in lines[0]
    monkeypatch.undo()
    assert _files(cache) == before
    assert not (tmp_path / "env").exists()


def _table2(path: Path, hidden: int) -> Path:
    """A tiny certify ``table2`` experiment on digits (one epoch, 256 samples)."""
    path.write_text(
        'name = "t2"\nkind = "table2"\neps_train = [0.1]\nparams = ["ibp"]\n'
        f'[family]\ntask = "digits"\nkinds = ["mondeq", "ffw_relu"]\nhidden = {hidden}\n'
        '[train]\nepochs = 1\nbatch_size = 64\nmax_train_samples = 256\n'
        '[ibp]\nwarmup_epochs = 0\nramp_epochs = 1\n'
        '[certify]\neps = [0.05]\nn_test = 40\npgd_steps = 2\n', encoding="utf-8")
    return path


@pytest.mark.slow
def test_certify_experiment_serves_a_read_only_cache_or_names_the_model_it_lacks(
        tmp_path, capsys, monkeypatch, read_only):
    """A certify experiment trains into the cache: a read-only one was refused up front
    even when it held every model. Now it is served; a model it lacks is one line naming
    the member and its entry (noisydeq.families.require_members), and --out is not
    made."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("NOISYDEQ_CACHE", str(tmp_path / "env"))
    argv = ["certify", str(_table2(tmp_path / "t2.toml", 8)), "--threads", "1", "--quiet",
            "--cache", str(cache)]
    before = _writable_then_read_only(argv, cache, tmp_path, capsys, read_only)
    assert _rows(tmp_path / "read-only") == _rows(tmp_path / "writable")
    other = ["certify", str(_table2(tmp_path / "t3.toml", 6)), "--threads", "1", "--quiet",
             "--cache", str(cache), "--out", str(tmp_path / "missing")]
    code, _, err = run_cli(other, capsys)
    one_line_error(code, err, f"--cache {cache}: read-only, and it lacks the model entry of "
                   "mondeq d1 w6 seed 0 (models/", "nothing was written")
    monkeypatch.undo()
    assert _files(cache) == before
    assert not (tmp_path / "missing").exists() and not (tmp_path / "env").exists()
