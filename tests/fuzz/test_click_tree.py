"""Every numeric and choice option of every command, found by walking the click tree, refuses
a representative bad value in one line that names the option: a non-zero exit, exactly one
line on stderr (``noisydeq: error: …``), no traceback and none of pydantic's wording.

A new command or option is covered without editing this file: the cases are built from the
command tree itself. Integers get a value past every limit, floats ``nan``, choices a typo
(which must come with the project's "did you mean"), and text options whose default is a
number or a grid of numbers (``--snr 0:30``, ``--seed 0``), ``--threads`` and ``--jobs`` a
word. Each command runs in-process against inputs that exist but hold no model (an empty
family, a tiny experiment file), so an option that is wrongly accepted fails on something
else — a line that does not name the option — rather than starting a run; nothing trains.
"""

from __future__ import annotations

import math
from pathlib import Path

import click
import pytest

from noisydeq.cli import cli, main
from tests.fuzz.cases import EXPERIMENT, LYAPUNOV_OK, STUDY

#: the command line each command's bad option is added to ({d}: the case's directory)
BASE = {
    "sweep": ["--device", "ideal", "--noise-site", "signal", "--snr", "inf", "--depths", "1",
              "--chips", "1", "--epochs", "0", "--set", "hidden=4", "--quiet", "--jobs", "1",
              "--threads", "1", "--out", "{d}/out"],
    "train": ["--epochs", "0", "--width", "4", "--quiet", "--threads", "1", "--out", "{d}/out"],
    "run": ["{d}/exp.toml", "--quiet", "--threads", "1", "--jobs", "1", "--out", "{d}/out"],
    "table": ["{d}/empty"], "compare": ["{d}/empty"], "plot": ["{d}/empty", "--out", "{d}/out"],
    "sensitivity": ["--family", "{d}/empty", "--out", "{d}/out"],
    "spectrum": ["--family", "{d}/empty", "--out", "{d}/out"],
    "attack": ["--family", "{d}/empty", "--out", "{d}/out"],
    "certify": ["{d}/empty", "--out", "{d}/out"],
    "solvers": ["--width", "4", "--batch", "2", "--max-iter", "5", "--inputs", "4", "--snr", "0",
                "--count-snr", "0", "--accuracy-snr", "0", "--out", "{d}/out"],
    "study": ["{d}/s.toml", "--quiet", "--out", "{d}/out"],
    "lyapunov": ["{d}/lya.toml", "--quiet", "--out", "{d}/out"],
    "adversarial": ["{d}/exp.toml", "--quiet", "--out", "{d}/out"],
    "cache prune": ["--dry-run", "--cache", "{d}/cache"],
    "cache clear": ["--dry-run", "--cache", "{d}/cache"],
    "": ["devices"],  # the top-level options, before a command
}
#: text options that hold counts: a word is bad
COUNT_TEXT = {"--threads", "--jobs"}


def _numbers(text: object) -> bool:
    """True for a default such as ``0``, ``0:30``, ``1,3,5,7`` or ``0:20:5,inf``."""
    if not isinstance(text, str) or not text:
        return False
    try:
        return all(not math.isnan(float(p)) for p in text.replace(":", ",").split(","))
    except ValueError:
        return False


def _bad_value(param: click.Parameter) -> str | None:
    """The representative bad value of ``param`` (None: not a numeric or choice option)."""
    if not isinstance(param, click.Option) or param.is_flag:
        return None
    kind = param.type
    if isinstance(kind, click.Choice):
        return str(list(kind.choices)[0]) + "zz"
    if isinstance(kind, click.types.IntParamType):
        return "99999999999999999999"
    if isinstance(kind, click.types.FloatParamType):
        return "nan"
    if param.opts[0] in COUNT_TEXT or _numbers(param.default):
        return "abc"
    return None


def _commands() -> list[tuple[str, click.Command]]:
    """(path, command) of every command of the tree, groups and sub-commands included."""
    ctx = click.Context(cli)
    out: list[tuple[str, click.Command]] = [("", cli)]
    for name in cli.list_commands(ctx):
        cmd = cli.get_command(ctx, name)
        out.append((name, cmd))
        if isinstance(cmd, click.Group):
            out += [(f"{name} {sub}", cmd.get_command(ctx, sub))
                    for sub in cmd.list_commands(ctx)]
    return out


def _cases() -> list[tuple[str, str, str]]:
    cases = []
    for path, cmd in _commands():
        for param in cmd.params:
            value = _bad_value(param)
            if value is not None:
                cases.append((path, param.opts[0], value))
    return cases


CASES = _cases()


def _argv(path: str, flag: str, value: str, d: Path) -> list[str]:
    base = [a.replace("{d}", str(d)) for a in BASE.get(path, [])]
    if path == "":
        return [flag, value, *base]
    if flag in base:  # the base's own setting of this option is replaced
        base = base[:base.index(flag)] + base[base.index(flag) + 2:]
    return [*path.split(), *base, flag, value]


