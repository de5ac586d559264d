"""Checkpoint bytes (what a Ray worker returns): the file the driver writes from them is the
one ``save_checkpoint`` writes, and damaged bytes are refused with nothing written."""

from __future__ import annotations

import pytest
import torch

from noisydeq import store
from noisydeq.errors import CorruptArtefact


def _state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"w": torch.randn(3, 4, generator=g), "b": torch.arange(4.0)}


CONFIG = {"model": {"kind": "deq", "width": 4}, "train": {"epochs": 1}}


def test_bytes_written_by_the_driver_equal_a_saved_checkpoint(tmp_path):
    blob = store.checkpoint_blob(_state(), CONFIG, {"test_metric": 0.5})
    store.write_checkpoint_blob(tmp_path / "a" / "model.safetensors", blob)
    store.save_checkpoint(tmp_path / "b" / "model.safetensors", _state(), CONFIG,
                          {"test_metric": 0.5})
    # the signed sidecar byte for byte; the safetensors file by content (its header's
    # metadata order is not fixed by safetensors)
    assert (tmp_path / "a" / "model.json").read_bytes() == \
        (tmp_path / "b" / "model.json").read_bytes()
    (ta, ma), (tb, mb) = (store.load_checkpoint(tmp_path / d / "model.safetensors", CONFIG)
                          for d in "ab")
    assert ma == mb and ma["extra"] == {"test_metric": 0.5}
    assert ta.keys() == tb.keys() == _state().keys()
    assert all(torch.equal(ta[k], v) and torch.equal(tb[k], v) for k, v in _state().items())


@pytest.mark.parametrize("where", ["tensor", "header", "truncated"])
def test_damaged_bytes_are_refused_and_nothing_is_written(tmp_path, where):
    blob = bytearray(store.checkpoint_blob(_state(), CONFIG))
    if where == "tensor":
        blob[-3] ^= 0xFF
    elif where == "header":
        at = blob.index(b"deq")
        blob[at : at + 3] = b"ffw"
    else:
        blob = blob[: len(blob) // 2]
    target = tmp_path / "entry" / "model.safetensors"
    with pytest.raises(CorruptArtefact):
        store.write_checkpoint_blob(target, bytes(blob))
    assert not target.exists() and not target.with_suffix(".json").exists()
