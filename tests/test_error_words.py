"""Spec errors in the project's words (pydantic's "Input should be …" translated once, in
specs.base), named by the option that set the key, and the bad inputs the command-tree
audit found accepted (h-badin2): each is one line, before any work."""

from __future__ import annotations

from typing import Literal

import pytest
from pydantic import Field

from noisydeq.cli import main
from noisydeq.errors import NoisyDEQError
from noisydeq.specs.base import StrictModel, build


class _Spec(StrictModel):
    count: int = Field(default=1, ge=1, le=10)
    rate: float = Field(default=0.5, gt=0.0, le=1.0)
    mode: Literal["fast", "slow"] = "fast"
    name: str = "x"
    seeds: list[int] = Field(default_factory=list)


@pytest.mark.parametrize("data,expected", [
    ({"count": 0}, "count: must be ≥ 1, got 0 (allowed: 1 ≤ value ≤ 10)"),
    ({"count": 11}, "count: must be ≤ 10, got 11 (allowed: 1 ≤ value ≤ 10)"),
    ({"count": "many"}, 'count: must be an integer, got "many" (allowed: 1 ≤ value ≤ 10)'),
    ({"count": 1.5}, "count: must be an integer, got 1.5"),
    ({"rate": -1.0}, "rate: must be > 0, got -1.0 (allowed: finite, 0 < value ≤ 1)"),
    ({"rate": float("nan")}, "rate: must be a finite number, got nan (allowed: finite, 0 < "),
    ({"rate": "x"}, 'rate: must be a number, got "x"'),
    ({"mode": "fsat"}, "mode: unknown value 'fsat'; did you mean 'fast'? (allowed: fast, slow)"),
    ({"name": 3}, "name: must be a string, got 3"),
    ({"seeds": [1, "q"]}, 'seeds.1: must be an integer, got "q"'),
])
def test_pydantic_errors_are_in_the_project_s_words(data, expected):
    with pytest.raises(NoisyDEQError) as err:
        build(_Spec, data, where="here")
    msg = str(err.value)
    assert msg.startswith(f"here: {expected}"), msg
    assert "Input should" not in msg and "validation error" not in msg and "\n" not in msg


def test_a_key_is_named_by_the_option_that_set_it():
    with pytest.raises(NoisyDEQError, match=r"^cmd: --count: must be ≥ 1, got 0"):
        build(_Spec, {"count": 0}, where="cmd", names={"count": "--count"})
    from noisydeq.specs.training import TrainSpec

    with pytest.raises(NoisyDEQError, match=r"--ibp-eps: must be > 0, got -1"):  # a key path
        TrainSpec.preset("quick", "ffw", _names={"ibp.eps": "--ibp-eps"}, ibp={"eps": -1.0})
    from noisydeq.specs.attack_run import AttackRunSpec

    with pytest.raises(NoisyDEQError, match=r"^attack: --steps-eps: 2"):  # a model-level check
        build(AttackRunSpec, {"family": "f", "steps_eps": 2.0}, where="attack",
              names={"steps_eps": "--steps-eps"})


def _one_line(argv, tmp_path, monkeypatch, capsys) -> str:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NOISYDEQ_CACHE", str(tmp_path / "cache"))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    out, err = capsys.readouterr()
    assert exit_.value.code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("noisydeq: error: "), err
    assert not any(tmp_path.iterdir()), "nothing is written"
    return lines[0]


