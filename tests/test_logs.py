"""Logs for humans and machines: a non-TTY run is plain lines (no CR, no ANSI), ``--quiet``
still says where the results went, ``--log-json`` writes JSON-lines events bracketed by
``start`` and ``end``/``error``, and work without a count shows a heartbeat."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from noisydeq import events
from noisydeq.progress import heartbeat, progress


def _events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture
def log(tmp_path):
    path = tmp_path / "events.jsonl"
    events.open_log(path)
    yield path
    events.close_log()


def test_events_are_whole_json_lines_with_time_and_pid(log):
    events.emit("progress", desc="x", n=1, total=float("nan"), extra=Path("a"))
    events.emit("cell", key="k")
    ev = _events(log)
    assert [e["event"] for e in ev] == ["progress", "cell"]
    assert ev[0]["total"] == "nan" and ev[0]["extra"] == "a"  # strict JSON, no NaN
    assert all(e["pid"] == os.getpid() and e["ts"] > 0 and e["elapsed"] >= 0 for e in ev)


def test_elapsed_counts_from_the_start_time_given(tmp_path):
    """``elapsed`` counts from the invocation's start (``t0``), not from when the log opened,
    and ``since_start`` is that same clock (what ``end``'s ``seconds`` is)."""
    path = tmp_path / "events.jsonl"
    t0 = time.time() - 5.0
    events.open_log(path, t0=t0)
    try:
        now = time.time()
        events.emit("end", _now=now, seconds=events.since_start(now))
    finally:
        events.close_log()
    (ev,) = _events(path)
    assert ev["elapsed"] == ev["seconds"] == round(now - t0, 3) and ev["elapsed"] >= 5.0


def test_open_log_refuses_an_unwritable_path(tmp_path):
    with pytest.raises(events.NoisyDEQError, match="--log-json: cannot append"):
        events.open_log(tmp_path / "no" / "such" / "dir" / "log.jsonl")
    assert not events.active()


def test_bars_send_progress_events(log, monkeypatch):
    monkeypatch.setenv("NOISYDEQ_PROGRESS", "lines")
    monkeypatch.setenv("NOISYDEQ_PROGRESS_EVERY", "0")
    for _ in progress(range(3), desc="work", unit="items"):
        pass
    bar = progress(total=2, desc="quiet", disable=True)  # no output, still events
    bar.update(2)
    bar.close()
    ev = [e for e in _events(log) if e["event"] == "progress"]
    work = [e for e in ev if e["desc"] == "work"]
    assert [e["n"] for e in work] == [1, 2, 3, 3] and work[-1]["final"] is True
    assert [(e["n"], e["final"]) for e in ev if e["desc"] == "quiet"][-1] == (2, True)


def test_heartbeat_speaks_only_for_long_silent_work():
    out = io.StringIO()
    with heartbeat("fast", first_s=5, stream=out):
        pass
    assert out.getvalue() == ""
    with heartbeat("slow", first_s=0.05, every_s=0.05, stream=out):
        time.sleep(0.3)
    lines = out.getvalue().splitlines()
    assert len(lines) >= 2 and all(ln.startswith("noisydeq: slow: ") for ln in lines)
    assert "elapsed" in lines[0] and lines[-1].startswith("noisydeq: slow: done in ")


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "NOISYDEQ_JOBS": "1", "NOISYDEQ_THREADS": "1",
           "NOISYDEQ_PROGRESS_EVERY": "0", "NOISYDEQ_CACHE": str(cwd / "cache")}
    env.pop("NOISYDEQ_PROGRESS", None)
    return subprocess.run([sys.executable, "-m", "noisydeq.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_the_environment_variable_opens_the_log_as_the_option_does(tmp_path):
    """``NOISYDEQ_LOG_JSON=PATH`` (the README's alternative to ``--log-json``) was written
    without a start time: every event's ``elapsed`` was -0.0, and an unwritable PATH was
    silently ignored instead of one error line before the command ran."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOISYDEQ_LOG_JSON")}
    run = [sys.executable, "-m", "noisydeq.cli", "devices", "ideal"]
    proc = subprocess.run(run, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**env, "NOISYDEQ_LOG_JSON": "env.jsonl"})
    assert proc.returncode == 0, proc.stderr
    ev = _events(tmp_path / "env.jsonl")
    assert [e["event"] for e in ev] == ["start", "end"]
    # one clock: ``elapsed`` and ``seconds`` both count from the invocation's start, start-up
    # included (they were 0.053 and 0.458 for one run: the log's clock began after the
    # command's module was imported, ``seconds`` before)
    assert ev[-1]["elapsed"] == ev[-1]["seconds"]
    assert 0 < ev[0]["elapsed"] <= ev[-1]["elapsed"]
    bad = subprocess.run(run, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={**env, "NOISYDEQ_LOG_JSON": str(tmp_path / "no" / "l.jsonl")})
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.strip().splitlines() == [
        f"noisydeq: error: NOISYDEQ_LOG_JSON: cannot append to {tmp_path / 'no' / 'l.jsonl'} "
        "(No such file or directory)"]


@pytest.mark.slow
def test_non_tty_sweep_log_and_json_events(tmp_path):
    sweep = ["sweep", "--device", "snr", "--snr", "0,10,inf", "--depths", "1", "--chips", "1",
             "--epochs", "1"]
    proc = _cli(["--log-json", "run.jsonl", *sweep, "--out", "r"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    for text in (proc.stderr, proc.stdout):
        assert "\r" not in text and "\x1b[" not in text
    assert any(ln.startswith("noisydeq: ") and "cells" in ln for ln in proc.stderr.splitlines())
    ev = _events(tmp_path / "run.jsonl")
    kinds = [e["event"] for e in ev]
    assert kinds[0] == "start" and kinds[-1] == "end" and ev[-1]["status"] == 0
    assert ev[0]["command"] == "sweep" and "progress" in kinds and "cell" in kinds
    # --quiet: no progress lines, still the summary and where the results are
    quiet = _cli([*sweep, "--out", "r", "--quiet"], tmp_path)
    assert quiet.returncode == 0 and "noisydeq: " not in quiet.stderr
    assert "results: r/results.csv" in quiet.stdout and "cells: 0 computed" in quiet.stdout
    # an error is the last event, with the one line the user saw
    bad = _cli(["--log-json", "run.jsonl", "run", "nope"], tmp_path)
    assert bad.returncode == 2
    last = _events(tmp_path / "run.jsonl")[-1]
    assert last["event"] == "error" and last["status"] == 2
    assert last["message"] == bad.stderr.strip()


@pytest.mark.slow
def test_train_quiet_says_where_the_checkpoint_went(tmp_path):
    proc = _cli(["train", "--task", "digits", "--kind", "deq", "--depths", "1", "--epochs", "1",
                 "--out", "m", "-q"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "noisydeq: " not in proc.stderr
    paths = [w for w in proc.stdout.split() if w.endswith(".safetensors")]
    assert paths and all((tmp_path / p).is_file() or Path(p).is_file() for p in paths)


def test_heartbeat_lets_an_open_count_speak_instead_of_a_second_clock(capsys, monkeypatch):
    """Slow cells under a heartbeat: the heartbeat's lines are the open bar's own (count,
    its elapsed time, time left), not 'sweep: 5:01 elapsed' between 'sweep 22/72 cells,
    4:15 elapsed' lines — two clocks that read as time going backwards."""
    from noisydeq.progress import LineProgress

    monkeypatch.setenv("NOISYDEQ_PROGRESS", "lines")
    with heartbeat("sweep", first_s=0.05, every_s=0.05):
        bar = LineProgress(total=4, desc="sweep", unit="cells", every_s=3600)
        bar.update(1)
        time.sleep(1.0)  # a slow cell: the bar itself would not speak for an hour
        bar.update(3)
        bar.close()
        time.sleep(1.0)  # after the count: the heartbeat's own line again
    lines = capsys.readouterr().err.splitlines()
    assert lines and "\r" not in "".join(lines)
    during = [ln for ln in lines if ln.startswith("noisydeq: sweep 1/4 cells (25%), ")]
    assert during and all("elapsed, ~" in ln for ln in during), lines
    closed = next(i for i, ln in enumerate(lines) if ln.startswith("noisydeq: sweep 4/4 cells in "))
    assert not any(ln.startswith("noisydeq: sweep: ") for ln in lines[:closed]), lines
    assert any(ln.startswith("noisydeq: sweep: ") for ln in lines[closed + 1:]), lines
    assert lines[-1].startswith("noisydeq: sweep: done in "), lines
