"""Adversarial training (PGD-AT, TRADES) and the random-intermediate-state loss (Eq. 10)."""

import pytest
import torch
from torch.nn import functional as F

from noisydeq.adversarial.objective import Objective, trades_loss
from noisydeq.attacks.estimators import FinalState
from noisydeq.attacks.pgd import pgd
from noisydeq.attacks.robust import robust_correct
from noisydeq.config import (
    AdversarialSpec,
    ModelSpec,
    OptimizerSpec,
    RandomStateSpec,
    SolverSpec,
    TrainSpec,
)
from noisydeq.models import DEQ, build_model
from noisydeq.regulation.states import random_state_forward
from noisydeq.train import forward_logits, train_model


def _model(kind, seed=0, width=32):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(ModelSpec(kind=kind, in_features=64, out_features=10, width=width,
                                     depth=1, matched=False))


def _robust(model, task, eps=0.1, n=300):
    model.eval()
    x, y = task.x_test[:n], task.y_test[:n]
    gen = torch.Generator().manual_seed(0)
    adv = pgd(FinalState(model, None, warm=False), x, y, eps=eps, steps=10, alpha=eps / 4,
              generator=gen)
    with torch.no_grad():  # right clean and attacked (noisydeq.attacks.robust)
        return float(robust_correct(model(x), model(adv), y).double().mean())


@pytest.mark.slow
@pytest.mark.parametrize("kind, epochs, steps", [("ffw", 12, 10), ("deq", 8, 5)])
def test_pgd_at_raises_robust_accuracy_by_20_points(digits, kind, epochs, steps):
    """PGD-AT at ε = 0.1 vs standard training, same model, seed and schedule; judged by
    PGD-10 at ε = 0.1 on 300 test digits (measured: FFW 0.49 -> 0.80, DEQ 0.42 -> 0.73;
    the DEQ trains with a 5-step inner attack to keep the suite short)."""
    base = TrainSpec.preset("quick", kind).model_copy(
        update={"epochs": epochs, "lr": 5e-3, "batch_size": 32})
    adv = AdversarialSpec(eps=0.1, step=0.025, steps=steps, val_fraction=0.1)
    plain, trained = _model(kind), _model(kind)
    train_model(plain, digits, base, quiet=True)
    res = train_model(trained, digits, base.model_copy(update={"adversarial": adv}), quiet=True)
    assert res.test_metric > 0.85
    assert len([h["val_robust"] for h in res.history]) == epochs  # validated every epoch
    assert _robust(trained, digits) >= _robust(plain, digits) + 0.20


def test_trades_loss_matches_definition_and_beta_zero_is_standard(digits):
    torch.manual_seed(0)
    a, b = torch.randn(7, 10, dtype=torch.float64), torch.randn(7, 10, dtype=torch.float64)
    y = torch.randint(0, 10, (7,))
    p, q = F.softmax(a, -1), F.softmax(b, -1)
    kl = (p * (p.log() - q.log())).sum(-1).mean()
    assert torch.allclose(trades_loss(a, b, y, 6.0), F.cross_entropy(a, y) + 6.0 * kl)
    # the training objective with β = 0 is the clean cross-entropy (standard training)
    model = _model("deq").double()
    x, yb = digits.x_train[:16].double(), digits.y_train[:16]
    spec = TrainSpec.preset("quick", "deq").model_copy(
        update={"adversarial": AdversarialSpec(method="trades", eps=0.1, step=0.03, beta=0.0,
                                               val_fraction=0.0)})
    from noisydeq.train import apply_overrides

    apply_overrides(model, spec)
    model.train()
    obj = Objective(spec, model, digits, forward_logits)
    _, loss, _ = obj(model, x, yb, None, None, torch.Generator().manual_seed(1))
    logits, _ = forward_logits(model, x, None, None)
    assert torch.allclose(loss, F.cross_entropy(logits, yb), atol=1e-10)
    spec6 = spec.model_copy(update={"adversarial": spec.adversarial.model_copy(
        update={"beta": 6.0})})
    _, loss6, _ = Objective(spec6, model, digits, forward_logits)(
        model, x, yb, None, None, torch.Generator().manual_seed(1))
    assert loss6 > loss  # the KL term of a perturbed input is positive


