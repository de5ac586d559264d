"""Every experiment file kind shares :class:`noisydeq.specs.variant_file.VariantFile`'s
fields and checks: a plain ``name`` (it names the default run directory, so a path in it
would write outside ``runs/``) and both variants validated when the file is loaded."""

from __future__ import annotations

import pytest

from noisydeq.analysis.adversarial_experiment import AdversarialExperimentSpec
from noisydeq.analysis.lyapunov_experiment import LyapunovExperimentSpec
from noisydeq.bundled import bundled_experiments, command_for
from noisydeq.certify.spec import CertifyExperimentSpec
from noisydeq.errors import NoisyDEQError
from noisydeq.specs.base import build
from noisydeq.specs.experiment import ExperimentSpec
from noisydeq.specs.toml import tomllib
from noisydeq.specs.variant_file import plain_name
from noisydeq.store import read_text
from noisydeq.studies import StudyFile

SPEC_OF = {"run": ExperimentSpec, "study": StudyFile, "adversarial": AdversarialExperimentSpec,
           "certify": CertifyExperimentSpec, "lyapunov": LyapunovExperimentSpec}


def _bundled() -> list[tuple[str, type, dict]]:
    out = []
    for b in bundled_experiments():
        data = tomllib.loads(read_text(b.path, "file"))
        spec = SPEC_OF.get(command_for(data) or "")
        if spec is not None:
            out.append((b.name, spec, data))
    return out


BUNDLED = _bundled()


def test_every_kind_is_bundled():
    assert {spec for _, spec, _ in BUNDLED} == set(SPEC_OF.values())


@pytest.mark.parametrize("name,spec,data", BUNDLED, ids=[n for n, _, _ in BUNDLED])
def test_bundled_file_loads(name, spec, data):
    assert build(spec, data, where=name).name == data["name"]


@pytest.mark.parametrize("bad", ["../escape", "a/b", "..", ".hidden", "", "x" * 101])
@pytest.mark.parametrize("name,spec,data", BUNDLED, ids=[n for n, _, _ in BUNDLED])
def test_name_with_a_path_is_refused_in_one_line(name, spec, data, bad):
    with pytest.raises(NoisyDEQError) as err:
        build(spec, {**data, "name": bad}, where=name)
    assert "not a plain name" in str(err.value) and "\n" not in str(err.value)


def test_plain_name_accepts_the_bundled_names():
    for _, _, data in BUNDLED:
        assert plain_name(data["name"]) == data["name"]


@pytest.mark.parametrize("spec,data,where", [
    (ExperimentSpec, {"name": "x", "sweep": {}, "quick": {"epochs": -1}}, "[quick]"),
    (StudyFile, None, "[full]"),
    (CertifyExperimentSpec, {"name": "x", "full": {"certify": {"no_such_field": 1}}},
     "[full.certify]"),
])
def test_a_bad_variant_is_refused_at_load(spec, data, where):
    if data is None:  # a study file: break its full variant
        _, _, base = next(b for b in BUNDLED if b[1] is StudyFile)
        data = {**base, "full": {"no_such_field": 1}}
    with pytest.raises(NoisyDEQError) as err:
        build(spec, data, where="file")
    assert where in str(err.value)


def test_an_error_names_the_table_its_key_was_written_in():
    """A misspelt key of an experiment file's base table is reported there, not under the
    variant merged over it; a study's ``--set`` typo is reported as ``--set``."""
    with pytest.raises(NoisyDEQError) as err:
        build(ExperimentSpec, {"name": "x", "sweep": {"devise": "snr"}, "quick": {"epochs": 1}})
    assert "[sweep]: unknown key 'devise'; did you mean 'device'?" in str(err.value)
    assert "[quick]" not in str(err.value)
    with pytest.raises(NoisyDEQError) as err:
        build(ExperimentSpec, {"name": "x", "sweep": {"device": "snr"}, "quick": {"epoch": 1}})
    assert "[quick]: unknown key 'epoch'" in str(err.value)
    with pytest.raises(NoisyDEQError) as err:  # one of each: both places named
        build(ExperimentSpec, {"name": "x", "sweep": {"devise": "snr"}, "quick": {"epochs": -1}})
    assert "[sweep]: unknown key 'devise'" in str(err.value)
    assert "[quick]: epochs:" in str(err.value)
    _, _, base = next(b for b in BUNDLED if b[1] is StudyFile)
    study = build(StudyFile, base)
    with pytest.raises(NoisyDEQError) as err:
        study.resolve("quick", {"seedz": [0]})
    assert str(err.value).startswith("[quick] --set: unknown key 'seedz'; did you mean 'seeds'?")
    with pytest.raises(NoisyDEQError) as err:
        build(StudyFile, {**base, "study": {**base["study"], "seedz": [0]}})
    assert "[study]: unknown key 'seedz'" in str(err.value)


