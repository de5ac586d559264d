"""Thread counts per phase: parsing of --threads / $NOISYDEQ_THREADS and the scoped setter."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from noisydeq.errors import NoisyDEQError
from noisydeq.runtime import AUTO_THREADS, ENV_THREADS, num_threads, thread_plan


def test_thread_plan_forms(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_THREADS, raising=False)
    assert AUTO_THREADS == 1  # the rule of benchmarks/RESULTS.md: processes, not threads
    assert thread_plan() == (1, 1)
    assert thread_plan("auto") == (1, 1)
    assert thread_plan("2") == (2, 2)
    assert thread_plan("1,2") == (1, 2)
    monkeypatch.setenv(ENV_THREADS, "1")
    assert thread_plan() == (1, 1) and thread_plan("3,1") == (3, 1)  # the option wins
    for bad in ("0", "x", "1,2,3", "-1"):
        with pytest.raises(NoisyDEQError, match="threads .*auto, N or TRAIN,EVAL"):
            thread_plan(bad)


def test_num_threads_is_scoped_and_restored() -> None:
    before = torch.get_num_threads()
    other = 2 if before == 1 else 1
    with num_threads(other):
        assert torch.get_num_threads() == other
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), num_threads(other):
        raise RuntimeError("restored on errors too")
    assert torch.get_num_threads() == before
    with num_threads(None):
        assert torch.get_num_threads() == before


def test_cli_rejects_bad_threads() -> None:
    from click.testing import CliRunner

    from noisydeq.cli import cli

    res = CliRunner().invoke(cli, ["sweep", "--threads", "two", "--out", "/nonexistent/x"])
    assert res.exit_code != 0 and "threads 'two'" in str(res.exception or res.output)


def test_training_threads_are_part_of_the_cache_key() -> None:
    """Parallel reductions round differently with another thread count, so a model trained
    with 2 threads is another cache entry than one trained with 1 (never served for it)."""
    from noisydeq.families import prepared_member
    from noisydeq.specs.base import build
    from noisydeq.specs.family import FamilySpec
    from noisydeq.tasks import load_task

    task = load_task("digits", seed=0)
    spec = build(FamilySpec, {"task": "digits", "depths": [1], "kinds": ["deq"],
                              "train": {"epochs": 1}}, where="test")
    dev = torch.device("cpu")
    with num_threads(1):
        one = prepared_member(spec, task, "deq", 1, Path("/nonexistent"), dev)[2]
    with num_threads(2):
        two = prepared_member(spec, task, "deq", 1, Path("/nonexistent"), dev)[2]
    with num_threads(1):
        again = prepared_member(spec, task, "deq", 1, Path("/nonexistent"), dev)[2]
    assert one != two and one == again


def test_the_thread_count_changes_trained_weights() -> None:
    """Why the count is in the key: one training run of a digits member with 1 and with 2
    threads ends with different weights (same seed, data and draws)."""
    from noisydeq.families import prepared_member
    from noisydeq.specs.base import build
    from noisydeq.specs.family import FamilySpec
    from noisydeq.tasks import load_task
    from noisydeq.train import train_model

    task = load_task("digits", seed=0)
    spec = build(FamilySpec, {"task": "digits", "depths": [3], "kinds": ["ffw"],
                              "train": {"epochs": 1, "max_train_samples": 256}}, where="test")
    dev = torch.device("cpu")
    weights = []
    for n in (1, 2, 1):
        with num_threads(n):
            model, tspec, _ = prepared_member(spec, task, "ffw", 3, Path("/nonexistent"), dev)
            res = train_model(model, task, tspec, out_dir=None, torch_device=dev, quiet=True)
        weights.append(torch.cat([p.detach().flatten() for p in res.model.parameters()]))
    assert torch.equal(weights[0], weights[2])  # deterministic at a given count
    assert not torch.equal(weights[0], weights[1])


@pytest.mark.parametrize("command", ["sensitivity", "spectrum", "solvers"])
def test_analysis_commands_follow_the_thread_rule(command, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """sensitivity, spectrum and solvers run with one torch thread unless --threads or
    $NOISYDEQ_THREADS says otherwise (they used torch's default, one per core)."""
    from click.testing import CliRunner

    from noisydeq.analysis import family
    from noisydeq.cli import cli

    seen: list[int] = []

    def record(*args, **kwargs):
        seen.append(torch.get_num_threads())
        raise NoisyDEQError("stop here")

    monkeypatch.setattr(family, "load_family", record)
    monkeypatch.delenv(ENV_THREADS, raising=False)
    before = torch.get_num_threads()
    # a checkpoint file, so the commands' check before torch loads (a --family folder with
    # no model is refused there) lets them reach load_family
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model.safetensors").write_bytes(b"")
    args = [command, "--family", str(tmp_path)]
    for extra, env, want in (([], None, 1), (["--threads", "2"], None, 2), ([], "2", 2)):
        if env is not None:
            monkeypatch.setenv(ENV_THREADS, env)
        result = CliRunner().invoke(cli, args + extra)
        assert "stop here" in str(result.exception), result.output
        assert seen[-1] == want and torch.get_num_threads() == before
