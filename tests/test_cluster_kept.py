"""The per-worker cache of Ray task inputs (:func:`noisydeq.cluster.kept`) and the
driver/worker code check, without a cluster (a stand-in ``ray.get`` counts fetches)."""

from __future__ import annotations

import sys
import types

import pytest

from noisydeq import cluster
from noisydeq.errors import NoisyDEQError


@pytest.fixture
def fetches(monkeypatch):
    calls: list[str] = []
    fake = types.ModuleType("ray")
    fake.get = lambda ref: calls.append(ref) or f"value of {ref}"
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.setattr(cluster, "_KEPT", {})
    return calls


def test_fetched_once_per_run_and_key(fetches):
    assert cluster.kept("run1", "payload", ["p1"], run=True) == "value of p1"
    assert cluster.kept("run1", "model/0", ["m0"]) == "value of m0"
    assert cluster.kept("run1", "payload", ["p1"], run=True) == "value of p1"
    assert cluster.kept("run1", "model/0", ["m0"]) == "value of m0"
    assert fetches == ["p1", "m0"]
    # a new run drops what was kept of the old one
    assert cluster.kept("run2", "payload", ["p2"], run=True) == "value of p2"
    assert cluster.kept("run2", "model/0", ["m0b"]) == "value of m0b"
    assert fetches == ["p1", "m0", "p2", "m0b"]
    assert set(cluster._KEPT) == {"payload", "model/0"}


def test_make_builds_what_is_kept_and_may_refuse(fetches):
    built = cluster.kept("r", "runner", ["p"], run=True, make=lambda v: v.upper())
    assert built == "VALUE OF P" and cluster.kept("r", "runner", ["p"]) == "VALUE OF P"

    def refuse(_):
        cluster.same_code("abc", "abd")

    with pytest.raises(NoisyDEQError) as err:
        cluster.kept("s", "runner", ["q"], run=True, make=refuse)
    assert "runs other noisydeq code than the driver" in str(err.value)
    assert "\n" not in str(err.value)
    assert cluster._KEPT["runner"][0] == "r"  # nothing kept of the refused run
    cluster.same_code("abc", "abc")