def test_a_certify_or_adversarial_error_names_the_table_its_key_was_written_in():
    """certify's nested tables were all labelled '[quick] certify' (and twice: '[quick]:
    [quick] certify'); an adversarial grid's base table and --set were '[quick.grid]'."""
    base = {"name": "x", "certify": {"eps": [0.1]}, "quick": {"certify": {"n_test": 10}}}
    for data, place, key in [
            ({**base, "certify": {"eps": [0.1], "pgd_restartz": 1}}, "[certify]", "pgd_restartz"),
            ({**base, "quick": {"certify": {"n_tset": 1}}}, "[quick.certify]", "n_tset"),
            ({**base, "full": {"certify": {"n_tset": 1}}}, "[full.certify]", "n_tset"),
            ({"name": "x", "kind": "fig2", "fig2": {"widht": 1}}, "[fig2]", "widht")]:
        with pytest.raises(NoisyDEQError) as err:
            build(CertifyExperimentSpec, data)
        assert str(err.value).startswith(f"{place}: unknown key '{key}'"), str(err.value)
    exp = build(CertifyExperimentSpec, base)
    assert exp.section("quick", {"pgd_steps": 3}).model_dump() == {
        **exp.section("quick").model_dump(), "pgd_steps": 3}
    with pytest.raises(NoisyDEQError) as err:  # the command line's options: named so
        exp.section("quick", {"n_test": 0})
    assert str(err.value).startswith("command line: n_test: must be ≥ 1, got 0")
    _, _, adv = next(b for b in BUNDLED if b[1] is AdversarialExperimentSpec)
    with pytest.raises(NoisyDEQError) as err:
        build(AdversarialExperimentSpec, {**adv, "grid": {**adv.get("grid", {}), "seedz": [0]}})
    assert "[grid]: unknown key 'seedz'; did you mean 'seeds'?" in str(err.value)
    with pytest.raises(NoisyDEQError) as err:
        build(AdversarialExperimentSpec, {**adv, "quick": {"grid": {"seedz": [0]}}})
    assert "[quick.grid]: unknown key 'seedz'" in str(err.value)
    with pytest.raises(NoisyDEQError) as err:
        build(AdversarialExperimentSpec, adv).resolve("quick", grid={"seedz": [0]})
    assert str(err.value).startswith("--set grid: unknown key 'seedz'")


def test_a_single_model_kind_where_a_list_or_another_key_is_wanted_is_one_table_named_line():
    """A study model's ``kind`` is one name, a sweep's / adversarial grid's ``kinds`` a list:
    writing the one for the other (or an unknown kind) is one line naming the table and the
    key in the project's words (pydantic said ``kind: Input should be 'deq' or 'ffw'`` and
    ``kinds: Input should be a valid list``)."""
    _, _, base = next(b for b in BUNDLED if b[1] is StudyFile)
    model = dict(base["study"]["models"]["deq"])
    cases = [
        ({**model, "kind": ["deq", "ffw"]},
         "[study]: models.deq.kind: one model kind per model, 'deq' or 'ffw' (got the list "
         "['deq', 'ffw']); each model of a study is its own [study.models.NAME] table"),
        ({**model, "kind": "dqe"},
         "[study]: models.deq.kind: unknown model kind 'dqe'; did you mean 'deq'? "
         "(allowed: deq, ffw)"),
        ({k: v for k, v in model.items() if k != "kind"} | {"kinds": "deq"},
         "[study]: models.deq: unknown key 'kinds'; did you mean 'kind'?"),
    ]
    for bad, message in cases:
        study = {**base["study"], "models": {**base["study"]["models"], "deq": bad}}
        with pytest.raises(NoisyDEQError) as err:
            build(StudyFile, {**base, "study": study}, where="s.toml")
        assert str(err.value) == f"s.toml: {message}"
    with pytest.raises(NoisyDEQError) as err:
        build(ExperimentSpec, {"name": "x", "sweep": {"kinds": "deq"}}, where="x.toml")
    assert str(err.value) == ("x.toml: [sweep]: kinds: a list of model kinds, "
                              """e.g. kinds = ["deq"] (got 'deq')""")
    _, _, adv = next(b for b in BUNDLED if b[1] is AdversarialExperimentSpec)
    with pytest.raises(NoisyDEQError) as err:
        build(AdversarialExperimentSpec, {**adv, "grid": {**adv["grid"], "kinds": 3}})
    assert str(err.value).startswith(
        """[grid]: kinds: a list of model kinds, e.g. kinds = ["deq", "ffw"] (got 3)""")


