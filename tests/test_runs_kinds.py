"""``noisydeq runs`` says what each run directory is: an attack run was listed as a sweep
(a digital one on device ``ideal``, noise site ``device``: neither was asked for) and a
LyaDEQ experiment's device sweeps as free-standing sweeps. An attack run shows its seed
and what it attacked (it showed no seed, and empty depths and training SNRs); a LyaDEQ
experiment's own folder is one entry of kind ``lyapunov`` with its status (it was not
listed: it holds no cells/ or results table)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent / "analysis"))
from analysis_family import make_family  # noqa: E402

import noisydeq  # noqa: E402
from noisydeq import store  # noqa: E402
from noisydeq.analysis.lyapunov_experiment import load_experiment  # noqa: E402
from noisydeq.cli import cli as main  # noqa: E402
from noisydeq.specs.toml import dumps_toml  # noqa: E402
from tests.cli_helpers import run_cli  # noqa: E402

ATTACK = ["--attacks", "pgd-eps", "--eps", "0,0.3", "--pgd-steps", "2", "--samples", "4",
          "--val-samples", "0", "--quiet"]


def test_runs_name_attacks_and_lyapunov_sweeps(tmp_path, capsys):
    family = make_family(tmp_path / "family", depths=(1,))
    root = tmp_path / "runs"
    for name, extra in (("digital", []), ("noisy", ["--noise-site", "signal", "--snr", "0",
                                                     "--seed", "3"])):
        code, _, err = run_cli(["attack", "--family", str(family), *ATTACK, *extra, "--out",
                                str(root / name)], capsys)
        assert code == 0, err
    # a LyaDEQ experiment's device sweep: <experiment>/device/<device>-<group>, the
    # experiment's config (signed, as ExperimentDir writes it) naming its device table
    code, _, err = run_cli(["sweep", "--device", "snr", "--snr", "0", "--depths", "1",
                            "--chips", "1", "--epochs", "1", "--kinds", "deq", "--quiet",
                            "--out", str(root / "plain")], capsys)
    assert code == 0, err
    exp = root / "lya"
    shutil.copytree(root / "plain", exp / "device" / "snr-lyadeq")
    spec = load_experiment(Path(noisydeq.__file__).parent / "experiments"
                           / "lyapunov-device.toml")
    store.atomic_write_text(exp / "config.toml", store.sign_text(dumps_toml(spec)))
    res = CliRunner().invoke(main, ["runs", str(root), "--json"])
    assert res.exit_code == 0, res.output
    by = {Path(i["run"]).name: i for i in json.loads(res.output)}
    assert sorted(by) == ["digital", "lya", "noisy", "plain", "snr-lyadeq"]
    # the experiment folder itself: no tables or report written (only its config here)
    assert by.pop("lya")["status"].startswith("partial (device.csv, report.md not")
    assert by["digital"]["kind"] == by["noisy"]["kind"] == "attack"
    assert (by["digital"]["seeds"], by["noisy"]["seeds"]) == ("0", "3")
    for attack in ("digital", "noisy"):
        assert by[attack]["attacked"] == str(family.resolve())
        assert by[attack]["depths"] is None and by[attack]["train_snr_db"] is None
    assert by["digital"]["device"] is None and by["digital"]["noise_site"] is None
    assert (by["noisy"]["device"], by["noisy"]["noise_site"]) == ("ideal", "signal")
    assert by["plain"]["kind"] == "sweep" and "experiment" not in by["plain"]
    assert by["snr-lyadeq"]["kind"] == "lyapunov sweep"
    assert by["snr-lyadeq"]["experiment"] == str(exp)
    assert all(i["status"] == "finished" for i in by.values()), by
    table = CliRunner().invoke(main, ["runs", str(root)]).output.splitlines()
    head = table[0].split()
    assert head[:3] == ["run", "kind", "status"]
    digital = next(ln for ln in table if ln.startswith(str(root / "digital")))
    cells = digital.split()
    assert cells[1] == "attack" and cells[head.index("device")] == "-"
    assert cells[head.index("noise_site")] == "-" and cells[head.index("seeds")] == "0"
    assert len(cells) == len(head) + 1  # every column filled ("-" where the config has
    # none); modified is two words
    assert f"{root / 'digital'}: attack on {family.resolve()}" in table
    assert f"{exp / 'device' / 'snr-lyadeq'}: lyapunov sweep of the experiment in {exp}" \
        in table


TINY = """name = "tiny"
task = "digits"
hidden = 8
train_preset = "quick"
train = {epochs = 1, max_train_samples = 64}
[lyapunov]
icnn_hidden = [4]
[attack]
variants = ["plain"]
eps_255 = [2]
max_test_samples = 10
[device]
snr_db = "0:30:15,inf"
chips = 1
depths = [1]
baseline_epochs = 1
max_test_samples = 10
groups = {snr = ["lyadeq-plain"]}
"""


def test_runs_list_a_lyapunov_experiment_folder(tmp_path, capsys):
    """A real tiny LyaDEQ experiment: its folder is one entry (kind lyapunov) beside its
    device sweep, partial after ``--only attack`` (no device table yet), finished after the
    whole run; given as DIR itself it is listed with its sweep."""
    exp = tmp_path / "tiny.toml"
    exp.write_text(TINY, encoding="utf-8")
    root = tmp_path / "runs"
    out = root / "tiny"

    def listed(*dirs):
        res = CliRunner().invoke(main, ["runs", *map(str, dirs), "--json"])
        assert res.exit_code == 0, res.output
        return {Path(i["run"]).relative_to(root).as_posix(): i for i in json.loads(res.output)}

    code, _, err = run_cli(["lyapunov", str(exp), "--out", str(out), "--only", "attack",
                            "--quiet", "--threads", "1"], capsys)
    assert code == 0, err
    by = listed(root)
    assert list(by) == ["tiny"]
    assert by["tiny"]["kind"] == "lyapunov" and by["tiny"]["cells"] == 1
    assert by["tiny"]["status"].startswith("partial (device.csv not written yet")
    code, _, err = run_cli(["lyapunov", str(exp), "--out", str(out), "--quiet", "--threads",
                            "1"], capsys)
    assert code == 0, err
    for by in (listed(root), listed(out)):
        assert list(by) == ["tiny", "tiny/device/snr-lyadeq-plain"]
        top, sweep = by["tiny"], by["tiny/device/snr-lyadeq-plain"]
        assert (top["kind"], top["status"], top["task"], top["seeds"]) == (
            "lyapunov", "finished", "digits", "0")
        assert (top["device"], top["snr_db"], top["chips"]) == ("snr", "0:30:15,inf", "1")
        assert sweep["kind"] == "lyapunov sweep" and sweep["experiment"] == str(out)
        assert sweep["status"] == "finished"
    table = CliRunner().invoke(main, ["runs", str(root)]).output.splitlines()
    head = table[0].split()
    row = next(ln for ln in table if ln.startswith(f"{out} ")).split()
    assert row[1:3] == ["lyapunov", "finished"] and len(row) == len(head) + 1  # date, time
    (out / "device.csv").unlink()  # a table gone: partial again, named
    assert listed(root)["tiny"]["status"].startswith("partial (device.csv not written")
    # its config damaged (edited after it was signed): listed as damaged, with its kind and
    # its sweep still named as the experiment's, as a damaged sweep is listed
    cfg = out / "config.toml"
    cfg.write_text(cfg.read_text().replace('task = "digits"', 'task = "mnist"'))
    for by in (listed(root), listed(out)):
        assert list(by) == ["tiny", "tiny/device/snr-lyadeq-plain"]
        assert by["tiny"]["kind"] == "lyapunov" and by["tiny"]["cells"] == 1
        assert by["tiny"]["status"].startswith("damaged (") and "config.toml" in by["tiny"][
            "status"]
        assert by["tiny/device/snr-lyadeq-plain"]["experiment"] == str(out)


def test_runs_list_a_lyapunov_experiment_folder_whose_config_is_damaged(tmp_path):
    """A LyaDEQ experiment's folder whose config.toml fails its check (unsigned, or not
    TOML) was not listed at all: it has no cells/ or results table, and its config could not
    say it is an experiment's. Its layout does: listed as damaged, kind lyapunov; a folder
    with a damaged config and none of the experiment's files is not a run."""
    root = tmp_path / "runs"
    for name, body in (("unsigned", 'name = "x"\n[attack]\nvariants = ["plain"]\n'),
                       ("garbage", "\x00 not toml [[[")):
        (root / name / "attack").mkdir(parents=True)
        (root / name / "config.toml").write_text(body)
    (root / "garbage" / "report.md").write_text("# report\n")
    (root / "stray").mkdir()
    (root / "stray" / "config.toml").write_text("not a run")
    res = CliRunner().invoke(main, ["runs", str(root), "--json"])
    assert res.exit_code == 0, res.output
    by = {Path(i["run"]).name: i for i in json.loads(res.output)}
    assert sorted(by) == ["garbage", "unsigned"]
    for info in by.values():
        assert info["kind"] == "lyapunov" and info["status"].startswith("damaged ("), info
    table = CliRunner().invoke(main, ["runs", str(root)]).output
    assert f"{root / 'unsigned'}: damaged: " in table