@pytest.mark.parametrize("argv,needle", [
    # were ignored without --family: the Fig. 4 work ran and the command exited 0
    (["solvers", "--depth", "3"], "--depth: choose the DEQ of a --family"),
    (["solvers", "--member-seed", "1", "--member-train-snr", "abc"],
     "--member-seed/--member-train-snr: choose the DEQ of a --family"),
    (["solvers", "--family", "{d}", "--depth", "0"], "--depth: must be a positive integer"),
    (["solvers", "--family", "{d}", "--member-train-snr", "0,10"], "one value, got '0,10'"),
    # was ignored without --tracker
    (["--tracker-dir", "tb", "devices"], "--tracker-dir: needs --tracker"),
    # was checked only after the family loaded (after a missing family's message)
    (["spectrum", "--family", "{d}/none", "--device-snr", "inf"],
     "Invalid value for '--device-snr': give a finite SNR in dB"),
    # seeds are 0 … 2^63 − 1 everywhere (lyapunov ran a negative one)
    (["lyapunov", "lyapunov-table1", "--seeds", "0,-1"], "--seeds: seed -1 is outside"),
    (["sweep", "--seed", "-2"], "--seed: seed -2 is outside 0..2^63-1"),
    # the one-line errors name the option (they said "threads '0'", "certify: n_test: Input
    # should be greater than or equal to 1", "--optimizer: gamma: …")
    (["sweep", "--threads", "0"], "--threads '0': expected auto, N"),
    (["sweep", "--jobs", "x"], "--jobs 'x': expected auto"),
    (["certify", "{d}", "--inputs", "0"], "certify: --inputs: must be ≥ 1, got 0"),
    # the older spelling is the same option, named by its documented spelling
    (["certify", "{d}", "--n-test", "0"], "certify: --inputs: must be ≥ 1, got 0"),
    (["train", "--lr", "-1"], "train preset 'quick': --lr: must be > 0, got -1.0"),
    (["train", "--lr-gamma", "2"], "train: --lr-gamma: must be ≤ 1, got 2.0"),
    (["sweep", "--chips", "20000"], "sweep: --chips: must be ≤ 10000, got 20000"),
    # a typo of a choice gets the project's suggestion
    (["sweep", "--noise-site", "sigal"], "; did you mean 'signal'?"),
])
def test_bad_inputs_found_by_the_audit_are_one_line(argv, needle, tmp_path, monkeypatch,
                                                    capsys):
    d = tmp_path / "in"
    d.mkdir()
    line = _one_line([a.replace("{d}", str(d)) for a in argv], d, monkeypatch, capsys)
    assert needle in line, line


@pytest.mark.parametrize("spec,data", [
    ("noisydeq.specs.study:StudySpec", {"task": "prefix_sums", "models": {
        "deq": {"kind": "deq", "cell": "conv1d"}}, "seeds": [-1]}),
    ("noisydeq.specs.certify:CertifyExperimentSpec", {"name": "x", "seeds": [-1]}),
    ("noisydeq.analysis.adversarial_experiment:GridSpec", {"seeds": [-1]}),
])
def test_negative_seeds_are_refused_in_experiment_files(spec, data):
    """A study, certify or adversarial file's seeds are 0 … 2^63 − 1 as a sweep's (a
    negative one trained)."""
    import importlib

    module, name = spec.split(":")
    model = getattr(importlib.import_module(module), name)
    with pytest.raises(NoisyDEQError, match=r"seeds.0: must be ≥ 0, got -1 \(allowed: 0 ≤ "):
        build(model, data)


def test_a_spec_built_in_python_is_one_line_too():
    """``SweepSpec(noise_mode="dynamc")`` in a notebook said pydantic's three-line report
    ("1 validation error for SweepSpec … For further information visit …"): the direct
    constructor and an assignment now say what ``build`` says, with the spec's name."""
    from noisydeq.config import ModelSpec, SweepSpec

    cases = [(lambda: SweepSpec(noise_mode="dynamc"),
              "SweepSpec: noise_mode: unknown value 'dynamc'; did you mean 'dynamic'?"),
             (lambda: SweepSpec(snr=[0, 10]),
              "SweepSpec: unknown key 'snr'; did you mean 'snr_db'?"),
             (lambda: ModelSpec(kind="deqq", in_features=4, out_features=2),
              "ModelSpec: kind: unknown value 'deqq'; did you mean 'deq'?"),
             (lambda: setattr(SweepSpec(), "chips", 0), "SweepSpec: chips: must be ≥ 1, got 0")]
    for make, start in cases:
        with pytest.raises(NoisyDEQError) as err:
            make()
        msg = str(err.value)
        assert msg.startswith(start), msg
        assert "Input should" not in msg and "validation error" not in msg and "\n" not in msg
    spec = SweepSpec(chips=2)
    spec.chips = 4  # a good value is assigned as before
    assert spec.chips == 4 and SweepSpec(chips=4) == spec
    # validation (a file's table, a nested spec) keeps its place and option names
    with pytest.raises(NoisyDEQError, match=r"^\[sweep\]: chips: must be ≥ 1"):
        build(SweepSpec, {"chips": 0}, where="[sweep]")
