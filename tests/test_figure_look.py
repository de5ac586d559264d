"""Every figure of the package has the house look and its CSV (noisydeq.figures).

The figures are drawn from real analyses (a tiny trained digits family, the Fig. 4 cell) or
from rows with known values, and checked on the matplotlib figure object itself: the title
names the task / noise / band, DEQ lines are blues and solid, FFW lines oranges and dashed
(darker = larger), depth axes have integer ticks, and the CSV beside the PNG holds the
plotted numbers exactly.
"""

from __future__ import annotations

import csv
import math

import matplotlib.pyplot as plt
import pytest
import torch

from noisydeq import figures


@pytest.fixture
def kept(monkeypatch):
    """The figures that ``save_figure`` closes, kept open for inspection."""
    closed = []
    monkeypatch.setattr(plt, "close", lambda fig=None: closed.append(fig))
    yield closed
    monkeypatch.undo()
    plt.close("all")


def _texts(fig) -> str:
    parts = [fig._suptitle.get_text() if fig._suptitle else ""]
    parts += [ax.get_title() for ax in fig.axes]
    return "\n".join(parts)


def _is_blue(c) -> bool:
    r, _g, b = c[:3]
    return b > r + 0.1


def _is_orange(c) -> bool:
    r, _g, b = c[:3]
    return r > b + 0.1


def _darkness(c) -> float:
    return -sum(c[:3])


def _kind_lines(fig):
    """(label, colour, linestyle) of every labelled line of every axes."""
    from matplotlib.colors import to_rgba

    out = []
    for ax in fig.axes:
        for line in ax.get_lines():
            label = line.get_label()
            if label and not label.startswith("_"):
                out.append((label, to_rgba(line.get_color()), line.get_linestyle()))
        for cont in ax.containers:  # errorbar lines
            lines = getattr(cont, "lines", None)
            if lines and lines[0] is not None and cont.get_label() and \
                    not cont.get_label().startswith("_"):
                out.append((cont.get_label(), to_rgba(lines[0].get_color()),
                            lines[0].get_linestyle()))
    return out


def _check_kinds(fig) -> int:
    """DEQ blues solid, FFW oranges dashed; returns how many kind lines were checked."""
    n = 0
    for label, colour, ls in _kind_lines(fig):
        if label.startswith("DEQ"):
            assert _is_blue(colour), (label, colour)
            assert ls == "-", (label, ls)
            n += 1
        elif label.startswith("FFW"):
            assert _is_orange(colour), (label, colour)
            assert ls == "--", (label, ls)
            n += 1
    return n


