"""One robust-accuracy rule (noisydeq.attacks.robust): a sample counts only when it is right
clean *and* attacked — in the attack grid, the early-state choice and the adversarial
checkpoint selection. The models here are wrong exactly at some clean inputs and right
everywhere around them, so an attack (or a corruption) moves those inputs into their
class: the earlier rule (attacked input only) counted them, the rule does not."""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from noisydeq.attacks.craft import craft
from noisydeq.attacks.estimators import make_estimator
from noisydeq.attacks.grid import AttackRunSpec
from noisydeq.attacks.ray_cells import MemoryCells
from noisydeq.attacks.robust import RULE, correct, robust_correct
from noisydeq.attacks.runner import Runner, _defences, plan
from noisydeq.attacks.spec import EstimatorSpec
from noisydeq.noise import derive_seed
from noisydeq.specs.base import build
from tests.attacks.helpers import small_deq


class Needle(nn.Module):
    """Two classes: class 1 (wrong: every label is 0) wins only within ℓ2 radius ``r`` of a
    needle centre; everywhere else class 0. Smooth, so PGD has a gradient — towards the
    needle (ascent on the loss of class 0), which its sign steps overshoot."""

    kind = "ffw"

    def __init__(self, centres: torch.Tensor, r: float = 0.005) -> None:
        super().__init__()
        self.register_buffer("centres", centres)
        self.r = r
        self.unused = nn.Parameter(torch.zeros(1, dtype=centres.dtype))

    def forward(self, x: torch.Tensor, noise=None) -> torch.Tensor:
        d2 = ((x[:, None, :] - self.centres[None]) ** 2).sum(-1).min(1).values
        g = 1.0 - d2 / self.r**2
        return torch.stack([torch.zeros_like(g), g], dim=1)


class Threshold(nn.Module):
    """Class 1 (wrong: every label is 0) when the mean pixel exceeds 0.65, else class 0."""

    kind = "ffw"

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(10.0, dtype=torch.float64))

    def forward(self, x: torch.Tensor, noise=None) -> torch.Tensor:
        g = self.scale * (x.mean(1) - 0.65)
        return torch.stack([torch.zeros_like(g), g], dim=1)


@dataclass
class Member:
    model: nn.Module
    kind: str = "ffw"
    depth: int = 1
    width: int = 4
    params: int = 1
    seed: int = 0
    train_snr_db: float = math.inf
    model_id: str = "m"


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    """Four inputs in [0, 1]^4, all label 0, at least ℓ∞ 0.2 apart."""
    x = torch.tensor([[0.2] * 4, [0.5] * 4, [0.7] * 4, [0.95] * 4], dtype=torch.float64)
    return x, torch.zeros(4, dtype=torch.long)


def _task(x: torch.Tensor, y: torch.Tensor) -> SimpleNamespace:
    return SimpleNamespace(name="toy", kind="classification", out_features=2, x_test=x,
                           y_test=y, x_train=x)


def test_correct_and_robust_correct() -> None:
    y = torch.tensor([0, 1, 0, 1])
    clean = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [math.nan, 1.0]])
    adv = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert correct(clean, y).tolist() == [True, True, False, False]  # NaN logits: wrong
    diverged = torch.tensor([False, True, False, False])
    assert correct(clean, y, diverged).tolist() == [True, False, False, False]
    # sample 2: wrong clean, right attacked — not robust
    assert robust_correct(clean, adv, y).tolist() == [True, False, False, False]
    assert correct(adv, y).tolist() == [True, False, True, True]  # 3: NaN clean, right attacked


