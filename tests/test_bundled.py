"""Bundled data: presets and experiment files are plain package files; experiments are found
by name (``noisydeq run NAME``, ``--list``), user paths still win, unknown names are one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from noisydeq import bundled
from noisydeq.cli import cli, main
from noisydeq.errors import NoisyDEQError
from noisydeq.hardware.presets import presets_dir

PKG = Path(bundled.__file__).resolve().parent


def test_data_are_plain_files_inside_the_package():
    for folder in (bundled.experiments_dir(), presets_dir()):
        assert folder.is_dir() and not folder.is_symlink()
        assert PKG in folder.resolve().parents
        files = list(folder.glob("*.toml"))
        assert files and not any(f.is_symlink() for f in files)
    assert {"fig1-mnist", "mdeq-mnist", "certify-mnist"} <= set(bundled.experiment_names())


def test_pyproject_ships_them():
    text = (PKG.parent / "pyproject.toml").read_text(encoding="utf-8")
    assert '"presets/devices/*.toml"' in text and '"experiments/*.toml"' in text


def test_every_bundled_experiment_has_a_command_and_a_description():
    items = bundled.bundled_experiments()
    assert len(items) == len(bundled.experiment_names())
    known = {"run", "study", "lyapunov", "adversarial", "certify", bundled.FIG13}
    for b in items:
        assert b.command in known, (b.name, b.command)
        assert b.description and "\n" not in b.description, b.name
    by = {b.name: b for b in items}
    assert by["fig1-mnist"].command == "run" and by["mdeq-mnist"].command == "study"
    assert by["lyapunov-table1"].command == "lyapunov"
    assert by["fig13_jacreg_ffw"].description.startswith("Paper Fig. 13")


@pytest.mark.parametrize("arg", ["fig1-mnist", "fig1-mnist.toml"])
def test_name_with_or_without_suffix(arg, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert bundled.find_experiment(arg) == bundled.experiments_dir() / "fig1-mnist.toml"


def test_user_path_wins_over_the_bundled_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fig1-mnist.toml").write_text("x = 1\n")
    assert bundled.find_experiment("fig1-mnist.toml") == Path("fig1-mnist.toml")
    assert bundled.find_experiment("fig1-mnist") == bundled.experiments_dir() / "fig1-mnist.toml"


def test_unknown_name_did_you_mean_and_list(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(NoisyDEQError) as err:
        bundled.find_experiment("fig1-mnst")
    msg = str(err.value)
    assert "unknown experiment 'fig1-mnst'" in msg and "did you mean 'fig1-mnist'" in msg
    assert all(n in msg for n in bundled.experiment_names()) and "\n" not in msg
    with pytest.raises(NoisyDEQError, match="'fig1-mnist' is a bundled experiment: "
                                            "noisydeq run fig1-mnist"):
        bundled.find_experiment("experiments/fig1-mnist.toml")
    with pytest.raises(NoisyDEQError, match="file not found: sub/nope.toml"):
        bundled.find_experiment("sub/nope.toml")
    with pytest.raises(NoisyDEQError, match="a directory"):
        bundled.find_experiment(str(tmp_path))


def test_run_list_text_and_json():
    res = CliRunner().invoke(cli, ["run", "--list"])
    assert res.exit_code == 0, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == len(bundled.experiment_names())
    assert any(ln.split()[:2] == ["fig1-mnist", "run"] for ln in lines)
    res = CliRunner().invoke(cli, ["run", "--list", "--json"])
    items = json.loads(res.output)
    assert {i["name"] for i in items} == set(bundled.experiment_names())


def _main(args: list[str], capsys) -> tuple[int, str]:
    """Exit code and stderr of the console entry point (errors are one line, exit 2)."""
    with pytest.raises(SystemExit) as ex:
        main(args)
    return ex.value.code, capsys.readouterr().err


def test_run_by_name_resolves_and_refuses_other_kinds(tmp_path, monkeypatch, capsys):
    from noisydeq.commands.run import resolve_experiment

    monkeypatch.chdir(tmp_path)
    exp, spec = resolve_experiment("regression-identity", "quick", sets=("epochs=1",))
    assert exp.name == "regression-identity" and spec.epochs == 1
    code, err = _main(["run", "mdeq-mnist"], capsys)
    assert code == 2
    assert "not a sweep experiment" in err and "noisydeq study mdeq-mnist" in err
    code, err = _main(["run", "nope"], capsys)
    assert code == 2 and "unknown experiment 'nope'" in err
    assert len(err.strip().splitlines()) == 1
    code, err = _main(["run"], capsys)
    assert code == 2 and "--list" in err


@pytest.mark.parametrize("cmd,name,owner", [
    ("study", "fig1-mnist", "run"),
    ("lyapunov", "certify-mnist", "certify"),
    ("adversarial", "lyapunov-table1", "lyapunov"),
    ("certify", "mdeq-mnist", "study"),
    ("run", "adversarial-fig3", "adversarial"),
])
def test_another_commands_experiment_is_one_line_naming_its_command(
    cmd, name, owner, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    code, err = _main([cmd, name], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"run it with 'noisydeq {owner} {name}'" in err, err
    assert "unknown key" not in err and not any(tmp_path.iterdir())
    # a user's own file of another command likewise, found by its path
    (tmp_path / "mine.toml").write_text((bundled.experiments_dir() / f"{name}.toml").read_text())
    code, err = _main([cmd, "mine.toml"], capsys)
    assert code == 2 and f"'noisydeq {owner} mine.toml'" in err, err
    # the experiment's own command still finds it
    assert bundled.find_experiment(name, owner) == bundled.experiments_dir() / f"{name}.toml"


def test_other_commands_take_names(tmp_path, monkeypatch, capsys):
    from noisydeq.analysis.fig13 import main as fig13_main

    monkeypatch.chdir(tmp_path)
    for cmd in ("study", "lyapunov", "adversarial", "certify"):
        code, err = _main([cmd, "no-such-experiment.toml"], capsys)
        assert code == 2 and "file not found" in err, (cmd, err)
        if cmd != "certify":  # certify's bare name may also be a checkpoint or run dir
            code, err = _main([cmd, "fig1-mnst"], capsys)
            assert code == 2 and "did you mean 'fig1-mnist'" in err, (cmd, err)
    with pytest.raises(SystemExit) as ex:
        fig13_main(["fig13_jacreg_ffw", str(tmp_path / "o"), "seeds=[]"])
    err = capsys.readouterr().err
    assert ex.value.code == 2 and not (tmp_path / "o").exists()
    assert "fig13_jacreg_ffw.toml: seeds" in err  # found by name, refused on the field
