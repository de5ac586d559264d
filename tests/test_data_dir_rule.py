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
