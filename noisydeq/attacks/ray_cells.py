"""Attack cells on a Ray cluster (``noisydeq attack --backend ray``): one task per
(model, SNR level, chip) group.

The driver puts the run's spec and test inputs into Ray's object store once
(:class:`Payload`) and each model once; a task builds the group's device level once (as a
local run does: cells are grouped so each chip is made once), computes the group's missing
cells with the same :class:`~noisydeq.attacks.runner.Runner` code as a local run and returns
their rows, together with the early-state selection cell when it had to choose n. The driver
writes every returned cell into the run directory (its only writer), each at most once, as
its task finishes; a killed driver leaves the cells it saved and the same command resumes
from them. A worker process that dies is retried by Ray
(:data:`noisydeq.cluster.MAX_RETRIES`); an exception inside a task ends the run with its one
line.

Same numbers as a local run: every cell draws its noise and attack randomness from seeds
derived from its own key and the noise is counter-based (:mod:`noisydeq.attacks.runner`),
so no draw depends on the process or on the other cells; a worker computes with one torch
thread, so the table equals a local run with ``--threads 1`` byte for byte.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from noisydeq import cluster
from noisydeq.attacks.grid import AttackRunSpec
from noisydeq.attacks.runner import (
    AttackMember,
    AttackRunDir,
    Cell,
    Runner,
    early_key,
    is_per_position,
    plan,
)
from noisydeq.errors import NoisyDEQError

#: a worker's unpacked payload and models of the run it serves: key -> (token, value)
_KEPT: dict[str, Any] = {}


@dataclass
class TestInputs:
    """What a :class:`Runner` reads of a task (the first 512 training inputs calibrate)."""

    name: str
    kind: str
    out_features: int
    x_test: torch.Tensor
    y_test: torch.Tensor
    x_train: torch.Tensor
    #: a class per position (prefix sums, mazes): rows carry ``position_value``
    per_position: bool = False


@dataclass
class Payload:
    """Everything a worker needs besides the model (sent once per run)."""

    spec: AttackRunSpec
    task: TestInputs
    code: str
    torch_device: str


class MemoryCells:
    """A worker's stand-in for the run directory: the early-state cells the driver already
    has (``known``) and those chosen in this task (``saved``, returned to the driver)."""

    def __init__(self, known: dict[str, list[dict[str, Any]]]) -> None:
        self.known = dict(known)
        self.saved: dict[str, list[dict[str, Any]]] = {}

    def load_cell(self, key: str, expect: Any = None, *, columns: Any = None,
                  identity: Any = None) -> list[dict[str, Any]] | None:
        return self.known.get(key)

    def save_cell(self, key: str, rows: Any, layers: Any = ()) -> None:
        self.known[key] = self.saved[key] = [dict(r) for r in rows]


def _checked(payload: Payload) -> Payload:
    """``payload``, refused if this worker runs other noisydeq code than the driver (the
    code the cells record: kind ``attacks``, :attr:`AttackRunDir.code_kind`)."""
    from noisydeq.fingerprint import code_fingerprint

    cluster.same_code(payload.code, code_fingerprint(AttackRunDir.code_kind))
    return payload


Returned = tuple[list[tuple[str, list[dict[str, Any]]]], dict[str, list[dict[str, Any]]]]


def attack_group(token: str, payload: list[Any], model: list[Any], i: int, keys: list[str],
                 early: dict[str, list[dict[str, Any]]]) -> Returned:
    """A Ray task: the rows of the cells ``keys`` of model ``i`` (all of one level and
    chip), and the early-state cells it chose (key → rows). ``payload`` / ``model`` hold
    an object reference each (in a list, so Ray passes the reference and the worker
    unpacks it once); ``early``: the group's early-state cell when the driver has it."""
    torch.set_num_threads(1)
    pay: Payload = cluster.kept(token, "payload", payload, run=True, make=_checked)
    member: AttackMember = cluster.kept(token, f"model/{i}", model)
    dev = torch.device(pay.torch_device)
    member.model.to(dev).eval()
    memory = MemoryCells(early)
    runner = Runner(pay.spec, pay.task, memory, dev)
    want = set(keys)
    out = [(c.key, runner.compute(c)) for c in plan(pay.spec, [member]) if c.key in want]
    if len(out) != len(want):
        raise NoisyDEQError(f"attack task {member.model_id}: {len(want) - len(out)} cell(s) "
                            "the driver asked for are not in the worker's plan (same "
                            "noisydeq on every node?)")
    return out, memory.saved


def run_on_ray(runner: Runner, members: Sequence[AttackMember], todo: Sequence[Cell],
               saved: Callable[[str, list[dict[str, Any]]], None]) -> int:
    """Compute the cells ``todo`` on the connected Ray cluster, one task per (model, level,
    chip) group, writing each returned cell into ``runner.rd`` once (and calling
    ``saved(key, rows)``) as its task finishes; returns how many cells were written."""
    import ray

    from noisydeq.attacks.runner import EARLY_COLUMNS
    from noisydeq.fingerprint import code_fingerprint

    spec, task, rd = runner.spec, runner.task, runner.rd
    inputs = TestInputs(task.name, getattr(task, "kind", "classification"),
                        int(task.out_features), task.x_test.cpu(), task.y_test.cpu(),
                        task.x_train[:512].cpu(), is_per_position(task))
    # the code the run directory's cells record (:attr:`AttackRunDir.code`)
    ref = ray.put(Payload(spec, inputs, code_fingerprint(AttackRunDir.code_kind),
                          str(runner.dev)))
    token = ref.hex()
    index = {id(m): i for i, m in enumerate(members)}
    groups: dict[tuple[int, float, int], list[str]] = {}
    for c in todo:
        groups.setdefault((index[id(c.member)], c.snr_db, c.chip), []).append(c.key)
    model_refs = {i: ray.put(members[i]) for i in sorted({g[0] for g in groups})}
    fn = cluster.remote(attack_group, "noisydeq-attack-group", gpu=runner.dev.type == "cuda")
    futures = {}
    # largest groups first: DEQs before FFWs, many cells before few
    for g in sorted(groups, key=lambda g: (-members[g[0]].params * len(groups[g]), g)):
        i, snr, chip = g
        ekey = early_key(spec, members[i], snr, chip)
        have = rd.load_cell(ekey, columns=EARLY_COLUMNS, identity=("n",))
        early = {ekey: have} if have else {}
        futures[fn.remote(token, [ref], [model_refs[i]], i, groups[g], early)] = g
    written: set[str] = set()

    def what(g: tuple[int, float, int]) -> str:
        return f"attack task {members[g[0]].model_id} SNR {g[1]:g} chip {g[2]}"

    for _g, (cells, early_cells) in cluster.finished(futures, what):
        for key, rows in early_cells.items():
            if rd.load_cell(key, columns=EARLY_COLUMNS, identity=("n",)) is None:
                rd.save_cell(key, rows)  # the driver writes
        for key, rows in cells:
            if key in written:
                continue
            rd.save_cell(key, rows)
            written.add(key)
            saved(key, rows)
    return len(written)