def test_attack_grid_counts_only_samples_right_clean() -> None:
    """The needle model is wrong clean on inputs 0 and 1 and right on 2 and 3; PGD and
    speckle move inputs 0 and 1 off their needles, into class 0. The grid's rows are the
    clean accuracy 0.5 at every strength; the attacked inputs alone are all right."""
    x, y = _inputs()
    model = Needle(x[:2]).eval()
    spec = build(AttackRunSpec, {"family": "toy", "attacks": ["pgd-eps", "speckle"],
                                 "eps": [0.0, 0.1], "pgd_steps": [10], "sigma": [0.0, 1.0],
                                 "samples": 4, "val_samples": 0, "estimators": ["exact"]},
                 where="test")
    member = Member(model)
    runner = Runner(spec, _task(x, y), MemoryCells({}), torch.device("cpu"))
    cells = plan(spec, [member])
    assert len(cells) == 4 and all(RULE in c.key for c in cells)
    for cell in cells:
        (row,) = runner.compute(cell)
        assert row["value"] == 0.5, (cell.point.label, cell.point.x)
        if cell.point.x == 0:
            continue
        # the earlier rule (attacked input only) would have counted all four
        est = (None if cell.estimator is None
               else make_estimator(model, EstimatorSpec(name="backprop")))
        adv = craft(cell.point.attack, est, model, x, y,
                    seed=derive_seed(spec.seed, "attack", cell.draw_key), in_shape=(1, 1, 4),
                    n_classes=2)
        with torch.no_grad():
            assert correct(model(adv), y).all(), cell.point.label
            assert not correct(model(x), y)[:2].any()


