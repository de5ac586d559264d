"""The Python API as a notebook uses it (docs/python-api.md): what a user meets when a cell
is run again or an argument is wrong is one clear line in the API's own terms."""

from __future__ import annotations

import pytest
import torch

from noisydeq.config import ModelSpec, TrainSpec
from noisydeq.errors import NoisyDEQError
from noisydeq.models import build_model
from noisydeq.tasks import load_task
from noisydeq.train import train_model


def _deq(seed: int | None):
    if seed is not None:
        torch.manual_seed(seed)
    return build_model(ModelSpec(kind="deq", in_features=64, out_features=10, width=8))


def test_a_training_cell_run_again_loads_its_model_or_says_why_not(tmp_path):
    """A notebook cell that builds and trains a model into a folder, run twice: with the
    same seed the second run loads the model; without seeding, the other random start was
    one line naming ``init`` and two hashes — it now says that only the start differs and
    what to do. ``resume=False`` named the CLI's ``--resume``/``--out`` alone."""
    task = load_task("digits")
    spec = TrainSpec.preset("quick", "deq", None, epochs=1, batch_size=256)
    first = train_model(_deq(0), task, spec, out_dir=tmp_path / "m")
    again = train_model(_deq(0), task, spec, out_dir=tmp_path / "m")
    assert again.loaded and not first.loaded and again.config_hash == first.config_hash
    with pytest.raises(NoisyDEQError) as err:
        train_model(_deq(1), task, spec, out_dir=tmp_path / "m")
    msg = str(err.value)
    assert "only the initial weights differ" in msg and "torch.manual_seed" in msg, msg
    assert "\n" not in msg
    with pytest.raises(NoisyDEQError) as err:  # another config: no such hint
        train_model(_deq(0), task, TrainSpec.preset("quick", "deq", None, epochs=2,
                                                    batch_size=256), out_dir=tmp_path / "m")
    assert "train.epochs 1 → 2" in str(err.value)
    assert "initial weights" not in str(err.value)
    with pytest.raises(NoisyDEQError, match=r"exists: load it \(resume=True; noisydeq train "
                       r"--resume\) or train into another folder \(out_dir; --out\)"):
        train_model(_deq(0), task, spec, out_dir=tmp_path / "m", resume=False)


def test_a_sweep_from_python_resumes_and_shows_itself_in_one_line(tmp_path):
    """``run_sweep`` stopped after its first cell (a notebook's interrupted kernel) and run
    again continues from its cell files and gives the same table as one run through; the
    result's repr is one line with its path (it printed every row of the table), and
    ``load_results(result.path)`` reads that table back."""
    import math

    import noisydeq
    from noisydeq.config import SweepSpec
    from noisydeq.sweep import run_sweep

    spec = SweepSpec(device="snr", snr_db=[10, math.inf], depths=[1], hidden=8, chips=2,
                     epochs=1, max_test_samples=64)

    class Stop(Exception):
        pass

    def stop(n: int) -> None:
        if n == 1:
            raise Stop

    with pytest.raises(Stop):
        run_sweep(spec, tmp_path / "a", threads="1", jobs=1, progress=False, on_cell=stop,
                  plots=False)
    resumed = run_sweep(spec, tmp_path / "a", threads="1", jobs=1, progress=False,
                        plots=False)
    whole = run_sweep(spec, tmp_path / "b", threads="1", jobs=1, progress=False,
                      plots=False)
    assert (resumed.skipped_cells, resumed.computed_cells) == (1, 3)
    assert resumed.rows == whole.rows and len(whole.rows) == 2 * 2 * 2
    text = repr(resumed)
    assert text == (f"SweepResult(path={str(tmp_path / 'a')!r}, rows=8, computed_cells=3, "
                    "skipped_cells=1, figures=0)")
    df = noisydeq.load_results(resumed.path)
    assert len(df) == 8 and set(df.kind) == {"deq", "ffw"}
    assert sorted(df.value) == sorted(r["value"] for r in whole.rows)


