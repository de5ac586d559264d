"""``--data-dir`` on a run whose tasks read no data files (digits, the generated tasks) is
refused in one line by every command that takes it, before anything is written: the analysis
commands refused it (``load_family``) while sweep, train, run, study, adversarial, lyapunov
and a certify experiment accepted it without a word. One rule
(:func:`noisydeq.specs.task_names.refuse_data_dir`); a run with one file task takes it."""

import pytest

from noisydeq.errors import NoisyDEQError
from noisydeq.specs.task_names import refuse_data_dir
from tests.cli_helpers import one_line_error, refused_writing_nothing, run_cli
from tests.fuzz.cases import EXPERIMENT, LYAPUNOV_OK, STUDY

FIG2 = 'name = "f"\nkind = "fig2"\n[fig2]\ntask = "digits"\nwidth = 4\n'
TABLE2 = 'name = "t"\nkind = "table2"\n[family]\ntask = "digits"\nhidden = 4\n'

#: command line (``{d}``: the test's directory), the files it reads, the words of the refusal
CASES = {
    "sweep": (["sweep", "--device", "ideal", "--noise-site", "signal", "--snr", "inf",
               "--depths", "1", "--epochs", "0", "--quiet", "--threads", "1"], {},
              "the sweep's task 'digits' reads"),
    "train": (["train", "--epochs", "0", "--width", "4", "--quiet", "--threads", "1"], {},
              "the task 'digits' reads"),
    "train --task prefix_sums": (["train", "--task", "prefix_sums", "--cell", "conv1d",
                                  "--epochs", "0", "--quiet"], {},
                                 "the task 'prefix_sums' reads"),
    "run": (["run", "{d}/exp.toml", "--quiet", "--threads", "1"], {"exp.toml": EXPERIMENT},
            "the experiment's task 'digits' reads"),
    "study": (["study", "{d}/s.toml", "--quiet"], {"s.toml": STUDY},
              "the study's task 'prefix_sums' reads"),
    "lyapunov": (["lyapunov", "{d}/lya.toml", "--quiet"], {"lya.toml": LYAPUNOV_OK},
                 "the experiment's task 'digits' reads"),
    "adversarial": (["adversarial", "adversarial-fig3", "--set", "family.task='digits'",
                     "--quiet"], {}, "the experiment's task 'digits' reads"),
    "certify fig2": (["certify", "{d}/fig2.toml"], {"fig2.toml": FIG2},
                     "the experiment's task 'digits' reads"),
    "certify table2": (["certify", "{d}/t.toml"], {"t.toml": TABLE2},
                       "the experiment's task 'digits' reads"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_data_dir_on_a_run_without_file_tasks_is_one_line(name, tmp_path, monkeypatch, capsys):
    argv, files, words = CASES[name]
    for file, text in files.items():
        (tmp_path / file).write_text(text, encoding="utf-8")
    data = tmp_path / "data"
    data.mkdir()
    monkeypatch.chdir(tmp_path)
    argv = [a.replace("{d}", str(tmp_path)) for a in argv]
    refused_writing_nothing([*argv, "--data-dir", str(data)], tmp_path, monkeypatch, capsys,
                            f"--data-dir {data}: {words} no data files (only mnist, mnist10k, "
                            "cifar10 do); leave --data-dir out")
    assert not (tmp_path / "runs").exists()


def test_the_rule_refuses_only_a_run_with_no_file_task(tmp_path):
    for none in (None, ""):  # not given, or empty: names no directory
        refuse_data_dir(none, ["digits"], "the run's")
    refuse_data_dir("d", ["mnist"], "the run's")
    refuse_data_dir("d", ["digits", "mnist10k", "digits"], "the run's")  # one file task: taken
    refuse_data_dir("d", [], "the run's")  # no task known: nothing to say
    with pytest.raises(NoisyDEQError, match=r"^--data-dir d: the run's tasks 'digits', "
                       r"'mazes' read no data files \(only mnist, mnist10k, cifar10 do\)"):
        refuse_data_dir("d", ["digits", "mazes", "digits"], "the run's")


@pytest.mark.parametrize("task", ["mnist", "mnist10k", "cifar10"])
def test_a_file_task_takes_data_dir(task, tmp_path, monkeypatch, capsys):
    """A file task gets past the rule: the next check speaks (here an unknown device)."""
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(["train", "--task", task, "--data-dir", str(tmp_path),
                            "--device", "nosuch", "--quiet"], capsys)
    one_line_error(code, err, "nosuch")
    assert "--data-dir" not in err


def test_every_command_with_data_dir_is_covered():
    """A command that takes --data-dir (found by walking the click tree, as
    tests/fuzz/test_click_tree.py does) is one of the cases above or an analysis command
    (load_family: tests/analysis/test_analysis_data_dir.py), so a new one must join them."""
    from tests.fuzz.test_click_tree import _commands

    analysis = {"sensitivity", "spectrum", "solvers", "attack"}
    covered = {name.split()[0] for name in CASES} | analysis
    taking = {path for path, cmd in _commands()
              if any("--data-dir" in getattr(p, "opts", ()) for p in cmd.params)}
    assert taking == covered, taking ^ covered


#: the other ways a data directory arrives: (command line, files, how the refusal names it,
#: the words after it). ``{d}``: the test's directory; ``{data}``: an existing folder.
ROUTES = {
    "sweep --set": (["sweep", "--set", "data_dir={data}", *CASES["sweep"][0][1:]], {},
                    "--set data_dir", "the sweep's task 'digits' reads"),
    "run --set": (["run", "{d}/exp.toml", "--quiet", "--set", "data_dir={data}"],
                  {"exp.toml": EXPERIMENT}, "--set data_dir",
                  "the experiment's task 'digits' reads"),
    "run file": (["run", "{d}/exp.toml", "--quiet"],
                 {"exp.toml": EXPERIMENT.replace("[sweep]\n", '[sweep]\ndata_dir = "{data}"\n')},
                 "{d}/exp.toml [quick]: data_dir", "the experiment's task 'digits' reads"),
    "study --set": (["study", "{d}/s.toml", "--quiet", "--set", "data_dir={data}"],
                    {"s.toml": STUDY}, "--set data_dir", "the study's task 'prefix_sums' reads"),
    "study file": (["study", "{d}/s.toml", "--quiet"],
                   {"s.toml": STUDY.replace("[study]\n", '[study]\ndata_dir = "{data}"\n')},
                   "{d}/s.toml [quick]: data_dir", "the study's task 'prefix_sums' reads"),
    "lyapunov file": (["lyapunov", "{d}/lya.toml", "--quiet"],
                      {"lya.toml": LYAPUNOV_OK.replace("\n", '\ndata_dir = "{data}"\n', 1)},
                      "{d}/lya.toml: data_dir", "the experiment's task 'digits' reads"),
    "adversarial --set": (["adversarial", "adversarial-fig3", "--set", "family.task='digits'",
                           "--set", "family.data_dir='{data}'", "--quiet"], {},
                          "--set family.data_dir", "the experiment's task 'digits' reads"),
    "certify fig2 file": (["certify", "{d}/fig2.toml"],
                          {"fig2.toml": FIG2 + 'data_dir = "{data}"\n'},
                          "{d}/fig2.toml: fig2.data_dir", "the experiment's task 'digits' reads"),
    "certify table2 file": (["certify", "{d}/t.toml"],
                            {"t.toml": TABLE2 + 'data_dir = "{data}"\n'},
                            "{d}/t.toml: family.data_dir", "the experiment's task 'digits' reads"),
}


def _route(name, tmp_path, data):
    argv, files, as_named, words = ROUTES[name]

    def fill(text):
        return text.replace("{data}", str(data)).replace("{d}", str(tmp_path))

    for file, text in files.items():
        (tmp_path / file).write_text(fill(text), encoding="utf-8")
    return [fill(a) for a in argv], fill(as_named), words


@pytest.mark.parametrize("name", list(ROUTES))
def test_data_dir_is_one_rule_however_it_arrives(name, tmp_path, monkeypatch, capsys):
    """``--set data_dir=...`` and an experiment file's ``data_dir`` escaped the rule of
    ``--data-dir``: a run whose tasks read no files took them without a word (sweep, run,
    study, lyapunov, adversarial, certify), and a folder that does not exist went unchecked
    (or reached the loader's own message). Now one rule, naming how the value arrived."""
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    argv, as_named, words = _route(name, tmp_path, data)
    refused_writing_nothing(argv, tmp_path, monkeypatch, capsys,
                            f"{as_named} {data}: {words} no data files (only mnist, "
                            f"mnist10k, cifar10 do); leave {as_named.split(': ')[-1]} out")
    assert not (tmp_path / "runs").exists()
    missing = tmp_path / "no-such-data"  # and a folder that is not there: the same check
    argv, as_named, _ = _route(name, tmp_path, missing)
    refused_writing_nothing(argv, tmp_path, monkeypatch, capsys,
                            f"{as_named} {missing}: no such directory")


def test_attack_checks_a_set_data_dir(tmp_path, monkeypatch, capsys):
    """``noisydeq attack --set data_dir=...`` was ignored (the family loaded with the
    option's directory): checked as ``--data-dir`` is, before the family is read."""
    monkeypatch.chdir(tmp_path)
    missing = tmp_path / "no-such-data"
    refused_writing_nothing(["attack", "--family", str(tmp_path / "family"), "--quiet",
                             "--set", f"data_dir={missing}"], tmp_path, monkeypatch, capsys,
                            f"--set data_dir {missing}: no such directory")


def test_a_spec_given_to_the_python_api_follows_the_rule(tmp_path):
    """``run_sweep``, ``train_family`` and ``run_study`` take a spec whose ``data_dir`` no
    command checked: the same rule, before anything is written."""
    from noisydeq.families import train_family
    from noisydeq.specs.base import build
    from noisydeq.specs.family import FamilySpec
    from noisydeq.specs.study import StudyFile
    from noisydeq.specs.sweep import SweepSpec
    from noisydeq.specs.toml import parse_toml
    from noisydeq.studies import run_study
    from noisydeq.sweep import run_sweep

    data = tmp_path / "data"
    data.mkdir()
    study = build(StudyFile, parse_toml(STUDY, "s.toml"), where="s.toml").resolve("quick", {})
    calls = {
        "the sweep's task 'digits'": lambda d: run_sweep(
            SweepSpec(task="digits", data_dir=d, depths=[1], snr_db=[0.0]), tmp_path / "out",
            progress=False),
        "the family's task 'digits'": lambda d: train_family(
            FamilySpec(task="digits", data_dir=d, depths=[1]), cache_dir=tmp_path / "cache"),
        "the study's task 'prefix_sums'": lambda d: run_study(
            study.model_copy(update={"data_dir": d}), tmp_path / "out"),
    }
    for words, call in calls.items():
        with pytest.raises(NoisyDEQError, match=rf"^data_dir {data}: {words} reads no data "
                           r"files \(only mnist, mnist10k, cifar10 do\); leave data_dir out$"):
            call(str(data))
        with pytest.raises(NoisyDEQError, match=rf"^data_dir {tmp_path}/gone: no such dir"):
            call(str(tmp_path / "gone"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
