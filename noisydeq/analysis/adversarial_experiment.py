"""Adversarial-training experiments (``noisydeq/experiments/adversarial-*.toml``): train a grid of
adversarially trained DEQ/FFW families with defences, then attack them.

The grid (main paper §4.2, App. D.3, Fig. 3 and 14-17; regulation paper Tables 1 and 5):
training ``methods`` (``pgd`` = PGD-AT, ``trades``, ``none`` = standard training) ×
training ``defences`` × ``seeds``, each a family of ``kinds`` at ``depths``. Defences:

==============  ==================================================================
``none``        adversarial training alone
``x-<S>db``     multiplicative noise on the input x at S dB, kept at inference (DEQ)
``z-<S>db``     multiplicative noise on the state z at S dB, kept at inference
``threshold``   the training solver's threshold uniform in 1…max_iter (DEQ; App. E.3)
``rs``          the loss at a random intermediate state (DEQ; regulation paper Eq. 10)
==============  ==================================================================

FFWs take only ``none`` and ``z`` (the paper perturbs only z of an FFW). Each
``evaluations`` table is one ``noisydeq attack`` grid (:class:`AttackRunSpec` fields)
over all trained models — test-time defences such as ``entropy`` (Algorithm 1) and the
intermediate-state grid ``unrolled-grid`` go there; an evaluation's ``transfer_from``
(a training defence of the grid, e.g. ``none``) also attacks every other model with
examples crafted on its same-kind, -method and -seed twin trained with that defence
(:func:`transfer_sources`: the closer look's gradient-masking check). Models live in the
model cache (trained once); each evaluation is a resumable attack run directory under the
experiment's, and ``models.json`` there records each model's cache entry, weights digest and
training info (:class:`GridModels`): a resume trains or loads only the models of cells to
compute — none for a finished run, none either with the model cache cleared (a cell is tied
to the weights it was computed on). ``quick`` and ``full`` override ``family``, ``train``,
``grid`` and any evaluation's fields.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from noisydeq.errors import NoisyDEQError, did_you_mean
from noisydeq.specs.base import Seed, StrictModel, build, build_layers, suggest_name
from noisydeq.specs.family import FamilySpec, check_kinds
from noisydeq.specs.optimizer import ADVERSARIAL_METHODS
from noisydeq.specs.training import TRAIN_PRESETS, TrainSpec
from noisydeq.specs.variant_file import Variant, VariantFile

DEFENCE_RE = re.compile(r"^(x|z)-(-?\d+(?:\.\d+)?)db$")
DEFENCE_NAMES = ("none", "x-0db", "x-10db", "z-0db", "z-10db", "threshold", "rs")
METHODS = ("none", *ADVERSARIAL_METHODS)
PARTS = ("family", "train", "grid", "evaluations")


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k),
                                                                               dict) else v
    return out


def _build_layers(model: type[Any], layers: list[tuple[str, dict[str, Any]]], where: str
                  ) -> Any:
    """:func:`~noisydeq.specs.base.build_layers` with each layer's tables merged into the
    earlier ones' (as :func:`_deep_merge`): an error names the table its key was written
    in (``[grid]``, ``[quick.grid]`` or ``--set grid``)."""
    acc: dict[str, Any] = {}
    out = []
    for place, table in layers:
        acc = _deep_merge(acc, table)
        out.append((place, {k: acc[k] for k in table}))
    return build_layers(model, out, where)


def check_defence(name: str) -> str:
    """A training defence name (see module docstring), or one line with a suggestion."""
    n = str(name).strip().lower()
    if n in ("none", "threshold", "rs") or DEFENCE_RE.match(n):
        return n
    hint = did_you_mean(n, DEFENCE_NAMES)
    raise ValueError(f"unknown training defence '{name}'{hint} (allowed: none, x-<S>db, "
                     "z-<S>db, threshold, rs)")


def defence_kinds(defence: str) -> tuple[str, ...]:
    """The model kinds a training defence applies to."""
    return ("deq", "ffw") if defence == "none" or defence.startswith("z-") else ("deq",)


class GridSpec(StrictModel):
    """The training grid: ``methods`` × ``defences`` × ``seeds`` (families of ``kinds``),
    each trained with ``train_preset`` plus the experiment's ``train`` overrides."""

    NO_REPEATS = frozenset({"methods", "defences", "kinds", "seeds"})

    methods: list[str] = Field(default_factory=lambda: ["pgd", "trades"])
    defences: list[str] = Field(default_factory=lambda: ["none"])
    kinds: list[Literal["deq", "ffw"]] = Field(default_factory=lambda: ["deq", "ffw"])
    seeds: list[Seed] = Field(default_factory=lambda: [0])
    train_preset: str = "adversarial-quick"

    @field_validator("methods")
    @classmethod
    def _methods(cls, v: list[str]) -> list[str]:
        out = []
        for m in v:
            m = str(m).strip().lower()
            if m not in METHODS:
                raise ValueError(suggest_name("method", m, METHODS))
            out.append(m)
        return out

    @field_validator("kinds", mode="before")
    @classmethod
    def _kinds(cls, v: Any) -> Any:
        return check_kinds(v, ("deq", "ffw"))

    @field_validator("defences")
    @classmethod
    def _defences(cls, v: list[str]) -> list[str]:
        return [check_defence(d) for d in v]

    @field_validator("train_preset")
    @classmethod
    def _preset(cls, v: str) -> str:
        if v not in TRAIN_PRESETS:
            raise ValueError(suggest_name("preset", v, TRAIN_PRESETS))
        return v

    @model_validator(mode="after")
    def _non_empty(self) -> GridSpec:
        for name in ("methods", "defences", "kinds", "seeds"):
            if not getattr(self, name):
                raise ValueError(f"{name} must not be empty")
        return self