def _csv(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


# ----------------------------------------------------------------- the writer


def test_csv_floats_are_exact_and_columns_are_the_union(tmp_path):
    import numpy as np

    rows = [{"a": 0.1 + 0.2, "b": 1}, {"a": math.inf, "c": np.float64(1 / 3)},
            {"a": math.nan, "b": np.int64(7), "c": np.float32(0.1)}]
    path = figures.write_csv(tmp_path / "t.csv", rows)
    back = _csv(path)
    assert list(back[0]) == ["a", "b", "c"]
    assert float(back[0]["a"]) == 0.1 + 0.2  # exact, not 6 significant digits (0.3)
    assert back[0]["c"] == "" and back[1]["b"] == ""
    assert back[1]["a"] == "inf" and math.isnan(float(back[2]["a"]))
    assert float(back[1]["c"]) == 1 / 3 and back[2]["b"] == "7"
    assert float(back[2]["c"]) == float(np.float32(0.1))


def test_save_figure_writes_png_svg_csv_and_a_stable_svg(tmp_path):
    for name in ("one", "two"):
        with figures.styled() as p:
            fig, ax = p.subplots()
            ax.plot([1, 2], [3, 4])
            paths = figures.save_figure(fig, tmp_path / name, [{"x": 1, "y": 3.0}])
        assert [q.suffix for q in paths] == [".png", ".svg", ".csv"]
    assert (tmp_path / "one.svg").read_bytes() == (tmp_path / "two.svg").read_bytes()


def test_member_colours_and_title_grammar():
    c = figures.member_colours([("deq", 1), ("deq", 5), ("ffw", 1), ("ffw", 5)])
    assert _is_blue(c[("deq", 1)]) and _is_orange(c[("ffw", 5)])
    assert _darkness(c[("deq", 5)]) > _darkness(c[("deq", 1)])
    assert figures.context_title("Fig", task="digits", device="rram", noise="noise mode static",
                                 band="band: min-max over 3 chips") == \
        "Fig — digits · rram, noise mode static\nband: min-max over 3 chips"
    assert figures.context_title("", task="digits") == "digits"


# ----------------------------------------------------------------- analyses


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    from tests.analysis.analysis_family import make_family

    return make_family(tmp_path_factory.mktemp("fam"), depths=(1, 2, 3))


def test_sensitivity_and_spectrum_figures(family, tmp_path, kept):
    from noisydeq.analysis.family import load_family
    from noisydeq.analysis.runs import family_inputs, run_sensitivity, run_spectrum
    from noisydeq.config import NoiseSpec

    members = load_family(family, torch.device("cpu"))
    x = family_inputs(members, 2, None, torch.device("cpu"))
    spec = NoiseSpec(site="signal", kind="additive", eta=0.1)
    rows, paths = run_sensitivity(members, spec, x, tmp_path, n_noise=4, precision=None)
    assert {p.name for p in paths} == {"sensitivity.png", "sensitivity.svg", "sensitivity.csv"}
    fig = kept[-1]
    text = _texts(fig)
    assert "digits" in text and "signal noise, additive η = 0.1" in text
    assert "±1 s.e. over 4 noise samples × 2 inputs" in text
    assert _check_kinds(fig) >= 2
    for ax in fig.axes:  # depth axes: integer ticks only
        assert all(float(t).is_integer() for t in ax.get_xticks())
    back = _csv(tmp_path / "sensitivity.csv")
    assert [float(r["ratio"]) for r in back] == [r["ratio"] for r in rows]

    summary, paths = run_spectrum(members, x, tmp_path / "spec")
    names = {p.name for p in paths}
    assert {"spectrum.png", "spectrum_radius.png", "spectrum_radius.csv", "spectrum.csv",
            "eigenvalues.csv"} <= names
    radius = kept[-1]
    assert "digits" in _texts(radius) and _check_kinds(radius) >= 2
    assert all(float(t).is_integer() for t in radius.axes[0].get_xticks())
    plotted = _csv(tmp_path / "spec" / "spectrum_radius.csv")
    rho = {(r["kind"], r["depth"]): r["rho"] for r in summary}
    for r in plotted:
        if r["quantity"] == "rho":
            assert float(r["value"]) == rho[(r["kind"], int(r["depth"]))]
    # histograms: DEQ panels blue, FFW panels orange
    hist = kept[-2]
    for ax in hist.axes:
        if ax.patches:
            face = ax.patches[0].get_facecolor()
            assert _is_blue(face) if ax.get_title().startswith("DEQ") else _is_orange(face)


def test_solver_traces_figure(tmp_path, kept):
    from noisydeq.analysis import solver_runs, traces

    cell, xt = traces.fig4_cell(12, 3, 0)
    ts = traces.residual_traces(cell, xt, [0.0, 20.0], ["unroll", "anderson"], max_iter=12,
                                seed=0, window=3)
    paths = solver_runs.write_traces(ts, tmp_path)
    assert {p.name for p in paths} == {"traces.png", "traces.svg", "traces.csv"}
    fig = kept[-1]
    assert "state noise" in _texts(fig) and "median over 3 inputs" in _texts(fig)
    colours = {lab: c for lab, c, _ls in _kind_lines(fig)}
    assert all(_is_blue(c) for c in colours.values())  # one DEQ cell: blues
    assert _darkness(colours["anderson"]) > _darkness(colours["unroll"])
    assert all(float(t).is_integer() for t in fig.axes[0].get_xticks())
    back = _csv(tmp_path / "traces.csv")
    assert [float(r["rel_median"]) for r in back] == [
        r["rel_median"] for r in solver_runs.trace_rows(ts)]


# ----------------------------------------------------------------- from rows


def test_certified_figure(tmp_path, kept):
    from noisydeq.analysis.certified import plot_accuracy

    rows = []
    for kind, width in (("mondeq", 8), ("mondeq", 16), ("ffw", 8)):
        for seed in (0, 1):
            for eps in (0.0, 0.1):
                rows.append({"envelope": "none", "kind": kind, "param": "", "width": width,
                             "eps_train": math.nan, "eps": eps, "seed": seed, "n_samples": 50,
                             "certified_acc": 0.9 - eps - 0.01 * seed, "pgd_acc": 0.95 - eps,
                             "clean_acc": 0.97})
    paths = plot_accuracy(rows, tmp_path / "cert", "Table 2")
    assert paths[-1].name == "cert.csv"
    fig = kept[-1]
    text = _texts(fig)
    assert "Table 2" in text and "±1 s.d. over 2 seeds" in text and "50 test inputs" in text
    looks = {lab: (c, ls) for lab, c, ls in _kind_lines(fig)}
    ffw_c, ffw_ls = looks["ffw w8: certified"]
    assert _is_orange(ffw_c) and ffw_ls == "--"
    small, big = looks["mondeq w8: certified"][0], looks["mondeq w16: certified"][0]
    assert _darkness(big) > _darkness(small)  # darker = wider
    back = _csv(tmp_path / "cert.csv")
    one = next(r for r in back if r["kind"] == "mondeq" and r["width"] == "8"
               and r["eps"] == "0.1")
    assert float(one["certified_mean"]) == pytest.approx(0.9 - 0.1 - 0.005)


def test_lyapunov_device_figure(tmp_path, kept):
    from noisydeq.analysis.lyapunov_report import plot_device

    rows = [{"device": "rram", "model": m, "snr_db": s, "value": v, "seed": seed, "chip": chip,
             "noise_mode": "static"}
            for m, v in (("deq", 0.8), ("ffw", 0.7), ("lyadeq", 0.85))
            for s in (0.0, 10.0, math.inf) for seed in (0, 1) for chip in range(3)]
    plot_device(rows, tmp_path, task="digits")
    fig = kept[-1]
    text = _texts(fig)
    assert "digits · rram, noise mode static" in text
    assert "min-max over 2 seeds × 3 chips" in text
    assert _check_kinds(fig) == 2
    looks = {lab: (c, ls) for lab, c, ls in _kind_lines(fig)}
    lya = looks["LyaDEQ (Eq. 7 + Lyapunov + orthogonal FC)"]
    assert lya[1] == ":"  # LyaDEQ: dotted purples
    assert {r["model"] for r in _csv(tmp_path / "device.csv")} == {"deq", "ffw", "lyadeq"}


def test_study_snr_figure(tmp_path, kept):
    from noisydeq.studies.plots import plot_snr

    rows = [{"task": "digits", "model": f"{k}{p}", "kind": k, "params": p, "solver": "-",
             "train_snr_db": math.inf, "test_snr_db": s, "value": 0.5 + p / 1e4,
             "value_min": 0.4, "value_max": 0.6, "metric": "accuracy", "shift_name": "-",
             "noise_site": "signal", "seeds": 3}
            for k in ("deq", "ffw") for p in (100, 400) for s in (0.0, 10.0, 20.0, math.inf)]
    plot_snr(rows, tmp_path / "snr", "study")
    fig = kept[-1]
    text = _texts(fig)
    assert "digits" in text and "signal noise" in text and "min-max over 3 seeds" in text
    looks = {lab: (c, ls) for lab, c, ls in _kind_lines(fig)}
    assert _is_blue(looks["deq100"][0]) and looks["deq100"][1] == "-"
    assert _is_orange(looks["ffw400"][0]) and looks["ffw400"][1] == "--"
    assert _darkness(looks["deq400"][0]) > _darkness(looks["deq100"][0])
    assert "∞" in [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert len(_csv(tmp_path / "snr.csv")) == len(rows)
