"""The MSE attack of regression tasks (issue 22: matrix addition): PGD against closed forms and
a brute force over the ε-box corners on linear models, ε = 0, the lower-is-better white-box
table, the refusals, and ``noisydeq attack`` end to end on a tiny matrix-add study."""

from __future__ import annotations

import csv
import itertools
import math

import pytest
import torch
from torch import nn

from noisydeq.attacks.defences import white_box
from noisydeq.attacks.pgd import pgd, sample_loss, sample_wrong
from noisydeq.attacks.runner import ATTACK_COLUMNS, whitebox_rows
from noisydeq.config import build
from noisydeq.errors import NoisyDEQError
from noisydeq.studies import StudySpec, run_study
from tests.attacks.helpers import (
    attack_on_device_and_under_noise,
    frozen,
    ray_table_equals_local,
)
from tests.cli_helpers import one_line_error
from tests.cli_helpers import run_cli as run


def _linear(d_in: int, d_out: int, seed: int) -> nn.Linear:
    torch.manual_seed(seed)
    return frozen(nn.Linear(d_in, d_out).double())


def _mse(model, x, t):
    with torch.no_grad():
        return (model(x) - t).square().mean(1)


def test_the_loss_is_the_per_sample_mse_and_no_sample_is_ever_wrong():
    g = torch.Generator().manual_seed(0)
    out, t = torch.randn(5, 7, dtype=torch.float64, generator=g), torch.randn(5, 7, generator=g,
                                                                              dtype=torch.float64)
    want = torch.tensor([sum((float(out[b, j]) - float(t[b, j])) ** 2 for j in range(7)) / 7
                         for b in range(5)], dtype=torch.float64)
    assert torch.allclose(sample_loss(out, t, "mse"), want, atol=1e-12, rtol=0)
    assert not sample_wrong(out, t, "mse").any()
    # class labels (integer y) keep the cross-entropy
    y = torch.tensor([0, 1, 2, 3, 4])
    assert torch.allclose(sample_loss(out, y),
                          nn.functional.cross_entropy(out, y, reduction="none"))
    # soft class targets of the logits' shape (TRADES' inner attack) are cross-entropy too:
    # the loss is named by the caller, never guessed from a floating-point y
    soft = torch.softmax(t, dim=1)
    assert torch.allclose(sample_loss(out, soft),
                          nn.functional.cross_entropy(out, soft, reduction="none"))
    assert not torch.allclose(sample_loss(out, soft), sample_loss(out, soft, "mse"))
    with pytest.raises(NoisyDEQError, match="loss must be one of ce, mse"):
        sample_loss(out, t, "l1")


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_reaches_the_closed_form_worst_mse_of_a_single_output_linear_model(norm):
    # f(x) = a·x + b, target t, residual r = f(x₀) − t: the squared error (r + a·δ)² is largest
    # over ‖δ‖∞ ≤ ε at δ = ε·sign(r)·sign(a), giving (|r| + ε‖a‖₁)²; over ‖δ‖₂ ≤ ε at
    # δ = ε·sign(r)·a/‖a‖₂, giving (|r| + ε‖a‖₂)² (Hölder's equality cases)
    model = _linear(6, 1, seed=3)
    g = torch.Generator().manual_seed(1)
    x = 2 * torch.rand(8, 6, dtype=torch.float64, generator=g) - 1  # inputs U(−1, 1)
    t = torch.randn(8, 1, dtype=torch.float64, generator=g)
    eps = 0.05
    a = model.weight[0]
    dual = a.abs().sum() if norm == "linf" else a.norm()
    with torch.no_grad():
        r = (model(x) - t)[:, 0]
    expected = (r.abs() + eps * dual) ** 2
    # from δ = 0 the ascent keeps the sign of the residual: every sample reaches the optimum
    # (to 1e-7: the ℓ2 projection divides by ‖δ‖ + 1e-10)
    adv = pgd(model, x, t, eps=eps, steps=20, norm=norm, random_init=False, box=None, loss="mse")
    assert torch.allclose(_mse(model, adv, t), expected, rtol=1e-7, atol=0)
    # from a random start too, where |r| > ε‖a‖ (the residual's sign cannot flip in the ball)
    adv = pgd(model, x, t, eps=eps, steps=20, norm=norm, box=None, loss="mse",
              generator=torch.Generator().manual_seed(0))
    far = r.abs() > eps * dual
    assert far.sum() >= 4
    got = _mse(model, adv, t)
    if norm == "linf":
        assert torch.allclose(got[far], expected[far], rtol=1e-7, atol=0)
    else:  # ℓ2: the start's component orthogonal to a only shrinks with the projections
        assert torch.all(got <= expected * (1 + 1e-9))
        assert torch.allclose(got[far], expected[far], rtol=1e-2, atol=0)
    # inside the ball, not clamped to [0, 1]: the inputs are real numbers
    size = (adv - x).abs().amax(1) if norm == "linf" else (adv - x).norm(dim=1)
    assert float(size.max()) <= eps + 1e-12
    assert float(adv.min()) < 0


