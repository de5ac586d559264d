"""A study model's checkpoint key is one function's (:func:`noisydeq.train_config.
training_config`): the config hash a resume and the Ray driver predict
(:func:`noisydeq.studies.runner._keyed_model`, handed to Ray as ``ModelJob.config_hash``)
is the one :func:`noisydeq.train.train_model` writes, for every kind of override a study
(``train``, ``models.NAME.train``, ``--set``) or the command (threads) gives — and each
override reaches it. Without Ray: the jobs ``run_study`` hands its Ray runner are caught.
"""

from __future__ import annotations

import contextlib
import math

import pytest
import torch

from noisydeq import cluster, store
from noisydeq.cluster import Backend
from noisydeq.runtime import num_threads
from noisydeq.studies import run_study
from noisydeq.studies.runner import _build, _keyed_model, load_study_task, model_id
from noisydeq.train import train_model
from tests.test_studies import tiny

#: one of every kind of TrainSpec setting a study can override (the DEQ's solvers,
#: gradient and Jacobian regulariser are the ones training also sets on the model)
OVERRIDES = {
    "solver": {"solver": {"name": "anderson", "max_iter": 7, "tol": 1e-3}},
    "test_solver": {"test_solver": {"name": "unroll", "max_iter": 9}},
    "gradient": {"gradient": {"name": "phantom", "phantom_steps": 2, "phantom_lambda": 0.5}},
    "jac_reg": {"jac_reg": {"weight": 0.5, "n_samples": 1}},
    "epochs": {"epochs": 2},
    "lr": {"lr": 0.01},
    "batch_size": {"batch_size": 7},
    "weight_decay": {"weight_decay": 0.1},
    "max_train_samples": {"max_train_samples": 20},
    "lr_schedule": {"lr_schedule": "cosine"},
}
BASE = {"epochs": 0}  # the key is made before any epoch: training's cost left out
DEV = torch.device("cpu")
MODELS = {"deq": {"kind": "deq", "cell": "conv1d", "width": 3, "weight_norm": False},
          "ffw": {"kind": "ffw", "cell": "conv1d", "width": 3, "depth": 2,
                  "weight_norm": False}}


def _spec(study: dict, per_model: dict):
    return tiny(train_snr_db=["inf", 0.0], seeds=[0, 3], train={**BASE, **study},
                models={k: {**v, "train": per_model} for k, v in MODELS.items()})


def _keys(spec, threads=1):
    """model id → (the resume's key, the key train_model writes) of every study model."""
    task = load_study_task(spec)
    out = {}
    with num_threads(threads):
        for name in spec.models:
            for seed in spec.seeds:
                for tsnr in spec.train_snr_db:
                    key = _keyed_model(spec, name, task, seed, tsnr, DEV)[2]
                    res = train_model(_build(spec, name, task, seed), task,
                                      spec.train_spec(name, seed, tsnr), out_dir=None)
                    out[model_id(name, seed, tsnr)] = (key, res.config_hash)
    return out


@pytest.mark.parametrize("where", ["study", "model"])
def test_resume_key_is_trainings_for_every_override(where):
    base = _keys(_spec({}, {}))
    assert all(a == b for a, b in base.values())
    assert len({a for a, _ in base.values()}) == len(base)  # seeds, SNRs, models apart
    for name, over in OVERRIDES.items():
        keys = _keys(_spec(over, {}) if where == "study" else _spec({}, over))
        for mid, (resume, trained) in keys.items():
            assert resume == trained, f"{name} ({where}), {mid}"
            assert resume != base[mid][0], f"{name} ({where}) does not reach {mid}'s key"


def test_resume_key_holds_the_thread_count():
    one, two = _keys(_spec({}, {}), threads=1), _keys(_spec({}, {}), threads=2)
    assert all(a == b for a, b in two.values())
    assert all(one[k][0] != two[k][0] for k in one)


class _Caught(Exception):
    pass


def test_ray_jobs_carry_the_resume_key_and_the_weights_served(tmp_path, monkeypatch):
    """The jobs run_study hands the Ray runner (caught here, no cluster joined): a model
    to train carries the key training writes, overrides and all, and — its checkpoint
    gone, its cell kept — the weights digest its cell is served for, which its training
    gives again."""
    import shutil

    spec = tiny(train_snr_db=["inf"], test_snr_db=["inf"], seeds=[0],
                train={"lr": 0.01, "batch_size": 16},
                models={"deq": {**MODELS["deq"], "train": {
                    "solver": {"name": "anderson", "max_iter": 7, "tol": 1e-3},
                    "jac_reg": {"weight": 0.5, "n_samples": 1}}}})
    out = tmp_path / "run"
    with num_threads(1):  # the thread count a Ray run keys and trains with
        first = run_study(spec, out, plots=False)
    assert first.trained == 1
    ckpt = out / "models" / "deq-s0-tinf"
    _, meta = store.load_tensors(ckpt / "model.safetensors")
    recorded = store.read_signed_json(out / "cells" / "deq-s0-tinf.json")["weights"]
    shutil.rmtree(ckpt)
    jobs = []

    def remote(_spec, _task, _sets, _run, got, _say):
        jobs.extend(got)
        raise _Caught

    monkeypatch.setattr(cluster, "session", lambda _b: contextlib.nullcontext())
    with pytest.raises(_Caught):
        run_study(spec, out, plots=False, backend=Backend("ray"), remote=remote)
    (job,) = jobs
    assert job.train and job.config_hash == meta["config_hash"]
    assert job.serve == recorded  # its cell: served when training gives these weights
    task = load_study_task(spec)
    with num_threads(1):  # as the Ray task trains it
        res = train_model(_build(spec, "deq", task, 0), task,
                          spec.train_spec("deq", 0, math.inf), out_dir=None)
    assert res.config_hash == job.config_hash
    assert store.init_hash(res.model) == job.serve