@dataclass
class Resolved:
    """One variant of an experiment with everything validated."""

    name: str
    variant: str
    family: dict[str, Any]
    train: dict[str, Any]
    grid: GridSpec
    evaluations: dict[str, dict[str, Any]]
    cells: list[Cell] = field(default_factory=list)


@dataclass
class Cell:
    """One trained family of the grid."""

    method: str
    defence: str
    seed: int
    spec: FamilySpec


class AdversarialExperimentSpec(VariantFile):
    """An ``noisydeq/experiments/adversarial-*.toml`` file (module docstring)."""

    family: dict[str, Any] = Field(default_factory=dict)
    train: dict[str, Any] = Field(default_factory=dict)
    grid: dict[str, Any] = Field(default_factory=dict)
    evaluations: dict[str, dict[str, Any]] = Field(default_factory=dict)

    def check_variant(self, variant: Variant) -> None:
        """Known tables and evaluations in ``variant``, then the resolved grid."""
        if not self.evaluations:
            raise ValueError("evaluations: give at least one attack table")
        over = self.overrides(variant)
        bad = [k for k in over if k not in PARTS]
        if bad:
            raise ValueError(f"[{variant}] {suggest_name('table', bad[0], PARTS)}")
        unknown = [k for k in over.get("evaluations", {}) if k not in self.evaluations]
        if unknown:
            raise ValueError(f"[{variant}.evaluations] '{unknown[0]}' is not an evaluation "
                             f"(have: {', '.join(self.evaluations)})")
        self.resolve(variant)

    def resolve(self, variant: Variant, **overrides: Any) -> Resolved:
        """The validated ``variant`` (base tables + the variant's overrides + ``overrides``,
        itself a {part: dict} mapping)."""
        file = self.overrides(variant)
        over = _deep_merge(file, overrides)
        family = _deep_merge(self.family, over.get("family", {}))
        train = _deep_merge(self.train, over.get("train", {}))
        grid = _build_layers(GridSpec, [("[grid]", self.grid),
                                        (f"[{variant}.grid]", file.get("grid", {})),
                                        ("--set grid", overrides.get("grid", {}))],
                             where=f"[{variant}.grid]")
        evals = {k: _deep_merge(v, over.get("evaluations", {}).get(k, {}))
                 for k, v in self.evaluations.items()}
        res = Resolved(self.name, variant, family, train, grid, evals)
        res.cells = [Cell(m, d, s, family_for(res, m, d, s)) for m in grid.methods
                     for d in grid.defences for s in grid.seeds]
        if not res.cells or not any(c.spec.kinds for c in res.cells):
            raise ValueError(f"[{variant}] the grid trains no model")
        from noisydeq.attacks.grid import AttackRunSpec

        for k, v in self.evaluations.items():
            ev = _build_layers(AttackRunSpec, [
                (f"[evaluations.{k}]", {**v, "family": self.name}),
                (f"[{variant}.evaluations.{k}]", file.get("evaluations", {}).get(k, {})),
                (f"--set evaluations.{k}", overrides.get("evaluations", {}).get(k, {}))],
                where=f"[{variant}.evaluations.{k}]")
            if ev.transfer_from is not None and ev.transfer_from not in grid.defences:
                raise ValueError(
                    f"evaluations.{k}.transfer_from: '{ev.transfer_from}' is not a training "
                    f"defence of the grid (grid.defences: {', '.join(grid.defences)})")
        return res


