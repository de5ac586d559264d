"""train_model: determinism, exact resume, config checks, noise/regulariser/device effects."""

import math

import pytest
import torch
from torch import nn

from noisydeq.config import JacobianRegSpec, ModelSpec, NoiseSpec, SolverSpec, TrainSpec
from noisydeq.errors import NoisyDEQError
from noisydeq.models import build_model
from noisydeq.tasks import load_task
from noisydeq.train import evaluate, train_model


class Tiny(nn.Module):
    """A generic module with the forward(x, noise=None) contract (no kind, no solver)."""

    def __init__(self, n_in=64, n_out=10):
        super().__init__()
        self.a, self.b = nn.Linear(n_in, 32), nn.Linear(32, n_out)

    def forward(self, x, noise=None):
        s = self.a(x)
        if noise is not None:
            s = noise.apply("signal", s)
        return self.b(torch.tanh(s))


def _tiny(seed=0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Tiny()


def _deq(width=24, seed=0, **kw):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(ModelSpec(kind="deq", in_features=64, out_features=10, width=width,
                                     matched=False), **kw)


def _same(a, b):
    return all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())


def test_generic_module_learns_digits(digits):
    before = evaluate(_tiny(), digits)
    res = train_model(_tiny(), digits, TrainSpec(epochs=3, batch_size=32, lr=1e-2))
    assert before < 0.3 and res.test_metric > 0.85
    losses = [h["loss"] for h in res.history]
    assert losses == sorted(losses, reverse=True)
    assert res.metric_name == "accuracy" and len(res.history) == 3


