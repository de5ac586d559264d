"""Run an attack grid (:mod:`noisydeq.attacks.grid`) on trained models, resumably.

The run directory has a sweep's layout (:class:`noisydeq.results.RunDir`): ``config.toml``
(the :class:`AttackRunSpec`), ``meta.json``, ``cells/`` (one atomic file per finished
cell), ``results.csv`` / ``results.parquet`` (tidy, :data:`ATTACK_COLUMNS`),
``whitebox.csv`` and ``figures/``. A cell is one (model, SNR level, chip, mode,
estimator, attack point): its adversarial examples are judged by every defence, one row
each. Attacks without a gradient have one cell per point, estimator ``none``: Square
queries the model's own cold forward
(:data:`~noisydeq.attacks.estimators.QUERY_ESTIMATOR`), the noise attacks no model
(runs before this had a Square cell per estimator, each querying that estimator's
forward under its own seeds; those cells are not reused). Re-running the same config
skips finished cells (cells record the code that computed them: those of other code are
computed again, :func:`run_attacks`); every cell draws its noise and attack randomness
from seeds derived from its own key, so a resumed run's table equals an
uninterrupted one. Draws are counter-based (:class:`~noisydeq.noise.NoiseStream`): the
model noise of a sample (a row of the attacked batch, the test-set index on the attacked
split) is a function of (cell seed, layer, draw count of that sample, sample), so EOT's
draws and each PGD step's forward see fresh numbers and no draw depends on the other rows.
Cell files are checked against the rows their key promises (one per defence) like a
sweep's (:meth:`noisydeq.results.RunDir.load_cell`).

A row's ``value`` is the robust accuracy of :mod:`noisydeq.attacks.robust`: a sample counts
when its defence's prediction is correct on the attacked input *and* on the clean input
(each defence against its own clean prediction; a diverged solve or non-finite logits is
wrong). Both are judged under one noise draw per (model, level, chip) — the model noise
and a device's dynamic noise restarted from :meth:`Runner.judge_seed` before the clean and
before each cell's attacked forward, on the same chip — so at ε = 0 (attacked = clean) a
row is the clean accuracy exactly, noisy model or not; the attacker's own draws (EOT, PGD
steps) and the attack's (random starts, corruptions) come from the cell's draw key
(:attr:`Cell.draw_key`: its key without the rule, the key before the rule existed). Cell
and early-state keys carry the rule's name (:data:`noisydeq.attacks.robust.RULE`): cells
counted under the earlier rule (attacked input only) are not reused, and a re-count
attacks with the same draws.

The early-state defence's n is chosen once per (model, level, chip) on the validation
split under the ready-made PGD-10 (the model's own gradient method, ε = ``steps_eps``; a
state's robust accuracy counts the samples right at z_n clean and attacked, both solves
under one draw) and stored as a cell too (its per-state record, :data:`EARLY_COLUMNS`).
Each row also carries the entropy shift of its defence's prediction (regulation paper
Eq. 12-13): ``entropy_p`` = % of inputs whose clean prediction has lower entropy than the
attacked one, ``entropy_dh`` = mean H(clean) − H(attacked). ``bwd_unconverged``: the rows
(input × backward solve) of the attack's IFT backward solves (``exact``; a DEQ trained
with ``ift`` under ``backprop``) that missed their tolerance, after the GMRES fallback
where it ran — 0 where every gradient was converged or no such solve ran, -1 in cells
written before the column (their rows are loaded with it); a run whose cells have any
says so in one warning line; ``bwd_fallback`` the rows of those solves re-solved by GMRES
(the ``fallback`` backward method). ``fwd_unconverged``, ``fwd_residual``,
``fwd_residual_max``, ``fwd_steps`` (and each ``_clean``): how the model's own forward
solve ended at the attacked (clean) inputs when judged
(:func:`~noisydeq.attacks.defences.forward_stats`: fraction of samples that missed the
solver's stop rule, median and largest relative residual ‖f(z) − z‖/‖f(z)‖ of the state
returned — one more evaluation of the map, its noise drawn afresh —, mean f-evaluations;
NaN for a model without a solve). Cells written before these columns load with them NaN and
``bwd_fallback`` -1; the columns are not in any key. ``eot``: the draws of the model's
noise each of the attack's gradients averaged (:func:`noisydeq.specs.attack.draws`:
``--eot`` for PGD, I-FGSM, APGD and AutoAttack standard's APGD parts, at least 20 for
AA-rand, 1 for FAB, 0 for Square and the noise attacks). Cells of ``exact`` with its
default backward method carry ``bwd=fallback`` in their key
(:meth:`EstimatorSpec.cell_tag`): cells computed under the earlier default (Anderson alone)
are not reused.

Per-position tasks (prefix sums, mazes: a class per bit or pixel) run the same grid: the
PGD loss is the mean over positions of the per-position cross-entropy
(:func:`noisydeq.attacks.pgd.sample_loss`), ``value`` counts a sample when every position
is right clean and attacked (:mod:`noisydeq.attacks.robust`), an extra column
``position_value`` (:data:`POSITION_COLUMNS`, only in these runs' tables) the fraction of
positions right on both, and a sample's entropy is the mean over its positions. AutoAttack
and its parts (torchattacks: one class per sample) are refused for them in one line.

Transfer from another model (``sources``, :func:`run_attacks`): a member given a source
model also gets cells of mode ``transfer-source`` at each level, one per gradient attack
point and *source* estimator: the examples are crafted on the source model without noise
(white-box on it, its own estimators; an FFW source by backprop) and judged on the member
under the judging draw, as every cell. The source's id is in the cell's draw key (not in
the rows: whoever passes ``sources`` says which model it is); members without a source get
no such cells, so runs without ``sources`` keep every key. The closer look's check of
gradient masking: a defence whose white-box accuracy lies above what transferred examples
reach is masking its gradients (``noisydeq adversarial``'s ``transfer_from``).

Regression tasks (matrix addition; ``task.kind == "regression"``, metric MSE): PGD and
I-FGSM ascend the per-sample MSE (:func:`noisydeq.attacks.pgd.sample_loss`) within the
ε-ball, ε absolute per input entry (ℓ∞; the ℓ2 radius likewise absolute), with **no box**:
the inputs are real matrices, not pixels in [0, 1], and are not clamped; speckle
(x + x·n) is unclamped too. A row's ``value`` is then the **attacked MSE** (mean over
samples and outputs of (f(x') − y)², under the judging draw; a diverged solve's output
counts as it is) — lower is better, so the white-box table takes the *largest* MSE over
attacks and estimators and the *smallest* over defences, and the figures plot MSE with the
worst (largest) estimator. ``entropy_p`` / ``entropy_dh`` are NaN (no class
distribution). The robust rule (correct clean *and* attacked) does not apply: at ε = 0 the
value is the clean MSE. Refused in one line: AutoAttack and its parts, salt-and-pepper
(sets entries to the ends of a box the inputs do not have) and the ``early`` and
``entropy`` defences (chosen and defined by class predictions); ``final`` and ``ensemble``
apply.

Length (about 700 lines): one idea, an attack run from its grid of cells to its table; the
cells, the early-state defence's per-state record and the white-box table share one run
directory and its checks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from noisydeq import store
from noisydeq.attacks.adjoint import ADJOINT_SOLVERS
from noisydeq.attacks.craft import craft
from noisydeq.attacks.defences import (
    NO_FORWARD_STATS,
    best_early_state,
    defended_solve,
    state_record,
    white_box,
)
from noisydeq.attacks.estimators import QUERY_ESTIMATOR, make_estimator
from noisydeq.attacks.grid import AttackRunSpec, GridPoint, expand
from noisydeq.attacks.hardware import Level, check_device, make_level
from noisydeq.attacks.robust import RULE, robust_correct, robust_position_fraction
from noisydeq.attacks.spec import (
    LIBRARY_ATTACKS,
    AttackSpec,
    DefenceSpec,
    EstimatorSpec,
    draws,
    expand_estimator,
    parse_defence,
    parse_estimator,
)
from noisydeq.attacks.trajectory import record_states
from noisydeq.cluster import Backend
from noisydeq.errors import CorruptArtefact, NoisyDEQError
from noisydeq.noise import derive_seed
from noisydeq.regulation.entropy import prediction_entropy
from noisydeq.regulation.states import entropy_shift
from noisydeq.results import RunDir, other_code_note, other_weights_note, table_to_csv
from noisydeq.solvers.gradients import tally_backward
from noisydeq.specs.base import build

ATTACK_COLUMNS: dict[str, str] = {
    "task": "str", "model_id": "str", "kind": "str", "depth": "int", "width": "int",
    "params": "int", "seed": "int", "train_snr_db": "float",
    "family": "str", "attack": "str", "attack_name": "str", "norm": "str",
    "x_name": "str", "x": "float", "eps": "float", "steps": "int", "eot": "int",
    "estimator": "str", "defence": "str", "early_n": "int",
    "mode": "str", "device": "str", "noise_site": "str", "snr_db": "float", "chip": "int",
    "value": "float", "n_samples": "int", "entropy_p": "float", "entropy_dh": "float",
    "bwd_unconverged": "int", "bwd_fallback": "int",
    "fwd_unconverged_clean": "float", "fwd_unconverged": "float",
    "fwd_residual_clean": "float", "fwd_residual": "float",
    "fwd_residual_max_clean": "float", "fwd_residual_max": "float",
    "fwd_steps_clean": "float", "fwd_steps": "float",
}
#: the forward-solve columns (:func:`~noisydeq.attacks.defences.forward_stats` of the clean
#: and the attacked inputs' judging solves) and ``bwd_fallback``, with the value a cell
#: written before them is loaded with
SOLVE_COLUMNS_FILL: dict[str, float | int] = {
    "bwd_fallback": -1, **{f"fwd_{k}{s}": math.nan for k in NO_FORWARD_STATS
                           for s in ("_clean", "")}}
#: the extra column of a per-position task's table: fraction of positions right on the clean
#: and the attacked input (:func:`noisydeq.attacks.robust.robust_position_fraction`)
POSITION_COLUMNS: dict[str, str] = {"position_value": "float"}
#: columns no two rows of the attack table share
ATTACK_IDENTITY: tuple[str, ...] = (
    "model_id", "snr_db", "chip", "mode", "estimator", "attack", "x_name", "x", "defence",
    "early_n",
)
#: the early-state selection cell: accuracy of each state n on the validation split
EARLY_COLUMNS: dict[str, str] = {"n": "int", "clean": "float", "robust": "float"}
WHITEBOX_COLUMNS: dict[str, str] = {
    "model_id": "str", "kind": "str", "depth": "int", "mode": "str", "snr_db": "float",
    "chip": "int", "eps": "float", "defence": "str", "worst_value": "float",
    "worst_attack": "str", "white_box": "float", "best_defence": "str",
}


class AttackRunDir(RunDir):
    """The run directory of ``noisydeq attack`` (a sweep's layout, another spec/table)."""

    spec_cls = AttackRunSpec
    what = "attack run"
    records_code = True  # a cell of other code is computed again (run_attacks)
    code_kind = "attacks"  # the code its computation reaches (noisydeq.fingerprint)
    growable = ()  # an attack run does not grow: any other spec is refused
    columns = ATTACK_COLUMNS
    identity = ATTACK_IDENTITY

    def __init__(self, path: str | Path, per_position: bool = False) -> None:
        super().__init__(path)
        if per_position:  # a per-position task's table (and cells) carry position_value
            self.columns = {**ATTACK_COLUMNS, **POSITION_COLUMNS}

    def load_cell(self, key: str, expect: Any = None, *, columns: Any = None,
                  identity: Any = None) -> list[dict[str, Any]] | None:
        """A finished cell's rows (:meth:`RunDir.load_cell`); an attack cell written before
        the forward-solve columns and ``bwd_fallback`` (:data:`SOLVE_COLUMNS_FILL`) is
        checked against its own columns and loaded with them NaN and -1 (not recorded), one
        written before ``bwd_unconverged`` also with that set to -1. Attack rows' ``eot`` is
        read through :func:`~noisydeq.specs.attack.draws`: cells written when the column was
        the grid's ``eot`` for every gradient attack (AA-rand then said 1, FAB the grid's
        ``eot``) load with the draws the attack averaged; newer cells are unchanged."""
        try:
            rows = super().load_cell(key, expect, columns=columns, identity=identity)
        except CorruptArtefact as err:
            if columns not in (None, ATTACK_COLUMNS):
                raise
            rows = self._load_legacy(key, expect, identity, err)
        if rows is None or columns not in (None, ATTACK_COLUMNS):
            return rows
        return [{**r, "eot": draws(r["attack_name"], r["eot"])} for r in rows]

    def _load_legacy(self, key: str, expect: Any, identity: Any,
                     err: CorruptArtefact) -> list[dict[str, Any]] | None:
        """The rows of a cell of an earlier schema (:meth:`load_cell`), or ``err``."""
        newer = {k: v for k, v in self.columns.items() if k not in SOLVE_COLUMNS_FILL}
        oldest = {k: v for k, v in newer.items() if k != "bwd_unconverged"}
        for cols, fill in ((newer, SOLVE_COLUMNS_FILL),
                           (oldest, {**SOLVE_COLUMNS_FILL, "bwd_unconverged": -1})):
            try:
                rows = super().load_cell(key, expect, columns=cols, identity=identity)
            except CorruptArtefact:
                continue
            return None if rows is None else [{**r, **fill} for r in rows]
        raise err from None

    @property
    def whitebox_path(self) -> Path:
        return self.path / "whitebox.csv"


class AttackMember(Protocol):
    """A trained model and what the table says about it (``noisydeq.sweep.SweepModel``
    has exactly these fields)."""

    model: nn.Module
    kind: str
    depth: int
    width: int
    params: int
    seed: int
    train_snr_db: float

    @property
    def model_id(self) -> str: ...


@dataclass
class AttackResult:
    rows: list[dict[str, Any]]
    run_dir: AttackRunDir
    whitebox: list[dict[str, Any]]
    figures: list[Path] = field(default_factory=list)
    computed_cells: int = 0
    skipped_cells: int = 0
    #: cells (and early-state selections) on disk that other noisydeq code computed: computed
    #: again, or served with ``keep_other_code`` (:func:`run_attacks`)
    other_code_cells: int = 0
    #: cells (and early-state selections) on disk that record other weights of their model
    #: (a family retrained under the same ids): always computed again (one recording none
    #: counts as a cell of unknown code, :attr:`other_code_cells`)
    other_weights_cells: int = 0


@dataclass
class Cell:
    member: AttackMember
    snr_db: float
    chip: int
    mode: str
    estimator: EstimatorSpec | None  # None: Square or noise (no model gradient)
    point: GridPoint
    #: mode ``transfer-source``: the model the examples are crafted on (module docstring)
    source: AttackMember | None = None

    @property
    def draw_key(self) -> str:
        """What the cell's attack and attacker-noise seeds derive from: its key without the
        robust rule, so a count under another rule attacks with the same draws."""
        est = "none" if self.estimator is None else self.estimator.key()
        mode = self.mode if self.source is None else f"{self.mode}<{self.source.model_id}"
        return (f"cell|{self.member.model_id}|{self.snr_db!r}|{self.chip}|{mode}|{est}|"
                f"{self.point.key}")

    @property
    def key(self) -> str:
        """The cell file's key: the draw key, the robust rule's name (cells counted under
        another rule are not reused) and the estimator's :meth:`EstimatorSpec.cell_tag`
        (``exact`` at its default backward method: ``bwd=fallback|``)."""
        tag = "" if self.estimator is None else self.estimator.cell_tag()
        return self.draw_key.replace("cell|", f"cell|{RULE}|{tag}", 1)


def _estimators(spec: AttackRunSpec, member: AttackMember) -> list[EstimatorSpec]:
    if member.kind != "deq":
        return [EstimatorSpec(name="backprop")]
    names = [e for item in spec.estimators for e in expand_estimator(item)]
    return [parse_estimator(e) for e in dict.fromkeys(names)]


def _defences(spec: AttackRunSpec, member: AttackMember) -> list[DefenceSpec]:
    if member.kind != "deq":
        return [DefenceSpec(name="final")]
    return [parse_defence(d) for d in spec.defences]


def _levels(spec: AttackRunSpec) -> list[tuple[float, int]]:
    out = []
    for s in spec.snr_db:
        chips = spec.chips if math.isfinite(s) and spec.noise_site == "device" else 1
        out += [(s, c) for c in range(chips)]
    return out


#: the mode of cells crafted on another model (module docstring, :func:`run_attacks`)
SOURCE_MODE = "transfer-source"


def plan(spec: AttackRunSpec, members: Sequence[AttackMember],
         sources: Mapping[str, AttackMember] | None = None) -> list[Cell]:
    """Every cell of the run, grouped by (model, level, chip) so each chip is made once;
    a member with a source in ``sources`` (model id → model) gets its transfer cells."""
    points = expand(spec)
    cells: list[Cell] = []
    for m in members:
        src = (sources or {}).get(m.model_id)
        for snr, chip in _levels(spec):
            modes = ["white-box"] + (["transfer"] if spec.transfer and math.isfinite(snr)
                                     else [])
            for mode in modes:
                for p in points:
                    if not p.uses_model_gradient:  # one cell, whatever the estimators
                        if mode == "white-box" or p.queries_model:
                            cells.append(Cell(m, snr, chip, mode, None, p))
                        continue
                    cells += [Cell(m, snr, chip, mode, e, p) for e in _estimators(spec, m)]
            if src is not None:
                for p in points:
                    if p.uses_model_gradient:
                        cells += [Cell(m, snr, chip, SOURCE_MODE, e, p, src)
                                  for e in _estimators(spec, src)]
                    elif p.queries_model:
                        cells.append(Cell(m, snr, chip, SOURCE_MODE, None, p, src))
    return cells


def validate(spec: AttackRunSpec, task: Any, members: Sequence[AttackMember]) -> None:
    """Everything that can be checked before a file is written."""
    if not members:
        raise NoisyDEQError("--family: no models to attack")
    if is_regression(task):
        validate_regression(spec, task)
    elif getattr(task, "kind", "classification") != "classification":
        raise NoisyDEQError(f"attack: task '{task.name}' is of kind '{task.kind}'; the attacks "
                            "are for classification and regression tasks")
    if is_per_position(task):
        library = [p.attack.name for p in expand(spec) if p.attack.name in LIBRARY_ATTACKS]
        if library:
            raise NoisyDEQError(
                f"attack '{library[0]}': AutoAttack and its parts ({', '.join(LIBRARY_ATTACKS)}"
                f") score one class per sample; task '{task.name}' predicts a class per "
                "position: use pgd-eps, pgd-steps, ifgsm, speckle or salt-pepper")
    n_test = len(task.x_test)
    if spec.samples + spec.val_samples > n_test:
        raise NoisyDEQError(
            f"--inputs {spec.samples} + --val-inputs {spec.val_samples} exceed the "
            f"{n_test} test inputs of '{task.name}' (the two splits must be disjoint)"
        )
    lo, hi = float(task.x_test.min()), float(task.x_test.max())
    if not is_regression(task) and (lo < 0 or hi > 1):
        raise NoisyDEQError(f"attack: inputs of '{task.name}' lie in [{lo:g}, {hi:g}], not [0, 1]")
    check_device(spec.device, spec.noise_site, spec.snr_db)
    needs_val = any(parse_defence(d).name == "early" and parse_defence(d).n is None
                    for d in spec.defences)
    if needs_val and spec.val_samples < 1 and any(m.kind == "deq" for m in members):
        raise NoisyDEQError("--val-inputs: the early-state defence chooses n on a validation "
                            "split; give --val-inputs >= 1 or fix n (early:n=3)")
    if any(p.attack.needs_gradient for p in expand(spec)):
        probe_gradients(spec, members, task)
    for m in members:
        if m.kind != "deq":
            continue
        sname = m.model.eval().active_solver().name
        for e in _estimators(spec, m):
            if e.name.startswith("adjoint") and sname not in ADJOINT_SOLVERS:
                raise NoisyDEQError(
                    f"estimator '{e.name}': {m.model_id} solves with '{sname}', which has no "
                    f"explicit inverse-Jacobian estimate (allowed: {', '.join(ADJOINT_SOLVERS)})"
                )


def is_regression(task: Any) -> bool:
    """The task regresses real targets (matrix addition; metric MSE, lower is better)."""
    return getattr(task, "kind", "classification") == "regression"


#: the attacks a regression task refuses (module docstring), and its defences
REGRESSION_REFUSED = (*LIBRARY_ATTACKS, "salt-pepper")
REGRESSION_DEFENCES = ("final", "ensemble")


def validate_regression(spec: AttackRunSpec, task: Any) -> None:
    """What does not apply to a regression task, refused in one line (module docstring)."""
    refused = [p.attack.name for p in expand(spec) if p.attack.name in REGRESSION_REFUSED]
    if refused:
        why = ("sets entries to the ends of an input box the task does not have"
               if refused[0] == "salt-pepper" else "scores a class per sample")
        raise NoisyDEQError(
            f"attack '{refused[0]}' {why}; task '{task.name}' is a regression task (metric "
            "mse): use pgd-eps, pgd-steps, ifgsm or speckle")
    for d in spec.defences:
        name = parse_defence(d).name
        if name not in REGRESSION_DEFENCES:
            raise NoisyDEQError(
                f"defence '{d}' is chosen by class predictions; task '{task.name}' is a "
                f"regression task (metric mse): use {' or '.join(REGRESSION_DEFENCES)}")


def is_per_position(task: Any) -> bool:
    """The task predicts a class per position (prefix sums, mazes)."""
    return bool(getattr(task, "per_position", False))


def probe_gradients(spec: AttackRunSpec, members: Sequence[AttackMember], task: Any) -> None:
    """One forward of two test inputs per model and estimator: a gradient attack on a
    model that gives no input gradient is refused before anything is written."""
    x = task.x_test[:2].to(next(iter(members[0].model.parameters())).device)
    for m in members:
        for e in _estimators(spec, m):
            if e.name.startswith("adjoint"):
                continue  # needs a solver check first; its graph is its autograd function
            with torch.enable_grad():
                out = make_estimator(m.model.eval(), e)(x.clone().requires_grad_(True))
                ok = isinstance(out, torch.Tensor) and out.requires_grad
            if not ok:
                raise NoisyDEQError(
                    f"attack: {m.model_id} gives no gradient with respect to its input under "
                    f"estimator '{e.name}'; use only query/noise attacks (square, speckle, "
                    "salt-pepper) for it"
                )


def in_shape_of(task: Any, model: nn.Module) -> tuple[int, ...]:
    """(C, H, W) image shape of the task's inputs (for torchattacks' Square and FAB)."""
    for proj in (getattr(getattr(model, "cell", None), "proj", None),
                 getattr(model, "proj", None)):
        if proj is not None and hasattr(proj, "in_shape"):
            return tuple(proj.in_shape)
    if task.x_test.ndim > 2:  # stored with its shape (a per-position task)
        return tuple(int(s) for s in task.x_test.shape[1:])
    d = int(task.x_test.shape[1])
    side = int(round(d**0.5))
    return (1, side, side) if side * side == d else (1, 1, d)


def defence_name(d: DefenceSpec) -> str:
    """A row's ``defence``: the name (``early`` keeps its n in ``early_n``), an entropy
    defence its full label (its settings tell rows apart)."""
    return d.label() if d.name == "entropy" else d.name


def early_draw_key(spec: AttackRunSpec, m: AttackMember, snr: float, chip: int) -> str:
    """What the early-state selection's seeds derive from (its key without the rule)."""
    return f"early|{m.model_id}|{snr!r}|{chip}|{spec.steps_eps!r}"


def early_key(spec: AttackRunSpec, m: AttackMember, snr: float, chip: int) -> str:
    """The cell key of the early-state selection of (model, level, chip)."""
    return early_draw_key(spec, m, snr, chip).replace("early|", f"early|{RULE}|", 1)


class EarlyCells(Protocol):
    """Where a :class:`Runner` keeps the early-state selection cells: the run directory,
    or a Ray worker's memory (:mod:`noisydeq.attacks.ray_cells`; the driver writes them)."""

    def load_cell(self, key: str, expect: Any = None, *, columns: Any = None,
                  identity: Any = None) -> list[dict[str, Any]] | None: ...

    def save_cell(self, key: str, rows: Any, layers: Any = ()) -> Any: ...


class Runner:
    """Computes the missing cells of a run (see module docstring)."""

    def __init__(self, spec: AttackRunSpec, task: Any, run_dir: EarlyCells,
                 torch_device: torch.device) -> None:
        self.spec, self.task, self.rd = spec, task, run_dir
        self.dev = torch_device
        n = spec.samples
        self.x = task.x_test[:n].to(torch_device)
        self.y = task.y_test[:n].to(torch_device)
        v = spec.val_samples
        self.xv = task.x_test[len(task.x_test) - v:].to(torch_device) if v else None
        self.yv = task.y_test[len(task.y_test) - v:].to(torch_device) if v else None
        self.calib = task.x_train[:512].to(torch_device)
        self.n_classes = int(task.out_features)
        self.per_position = is_per_position(task)
        self.regression = is_regression(task)
        #: the input box of the attacks: none for a regression task's real inputs
        self.box: tuple[float, float] | None = None if self.regression else (0.0, 1.0)
        self._level: tuple[tuple, Level] | None = None
        self._clean: dict[tuple[str, ...],
                          tuple[dict[str, Tensor], Tensor, dict[str, float]]] = {}

    def level(self, m: AttackMember, snr: float, chip: int) -> Level:
        key = (m.model_id, snr, chip)
        if self._level is None or self._level[0] != key:
            own = getattr(m, "inference_noise", None) if self.spec.train_noise else None
            lvl = make_level(m.model, device=self.spec.device, noise_site=self.spec.noise_site,
                             snr_db=snr, chip=chip, seed=self.spec.seed, calib_x=self.calib,
                             inference_noise=own)
            self._level = (key, lvl)
            self._clean = {}
        return self._level[1]

    def judge_seed(self, m: AttackMember, snr: float, chip: int) -> int:
        """The noise draw every prediction of (model, level, chip) is judged under: the
        clean inputs' and every cell's attacked inputs' (module docstring)."""
        return derive_seed(self.spec.seed, "judge", m.model_id, snr, chip)

    def clean_logits(self, m: AttackMember, snr: float, chip: int, defences: list[DefenceSpec]
                     ) -> tuple[dict[str, Tensor], Tensor, dict[str, float]]:
        """Each defence's logits on the clean inputs, the per-sample "solve diverged" flags
        and the solve's :func:`~noisydeq.attacks.defences.forward_stats`, under the judging
        draw (cached per level and set of defences)."""
        lvl = self.level(m, snr, chip)
        key = tuple(d.label() for d in defences)
        if key not in self._clean:
            lvl.reseed(self.judge_seed(m, snr, chip))
            self._clean[key] = defended_solve(lvl.model, self.x, defences, lvl.noise)
        return self._clean[key]

    def early_n(self, m: AttackMember, snr: float, chip: int) -> int:
        """n of the early-state defence for this model, level and chip (cached as a cell)."""
        key, draws = early_key(self.spec, m, snr, chip), early_draw_key(self.spec, m, snr, chip)
        rows = self.rd.load_cell(key, columns=EARLY_COLUMNS, identity=("n",))
        if not rows:
            lvl = self.level(m, snr, chip)
            lvl.reseed(derive_seed(self.spec.seed, "noise", draws))
            est = make_estimator(lvl.model, EstimatorSpec(name="backprop"), lvl.noise)
            att = build(AttackSpec, {"name": "pgd", "eps": self.spec.steps_eps, "steps": 10,
                                     "norm": self.spec.norm}, where="attack")
            adv = craft(att, est, lvl.model, self.xv, self.yv,
                        seed=derive_seed(self.spec.seed, "attack", draws),
                        in_shape=in_shape_of(self.task, m.model), n_classes=self.n_classes,
                        box=self.box, loss="mse" if self.regression else "ce")
            # clean and attacked solves under one draw: robust = both correct at z_n
            seed = derive_seed(self.spec.seed, "eval", draws)
            with torch.no_grad():
                lvl.reseed(seed)
                clean = record_states(lvl.model, self.xv, lvl.noise)
                lvl.reseed(seed)
                attacked = record_states(lvl.model, adv, lvl.noise)
            rows = state_record(lvl.model, clean, attacked, self.yv)
            self.rd.save_cell(key, rows)
        return best_early_state(rows)

    def expected(self, cell: Cell) -> list[dict[str, Any]]:
        """What a cell's rows must say (one per defence, in order): checked on resume."""
        m, p = cell.member, cell.point
        est = "none" if cell.estimator is None else cell.estimator.label()
        return [{"model_id": m.model_id, "snr_db": cell.snr_db, "chip": cell.chip,
                 "mode": cell.mode, "estimator": est, "attack": p.label, "x_name": p.x_name,
                 "x": p.x, "defence": defence_name(d)}
                for d in _defences(self.spec, m)]

    def compute(self, cell: Cell) -> list[dict[str, Any]]:
        spec, m = self.spec, cell.member
        lvl = self.level(m, cell.snr_db, cell.chip)
        defences = _defences(spec, m)
        chosen = []
        for d in defences:
            if d.name == "early" and d.n is None:
                d = d.model_copy(update={"n": self.early_n(m, cell.snr_db, cell.chip)})
            chosen.append(d)
        key = cell.draw_key
        if cell.source is not None:
            attacker, noise = cell.source.model, None
        elif cell.mode == "transfer":
            attacker, noise = m.model, None
        else:
            lvl.reseed(derive_seed(spec.seed, "noise", key))
            attacker, noise = lvl.model, lvl.noise
        est = make_estimator(attacker, cell.estimator or QUERY_ESTIMATOR, noise)
        with tally_backward() as tally:
            adv = craft(cell.point.attack, est, attacker, self.x, self.y,
                        seed=derive_seed(spec.seed, "attack", key),
                        in_shape=in_shape_of(self.task, m.model), n_classes=self.n_classes,
                        box=self.box, loss="mse" if self.regression else "ce")
        clean, bad_clean, fwd_clean = self.clean_logits(m, cell.snr_db, cell.chip, chosen)
        lvl.reseed(self.judge_seed(m, cell.snr_db, cell.chip))
        logits, bad, fwd = defended_solve(lvl.model, adv, chosen, lvl.noise)
        solves = {"bwd_unconverged": tally.unconverged, "bwd_fallback": tally.fallback,
                  **{f"fwd_{k}_clean": v for k, v in fwd_clean.items()},
                  **{f"fwd_{k}": v for k, v in fwd.items()}}
        rows = []
        for d in chosen:
            out, ref = logits[d.label()], clean[d.label()]
            if self.regression:  # the attacked MSE (module docstring)
                mse = float((out.double() - self.y.double()).square().mean())
                rows.append(self.row(cell, d, mse, math.nan, math.nan, solves))
                continue
            ok = robust_correct(ref, out, self.y, clean_diverged=bad_clean, adv_diverged=bad)
            p, dh = entropy_shift(prediction_entropy(ref), prediction_entropy(out))
            row = self.row(cell, d, float(ok.double().mean()), p, dh, solves)
            if self.per_position:
                row["position_value"] = robust_position_fraction(
                    ref, out, self.y, clean_diverged=bad_clean, adv_diverged=bad)
            rows.append(row)
        return rows

    def row(self, cell: Cell, d: DefenceSpec, value: float, entropy_p: float = math.nan,
            entropy_dh: float = math.nan, solves: dict[str, Any] | None = None
            ) -> dict[str, Any]:
        """One row of the table; ``solves``: its ``bwd_*`` and ``fwd_*`` columns (the
        attack's backward-solve tally, :func:`~noisydeq.attacks.defences.forward_stats` of
        the judging solves; default: no backward solve, no forward stats)."""
        m, p, a = cell.member, cell.point, cell.point.attack
        return {
            "task": self.task.name, "model_id": m.model_id, "kind": m.kind, "depth": m.depth,
            "width": m.width, "params": m.params, "seed": m.seed,
            "train_snr_db": m.train_snr_db, "family": p.family, "attack": p.label,
            "attack_name": a.name, "norm": a.norm, "x_name": p.x_name, "x": p.x,
            "eps": a.eps, "steps": a.steps if a.needs_gradient else 0,
            "eot": a.draws,
            "estimator": "none" if cell.estimator is None else cell.estimator.label(),
            "defence": defence_name(d),
            "early_n": d.n if d.name == "early" and d.n else 0,
            "mode": cell.mode, "device": self.spec.device, "noise_site": self.spec.noise_site,
            "snr_db": cell.snr_db, "chip": cell.chip, "value": value,
            "n_samples": int(self.x.shape[0]), "entropy_p": entropy_p, "entropy_dh": entropy_dh,
            "bwd_unconverged": 0, "bwd_fallback": 0,
            **{f"fwd_{k}{s}": v for k, v in NO_FORWARD_STATS.items() for s in ("_clean", "")},
            **(solves or {}),
        }


def summary_eps(rows: Sequence[dict[str, Any]], steps_eps: float) -> float | None:
    """The ε of the white-box summary: ``steps_eps`` where the ε curves ran it, else the
    point of their grid nearest to it (the larger on a tie) — the summary is of what was
    run, its rows say at which ε; None where no ε curve ran (no summary)."""
    grid = sorted({r["eps"] for r in rows if r["x_name"] == "eps"})
    if not grid:
        return None
    if any(abs(e - steps_eps) < 1e-12 for e in grid):
        return steps_eps
    return min(grid, key=lambda e: (round(abs(e - steps_eps), 12), -e))


def whitebox_rows(rows: Sequence[dict[str, Any]], eps: float,
                  lower_is_better: bool = False) -> list[dict[str, Any]]:
    """Closer-look robustness at strength ``eps``: per (model, mode, level, chip), each
    defence's minimum over gradient/query attacks and estimators, then the best defence
    (``lower_is_better``, a regression task's MSE: the maximum, then the lowest)."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        if r["x_name"] == "eps" and abs(r["eps"] - eps) < 1e-12:
            groups.setdefault((r["model_id"], r["mode"], r["snr_db"], r["chip"]), []).append(r)
    out = []
    for (mid, mode, snr, chip), rs in sorted(groups.items(), key=lambda kv: str(kv[0])):
        table = [(r["defence"], f"{r['attack']} / {r['estimator']}", r["value"]) for r in rs]
        value, best, worst = white_box(table, lower_is_better)
        for d, w in worst.items():
            mine = [t for t in table if t[0] == d]
            which = (max(mine, key=lambda t: math.inf if math.isnan(t[2]) else t[2])
                     if lower_is_better else min(mine, key=lambda t: t[2]))[1]
            out.append({"model_id": mid, "kind": rs[0]["kind"], "depth": rs[0]["depth"],
                        "mode": mode, "snr_db": snr, "chip": chip, "eps": eps, "defence": d,
                        "worst_value": w, "worst_attack": which, "white_box": value,
                        "best_defence": best})
    return out


#: computes missing cells elsewhere (a Ray cluster), writing each into ``runner.rd`` and
#: calling ``saved(key, rows)``: (runner, members, todo, saved) -> cells written
RemoteCells = Callable[["Runner", Sequence[AttackMember], Sequence[Cell],
                        Callable[[str, list[dict[str, Any]]], None]], int]


def run_attacks(
    spec: AttackRunSpec, members: Sequence[AttackMember], task: Any, out: str | Path, *,
    progress: bool = True, plots: bool = True, echo: Callable[[str], None] = print,
    backend: Backend | None = None, remote: RemoteCells | None = None,
    sources: Mapping[str, AttackMember] | None = None, keep_other_code: bool = False,
    weights: Mapping[str, str] | None = None,
    materialise: Callable[[AttackMember], None] | None = None,
    on_open: Callable[[], None] | None = None,
) -> AttackResult:
    """Run (or resume) the grid of ``spec`` on ``members`` into ``out`` (module docstring).

    ``backend``: :class:`noisydeq.cluster.Backend` (default: this process); with Ray its
    cluster is joined before anything is written and ``remote``
    (:func:`noisydeq.attacks.ray_cells.run_on_ray`) computes the missing cells there, one
    Ray task per (model, level, chip) group, while this process writes what they return —
    the same table as a local run with one torch thread. The run directory is locked while
    the grid runs (a second run on ``out`` waits). ``sources``: model id of a member → the
    model its ``transfer-source`` examples are crafted on (module docstring; this process
    only).

    A cell records the code that computed it (:func:`~noisydeq.fingerprint.code_fingerprint`):
    on resume, the cells (and early-state selections) computed by other noisydeq code, or
    written before cells recorded their code, are computed again — like a sweep's, whose
    keys hold the code — and one ``echo`` line says how many; ``keep_other_code`` serves
    them instead, and the line says the table mixes two codes' results.

    ``weights`` (with ``materialise``): model id → the weights digest
    (:func:`~noisydeq.store.init_hash`) of a member whose ``model`` is not yet its trained
    one but its initial model — same architecture, solver and parameter count, all that
    validation, planning and the run's lines read. Its cells are judged on that digest, so a
    resume whose cells are all served trains and loads no model; ``materialise(member)``
    puts the trained model into ``member.model`` (training or loading it) for the members
    (and transfer sources) of the cells to compute only. Should the trained model's weights
    differ from the digest (a model trained again since), its cells are judged again on
    the weights it has.

    ``on_open()`` runs once ``out`` is checked and opened (locked, its config and meta data
    written), before any cell is computed: what a caller records beside the run (an
    adversarial experiment's ``models.json``) is then there when the run stops part-way."""
    from noisydeq.cluster import session
    from noisydeq.runtime import resolve_torch_device

    sources = dict(sources or {})
    validate(spec, task, [*members, *sources.values()])
    unknown = sorted(set(sources) - {m.model_id for m in members})
    if unknown:
        raise NoisyDEQError(f"run_attacks: a transfer source is given for {unknown[0]}, "
                            "which is not a model of the run")
    cells = plan(spec, members, sources)
    dev = resolve_torch_device(spec.torch_device)
    backend = backend or Backend()
    if backend.ray and remote is None:
        raise NoisyDEQError("run_attacks: --backend ray needs the Ray cell runner "
                            "(noisydeq.attacks.ray_cells.run_on_ray)")
    if backend.ray and sources:
        raise NoisyDEQError("run_attacks: transfer from source models runs in this process "
                            "only, not on Ray")
    with session(backend), AttackRunDir(out, is_per_position(task)) as rd:
        rd.keep_other_code = keep_other_code
        rd.open(spec, {"models": [m.model_id for m in members], "cells": len(cells)})
        if on_open is not None:
            on_open()
        result = _run_open(spec, [*members, *sources.values()], task, rd, cells, dev,
                           progress, plots, remote if backend.ray else None, echo,
                           Lazy(dict(weights or {}), materialise) if materialise else None)
    warning = unconverged_warning(result.rows)
    if warning:
        echo(warning)
    for line in forward_convergence_lines(result.rows, [*members, *sources.values()],
                                          table=str(result.run_dir.csv_path)):
        echo(line)
    return result


#: where :func:`forward_convergence_lines` sends the reader for the per-cell numbers
FORWARD_COLUMNS = ("fwd_unconverged, fwd_residual, fwd_residual_max, fwd_steps (attacked; "
                   "_clean: clean) in {table}")


def forward_convergence_lines(rows: Sequence[dict[str, Any]],
                              members: Sequence[AttackMember] = (), limit: int = 5,
                              table: str = "results.csv") -> list[str]:
    """The run's convergence summary (:func:`noisydeq.convergence.report_lines`): one line
    per model whose judging forward solves, at the clean or the attacked inputs, left samples
    short of the solver's stop rule — from the ``fwd_*`` columns (each cell's attacked
    solve once, each (model, level, chip)'s clean solve once), so a resumed run says the same.
    Diverged samples are not counted apart in the table: a non-finite residual is named.
    ``table``: the run's table, as the lines name it."""
    from noisydeq.convergence import Tally, report_lines, stop_rule

    rules = {m.model_id: stop_rule(m.model) for m in members}
    tallies: dict[str, Tally] = {}
    seen: set[tuple] = set()
    for r in rows:
        mid = r["model_id"]
        level = f"SNR {r['snr_db']:g} dB" + (f" chip {r['chip']}" if r["chip"] else "")
        attacked = tuple(r[c] for c in ATTACK_IDENTITY if c not in ("defence", "early_n"))
        for key, sfx, label in (((mid, r["snr_db"], r["chip"]), "_clean", f"clean inputs, {level}"),
                                (attacked, "", f"{r['attack']} {r['x_name']} {r['x']:g}, "
                                               f"{level}")):
            if key in seen:
                continue
            seen.add(key)
            t = tallies.setdefault(mid, Tally(mid, rules.get(mid, ""), unit="solves"))
            t.add(r["n_samples"], float(r[f"fwd_unconverged{sfx}"]), None,
                  residual=float(r[f"fwd_residual{sfx}"]),
                  residual_max=float(r[f"fwd_residual_max{sfx}"]), label=label)
    return report_lines(tallies.values(), FORWARD_COLUMNS.format(table=table), limit)


def unconverged_warning(rows: Sequence[dict[str, Any]]) -> str:
    """One line when some cells' attacks used backward solves that missed their tolerance
    (``bwd_unconverged`` > 0), else ''."""
    cells: dict[tuple, int] = {}
    for r in rows:  # one count per cell, repeated on each defence's row
        if r["bwd_unconverged"] > 0:
            cells[tuple(r[c] for c in ATTACK_IDENTITY if c not in ("defence", "early_n"))] = \
                r["bwd_unconverged"]
    if not cells:
        return ""
    return (f"warning: {len(cells)} cell(s) attacked with IFT backward solves that missed "
            f"their tolerance ({sum(cells.values())} input-solves in all, after any GMRES "
            "fallback): their gradients are not exact (column bwd_unconverged)")


def _noise_text(spec: AttackRunSpec) -> str | None:
    """Where the run's SNR levels apply, for the figures' titles: ``device rram`` or
    ``signal noise``; None for a run that adds no noise at any level (the ideal device, or
    only SNR ∞: each figure's title then says "no noise" once)."""
    if not any(math.isfinite(s) for s in spec.snr_db):
        return None
    if spec.noise_site == "device":
        return None if spec.device == "ideal" else f"device {spec.device}"
    return f"{spec.noise_site} noise"


@dataclass
class Lazy:
    """Members not yet trained (:func:`run_attacks`' ``weights`` and ``materialise``):
    model id → the weights digest their cells are judged on, removed once materialised."""

    digests: dict[str, str]
    materialise: Callable[[AttackMember], None]

    def needed(self, todo: Sequence[Cell]) -> list[AttackMember]:
        """The lazy members (and transfer sources) of the cells ``todo``, once each."""
        out = {m.model_id: m for c in todo for m in (c.member, c.source)
               if m is not None and m.model_id in self.digests}
        return list(out.values())


def _prepare(m: AttackMember, dev: torch.device) -> None:
    m.model.to(dev).eval()
    for p in m.model.parameters():
        p.requires_grad_(False)


def _judge(rd: AttackRunDir, runner: Runner, cells: Sequence[Cell],
           found: dict[str, list[dict[str, Any]]], todo: list[Cell]) -> None:
    """Serve ``cells`` from the run directory into ``found``, the others into ``todo``."""
    for cell in cells:
        got = rd.load_cell(cell.key, runner.expected(cell))
        if got is None:
            todo.append(cell)
        else:
            found[cell.key] = got


def _materialise(spec: AttackRunSpec, lazy: Lazy, rd: AttackRunDir, runner: Runner,
                 cells: Sequence[Cell], found: dict[str, list[dict[str, Any]]],
                 todo: list[Cell], dev: torch.device) -> None:
    """Train (or load) the lazy members the cells ``todo`` need; a member whose trained
    weights are not the digest its cells were judged on has them judged again."""
    from noisydeq.store import init_hash

    while need := lazy.needed(todo):
        changed = set()
        for m in need:
            lazy.materialise(m)
            _prepare(m, dev)
            if init_hash(m.model) != lazy.digests.pop(m.model_id):
                changed.add(m.model_id)
        if not changed:
            continue
        rd.weights.update(_weights(spec, cells, lazy.digests))
        again = [c for c in cells if c.key in found and (
            c.member.model_id in changed
            or (c.source is not None and c.source.model_id in changed))]
        for c in again:
            del found[c.key]
        _judge(rd, runner, again, found, todo)


def _run_open(spec: AttackRunSpec, members: Sequence[AttackMember], task: Any,
              rd: AttackRunDir, cells: Sequence[Cell], dev: torch.device, progress: bool,
              plots: bool, remote: RemoteCells | None,
              echo: Callable[[str], None] = print, lazy: Lazy | None = None
              ) -> AttackResult:
    """The body of :func:`run_attacks` once its run directory is open and locked."""
    for m in members:
        _prepare(m, dev)
    runner = Runner(spec, task, rd, dev)
    # recorded in each cell, checked on resume
    rd.weights.update(_weights(spec, cells, lazy.digests if lazy else None))
    found: dict[str, list[dict[str, Any]]] = {}
    todo: list[Cell] = []
    _judge(rd, runner, cells, found, todo)  # what the run holds, before anything is computed
    if lazy is not None:
        _materialise(spec, lazy, rd, runner, cells, found, todo, dev)
        order = {c.key: i for i, c in enumerate(cells)}
        todo.sort(key=lambda c: order[c.key])
    early = _early_keys(spec, cells)
    for key in _early_keys(spec, todo):  # noted in rd.other_code when other code chose them
        rd.load_cell(key, columns=EARLY_COLUMNS, identity=("n",))
    what = "cells and early-state selections" if early else "cells"
    for note in (other_weights_note(rd.other_weights, len(cells) + len(early), rd.path,
                                    what=what, flag="--keep-other-code"),
                 other_code_note(rd.other_code, len(cells) + len(early), rd.path, what=what,
                                 kept=rd.keep_other_code, flag="--keep-other-code",
                                 recorded="their code and weights")):
        if note:
            echo(note)
    computed, skipped = 0, len(found)
    from noisydeq.progress import progress as progress_bar

    # a bar on a terminal, plain lines in a log (no carriage returns), like the sweep's
    bar = progress_bar(total=len(cells), desc="attack", unit="cells", disable=not progress)
    try:
        if skipped:
            bar.update(skipped)
        if remote is None:
            for cell in todo:
                bar.set_postfix_str(f"{cell.member.kind} d{cell.member.depth} "
                                    f"{cell.point.label} {cell.point.x:g}", refresh=False)
                found[cell.key] = runner.compute(cell)
                rd.save_cell(cell.key, found[cell.key])
                computed += 1
                bar.update(1)
        elif todo:

            def saved(key: str, rows: list[dict[str, Any]]) -> None:
                found[key] = rows
                bar.update(1)

            computed += remote(runner, members, todo, saved)
    finally:
        bar.close()
    rows = [r for cell in cells for r in found[cell.key]]
    rd.write_table(rows)
    lower = is_regression(task)
    at = summary_eps(rows, spec.steps_eps)
    wb = [] if at is None else whitebox_rows(rows, at, lower)
    store.atomic_write_text(rd.whitebox_path, table_to_csv(wb, WHITEBOX_COLUMNS))
    figures: list[Path] = []
    if plots:
        from noisydeq.figure_cache import cached_figures
        from noisydeq.runtime import cache_root

        noise = _noise_text(spec)
        title = f"{task.name}: {Path(spec.family).name}" + (f" · {noise}" if noise else "")
        own = bool(spec.train_noise and any(
            m.inference_noise is not None and m.inference_noise.active for m in members))
        columns = ["mse" if lower else "value"] + (
            ["position_value"] if is_per_position(task) else [])

        def draw() -> list[Path]:
            from noisydeq.attacks.plots import plot_run  # matplotlib: only when drawing

            return [p for column in columns
                    for p in plot_run(rows, rd.figures, title=title, column=column,
                                      own_noise=own)]

        # the same rows, title, columns and noise (and code): the figures of the cache
        inputs = {"figures": "attack", "rows": rows, "title": title, "columns": columns,
                  "own_noise": own}
        figures = cached_figures(inputs, rd.figures, draw, cache_root())
    rd.seal(figures, extra=[rd.whitebox_path])
    return AttackResult(rows, rd, wb, figures, computed, skipped, len(rd.other_code),
                        len(rd.other_weights))


def _weights(spec: AttackRunSpec, cells: Sequence[Cell],
             known: Mapping[str, str] | None = None) -> dict[str, str]:
    """Cell key → the weights digest (:func:`noisydeq.store.init_hash`, as the sweep's
    cell keys hold it) of what the cell is computed on: its model's, and a
    ``transfer-source`` cell's source model's too; the early-state selection of a model,
    level and chip: that model's. ``known``: model id → the digest of a model not yet
    trained (:class:`Lazy`)."""
    from noisydeq.store import init_hash

    digests: dict[int, str] = {}

    def of(m: AttackMember) -> str:
        if known and m.model_id in known:
            return known[m.model_id]
        if id(m.model) not in digests:
            digests[id(m.model)] = init_hash(m.model)
        return digests[id(m.model)]

    out: dict[str, str] = {}
    for c in cells:
        out[c.key] = of(c.member) + ("" if c.source is None else f"<{of(c.source)}")
        out[early_key(spec, c.member, c.snr_db, c.chip)] = of(c.member)
    return out


def _early_keys(spec: AttackRunSpec, cells: Sequence[Cell]) -> list[str]:
    """The keys of the early-state selections the run's ``cells`` use (one per model, level
    and chip whose defences choose their n)."""
    keys = {early_key(spec, c.member, c.snr_db, c.chip): None for c in cells
            if any(d.name == "early" and d.n is None for d in _defences(spec, c.member))}
    return list(keys)
