"""``--cache DIR`` with ``--backend ray``: DIR is the cache root of the Ray workers too.

``runtime.cache_at`` sets the driver's root and its ``$NOISYDEQ_CACHE``, which processes it
starts inherit; a Ray cluster's workers are not its children (here: the session's local
cluster on 127.0.0.1, started before with another ``$NOISYDEQ_CACHE``), so their code memo
went under the cluster's own cache. ``cluster.remote`` hands each task the driver's root."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.cli_helpers import run_cli


def _files(root: Path) -> dict[str, int]:
    """Every file under ``root`` (relative path -> mtime in ns)."""
    return {p.relative_to(root).as_posix(): p.stat().st_mtime_ns
            for p in root.rglob("*") if p.is_file()} if root.is_dir() else {}


def _worker_env() -> str | None:
    return os.environ.get("NOISYDEQ_CACHE")


def _worker_root() -> str:
    from noisydeq.runtime import cache_root

    return str(cache_root())


@pytest.mark.ray
def test_a_ray_task_reads_the_drivers_cache_root(ray_cluster, tmp_path):
    from noisydeq import cluster
    from noisydeq.runtime import cache_at

    outside = ray_cluster.get(ray_cluster.remote(_worker_env).remote())
    with cache_at(tmp_path / "dir"):
        env = ray_cluster.get(cluster.remote(_worker_env, "env").remote())
        root = ray_cluster.get(cluster.remote(_worker_root, "root").remote())
    assert env == root == str((tmp_path / "dir").resolve())
    assert outside != env  # the cluster's workers were started with another cache


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.parametrize("command", ["sweep", "study"])
def test_cache_dir_on_ray_holds_every_entry_and_the_env_cache_none(
        command, ray_cluster, tmp_path, monkeypatch, capsys):
    from noisydeq.fingerprint import MEMO_NAME
    from tests.fuzz.cases import STUDY

    workers = Path(ray_cluster.get(ray_cluster.remote(_worker_root).remote()))
    env = tmp_path / "env-cache"  # the driver's $NOISYDEQ_CACHE: exists, so a write would stay
    env.mkdir()
    monkeypatch.setenv("NOISYDEQ_CACHE", str(env))
    before = _files(workers)
    for memo in (workers / "code").glob("*.json"):  # so a worker that used it would write one
        memo.unlink()
        before.pop(f"code/{memo.name}")
    dir_ = tmp_path / "dir"
    dir_.mkdir()  # the memo is written only into an existing cache (a study makes none)
    if command == "sweep":
        argv = ["sweep", "--device", "rram", "--snr", "0,inf", "--depths", "1", "--chips", "1",
                "--epochs", "1", "--set", "hidden=8", "--threads", "1"]
    else:
        (tmp_path / "s.toml").write_text(STUDY, encoding="utf-8")
        argv = ["study", str(tmp_path / "s.toml"), "--set", "train={epochs=1}"]
    code, _, err = run_cli([*argv, "--quiet", "--backend", "ray", "--cache", str(dir_),
                            "--out", str(tmp_path / "out")], capsys)
    assert code in (0, None), err
    assert _files(env) == {}
    assert _files(workers) == before  # nothing written under the workers' own cache
    kinds = {p.split("/")[0] for p in _files(dir_)}
    # the code memo the workers computed, and what the driver caches: a sweep's models,
    # calibrations and figures (a study's models live in its run directory)
    assert any(MEMO_NAME.match(Path(p).name) for p in _files(dir_ / "code")), kinds
    want = {"code", "models", "calibration", "figures"} if command == "sweep" else {"code"}
    assert want <= kinds, kinds