def test_a_model_of_other_sizes_than_the_task_is_one_line(tmp_path):
    """A model built for MNIST (784 features) trained or evaluated on ``digits`` (64), or
    with 3 classes for 10: torch's ``mat1 and mat2 shapes cannot be multiplied`` /
    ``Target 6 is out of bounds`` mid-way, now one line before any work naming both."""
    from noisydeq.train import evaluate

    task = load_task("digits")
    wide = build_model(ModelSpec(kind="deq", in_features=784, out_features=10, width=8))
    few = build_model(ModelSpec(kind="ffw", in_features=64, out_features=3, width=8))
    spec = TrainSpec.preset("quick", "ffw", None, epochs=1)
    for call, text in [(lambda: evaluate(wide, task), "evaluate: model: in_features is "
                        "784, but task 'digits' has 64"),
                       (lambda: train_model(few, task, spec, out_dir=tmp_path / "m"),
                        "train_model: model: out_features is 3, but task 'digits' has 10")]:
        with pytest.raises(NoisyDEQError, match=f"^{text} \\(64 → 10\\); build"):
            call()
    assert not (tmp_path / "m").exists()  # refused before anything is written
    # a TrainResult for its model, or the arguments swapped: AttributeError '.training'
    result = train_model(build_model(ModelSpec(kind="ffw", in_features=64, out_features=10,
                                               width=8)), task, spec)
    with pytest.raises(NoisyDEQError, match=r"^evaluate: model: expected a torch nn.Module, "
                       r"got TrainResult \(its .model is the trained model\)$"):
        evaluate(result, task)
    with pytest.raises(NoisyDEQError, match="^evaluate: model: expected a torch nn.Module, "
                       "got Task$"):
        evaluate(task, result.model)
    with pytest.raises(NoisyDEQError, match=r"^train_model: task: expected a noisydeq Task "
                       r"\(noisydeq.tasks.load_task\), got str$"):
        train_model(result.model, "digits", spec)


def test_an_attack_norm_that_is_not_linf_or_l2_is_refused():
    """``pgd(..., norm="l8")`` took ℓ2 steps (every name but ``linf`` did)."""
    from noisydeq import attacks

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    x, y = torch.rand(5, 4), torch.tensor([0, 1, 2, 0, 1])
    with pytest.raises(NoisyDEQError, match=r"unknown norm 'l8' \(allowed: linf, l2\)"):
        attacks.pgd(model, x, y, eps=0.1, norm="l8")
    with pytest.raises(NoisyDEQError, match="unknown norm"):
        attacks.ifgsm(model, x, y, eps=0.1, norm="l1")
    g = torch.Generator()
    same = [attacks.pgd(model, x, y, eps=0.1, norm=n, generator=g.manual_seed(1))
            for n in ("L2", "l2")]  # the spec's spellings (check_norm) mean the same norm
    assert torch.equal(same[0], same[1])


def test_calibrating_in_the_network_at_one_level_takes_a_number():
    """``calibrate_in_network(chip, x, 10.0)`` was a TypeError ('float' object is not
    iterable); one level is a number or a list of one, with the same knobs."""
    from noisydeq import hardware

    torch.manual_seed(0)
    model = build_model(ModelSpec(kind="ffw", in_features=16, out_features=4, width=8))
    x = torch.rand(64, 16)
    device = hardware.get_device("snr", noise_mode="dynamic").at_snr(10.0).new_chip(0)
    chips = [device.deploy(model), device.deploy(model)]
    reports = [hardware.calibrate_in_network(chips[0], x, 10.0),
               hardware.calibrate_in_network(chips[1], x, [10.0])]
    assert reports[0].levels == reports[1].levels == [10.0]
    layers = [hardware.device_layers(c) for c in chips]
    assert layers[0] and all(layers[0][n].control_for(10.0) == layers[1][n].control_for(10.0)
                             for n in layers[0])
    with pytest.raises(NoisyDEQError, match="rounds must be >= 0"):
        hardware.calibrate_in_network(chips[0], x, 10.0, rounds=-1)


SCRIPT = """
import math
from noisydeq.config import SweepSpec
from noisydeq.sweep import run_sweep

print("top level ran")
spec = SweepSpec(device="snr", snr_db=[10, math.inf], depths=[1, 2], hidden=8, chips=2,
                 epochs=1, max_test_samples=64)
result = run_sweep(spec, "run", threads="1", jobs=2, progress=False, plots=False)
print(result.computed_cells, result.skipped_cells, len(result.rows))
"""


def test_a_script_without_a_main_guard_sweeps_with_workers(tmp_path):
    """A script calling ``run_sweep(..., jobs=2)`` at its top level (no ``if __name__ ==
    "__main__":``): Python's spawn ran the script again in the worker, whose own
    ``run_sweep`` then waited for the parent's lock on ``run`` for ever ("another noisydeq
    process is writing --out run; waiting"). The worker now imports noisydeq alone: the
    script's top level runs once and the sweep ends. (The timeout only guards the suite
    against that hang.)"""
    import os
    import subprocess
    import sys

    (tmp_path / "sweep_script.py").write_text(SCRIPT, encoding="utf-8")
    env = {**os.environ, "NOISYDEQ_CACHE": str(tmp_path / "cache"), "NOISYDEQ_THREADS": "1",
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "sweep_script.py"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("top level ran") == 1, done.stdout
    assert done.stdout.splitlines()[-1] == "8 0 16", done.stdout
    assert "waiting" not in done.stderr, done.stderr
