"""Attacks on per-position tasks (issue 22: prefix sums, mazes — a class per bit or pixel):
the attack loss, the all-positions and per-position robust counts, PGD against a closed form
on linear per-position logits, and ``noisydeq attack`` end to end on a tiny prefix-sum study."""

from __future__ import annotations

import csv
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from noisydeq.attacks.pgd import loss_and_grad, pgd, sample_loss, sample_wrong
from noisydeq.attacks.robust import (
    correct,
    position_correct,
    robust_correct,
    robust_position_fraction,
)
from noisydeq.attacks.runner import ATTACK_COLUMNS, AttackRunDir, validate
from noisydeq.config import build
from noisydeq.errors import NoisyDEQError
from noisydeq.regulation.entropy import prediction_entropy
from noisydeq.specs.attack_run import AttackRunSpec
from noisydeq.studies import StudySpec, run_study
from noisydeq.tasks.base import sample_correct
from tests.attacks.helpers import attack_on_device_and_under_noise, frozen, ray_table_equals_local
from tests.cli_helpers import one_line_error
from tests.cli_helpers import run_cli as run

SHAPES = {"prefix": (1, 12), "maze": (3, 5, 5)}  # (C, L) bits, (C, H, W) walls/start/goal


def _linear_per_position(shape):
    """Logits (B, 2, *positions) linear in the input at the same position: a 1×1 conv."""
    torch.manual_seed(4)
    conv = nn.Conv1d(shape[0], 2, 1) if len(shape) == 2 else nn.Conv2d(shape[0], 2, 1)
    return frozen(conv.double())


def _margins(model, x, y):
    """(B, P) margin of every position: logit of its label − logit of the other class."""
    logits = model(x)
    own = logits.gather(1, y.unsqueeze(1)).squeeze(1)
    other = logits.gather(1, (1 - y).unsqueeze(1)).squeeze(1)
    return (own - other).reshape(len(x), -1)


@pytest.mark.parametrize("where", sorted(SHAPES))
def test_pgd_linf_reaches_the_closed_form_worst_case_of_every_position(where):
    # with logits linear in the input at the same position, each position's CE is monotone in
    # its own margin m_p = (w_y − w_other)·x_p + b_y − b_other, and the positions share no
    # input coordinate: the summed loss is maximised over the ℓ∞ ball by lowering every
    # margin to m_p − ε‖w_{y_p} − w_{other}‖₁ (the per-sample test of test_pgd.py, per position)
    shape = SHAPES[where]
    model = _linear_per_position(shape)
    g = torch.Generator().manual_seed(2)
    x = 0.3 + 0.4 * torch.rand(6, *shape, dtype=torch.float64, generator=g)
    y = torch.randint(0, 2, (6, *shape[1:]), generator=g)
    eps = 0.1
    adv = pgd(model, x, y, eps=eps, steps=20, norm="linf", box=None,
              generator=torch.Generator().manual_seed(0))
    w = model.weight.reshape(2, shape[0])  # (class, channel)
    dual = (w[1] - w[0]).abs().sum()  # the same for both labels with two classes
    expected = _margins(model, x, y) - eps * dual
    assert torch.allclose(_margins(model, adv, y), expected, atol=1e-4, rtol=0)
    assert float((adv - x).abs().max()) <= eps + 1e-12
    # the all-positions accuracy can only fall; with the [0, 1] box the inputs stay in it
    boxed = pgd(model, x, y, eps=0.5, steps=10, generator=torch.Generator().manual_seed(0))
    assert float(boxed.min()) >= 0.0 and float(boxed.max()) <= 1.0
    with torch.no_grad():
        assert int(correct(model(boxed), y).sum()) <= int(correct(model(x), y).sum())


