"""``--backend ray``: a local Ray cluster (127.0.0.1, started here) gives the table of
``--jobs 1``, byte for byte, survives a killed worker and resumes after an interrupted
driver; bad input is one line with nothing written."""

from __future__ import annotations

import csv
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from noisydeq.cluster import Backend
from noisydeq.config import SweepSpec, build
from noisydeq.errors import NoisyDEQError
from noisydeq.store import load_tensors
from noisydeq.sweep import run_sweep
from tests.cli_helpers import one_line_error, run_cli
from tests.sweep_helpers import count_cell_saves

#: the default family (hidden width, quick training preset) on digits: 2 depths, 2 chips,
#: 3 SNRs — the issue's check
SPEC = dict(task="digits", device="rram", snr_db="0,10,inf", depths=[1, 3], chips=2)
TASK_NAME = "noisydeq-sweep-pair"  # ray_cells' task name: its workers' process title


@pytest.fixture
def cluster(ray_cluster):
    """The session's local Ray cluster (tests/conftest.py)."""
    return ray_cluster


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The ``--jobs 1 --threads 1`` run (its own model cache: Ray trains its members again)."""
    root = tmp_path_factory.mktemp("ray-ref")
    old = os.environ.get("NOISYDEQ_CACHE")
    os.environ["NOISYDEQ_CACHE"] = str(root / "cache")
    try:
        res = run_sweep(build(SweepSpec, SPEC), root / "one", progress=False, plots=False,
                        threads="1", jobs=1)
    finally:
        if old is None:
            os.environ.pop("NOISYDEQ_CACHE", None)
        else:
            os.environ["NOISYDEQ_CACHE"] = old
    return res


def _weights(cache: Path) -> dict[str, dict[str, bytes]]:
    """Cache entry -> its model's tensors as bytes."""
    return {p.parent.name: {k: t.numpy().tobytes() for k, t in load_tensors(p)[0].items()}
            for p in cache.rglob("model.safetensors")}


@pytest.mark.ray
@pytest.mark.slow
def test_ray_table_equals_one_local_process_byte_for_byte(cluster, reference, tmp_path,
                                                          monkeypatch):
    monkeypatch.setenv("NOISYDEQ_CACHE", str(tmp_path / "cache"))  # members train on Ray
    spec = build(SweepSpec, SPEC)
    res = run_sweep(spec, tmp_path / "ray", progress=False, plots=False,
                    backend=Backend("ray"))
    assert res.computed_cells == reference.computed_cells == 4 * 2  # models x chips
    assert res.rows == reference.rows
    assert res.run_dir.csv_path.read_bytes() == reference.run_dir.csv_path.read_bytes()
    # the driver cached the members the Ray tasks trained (same cache entries, digests
    # checked on load): their weights are the local ones, bit for bit
    ref_cache = Path(reference.run_dir.path).parent / "cache"
    assert len(_weights(tmp_path / "cache")) == 4
    assert _weights(tmp_path / "cache") == _weights(ref_cache)
    # and the chips' calibration entries the workers returned: those of the local run
    entries = {p.name: p.read_text() for p in (tmp_path / "cache").rglob("calibration/*.json")}
    assert len(entries) == 8  # one per (model, chip)
    assert entries == {p.name: p.read_text() for p in ref_cache.rglob("calibration/*.json")}
    again = run_sweep(spec, tmp_path / "ray", progress=False, plots=False,
                      backend=Backend("ray"))
    assert again.computed_cells == 0 and again.rows == reference.rows
    # a new run directory: the driver ships the cached entries, the workers load them and
    # return none (nothing is written again), and the table is the same
    stamps = {p.name: p.stat().st_mtime_ns
              for p in (tmp_path / "cache").rglob("calibration/*.json")}
    fresh = run_sweep(spec, tmp_path / "ray2", progress=False, plots=False,
                      backend=Backend("ray"))
    assert fresh.computed_cells == 8 and fresh.rows == reference.rows
    assert {p.name: p.stat().st_mtime_ns
            for p in (tmp_path / "cache").rglob("calibration/*.json")} == stamps