def test_adversarial_training_reports_the_validation_per_epoch_and_the_kept_epoch(
        digits, capsys):
    """`noisydeq train --adversarial pgd` printed only the final test accuracy: the epoch
    selection (what is saved) was visible only in model.json. Each epoch now says its
    validation clean / robust accuracy and the run which epoch it kept, as the history has."""
    spec = TrainSpec.preset("quick", "ffw").model_copy(update={
        "epochs": 2, "max_train_samples": 300,
        "adversarial": AdversarialSpec(eps=0.1, step=0.05, steps=2, val_fraction=0.2)})
    res = train_model(_model("ffw"), digits, spec, desc="ffw", quiet=False)
    out = capsys.readouterr().out
    for i, rec in enumerate(res.history):
        assert (f"ffw epoch {i + 1}/2: loss {rec['loss']:.4f}, validation clean "
                f"{rec['val_clean']:.4f}, robust {rec['val_robust']:.4f} (PGD-10 at "
                "ε = 0.1)") in out
    kept = max(range(2), key=lambda i: (res.history[i]["val_robust"],
                                        res.history[i]["val_clean"], -i)) + 1
    assert f"ffw: kept epoch {kept} of 2 (highest validation robust accuracy" in out


def test_adversarial_run_resumes_to_identical_weights(digits, tmp_path):
    """Two epochs in one go == interrupted after one, then resumed (attack draws, kept
    weights of the selection, learning-rate schedule)."""
    spec = TrainSpec.preset("quick", "ffw").model_copy(update={
        "epochs": 2, "max_train_samples": 300,
        "adversarial": AdversarialSpec(eps=0.1, step=0.05, steps=2, val_fraction=0.2),
        "optimizer": OptimizerSpec(amsgrad=True, milestones=[1], grad_clip=1.0)})
    a = train_model(_model("ffw"), digits, spec, out_dir=tmp_path / "a", quiet=True)

    def stop(epoch, record):  # an interruption after the first epoch's resume file
        if epoch == 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_model(_model("ffw"), digits, spec, out_dir=tmp_path / "d", quiet=True,
                    on_epoch=stop)
    d = train_model(_model("ffw"), digits, spec, out_dir=tmp_path / "d", quiet=True)
    assert d.start_epoch == 1
    assert [h["lr"] for h in a.history] == pytest.approx([1e-3, 1e-4])
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, d.model.state_dict()[k]), k
    assert [h["val_robust"] for h in a.history] == [h["val_robust"] for h in d.history]


