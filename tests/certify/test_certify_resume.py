"""``noisydeq certify`` resumes like the other long runs: one signed cell per (model, ε),
an interrupted run computes only its missing cells, another ε grid only its new radii, a
served cell keeps the ``seconds`` its computing run measured, a damaged cell is refused
naming it (deleting it computes that cell again), and a cell of other code is computed
again with one line."""

from __future__ import annotations

import csv

import pytest
import torch

from noisydeq.analysis.certify_run import CertifyDir
from tests.certify.helpers import run_certify, run_certify_stopped
from tests.cli_helpers import one_line_error


def tiny_family(root):
    """An IBP-trained monDEQ and ReLU net on digits (hidden 8, one epoch) in ``root/fam``."""
    from noisydeq.config import FamilySpec, build
    from noisydeq.families import train_family

    torch.manual_seed(0)
    spec = build(FamilySpec, {"task": "digits", "depths": [1], "kinds": ["mondeq", "ffw_relu"],
                              "hidden": 8, "train": {"epochs": 1, "batch_size": 64,
                                                     "ibp": {"eps": 0.05, "warmup_epochs": 0,
                                                             "ramp_epochs": 1}}})
    train_family(spec, cache_dir=root / "fam")
    return root / "fam"


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    return tiny_family(tmp_path_factory.mktemp("certify-resume"))


ARGS = ["--n-test", "30", "--pgd-steps", "2", "--threads", "1", "--quiet"]


def certify(capsys, family, out, *argv):
    code, stdout, err = run_certify(capsys, str(family), "--out", str(out), *ARGS, *argv)
    assert code == 0, err
    return stdout


