"""``noisydeq sensitivity`` / ``spectrum`` on a trained family: outputs, numbers, bad input."""

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from analysis_family import make_family, rows, run  # noqa: E402

from noisydeq import store  # noqa: E402
from noisydeq.analysis import probe, spectra  # noqa: E402
from noisydeq.analysis.family import load_family  # noqa: E402
from noisydeq.config import NoiseSpec  # noqa: E402
from noisydeq.tasks import load_task  # noqa: E402


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    return make_family(tmp_path_factory.mktemp("family"))




def test_sensitivity_command_writes_ratio_table_and_figures(family, tmp_path, capsys):
    out = tmp_path / "s"
    code, stdout, err = run(["sensitivity", "--family", str(family), "--samples", "20",
                             "--inputs", "2", "--precision", "0.2", "--out", str(out)], capsys)
    assert code == 0, err
    for name in ("sensitivity.csv", "sensitivity.png", "sensitivity.svg"):
        assert (out / name).stat().st_size > 0
    table = rows(out / "sensitivity.csv")
    assert [int(r["depth"]) for r in table] == [1, 3]
    # matched widths of a 6-unit family round: the pair at depth 3 is reported, not hidden
    assert "depth 3: DEQ (width 11) has 132 hidden parameters but the FFW has 126" in err
    members = load_family(family)
    x = load_task("digits").x_test[:2]
    for r in table:
        assert float(r["ratio"]) == pytest.approx(float(r["deq_sens"]) / float(r["ffw_sens"]),
                                                  rel=1e-4)
        assert float(r["deq_sens"]) <= float(r["deq_bound_norm"])
        assert float(r["ffw_sens"]) <= float(r["ffw_bound_norm"])
    # the command's number is the library's number for the same seed stream
    from noisydeq.noise import derive_seed, seeded_generator

    deq1 = next(m for m in members if m.kind == "deq" and m.depth == 1)
    s = probe.sensitivity(deq1.model, x, NoiseSpec(site="signal", kind="additive", eta=0.1),
                          n_noise=20, generator=seeded_generator(
                              derive_seed(0, "sensitivity", "deq", 1, 0)))
    assert float(table[0]["deq_sens"]) == pytest.approx(s.mean, rel=1e-5)
    # same seed, same table
    code, _, _ = run(["sensitivity", "--family", str(family), "--samples", "20", "--inputs",
                      "2", "--precision", "0.2", "--out", str(tmp_path / "s2")], capsys)
    assert (tmp_path / "s2" / "sensitivity.csv").read_text() == \
        (out / "sensitivity.csv").read_text()


def test_spectrum_command_matches_eigvals(family, tmp_path, capsys):
    out = tmp_path / "sp"
    code, stdout, err = run(["spectrum", "--family", str(family), "--inputs", "3",
                             "--out", str(out)], capsys)
    assert code == 0, err
    for name in ("spectrum.csv", "eigenvalues.csv", "spectrum.png", "spectrum.svg",
                 "spectrum_radius.png"):
        assert (out / name).stat().st_size > 0
    table = {(r["kind"], int(r["depth"])): r for r in rows(out / "spectrum.csv")}
    members = {(m.kind, m.depth): m for m in load_family(family)}
    deq = members[("deq", 3)].model
    assert float(table[("deq", 3)]["rho"]) == pytest.approx(
        spectra.spectral_radius(deq.cell.W.weight), rel=1e-5)
    ffw = members[("ffw", 3)].model
    Ws = [layer.W.weight for layer in ffw.layers]
    assert float(table[("ffw", 3)]["rho"]) == pytest.approx(
        spectra.spectral_radius(Ws[2] @ Ws[1] @ Ws[0]), rel=1e-5)  # eq57x: all three act
    assert table[("deq", 3)]["jac_converged"] == "3/3"
    # ρ(J) = ρ(diag(1 − z*²) W) ≤ ‖W‖₂
    assert float(table[("deq", 3)]["jac_rho_max"]) <= float(table[("deq", 3)]["spectral_norm_max"])
    n_eig = sum(1 for r in rows(out / "eigenvalues.csv") if r["kind"] == "deq"
                and r["depth"] == "3")
    assert n_eig == members[("deq", 3)].width
    # the printed table: ρ(J*) of a DEQ as a number, "-" for an FFW (no fixed point), no nan;
    # spectrum.csv leaves the FFW's cell empty
    printed = {tuple(ln.split()[1:3]): ln.split() for ln in stdout.splitlines()
               if ln.split()[1:2] in (["deq"], ["ffw"])}
    assert printed[("ffw", "3")][-1] == "-" and "nan" not in stdout
    assert float(printed[("deq", "3")][-1]) == pytest.approx(
        float(table[("deq", 3)]["jac_rho_mean"]), rel=1e-3)
    assert table[("ffw", 3)]["jac_rho_mean"] == ""
    # four significant digits, trailing zeros kept (ρ printed "6.9" under "7.644" before)
    for kind in ("deq", "ffw"):
        assert printed[(kind, "3")][4] == f"{float(table[(kind, 3)]['rho']):#.4g}"


