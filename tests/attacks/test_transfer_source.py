"""Transfer from another model (mode ``transfer-source``, ``noisydeq adversarial``'s
``transfer_from``): examples crafted on a source model, judged on the target."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from noisydeq.attacks.grid import AttackRunSpec
from noisydeq.attacks.runner import SOURCE_MODE, plan, run_attacks
from noisydeq.config import build
from noisydeq.errors import NoisyDEQError
from noisydeq.models import FFW
from noisydeq.results import spec_hash, spec_identity
from noisydeq.sweep import SweepModel
from tests.attacks.helpers import frozen


def _task(n: int = 30) -> SimpleNamespace:
    g = torch.Generator().manual_seed(3)
    return SimpleNamespace(name="toy", kind="classification",
                           x_test=torch.rand(n, 16, generator=g),
                           y_test=torch.randint(0, 3, (n,), generator=g),
                           x_train=torch.rand(8, 16, generator=g), out_features=3)


def _ffw(seed: int) -> SweepModel:
    torch.manual_seed(seed)
    return SweepModel(frozen(FFW(16, 8, 1, 3)), "ffw", 1, 8, 64, seed)


def _spec(**kw) -> AttackRunSpec:
    return build(AttackRunSpec, {"family": "x", "attacks": "ifgsm,speckle", "eps": "0,0.2",
                                 "sigma": "0,0.5", "samples": 30, "val_samples": 0, **kw})


def _ifgsm_by_hand(model, x, y, eps, steps=10):
    """I-FGSM (α = ε/steps, from x, box [0, 1]) written out with autograd."""
    adv = x.clone()
    for _ in range(steps):
        adv.requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(model(adv), y, reduction="sum")
        (g,) = torch.autograd.grad(loss, adv)
        adv = (adv.detach() + eps / steps * g.sign()).clamp(x - eps, x + eps).clamp(0, 1)
    return adv.detach()


def test_examples_crafted_on_the_source_are_judged_on_the_target(tmp_path):
    task = _task()
    target, source = _ffw(0), _ffw(1)
    res = run_attacks(_spec(), [target], task, tmp_path / "out", progress=False, plots=False,
                      sources={target.model_id: source})
    rows = {(r["mode"], r["attack"], r["x"]): r["value"] for r in res.rows}
    # transfer cells for gradient attacks only (speckle is not crafted on a model)
    assert {k for k in rows if k[0] == SOURCE_MODE} == {(SOURCE_MODE, "I-FGSM-10", 0.0),
                                                        (SOURCE_MODE, "I-FGSM-10", 0.2)}
    assert all(r["model_id"] == target.model_id for r in res.rows)
    x, y = task.x_test, task.y_test
    adv = _ifgsm_by_hand(source.model, x, y, 0.2)
    with torch.no_grad():
        ok = (target.model(x).argmax(1) == y) & (target.model(adv).argmax(1) == y)
    assert rows[(SOURCE_MODE, "I-FGSM-10", 0.2)] == pytest.approx(float(ok.double().mean()))
    # at ε = 0 nothing is crafted: the clean accuracy, as white-box
    assert rows[(SOURCE_MODE, "I-FGSM-10", 0.0)] == rows[("white-box", "I-FGSM-10", 0.0)]
    # the white-box examples (crafted on the target itself) differ from the transferred ones
    own = _ifgsm_by_hand(target.model, x, y, 0.2)
    with torch.no_grad():
        ok_own = (target.model(x).argmax(1) == y) & (target.model(own).argmax(1) == y)
    assert rows[("white-box", "I-FGSM-10", 0.2)] == pytest.approx(float(ok_own.double().mean()))


def test_a_source_identical_to_the_target_gives_the_white_box_value(tmp_path):
    """A deterministic attack (I-FGSM) crafted on a copy of the target: same examples."""
    task = _task()
    target = _ffw(0)
    twin = SweepModel(frozen(FFW(16, 8, 1, 3)), "ffw", 1, 8, 64, 5)
    twin.model.load_state_dict(target.model.state_dict())
    res = run_attacks(_spec(attacks="ifgsm"), [target], task, tmp_path / "out", progress=False,
                      plots=False, sources={target.model_id: twin})
    by_mode = {r["mode"]: r["value"] for r in res.rows if r["x"] == 0.2}
    assert by_mode[SOURCE_MODE] == by_mode["white-box"] < 1.0


def test_without_sources_nothing_changes():
    """Runs without sources keep their cells and keys; the unset field keeps the spec's
    identity (default run directories, resumes)."""
    spec = _spec()
    members = [_ffw(0), _ffw(1)]
    keys = [c.key for c in plan(spec, members)]
    assert keys == [c.key for c in plan(spec, members, {})]
    assert all(SOURCE_MODE not in k for k in keys)
    with_src = plan(spec, members, {members[0].model_id: members[1]})
    assert [c.key for c in with_src if c.mode != SOURCE_MODE] == keys
    assert {c.member.model_id for c in with_src if c.mode == SOURCE_MODE} == {
        members[0].model_id}
    assert "transfer_from" not in spec_identity(spec)
    named = _spec(transfer_from="none")
    assert spec_identity(named)["transfer_from"] == "none"
    assert spec_hash(named) != spec_hash(spec)


def test_a_source_for_a_model_not_in_the_run_is_refused_before_writing(tmp_path):
    a, b = _ffw(0), _ffw(1)
    with pytest.raises(NoisyDEQError, match="not a model of the run"):
        run_attacks(_spec(), [a], _task(), tmp_path / "out", progress=False, plots=False,
                    sources={b.model_id: a})
    assert not (tmp_path / "out").exists()


def test_transfer_sources_pairs_each_model_with_its_twin():
    from noisydeq.analysis.adversarial_experiment import transfer_sources

    members = [SimpleNamespace(model_id=i) for i in ("d-none-0", "d-x-0", "d-z-0", "d-x-1",
                                                      "f-none-0", "f-z-0")]
    info = {"d-none-0": ("deq", "pgd", "none", 0), "d-x-0": ("deq", "pgd", "x-0db", 0),
            "d-z-0": ("deq", "pgd", "z-0db", 0), "d-x-1": ("deq", "pgd", "x-0db", 1),
            "f-none-0": ("ffw", "pgd", "none", 0), "f-z-0": ("ffw", "pgd", "z-0db", 0)}
    info = {k: {"kind": v[0], "depth": 1, "method": v[1], "defence": v[2], "seed": v[3]}
            for k, v in info.items()}
    got = transfer_sources(_spec(transfer_from="none"), members, info)
    assert {k: v.model_id for k, v in got.items()} == {
        "d-x-0": "d-none-0", "d-z-0": "d-none-0", "f-z-0": "f-none-0"}  # seed 1 has no twin
    assert transfer_sources(_spec(), members, info) == {}


def test_noisydeq_attack_refuses_transfer_from_in_one_line(tmp_path, capsys):
    """A family has no training defences to name: refused before the family is read."""
    from tests.cli_helpers import one_line_error, run_cli

    code, _, err = run_cli(["attack", "--family", str(tmp_path / "nope"), "--set",
                            "transfer_from=none", "--out", str(tmp_path / "x")], capsys)
    one_line_error(code, err, "transfer_from names a training defence")
    assert not (tmp_path / "x").exists()


def test_square_and_noise_attacks_have_one_cell_whatever_the_estimators(tmp_path):
    """Square only queries the model: one cell per point (estimator ``none``, the model's own
    cold forward), not one per DEQ gradient estimator under other seeds; its value does not
    depend on which estimators the grid lists. The noise attacks likewise; PGD keeps a cell
    per estimator."""
    pytest.importorskip("torchattacks")
    from tests.attacks.helpers import small_deq

    task = _task()
    member = SweepModel(small_deq(dtype=torch.float32), "deq", 1, 12, 0, 0)
    values = {}
    for ests in ("exact,phantom", "phantom"):
        spec = _spec(attacks="square,speckle,ifgsm", eps="0.3", sigma="0.5",
                     estimators=ests, queries=30)
        cells = plan(spec, [member])
        by_attack = {}
        for c in cells:
            by_attack.setdefault(c.point.attack.name, []).append(c.estimator)
        assert by_attack["square"] == [None] and by_attack["speckle"] == [None]
        assert len(by_attack["ifgsm"]) == len(ests.split(","))
        res = run_attacks(spec, [member], task, tmp_path / ests, progress=False, plots=False)
        sq = [r for r in res.rows if r["attack_name"] == "square"]
        assert {r["estimator"] for r in sq} == {"none"}
        values[ests] = [(r["defence"], r["value"]) for r in sq]
    assert values["exact,phantom"] == values["phantom"]
    # transfer: Square crafted on the noise-free model too, once
    spec = _spec(attacks="square,speckle", eps="0.3", sigma="0.5", estimators="exact,phantom",
                 transfer=True, snr_db="0")
    modes = [(c.mode, c.point.attack.name, c.estimator) for c in plan(spec, [member])]
    assert modes.count(("transfer", "square", None)) == 1
    assert ("transfer", "speckle", None) not in modes
