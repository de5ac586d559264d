"""``--torch-device cuda``: every device preset sweeps on CUDA tensors and agrees with the
CPU (skipped without CUDA: ``benchmarks/gpu_check.sh`` runs them on a GPU machine); without
CUDA the option is one line with nothing written."""

from __future__ import annotations

import math

import pytest
import torch

from noisydeq.config import SweepSpec, build
from noisydeq.hardware.presets import preset_names
from tests.cli_helpers import one_line_error, run_cli

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small CPU-trained family (hidden 32, depths 1 and 3) and the digits task."""
    from noisydeq.families import family_spec_for_sweep, train_family
    from noisydeq.tasks import load_task

    task = load_task("digits", seed=0)
    spec = build(SweepSpec, dict(task="digits", depths=[1, 3], hidden=32, epochs=2))
    fam = train_family(family_spec_for_sweep(spec, 0, math.inf), task,
                       cache_dir=tmp_path_factory.mktemp("cuda-cache"))
    return task, sorted(fam.members, key=lambda m: (m.depth, m.kind))


@needs_cuda
@pytest.mark.parametrize("device", preset_names())
def test_every_preset_sweeps_on_cuda_like_on_the_cpu(trained, tmp_path, device):
    from noisydeq.sweep import SweepModel, run_sweep

    task, members = trained
    base = dict(task="digits", device=device, snr_db="0,10,inf", depths=[1, 3], hidden=32,
                chips=1, max_test_samples=256)
    tables = {}
    for dev in ("cpu", "cuda"):
        models = [SweepModel(m.model.to("cpu"), m.kind, m.depth, m.width, m.params)
                  for m in members]
        res = run_sweep(build(SweepSpec, {**base, "torch_device": dev}), tmp_path / dev,
                        task=task, models=models, progress=False, plots=False, threads="1",
                        jobs=1)
        tables[dev] = {(r["model_id"], r["snr_db"]): r["value"] for r in res.rows}
    assert tables["cpu"].keys() == tables["cuda"].keys()
    for key, value in tables["cpu"].items():
        assert abs(tables["cuda"][key] - value) <= 0.01, key  # within 1 accuracy point


@needs_cuda
def test_training_on_cuda_runs_and_is_cached_apart(tmp_path):
    from noisydeq.families import train_family
    from noisydeq.specs.base import build as build_spec
    from noisydeq.specs.family import FamilySpec

    fspec = build_spec(FamilySpec, {"task": "digits", "depths": [1], "hidden": 16,
                                    "train": {"epochs": 1}})
    cpu = train_family(fspec, cache_dir=tmp_path, torch_device="cpu")
    gpu = train_family(fspec, cache_dir=tmp_path, torch_device="cuda")
    assert {m.key for m in cpu.members}.isdisjoint({m.key for m in gpu.members})
    assert all(next(m.model.parameters()).is_cuda for m in gpu.members)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
@pytest.mark.parametrize("command", ["sweep", "run"])
def test_cuda_without_cuda_is_one_line_and_writes_nothing(tmp_path, capsys, command):
    out = tmp_path / "run"
    head = ["sweep", "--task", "digits", "--depths", "1", "--snr", "0,inf", "--chips", "1"] \
        if command == "sweep" else ["run", "devices-rram"]
    code, _, err = run_cli([*head, "--torch-device", "cuda", "--out", str(out), "--quiet"],
                           capsys)
    one_line_error(code, err, "CUDA is not available")
    assert not out.exists()