@pytest.mark.parametrize("where", sorted(SHAPES))
def test_eps_zero_and_restarts_on_a_per_position_model(where):
    shape = SHAPES[where]
    model = _linear_per_position(shape)
    g = torch.Generator().manual_seed(5)
    x = torch.rand(8, *shape, dtype=torch.float64, generator=g)
    y = torch.randint(0, 2, (8, *shape[1:]), generator=g)
    adv = pgd(model, x, y, eps=0.0, steps=5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(adv, x)
    with torch.no_grad():
        assert torch.equal(correct(model(adv), y), correct(model(x), y))
    # several restarts keep, per sample, a fooling iterate (some position wrong) if one exists
    one = pgd(model, x, y, eps=0.05, steps=3, generator=torch.Generator().manual_seed(0))
    many = pgd(model, x, y, eps=0.05, steps=3, restarts=3,
               generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert int(sample_wrong(model(many), y).sum()) >= int(sample_wrong(model(one), y).sum())


def test_the_per_position_loss_counts_and_entropy_equal_direct_computations():
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(5, 3, 4, 6, dtype=torch.float64, generator=g)  # (B, K, H, W)
    y = torch.randint(0, 3, (5, 4, 6), generator=g)
    # loss: mean over the positions of −log softmax at the label
    logp = torch.log_softmax(logits, dim=1)
    direct = torch.tensor([
        -sum(float(logp[b, y[b, i, j], i, j]) for i in range(4) for j in range(6)) / 24
        for b in range(5)], dtype=torch.float64)
    assert torch.allclose(sample_loss(logits, y), direct, atol=1e-12, rtol=0)
    # its input gradient is that of the summed per-sample losses
    lin = _linear_per_position((3, 4, 6))
    x = torch.rand(5, 3, 4, 6, dtype=torch.float64, generator=g)
    loss, grad = loss_and_grad(lin, x, y.clamp(max=1))
    xr = x.clone().requires_grad_(True)
    ref = F.cross_entropy(lin(xr), y.clamp(max=1), reduction="none").mean(dim=(1, 2)).sum()
    (want,) = torch.autograd.grad(ref, xr)
    assert torch.allclose(grad, want, atol=1e-12, rtol=0)
    assert torch.allclose(loss.sum(), ref.detach(), atol=1e-12, rtol=0)
    # all positions right = the tasks' metric; per-position = the fraction of positions right
    y = logits.argmax(1).clone()
    y[0, 0, 0] = (y[0, 0, 0] + 1) % 3  # sample 0 loses one position
    y[1] = (y[1] + 1) % 3  # sample 1 loses every position
    assert torch.equal(correct(logits, y), sample_correct(logits, y))
    assert correct(logits, y).tolist() == [False, False, True, True, True]
    assert float(position_correct(logits, y).double().mean()) == pytest.approx(
        float((logits.argmax(1) == y).double().mean()))
    adv = logits.clone()
    adv[2, :, 1, 1] = -adv[2, :, 1, 1]  # flips sample 2's arg-max at one position
    assert robust_correct(logits, adv, y).tolist() == [False, False, False, True, True]
    both = (logits.argmax(1) == y) & (adv.argmax(1) == y)
    assert robust_position_fraction(logits, adv, y) == pytest.approx(float(both.double().mean()))
    # a diverged solve or non-finite logits: every position of that sample wrong
    bad = torch.tensor([False, False, False, True, False])
    assert position_correct(logits, y, bad)[3].any().item() is False
    adv[4, 0, 0, 0] = math.nan
    assert position_correct(adv, y)[4].any().item() is False
    # entropy: mean over the positions of the per-position entropy of softmax over classes
    p = logp.exp()
    want_h = -(p * logp).sum(1).mean(dim=(1, 2))
    assert torch.allclose(prediction_entropy(logits), want_h, atol=1e-12, rtol=0)
    # one label per sample: the earlier code, bit for bit
    flat = torch.randn(4, 3, dtype=torch.float64, generator=g)
    lp = F.log_softmax(flat, dim=-1)
    assert torch.equal(prediction_entropy(flat), -(lp.exp() * lp).sum(dim=-1))


TINY = {  # task options, the FFW's cell
    "prefix_sums": ({"length": 8, "n_train": 32, "n_test": 16}, "conv1d"),
    "mazes": ({"size": 5, "n_train": 32, "n_test": 16}, "residual"),
}


@pytest.fixture(scope="module", params=sorted(TINY))
def family(request, tmp_path_factory):
    """A tiny study (DEQ and FFW, 8-bit strings or 5×5 mazes, one epoch): seconds to train."""
    tmp_path = tmp_path_factory.mktemp("per-position")
    options, ffw_cell = TINY[request.param]
    fast = {"name": "unroll", "max_iter": 4, "tol": 1e-30, "stop": "abs", "window": 1}
    spec = build(StudySpec, {
        "task": request.param, "task_options": options,
        "shifts": [], "n_shift": 4, "train_snr_db": ["inf"], "test_snr_db": ["inf"],
        "budgets": ["train"],
        "train": {"solver": fast, "test_solver": fast, "gradient": {"name": "bptt"},
                  "epochs": 1, "batch_size": 16},
        "models": {"deq": {"kind": "deq", "cell": "conv1d", "width": 2, "weight_norm": False},
                   "ffw": {"kind": "ffw", "cell": ffw_cell, "width": 2, "depth": 2,
                           "weight_norm": False}},
    })
    run_study(spec, tmp_path / "run", plots=False)
    return tmp_path / "run"


def test_attack_runs_a_per_position_family_end_to_end(family, tmp_path, capsys):
    from noisydeq.analysis.family import deq_or_ffw, load_family, load_family_task

    out = tmp_path / "attack"
    mazes = "mazes" in (family / "study.toml").read_text(encoding="utf-8")  # ℓ2 there
    code, stdout, err = run(["attack", "--family", str(family), "--samples", "8",
                             "--val-samples", "4", "--eps", "0,0.3", "--pgd-steps", "3",
                             "--steps", "2", "--sigma", "0,1", "--fraction", "0,0.2",
                             "--defences", "final,early,ensemble", "--out", str(out),
                             "--norm", "l2" if mazes else "linf",
                             "--threads", "1", "--quiet"], capsys)
    assert code in (0, None), err
    # the default attacks without AutoAttack's curves, said in one line
    assert "without aa, aa-rand" in err
    with open(out / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == [*ATTACK_COLUMNS, "position_value"]
    from tests.load_helpers import assert_loads_declared

    assert assert_loads_declared(out)["position_value"].dtype == "float64"
    assert {r["attack"] for r in rows} == {"PGD-3", "PGD ε=0.3", "speckle", "salt-pepper"}
    assert {r["defence"] for r in rows if r["kind"] == "deq"} == {"final", "early", "ensemble"}
    for name in ("attacks_white-box_inf", "positions_white-box_inf"):
        assert (out / "figures" / f"{name}.png").is_file()
        assert (out / "figures" / f"{name}.csv").is_file()
    # ε = 0 (σ = 0, p = 0): the clean all-positions and per-position accuracy, per model
    loaded = load_family(family, "cpu", check=deq_or_ffw)
    task = load_family_task(loaded, None)
    x, y = task.x_test[:8], task.y_test[:8]
    for m in loaded:
        with torch.no_grad():
            logits = m.model.eval()(x)
        clean = [r for r in rows if r["model_id"].startswith(m.kind) and float(r["x"]) == 0
                 and r["defence"] == "final"]
        assert len(clean) == 3  # PGD-3, speckle, salt-pepper
        for r in clean:
            assert float(r["value"]) == task.metric(logits, y)
            assert float(r["position_value"]) == pytest.approx(
                float((logits.argmax(1) == y).double().mean()), abs=1e-12)
        # under attack neither count exceeds its clean value
        for r in rows:
            if r["model_id"] == clean[0]["model_id"] and r["defence"] == "final":
                assert float(r["value"]) <= float(clean[0]["value"])
                assert float(r["position_value"]) <= float(clean[0]["position_value"]) + 1e-12


@pytest.mark.parametrize("attacks,needle", [
    ("aa", "attack 'aa'"), ("square", "attack 'square'"), ("pgd-eps,fab", "attack 'fab'"),
])
def test_attacks_that_cannot_apply_per_position_are_one_line(family, tmp_path, capsys, attacks,
                                                             needle):
    out = tmp_path / "attack"
    code, _, err = run(["attack", "--family", str(family), "--attacks", attacks, "--samples",
                        "4", "--val-samples", "2", "--eps", "0.1", "--out", str(out),
                        "--quiet"], capsys)
    one_line_error(code, err, needle, "predicts a class per position", "use pgd-eps")
    assert not out.exists()


def test_a_task_of_another_kind_is_refused_in_one_line_and_per_sample_tables_keep_columns(
        tmp_path):
    # (a regression task is attacked on its MSE: tests/attacks/test_mse.py)
    spec = build(AttackRunSpec, {"family": str(tmp_path)}, where="attack")
    task = SimpleNamespace(name="odd", kind="ranking")
    with pytest.raises(NoisyDEQError, match="'odd' is of kind 'ranking'"):
        validate(spec, task, [object()])
    assert AttackRunDir(tmp_path / "a").columns == ATTACK_COLUMNS
    assert "position_value" not in AttackRunDir(tmp_path / "b").columns
    assert AttackRunDir(tmp_path / "c", per_position=True).columns == {
        **ATTACK_COLUMNS, "position_value": "float"}


@pytest.mark.ray
@pytest.mark.slow
def test_a_per_position_attack_on_ray_equals_the_local_one(ray_cluster, family, tmp_path,
                                                          capsys):
    # the workers' stand-in task says it is per-position: their rows carry position_value
    assert b"position_value" in ray_table_equals_local(family, tmp_path, capsys)


def test_a_per_position_family_on_a_device_and_under_its_own_noise(family, tmp_path, capsys):
    # the same rows, each with its per-position column
    tables = attack_on_device_and_under_noise(family, tmp_path, capsys)
    for name, rows in tables.items():
        for r in rows:
            assert 0.0 <= float(r["value"]) <= float(r["position_value"]) <= 1.0
        assert (tmp_path / name / "figures" / "positions_vs_snr.png").is_file()