def test_the_walk_finds_every_command_and_enough_options():
    """The tree walk reaches every command (sub-commands too) and the cases cover the
    numeric and choice options the issue named."""
    commands = {path.split()[0] for path, _, _ in CASES if path}
    assert {"sweep", "train", "certify", "attack", "solvers", "sensitivity", "spectrum",
            "table", "compare", "lyapunov", "cache", "run", "study",
            "adversarial"} <= commands, commands
    flags = {(path, flag) for path, flag, _ in CASES}
    assert {("certify", "--inputs"), ("train", "--lr"), ("sweep", "--noise-site"),
            ("cache prune", "--older-than"), ("", "--tracker")} <= flags
    assert len(CASES) >= 100, len(CASES)


def test_every_command_spells_its_test_input_count_inputs():
    """The number of test inputs was ``--n-test`` in certify, ``--samples`` in attack and
    ``--inputs`` in sensitivity, spectrum and solvers: every option whose help says it
    counts test inputs is now ``--inputs`` first (help and errors name that), the older
    spellings the same option, documented in its help."""
    found, ctx = {}, click.Context(cli)

    def walk(group, prefix):
        for name in group.list_commands(ctx):
            cmd = group.get_command(ctx, name)
            if isinstance(cmd, click.Group):
                walk(cmd, f"{prefix}{name} ")
                continue
            for p in cmd.params:
                if isinstance(p, click.Option) and (p.help or "").startswith("test inputs"):
                    found[prefix + name] = p

    walk(cli, "")
    assert {"attack", "certify", "sensitivity", "spectrum", "solvers"} <= set(found), found
    assert all(p.opts[0] == "--inputs" for p in found.values()), {
        k: p.opts for k, p in found.items()}
    old = {"attack": "--samples", "certify": "--n-test"}
    for name, p in found.items():
        cmd = cli.get_command(ctx, name)
        for flag in ("--inputs", *[o for o in p.opts[1:]]):
            got = cmd.make_context(name, [flag, "7"], resilient_parsing=True).params
            assert got[p.name] == 7, (name, flag, got)
        assert p.opts[1:] == ([old[name]] if name in old else []), (name, p.opts)
        if name in old:
            assert f"{old[name]}: the same option, its older spelling" in p.help, p.help


def test_attack_spells_its_validation_input_count_val_inputs():
    """attack's validation split (the early state's) was only ``--val-samples``, beside
    ``--inputs`` for the attacked inputs: it is ``--val-inputs`` first, the older spelling
    the same option, said in its help; a bad value names ``--val-inputs``."""
    ctx = click.Context(cli)
    cmd = cli.get_command(ctx, "attack")
    (p,) = [q for q in cmd.params if q.name == "val_samples"]
    assert p.opts == ["--val-inputs", "--val-samples"], p.opts
    assert "--val-samples: the same option, its older spelling" in p.help, p.help
    for flag in p.opts:
        got = cmd.make_context("attack", [flag, "7"], resilient_parsing=True).params
        assert got["val_samples"] == 7, (flag, got)
    with pytest.raises(click.BadParameter) as err:
        cmd.make_context("attack", ["--val-samples", "-1"])
    assert "--val-inputs" in err.value.format_message(), err.value.format_message()


def run_exiting(argv: list[str], d: Path, monkeypatch, capsys) -> tuple[object, str, str]:
    """(exit code, stdout, stderr) of ``noisydeq ARGV`` run in folder ``d`` — which holds
    an empty folder and the experiment, study and LyaDEQ files the options may name — with
    its cache there and no thread, job or log settings from the environment; the command
    must end by ``SystemExit``."""
    (d / "empty").mkdir(exist_ok=True)
    (d / "exp.toml").write_text(EXPERIMENT)
    (d / "s.toml").write_text(STUDY)
    (d / "lya.toml").write_text(LYAPUNOV_OK)
    monkeypatch.chdir(d)
    monkeypatch.setenv("NOISYDEQ_CACHE", str(d / "cache"))
    for env in ("NOISYDEQ_THREADS", "NOISYDEQ_JOBS", "NOISYDEQ_LOG_JSON"):
        monkeypatch.delenv(env, raising=False)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    out, err = capsys.readouterr()
    return exit_.value.code, out, err


@pytest.mark.parametrize("path,flag,value", CASES,
                         ids=[f"{p or 'noisydeq'} {f} {v}" for p, f, v in CASES])
def test_bad_option_value_is_one_line_naming_the_option(path, flag, value, tmp_path,
                                                        monkeypatch, capsys):
    d = tmp_path
    code, out, err = run_exiting(_argv(path, flag, value, d), d, monkeypatch, capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code not in (0, None), (out, err)
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith("noisydeq: error: "), line
    for words in ("Traceback", "validation error", "Input should"):
        assert words not in err, line
    assert flag in line, f"the error does not name {flag}: {line}"
    if value.endswith("zz"):  # a typo of a choice: the project's suggestion
        assert f"did you mean '{value[:-2]}'?" in line, line
    assert not (d / "out").exists() and not (d / "cache").exists()