def test_one_value_where_a_list_is_wanted_is_one_line_showing_the_list():
    """``seeds = 1`` (or any list-valued key of an experiment table given one value) says
    how to write the list, the value in it when it fits, else the key's default (pydantic
    said ``seeds: Input should be a valid list`` for every such key)."""
    _, _, study = next(b for b in BUNDLED if b[1] is StudyFile)
    _, _, adv = next(b for b in BUNDLED if b[1] is AdversarialExperimentSpec)
    cases = [
        (ExperimentSpec, {"name": "x", "sweep": {"seeds": 1}},
         "[sweep]: seeds: a list, e.g. seeds = [1] (got 1)"),
        (ExperimentSpec, {"name": "x", "sweep": {"seeds": "x"}},
         "[sweep]: seeds: a list, e.g. seeds = [0] (got 'x')"),
        (StudyFile, {**study, "study": {**study["study"], "budgets": "scaled"}},
         '[study]: budgets: a list, e.g. budgets = ["scaled"] (got \'scaled\')'),
        (StudyFile, {**study, "study": {**study["study"], "seeds": {"a": 1}}},
         "[study]: seeds: a list, e.g. seeds = [0] (got {'a': 1})"),
        (CertifyExperimentSpec, {"name": "x", "seeds": 2},
         "seeds: a list, e.g. seeds = [2] (got 2)"),
        (CertifyExperimentSpec, {"name": "x", "params": "mon"},
         'params: a list, e.g. params = ["mon"] (got \'mon\')'),
    ]
    for spec, data, message in cases:
        with pytest.raises(NoisyDEQError) as err:
            build(spec, data, where="f.toml")
        assert str(err.value) == f"f.toml: {message}"
    with pytest.raises(NoisyDEQError) as err:  # a table of the adversarial file
        build(AdversarialExperimentSpec, {**adv, "grid": {**adv.get("grid", {}), "seeds": 3}})
    assert str(err.value).startswith("[grid]: seeds: a list, e.g. seeds = [3] (got 3)")
    with pytest.raises(NoisyDEQError) as err:  # a certify section, checked at load
        build(CertifyExperimentSpec, {"name": "x", "kind": "fig2", "fig2": {"alpha": 0.5}})
    assert str(err.value).startswith("[fig2]: alpha: a list, e.g. alpha = [0.5] (got 0.5)")


def test_a_certify_file_error_names_the_file_and_the_table():
    """A bad key of a certify file's ``family``, ``train`` or ``ibp`` table (or its variant's)
    is refused when the file loads, naming the file and the table the key was written in,
    as sweep/study/adversarial files do (it said ``certify-mnist family: unknown key …``,
    and only after the data loaded; a bad ``train``/``ibp`` key waited for the data)."""
    from noisydeq.specs.toml import loads_toml

    path = next(b.path for b in bundled_experiments() if b.name == "certify-mnist")
    text = read_text(path, "file")
    for old, new, message in [
            ("hidden = 128", "hiden = 128",
             "[family]: unknown key 'hiden'; did you mean 'hidden'?"),
            ("lr = 5e-4", "lrr = 5e-4", "[train]: unknown key 'lrr'; did you mean 'lr'?"),
            ("kappa = 0.0", "kappa = 2.0", "[ibp]: kappa: must be ≤ 1, got 2.0"),
            ("train = { epochs = 10 }", "train = { epochz = 10 }",
             "[quick.train]: unknown key 'epochz'; did you mean 'epochs'?"),
            ("family = { hidden = 64 }", "family = { hidden = 0 }",
             "[quick.family]: hidden: must be ≥ 1, got 0")]:
        assert old in text
        with pytest.raises(NoisyDEQError) as err:
            loads_toml(CertifyExperimentSpec, text.replace(old, new, 1), where="my.toml")
        assert str(err.value).startswith(f"my.toml: {message}"), str(err.value)
        assert "certify-mnist" not in str(err.value)