def test_eps_zero_is_the_clean_accuracy_under_model_noise() -> None:
    """A DEQ with its state noise at 0 dB: clean and attacked predictions are judged under
    one draw per level, so ε = 0 (and σ = 0) give the clean accuracy exactly, and no row
    exceeds it; another draw gives another clean accuracy (the noise matters)."""
    torch.manual_seed(0)
    model = small_deq(width=12, in_features=16, classes=3)
    x = torch.rand(60, 16, dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[::4] = (y[::4] + 1) % 3  # a quarter wrong clean, noise or not
    spec = build(AttackRunSpec, {"family": "toy", "attacks": ["pgd-eps", "speckle"],
                                 "eps": [0.0, 0.2], "pgd_steps": [3], "sigma": [0.0, 0.5],
                                 "samples": 60, "val_samples": 0, "estimators": ["exact"],
                                 "defences": ["final", "ensemble"],
                                 "noise_site": "state", "snr_db": [0.0]}, where="test")
    member = Member(model, kind="deq", width=12)
    task = SimpleNamespace(name="toy", kind="classification", out_features=3, x_test=x,
                           y_test=y, x_train=x)
    runner = Runner(spec, task, MemoryCells({}), torch.device("cpu"))
    defences = _defences(spec, member)
    clean, bad, fwd = runner.clean_logits(member, 0.0, 0, defences)
    acc = {k: float(correct(v, y, bad).double().mean()) for k, v in clean.items()}
    assert 0.3 < acc["final"] < 0.75  # wrong quarter + noise-flipped
    lvl = runner.level(member, 0.0, 0)
    lvl.reseed(12345)
    other = float(correct(model(x, lvl.noise), y).double().mean())
    assert other != acc["final"]
    for cell in plan(spec, [member]):
        for row in runner.compute(cell):
            assert row["value"] <= acc[row["defence"]] + 1e-12
            assert row["fwd_residual_clean"] == fwd["residual"]
            if row["x"] == 0:
                assert row["value"] == acc[row["defence"]], row
                # the same solve, draw for draw: its residual too (measured after the
                # predictions, with a fresh draw, not moving any)
                assert all(row[f"fwd_{k}"] == row[f"fwd_{k}_clean"] for k in fwd), row


def test_selection_keeps_the_epoch_robust_under_the_rule() -> None:
    """Epoch 1's needle model is wrong clean on inputs 0-2, right on 3 and on every
    attacked input; epoch 2's threshold model is right clean and attacked on inputs 0-1
    (mean pixel ≤ 0.6 within ε = 0.1) and wrong on 2-3. The earlier rule (attacked input
    only: 1.0 vs 0.5) would keep epoch 1; the rule (0.25 vs 0.5) keeps epoch 2."""
    from noisydeq.adversarial.selection import Selector
    from noisydeq.attacks.estimators import FinalState
    from noisydeq.attacks.pgd import pgd
    from noisydeq.specs.noise import NoiseSpec
    from noisydeq.specs.optimizer import AdversarialSpec

    x, y = _inputs()
    adv = build(AdversarialSpec, {"eps": 0.1, "step": 0.025, "val_steps": 10}, where="test")
    sel = Selector(adv, x, y, NoiseSpec(), seed=3)
    needle = Needle(x[:3])
    rec1 = sel.update(needle, 0, {})
    rec2 = sel.update(Threshold(), 1, {})
    assert (rec1["val_clean"], rec1["val_robust"]) == (0.25, 0.25)
    assert (rec2["val_clean"], rec2["val_robust"]) == (0.5, 0.5)
    assert sel.best_epoch == 2
    # the earlier rule: the needle model's attacked inputs alone, same draws as the selector
    rows = torch.arange(len(x))
    x_adv = pgd(FinalState(needle, None, warm=False), x, y, eps=adv.eps, steps=adv.val_steps,
                alpha=adv.step, generator=sel._stream(rows, "start"))
    with torch.no_grad():
        old_needle = float(correct(needle(x_adv), y).double().mean())
    assert old_needle == 1.0 > rec2["val_robust"]


def test_adversarial_configs_name_the_rule_and_others_do_not() -> None:
    """Models selected under the earlier rule are not reused: an adversarial run with a
    validation split carries the rule in its config (so its cache key changed); a standard
    run's config, and an adversarial one without selection, are as before."""
    from noisydeq.config import AdversarialSpec, ModelSpec, TrainSpec
    from noisydeq.models import build_model
    from noisydeq.store import config_hash
    from noisydeq.tasks import load_task
    from noisydeq.train_config import SELECTION_RULE, run_config

    digits = load_task("digits", seed=0)
    torch.manual_seed(0)
    model = build_model(ModelSpec(kind="ffw", in_features=64, out_features=10, width=8,
                                  depth=1, matched=False))
    cpu = torch.device("cpu")
    plain = run_config(model, digits, TrainSpec(), cpu)
    adv = TrainSpec(adversarial=AdversarialSpec(eps=0.1))
    selected = run_config(model, digits, adv, cpu)
    unselected = run_config(model, digits, TrainSpec(
        adversarial=AdversarialSpec(eps=0.1, val_fraction=0.0)), cpu)
    assert SELECTION_RULE == RULE
    assert "selection" not in plain and "selection" not in unselected
    assert selected["selection"] == RULE
    before = {k: v for k, v in selected.items() if k != "selection"}  # the earlier key
    assert config_hash(before) != config_hash(selected)


@pytest.mark.parametrize("rule_in_key", ["cell", "early"])
def test_attack_cache_keys_carry_the_rule(rule_in_key: str) -> None:
    from noisydeq.attacks.runner import early_draw_key, early_key

    x, y = _inputs()
    spec = build(AttackRunSpec, {"family": "toy", "attacks": ["speckle"], "sigma": [0.5],
                                 "samples": 4, "val_samples": 0}, where="test")
    member = Member(Needle(x[:2]))
    cell = plan(spec, [member])[0]
    key = cell.key if rule_in_key == "cell" else early_key(spec, member, math.inf, 0)
    draws = cell.draw_key if rule_in_key == "cell" else early_draw_key(spec, member, math.inf, 0)
    assert key.startswith(f"{rule_in_key}|{RULE}|")
    # the draws come from the key without the rule (the key before it): a re-count under
    # the rule attacks with the earlier draws
    assert RULE not in draws and key == draws.replace("|", f"|{RULE}|", 1)
