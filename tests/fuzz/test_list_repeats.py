"""A value given twice in a list option is refused in one line naming the option and the
value, for every comma-list option of every command (found by walking the click tree, as
tests/fuzz/test_click_tree.py does) and for the lists of an experiment file. It was
handled four ways: silently dropped (``--seed 0,0``, ``--depths 1,1``, ``--snr 0:30:5,10``,
``certify --eps 0.1,0.1``, ``--window 5,5``), computed twice (``attack --eps 0.1,0.1``,
``--steps``, ``--sigma``, ``--fraction``, ``--pgd-steps``), kept (``--solvers``) or refused
elsewhere. One shared check (``specs.base.refuse_repeats``: ``StrictModel.NO_REPEATS`` and
the grid parsers).
"""

from __future__ import annotations

import re

import click
import pytest

from tests.fuzz.cases import EXPERIMENT, LYAPUNOV_OK, STUDY
from tests.fuzz.test_click_tree import BASE, _commands, _numbers, run_exiting

#: list options whose default says nothing of their grammar (None, one name): a valid item
EXTRA = {
    ("sweep", "--train-device"): "rram", ("sweep", "--train-device-snr"): "10",
    ("sweep", "--digital-layers"): "head", ("train", "--depths"): "1",
    ("train", "--milestones"): "2", ("train", "--digital-layers"): "head",
    ("attack", "--estimators"): "exact", ("attack", "--defences"): "final",
    ("lyapunov", "--seeds"): "0",
}
#: what an option needs beside it to be read at all
NEEDS = {("train", "--digital-layers"): ["--device", "rram"]}
#: text options that take one value (a repeat is refused as a second value, naming them)
SINGLE = {("table", "--snr"), ("compare", "--snr"), ("sensitivity", "--snr"),
          ("train", "--train-snr")}


def _item(default: str) -> str:
    """A valid item of a list option from its default (``0:30`` → ``0``, ``deq,ffw`` →
    ``deq``)."""
    return default.split(",")[0].split(":")[0].strip()


def _cases() -> list[tuple[str, str, str]]:
    out = []
    for path, cmd in _commands():
        for p in cmd.params:
            if not isinstance(p, click.Option) or p.is_flag or p.multiple:
                continue
            d = p.default
            if (path, p.opts[0]) in EXTRA:
                out.append((path, p.opts[0], EXTRA[(path, p.opts[0])]))
            elif isinstance(p.type, click.types.StringParamType) and isinstance(d, str) and (
                    "," in d or _numbers(d)):
                out.append((path, p.opts[0], _item(d)))
    return out


CASES = _cases()


def _run(argv, d, monkeypatch, capsys):
    code, _, err = run_exiting(argv, d, monkeypatch, capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code not in (0, None) and len(lines) == 1, err
    assert lines[0].startswith("noisydeq: error: ") and "Traceback" not in err, err
    assert not (d / "out").exists() and not (d / "cache").exists()
    return lines[0]


def test_the_walk_finds_the_list_options():
    found = {(p, f) for p, f, _ in CASES}
    assert {("sweep", "--snr"), ("sweep", "--seed"), ("sweep", "--depths"),
            ("sweep", "--kinds"), ("certify", "--eps"), ("attack", "--eps"),
            ("attack", "--steps"), ("attack", "--attacks"), ("solvers", "--window"),
            ("solvers", "--solvers"), *EXTRA} <= found, found
    assert len(CASES) >= 30, len(CASES)


@pytest.mark.parametrize("path,flag,item", CASES,
                         ids=[f"{p} {f} {i},{i}" for p, f, i in CASES])
def test_a_value_given_twice_is_one_line_naming_option_and_value(path, flag, item, tmp_path,
                                                                 monkeypatch, capsys):
    base = [a.replace("{d}", str(tmp_path)) for a in BASE.get(path, [])]
    if flag in base:  # the base's own setting of this option is replaced
        base = base[:base.index(flag)] + base[base.index(flag) + 2:]
    argv = [*path.split(), *base, *NEEDS.get((path, flag), []), flag, f"{item},{item}"]
    line = _run(argv, tmp_path, monkeypatch, capsys)
    # named once (``attack --snr 0,0`` said ``--snr: snr_db '0,0': ...``)
    assert len(re.findall(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", line)) == 1, line
    if (path, flag) not in SINGLE:
        assert re.search(rf"{re.escape(flag)}: '?{re.escape(item)}'? is given twice",
                         line), line


@pytest.mark.parametrize("argv,needle", [
    (["sweep", "--snr", "0:30:5,10"], "--snr: 10 is given twice"),
    (["sweep", "--depths", "3,1,03"], "--depths: 3 is given twice"),
    (["sweep", "--set", "seeds=[1, 2, 1]"], "seeds: 1 is given twice"),
    (["attack", "--attacks", "aa,autoattack"], "--attacks: 'aa' is given twice"),  # an alias
    (["certify", "--eps", "0.1,0.10"], "--eps: 0.1 is given twice"),
])
def test_equal_values_spelt_otherwise_are_repeats(argv, needle, tmp_path, monkeypatch, capsys):
    base = [a.replace("{d}", str(tmp_path)) for a in BASE[argv[0]]]
    flag = argv[1]
    if flag in base:
        base = base[:base.index(flag)] + base[base.index(flag) + 2:]
    line = _run([argv[0], *base, *argv[1:]], tmp_path, monkeypatch, capsys)
    assert needle in line, line


@pytest.mark.parametrize("cmd,file,text,needle", [
    ("run", "exp.toml", EXPERIMENT.replace("depths = [1]", "depths = [1, 1]"),
     "depths: 1 is given twice"),
    ("run", "exp.toml", EXPERIMENT.replace('snr_db = "0,inf"', "snr_db = [0, 10, 0.0]"),
     "snr_db: 0 is given twice"),
    ("study", "s.toml", STUDY.replace("shifts = [8]", "shifts = [8, 8]"),
     "shifts: 8 is given twice"),
    ("lyapunov", "lya.toml", LYAPUNOV_OK.replace("eps_255 = [2]", "eps_255 = [2, 2]"),
     "eps_255: 2 is given twice"),
    ("lyapunov", "lya.toml", LYAPUNOV_OK.replace('["plain"]', '["plain", "plain"]'),
     "variants: 'plain' is given twice"),
])
def test_an_experiment_files_list_with_a_repeat_is_one_line(cmd, file, text, needle, tmp_path,
                                                            monkeypatch, capsys):
    path = tmp_path / f"bad-{file}"
    path.write_text(text)
    line = _run([cmd, str(path), "--quiet", "--out", str(tmp_path / "out")], tmp_path,
                monkeypatch, capsys)
    assert needle in line, line
