"""Sweep evaluation on a Ray cluster (``--backend ray``): one task per (model, chip) pair.

The driver puts what every task needs into Ray's object store once — the spec, the test
and calibration inputs, the device adapter, the calibration groups and the cell digest
(:class:`Payload`) — and each model once; a task computes the missing level chunks of its
pair with the same :class:`~noisydeq.sweep.plan.CellRunner` code as a local run and returns
their rows. The driver saves each cell as its task finishes (the run directory's only
writer) and at most once. A worker process that dies (killed, out of memory, node lost) is
retried by Ray (:data:`noisydeq.cluster.MAX_RETRIES`); an exception inside a task is
deterministic and ends the sweep with its one line. A driver that is killed leaves the
cells it saved; the same command resumes from them.

Same numbers as a local run: every draw depends only on (seed, model, SNR level, chip,
layer, solver step, test-sample index) (docs/architecture.md, "Randomness"), never on the
process that evaluates it, and a worker evaluates with one torch thread — the table equals
``--jobs 1 --threads 1`` and ``--jobs N``, byte for byte. A worker keeps the last payload
and models it unpacked (:func:`noisydeq.cluster.kept`), so a process that runs many pairs
of one sweep unpacks them once. Workers write nothing that outlives a task: the driver
ships each task the calibration entries its cache holds for the pair (read by the driver, not from a
shared file system), so a rerun does not calibrate again; knobs a worker had to search
come back with the cells, and the driver stores them with the local run's writer
(:func:`~noisydeq.hardware.calibration_store.write_entry`: digest checked, an unwritable
cache ignored).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from noisydeq import cluster
from noisydeq.specs.sweep import SweepSpec
from noisydeq.sweep.base import SweepModel
from noisydeq.sweep.hardware import Hardware
from noisydeq.sweep.plan import CellRunner


@dataclass
class TestInputs:
    """What a cell runner reads of a task: its name, kind, test set and calibration inputs."""

    name: str
    kind: str
    x_test: torch.Tensor
    y_test: torch.Tensor
    x_train: torch.Tensor | None


@dataclass
class Payload:
    """Everything a worker's runner needs besides the model (sent once per sweep)."""

    spec: SweepSpec
    task: TestInputs
    hardware: Hardware
    groups: list[list[float]]
    content: str
    code: str
    torch_device: str


def _inputs(task: Any, runner: CellRunner) -> TestInputs:
    """The runner's (already cut) test and calibration inputs, on the CPU."""
    calib = runner.calib_x
    return TestInputs(task.name, task.kind, runner.x.cpu(), runner.y.cpu(),
                      None if calib is None else calib.cpu())


def _build_runner(payload: Payload) -> CellRunner:
    """The cell runner of a sweep's payload (refused if the worker runs other code)."""
    from noisydeq.hardware.calibration_store import code_fingerprint

    cluster.same_code(payload.code, code_fingerprint("sweep"))
    return CellRunner(payload.spec, payload.task, None, payload.hardware,
                      torch.device(payload.torch_device), groups=payload.groups,
                      content=payload.content, code=payload.code)


Cell = tuple[list[float], list[dict[str, Any]], list[dict[str, Any]]]


def evaluate_pair(
    token: str, payload: list[Any], model: list[Any], i: int, chip: int,
    todo: list[list[float]], known: dict[str, str] | None = None,
) -> tuple[list[Cell], dict[str, str]]:
    """A Ray task: the cells (levels, rows, per-layer rows) of model ``i`` on ``chip`` for
    the level chunks ``todo``, and the calibration entries its chip needed that ``known``
    (the driver's cached entries for this pair, file name → signed JSON text) lacked; the
    driver checks and caches them. ``payload`` / ``model`` hold an object reference each
    (in a list, so Ray passes the reference and the worker unpacks it once). Nothing
    outlives the task: the entries pass through a scratch directory."""
    import tempfile

    from noisydeq.hardware.calibration_store import cache_entries

    torch.set_num_threads(1)
    runner: CellRunner = cluster.kept(token, "runner", payload, run=True, make=_build_runner)
    sm: SweepModel = cluster.kept(token, f"model/{i}", model)
    cells: list[Cell] = []
    it = iter(todo)

    def keep(_key: str, rows: list[dict[str, Any]], layers: list[dict[str, Any]]) -> None:
        cells.append((list(next(it)), rows, layers))

    with tempfile.TemporaryDirectory(prefix="noisydeq-calib-") as scratch:
        cache_entries(known or {}, Path(scratch))  # the driver's: loaded, not searched
        runner.hardware.calibration_root = Path(scratch)
        try:
            runner.run_pair(sm, chip, lambda *_: None, todo=[list(t) for t in todo], save=keep)
        finally:
            runner.hardware.calibration_root = None
        found = sorted((Path(scratch) / "calibration").glob("*.json"))
        entries = {p.name: p.read_text(encoding="utf-8") for p in found
                   if p.name not in (known or {})}
    return cells, entries


def run_on_ray(
    runner: CellRunner, task: Any, models: Sequence[SweepModel],
    todo: dict[tuple[int, int], list[list[float]]], on_cell: Callable[..., None],
) -> None:
    """Evaluate the pending pairs of ``todo`` on the connected Ray cluster, saving each
    returned cell into ``runner.run_dir`` (once) as its task finishes."""
    import ray

    from noisydeq.families import cache_root
    from noisydeq.hardware.calibration_store import cache_entries, read_entries

    assert runner.run_dir is not None
    payload = Payload(runner.spec, _inputs(task, runner), runner.hardware,
                      [list(g) for g in runner.hardware.level_groups], runner.content,
                      runner.code, str(runner.torch_device))
    ref = ray.put(payload)
    token = ref.hex()
    pending = sorted((p for p, t in todo.items() if t), key=lambda p: -models[p[0]].params)
    model_refs = {i: ray.put(models[i]) for i in sorted({i for i, _ in pending})}
    task_fn = cluster.remote(evaluate_pair, "noisydeq-sweep-pair",
                             gpu=runner.torch_device.type == "cuda")
    cache = cache_root()

    def known(i: int, chip: int) -> dict[str, str]:
        sm = models[i]  # keyed as the one-thread worker keys them
        names = runner.hardware.calibration_entries(sm.model, sm.seed, chip, runner.calib_x,
                                                    threads=1)
        return read_entries(cache, names)

    futures = {task_fn.remote(token, [ref], [model_refs[i]], i, chip, todo[(i, chip)],
                              known(i, chip)): (i, chip) for i, chip in pending}
    written: set[str] = set()
    for (i, chip), (cells, entries) in cluster.finished(
            futures, lambda pair: f"sweep task {models[pair[0]].model_id} chip {pair[1]}"):
        for levels, rows, layers in cells:
            key = runner.key(models[i], chip, levels)
            if key in written:
                continue
            runner.run_dir.save_cell(key, rows, layers)  # the driver writes
            written.add(key)
            on_cell(1, key)
        cache_entries(entries, cache)  # the local run's writer: an unwritable cache is ignored
