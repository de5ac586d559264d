"""A study's models on a Ray cluster (``noisydeq study --backend ray``): one task per
(model name, seed, training SNR).

The driver puts the spec, the task and its test sets into Ray's object store once; a task
builds its model exactly as a local run does (:func:`noisydeq.studies.runner._build`: the
weights from ``derive_seed(seed, "study", name)``), trains it without writing anything
(:func:`noisydeq.train.train_model` with no ``out_dir``) and evaluates it
(:func:`~noisydeq.studies.runner.evaluate_model`) unless its weights are those its cell
records (the driver's rule, :meth:`~noisydeq.studies.rundir.StudyDir.served_weights`: the
cell is then served, as a local run serves it, and not computed again); it returns the
checkpoint bytes (:func:`noisydeq.store.checkpoint_blob`) and the rows. A model whose
checkpoint the run directory already holds is loaded by the driver and sent once; its task
only evaluates. The driver checks each checkpoint's config hash against the one the resume
computed (:attr:`~noisydeq.studies.runner.ModelJob.config_hash`, the key training makes
through :func:`noisydeq.train_config.training_config`), writes it
into ``models/<id>/`` (under the model directory's lock, with its signed sidecar) and then
the model's cell — the run directory's only writer, each file once; a rerun resumes from
what was written. A worker running other noisydeq code than the driver (whose code the
cells record) is refused in one line.

Same numbers as a local run with one torch thread: training draws are functions of
(seed, epoch, sample, draw) and test noise of (seed, model, training SNR, test set, test
SNR, sample); only the timing columns (``train_seconds``, ``eval_seconds``) differ.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from noisydeq import cluster
from noisydeq.errors import NoisyDEQError
from noisydeq.specs.study import StudySpec
from noisydeq.studies.rundir import StudyDir
from noisydeq.studies.runner import ModelJob, _build, evaluate_model, model_id


def _checked(inputs: tuple[Any, ...]) -> tuple[Any, ...]:
    """(spec, task, test sets) of the driver's inputs, refused if this worker runs other
    noisydeq code than the driver (whose code its cells record)."""
    from noisydeq.fingerprint import code_fingerprint

    *rest, code = inputs
    cluster.same_code(code, code_fingerprint(StudyDir.code_kind))
    return tuple(rest)


def study_model(token: str, box: list[Any], job: ModelJob, trained: Any,
                device: str) -> tuple[bytes | None, float, list[dict[str, Any]] | None]:
    """A Ray task: (checkpoint bytes or None, test metric, rows) of one study model —
    trained here unless ``trained`` (a finished model the driver loaded) is given; rows
    None, not evaluated, when the trained weights are those its cell is served for
    (``job.serve``, the driver's decision rule: :meth:`StudyDir.served_weights`)."""
    from noisydeq import store
    from noisydeq.train import train_model

    torch.set_num_threads(1)
    spec, task, sets = cluster.kept(token, "inputs", box, run=True, make=_checked)
    dev = torch.device(device)
    blob, seconds, metric = None, 0.0, float("nan")
    if trained is None:
        model = _build(spec, job.name, task, job.seed)
        t0 = time.perf_counter()
        res = train_model(model, task, spec.train_spec(job.name, job.seed, job.train_snr_db),
                          out_dir=None, torch_device=dev, quiet=True)
        seconds, metric = time.perf_counter() - t0, float(res.test_metric)
        blob = store.checkpoint_blob(res.model.state_dict(), res.config, res.extra)
        model = res.model
        if job.serve is not None and store.init_hash(model) == job.serve:
            return blob, metric, None  # its cell is served: not evaluated again
    else:
        model, seconds = trained
    params = sum(p.numel() for p in model.parameters())
    rows = evaluate_model(spec, job.name, model, job.seed, job.train_snr_db, task, sets,
                          params, seconds)
    return blob, metric, rows


def run_on_ray(spec: StudySpec, task: Any, sets: list, run: StudyDir, jobs: list[ModelJob],
               say: Callable[[str], None]) -> dict[str, tuple[list[dict[str, Any]], bool]]:
    """Train and evaluate ``jobs`` on the connected Ray cluster, writing each checkpoint and
    cell into ``run`` as its task finishes; returns model id → (rows, trained here?)."""
    import ray

    from noisydeq import store
    from noisydeq.runtime import num_threads, resolve_torch_device
    from noisydeq.studies.runner import expected_rows
    from noisydeq.train import MODEL_FILE, RESUME_FILE, train_model
    from noisydeq.train_config import apply_overrides

    dev = resolve_torch_device(spec.torch_device)
    ref = ray.put((spec, task, sets, run.code))
    fn = cluster.remote(study_model, "noisydeq-study-model", gpu=dev.type == "cuda")
    futures = {}
    with num_threads(1):  # loads of one-thread training (study_model)
        for job in jobs:
            mid = model_id(job.name, job.seed, job.train_snr_db)
            tspec = spec.train_spec(job.name, job.seed, job.train_snr_db)
            trained = None
            if not job.train:  # finished here: load it (one of another config is trained)
                res = train_model(_build(spec, job.name, task, job.seed), task, tspec,
                                  out_dir=run.models / mid, torch_device=dev, quiet=True)
                run.weights[mid] = store.init_hash(res.model)  # what its cell records
                trained = ray.put((res.model.cpu(), res.seconds))
            futures[fn.remote(ref.hex(), [ref], job, trained, str(dev))] = (mid, job)
    out: dict[str, tuple[list[dict[str, Any]], bool]] = {}
    for (mid, job), (blob, metric, rows) in cluster.finished(
            futures, lambda k: f"study model {k[0]}"):
        model, meta = _build(spec, job.name, task, job.seed), {}
        if blob is not None:
            weights, meta = store.read_tensors_blob(blob, f"checkpoint bytes of {mid}")
            if meta.get("config_hash") != job.config_hash:  # the resume's key (_keyed_model)
                raise NoisyDEQError(f"study model {mid} on Ray: the worker's training config "
                                    "differs from the driver's (same noisydeq, torch and data "
                                    "on every node?)")
            store.load_into(model, weights, f"checkpoint bytes of {mid}")
            run.weights[mid] = store.init_hash(model)  # what its cell records
            entry = run.models / mid
            store.make_dir(entry, "model directory")
            with store.DirLock(entry, "model directory"):  # the driver writes the run dir
                store.write_checkpoint_blob(entry / MODEL_FILE, blob)
                (entry / RESUME_FILE).unlink(missing_ok=True)  # a local run's partial one
            say(f"{mid}: {task.metric_name} {metric:.4g} (trained on Ray)")
        cell = run.load_cell(mid, expected_rows(spec, job.name, model, job.seed,
                                                job.train_snr_db, sets))
        if cell is None:
            if rows is None:  # not evaluated there (its cell was to be served): here
                apply_overrides(model, spec.train_spec(job.name, job.seed, job.train_snr_db))
                rows = evaluate_model(spec, job.name, model, job.seed, job.train_snr_db,
                                      task, sets, sum(p.numel() for p in model.parameters()),
                                      float(meta.get("extra", {}).get("seconds", 0.0)))
            run.save_cell(mid, rows)
            say(f"{mid}: evaluated {len(rows)} rows in "
                f"{sum(r['eval_seconds'] for r in rows):.1f} s")
            cell = rows
        out[mid] = (cell, blob is not None)
    return out
