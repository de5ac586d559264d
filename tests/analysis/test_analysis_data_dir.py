"""``--data-dir`` on a family whose task reads no data files (digits) was accepted and
silently ignored by the analysis commands; it is refused in one line before anything is
written, as their other options that do not apply are (``--chips`` without a device)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from analysis_family import make_family, run  # noqa: E402

from noisydeq.analysis.family import load_family  # noqa: E402
from noisydeq.errors import NoisyDEQError  # noqa: E402
from tests.cli_helpers import one_line_error  # noqa: E402


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    return make_family(tmp_path_factory.mktemp("family"), depths=(1,))


@pytest.mark.parametrize("command", [["sensitivity", "--samples", "2", "--inputs", "1"],
                                     ["spectrum", "--inputs", "1"],
                                     ["solvers", "--inputs", "1"],
                                     ["attack"]])
def test_data_dir_on_a_digits_family_is_one_line(command, family, tmp_path, capsys):
    out = tmp_path / "o"
    code, _, err = run([*command, "--family", str(family), "--data-dir", str(tmp_path),
                        "--out", str(out)], capsys)
    one_line_error(code, err, f"--data-dir {tmp_path}: the family's task 'digits' reads no "
                   "data files (only mnist, mnist10k, cifar10 do)")
    assert not out.exists()


def test_load_family_takes_no_data_dir_or_an_empty_one_for_digits(family, tmp_path):
    assert {m.task for m in load_family(family)} == {"digits"}
    assert load_family(family, data_dir="")  # an empty one names none (tasks.base)
    with pytest.raises(NoisyDEQError, match="leave --data-dir out"):
        load_family(family, data_dir=str(tmp_path))
