"""``noisydeq runs`` lists certify runs (``noisydeq certify --out``): they hold no
config.toml, only meta.json, ``cells/`` and their tables, and were not listed at all. Each is
kind ``certify`` with what tells it apart — what it certified (the family, or the
experiment), its models, device, ε grid and PGD seed, its cells complete, missing and of no
current grid — read from its meta.json and cell files alone (no model loaded), and its
status by the rules of the other kinds: finished, partial, running, or damaged when
meta.json, a cell of its grid or a table fails its check."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from noisydeq import store
from noisydeq.cli import cli as main
from tests.certify.helpers import run_certify, run_certify_stopped
from tests.certify.test_certify_resume import tiny_family

ARGS = ["--n-test", "20", "--pgd-steps", "2", "--threads", "1", "--quiet"]


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    return tiny_family(tmp_path_factory.mktemp("runs-certify"))


def certify(capsys, family, out, *argv):
    code, stdout, err = run_certify(capsys, str(family), "--out", str(out), *ARGS, *argv)
    assert code == 0, err
    return stdout


def listed(*dirs) -> dict[str, dict]:
    res = CliRunner().invoke(main, ["runs", *map(str, dirs), "--json"])
    assert res.exit_code == 0, res.output
    return {Path(i["run"]).name: i for i in json.loads(res.output)}


def table(*dirs) -> list[str]:
    res = CliRunner().invoke(main, ["runs", *map(str, dirs)])
    assert res.exit_code == 0, res.output
    return res.output.splitlines()


def test_certify_runs_are_listed_with_what_tells_them_apart(capsys, tmp_path, family,
                                                            monkeypatch):
    root = tmp_path / "runs"
    certify(capsys, family, root / "digital", "--eps", "0.02,0.05")
    certify(capsys, family, root / "rram", "--eps", "0.05", "--device", "rram", "--k", "1",
            "--seed", "3")
    # a sweep beside them: still a sweep; a study-like folder (meta.json and cells/, not a
    # certify run's) is not taken for one
    code, _, err = run_cli_sweep(capsys, root / "sweep")
    assert code == 0, err
    other = root / "notcertify"
    (other / "cells").mkdir(parents=True)
    store.write_signed_json(other / "meta.json", {"run": "study"})
    by = listed(root)
    assert sorted(by) == ["digital", "rram", "sweep"], sorted(by)
    assert by["sweep"]["kind"] == "sweep"
    digital, rram = by["digital"], by["rram"]
    labels = ["ffw_relu-d1-w8-s0-e0.05", "mondeq-ibp-d1-w8-s0-e0.05"]
    assert (digital["kind"], digital["status"], digital["task"]) == ("certify", "finished",
                                                                    "digits")
    assert digital["certified"] == str(family.resolve()) and digital["models"] == labels
    assert (digital["eps"], digital["device"], digital["chips"], digital["seeds"]) == (
        "0.02,0.05", None, None, "0")
    assert (digital["cells"], digital["cells_complete"], digital["cells_missing"],
            digital["cells_other"]) == (4, 4, 0, 0)
    # a device run: its cells and their digital cells, all of its grid
    assert (rram["status"], rram["device"], rram["eps"], rram["seeds"]) == (
        "finished", "rram", "0.05", "3")
    assert (rram["cells"], rram["cells_complete"], rram["cells_missing"]) == (4, 4, 0)
    lines = table(root)
    head = lines[0].split()
    row = next(ln for ln in lines if ln.startswith(f"{root / 'digital'} ")).split()
    assert row[1:3] == ["certify", "finished"] and len(row) == len(head) + 1  # date, time
    assert row[head.index("device")] == "-" and row[head.index("seeds")] == "0"
    assert (f"{root / 'digital'}: certify of {family.resolve()} ({', '.join(labels)}), "
            "digital weights only, ε 0.02,0.05; cells: 4 complete, 0 missing") in lines, lines
    assert (f"{root / 'rram'}: certify of {family.resolve()} ({', '.join(labels)}), on rram, "
            "ε 0.05; cells: 4 complete, 0 missing") in lines, lines
    # a certify run named itself: that run alone
    assert list(listed(root / "rram")) == ["rram"]


def run_cli_sweep(capsys, out):
    from tests.cli_helpers import run_cli

    return run_cli(["sweep", "--device", "snr", "--snr", "0", "--depths", "1", "--chips", "1",
                    "--epochs", "1", "--kinds", "deq", "--quiet", "--out", str(out)], capsys)


def test_a_stopped_grid_is_partial_counting_missing_cells_and_the_other_grid_s(
        capsys, tmp_path, family, monkeypatch):
    out = tmp_path / "run"
    certify(capsys, family, out, "--eps", "0.05")
    code, _, err, _ = run_certify_stopped(monkeypatch, capsys, str(family), "--out",
                                          str(out), *ARGS, "--eps", "0.02")
    assert code == 130, err
    (info,) = listed(out).values()
    assert info["status"] == "partial (run the same command again to resume)"
    assert (info["eps"], info["cells"], info["cells_complete"], info["cells_missing"],
            info["cells_other"]) == ("0.02", 3, 1, 1, 2)
    assert any(ln.endswith("ε 0.02; cells: 1 complete, 1 missing, 2 of no current grid")
               for ln in table(out)), table(out)
    certify(capsys, family, out, "--eps", "0.02")
    (info,) = listed(out).values()
    assert (info["status"], info["cells_complete"], info["cells_missing"]) == ("finished", 2, 0)
    # a file in cells/ that is no cell: counted apart, never damage (certify leaves it)
    (out / "cells" / "0123456789abcdef0123.json").write_text('{"not": "a cell"}\n')
    (info,) = listed(out).values()
    assert (info["status"], info["cells_other"], info["cells_unreadable"]) == ("finished", 2, 1)
    with store.DirLock(out):  # another process writing it
        assert listed(out)["run"]["status"] == "running"


def test_a_damaged_cell_table_or_meta_is_damaged_naming_the_file(capsys, tmp_path, family):
    good = tmp_path / "good"
    certify(capsys, family, good, "--eps", "0.05")
    meta = store.read_signed_json(good / "meta.json", "meta.json")
    grid = [good / "cells" / n for n in meta["grid_cells"]]
    cases = {}
    for name in ("cell", "swapped", "table", "meta", "gone"):
        cases[name] = tmp_path / name
        shutil.copytree(good, cases[name])
    cell = cases["cell"] / "cells" / grid[0].name
    cell.write_text(cell.read_text().replace('"eps"', '"eps" '))
    a, b = (cases["swapped"] / "cells" / g.name for g in grid)  # a cell under another name
    a.write_bytes(b.read_bytes())
    (cases["table"] / "results.csv").write_text("model_id\nx\n")
    (cases["meta"] / "meta.json").write_text("{not json")
    (cases["gone"] / "cells" / grid[1].name).unlink()
    by = listed(tmp_path)
    assert by["good"]["status"] == "finished"
    assert by["cell"]["status"].startswith(f"damaged ({cell}"), by["cell"]
    assert by["swapped"]["status"].startswith(f"damaged ({a}: holds the cell of another key")
    assert by["table"]["status"].startswith("damaged (") and "results.csv" in by["table"][
        "status"]
    assert by["meta"]["kind"] == "certify" and by["meta"]["status"].startswith(
        "damaged (") and "meta.json" in by["meta"]["status"]
    assert by["gone"]["status"] == ("partial (1 cell of its grid missing: run the same "
                                    "command again to resume)")
    assert by["gone"]["cells_missing"] == 1
    lines = table(tmp_path)
    assert any(ln.startswith(f"{cases['cell']}: damaged: {cell}") for ln in lines), lines


def test_an_older_certify_run_without_its_grid_recorded_is_listed(capsys, tmp_path, family):
    """A certify run of a noisydeq that recorded neither its grid nor its models: listed,
    its status by its tables, its cells counted without a grid."""
    out = tmp_path / "old"
    certify(capsys, family, out, "--eps", "0.05")
    meta = store.read_signed_json(out / "meta.json", "meta.json")
    for key in ("grid_cells", "models", "source"):
        meta.pop(key)
    store.write_signed_json(out / "meta.json", meta, indent=2)
    listed_files = (out / "SHA256SUMS").read_text().split()[1::2]
    store.write_manifest(out, [out / name for name in listed_files])
    (info,) = listed(out).values()
    assert (info["kind"], info["status"], info["certified"], info["models"]) == (
        "certify", "finished", None, None)
    assert (info["cells"], info["cells_complete"], info["cells_missing"],
            info["cells_other"]) == (2, None, None, None)
    assert (f"{out}: certify of ?, digital weights only, ε 0.05; cells: its grid not recorded "
            "(a certify run of an older noisydeq)") in table(out)


TABLE2 = """name = "t2"
kind = "table2"
eps_train = [0.05]
[family]
task = "digits"
hidden = 8
[train]
epochs = 1
batch_size = 64
[ibp]
warmup_epochs = 0
ramp_epochs = 1
[certify]
eps = [0.05]
n_test = 20
pgd_steps = 2
"""


def test_a_certify_experiment_s_run_names_its_experiment(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("NOISYDEQ_CACHE", str(tmp_path / "cache"))
    exp = tmp_path / "t2.toml"
    exp.write_text(TABLE2, encoding="utf-8")
    out = tmp_path / "runs" / "t2"
    code, _, err = run_certify(capsys, str(exp), "--out", str(out), "--quiet", "--threads",
                               "1")
    assert code == 0, err
    (info,) = listed(tmp_path / "runs").values()
    assert (info["kind"], info["status"], info["certified"], info["eps"]) == (
        "certify", "finished", "experiment t2", "0.05")
    assert len(info["models"]) == 2 and info["cells_complete"] == 2


def test_a_measured_chip_is_named_as_a_chip_not_counted_as_chips(capsys, tmp_path, family):
    """``--chip 0`` is chip 0's measured error, not zero chips: the table's ``chips`` column
    (a sweep's or an attack's count) showed ``0`` for it (``3`` for ``--chip 3``); it is now
    empty, the index in ``chip`` (``--json``) and in the line after the table."""
    root = tmp_path / "runs"
    certify(capsys, family, root / "chip", "--eps", "0.05", "--device", "rram", "--chip", "0")
    run = listed(root)["chip"]
    assert (run["chip"], run["chips"], run["device"]) == ("0", None, "rram")
    lines = table(root)
    head = lines[0].split()
    row = next(ln for ln in lines if ln.startswith(f"{root / 'chip'} ")).split()
    assert row[head.index("chips")] == "-", lines
    assert any(ln.startswith(f"{root / 'chip'}: certify of ") and ", on rram chip 0, ε 0.05;"
               in ln for ln in lines), lines
