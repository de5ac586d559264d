"""``noisydeq --tracker``: events become tracker calls; TensorBoard's own file writer,
offline, holds the sweep's results and the training curves; a missing library is one line."""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from noisydeq import events
from noisydeq.errors import NoisyDEQError
from noisydeq.trackers import Backend, Tracker, open_tracker, tag


class Fake(Backend):
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def params(self, values):
        self.calls.append(("params", values))

    def scalar(self, name, value, step):
        self.calls.append(("scalar", name, value, step))

    def close(self):
        self.calls.append(("close",))


def test_events_map_to_params_epochs_cells_and_close():
    fake = Fake()
    t = Tracker(fake)
    t({"event": "start", "command": "sweep", "argv": ["sweep", "--snr", "0"], "version": "1"})
    t({"event": "epoch", "model": "deq-d1", "epoch": 2, "epochs": 3, "loss": 0.5,
       "accuracy": 0.75, "lr": 1e-3, "seconds": 1.0, "ts": 5.0, "pid": 1, "tag": "x"})
    t({"event": "cell", "values": [
        {"model": "m@1", "chip": 0, "metric": "accuracy", "snr_db": 10.0, "value": 0.5},
        {"model": "m@1", "chip": 0, "metric": "accuracy", "snr_db": "inf", "value": 0.9},
        {"model": "m@1", "chip": 0, "metric": "accuracy", "snr_db": 0.0, "value": "nan"}]})
    t({"event": "cell", "values": [
        {"model": "m", "chip": 1, "metric": "mse", "snr_db": 2.5, "value": 0.1},
        {"model": "m", "chip": 1, "metric": "mse", "snr_db": 5.0, "value": 0.05}]})
    t({"event": "end", "status": 0, "seconds": 3.0})
    t({"event": "epoch", "model": "late", "epoch": 1, "loss": 1.0})  # after close: ignored
    assert fake.calls[0] == ("params", {"command": "sweep", "argv": "sweep --snr 0",
                                        "version": "1"})
    scalars = {(c[1], c[3]): c[2] for c in fake.calls if c[0] == "scalar"}
    assert scalars[("train/deq-d1/loss", 2)] == 0.5
    assert scalars[("train/deq-d1/accuracy", 2)] == 0.75
    assert ("train/deq-d1/ts", 2) not in scalars and ("train/deq-d1/tag", 2) not in scalars
    assert scalars[("accuracy/m_1/chip0", 10)] == 0.5  # '@' is no tag character
    assert scalars[("accuracy_no_noise/m_1/chip0", 0)] == 0.9
    assert ("accuracy/m_1/chip0", 0) not in scalars  # NaN is not logged
    # a fractional SNR grid: steps in tenths of a dB, said in the tag
    assert scalars[("mse/m/chip1 (x0.1 dB)", 25)] == 0.1
    assert scalars[("mse/m/chip1 (x0.1 dB)", 50)] == 0.05
    assert scalars[("run/seconds", 0)] == 3.0
    assert fake.calls[-1] == ("close",) and sum(c == ("close",) for c in fake.calls) == 1
    assert tag("a=b/ c∞") == "a_b/ c_"


def test_a_failing_tracker_is_one_warning_and_the_command_goes_on(capsys):
    def broken(record):
        raise RuntimeError("disk full")

    events.set_sink(broken)
    try:
        events.emit("cell", key="k")
        events.emit("cell", key="k2")  # the sink was dropped: no second warning
    finally:
        events.take_sink()
    err = capsys.readouterr().err
    assert err.count("tracker: stopped logging (RuntimeError: disk full)") == 1
    assert not events.active()


def test_a_missing_library_is_one_line_with_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import fails as if absent
    with pytest.raises(NoisyDEQError, match=r"--tracker tensorboard: the tensorboard package "
                       r"is not installed .*pip install 'noisydeq\[tensorboard\]'"):
        open_tracker("tensorboard", tmp_path, "x")
    with pytest.raises(NoisyDEQError, match="unknown tracker 'neptune'"):
        open_tracker("neptune", tmp_path, "x")


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "NOISYDEQ_JOBS": "1", "NOISYDEQ_THREADS": "1",
           "NOISYDEQ_CACHE": str(cwd / "cache")}
    return subprocess.run([sys.executable, "-m", "noisydeq.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True)


@pytest.mark.parametrize("name", ["wandb", "mlflow"])
def test_cli_tracker_without_its_library_exits_before_work(tmp_path, name):
    try:
        __import__(name)
        pytest.skip(f"{name} is installed here")
    except ImportError:
        pass
    proc = _cli(["--tracker", name, "sweep", "--device", "snr", "--out", "r"], tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"pip install 'noisydeq[{name}]'" in lines[0]
    assert not (tmp_path / "r").exists()  # nothing was written


def test_tensorboard_writes_each_run_in_its_own_folder_given_dir_or_not(monkeypatch,
                                                                        tmp_path):
    """``--tracker-dir tb`` gets the same ``<command>-<time>/`` folder as the default
    ``./tracker`` (it wrote the events straight into ``tb/``, two runs mixed there)."""
    from noisydeq import trackers

    seen = []
    monkeypatch.setattr(trackers.TensorBoard, "__init__",
                        lambda self, logdir: seen.append(logdir))
    open_tracker("tensorboard", tmp_path / "tb", "sweep-20261207-101500")
    open_tracker("tensorboard", None, "sweep-20261207-101501")
    assert seen == [tmp_path / "tb" / "sweep-20261207-101500",
                    Path("tracker") / "sweep-20261207-101501"]


@pytest.mark.slow
def test_tensorboard_holds_the_sweep_results_and_training_curves(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    args = ["--tracker", "tensorboard", "--tracker-dir", "tb", "sweep", "--device", "snr",
            "--snr", "0,10,inf", "--depths", "1", "--chips", "2", "--epochs", "2",
            "--out", "r", "--quiet"]
    proc = _cli(args, tmp_path)
    assert proc.returncode == 0, proc.stderr
    runs = list((tmp_path / "tb").iterdir())  # tb/sweep-<time>/, as under ./tracker
    assert [p.name[:6] for p in runs] == ["sweep-"] and runs[0].is_dir()
    acc = EventAccumulator(str(runs[0]))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    with open(tmp_path / "r" / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert rows
    for r in rows:
        snr = float(r["snr_db"])
        name = f"{r['metric']}/{tag(r['model_id'])}/chip{r['chip']}"
        if math.isinf(snr):
            name = f"{r['metric']}_no_noise/{tag(r['model_id'])}/chip{r['chip']}"
        got = {e.step: e.value for e in acc.Scalars(name)}
        step = 0 if math.isinf(snr) else int(snr)
        assert got[step] == pytest.approx(float(r["value"]), rel=1e-6)  # float32 in TB
    curves = [t for t in tags if t.startswith("train/") and t.endswith("/loss")]
    assert len(curves) == 2  # the DEQ and the FFW
    for t in curves:
        assert [e.step for e in acc.Scalars(t)] == [1, 2]
    assert "run/seconds" in tags
    assert acc.Tensors("command/text_summary") or "command/text_summary" in acc.Tags().get(
        "tensors", [])