def _weights_digest(model) -> str:
    import hashlib

    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _pgd_at_reference(model, task, spec):
    """One PGD-AT epoch written out with the arithmetic train_model had before its
    per-batch overheads were cut (benchmarks/README.md, PGD-AT epoch row): each batch's
    attack stream set up from scratch, the step gradient of the summed per-sample loss,
    torchattacks' step, Adam; the epoch's mean loss."""
    from noisydeq.noise import NoiseStream, derive_seed
    from noisydeq.train_state import _Rng

    adv, n = spec.adversarial, spec.max_train_samples
    x_all, y_all = task.x_train[:n], task.y_train[:n]
    opt = torch.optim.Adam(model.parameters(), lr=spec.lr)
    perm = _Rng(spec.seed, torch.device("cpu")).permutation(n, 0)
    key = derive_seed(spec.seed, "train", "adversarial", 0)
    total = 0.0
    for i in range(0, n, spec.batch_size):
        idx = perm[i:i + spec.batch_size]
        x, y = x_all[idx], y_all[idx]
        u = NoiseStream.from_seed(key, samples=idx).rand(x.shape, x.dtype, x.device)
        xa = (x + u.mul(2).sub(1).mul(adv.eps).clamp(-adv.eps, adv.eps)).clamp(0, 1)
        for _ in range(adv.steps):
            xr = xa.detach().requires_grad_(True)
            per = F.cross_entropy(model(xr), y, reduction="none")
            (g,) = torch.autograd.grad(per.sum(), xr)
            xa = ((xa + adv.step * g.sign() - x).clamp(-adv.eps, adv.eps) + x).clamp(0, 1)
        loss = F.cross_entropy(model(xa.detach()), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += float(loss.detach()) * len(idx)
    return total / n


def test_pgd_at_epoch_is_pinned_bit_for_bit(digits):
    """A tiny PGD-AT FFW epoch on digits gives the weights it gave before the epoch's
    overheads were cut: equal to the written-out reference loop to the bit (any machine),
    and the digest / loss recorded from the code before the change (this platform: x86-64
    CPU, one thread; a BLAS with other rounding changes both sides of the first check
    alike but not these numbers)."""
    from noisydeq.models import FFW

    spec = TrainSpec(epochs=1, batch_size=64, lr=1e-3, seed=0, max_train_samples=300,
                     adversarial=AdversarialSpec(eps=0.1, step=0.025, steps=10,
                                                 val_fraction=0.0))

    def model():
        torch.manual_seed(0)
        return FFW(64, 32, 2, 10)

    res = train_model(model(), digits, spec, quiet=True)
    ref = model()
    ref_loss = _pgd_at_reference(ref, digits, spec)
    for k, v in ref.state_dict().items():
        assert torch.equal(v, res.model.state_dict()[k]), k
    assert res.history[-1]["loss"] == ref_loss
    # one thread: the GEMMs' rounding depends on the thread count
    sel = spec.model_copy(update={"adversarial": spec.adversarial.model_copy(
        update={"val_fraction": 0.2})})  # + the epoch selection's PGD-10 on 20 % held out
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pinned = train_model(model(), digits, spec, quiet=True)
        held = train_model(model(), digits, sel, quiet=True)
    finally:
        torch.set_num_threads(threads)
    assert (_weights_digest(pinned.model), pinned.history[-1]["loss"]) == (
        "5672119c51410d70", 2.4121317640940347)
    assert (_weights_digest(held.model), held.history[-1]["loss"]) == (
        "5d201e84b5e6b45c", 2.4136930306752524)


def _tiny_deq():
    torch.manual_seed(3)
    solver = SolverSpec(name="unroll", max_iter=6, tol=1e-12, stop="abs", window=1)
    m = DEQ(5, 4, 3, solver=solver).double()
    with torch.no_grad():
        m.cell.W.weight.mul_(0.5)
    return m.train()


def test_random_state_loss_is_exact_bptt_through_i_steps():
    """Eq. 10: the logits are those of z[i] = f^i(0) per sample, and the gradient matches
    central finite differences (float64) — no phantom-tail approximation."""
    m = _tiny_deq()
    x = torch.rand(6, 5, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    spec = RandomStateSpec()

    def loss_of(model):
        gen = torch.Generator().manual_seed(11)
        logits, _, steps = random_state_forward(model, x, None, gen, spec)
        return F.cross_entropy(logits, y), logits, steps

    loss, logits, steps = loss_of(m)
    assert len(set(steps.tolist())) > 1 and 1 <= int(steps.min()) and int(steps.max()) <= 6
    # independent: iterate f by hand i times per sample
    with torch.no_grad():
        xt = m.inject(x)
        f = m.cell_fn(xt)
        z, manual = torch.zeros_like(xt), torch.empty_like(logits)
        for t in range(1, int(steps.max()) + 1):
            z = f(z)
            hit = steps == t
            manual[hit] = m.head(z)[hit]
    assert torch.allclose(logits, manual, atol=1e-12)
    loss.backward()
    w = m.cell.W.weight
    grad = w.grad.clone()
    fd = torch.zeros_like(w)
    h = 1e-6
    with torch.no_grad():
        for idx in [(0, 0), (1, 2), (3, 1), (2, 3)]:
            w[idx] += h
            up = loss_of(m)[0]
            w[idx] -= 2 * h
            down = loss_of(m)[0]
            w[idx] += h
            fd[idx] = (up - down) / (2 * h)
            assert abs(float(fd[idx] - grad[idx])) < 1e-7 * max(1.0, abs(float(grad[idx])))


def test_eps_warmup_ramps_per_batch_and_enters_the_cache_key(digits, monkeypatch):
    """``warmup_epochs`` = 2 over 3 epochs of 5 batches: batch i (0-based) of epoch e is
    attacked at ε·min(1, (e + (i + 1)/5)/2) and with the step scaled alike; the validation
    attack of the epoch selection keeps the full ε; the warm-up is part of the run's
    config hash."""
    import noisydeq.adversarial.objective as objective
    import noisydeq.adversarial.selection as selection
    from noisydeq.store import config_hash
    from noisydeq.train_config import run_config

    seen: dict[str, list[tuple[float, float]]] = {"train": [], "val": []}

    def spy(where, real):
        def wrapped(model, x, y, *, eps, alpha, **kw):
            seen[where].append((eps, alpha))
            out = real(model, x, y, eps=eps, alpha=alpha, **kw)
            assert float((out - x).abs().max()) <= eps + 1e-6
            return out
        return wrapped

    monkeypatch.setattr(objective, "pgd", spy("train", objective.pgd))
    monkeypatch.setattr(selection, "pgd", spy("val", selection.pgd))
    adv = AdversarialSpec(eps=0.2, step=0.08, steps=2, val_fraction=0.1, warmup_epochs=2.0)
    spec = TrainSpec.preset("quick", "ffw").model_copy(update={
        "epochs": 3, "batch_size": 32, "max_train_samples": 160, "adversarial": adv})
    train_model(_model("ffw"), digits, spec, quiet=True)
    # 160 samples, 16 held out: 144 trained on in ceil(144/32) = 5 batches per epoch
    want = [0.2 * min(1.0, (e + (i + 1) / 5) / 2) for e in range(3) for i in range(5)]
    assert [e for e, _ in seen["train"]] == pytest.approx(want, abs=1e-12)
    assert [a for _, a in seen["train"]] == pytest.approx([0.4 * w for w in want], abs=1e-12)
    assert seen["val"] == [(0.2, 0.08)] * 3  # one validation batch per epoch, full ε

    model = _model("ffw")
    dev = torch.device("cpu")
    keys = {w: config_hash(run_config(model, digits, spec.model_copy(update={
        "adversarial": adv.model_copy(update={"warmup_epochs": w})}), dev)) for w in (0, 2, 3)}
    assert len(set(keys.values())) == 3


@pytest.mark.parametrize("amsgrad,decay", [(False, 0.0), (True, 1e-3)])
def test_training_adam_is_torch_default_adam_bit_for_bit(amsgrad, decay):
    """The hooks' Adam (multi-tensor, ``foreach``) takes the weights torch's CPU default
    (one tensor at a time) takes, to the bit, with AMSGrad and weight decay too."""
    from noisydeq.adversarial.hooks import TrainingHooks
    from noisydeq.models import FFW

    spec = TrainSpec(epochs=1, batch_size=8, lr=3e-3, seed=0, weight_decay=decay,
                     optimizer=OptimizerSpec(amsgrad=amsgrad, milestones=[1]))
    hooks = TrainingHooks.__new__(TrainingHooks)  # only optimizer() is used
    hooks.spec, hooks.opt_spec = spec, spec.optimizer
    nets = []
    for _ in range(2):
        torch.manual_seed(0)
        nets.append(FFW(6, 5, 2, 3))
    opts = [hooks.optimizer(nets[0]), torch.optim.Adam(
        nets[1].parameters(), lr=3e-3, weight_decay=decay, amsgrad=amsgrad, foreach=False)]
    g = torch.Generator().manual_seed(1)
    for step in range(7):
        grads = [torch.randn(p.shape, generator=g) for p in nets[0].parameters()]
        for net, opt in zip(nets, opts, strict=True):
            for group in opt.param_groups:
                group["lr"] = 3e-3 / (1 + step)
            for p, gr in zip(net.parameters(), grads, strict=True):
                p.grad = gr.clone()
            opt.step()
    for (k, a), b in zip(nets[0].state_dict().items(), nets[1].state_dict().values(),
                         strict=True):
        assert torch.equal(a, b), k
