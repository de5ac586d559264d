"""Per-layer FFW Jacobian regulariser: estimate vs exact Frobenius norms, training hook."""

import pytest
import torch

from noisydeq.analysis.jacobian_ffw import JacRegFFW
from noisydeq.config import JacobianRegSpec, TrainSpec
from noisydeq.models import FFW
from noisydeq.tasks import load_task
from noisydeq.train import train_model

D = torch.float64


def _exact(model, x):
    """Σ_m mean_b ‖diag(1 − z^{m+1}²) W_m‖²_F / d over the acting layers (tanh layers):
    every layer from z⁰ = x̃ (eq57x, default), all but the first from z⁰ = 0 (eq57)."""
    xt = model.inject(x)
    z, total = (torch.zeros_like(xt) if model.form == "eq57" else xt), 0.0
    first = 1 if model.form == "eq57" else 0
    for m, layer in enumerate(model.layers):
        z_next = layer(z, xt)
        if m >= first:
            J = (1 - z_next**2)[:, :, None] * layer.W.weight[None]
            total += float(J.pow(2).sum((1, 2)).mean()) / z.shape[1]
        z = z_next
    return total


@pytest.mark.parametrize("form", ["eq57x", "eq57"])
def test_hutchinson_penalty_matches_exact_norms(form):
    torch.manual_seed(0)
    model = JacRegFFW(5, 7, 4, 3, form=form).to(D)
    x = torch.randn(6, 5, generator=torch.Generator().manual_seed(1), dtype=D)
    _, est = model.layer_penalty(x, n_samples=4000, generator=torch.Generator().manual_seed(2))
    exact = _exact(model, x)
    assert abs(float(est) - exact) / exact < 0.03


def test_training_hook_lowers_layer_jacobians_and_checkpoint_loads_as_ffw(tmp_path):
    task = load_task("digits")
    norms = {}
    for weight in (0.0, 5.0):
        torch.manual_seed(3)
        reg = JacobianRegSpec(weight=weight) if weight else None
        model = JacRegFFW(task.in_features, 16, 3, task.out_features, jac_reg=reg)
        spec = TrainSpec(epochs=2, batch_size=64, jac_reg=reg, max_train_samples=512)
        res = train_model(model, task, spec, out_dir=tmp_path / f"w{weight}")
        assert (res.history[-1]["jac_loss"] > 0) == (weight > 0)
        norms[weight] = _exact(model.double(), task.x_test[:200].double())
        plain = FFW(task.in_features, 16, 3, task.out_features)
        from noisydeq import store

        tensors, _ = store.load_checkpoint(res.path)
        store.load_into(plain, tensors, res.path)
    assert norms[5.0] < 0.7 * norms[0.0]


def test_fig13_spec_and_runner(tmp_path):
    from noisydeq.analysis.fig13 import Fig13Spec, run_fig13
    from noisydeq.config import load_toml

    shipped = load_toml(Fig13Spec, "noisydeq/experiments/fig13_jacreg_ffw.toml")
    assert shipped.depth == 9 and shipped.jac_weight == 1.0
    import csv

    spec = Fig13Spec(task="digits", depth=2, hidden=8, epochs=1, snr_db="0,inf",
                     max_test_samples=100)
    paths = run_fig13(spec, tmp_path)
    assert {p.name for p in paths} >= {"fig13_accuracy.csv", "fig13.png", "fig13.svg"}
    with open(tmp_path / "fig13_accuracy.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["model"] for r in rows} == {"deq", "ffw", "ffw_jacreg"} and len(rows) == 6
    assert {r["ffw_form"] for r in rows} == {"eq57x"} and all("converged_frac" in r for r in rows)
    # the DEQ and FFW are the family members a sweep with the same settings trains
    from noisydeq.families import cache_root, prepared_member
    from noisydeq.tasks import load_task
    from noisydeq.train import MODEL_FILE

    fam, task = spec.family(0), load_task("digits")
    for kind in ("deq", "ffw"):
        entry = prepared_member(fam, task, kind, 2, cache_root() / "models", torch.device("cpu"))
        assert (entry[2] / MODEL_FILE).is_file()


def test_fig13_command_line_overrides_and_errors(tmp_path, capsys):
    import pytest

    from noisydeq.analysis.fig13 import load_spec, main

    spec = load_spec("noisydeq/experiments/fig13_jacreg_ffw.toml", ["ffw_form=eq57", "seeds=[4]"])
    assert spec.ffw_form == "eq57" and spec.seeds == [4] and spec.test_solver.window == 40
    for args, needle in ((["ffw_form=eq75"], "did you mean 'eq57'"),
                         (["seed=1"], "did you mean 'seeds'"),
                         (["depth"], "expected key=value")):
        with pytest.raises(SystemExit) as info:
            main(["noisydeq/experiments/fig13_jacreg_ffw.toml", str(tmp_path / "o"), *args])
        err = capsys.readouterr().err.strip().splitlines()
        assert info.value.code == 2 and len(err) == 1 and needle in err[0], err


def test_fig13_plots_no_noise_apart_from_30_db():
    import math

    from noisydeq.analysis.fig13 import snr_positions

    # the shipped grid is 0:30:5,inf: ∞ once sat on x = 30 with the measured 30 dB point
    pos = snr_positions([0.0, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0, math.inf])
    assert pos[30.0] == 30.0 and pos[0.0] == 0.0
    assert pos[math.inf] > 30.0 and len(set(pos.values())) == 8
