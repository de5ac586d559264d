"""``noisydeq solvers`` and the trace/iteration/accuracy studies (paper App. B, Fig. 4-6)."""

import csv
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from analysis_family import make_family  # noqa: E402

from noisydeq.analysis import traces  # noqa: E402
from noisydeq.cli import main  # noqa: E402
from noisydeq.errors import NoisyDEQError  # noqa: E402


def test_fig4_cell_is_the_papers_cell():
    cell, xt = traces.fig4_cell(100, 4, seed=1)
    w = cell.W.weight
    assert w.shape == (100, 100) and float(w.abs().max()) <= 0.1
    assert abs(float(w.std()) - 0.2 / math.sqrt(12)) < 0.005  # U(−0.1, 0.1)
    assert float(cell.W.bias.abs().max()) == 0.0 and xt.shape == (4, 100)


def test_traces_noise_floor_and_averaging():
    """Under noise rel plateaus near the noise level; the window average sits below it."""
    cell, xt = traces.fig4_cell(100, 8, seed=0, dtype=torch.float64)
    ts = traces.residual_traces(cell, xt, [math.inf, 20.0], ["unroll", "stochastic"],
                                max_iter=60)
    by = {(t.solver, t.snr_db): t for t in ts}
    assert float(by[("unroll", math.inf)].rel[-1].max()) < 1e-8  # contraction: converges
    noisy = by[("unroll", 20.0)]
    floor = float(noisy.rel[-20:].median())
    assert 0.02 < floor < 0.3  # ‖ε‖/‖f‖ ≈ 10^(−20/20) = 0.1 scale
    assert float(noisy.mean_rel[-20:].median()) < 0.5 * floor


def test_mean_rel_stops_earlier_than_rel_under_noise(tmp_path):
    fam = make_family(tmp_path / "f", depths=(1,))
    from noisydeq.analysis.family import load_family
    from noisydeq.tasks import load_task

    deq = next(m for m in load_family(fam) if m.kind == "deq")
    x = load_task("digits").x_test[:64]
    counts = traces.iteration_counts(deq.model, x, [10.0], eps=0.05, max_iter=60)
    by = {c.stop: c for c in counts}
    assert float(by["mean_rel"].steps.double().mean()) < float(by["rel"].steps.double().mean())


def test_unknown_solver_names_are_one_line(capsys):
    with pytest.raises(NoisyDEQError, match="did you mean 'broyden'"):
        traces.check_solvers(["broydn"])
    with pytest.raises(SystemExit) as e:
        main(["solvers", "--solvers", "unroll,newton"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1
    assert "allowed: unroll, stochastic, anderson, broyden" in err


def test_solvers_command_writes_tables_and_figures(tmp_path, capsys):
    out = tmp_path / "o"
    main_args = ["solvers", "--snr", "0,20", "--max-iter", "30", "--width", "20", "--batch",
                 "4", "--out", str(out)]
    try:
        main(main_args)
    except SystemExit as e:
        assert e.code == 0
    for name in ("traces.csv", "traces.png", "traces.svg"):
        assert (out / name).stat().st_size > 0
    with open(out / "traces.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 4 * 2 * 30
    assert {r["solver"] for r in rows} == {"unroll", "stochastic", "anderson", "broyden"}