def _one_line_error(code, err, *needles):
    assert code == 2
    lines = [ln for ln in err.strip().splitlines() if ln]
    assert len(lines) == 1 and lines[0].startswith("noisydeq: error:"), err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], lines[0]


def test_bad_input_is_one_line(family, tmp_path, capsys):
    code, _, err = run(["sensitivity", "--family", str(tmp_path / "nope")], capsys)
    _one_line_error(code, err, "does not exist")
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run(["spectrum", "--family", str(empty)], capsys)
    _one_line_error(code, err, "no trained model")
    code, _, err = run(["sensitivity", "--family", str(family), "--samples", "1"], capsys)
    _one_line_error(code, err, "--samples", "at least 2")
    code, _, err = run(["sensitivity", "--family", str(family), "--samples", "4", "--inputs",
                        "1", "--precision", "1e-6", "--out", str(tmp_path / "p")], capsys)
    assert code == 2 and "relative standard error" in err and "--samples" in err
    assert "Traceback" not in err
    # a checkpoint that is not a noisydeq model, and an untrained one
    bogus = tmp_path / "bogus" / "model.safetensors"
    store.save_checkpoint(bogus, {"w": torch.zeros(2)}, {"model": {}}, {"test_metric": 1.0})
    code, _, err = run(["sensitivity", "--family", str(bogus)], capsys)
    _one_line_error(code, err, "no model spec")
    # a sweep run dir whose config.toml is damaged: named as such, not "no trained model"
    for name, text in (("blank", ""), ("nodigest", "seeds = [0]\n"),
                       ("changed", "# sha256 00\nseeds = [0]\n")):
        run_dir = tmp_path / name
        run_dir.mkdir()
        (run_dir / "config.toml").write_text(text)
        for cmd in ("spectrum", "sensitivity"):
            code, _, err = run([cmd, "--family", str(run_dir)], capsys)
            _one_line_error(code, err, f"--family {run_dir}: its config.toml is damaged")
            assert "no trained model" not in err and "--out" not in err
    untrained = make_family(tmp_path / "untrained", depths=(1,), epochs=0)
    code, _, err = run(["spectrum", "--family", str(untrained)], capsys)
    _one_line_error(code, err, "untrained")


def test_multiplicative_and_state_sites_run(family, tmp_path, capsys):
    code, _, err = run(["sensitivity", "--family", str(family / "deq-d1"), "--kind",
                        "multiplicative", "--snr", "10", "--site", "state", "--samples", "10",
                        "--inputs", "1", "--precision", "0", "--out", str(tmp_path / "m")],
                       capsys)
    assert code == 0, err
    r = rows(tmp_path / "m" / "sensitivity.csv")[0]
    assert float(r["deq_sens"]) > 0 and math.isnan(float(r["ratio"]))


def test_ffw_eigenvalue_bins_are_even_on_the_symlog_axis():
    """|λ| of a deep FFW's product spans decades: linear bins put nearly all of them into the
    first bar; the symlog-even bins spread them and keep every value."""
    import numpy as np

    from noisydeq.analysis.runs import SYMLOG_THRESHOLD, _symlog_bins

    mags = np.concatenate([np.zeros(3), np.geomspace(1e-5, 9e-4, 20), np.geomspace(1e-3, 7.3, 480)])
    edges = _symlog_bins(mags, SYMLOG_THRESHOLD)
    counts, _ = np.histogram(mags, bins=edges)
    assert counts.sum() == mags.size and edges[0] == 0 and edges[-1] == mags.max()
    assert np.all(np.diff(np.log(edges[1:])) > 0)  # log-spaced above the threshold
    linear, _ = np.histogram(mags, bins=40)
    assert linear[0] > 0.5 * mags.size and counts.max() < 0.1 * mags.size
