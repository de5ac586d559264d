"""``--data-dir`` is checked the same way by every command that takes it
(:func:`noisydeq.specs.task_names.check_data_dir`: a folder that does not exist is one line,
before anything is read or written; train, certify and the analysis commands used to go on
to other errors or to the loader's own message), and an empty MNIST folder offline is one
line naming the folder and the files expected, after one file's mirrors, not a traceback."""

import http.client
import urllib.error

import pytest

from noisydeq.errors import NoisyDEQError
from noisydeq.specs.task_names import check_data_dir
from noisydeq.tasks import mnist as M
from tests.cli_helpers import refused_writing_nothing
from tests.test_data_dir_rule import CASES

#: the commands that read a family (their --family need not exist: --data-dir is first)
ANALYSIS = {
    "sensitivity": ["sensitivity", "--family", "{d}/family"],
    "spectrum": ["spectrum", "--family", "{d}/family"],
    "solvers": ["solvers", "--family", "{d}/family"],
    "attack": ["attack", "--family", "{d}/family", "--quiet"],
    "certify models": ["certify", "{d}/family"],
}
ALL = {**{k: v[:2] for k, v in CASES.items()}, **{k: (v, {}) for k, v in ANALYSIS.items()}}


@pytest.mark.parametrize("name", list(ALL))
def test_a_missing_data_dir_is_one_line_on_every_command(name, tmp_path, monkeypatch, capsys):
    argv, files = ALL[name]
    for file, text in files.items():
        (tmp_path / file).write_text(text, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    argv = [a.replace("{d}", str(tmp_path)) for a in argv]
    missing = tmp_path / "no-such-data"
    refused_writing_nothing([*argv, "--data-dir", str(missing)], tmp_path, monkeypatch, capsys,
                            f"--data-dir {missing}: no such directory")
    assert not (tmp_path / "runs").exists()


def test_every_command_with_data_dir_checks_it():
    """The click tree's commands taking --data-dir are all among the cases above."""
    from tests.fuzz.test_click_tree import _commands

    taking = {path for path, cmd in _commands()
              if any("--data-dir" in getattr(p, "opts", ()) for p in cmd.params)}
    assert taking == {name.split()[0] for name in ALL}, taking


def test_check_data_dir(tmp_path, monkeypatch):
    assert check_data_dir(None) is None and check_data_dir("") is None  # names none
    assert check_data_dir(str(tmp_path)) == str(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert check_data_dir("~") == str(tmp_path)
    (tmp_path / "file").write_text("x")
    for bad in ("~/nope", str(tmp_path / "file")):
        with pytest.raises(NoisyDEQError, match=r"^--data-dir .*: no such directory$"):
            check_data_dir(bad)


OFFLINE = {
    "unreachable": urllib.error.URLError(OSError(101, "Network is unreachable")),
    "timeout": TimeoutError("timed out"),
    "cut off": http.client.IncompleteRead(b"", 10),
}

#: command line, the files the refusal names
COMMANDS = {
    "train mnist": (["train", "--task", "mnist", "--epochs", "0", "--width", "4"],
                    [M.TRAIN_IMAGES, M.TRAIN_LABELS, M.TEST_IMAGES, M.TEST_LABELS]),
    "train mnist10k": (["train", "--task", "mnist10k", "--epochs", "0", "--width", "4"],
                       [M.TEST_IMAGES, M.TEST_LABELS]),
    "sweep mnist": (["sweep", "--task", "mnist", "--device", "ideal", "--noise-site", "signal",
                     "--snr", "inf", "--depths", "1", "--epochs", "0"],
                    [M.TRAIN_IMAGES, M.TRAIN_LABELS, M.TEST_IMAGES, M.TEST_LABELS]),
}


@pytest.mark.parametrize("how", list(OFFLINE))
@pytest.mark.parametrize("cmd", list(COMMANDS))
def test_an_empty_mnist_folder_offline_is_one_line(cmd, how, tmp_path, monkeypatch, capsys):
    """The download is attempted (a folder with no MNIST file), every mirror of the first
    file fails, and the command stops there in one line; the folder stays empty."""
    tried = []

    def offline(url, timeout):
        tried.append(url)
        raise OFFLINE[how]

    monkeypatch.setattr(M.urllib.request, "urlopen", offline)
    monkeypatch.delenv(M.ENV_DOWNLOAD, raising=False)
    monkeypatch.delenv(M.ENV_DIR, raising=False)
    monkeypatch.chdir(tmp_path)
    empty = tmp_path / "mnist"
    empty.mkdir()
    argv, stems = COMMANDS[cmd]
    refused_writing_nothing([*argv, "--data-dir", str(empty), "--quiet", "--threads", "1"],
                            tmp_path, monkeypatch, capsys, f"not found in {empty}",
                            ", ".join(s + ".gz" for s in stems), "download failed",
                            "point --data-dir")
    # the first missing file's mirrors, then no more waiting
    assert tried == [m + M.TRAIN_IMAGES + ".gz" for m in M.MIRRORS]
    assert list(empty.iterdir()) == []  # no partial file left
