"""Thread counts per phase: parsing of --threads / $NOISYDEQ_THREADS and the scoped setter."""

from __future__ import annotations

import pytest
import torch

from noisydeq.errors import NoisyDEQError
from noisydeq.runtime import ENV_THREADS, num_threads, thread_plan


def test_thread_plan_forms(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_THREADS, raising=False)
    assert thread_plan() == (None, None)
    assert thread_plan("auto") == (None, None)
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