def test_pgd_with_restarts_reaches_the_brute_force_worst_corner_of_a_3d_input():
    # MSE(δ) = ‖r + Aδ‖²/m is convex in δ: its maximum over the ε-box lies at one of its
    # 2³ corners, found here by brute force; PGD with restarts (keeping the highest MSE) finds it
    model = _linear(3, 2, seed=5)
    g = torch.Generator().manual_seed(2)
    x = 2 * torch.rand(10, 3, dtype=torch.float64, generator=g) - 1
    t = torch.randn(10, 2, dtype=torch.float64, generator=g)
    eps = 0.4
    corners = torch.tensor(list(itertools.product((-1.0, 1.0), repeat=3)), dtype=torch.float64)
    brute = torch.stack([_mse(model, x + eps * c, t) for c in corners]).amax(0)
    adv = pgd(model, x, t, eps=eps, steps=20, restarts=8, box=None, loss="mse",
              generator=torch.Generator().manual_seed(0))
    assert torch.allclose(_mse(model, adv, t), brute, rtol=1e-9, atol=0)
    assert torch.all(_mse(model, adv, t) >= _mse(model, x, t))
    # ε = 0: the input itself, so the clean MSE
    same = pgd(model, x, t, eps=0.0, steps=5, box=None, loss="mse")
    assert torch.equal(same, x)


