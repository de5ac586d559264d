"""A sweep cell's key has one definition (:class:`noisydeq.sweep.base.CellKey`): the
runner builds it, the resume that finds superseded cells parses it. The text is the one
run directories already hold (it names each cell's file): pinned below as the code before
``CellKey`` wrote it, and a key built today parses back and rebuilds byte for byte."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from noisydeq.sweep.base import CELL_VERSION, CellKey, SweepModel
from noisydeq.sweep.plan import CellRunner

WEIGHTS, CONTENT = "0123456789abcdef0123", "fedcba98765432100123"
#: (model, chip, levels) → the key the code before CellKey built (f-string in
#: CellRunner.key), with the weights and content digests above
PINNED = [
    (SweepModel(None, "deq", 3, 223, 1000, 1, math.inf), 0, [0.0, 3.0, math.inf],
     "v3|deq-d3-w223-s1-tinf|0123456789abcdef0123|chip0|0,3,inf|fedcba98765432100123"),
    (SweepModel(None, "lyadeq", 1, 64, 1000, 0, 12.5, "rram", None), 2, [-3.5, 1e-3, 27.25],
     "v3|lyadeq-d1-w64-s0-t12.5-hwrram@native|0123456789abcdef0123|chip2|-3.5,0.001,27.25|"
     "fedcba98765432100123"),
]


@pytest.mark.parametrize(("model", "chip", "levels", "text"), PINNED)
def test_keys_are_the_ones_run_directories_hold_and_round_trip(model, chip, levels, text):
    runner = SimpleNamespace(model_hash=lambda sm: WEIGHTS, content=CONTENT)
    runner.cell_key = lambda sm, c, lv: CellRunner.cell_key(runner, sm, c, lv)
    assert CellRunner.key(runner, model, chip, levels) == text
    key = CellKey.from_key(text)
    assert key is not None and key.to_key() == text
    assert key == CellKey.of(model.model_id, WEIGHTS, chip, levels, CONTENT)
    assert (key.version, key.weights, key.content) == (CELL_VERSION, WEIGHTS, CONTENT)
    assert key.slot == (model.model_id, chip, text.split("|")[4])


def test_the_slot_ignores_what_computed_the_cell():
    new = CellKey.of("deq-d1-w128-s0-tinf", "aa", 1, [0.0, math.inf], "cc")
    older = CellKey.from_key("v2|deq-d1-w128-s0-tinf|bb|chip1|0,inf|dd")
    assert older is not None and older.version == 2 and older.slot == new.slot
    assert CellKey.of("deq-d1-w128-s0-tinf", "aa", 0, [0.0, math.inf], "cc").slot != new.slot


@pytest.mark.parametrize("text", [
    "deq-d1-w128-s0-tinf|chip0|0,inf",                    # the first key format (3 fields)
    "v3|deq|x|d1|aa|chip0|0,inf|cc",                      # a model id holding '|'
    "3|deq-d1-w128-s0-tinf|aa|chip0|0,inf|cc",            # no 'v'
    "v3|deq-d1-w128-s0-tinf|aa|chipX|0,inf|cc",           # no chip number
    "v3|deq-d1-w128-s0-tinf|aa|chip01|0,inf|cc",          # would rebuild as chip1
    "",
])
def test_texts_of_no_cell_key_parse_to_none(text):
    assert CellKey.from_key(text) is None
