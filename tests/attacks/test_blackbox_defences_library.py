"""Black-box noise strengths, defences, white-box robustness and the torchattacks wrappers."""

from __future__ import annotations

import builtins

import pytest
import torch

from noisydeq.attacks import (
    AttackSpec,
    EstimatorSpec,
    craft,
    defended_correct,
    library,
    make_estimator,
    parse_defence,
    parse_estimator,
    record_states,
    salt_and_pepper,
    select_early_state,
    speckle,
    white_box,
)
from noisydeq.attacks.trajectory import predict
from noisydeq.config import SolverSpec
from noisydeq.errors import NoisyDEQError
from tests.attacks.helpers import small_deq, small_ffw


def test_speckle_and_salt_and_pepper_match_their_definitions() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.full((400, 250), 0.5, dtype=torch.float64)
    n = (speckle(x, 0.2, g, box=None) - x) / x  # x' = x + x·n
    assert abs(float(n.mean())) < 3e-3 and abs(float(n.std()) - 0.2) < 3e-3
    assert float(speckle(x, 3.0, g).min()) >= 0.0 and float(speckle(x, 3.0, g).max()) <= 1.0
    assert torch.equal(speckle(x, 0.0, g), x)
    sp = salt_and_pepper(x, 0.3, g)
    hit = sp != 0.5
    assert abs(float(hit.double().mean()) - 0.3) < 5e-3
    assert abs(float((sp[hit] == 1.0).double().mean()) - 0.5) < 1e-2
    assert set(sp[hit].unique().tolist()) <= {0.0, 1.0}
    with pytest.raises(NoisyDEQError, match="fraction"):
        salt_and_pepper(x, 1.5, g)
    with pytest.raises(NoisyDEQError, match="sigma"):
        speckle(x, -1.0, g)


def test_attack_draws_are_counter_based_per_sample() -> None:
    """Speckle, salt-and-pepper, PGD's random start and the model noise EOT averages over
    draw each sample's numbers from (seed, its row, its draw count): a sample gets the same
    corruption and the same noise whatever else is in the batch, and every further draw
    (an EOT sample, a PGD step) is fresh."""
    from noisydeq.attacks.hardware import make_level
    from noisydeq.attacks.norms import random_start
    from noisydeq.noise import NoiseStream

    x = torch.rand(40, 16, dtype=torch.float64)
    y = torch.randint(0, 3, (40,))
    kw = dict(seed=7, in_shape=(1, 4, 4), n_classes=3)
    for name, eps in (("speckle", 0.5), ("salt-pepper", 0.2)):
        spec = AttackSpec(name=name, eps=eps)
        full, part = craft(spec, None, None, x, y, **kw), craft(spec, None, None, x[:24], y, **kw)
        assert torch.equal(full[:24], part) and not torch.equal(full, x)
        assert not torch.equal(full, craft(spec, None, None, x, y, **{**kw, "seed": 8}))
    for norm in ("linf", "l2"):
        a = random_start(x, 0.3, norm, NoiseStream.from_seed(3))
        assert torch.equal(a[:24], random_start(x[:24], 0.3, norm, NoiseStream.from_seed(3)))
    m = small_deq(SolverSpec(name="unroll", max_iter=30, tol=1e-8, stop="abs"))
    lvl = make_level(m, device="ideal", noise_site="signal", snr_db=10.0, chip=0, seed=0,
                     calib_x=None)
    lvl.reseed(5)
    first, second = m(x, lvl.noise), m(x, lvl.noise)  # two EOT draws
    assert not torch.allclose(first, second)
    lvl.reseed(5)
    assert torch.allclose(m(x[:24], lvl.noise), first[:24], atol=1e-12, rtol=0)