def test_white_box_takes_the_largest_mse_over_attacks_and_the_smallest_over_defences():
    table = [("final", "PGD-10", 0.2), ("final", "speckle", 0.5),
             ("ensemble", "PGD-10", 0.3), ("ensemble", "speckle", 0.4)]
    value, best, worst = white_box(table, lower_is_better=True)
    assert worst == {"final": 0.5, "ensemble": 0.4} and (value, best) == (0.4, "ensemble")
    # a NaN (diverged output) is the worst
    value, best, worst = white_box([*table, ("ensemble", "I-FGSM", math.nan)], True)
    assert (value, best, worst["ensemble"]) == (0.5, "final", math.inf)
    # accuracy: unchanged
    assert white_box(table)[:2] == (0.3, "ensemble")
    rows = [{"model_id": "m", "kind": "deq", "depth": 1, "mode": "white-box", "snr_db": math.inf,
             "chip": 0, "x_name": "eps", "eps": 0.1, "defence": d, "attack": a,
             "estimator": "exact", "value": v} for d, a, v in table]
    wb = whitebox_rows(rows, 0.1, lower_is_better=True)
    assert {(r["defence"], r["worst_value"], r["worst_attack"]) for r in wb} == {
        ("final", 0.5, "speckle / exact"), ("ensemble", 0.4, "speckle / exact")}
    nan = {**rows[0], "attack": "I-FGSM", "value": math.nan}
    wb = whitebox_rows([nan, *rows], 0.1, lower_is_better=True)
    assert [r["worst_attack"] for r in wb if r["defence"] == "final"] == ["I-FGSM / exact"]


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    """A tiny matrix-add study (4×4 matrices, a DEQ and an FFW, one epoch): seconds."""
    tmp_path = tmp_path_factory.mktemp("matrix-add")
    fast = {"name": "unroll", "max_iter": 4, "tol": 1e-30, "stop": "abs", "window": 1}
    spec = build(StudySpec, {
        "task": "matrix_add", "task_options": {"n_train": 64, "n_test": 16, "side": 4},
        "shifts": [], "n_shift": 4, "train_snr_db": ["inf"], "test_snr_db": ["inf"],
        "budgets": ["train"],
        "train": {"solver": fast, "test_solver": fast, "gradient": {"name": "bptt"},
                  "epochs": 1, "batch_size": 16},
        "models": {"deq": {"kind": "deq", "cell": "mlp_stack", "width": 16, "layers": 2,
                           "input_act": "identity", "weight_norm": False},
                   "ffw": {"kind": "ffw", "cell": "mlp_stack", "width": 16, "layers": 2,
                           "depth": 1, "input_act": "relu", "weight_norm": False}},
    })
    run_study(spec, tmp_path / "run", plots=False)
    return tmp_path / "run"