def family_for(res: Resolved, method: str, defence: str, seed: int) -> FamilySpec:
    """The :class:`FamilySpec` of one grid cell, its train specs validated."""
    from noisydeq.adversarial.hooks import check_spec

    where = f"[{res.variant}] {method}/{defence}/seed {seed}"
    train = dict(res.train)
    adv = dict(train.pop("adversarial", {}) or {})
    if method == "none":
        train["adversarial"] = None
    else:  # the preset's adversary (its ε warm-up too) with the experiment's overrides
        preset = TrainSpec.preset(res.grid.train_preset, "deq").adversarial
        base = preset.model_dump() if preset is not None else {}
        train["adversarial"] = {**base, **adv, "method": method}
    data: dict[str, Any] = {**res.family, "seed": seed, "train_preset": res.grid.train_preset,
                            "kinds": [k for k in res.grid.kinds if k in defence_kinds(defence)]}
    m = DEFENCE_RE.match(defence)
    if m:
        data["train_site"] = "input" if m.group(1) == "x" else "state"
        data["train_snr_db"] = float(m.group(2))
    if defence == "threshold":
        base = TrainSpec.preset(res.grid.train_preset, "deq", **train).solver
        if base is None:
            raise NoisyDEQError(f"{where}: preset '{res.grid.train_preset}' gives the DEQ no "
                                "solver to randomise")
        train["solver"] = base.model_copy(update={"random_threshold": True}).model_dump()
    if defence == "rs":
        train["random_state"] = {}
    data["train"] = train
    spec = build(FamilySpec, data, where=where)
    for kind in spec.kinds:
        tspec = spec.train_spec(kind)
        check_spec(tspec, kind)
    return spec


def load_experiment(path: str | Path) -> AdversarialExperimentSpec:
    from noisydeq.specs.toml import load_toml

    return load_toml(AdversarialExperimentSpec, path)


@dataclass
class ExperimentResult:
    resolved: Resolved
    out: Path
    members: list[Any]
    info: dict[str, dict[str, Any]]  # model_id -> kind, method, defence, seed, seconds, ...
    evaluations: dict[str, Any]
    eval_seconds: dict[str, float]
    seconds: float


#: the experiment directory's record of its models (:class:`GridModels`)
MODELS_FILE = "models.json"
MODELS_FORMAT = 1
#: what the record says of each model: its grid cell and what training said about it (the
#: report's :attr:`ExperimentResult.info`)
INFO_KEYS = ("kind", "depth", "width", "method", "defence", "seed", "train_seconds",
             "epochs", "selected_epoch", "test_accuracy")


def read_models(out: Path) -> dict[str, dict[str, Any]]:
    """Model id → {``entry``, ``weights``, ``info``} recorded in ``out/models.json`` ({}
    without one); a damaged or malformed record is refused in one line naming it."""
    from noisydeq.errors import CorruptArtefact
    from noisydeq.store import read_signed_json

    path = out / MODELS_FILE
    if not path.is_file():
        return {}
    data = read_signed_json(path, "models record")
    models = data.get("models")
    ok = data.get("format") == MODELS_FORMAT and isinstance(models, dict) and all(
        isinstance(r, dict) and isinstance(r.get("entry"), str)
        and isinstance(r.get("weights"), str) and isinstance(r.get("info"), dict)
        and set(r["info"]) == set(INFO_KEYS) for r in models.values())
    if not ok:
        raise CorruptArtefact(path, f"is not a models record of format {MODELS_FORMAT} "
                                    "(remove it to train or load the models again)")
    return models


