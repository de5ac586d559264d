"""Family members trained as Ray tasks (``--backend ray``); the driver caches them.

:func:`train_sweep_families_on_ray` finds the members of a sweep's families that the model
cache lacks (:func:`noisydeq.families.prepared_member`: the same cache key as a local
run), puts the task into Ray's object store once and trains each missing member in a Ray
task (:func:`train_member`) that returns the finished checkpoint as bytes
(:func:`noisydeq.store.checkpoint_blob`). The driver checks each one's digest and config
hash against the entry it computed and writes it into the cache
(:func:`noisydeq.store.write_checkpoint_blob`, under the entry's lock); the sweep then loads
every member from the cache as usual. Workers write nothing (no resume files: a worker that
dies is retried by Ray and trains its member from the start).

Same weights as a local run: training draws are functions of (seed, epoch, sample index,
draw) (:mod:`noisydeq.train`), and a task trains with one torch thread — equal to a local
run with ``--threads 1`` (the default); the driver makes the cache keys with one thread too
(the thread count is part of the key).
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from noisydeq import cluster
from noisydeq.errors import NoisyDEQError
from noisydeq.specs.sweep import SweepSpec
from noisydeq.specs.training import TrainSpec


def train_member(
    token: str, box: list[Any], model: nn.Module, tspec: TrainSpec, device: str,
) -> tuple[bytes, float]:
    """A Ray task: train ``model`` as ``tspec`` says on the task in ``box`` (an object
    reference in a list, unpacked once per worker); returns (checkpoint bytes, seconds)."""
    from noisydeq import store
    from noisydeq.train import train_model

    torch.set_num_threads(1)
    task = cluster.kept(token, "task", box, run=True)
    t0 = time.perf_counter()
    result = train_model(model, task, tspec, out_dir=None, torch_device=device, quiet=True)
    blob = store.checkpoint_blob(result.model.state_dict(), result.config, result.extra)
    return blob, time.perf_counter() - t0


def train_sweep_families_on_ray(spec: SweepSpec, task: Any, progress: bool = True) -> int:
    """Train the members of ``spec``'s families missing from the model cache as Ray tasks
    and cache them (this process writes); returns how many were trained."""
    import ray

    from noisydeq import store
    from noisydeq.families import cache_root, prepared_member, sweep_family_specs
    from noisydeq.runtime import num_threads
    from noisydeq.train import MODEL_FILE

    dev = torch.device(spec.torch_device)
    root = cache_root() / "models"
    todo: dict[str, tuple[nn.Module, TrainSpec, Any, str]] = {}
    with num_threads(1):  # the keys of one-thread training (train_member)
        for seed, _tsnr, _tdev, _dsnr, fspec in sweep_family_specs(spec):
            for depth in fspec.depths:
                for kind in fspec.kinds:
                    model, tspec, entry = prepared_member(fspec, task, kind, depth, root, dev)
                    if not (entry / MODEL_FILE).is_file() and entry.name not in todo:
                        name = f"{kind} d{depth} w{model.width} s{seed}"
                        todo[entry.name] = (model, tspec, entry, name)
    if not todo:
        return 0

    ref = ray.put(task)
    fn = cluster.remote(train_member, "noisydeq-train-member", gpu=dev.type == "cuda")
    order = sorted(todo, key=lambda k: -sum(p.numel() for p in todo[k][0].parameters()))
    futures = {fn.remote(ref.hex(), [ref], todo[k][0], todo[k][1], str(dev)): k for k in order}
    log = None
    if progress:
        from noisydeq.progress import write as log
    for key, (blob, seconds) in cluster.finished(futures, lambda k: f"training {todo[k][3]}"):
        _model, _tspec, entry, name = todo[key]
        _, meta = store.read_tensors_blob(blob, f"checkpoint bytes of {name}")
        if meta.get("config_hash") != entry.name:
            raise NoisyDEQError(
                f"training {name} on Ray: the worker's training config differs from "
                "the driver's (same noisydeq, torch and data on every node?)")
        with store.DirLock(entry, "model directory"):  # the driver writes the cache
            if not (entry / MODEL_FILE).is_file():
                store.write_checkpoint_blob(entry / MODEL_FILE, blob)
        if log is not None:
            log(f"{name}: trained on Ray in {seconds:.1f} s")
    return len(todo)
