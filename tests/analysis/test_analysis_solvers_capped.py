"""A Fig. 5 where no solve met ε says why: the probe noise's residual floor, measured, with
what would let mean_rel stop; on a device run the chip model adds no floor of its own (its
floors are the digital control's)."""

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from analysis_family import rows, run, tiny_sweep  # noqa: E402

from noisydeq.analysis.solver_runs import capped_note, floor_rows  # noqa: E402


def _count(snr, frac, stop="mean_rel", window=5):
    return {"stop": stop, "window": window, "snr_db": snr, "mean_steps": 100.0,
            "median_steps": 100.0, "converged_frac": frac}


def _floor(snr, window, rel, mrel):
    return {"snr_db": snr, "window": window, "rel_floor": rel, "mean_rel_floor": mrel,
            "mean_rel_p10": mrel / 2}


def test_note_only_when_no_noisy_solve_stopped():
    floors = floor_rows([_floor(10.0, 5, 0.5, 0.1), _floor(20.0, 5, 0.15, 0.06),
                         _floor(20.0, 20, 0.15, 0.012)], 0.01)
    capped = [_count(10.0, 0.0), _count(20.0, 0.0, "rel", 1), _count(math.inf, 1.0)]
    note = capped_note(capped, floors, 0.01, 100)
    # the lowest floor over the noisy levels, and the shortest window the 1/w law gives
    # (⌈20·0.012/0.01⌉ = 24 < ⌈5·0.06/0.01⌉ = 30)
    assert "no solve met ε = 0.01 at any probe SNR (10–20 dB) within 100 steps" in note
    assert "lowest mean_rel 0.012 (w=20, 20 dB) > ε" in note and "rel ≥ 0.15" in note
    assert "--window ≳ 24 (1/w law, at 20 dB)" in note and "--eps ≳ 0.012" in note
    assert "--threshold" not in note and "chip" not in note
    assert "static weights only" in capped_note(capped, floors, 0.01, 100, on_device=True)
    # a window longer than the cap needs the cap raised too
    assert "--window ≳ 24 --threshold ≥ 24" in capped_note(capped, floors, 0.01, 10)
    # a floor below ε and still nothing stopped: the cap came first
    low = floor_rows([_floor(20.0, 20, 0.15, 0.008)], 0.01)
    assert "is below ε: the cap ends the solves first" in capped_note(capped, low, 0.01, 20)
    # no floors measured: said, with how to measure them
    assert capped_note(capped, None, 0.01, 100).endswith("--floors measures it")
    # one solve stopped somewhere, or only the noise-free level counted: nothing to explain
    assert capped_note([*capped, _count(20.0, 0.02, window=20)], floors, 0.01, 100) is None
    assert capped_note([_count(math.inf, 0.0)], floors, 0.01, 100) is None


@pytest.fixture(scope="module")
def rram_run(tmp_path_factory):
    """A tiny rram sweep (digits, depth 1, device noise at 20 dB, one chip)."""
    with tiny_sweep(tmp_path_factory.mktemp("rramsweep"), "--depths", "1", "--snr", "20",
                    "--chips", "1", "--device", "rram", "--kinds", "deq") as run_dir:
        yield run_dir


_CHEAP = ["--solvers", "unroll", "--snr", "20", "--max-iter", "10", "--width", "8",
          "--batch", "2", "--inputs", "24", "--count-snr", "10,20", "--threshold", "40",
          "--window", "5", "--accuracy-snr", "20", "--accuracy-solvers", "unroll",
          "--accuracy-max-iter", "10", "--threads", "1"]


def _fig5_note(out: str) -> str | None:
    lines = [ln for ln in out.splitlines() if ln.startswith("Fig. 5: ")]
    assert len(lines) <= 1, out
    return lines[0] if lines else None


@pytest.mark.slow
def test_device_run_with_every_solve_capped_says_why(rram_run, tmp_path, capsys):
    notes, floors = {}, {}
    for name, extra in (("rram", []), ("ideal", ["--device", "ideal"])):
        code, out, err = run(["solvers", "--family", str(rram_run), *_CHEAP, *extra,
                              "--out", str(tmp_path / name)], capsys)
        assert code == 0, err
        counts = rows(tmp_path / name / "iterations.csv")
        assert all(float(r["converged_frac"]) == 0 for r in counts)  # the flat figure
        notes[name] = _fig5_note(out)
        floors[name] = {(r["snr_db"], r["window"]): r
                        for r in rows(tmp_path / name / "floors.csv")}
        # the note names the lowest measured floor (floors.csv) and it lies above ε
        low = min(floors[name].values(), key=lambda r: float(r["mean_rel_floor"]))
        assert float(low["mean_rel_floor"]) > 0.01
        assert f"lowest mean_rel {float(low['mean_rel_floor']):.3g} (w={low['window']}" \
            in notes[name], notes[name]
        assert (tmp_path / name / "iterations.png").stat().st_size > 0
    assert "static weights only" in notes["rram"] and "static" not in notes["ideal"]
    # independent: the digital weights' floors; the chip's static error moves them by a few
    # per cent at most, so the floor is the probe noise's, not the chip's
    for key, r in floors["ideal"].items():
        for col in ("rel_floor", "mean_rel_floor"):
            assert float(floors["rram"][key][col]) == pytest.approx(float(r[col]), rel=0.1)
    # the suggested ε lets mean_rel stop at the lowest floor's level: the note goes away
    eps = notes["rram"].rsplit("--eps ≳ ", 1)[1]
    code, out, err = run(["solvers", "--family", str(rram_run), *_CHEAP, "--eps",
                          str(2 * float(eps)), "--out", str(tmp_path / "eps")], capsys)
    assert code == 0, err
    assert _fig5_note(out) is None
    assert any(float(r["converged_frac"]) > 0.5 for r in rows(tmp_path / "eps" / "iterations.csv"))