class GridModels:
    """The models of a grid, trained (or loaded) only when a cell of theirs is computed.

    Each model's family cache entry and the weights digest of the checkpoint it holds
    (:func:`~noisydeq.families.cached_member`: SHA-256 digest and config hash checked) are
    read without training or loading it, beside its initial model. A
    model the experiment directory's record (:data:`MODELS_FILE`) knows under the same
    entry, with these weights or none cached (the cache cleared), stays its initial model
    (architecture, solver and parameter count are all an attack run reads before it
    computes) with the recorded digest and training info: its cells are judged on the
    weights they were computed on (:func:`~noisydeq.attacks.runner.run_attacks`' ``weights``)
    and it is trained or loaded only when one of them is computed (:meth:`materialise`).
    Any other model's family is trained or loaded up front, as before. A read-only cache
    (:func:`noisydeq.runtime.read_only_cache`) must hold every model of the grid, those
    the record serves too: the first it lacks is one line, before anything is written."""

    def __init__(self, res: Resolved, task: Any, *, out: Path, cache_dir: Any = None,
                 quiet: bool = True, log: Any = None) -> None:
        from noisydeq.attacks.members import defended_model
        from noisydeq.families import cached_member, require_members
        from noisydeq.runtime import read_only_cache
        from noisydeq.train_config import spec_dump

        if read_only_cache(cache_dir):  # every model, or one line before anything is
            # written: one the record serves would be trained mid-run were a cell of its
            # computed again (other code)
            require_members([cell.spec for cell in res.cells], task, cache_dir=cache_dir)
        self.res, self.task, self.out = res, task, out
        self.cache_dir, self.quiet, self.log = cache_dir, quiet, log
        self.members: list[Any] = []
        self.info: dict[str, dict[str, Any]] = {}
        #: model id → {entry, weights, info}: what :data:`MODELS_FILE` records
        self.record: dict[str, dict[str, Any]] = {}
        #: model id → the recorded weights digest of a model not trained here (yet)
        self.lazy: dict[str, str] = {}
        self._cell: dict[str, tuple[int, Cell]] = {}  # model id → its grid cell
        self._families: dict[int, Any] = {}
        recorded = read_models(out)
        for i, cell in enumerate(res.cells):
            eager = False
            mine = []
            for depth in cell.spec.depths:
                for kind in cell.spec.kinds:
                    model, tspec, entry, cached = cached_member(cell.spec, task, kind, depth,
                                                                cache_dir=cache_dir)
                    mem = defended_model(model, kind, depth, int(model.width),
                                         int(model.hidden_weight_count()), cell.seed,
                                         spec_dump(tspec))
                    rec = recorded.get(mem.model_id)
                    if rec is not None and rec["entry"] == entry \
                            and cached in (None, rec["weights"]):
                        self.lazy[mem.model_id] = rec["weights"]
                        self.record[mem.model_id] = rec
                    else:
                        eager = True
                        self.record[mem.model_id] = {"entry": entry}
                    self._cell[mem.model_id] = (i, cell)
                    mine.append(mem)
            self.members += mine
            if eager:  # trained or loaded now, every member of its family
                fam = self._family(i, cell)
                for mem in mine:
                    self.lazy.pop(mem.model_id, None)
                    self._take(mem, fam)
        # training's order (depth, then kind) as the members list, their info alike
        for mem in self.members:
            mid = mem.model_id
            if mid in self.lazy:
                self.info[mid] = dict(self.record[mid]["info"])
                self._say(mem, "recorded: not loaded")
        self.info = {m.model_id: self.info[m.model_id] for m in self.members}

    def _family(self, i: int, cell: Cell) -> Any:
        from noisydeq.families import train_family

        if i not in self._families:
            self._families[i] = train_family(cell.spec, self.task, cache_dir=self.cache_dir,
                                             quiet=self.quiet)
        return self._families[i]

    def _take(self, mem: Any, fam: Any) -> None:
        """Put the trained model of ``fam`` into ``mem``; record its weights and info."""
        from noisydeq.store import init_hash

        cell = self._cell[mem.model_id][1]
        m = fam.get(mem.kind, mem.depth)
        mem.model = m.model
        hist = m.result.history
        sel = None
        if hist and "val_robust" in hist[0]:
            sel = int(max(hist, key=lambda r: (r["val_robust"], r["val_clean"],
                                               -r["epoch"]))["epoch"])
        info = {"kind": m.kind, "depth": m.depth, "width": m.width, "method": cell.method,
                "defence": cell.defence, "seed": cell.seed,
                "train_seconds": m.result.seconds, "epochs": len(hist),
                "selected_epoch": sel, "test_accuracy": m.result.test_metric}
        self.info[mem.model_id] = info
        self.record[mem.model_id] = {"entry": self.record[mem.model_id]["entry"],
                                     "weights": init_hash(m.model), "info": info}
        self._say(mem, "cached" if m.cached else m.result.trained_in(0))

    def _say(self, mem: Any, how: str) -> None:
        if self.log is None:
            return
        defence = self._cell[mem.model_id][1].defence
        # training's test accuracy runs the model without the noise it was trained
        # with: the noise defences' attacks judge it with that noise
        bare = ", without its noise" if defence.startswith(("x-", "z-")) else ""
        # over the whole test set: the tables' clean column is over the attacked inputs only
        # (0.756 here and 0.745 there read as two answers to one question)
        self.log(f"{mem.model_id}: clean test accuracy "
                 f"{self.info[mem.model_id]['test_accuracy']:.3f} on the whole test set"
                 f"{bare} ({how})")

    def materialise(self, mem: Any) -> None:
        """Train (or load) the model of ``mem``, a member not trained here yet (its family
        once, its other members left as they are until a cell of theirs is computed)."""
        i, cell = self._cell[mem.model_id]
        self.lazy.pop(mem.model_id, None)
        self._take(mem, self._family(i, cell))

    def save(self) -> None:
        """Write :data:`MODELS_FILE` (atomic, digest embedded)."""
        from noisydeq.store import write_signed_json

        write_signed_json(self.out / MODELS_FILE, {"format": MODELS_FORMAT,
                                                   "models": self.record}, indent=2)