def test_attack_runs_a_matrix_add_family_end_to_end(family, tmp_path, capsys):
    from noisydeq.analysis.family import deq_or_ffw, load_family, load_family_task

    out = tmp_path / "attack"
    code, _, err = run(["attack", "--family", str(family), "--eps", "0,0.1,0.3",
                        "--pgd-steps", "3", "--steps", "1,3", "--sigma", "0,0.5",
                        "--samples", "8", "--val-samples", "0", "--out", str(out),
                        "--threads", "1", "--quiet"], capsys)
    assert code in (0, None), err
    assert "without aa, aa-rand, salt-pepper" in err  # the default attacks, in one line
    with open(out / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == list(ATTACK_COLUMNS)  # no per-position column
    assert {r["attack"] for r in rows} == {"PGD-3", "PGD ε=0.3", "speckle"}
    for name in ("attacks_white-box_inf",):
        assert (out / "figures" / f"{name}.png").is_file()
        with open(out / "figures" / f"{name}.csv", newline="") as fh:
            assert "mse_worst" in next(csv.reader(fh))
    loaded = load_family(family, "cpu", check=deq_or_ffw)
    task = load_family_task(loaded, None)
    x, y = task.x_test[:8], task.y_test[:8]
    with open(out / "whitebox.csv", newline="") as fh:
        wb = {r["model_id"]: r for r in csv.DictReader(fh)}
    for m in loaded:
        with torch.no_grad():
            clean_mse = task.metric(m.model.eval()(x), y)
        mine = [r for r in rows if r["model_id"].startswith(m.kind)]
        assert {r["entropy_p"] for r in mine} == {"nan"}
        zero = [r for r in mine if float(r["x"]) == 0 and r["x_name"] in ("eps", "sigma")]
        assert len(zero) == 2  # PGD-3 at ε = 0 and speckle at σ = 0: the clean MSE
        for r in zero:
            assert float(r["value"]) == pytest.approx(clean_mse, rel=1e-6)
        pgd_mse = {float(r["x"]): float(r["value"]) for r in mine if r["attack"] == "PGD-3"}
        assert pgd_mse[0.0] < pgd_mse[0.1] < pgd_mse[0.3]  # the attack raises the MSE
        # the white-box summary at ε = 0.3: the largest MSE of its attacks
        at = [float(r["value"]) for r in mine if r["x_name"] == "eps" and float(r["eps"]) == 0.3]
        w = wb[mine[0]["model_id"]]
        assert float(w["worst_value"]) == pytest.approx(max(at))


@pytest.mark.parametrize("extra,needle", [
    (["--attacks", "aa"], "attack 'aa'"),
    (["--attacks", "pgd-eps,salt-pepper"], "attack 'salt-pepper'"),
    (["--attacks", "pgd-eps", "--defences", "final,early"], "defence 'early'"),
])
def test_what_does_not_apply_to_a_regression_task_is_one_line(family, tmp_path, capsys, extra,
                                                              needle):
    out = tmp_path / "attack"
    code, _, err = run(["attack", "--family", str(family), *extra, "--samples", "4",
                        "--val-samples", "2", "--eps", "0.1", "--out", str(out), "--quiet"],
                       capsys)
    one_line_error(code, err, needle, "regression task")
    assert not out.exists()


def test_a_matrix_add_family_on_a_device_and_under_its_own_noise(family, tmp_path, capsys):
    # MSE rows, the MSE-vs-SNR figure with MSE columns
    tables = attack_on_device_and_under_noise(family, tmp_path, capsys)
    for name, rows in tables.items():
        assert all(float(r["value"]) >= 0 for r in rows)
        with open(tmp_path / name / "figures" / "robust_vs_snr.csv", newline="") as fh:
            assert "mse_mean" in next(csv.reader(fh))


def test_a_regression_output_of_another_shape_is_refused_not_broadcast():
    from noisydeq.errors import NoisyDEQError

    with pytest.raises(NoisyDEQError, match=r"output \(4, 1\) and the regression targets \(4,\)"):
        sample_loss(torch.zeros(4, 1), torch.zeros(4), "mse")


def test_a_regression1d_sweep_family_is_attacked_on_its_mse(tmp_path, capsys, monkeypatch):
    # any regression task comes with it: the paper's 1-d function fit (targets (N, 1))
    from noisydeq.analysis.family import deq_or_ffw, load_family, load_family_task

    monkeypatch.setenv("NOISYDEQ_CACHE", str(tmp_path / "cache"))
    code, _, err = run(["sweep", "--task", "regression1d", "--epochs", "1", "--set", "hidden=16",
                        "--set", "max_train_samples=256", "--depths", "1", "--snr", "inf",
                        "--jobs", "1", "--threads", "1", "--quiet", "--out",
                        str(tmp_path / "run")], capsys)
    assert code in (0, None), err
    out = tmp_path / "attack"
    code, _, err = run(["attack", "--family", str(tmp_path / "run"), "--attacks",
                        "pgd-eps,speckle", "--eps", "0,0.1", "--pgd-steps", "3", "--sigma",
                        "0,1", "--samples", "16", "--val-samples", "0", "--threads", "1",
                        "--quiet", "--out", str(out)], capsys)
    assert code in (0, None), err
    with open(out / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    loaded = load_family(tmp_path / "run", "cpu", check=deq_or_ffw)
    task = load_family_task(loaded, None)
    for m in loaded:
        with torch.no_grad():
            clean = task.metric(m.model.eval()(task.x_test[:16]), task.y_test[:16])
        mine = {(r["attack"], float(r["x"])): float(r["value"]) for r in rows
                if r["model_id"].startswith(m.kind)}
        assert mine[("PGD-3", 0.0)] == pytest.approx(clean, rel=1e-6)
        assert mine[("PGD-3", 0.1)] > mine[("PGD-3", 0.0)]


@pytest.mark.ray
@pytest.mark.slow
def test_a_regression_attack_on_ray_equals_the_local_one(ray_cluster, family, tmp_path, capsys):
    # the workers' stand-in task carries the task's kind: their rows are MSEs
    ray_table_equals_local(family, tmp_path, capsys)
    with open(tmp_path / "local" / "results.csv", newline="") as fh:
        assert {r["entropy_p"] for r in csv.DictReader(fh)} == {"nan"}