def table(out) -> list[dict[str, str]]:
    with open(out / "results.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def untimed(rows):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def cell_files(out):
    return sorted((out / "cells").iterdir())


def test_an_interrupted_run_resumes_computing_only_its_missing_cells(
        capsys, tmp_path, family, monkeypatch):
    full = tmp_path / "full"
    assert "cells: 4 computed" in certify(capsys, family, full, "--eps", "0.02,0.05")
    out = tmp_path / "out"
    code, _, err, written = run_certify_stopped(monkeypatch, capsys, str(family), "--out",
                                                str(out), *ARGS, "--eps", "0.02,0.05")
    assert code == 130 and "run the same command again to resume" in err, err
    assert len(cell_files(out)) == 1 and not (out / "results.csv").exists()
    assert not (out / "SHA256SUMS").exists()
    computed = []
    real = CertifyDir.save_cell
    monkeypatch.setattr(CertifyDir, "save_cell",
                        lambda self, key, *a: computed.append(key) or real(self, key, *a))
    stdout = certify(capsys, family, out, "--eps", "0.02,0.05")
    assert f"cells: 3 computed, 1 served from {out}" in stdout
    assert written[0] not in computed and len(set(computed)) == 3
    assert untimed(table(out)) == untimed(table(full))
    from noisydeq import store

    assert "results.csv" in store.verify_manifest(out)


def test_another_eps_grid_computes_only_its_new_radii_and_keeps_their_seconds(
        capsys, tmp_path, family):
    out = tmp_path / "out"
    assert "cells: 2 computed" in certify(capsys, family, out, "--eps", "0.05")
    first = table(out)
    stdout = certify(capsys, family, out, "--eps", "0,0.05")
    assert f"cells: 2 computed, 2 served from {out}" in stdout
    grown = table(out)
    assert len(grown) == 4 and {r["eps"] for r in grown} == {"0.0", "0.05"}
    # a served cell's row, seconds included, is the row of the run that computed it
    assert [r for r in grown if r["eps"] == "0.05"] == first
    # back to the first grid: everything served, the first table again, byte for byte
    before = (out / "results.csv").read_bytes()
    assert "cells: 0 computed, 2 served" in certify(capsys, family, out, "--eps", "0.05")
    assert table(out) == first and (out / "results.csv").read_bytes() != before
    # another setting (PGD steps) is another cell: computed, not served
    stdout = certify(capsys, family, out, "--eps", "0.05", "--pgd-steps", "3")
    assert "cells: 2 computed" in stdout and "served" not in stdout
    assert len(cell_files(out)) == 6


def test_a_damaged_cell_is_refused_naming_it_and_computed_once_deleted(
        capsys, tmp_path, family):
    from noisydeq import store

    out = tmp_path / "out"
    certify(capsys, family, out, "--eps", "0.05")
    cell = cell_files(out)[0]
    data = store.read_signed_json(cell, "cell")
    store.write_signed_json(cell, {**data, "rows": data["rows"] * 2})
    before = (out / "results.csv").read_bytes()
    code, _, err = run_certify(capsys, str(family), "--out", str(out), *ARGS, "--eps", "0.05")
    one_line_error(code, err, cell.name, "delete it to compute that cell again")
    assert (out / "results.csv").read_bytes() == before
    cell.write_bytes(b"{not json")
    code, _, err = run_certify(capsys, str(family), "--out", str(out), *ARGS, "--eps", "0.05")
    one_line_error(code, err, cell.name)
    cell.unlink()
    assert f"cells: 1 computed, 1 served from {out}" in certify(capsys, family, out,
                                                                 "--eps", "0.05")
    assert untimed(table(out)) == untimed([{**r} for r in csv.DictReader(
        before.decode().splitlines())])


def test_cells_of_other_code_are_computed_again_with_a_note(capsys, tmp_path, family,
                                                           monkeypatch):
    from noisydeq import fingerprint

    out = tmp_path / "out"
    certify(capsys, family, out, "--eps", "0.05")
    monkeypatch.setattr(fingerprint, "code_fingerprint", lambda *kind: "0" * 16)
    code, stdout, err = run_certify(capsys, str(family), "--out", str(out), "--n-test", "30",
                                    "--pgd-steps", "2", "--threads", "1", "--eps", "0.05")
    assert code == 0, err
    assert "cells: 2 computed" in stdout and "served" not in stdout
    assert f"note: 2 of 2 cells in {out} were computed by other noisydeq code" in err


@pytest.mark.parametrize("flag", ["--quiet", "--json"])
def test_a_quiet_run_still_says_its_cells_of_other_code(capsys, tmp_path, family, monkeypatch,
                                                        flag):
    """--quiet ('no per-model lines') and --json hid the line, so a resume after an upgrade
    computed every cell again unsaid (noisydeq attack --quiet says it)."""
    from noisydeq import fingerprint

    out = tmp_path / "out"
    certify(capsys, family, out, "--eps", "0.05")
    monkeypatch.setattr(fingerprint, "code_fingerprint", lambda *kind: "0" * 16)
    code, stdout, err = run_certify(capsys, str(family), "--out", str(out), "--n-test", "30",
                                    "--pgd-steps", "2", "--threads", "1", "--eps", "0.05", flag)
    assert code == 0, err
    assert f"note: 2 of 2 cells in {out} were computed by other noisydeq code" in err, err
    assert "computed by other" not in stdout


def test_a_device_run_of_other_code_counts_its_digital_cells_too(capsys, tmp_path, family,
                                                                  monkeypatch):
    """A device run's cells and their digital cells, all of other code: '4 of 4 cells' are
    computed again (not '4 of 2'), every row of them."""
    from noisydeq import fingerprint

    out = tmp_path / "out"
    argv = ["--out", str(out), "--n-test", "30", "--pgd-steps", "2", "--threads", "1",
            "--eps", "0.05", "--device", "rram", "--k", "1"]
    code, _, err = run_certify(capsys, str(family), *argv)
    assert code == 0, err
    monkeypatch.setattr(fingerprint, "code_fingerprint", lambda *kind: "0" * 16)
    code, stdout, err = run_certify(capsys, str(family), *argv)
    assert code == 0, err
    assert "cells: 2 computed" in stdout and "served" not in stdout
    assert f"note: 4 of 4 cells in {out} were computed by other noisydeq code" in err
    assert sorted(computed_rows(err)) == ["none", "none", "rram-wan2022:k=1",
                                          "rram-wan2022:k=1"]


def test_another_command_s_run_directory_is_refused_writing_nothing(capsys, tmp_path,
                                                                    family):
    out = tmp_path / "sweep"
    out.mkdir()
    (out / "config.toml").write_text("x")
    code, _, err = run_certify(capsys, str(family), "--out", str(out), *ARGS)
    one_line_error(code, err, "holds a run of another command")
    assert sorted(p.name for p in out.iterdir()) == ["config.toml"]


SLOW_CELLS = """
import sys, time
from noisydeq.analysis import certify_run
real = certify_run.CertifyDir.save_cell
def save_cell(self, *a, **k):
    real(self, *a, **k)
    time.sleep(0.5)  # a cell written, the next one not begun: where Ctrl-C lands
certify_run.CertifyDir.save_cell = save_cell
from noisydeq.cli import main
main(sys.argv[1:])
"""


@pytest.mark.slow
def test_a_real_ctrl_c_between_cells_resumes(capsys, tmp_path, family):
    """SIGINT to a certify process once its first cell is on disk: exit 130 with the resume
    line, the cell kept; the same command then computes only the others."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    out = tmp_path / "out"
    argv = [str(family), "--out", str(out), *ARGS, "--eps", "0.02,0.05"]
    env = {**os.environ, "PYTHONPATH": str(root)}
    proc = subprocess.Popen([sys.executable, "-c", SLOW_CELLS, "certify", *argv], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        while not ((out / "cells").is_dir() and any((out / "cells").glob("*.json"))):
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and "run the same command again to resume" in err, err
    kept = len(cell_files(out))
    assert 1 <= kept < 4 and not (out / "results.csv").exists()
    stdout = certify(capsys, family, out, "--eps", "0.02,0.05")
    assert f"cells: {4 - kept} computed, {kept} served from {out}" in stdout
    full = tmp_path / "full"
    certify(capsys, family, full, "--eps", "0.02,0.05")
    assert untimed(table(out)) == untimed(table(full))


def computed_rows(err):
    """The envelopes of the rows a run computed (its progress lines: ``... [envelope]: ...``)."""
    return [line.split("[", 1)[1].split("]", 1)[0] for line in err.splitlines()
            if " eps " in line and "]: clean" in line]


def cell_keys(out):
    from noisydeq import store

    return {store.read_signed_json(p, "cell")["key"]: p.name for p in cell_files(out)}


def test_another_device_computes_only_the_envelope_rows(capsys, tmp_path, family):
    """The digital rows (envelope none) depend on no envelope setting: a run with another
    device, chip or k on the same --out serves them from their own cells — the cells
    a run without --device writes, under its unchanged keys — and computes only the
    envelope rows; the table's digital rows are the first run's, seconds included."""
    from noisydeq.analysis import certify_run as cr
    from noisydeq.specs.certify import CertifySpec

    def run(out, *argv):
        code, stdout, err = run_certify(capsys, str(family), "--out", str(out),
                                        "--n-test", "30", "--pgd-steps", "2", "--threads",
                                        "1", "--eps", "0.05", *argv)
        assert code == 0, err
        return stdout, computed_rows(err)

    digital = tmp_path / "digital"
    stdout, rows = run(digital)
    assert "cells: 2 computed" in stdout and rows == ["none", "none"]
    plain = cell_keys(digital)
    # the digital cells' keys are those of the cell format before digital cells had their own
    spec = CertifySpec(eps=[0.05], n_test=30, pgd_steps=2)
    assert all(k.endswith("|" + cr.settings_digest(spec)) for k in plain)
    assert cr.settings_digest(cr.digital_spec(spec)) == cr.settings_digest(spec)

    out = tmp_path / "out"
    stdout, rows = run(out, "--device", "rram", "--k", "1")
    assert "cells: 2 computed" in stdout and "served" not in stdout
    assert sorted(rows) == ["none", "none", "rram-wan2022:k=1", "rram-wan2022:k=1"], rows
    first = table(out)
    keys = cell_keys(out)
    assert len(keys) == 4 and set(plain.items()) < set(keys.items())  # the digital cells
    # another chip, another coverage: only the envelope rows computed
    for argv, env in ((["--chip", "0"], "rram-wan2022:chip0"),
                      (["--k", "0.5"], "rram-wan2022:k=0.5")):
        stdout, rows = run(out, "--device", "rram", *argv)
        assert rows == [env, env], rows
        assert (f"cells: 2 computed (2 of the computed only in their envelope rows: the "
                f"digital rows served from {out})") in stdout, stdout
        got = table(out)
        assert [r for r in got if r["envelope"] == "none"] == \
            [r for r in first if r["envelope"] == "none"]
    assert len(cell_files(out)) == 8
    # without a device, and the first device again: everything served
    stdout, rows = run(out)
    assert f"cells: 0 computed, 2 served from {out}" in stdout and rows == []
    assert table(out) == [r for r in first if r["envelope"] == "none"]
    stdout, rows = run(out, "--device", "rram", "--k", "1")
    assert f"cells: 0 computed, 2 served from {out}" in stdout and rows == []
    assert table(out) == first and len(cell_files(out)) == 8


def test_cells_of_no_current_grid_are_counted_and_removed_only_with_prune(
        capsys, tmp_path, family):
    """Another ε grid keeps the first grid's cells (a run asking for them serves them) but
    never reads them into its table: its output counts them and says how to remove them;
    --prune removes them (with a line saying how many), and only them — a file that is no
    cell is left as it is either way, in a line of its own."""
    out = tmp_path / "out"
    certify(capsys, family, out, "--eps", "0.05")
    first = set(cell_files(out))
    stdout = certify(capsys, family, out, "--eps", "0.02")
    cells = out / "cells"
    assert (f"note: 2 cell files in {cells} belong to no cell of this run (other radii, "
            "models or settings, or an older cell format): never in its table, kept so that "
            "a run asking for them serves them; --prune removes them") in stdout, stdout
    assert first < set(cell_files(out)) and len(cell_files(out)) == 4
    assert {r["eps"] for r in table(out)} == {"0.02"}
    stray = cells / "0123456789abcdef0123.json"
    stray.write_text('{"not": "a cell"}\n')
    stdout = certify(capsys, family, out, "--eps", "0.02", "--prune")
    assert "cells: 0 computed, 2 served" in stdout
    assert (f"removed 2 cell files from {cells} that no cell of this run reads (other radii, "
            "models or settings, or an older cell format)") in stdout, stdout
    assert (f"note: 1 file in {cells} is no readable cell file of this noisydeq: left as it "
            "is (never read)") in stdout
    assert not first & set(cell_files(out)) and stray.is_file()
    assert len(cell_files(out)) == 3
    stray.unlink()
    stdout = certify(capsys, family, out, "--eps", "0.02", "--prune")
    assert "note:" not in stdout and "removed" not in stdout
    # --json prints the rows alone on stdout: what is kept or removed goes to stderr
    certify(capsys, family, out, "--eps", "0.05")
    code, stdout, err = run_certify(capsys, str(family), "--out", str(out), *ARGS,
                                    "--eps", "0.02", "--json", "--prune")
    assert code == 0 and stdout.lstrip().startswith("["), err
    assert f"removed 2 cell files from {cells}" in err and len(cell_files(out)) == 2
    # the digital cells of a device run are cells of that run: never counted, never pruned
    stdout = certify(capsys, family, out, "--eps", "0.02", "--device", "rram", "--k", "1",
                     "--prune")
    assert "cells: 2 computed (2 of the computed only in their envelope rows" in stdout
    assert "removed" not in stdout and "note:" not in stdout and len(cell_files(out)) == 4