def train_grid(res: Resolved, task: Any, *, out: Path, cache_dir: Any = None,
               quiet: bool = True, log: Any = None) -> GridModels:
    """The grid's models (:class:`GridModels`): the attack members and, per model id, its
    grid cell, training seconds and selected epoch; a model the experiment directory
    records (with the weights cached, or none) is not trained or loaded here."""
    return GridModels(res, task, out=out, cache_dir=cache_dir, quiet=quiet, log=log)


def transfer_sources(spec: Any, members: list[Any], info: dict[str, dict[str, Any]]
                     ) -> dict[str, Any]:
    """Model id → the model its transfer examples are crafted on (``spec.transfer_from``):
    the model of the same kind, depth, method and seed trained with that defence; none for
    the source models themselves, nor for a model whose grid has no such twin."""
    if spec.transfer_from is None:
        return {}
    cell = ("kind", "depth", "method", "seed")
    twins = {tuple(info[m.model_id][k] for k in cell): m for m in members
             if info[m.model_id]["defence"] == spec.transfer_from}
    out = {}
    for m in members:
        meta = info[m.model_id]
        src = twins.get(tuple(meta[k] for k in cell))
        if src is not None and meta["defence"] != spec.transfer_from:
            out[m.model_id] = src
    return out


def run_experiment(res: Resolved, out: str | Path, *, data_dir: str | None = None,
                   cache_dir: Any = None, quiet: bool = True, echo: Any = print,
                   keep_other_code: bool = False) -> ExperimentResult:
    """Train the grid, run every evaluation, write the summary tables and figures; an
    evaluation's cells computed by other noisydeq code are computed again, or served with
    ``keep_other_code`` (:func:`noisydeq.attacks.runner.run_attacks`)."""
    from noisydeq.analysis.adversarial_report import write_report
    from noisydeq.attacks.grid import AttackRunSpec
    from noisydeq.attacks.runner import run_attacks
    from noisydeq.tasks import load_task

    t0 = time.perf_counter()
    out = Path(out)
    fam = res.family
    task = load_task(fam.get("task", "digits"), data_dir=data_dir or fam.get("data_dir"),
                     seed=0)
    if task.notice:
        echo(f"noisydeq: note: {task.notice}")
    from noisydeq.adversarial.objective import check_inputs

    check_inputs(task, f"[{res.variant}] family.task")
    specs = {k: build(AttackRunSpec, {**v, "family": str(out), "task": task.name,
                                      "data_dir": data_dir or fam.get("data_dir")},
                      where=f"evaluations.{k}") for k, v in res.evaluations.items()}
    grid = train_grid(res, task, out=out, cache_dir=cache_dir, quiet=quiet,
                      log=None if quiet else echo)
    members, info = grid.members, grid.info
    results, eval_s = {}, {}
    for name, spec in specs.items():
        t1 = time.perf_counter()
        # the record is written once the attack run's directory is checked and opened,
        # before its first cell (a run stopped in its first evaluation has it: a resume
        # loads no model whose cells are all served), and again after it (models trained
        # or loaded for its cells)
        results[name] = run_attacks(spec, members, task, out / name, progress=not quiet,
                                    echo=echo, sources=transfer_sources(spec, members, info),
                                    keep_other_code=keep_other_code,
                                    weights=dict(grid.lazy), materialise=grid.materialise,
                                    on_open=grid.save)
        eval_s[name] = time.perf_counter() - t1
        grid.save()
    result = ExperimentResult(res, out, members, info, results, eval_s,
                              time.perf_counter() - t0)
    write_report(result, specs)
    return result

