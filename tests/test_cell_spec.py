"""The members' cell of a family or sweep (config.CellSpec): a name or a table of options,
one-line errors, identities of earlier families and sweeps unchanged."""

from __future__ import annotations

import math
from typing import get_args

import pytest

from noisydeq.config import CELL_OPTIONS, FamilySpec, ModelSpec, SweepSpec, build
from noisydeq.errors import NoisyDEQError
from noisydeq.results import spec_hash


def test_cells_are_the_model_spec_cells():
    assert tuple(CELL_OPTIONS) == get_args(ModelSpec.model_fields["cell"].annotation)
    for options in CELL_OPTIONS.values():
        assert set(options) <= set(ModelSpec.model_fields)


def test_name_or_table_and_identity():
    plain, conv = build(FamilySpec, {}), build(FamilySpec, {"cell": "conv"})
    assert plain.model_dump()["cell"] == "mlp" and conv.model_dump()["cell"] == "conv"
    assert conv.cell.fields() == {"cell": "conv"}
    table = build(FamilySpec, {"cell": {"name": "conv1d", "weight_norm": False}})
    assert table.model_dump()["cell"] == {"name": "conv1d", "weight_norm": False}
    assert FamilySpec.model_validate(table.model_dump()) == table
    assert build(FamilySpec, {"cell": {"name": "conv"}}).model_dump() == conv.model_dump()
    # a sweep leaves the default cell out: a sweep of earlier versions keeps its hash
    sweep = build(SweepSpec, {})
    assert "cell" not in sweep.model_dump()
    assert spec_hash(sweep) == spec_hash(build(SweepSpec, {"cell": "mlp"}))
    assert spec_hash(sweep) != spec_hash(build(SweepSpec, {"cell": "conv"}))


def test_family_members_get_the_cell_and_the_task_shape():
    from noisydeq.families import family_spec_for_sweep, member_spec
    from noisydeq.tasks import load_task

    task = load_task("prefix_sums", seed=0, n_train=4, n_test=2, length=8)
    sweep = build(SweepSpec, {"task": "prefix_sums",
                              "cell": {"name": "conv1d", "kernel_size": 5}})
    m = member_spec(family_spec_for_sweep(sweep, 0, math.inf), task, "deq", 1)
    assert (m.cell, m.kernel_size, m.in_shape) == ("conv1d", 5, [1, 8])


@pytest.mark.parametrize("data,needle", [
    ({"cell": "con"}, "cell: unknown value 'con'; did you mean 'conv'?"),
    ({"cell": {"name": "conv1d", "scales": 2}}, "cell 'conv1d' takes no 'scales'"),
    ({"cell": {"name": "mlp", "layers": 2}}, "it has no options"),
    ({"cell": {"name": "conv", "kernel_size": 4}}, "cell: kernel_size: must be odd"),
    ({"cell": {"name": "mlp_stack", "layers": 0}}, "cell: layers"),
    ({"cell": {"nmae": "conv"}}, "unknown key 'cell.nmae'; did you mean 'name'?"),
    ({"cell": 3}, "cell: must be a cell name"),
    ({"cell": "conv1d", "kinds": ["lyadeq"]}, "cell: kind 'lyadeq' has the fully connected"),
    ({"cell": "mdeq", "kinds": ["mondeq"]}, "cell: kind 'mondeq' has the cells 'mlp' and"),
    ({"cell": "mdeq", "hidden": 10}, "cell: hidden: 10 channels cannot be split"),
])
@pytest.mark.parametrize("spec", [FamilySpec, SweepSpec])
def test_bad_cells_are_one_line(spec, data, needle):
    with pytest.raises(NoisyDEQError) as err:
        build(spec, data, where="x")
    msg = str(err.value)
    assert needle in msg and "\n" not in msg and "ModelSpec" not in msg, msg