def test_regression_mse_falls_below_target_variance():
    task = load_task("regression1d", seed=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        m = build_model(ModelSpec(kind="ffw", in_features=1, out_features=1, depth=2, width=32,
                                  input_act="silu"))
    res = train_model(m, task, TrainSpec(epochs=4, batch_size=32, lr=1e-2,
                                         max_train_samples=2000))
    assert res.metric_name == "mse"
    assert res.test_metric < 0.25 * float(task.y_test.var())


def test_same_seed_same_weights_other_seed_differs(digits):
    spec = TrainSpec(epochs=1, batch_size=64, noise=NoiseSpec(site="signal", snr_db=0.0))
    a = train_model(_tiny(), digits, spec).model
    b = train_model(_tiny(), digits, spec).model
    c = train_model(_tiny(), digits, spec.model_copy(update={"seed": 1})).model
    clean = train_model(_tiny(), digits, spec.model_copy(update={"noise": NoiseSpec()})).model
    assert _same(a, b)
    assert not _same(a, c) and not _same(a, clean)


def test_resume_after_interrupt_equals_uninterrupted(tmp_path, digits):
    spec = TrainSpec(
        epochs=3, batch_size=64, max_train_samples=256,
        noise=NoiseSpec(site="signal", snr_db=10.0),
        solver=SolverSpec(name="unroll", max_iter=8, tol=1e-3, random_threshold=True),
        jac_reg=JacobianRegSpec(weight=0.5, stop_epoch=2),
    )
    ref = train_model(_deq(), digits, spec)

    def stop(epoch, record):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_model(_deq(), digits, spec, out_dir=tmp_path, on_epoch=stop)
    assert (tmp_path / "resume.safetensors").is_file()
    assert not (tmp_path / "model.safetensors").exists()
    resumed = train_model(_deq(), digits, spec, out_dir=tmp_path)
    assert resumed.start_epoch == 2 and len(resumed.history) == 3
    assert _same(resumed.model, ref.model)
    assert [h["loss"] for h in resumed.history] == pytest.approx([h["loss"] for h in ref.history])
    assert ref.history[0]["jac_loss"] > 0 and ref.history[2]["jac_loss"] == 0  # stop_epoch 2
    # a finished run is loaded, not retrained; another config is refused in one line
    again = train_model(_deq(), digits, spec, out_dir=tmp_path)
    assert again.loaded and _same(again.model, ref.model)
    assert again.test_metric == pytest.approx(ref.test_metric)
    with pytest.raises(NoisyDEQError, match="different config") as e:
        train_model(_deq(), digits, spec.model_copy(update={"epochs": 4}), out_dir=tmp_path)
    assert "train.epochs 3 → 4" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(NoisyDEQError, match="different config"):
        train_model(_deq(seed=5), digits, spec, out_dir=tmp_path)  # other initial weights


def test_training_time_adds_up_across_a_resume(tmp_path, digits, monkeypatch):
    """Recorded training time is the sum over the runs that trained the model: a fake clock
    in which each epoch takes 100 s and nothing else takes time; the first run dies 50 s into
    its third epoch (that work is lost: not counted), the resumed run's clock starts elsewhere
    (another process), and the resumed model records 200 + 100 s, 100 s of them its own."""
    import noisydeq.train as train_mod
    from noisydeq import store

    clock = [1000.0]
    monkeypatch.setattr(train_mod, "_clock", lambda: clock[0])
    real_epoch = train_mod._train_epoch
    die_in = [None]

    def epoch_of_100_s(*args, **kwargs):
        epoch = args[7]  # (net, opt, task, spec, rng, x, y, epoch, ...)
        if epoch == die_in[0]:
            clock[0] += 50.0
            raise KeyboardInterrupt  # killed mid-epoch: its 50 s are lost
        out = real_epoch(*args, **kwargs)
        clock[0] += 100.0
        return out

    monkeypatch.setattr(train_mod, "_train_epoch", epoch_of_100_s)
    spec = TrainSpec(epochs=3, batch_size=64, max_train_samples=128)
    ref = train_model(_tiny(), digits, spec, out_dir=tmp_path / "ref")
    assert ref.seconds == ref.run_seconds == 300.0

    die_in[0] = 2
    with pytest.raises(KeyboardInterrupt):
        train_model(_tiny(), digits, spec, out_dir=tmp_path / "cut")
    _, meta = store.load_tensors(tmp_path / "cut" / "resume.safetensors")
    assert meta["seconds"] == 200.0  # the two epochs the resume state holds
    die_in[0], clock[0] = None, 7.0  # a new process: its clock has another origin
    resumed = train_model(_tiny(), digits, spec, out_dir=tmp_path / "cut")
    assert resumed.start_epoch == 2 and _same(resumed.model, ref.model)
    assert resumed.run_seconds == 100.0
    assert resumed.seconds == meta["seconds"] + resumed.run_seconds == 300.0
    # the bar times the epochs; set-up and the test metric are the rest of the run's time
    assert ref.epoch_seconds == 300.0 and resumed.epoch_seconds == 100.0
    assert ref.trained_in() == "trained in 300.0 s: epochs 300.0 s, set-up and test 0.0 s"
    assert resumed.trained_in() == ("trained in 300.0 s (100.0 s of them in this run, "
                                    "resumed at epoch 2: epochs 100.0 s, set-up and test "
                                    "0.0 s)")
    _, saved = store.load_checkpoint(tmp_path / "cut" / "model.safetensors")
    assert saved["extra"]["seconds"] == 300.0 and saved["extra"]["seconds_last_run"] == 100.0
    again = train_model(_tiny(), digits, spec, out_dir=tmp_path / "cut")
    assert again.loaded and again.seconds == 300.0 and again.run_seconds == 0.0


def test_trained_in_splits_the_epochs_the_bar_times_from_set_up_and_test(digits,
                                                                         monkeypatch):
    """A bar said "750/750 in 0:08" beside "trained in 10.0 s": the bar times the epochs, the
    total also set-up and the final test metric. A fake clock: each epoch 100 s, the test
    metric 7 s, nothing else; the line names both parts and they add up to the total."""
    import noisydeq.train as train_mod

    clock = [50.0]
    monkeypatch.setattr(train_mod, "_clock", lambda: clock[0])
    real_epoch, real_eval = train_mod._train_epoch, train_mod.evaluate

    def epoch_of_100_s(*args, **kwargs):
        out = real_epoch(*args, **kwargs)
        clock[0] += 100.0
        return out

    def test_of_7_s(*args, **kwargs):
        clock[0] += 7.0
        return real_eval(*args, **kwargs)

    monkeypatch.setattr(train_mod, "_train_epoch", epoch_of_100_s)
    monkeypatch.setattr(train_mod, "evaluate", test_of_7_s)
    res = train_model(_tiny(), digits, TrainSpec(epochs=2, batch_size=64,
                                                 max_train_samples=128), quiet=True)
    assert (res.seconds, res.run_seconds, res.epoch_seconds) == (207.0, 207.0, 200.0)
    assert res.trained_in() == "trained in 207.0 s: epochs 200.0 s, set-up and test 7.0 s"
    assert res.trained_in(0) == "trained in 207 s: epochs 200 s, set-up and test 7 s"


def test_resume_state_of_other_config_is_refused(tmp_path, digits):
    spec = TrainSpec(epochs=2, batch_size=128, max_train_samples=256)

    def stop(epoch, record):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_model(_tiny(), digits, spec, out_dir=tmp_path, on_epoch=stop)
    with pytest.raises(NoisyDEQError, match="different config"):
        train_model(_tiny(), digits, spec.model_copy(update={"lr": 1e-2}), out_dir=tmp_path)


def _jacobian_fro2(model, x):
    """Exact mean ‖∂f/∂z‖²_F at the fixed point, by autograd.functional (independent check)."""
    model.eval()
    with torch.no_grad():
        out = model(x, return_solution=True)
    z = out.solution.z
    xt = model.inject(x)
    total = 0.0
    for i in range(len(x)):
        J = torch.autograd.functional.jacobian(
            lambda zi, i=i: model.cell(zi[None], xt[i : i + 1])[0], z[i])
        total += float(J.pow(2).sum())
    return total / len(x)


def test_jacobian_regulariser_shrinks_the_jacobian(digits):
    base = dict(epochs=2, batch_size=32, max_train_samples=256, lr=3e-3,
                solver=SolverSpec(name="unroll", max_iter=20, tol=1e-4))
    plain = train_model(_deq(), digits, TrainSpec(**base)).model
    reg = train_model(_deq(), digits, TrainSpec(**base, jac_reg=JacobianRegSpec(weight=5.0))).model
    x = digits.x_test[:8]
    assert _jacobian_fro2(reg, x) < 0.7 * _jacobian_fro2(plain, x)


def test_ideal_device_in_the_loop_equals_digital_training(digits):
    spec = TrainSpec(epochs=1, batch_size=64, max_train_samples=256)
    digital = train_model(_tiny(), digits, spec).model
    on_ideal = train_model(_tiny(), digits, spec.model_copy(update={"device": "ideal"}))
    assert set(on_ideal.model.state_dict()) == set(digital.state_dict())
    for k, v in digital.state_dict().items():
        assert torch.allclose(on_ideal.model.state_dict()[k], v, atol=1e-6), k


def test_noisy_device_in_the_loop_changes_training(digits):
    spec = TrainSpec(epochs=1, batch_size=64, max_train_samples=256, device="snr",
                     device_snr_db=0.0)
    a = train_model(_tiny(), digits, spec).model
    b = train_model(_tiny(), digits, spec).model
    digital = train_model(_tiny(), digits, spec.model_copy(update={"device": None})).model
    assert _same(a, b) and not _same(a, digital)
    assert isinstance(a.a, nn.Linear)  # the returned model is the digital one


def test_paper_preset_matches_tables_1_and_2():
    deq = TrainSpec.preset("paper", "deq")
    assert (deq.epochs, deq.batch_size, deq.lr, deq.weight_decay) == (30, 16, 1e-3, 0.0)
    assert deq.jac_reg.weight == 1.0 and deq.jac_reg.stop_epoch == 55
    assert (deq.solver.name, deq.solver.max_iter, deq.solver.tol, deq.solver.stop) == (
        "unroll", 60, 1e-3, "rel")
    assert (deq.test_solver.max_iter, deq.test_solver.tol, deq.test_solver.stop) == (
        60, 0.05, "mean_rel")
    noisy = TrainSpec.preset("paper", "deq", NoiseSpec(site="signal", snr_db=10))
    assert (noisy.solver.tol, noisy.solver.stop) == (0.05, "mean_rel")
    ffw = TrainSpec.preset("paper", "ffw")
    assert (ffw.epochs, ffw.batch_size, ffw.lr) == (64, 16, 1e-3) and ffw.solver is None
    with pytest.raises(NoisyDEQError, match="did you mean 'quick'"):
        TrainSpec.preset("quik")


def test_solver_setting_on_a_generic_module_is_an_error(digits):
    with pytest.raises(NoisyDEQError, match="only a DEQ"):
        train_model(_tiny(), digits, TrainSpec(epochs=1, solver=SolverSpec(name="unroll")))


def test_diverging_training_is_one_clear_error(digits):
    task = digits
    bad = _tiny()
    with torch.no_grad():
        bad.a.weight.fill_(math.inf)
    with pytest.raises(NoisyDEQError, match="training diverged at epoch 1"):
        train_model(bad, task, TrainSpec(epochs=1))


def test_ffw_with_a_jac_reg_attribute_takes_the_spec(digits):
    from noisydeq.analysis.jacobian_ffw import JacRegFFW

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        m = JacRegFFW(64, 16, 3, 10)
    spec = TrainSpec(epochs=1, batch_size=128, max_train_samples=256,
                     jac_reg=JacobianRegSpec(weight=1.0))
    res = train_model(m, digits, spec)
    assert res.model.jac_reg.weight == 1.0 and res.history[0]["jac_loss"] > 0