def _running_pair_workers() -> list[int]:
    """Pids of this process's descendants that run a sweep-pair task now (the workers of
    the cluster this test started)."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], list(children.get(os.getpid(), []))
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if title.startswith(f"ray::{TASK_NAME}".encode()):
            out.append(pid)
    return out


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_killed_worker_the_table_is_complete_without_duplicates(cluster, reference, tmp_path,
                                                                 monkeypatch):
    monkeypatch.setenv("NOISYDEQ_CACHE", str(Path(reference.run_dir.path).parent / "cache"))
    saved = count_cell_saves(monkeypatch)
    killed: list[int] = []
    stop = threading.Event()

    def killer() -> None:  # SIGKILL the first worker seen computing a pair
        while not stop.is_set() and not killed:
            for pid in _running_pair_workers():
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                break
            time.sleep(0.05)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        res = run_sweep(build(SweepSpec, SPEC), tmp_path / "ray", progress=False, plots=False,
                        backend=Backend("ray"))
    finally:
        stop.set()
        thread.join()
    assert killed, "no worker was seen computing a pair"
    assert len(saved) == len(set(saved)) == 8  # every cell written once
    assert res.rows == reference.rows


@pytest.mark.ray
@pytest.mark.slow
def test_interrupted_driver_resumes_from_the_cells_written(cluster, reference, tmp_path,
                                                           monkeypatch):
    monkeypatch.setenv("NOISYDEQ_CACHE", str(Path(reference.run_dir.path).parent / "cache"))
    spec = build(SweepSpec, {**SPEC, "chips": 1})  # chip 0 of the reference: 4 cells

    class Stop(Exception):
        pass

    def stop_after_two(n: int) -> None:
        if n == 2:
            raise Stop

    with pytest.raises(Stop):
        run_sweep(spec, tmp_path / "ray", progress=False, plots=False, on_cell=stop_after_two,
                  backend=Backend("ray"))
    res = run_sweep(spec, tmp_path / "ray", progress=False, plots=False, backend=Backend("ray"))
    assert (res.computed_cells, res.skipped_cells) == (2, 2)
    assert res.rows == [r for r in reference.rows if r["chip"] == 0]


def _csv_rows(path: Path, **where: str) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return [r for r in csv.DictReader(fh) if all(r[k] == v for k, v in where.items())]


@pytest.mark.ray
@pytest.mark.slow
def test_host_port_address_from_another_process(cluster, reference, tmp_path):
    """``--address 127.0.0.1:PORT`` (a head node's GCS port; here the session cluster's) in
    a fresh ``noisydeq`` process: the chip-0 table of ``--jobs 1``; the same command without
    Ray's token (the cluster uses token authentication) is one line naming it."""
    from noisydeq.cluster import AUTH_HINT

    port = cluster.get_runtime_context().gcs_address.rsplit(":", 1)[1]
    cache = Path(reference.run_dir.path).parent / "cache"  # members cached: evaluation only
    env = {**os.environ, "NOISYDEQ_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-c", "from noisydeq.cli import main; main()", "sweep",
            "--task", "digits", "--device", "rram", "--snr", "0,10,inf", "--depths", "1,3",
            "--chips", "1", "--quiet", "--backend", "ray", "--address", f"127.0.0.1:{port}"]
    token = os.environ.get("RAY_AUTH_MODE") == "token"  # ray.init set it for this cluster
    if token:
        bare = {k: v for k, v in env.items() if not k.startswith("RAY_AUTH")}
        done = subprocess.run([*argv, "--out", str(tmp_path / "no-token")], env=bare,
                              capture_output=True, text=True, check=False)
        one_line_error(done.returncode, done.stderr, AUTH_HINT)
        assert not (tmp_path / "no-token").exists()
    done = subprocess.run([*argv, "--out", str(tmp_path / "run")], env=env,
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    got = _csv_rows(tmp_path / "run" / "results.csv")
    assert len(got) == 4 * 3 and got == _csv_rows(reference.run_dir.csv_path, chip="0")


def _task_outcome(x: int) -> int:
    if x == 1:
        raise NoisyDEQError("chip 1 is broken\nsecond line")
    if x == 2:
        raise ZeroDivisionError("division by zero")
    return 10 * x


@pytest.mark.ray
def test_finished_yields_results_and_turns_a_task_error_into_one_line(cluster):
    """``cluster.finished``, the one loop over Ray futures of the sweep cells and the family
    members: results come back with their keys; an error inside a task is one line
    naming the task (a NoisyDEQError by its own first line, anything else by its type)."""
    from noisydeq import cluster as backend

    fn = backend.remote(_task_outcome, "noisydeq-test-task")
    assert dict(backend.finished({fn.remote(x): f"k{x}" for x in (0, 3)}, str)) == {
        "k0": 0, "k3": 30}
    with pytest.raises(NoisyDEQError) as err:
        list(backend.finished({fn.remote(1): "one"}, lambda k: f"task {k}"))
    assert str(err.value) == "task one failed on Ray: chip 1 is broken"
    with pytest.raises(NoisyDEQError) as err:
        list(backend.finished({fn.remote(2): "two"}, lambda k: f"task {k}"))
    assert str(err.value) == "task two failed on Ray: ZeroDivisionError: division by zero"


# ------------------------------------------------------------------------ bad input


def test_backend_choices_are_checked_in_one_line(monkeypatch):
    with pytest.raises(NoisyDEQError, match="drop --jobs"):
        Backend.parse("ray", None, "2")
    with pytest.raises(NoisyDEQError, match="--address needs --backend ray"):
        Backend.parse("local", "auto")
    for bad in ("nonsense", "host:", ":6379", "host:0", "host:99999"):
        with pytest.raises(NoisyDEQError, match="HOST:PORT"):
            Backend.parse("ray", bad)
    assert Backend.parse(None) == Backend()
    monkeypatch.setitem(sys.modules, "ray", None)  # Ray not installed
    with pytest.raises(NoisyDEQError, match=r"pip install 'noisydeq\[ray\]'"):
        Backend.parse("ray", "auto")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("args,message", [
    (["--backend", "ray", "--jobs", "2"], "drop --jobs"),
    (["--address", "auto"], "--address needs --backend ray"),
    (["--backend", "ray", "--address", f"127.0.0.1:{_closed_port()}"], "no Ray head node"),
])
def test_cli_bad_backend_is_one_line_and_writes_nothing(tmp_path, capsys, monkeypatch, args,
                                                        message):
    if "127.0.0.1" in " ".join(args):
        ray = pytest.importorskip("ray")
        # as in a fresh `noisydeq` process (this one may hold the other tests' cluster,
        # which a sweep would use)
        monkeypatch.setattr(ray, "is_initialized", lambda: False)
    out = tmp_path / "run"
    code, _, err = run_cli(["sweep", "--task", "digits", "--depths", "1", "--snr", "0,inf",
                            "--chips", "1", "--out", str(out), "--quiet", *args], capsys)
    one_line_error(code, err, message)
    assert not out.exists()


def test_run_command_takes_the_backend(capsys):
    code, out, _ = run_cli(["run", "--help"], capsys)
    assert "--backend [local|ray]" in out and "--address" in out
    code, _, err = run_cli(["run", "devices-rram", "--backend", "ray", "--jobs", "2"], capsys)
    one_line_error(code, err, "drop --jobs")