def test_defences_predict_with_the_states_they_name() -> None:
    m = small_deq(SolverSpec(name="unroll", max_iter=9, tol=1e-12, stop="abs"))
    x, y = torch.rand(10, 16, dtype=torch.float64), torch.randint(0, 3, (10,))
    st = record_states(m, x)
    ok = defended_correct(m, x, y, [parse_defence("final"), parse_defence("early:n=2"),
                                    parse_defence("ensemble")])
    assert torch.equal(ok["final"], predict(m, st.solution.z).argmax(1) == y)
    assert torch.equal(ok["early(z2)"], predict(m, st.at(2)).argmax(1) == y)
    assert torch.equal(ok["ensemble"], predict(m, st.mean()).argmax(1) == y)
    f = small_ffw()
    xf, yf = torch.rand(5, 64), torch.randint(0, 10, (5,))
    assert set(defended_correct(f, xf, yf, [parse_defence("final")])) == {"final"}


def test_early_state_is_chosen_by_robust_then_clean_accuracy() -> None:
    m = small_deq(SolverSpec(name="unroll", max_iter=6, tol=1e-12, stop="abs"))
    x, y = torch.rand(20, 16, dtype=torch.float64), torch.randint(0, 3, (20,))
    n, rec = select_early_state(m, x, x, y)
    best = max(r["robust"] for r in rec)
    assert rec[n - 1]["robust"] == best
    assert [r["n"] for r in rec] == list(range(1, len(rec) + 1))


def test_white_box_is_max_over_defences_of_min_over_attacks() -> None:
    table = [("final", "a", 0.5), ("final", "b", 0.1), ("early", "a", 0.3), ("early", "b", 0.2)]
    value, which, worst = white_box(table)
    assert (value, which) == (0.2, "early") and worst == {"final": 0.1, "early": 0.2}


@pytest.mark.parametrize("name", ["aa", "aa-rand", "apgd-ce", "apgd-t", "fab", "square"])
def test_torchattacks_attacks_run_and_stay_in_the_ball(name: str) -> None:
    pytest.importorskip("torchattacks")
    m = small_ffw()
    torch.manual_seed(0)
    x, y = torch.rand(6, 64), torch.randint(0, 10, (6,))
    spec = AttackSpec(name=name, eps=0.2, steps=5, queries=50)
    est = make_estimator(m, EstimatorSpec(name="backprop"))
    adv = craft(spec, est, m, x, y, seed=0, in_shape=(1, 8, 8), n_classes=10)
    assert adv.shape == x.shape
    assert float((adv - x).abs().max()) <= 0.2 + 1e-6
    assert float(adv.min()) >= 0 and float(adv.max()) <= 1
    with torch.no_grad():
        clean = float((m(x).argmax(1) == y).double().mean())
        robust = float((m(adv).argmax(1) == y).double().mean())
    assert robust <= clean


def test_autoattack_follows_a_deq_estimator() -> None:
    pytest.importorskip("torchattacks")
    m = small_deq(dtype=torch.float32, in_features=64, classes=10)
    x, y = torch.rand(4, 64), torch.randint(0, 10, (4,))
    est = make_estimator(m, EstimatorSpec(name="phantom"))
    assert not m.training
    adv = craft(AttackSpec(name="apgd-ce", eps=0.1, steps=3), est, m, x, y, seed=0,
                in_shape=(1, 8, 8), n_classes=10)
    assert float((adv - x).abs().max()) <= 0.1 + 1e-6
    assert not m.training  # the DEQ keeps its test solver after a torchattacks attack


def test_missing_torchattacks_is_one_line_with_the_install_command(monkeypatch) -> None:
    real_import = builtins.__import__

    def fake(name, *args, **kwargs):
        if name == "torchattacks":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(NoisyDEQError, match="pip install --no-deps torchattacks==3.5.1"):
        library.torchattacks()


