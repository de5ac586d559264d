"""mean_rel noise floor vs window (Eq. 54) and the ``--window`` option of ``noisydeq solvers``."""

import csv
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from analysis_family import make_family, run  # noqa: E402

from noisydeq.analysis import traces  # noqa: E402
from noisydeq.config import SolverSpec  # noqa: E402
from noisydeq.errors import NoisyDEQError  # noqa: E402
from noisydeq.noise import NoiseStream, additive  # noqa: E402
from noisydeq.solvers import solve  # noqa: E402


def measured_ratio(rho: float, window: int, seed: int = 0) -> float:
    """RMS(mean_rel) / RMS(rel) of undamped unrolling on f(z) = ρ z + c + η ξ_k."""
    d, b, steps = 256, 16, 400
    g = torch.Generator().manual_seed(seed)
    c = (1 - rho) * (1 + torch.rand(b, d, generator=g, dtype=torch.float64))  # z* in [1, 2]
    stream = NoiseStream.from_seed(seed + 1)

    def f(z):
        return additive(rho * z + c, 0.01, stream)

    spec = SolverSpec(name="unroll", max_iter=steps, tol=1e-30, stop="rel", window=window)
    sol = solve(f, torch.zeros(b, d, dtype=torch.float64), spec)
    tail = slice(steps // 2, None)
    rel2 = sol.trace["rel"][tail].pow(2).mean()
    mrel2 = sol.trace["mean_rel"][tail].pow(2).mean()
    return float((mrel2 / rel2).sqrt())


@pytest.mark.parametrize("rho", [0.0, 0.5, 0.9])
@pytest.mark.parametrize("window", [1, 5, 20])
def test_mean_rel_floor_matches_ar1_closed_form(rho, window):
    """Telescoping window sums: mean_rel/rel = (1/w)√((1−ρ^w)/(1−ρ)) under i.i.d. noise."""
    expected = traces.ar1_floor_ratio(rho, window)
    assert measured_ratio(rho, window) == pytest.approx(expected, rel=0.01)


def test_floor_law_is_one_over_w_not_one_over_sqrt_w():
    # no memory (ρ = 0): exactly 1/w; with memory the prefactor grows, the slope stays 1/w
    assert traces.ar1_floor_ratio(0.0, 20) == pytest.approx(1 / 20)
    assert measured_ratio(0.0, 20) < 0.6 / math.sqrt(20)
    r = [traces.ar1_floor_ratio(0.5, w) for w in (10, 20, 40)]
    assert r[0] / r[1] == pytest.approx(2.0, rel=0.01) and r[1] / r[2] == pytest.approx(2.0,
                                                                                          rel=0.01)
    # slow contraction: 1/√w while w ≪ 1/(1−ρ)
    assert traces.ar1_floor_ratio(0.999, 4) == pytest.approx(0.5, rel=0.01)
    with pytest.raises(NoisyDEQError, match="rho"):
        traces.ar1_floor_ratio(1.0, 5)


def test_parse_windows():
    assert traces.parse_windows("5") == [5]
    assert traces.parse_windows("20, 5") == [20, 5]
    with pytest.raises(NoisyDEQError, match="^--window: 20 is given twice"):  # was dropped
        traces.parse_windows("20, 5,20")
    for bad in ("0", "a", "5,-1", ""):
        with pytest.raises(NoisyDEQError, match="--window"):
            traces.parse_windows(bad)


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    return make_family(tmp_path_factory.mktemp("wfam"), depths=(1,))



def solvers_windows(family, out, count_snr: str, capsys):
    """(exit code, stdout, stderr) of ``noisydeq solvers`` on ``family`` into ``out``: the
    unroll solver at 10 dB, windows 4 and 16 counted at the levels ``count_snr``."""
    return run(
        ["solvers", "--family", str(family), "--solvers", "unroll", "--snr", "10",
         "--max-iter", "20", "--width", "10", "--batch", "2", "--inputs", "32",
         "--count-snr", count_snr, "--window", "4,16", "--tol", "0.05", "--threshold", "40",
         "--accuracy-snr", "inf", "--accuracy-solvers", "unroll", "--accuracy-max-iter", "8",
         "--out", str(out)], capsys)


def test_window_list_gives_one_mean_rel_curve_per_window(family, tmp_path, capsys):
    out = tmp_path / "o"
    code, stdout, err = solvers_windows(family, out, "10,20", capsys)
    assert code == 0, err
    with open(out / "iterations.csv") as fh:
        rows = list(csv.DictReader(fh))
    keys = [(r["stop"], int(r["window"]), float(r["snr_db"])) for r in rows]
    assert keys == [("rel", 1, 10.0), ("mean_rel", 4, 10.0), ("mean_rel", 16, 10.0),
                    ("rel", 1, 20.0), ("mean_rel", 4, 20.0), ("mean_rel", 16, 20.0)]
    for r in rows:  # mean_rel can stop only once its window is full
        if r["stop"] == "mean_rel":
            assert float(r["mean_steps"]) >= int(r["window"])
    with open(out / "floors.csv") as fh:
        floors = {(float(r["snr_db"]), int(r["window"])): r for r in csv.DictReader(fh)}
    for snr in (10.0, 20.0):
        a, b = floors[(snr, 4)], floors[(snr, 16)]
        assert float(a["rel_floor"]) == pytest.approx(float(b["rel_floor"]))  # same noise draws
        # the floor falls by at least (16/4)^(1/2) and at most a bit beyond 16/4
        drop = float(a["mean_rel_floor"]) / float(b["mean_rel_floor"])
        assert 2.0 < drop < 4.5
    for name in ("floors.png", "floors.svg", "iterations.png"):
        assert (out / name).stat().st_size > 0


@pytest.mark.parametrize("argv, msg", [
    (["--window", "0"], "--window: '0' is not a positive integer"),
    (["--window", "40", "--max-iter", "30"], "--window 40: must not exceed --max-iter 30"),
    (["--window", "5,80", "--threshold", "60"], "--window 80: must not exceed --count-max-iter"),
    (["--window", "50", "--max-iter", "60", "--threshold", "60"],
     "--window 50: must not exceed --accuracy-max-iter 40"),
])
def test_bad_windows_are_one_line(family, tmp_path, capsys, argv, msg):
    code, _, err = run(["solvers", "--family", str(family), "--out", str(tmp_path / "x"), *argv],
                       capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and msg in err
    assert not (tmp_path / "x").exists()


def test_a_noise_free_level_has_no_floor_and_no_window(family, tmp_path, capsys,
                                                       monkeypatch):
    """At SNR ∞ the run's tail is the solve's own convergence residual (~1e-8 here), no
    floor: floors.csv leaves w_times_ratio and window_needed empty there (the column read
    ~1 whatever ε), the console line says why instead of 'window for ε: ~1', and the
    figure draws that level grey and hollow, without a 1/w guide, its legend saying so.
    The noisy level keeps both numbers."""
    import matplotlib.pyplot as plt

    from noisydeq.analysis import solver_runs

    kept = []
    monkeypatch.setattr(plt, "close", lambda fig=None: kept.append(fig))
    out = tmp_path / "o"
    code, stdout, err = solvers_windows(family, out, "10,inf", capsys)
    monkeypatch.undo()
    assert code == 0, err
    with open(out / "floors.csv") as fh:
        floors = {(float(r["snr_db"]), int(r["window"])): r for r in csv.DictReader(fh)}
    assert set(floors) == {(10.0, 4), (10.0, 16), (math.inf, 4), (math.inf, 16)}
    lines = [ln for ln in stdout.splitlines() if ln.startswith("  SNR ") and " w=" in ln]
    assert len(lines) == 4
    for (snr, w), r in floors.items():
        line = next(ln for ln in lines if ln.split()[1] == f"{snr:g}" and f"w={w} " in ln)
        if math.isinf(snr):
            assert r["window_needed"] == "" and r["w_times_ratio"] == ""
            assert float(r["mean_rel_floor"]) < 1e-3  # converged: no floor
            assert line.endswith(f"({solver_runs.NO_FLOOR})") and "~" not in line
        else:
            need = math.ceil(w * float(r["mean_rel_floor"]) / 0.05)
            assert int(r["window_needed"]) == need and float(r["w_times_ratio"]) > 0
            assert line.endswith(f"(window for ε: ~{need})")
    fig = next(f for f in kept if f is not None and "noise floor" in f.axes[0].get_title())
    ax = fig.axes[0]
    labels = [ln.get_label() for ln in ax.get_lines()]
    assert "no noise: the solve's residual, no floor" in labels and "10 dB" in labels
    # per level its points, a 1/w guide for the noisy one only; and the ε line
    assert len([ln for ln in ax.get_lines() if ln.get_linestyle() == ":"]) == 1
    plt.close("all")
