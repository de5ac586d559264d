"""``data_seed``: the data split is drawn independently of the model seeds, so ``--seed 2``
alone trains exactly member 2 of ``--seed 0,1,2``; runs whose first seed is 0 keep their
run-directory hash and model-cache keys (pinned below, as computed before the field
existed), and a run directory recorded without the field is read with the split it used."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from noisydeq import store
from noisydeq.config import FamilySpec, SweepSpec, build
from noisydeq.errors import NoisyDEQError
from noisydeq.families import family_spec_for_sweep, prepared_member
from noisydeq.results import RunDir, spec_hash
from noisydeq.specs.toml import dumps_toml
from noisydeq.tasks import load_task
from tests.cli_helpers import one_line_error, run_cli

#: run hashes computed with the code before data_seed; model-cache keys likewise, re-pinned
#: at training schema 3 (the thread count joined the key; one thread, as the tests run) —
#: data_seed itself changed none of them (noisydeq/torch versions pinned as below)
DEFAULT_SWEEP_HASH = "32b2ded1b67e"
SEEDS_012_HASH = "e14c3132fd42"
SEED_2_OLD_HASH = "0d02c01b90cd"  # --seed 2 alone: the split of seed 2
KEYS_012 = {(0, "deq"): "a08ca7c6746898551ce7", (0, "ffw"): "5f5538edb2a2e23f77b8",
            (2, "deq"): "44d366f1e4099629e83b", (2, "ffw"): "b8ce7894a84b4cac882e"}
KEY_SEED_2_OLD_DEQ = "3e5f2967595e68b08247"


@pytest.fixture
def pinned_versions(monkeypatch):
    """Cache keys hold the noisydeq and torch versions: pinned, so the keys above hold."""
    import noisydeq.train_config as tc

    monkeypatch.setattr(tc, "__version__", "0.0.0")
    monkeypatch.setattr(torch, "__version__", "2.0.0")


def _key(spec: SweepSpec, seed: int, kind: str) -> str:
    task = load_task(spec.task, seed=spec.data_seed)  # as the sweep loads it
    fspec = family_spec_for_sweep(spec, seed, math.inf)
    return prepared_member(fspec, task, kind, 1, Path("/nowhere"), torch.device("cpu"))[2].name


def test_first_seed_zero_keeps_hash_and_cache_keys(pinned_versions):
    assert spec_hash(build(SweepSpec, {})) == DEFAULT_SWEEP_HASH
    spec = build(SweepSpec, {"task": "digits", "seeds": [0, 1, 2], "depths": [1]})
    assert spec.data_seed == 0 and spec_hash(spec) == SEEDS_012_HASH
    for (seed, kind), key in KEYS_012.items():
        assert _key(spec, seed, kind) == key


def test_seed_two_alone_is_member_two_and_data_seed_two_the_old_run(pinned_versions):
    alone = build(SweepSpec, {"task": "digits", "seeds": [2], "depths": [1]})
    assert _key(alone, 2, "deq") == KEYS_012[(2, "deq")]  # the split of data seed 0
    assert _key(alone, 2, "ffw") == KEYS_012[(2, "ffw")]
    assert spec_hash(alone) != SEED_2_OLD_HASH  # another run than before
    old = build(SweepSpec, {"task": "digits", "seeds": [2], "depths": [1], "data_seed": 2})
    assert spec_hash(old) == SEED_2_OLD_HASH and _key(old, 2, "deq") == KEY_SEED_2_OLD_DEQ


def test_a_run_recorded_before_data_seed_is_read_with_its_first_seed(tmp_path):
    spec = build(SweepSpec, {"task": "digits", "seeds": [2, 3], "depths": [1]})
    text = "\n".join(ln for ln in dumps_toml(spec).splitlines()
                     if not ln.startswith("data_seed"))
    run = tmp_path / "old"
    run.mkdir()
    store.atomic_write_text(run / "config.toml", store.sign_text(text + "\n"))
    recorded = RunDir(run).read_config()
    assert recorded.data_seed == 2 and recorded.seeds == [2, 3]
    # so today's default (data seed 0) is refused there, and --data-seed 2 resumes it
    with pytest.raises(NoisyDEQError, match="data_seed"):
        RunDir(run).check(spec)
    RunDir(run).check(spec.model_copy(update={"data_seed": 2}))


def test_family_training_draws_the_split_with_the_data_seed(monkeypatch):
    from noisydeq import families, tasks

    seen: list[int] = []

    class Drawn(Exception):
        pass

    def fake_load(name, data_dir=None, seed=0, **_kw):
        seen.append(seed)
        raise Drawn

    monkeypatch.setattr(tasks, "load_task", fake_load)
    for data_seed in (0, 5):
        spec = build(FamilySpec, {"task": "digits", "depths": [1], "seed": 2,
                                  "data_seed": data_seed})
        with pytest.raises(Drawn):
            families.train_family(spec)
    assert seen == [0, 5]


def test_cli_data_seed(capsys):
    code, out, _ = run_cli(["sweep", "--help"], capsys)
    assert code == 0 and "--data-seed" in out and "first seed" in out
    code, _, err = run_cli(["sweep", "--data-seed", "-1", "--task", "digits"], capsys)
    assert code == 2 and "--data-seed" in err
    code, out, _ = run_cli(["train", "--help"], capsys)
    assert "--data-seed" in out
    code, _, err = run_cli(["sweep", "--task", "digits", "--set", "data_seed=x"], capsys)
    one_line_error(code, err, "data_seed")