def test_attack_spec_bad_values_are_one_line() -> None:
    from noisydeq.attacks.spec import check_attack_name, check_norm
    from noisydeq.config import build

    with pytest.raises(NoisyDEQError, match="eps"):
        build(AttackSpec, {"eps": 1.5}, where="attack")
    with pytest.raises(NoisyDEQError, match="eps"):
        build(AttackSpec, {"eps": -0.1}, where="attack")
    with pytest.raises(NoisyDEQError, match="steps"):
        build(AttackSpec, {"steps": 0}, where="attack")
    with pytest.raises(NoisyDEQError, match="did you mean 'pgd'"):
        check_attack_name("pdg")
    with pytest.raises(NoisyDEQError, match="allowed: linf, l2"):
        check_norm("l3")
    assert check_norm("Linf") == "linf" and check_norm("L2") == "l2"
    with pytest.raises(NoisyDEQError, match="did you mean 'ensemble'"):
        parse_defence("ensemb")
    assert build(AttackSpec, {"name": "speckle", "eps": 2.0}, where="attack").eps == 2.0
    assert build(AttackSpec, {"norm": "l2", "eps": 3.0}, where="attack").eps == 3.0


@pytest.mark.parametrize("eot", [1, 3, 25])
def test_recorded_draws_are_the_ones_torchattacks_averages(eot: int) -> None:
    """The table's ``eot`` (AttackSpec.draws) is the EOT torchattacks' APGD parts run with:
    AA-rand at least 20 whatever ``--eot`` says, AA standard and APGD the grid's; FAB has no
    EOT (one draw per gradient), Square no gradient; the correction is idempotent, so old
    cells' rows (the grid's eot for every gradient attack) load with the same numbers."""
    ta = pytest.importorskip("torchattacks")
    from noisydeq.attacks.spec import LIBRARY_ATTACKS, draws

    m = small_ffw()
    expect = {"aa-rand": max(20, eot), "aa": eot, "apgd-ce": eot, "apgd-t": eot, "fab": 1,
              "square": 0, "pgd": eot, "ifgsm": eot, "speckle": 0, "salt-pepper": 0}
    for name, n in expect.items():
        spec = AttackSpec(name=name, eps=0.1, eot=eot)
        assert spec.draws == n == draws(name, n) == draws(name, draws(name, eot)), name
        if name not in LIBRARY_ATTACKS:
            continue
        attack = library.build_attack(m, spec, 10, seed=0)
        parts = attack.attacks if isinstance(attack, ta.MultiAttack) else [attack]
        apgd = [p for p in parts if isinstance(p, (ta.APGD, ta.APGDT))]
        assert bool(apgd) == (name in ("aa", "aa-rand", "apgd-ce", "apgd-t"))
        assert all(p.eot_iter == n for p in apgd), name


def test_square_queries_the_models_cold_forward_whatever_the_estimator() -> None:
    """Square (alone, and as AutoAttack's last part) queries the DEQ's own forward solved from
    z⁰ = 0: a warm-started estimator (each solve from the previous query's fixed point) or an
    unrolled one hands it the same examples as the cold forward; AA's gradient parts keep the
    estimator."""
    pytest.importorskip("torchattacks")
    from noisydeq.attacks.estimators import AttackModule, query_view

    m = small_deq(dtype=torch.float32, in_features=64, classes=10, scale=0.9)
    torch.manual_seed(1)
    x, y = torch.rand(8, 64), torch.randint(0, 10, (8,))
    kw = dict(seed=3, in_shape=(1, 8, 8), n_classes=10)
    spec = AttackSpec(name="square", eps=0.3, queries=40)
    cold = craft(spec, make_estimator(m, EstimatorSpec(name="backprop", warm=False)), m, x, y,
                 **kw)
    for e in ("exact", "phantom", "unrolled:state=1,k=1,lam=1"):
        est = make_estimator(m, parse_estimator(e))
        assert torch.equal(craft(spec, est, m, x, y, **kw), cold), e
    est = make_estimator(m, EstimatorSpec(name="phantom"))
    module, query = AttackModule(est, m), query_view(est, m)
    aa = library.build_attack(module, AttackSpec(name="aa", eps=0.1), 10, 0, query)
    assert [a.model for a in aa.attacks] == [module, module, module, query]
    assert query.estimator.warm is False
