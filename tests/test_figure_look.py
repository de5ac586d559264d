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
            # |λ| ≥ 0: no negative half; the ρ line (the vertical one) inside the view,
            # not under the axis' edge
            lo, hi = ax.get_xlim()
            assert lo >= 0 if ax.get_title().startswith("FFW") else lo > -1e-12
            rho = max(line.get_xdata()[0] for line in ax.lines)
            assert rho < hi and (hi - rho) > 1e-3 * (hi - lo), (rho, hi)


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
    # solvers are categories: a hue each (test_solvers_are_categories_with_distinct_hues)
    assert _hue_gap(_hue(colours["anderson"]), _hue(colours["unroll"])) > 30
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


def test_lyapunov_figures_keep_a_lone_panel_wide(tmp_path, kept):
    """One device (or one attack: lyapunov-strong-pgd) drew one panel on a 4.4 in figure whose
    legend column, right of it, took ~2.7 in: the axes were ~1 in wide and the SNR labels
    10 and ∞ ran into each other. The legend now has a column of its own."""
    from noisydeq.analysis.lyapunov_report import plot_attack, plot_device

    models = ("lyadeq", "lyadeq-plain", "lyadeq-lyapunov", "lyadeq-orthogonal", "deq", "ffw")
    rows = [{"device": "rram", "model": m, "snr_db": s, "value": 0.5, "seed": 0, "chip": 0,
             "noise_mode": "physical"} for m in models for s in (0.0, 10.0, math.inf)]
    plot_device(rows, tmp_path / "d", task="digits")
    one_device = kept[-1]
    attack = [{"variant": v, "attack": a, "eps_255": e, "accuracy": 0.5, "seed": 0}
              for v in ("plain", "both") for a, e in (("none", 0.0), ("pgd", 8.0))]
    plot_attack(attack, tmp_path / "a", task="digits")
    one_attack = kept[-1]
    plot_device([{**r, "device": d} for r in rows for d in ("rram", "photonic")],
                tmp_path / "d2", task="digits")
    for fig in (one_device, one_attack, kept[-1]):
        widths = [ax.get_position().width * fig.get_figwidth() for ax in fig.axes]
        assert min(widths) > 2.0, widths
    texts = [t for ax in one_device.axes for t in ax.get_xticklabels()]
    boxes = [t.get_window_extent() for t in texts if t.get_text()]
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])


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
    assert "trained without noise" in text and "with no noise" not in text
    looks = {lab: (c, ls) for lab, c, ls in _kind_lines(fig)}
    assert _is_blue(looks["deq100"][0]) and looks["deq100"][1] == "-"
    assert _is_orange(looks["ffw400"][0]) and looks["ffw400"][1] == "--"
    assert _darkness(looks["deq400"][0]) > _darkness(looks["deq100"][0])
    assert "∞" in [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert len(_csv(tmp_path / "snr.csv")) == len(rows)


def _mdeq_rows(ffw_first: bool = False) -> list[dict]:
    """Summary rows of a study shaped like mdeq-mnist: three DEQs tested with Broyden and
    stochastic unrolling (different values), two FFWs; seeds 2, band ±0.01."""
    models = [("mdeq1", "deq", 2554, ("broyden", "stochastic")),
              ("mdeq2", "deq", 11250, ("broyden", "stochastic")),
              ("mdeq3", "deq", 39762, ("broyden", "stochastic")),
              ("ffw1", "ffw", 7402, ("-",)), ("ffw2", "ffw", 12090, ("-",))]
    if ffw_first:
        models = models[3:] + models[:3]
    rows = []
    for model, kind, params, solvers in models:
        for k, solver in enumerate(solvers):
            for s in (-5.0, 0.0, 10.0, math.inf):
                v = 0.9 - 0.05 * k + params / 1e6 + (0.0 if math.isinf(s) else s / 1000)
                rows.append({"task": "digits", "model": model, "kind": kind,
                             "params": params, "solver": solver, "train_snr_db": math.inf,
                             "test_snr_db": s, "value": v, "value_min": v - 0.01,
                             "value_max": v + 0.01, "metric": "accuracy",
                             "shift_name": "none", "noise_site": "signal", "seeds": 2})
    return rows


def test_study_snr_figure_tells_a_deqs_test_solvers_apart(tmp_path, kept):
    """Two test solvers of one DEQ were drawn with the same colour, marker and line (only
    the marker changed, alike for both): its first keeps the kind's look, the other has its own."""
    from noisydeq.studies.plots import plot_snr

    plot_snr(_mdeq_rows(), tmp_path / "snr", "mdeq")
    lines = {ln.get_label(): ln for ln in kept[-1].axes[0].get_lines()}
    a, b = lines["mdeq2 [broyden]"], lines["mdeq2 [stochastic]"]
    assert (a.get_marker(), a.get_linestyle()) == ("o", "-")
    assert (b.get_marker(), b.get_linestyle()) == ("x", ":")
    assert lines["ffw1"].get_linestyle() == "--"
    # a panel per training SNR, on one y scale (they are compared side by side)
    noisy = [{**r, "train_snr_db": 0.0, "value": r["value"] - 0.3} for r in _mdeq_rows()]
    plot_snr(_mdeq_rows() + noisy, tmp_path / "snr2", "mdeq")
    a0, a1 = kept[-1].axes[:2]
    assert a0.get_ylim() == a1.get_ylim() and a0.get_ylim()[0] < 0.6


def test_study_solvers_figure_is_one_panel_per_deq(tmp_path, kept):
    """Fig. 6: a panel per DEQ, a line per test solver in its own hue, the legend under the
    panels, the CSV the plotted DEQ rows exactly; plot_study draws it only with several
    test solvers."""
    from noisydeq.specs.study import StudySpec
    from noisydeq.studies.plots import plot_solvers, plot_study

    rows = _mdeq_rows()
    plot_solvers(rows, tmp_path / "solvers", "mdeq")
    fig = kept[-1]
    assert [ax.get_title() for ax in fig.axes] == [
        "mdeq1 (2,554 parameters)", "mdeq2 (11,250 parameters)", "mdeq3 (39,762 parameters)"]
    for ax in fig.axes:
        got = {ln.get_label(): ln for ln in ax.get_lines()}
        assert set(got) == {"broyden", "stochastic"}
        assert _hue_gap(_hue(got["broyden"].get_color()),
                        _hue(got["stochastic"].get_color())) > 30
        assert ax.get_legend() is None
    assert len(fig.legends) == 1
    assert "min-max over 2 seeds" in _texts(fig)
    plotted = _csv(tmp_path / "solvers.csv")
    deq = [r for r in rows if r["kind"] == "deq"]
    assert sorted((r["model"], r["solver"], float(r["test_snr_db"]), float(r["value"]))
                  for r in plotted) == sorted(
        (r["model"], r["solver"], r["test_snr_db"], r["value"]) for r in deq)
    spec = StudySpec.model_validate({"task": "digits", "models": {
        "m": {"kind": "deq", "cell": "mdeq", "width": 4, "scales": 1}}})
    names = {p.name for p in plot_study(rows, spec, tmp_path / "all")}
    assert {"snr.png", "solvers.png", "solvers.csv"} <= names
    one = [r for r in rows if r["solver"] != "stochastic"]
    assert "solvers.png" not in {p.name for p in plot_study(one, spec, tmp_path / "one")}


def test_study_params_figure_keeps_the_deqs_when_an_ffw_comes_first(tmp_path, kept):
    """Fig. 1e took the DEQ solver from the first row: with an FFW first (solver '-') no DEQ
    was drawn. The DEQ line is its first test solver's, named in the legend, which sits
    under the axes; the band is drawn as error bars; parameter ticks are plain numbers."""
    from noisydeq.studies.plots import plot_params

    for ffw_first in (False, True):
        plot_params(_mdeq_rows(ffw_first), 10.0, tmp_path / "params", "mdeq")
        fig = kept[-1]
        ax = fig.axes[0]
        labels = [t.get_text() for t in fig.legends[0].get_texts()]
        assert sorted(labels) == ["DEQ [broyden] (trained without noise)",
                                  "FFW (trained without noise)"], labels
        assert ax.get_legend() is None
        deq = next(ln for ln in ax.get_lines() if ln.get_label().startswith("DEQ"))
        assert list(deq.get_xdata()) == [2554, 11250, 39762]
        assert list(deq.get_ydata()) == pytest.approx([0.9 + p / 1e6 + 0.01
                                                       for p in (2554, 11250, 39762)])
        assert len(ax.containers) == 2  # error bars: min…max over the seeds
        ticks = _labelled_ticks(ax.xaxis)
        assert "10000" in ticks and not any("e+" in t for t in ticks), ticks
        assert len(_csv(tmp_path / "params.csv")) == 5


# ----------------------------------------------------------------- what a reader notices


def _png_size(path) -> tuple[int, int]:
    import struct

    with open(path, "rb") as fh:
        head = fh.read(24)
    return struct.unpack(">II", head[16:24])


def _labelled(axis) -> list[tuple[float, str]]:
    """(position, text) of the tick labels of ``axis`` drawn inside its view (major and
    minor)."""
    axis.figure.canvas.draw()
    lo, hi = sorted(axis.get_view_interval())
    out = []
    for locs, labels in ((axis.get_majorticklocs(), axis.get_majorticklabels()),
                         (axis.get_minorticklocs(), axis.get_minorticklabels())):
        for v, t in zip(locs, labels, strict=False):
            if t.get_visible() and t.get_text() and lo * (1 - 1e-9) <= v <= hi * (1 + 1e-9):
                out.append((float(v), t.get_text()))
    return out


def _labelled_ticks(axis) -> list[str]:
    """The tick labels of ``axis`` drawn inside its view (major and minor)."""
    return [text for _, text in _labelled(axis)]


LONG = ("a title that goes on and on about the run, its device, its noise mode, its "
        "training and every other detail a careful reader could want to know about it")


def test_a_long_title_wraps_and_leaves_the_figure_size_alone(tmp_path, kept):
    from noisydeq import plots
    from noisydeq.analysis import solver_runs
    from noisydeq.config import SweepSpec
    from tests.test_plots_look import _rows

    spec = SweepSpec(task="digits", device="snr", snr_db=[0.0, 10.0, math.inf])
    rows = _rows(depths=(1, 3), chips=2, seeds=(0,))
    sizes = {}
    for name, title in (("short", "run"), ("long", LONG)):
        plots.plot_sweep(rows, tmp_path / name, spec, title=title)
        sizes[name] = _png_size(tmp_path / name / "metric_vs_snr.png")
        sup = kept[-2]._suptitle.get_text()  # metric_vs_snr (metric_vs_depth is last)
        assert sup.replace("\n", " ").startswith(title)
    assert sizes["long"][0] == sizes["short"][0]  # width independent of the title
    assert kept[-2]._suptitle.get_text().count("\n") >= 3  # wrapped: more lines instead
    # an axes title is wrapped to its axes
    counts = [{"stop": stop, "window": w, "snr_db": s, "mean_steps": 10.0 + s + w}
              for stop, w in (("rel", 1), ("mean_rel", 5), ("mean_rel", 20))
              for s in (0.0, 10.0, 20.0)]
    for name, title in (("short", "run"), ("long", LONG)):
        solver_runs.plot_counts(counts, 0.01, 60, tmp_path / f"counts-{name}", title)
        sizes[name] = _png_size(tmp_path / f"counts-{name}.png")
    assert sizes["long"][0] == sizes["short"][0]
    ax = kept[-1].axes[0]
    width = ax.get_window_extent().width
    assert ax.title.get_window_extent().width <= width + 1


def test_the_sweep_title_names_the_results_task_and_the_input_nonlinearity(tmp_path, kept):
    from noisydeq import plots
    from noisydeq.config import SweepSpec
    from tests.test_plots_look import _rows

    rows = [{**r, "task": "mnist10k", "noise_site": "signal"}
            for r in _rows(depths=(1, 3), chips=1, seeds=(0,))]
    spec = SweepSpec(task="mnist", noise_site="signal", input_act="silu",
                     snr_db=[0.0, 10.0, math.inf])
    plots.plot_sweep(rows, tmp_path, spec)
    text = _texts(kept[-1]).replace("\n", " ")
    assert "mnist10k · signal noise" in text and "mnist ·" not in text
    assert "SiLU input" in text
    spec = SweepSpec(task="mnist", noise_site="signal", snr_db=[0.0, 10.0, math.inf])
    plots.plot_sweep(rows, tmp_path, spec)  # the default is named too (Fig. 9 vs Fig. 8)
    assert "ReLU input" in _texts(kept[-1]).replace("\n", " ")
    assert figures.input_note("identity") == "identity input"
    assert figures.input_note(None) is None


def test_every_log_axis_has_three_labelled_ticks(tmp_path, kept):
    from noisydeq import plots
    from tests.test_plots_look import _rows

    rows = []
    for r in _rows(depths=(1, 3), chips=1, seeds=(0,)):  # MSE 0.045 … 0.11: < a decade
        snr = r["snr_db"]
        value = 0.045 if math.isinf(snr) else 0.11 - 0.003 * snr - 0.001 * r["depth"]
        rows.append({**r, "metric": "mse", "value": value})
    plots.plot_metric_vs_snr(rows, tmp_path, title="mse")
    fig = kept[-1]
    assert fig.axes[0].get_yscale() == "log"
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            if axis.get_scale() == "log":
                assert len(_labelled_ticks(axis)) >= 3, _labelled_ticks(axis)
    # the same for a hand-made figure through the writer (0.011 … 0.183: two decades'
    # worth of labels, 10^-2 and 10^-1, only)
    assert len(_log_axis_labels(tmp_path / "two", kept, (0.011, 0.183))) >= 3


def _log_axis_labels(stem, kept, span: tuple[float, float], height: float = 2.5) -> list[str]:
    """The labelled ticks of a log y axis over ``span``, drawn through the figure writer."""
    with figures.styled() as p:
        fig, ax = p.subplots(figsize=(3, height))
        ax.plot([0, 1], list(span))
        ax.set_yscale("log")
        figures.save_figure(fig, stem)
    return _labelled_ticks(kept[-1].axes[0].yaxis)


def test_a_log_axis_within_a_decade_has_plain_number_labels(tmp_path, kept):
    """0.57 … 0.67 (no power of ten in view): matplotlib labels minor ticks as 6.6×10⁻¹;
    the writer turns them into 0.66, keeping the positions."""
    texts = _log_axis_labels(tmp_path / "narrow", kept, (0.57, 0.672))
    assert len(texts) >= 3
    assert all(t.replace(".", "").isdigit() for t in texts), texts  # no a×10ᵏ mathtext
    assert {"0.58", "0.6", "0.62", "0.64", "0.66"} <= set(texts)
    # 0.045 … 0.6: matplotlib writes '10⁻¹' beside '6×10⁻¹', '4×10⁻¹': all plain
    texts = _log_axis_labels(tmp_path / "mixed", kept, (0.05, 0.55), height=4)
    assert "0.1" in texts and all(t.replace(".", "").isdigit() for t in texts), texts
    # a span over decades keeps its powers of ten
    assert any("10^{-2}" in t for t in _log_axis_labels(tmp_path / "wide", kept, (0.0019, 0.78)))


def test_trained_text_is_one_phrase_for_titles_legends_and_messages():
    assert figures.trained_text(math.inf) == "trained without noise"
    assert figures.trained_text(10.0) == "trained at 10 dB"
    assert figures.trained_text(0.0, "dB signal SNR") == "trained at 0 dB signal SNR"


def test_log_axis_labels_cover_the_whole_axis(tmp_path, kept):
    """0.065 … 0.17: matplotlib labels 0.07, 0.08, 0.09, 0.1 and leaves the upper half of the
    axis, where these points lie, without a number."""
    import math

    with figures.styled() as p:
        fig, ax = p.subplots(figsize=(3, 2.5))
        ax.plot([0, 1, 2], [0.068, 0.13, 0.165])
        ax.set_yscale("log")
        figures.save_figure(fig, tmp_path / "upper")
    axis = kept[-1].axes[0].yaxis
    lo, hi = sorted(axis.get_view_interval())
    marks = sorted({math.log10(v) for v, _ in _labelled(axis)})
    edges = [math.log10(lo), *marks, math.log10(hi)]
    assert len(marks) >= 3, marks
    gaps = [b - a for a, b in zip(edges, edges[1:], strict=False)]
    assert max(gaps) <= 0.5 * (edges[-1] - edges[0]), marks


def _hue(c) -> float:
    import colorsys

    from matplotlib.colors import to_rgb

    return 360 * colorsys.rgb_to_hsv(*to_rgb(c))[0]


def _hue_gap(a: float, b: float) -> float:
    d = abs(a - b) % 360
    return min(d, 360 - d)


def test_solvers_are_categories_with_distinct_hues(tmp_path, kept):
    from noisydeq.analysis import solver_runs

    rows = [{"solver": s, "snr_db": snr, "accuracy": 0.5 + 0.01 * i}
            for i, s in enumerate(("unroll", "stochastic", "anderson", "broyden"))
            for snr in (0.0, 10.0, math.inf)]
    solver_runs.plot_accuracy(rows, tmp_path / "acc")
    hues = {lab: _hue(c) for lab, c, _ls in _kind_lines(kept[-1])}
    assert len(hues) == 4
    deq, ffw = _hue(figures.kind_colour("deq")), _hue(figures.kind_colour("ffw"))
    for a in hues:
        assert _hue_gap(hues[a], deq) > 15 and _hue_gap(hues[a], ffw) > 15, (a, hues[a])
        for b in hues:
            if a < b:
                assert _hue_gap(hues[a], hues[b]) > 30, (a, b)
    assert "∞" in [t.get_text() for t in kept[-1].axes[0].get_xticklabels()]


def test_fig13_ffw_histograms_are_told_apart(tmp_path, kept):
    from matplotlib.colors import to_rgba

    from noisydeq.analysis.fig13 import Fig13Spec, run_fig13

    spec = Fig13Spec(task="digits", depth=2, hidden=8, epochs=1, snr_db="0,inf",
                     max_test_samples=50)
    run_fig13(spec, tmp_path)
    hist_ax = kept[-1].axes[1]
    by_label = {}
    for patch in hist_ax.patches:
        label = patch.get_label()
        if label and not label.startswith("_"):
            by_label[label.split(" ")[0]] = patch
    plain, reg = by_label["ffw"], by_label["ffw_jacreg"]
    assert "digits · signal noise" in _texts(kept[-1])  # the task as loaded
    face = [to_rgba(p.get_facecolor()) for p in (plain, reg)]
    filled = [f[3] > 0 for f in face]
    # not two shades of one filled orange: a hatch, or one filled and one not
    assert plain.get_hatch() != reg.get_hatch() or filled[0] != filled[1]


def test_legends_write_no_inf(tmp_path, kept):
    from noisydeq import plots
    from noisydeq.config import SweepSpec
    from tests.test_plots_look import _rows

    rows = []
    for t in (math.inf, 10.0):
        rows += [{**r, "train_snr_db": t} for r in _rows(depths=(1,), chips=1, seeds=(0,))]
    spec = SweepSpec(task="digits", device="snr", snr_db=[0.0, 10.0, math.inf])
    plots.plot_sweep(rows, tmp_path, spec)
    labels = [lab for fig in kept for lab, _c, _ls in _kind_lines(fig)]
    assert "train ∞" in labels and "train 10 dB" in labels
    assert not any("inf" in lab for lab in labels)
    from noisydeq.summary import fmt_db

    assert fmt_db(math.inf, "legend") == "∞" and fmt_db(0.0, "legend") == "0 dB"


def test_snr_texts_have_one_writer():
    """Tick labels, legend entries and the comparison tables write an SNR through
    summary.fmt_db: no copy of it is left in figures or compare."""
    import inspect

    from noisydeq import compare

    for name in ("snr_label", "snr_legend"):
        assert not hasattr(figures, name)
    assert not hasattr(compare, "_db")
    for module in (figures, compare):
        assert 'isinf(' not in "".join(
            ln for ln in inspect.getsource(module).splitlines() if 'dB"' in ln)


def test_a_flat_fig5_says_why_on_its_axes(tmp_path, kept):
    """Every curve at the cap: the note of :func:`capped_note` is written inside the axes,
    wrapped, whole (no line cut by the frame)."""
    from noisydeq.analysis import solver_runs

    rows = [{"stop": stop, "window": w, "snr_db": s, "mean_steps": 100.0,
             "converged_frac": 0.0}
            for stop, w in (("rel", 1), ("mean_rel", 5)) for s in (0.0, 10.0, 20.0)]
    floors = solver_runs.floor_rows([{"snr_db": s, "window": 5, "rel_floor": 1.1 / (1 + s),
                                      "mean_rel_floor": 0.3 / (1 + s)}
                                     for s in (0.0, 10.0, 20.0)], 0.01)
    note = solver_runs.capped_note(rows, floors, 0.01, 100, on_device=True)
    solver_runs.plot_counts(rows, 0.01, 100, tmp_path / "it", note=note)
    fig = kept[-1]
    ax = fig.axes[0]
    (text,) = ax.texts
    assert text.get_text().replace("\n", " ") == note
    renderer = fig.canvas.get_renderer()
    box, frame = text.get_window_extent(renderer), ax.get_window_extent(renderer)
    assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 <= box.y1 <= frame.y1
    solver_runs.plot_counts(rows, 0.01, 100, tmp_path / "plain")
    assert not kept[-1].axes[0].texts


def test_fig5_ticks_are_the_counted_snr_levels(tmp_path, kept):
    from noisydeq.analysis import solver_runs

    rows = [{"stop": stop, "window": w, "snr_db": s, "mean_steps": 30.0 + s}
            for stop, w in (("rel", 5), ("mean_rel", 5)) for s in (0.0, 5.0, 10.0, 15.0, 20.0)]
    solver_runs.plot_counts(rows, 0.01, 60, tmp_path / "it")
    labels = [t.get_text() for t in kept[-1].axes[0].get_xticklabels()]
    assert labels == ["0", "5", "10", "15", "20"]  # not 2.5, 7.5, ...


def test_certified_models_of_one_width_and_several_eps_train_differ(tmp_path, kept):
    from noisydeq.analysis.certified import plot_accuracy

    rows = [{"envelope": "none", "kind": kind, "param": "", "width": 64, "eps_train": et,
             "eps": eps, "seed": 0, "n_samples": 50, "certified_acc": 0.5 - eps - et / 10,
             "pgd_acc": 0.6 - eps, "clean_acc": 0.7}
            for kind in ("mondeq", "ffw_relu") for et in (0.2, 0.3, 0.4) for eps in (0.0, 0.1)]
    plot_accuracy(rows, tmp_path / "cert", "Table 2")
    fig = kept[-1]
    looks = {lab: c for lab, c, _ls in _kind_lines(fig)}
    for kind in ("mondeq", "ffw_relu"):
        shades = [looks[f"{kind} w64, ε_train {et:g}: certified"] for et in (0.2, 0.3, 0.4)]
        assert len({tuple(c) for c in shades}) == 3  # one colour each, not one for all
        assert _darkness(shades[2]) > _darkness(shades[0])  # darker = larger ε_train
    fig.canvas.draw()  # the title sits above the panels' titles
    top = min(ax.title.get_window_extent().y1 for ax in fig.axes)
    assert fig._suptitle.get_window_extent().y0 >= top - 1


def test_extrapolation_axis_labels_the_tested_sizes(tmp_path, kept):
    from noisydeq.studies.plots import plot_extrapolation

    shifts = (16, 24, 32, 64, 128, 256, 512)
    rows = [{"task": "prefix_sums", "model": k, "kind": k, "params": 100, "solver": "-",
             "budget": "-", "train_snr_db": math.inf, "test_snr_db": math.inf,
             "shift": sh, "shift_name": "length", "value": 0.5, "value_min": 0.4,
             "value_max": 0.6, "metric": "accuracy", "noise_site": "state", "seeds": 1}
            for k in ("deq", "ffw") for sh in shifts]
    plot_extrapolation(rows, tmp_path / "ext", "prefix sums")
    ax = kept[-1].axes[0]
    assert ax.get_xscale() == "log"
    labels = [t for t in _labelled_ticks(ax.xaxis)]
    assert labels == [f"{v}" for v in shifts]  # each size once, no 3×10¹ next to 4×10¹


def test_panel_legend_moves_under_the_panels_when_long():
    """Up to four entries stay inside the axes; more go under the panels (never over a
    curve), and the saved figure includes them."""
    for n, inside in ((4, True), (6, False)):
        fig, axes = plt.subplots(1, 2)
        for i in range(n):
            axes[1].plot([0, 1], [i, i], label=f"line {i}")
        figures.panel_legend(fig, axes[1])
        assert (axes[1].get_legend() is not None) == inside
        assert (len(fig.legends) == 1) != inside
        if not inside:
            assert [t.get_text() for t in fig.legends[0].get_texts()] == [
                f"line {i}" for i in range(n)]
        plt.close(fig)


def test_parameter_counts_under_ten_thousand_are_not_rounded_to_0k_or_1k(tmp_path, kept):
    """A small family (hidden=16: 305 and 849/869 parameters) named its members '(0k)' and
    '(1k)' in the legend and on the depth axes."""
    from noisydeq import plots
    from tests.test_plots_look import _rows

    rows = [{**r, "params": {1: 305, 3: 869}[r["depth"]] - (r["kind"] == "ffw") * 20}
            for r in _rows(depths=(1, 3), chips=1, seeds=(0,))]
    plots.plot_metric_vs_snr(rows, tmp_path)
    labels = kept[-1].axes[0].get_legend_handles_labels()[1]
    assert {"DEQ w=110 (305)", "FFW 1 layer (285)", "DEQ w=130 (869)",
            "FFW 3 layers (849)"} == set(labels), labels
    plots.plot_metric_vs_depth(rows, tmp_path, fixed_snr_db=[0.0])
    fig = kept[-1]
    fig.canvas.draw()
    axes = [a for ax in fig.axes for a in (ax, *ax.child_axes)]  # + the DEQ-width top axis
    text = " ".join(t.get_text() for ax in axes for t in ax.get_xticklabels())
    assert "0k" not in text and "1k" not in text and "869" in text and "849" in text, text
    assert [plots._k(n) for n in (0, 999, 1466, 9949, 9950, 26634, 999_499, 999_500)] == [
        "0", "999", "1.5k", "9.9k", "10k", "27k", "999k", "1.0M"]


def test_study_params_figure_names_its_error_bars_and_labels_clear_of_them(tmp_path, kept):
    """Fig. 1e drew min…max as error bars under a title saying "band", and put each model's
    name 3 points up-right of its point: on its line, touching its bar's cap, over the
    name of a neighbour of nearly the same size. The title names the error bars; no name
    meets (by 2 points) a line, a bar, a marker or another name, and all lie in the axes."""
    from noisydeq.studies.plots import plot_params

    crowded = _mdeq_rows() + [  # a third FFW next to mdeq2, at nearly its accuracy
        {**r, "model": "ffw3", "params": 11900, "value": r["value"] - 0.003,
         "value_min": r["value_min"] - 0.003, "value_max": r["value_max"] - 0.003}
        for r in _mdeq_rows() if r["model"] == "ffw2"]
    for case, rows in (("mdeq", _mdeq_rows()), ("crowded", crowded)):
        plot_params(rows, 10.0, tmp_path / case, "mdeq")
        fig = kept[-1]
        ax = fig.axes[0]
        title = ax.get_title().replace("\n", " ")
        assert "error bars: min-max over 2 seeds" in title and "band" not in title, title
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        names = [t for t in ax.texts if t.get_text() in {r["model"] for r in rows}]
        assert sorted(t.get_text() for t in names) == sorted({r["model"] for r in rows})
        segments, markers = figures.drawn_obstacles(ax)
        assert len(ax.collections) == 2  # the two kinds' error bars are among the segments
        frame = ax.get_window_extent(renderer)
        pad = 2 * fig.dpi / 72
        boxes = [t.get_window_extent(renderer) for t in names]
        for i, (t, box) in enumerate(zip(names, boxes, strict=True)):
            padded = box.expanded(1 + 2 * pad / box.width, 1 + 2 * pad / box.height)
            assert figures.box_hits(padded, segments, markers,
                                    boxes[:i] + boxes[i + 1:]) == 0, (case, t.get_text())
            assert frame.x0 <= box.x0 and box.x1 <= frame.x1, (case, t.get_text())
            assert frame.y0 <= box.y0 and box.y1 <= frame.y1, (case, t.get_text())


def test_box_hits_counts_segments_markers_and_boxes():
    from matplotlib.transforms import Bbox

    box = Bbox.from_extents(0, 0, 10, 5)
    assert figures.box_hits(box, [(-5, 2, 15, 2)], []) == 1  # crosses through
    assert figures.box_hits(box, [(-5, 6, 15, 6)], []) == 0  # passes above
    assert figures.box_hits(box, [(11, -1, 20, 9)], []) == 0  # beside, slanted
    assert figures.box_hits(box, [(-1, 4, 2, 7)], []) == 1  # clips a corner
    assert figures.box_hits(box, [], [(12, 2, 3), (20, 2, 3)]) == 1  # radius counts
    assert figures.box_hits(box, [], [], [Bbox.from_extents(9, 4, 20, 20)]) == 1


def _attack_rows(device: str, site: str, levels: tuple[float, ...]) -> list[dict]:
    """Final-state rows of an attack run (one DEQ, one FFW; PGD-10 over two ε) at
    ``levels``, white-box."""
    return [{"model_id": f"{kind}-d1", "kind": kind, "depth": 1, "width": 8,
             "mode": "white-box", "snr_db": s, "chip": 0, "attack": "PGD-10", "x_name": "eps",
             "x": eps, "defence": "final", "estimator": "exact", "value": 0.9 - eps,
             "device": device, "noise_site": site, "n_samples": 200}
            for kind in ("deq", "ffw") for s in levels for eps in (0.0, 0.1)]


def test_an_attack_run_without_noise_says_so_once(tmp_path, kept):
    """The ideal device (the runner's default) titled every figure "… · digital — digital";
    a noisy run's SNR-∞ figure said "digital" after naming the noise. Now a run without
    noise says "no noise" once and names no device; a noisy run names its noise once and
    each figure its level; a run with no noisy level draws no accuracy-vs-SNR figure."""
    from noisydeq.attacks.plots import level_text, plot_run

    plot_run(_attack_rows("ideal", "device", (math.inf,)), tmp_path / "a", "digits: fam")
    title = kept[-1]._suptitle.get_text().replace("\n", " ")
    assert title.startswith("digits: fam — no noise (DEQ"), title
    assert title.count("noise") == 1 and "digital" not in title, title
    assert title.endswith("final state) 200 test inputs"), title  # what a point is over
    n = len(kept)  # the ideal device at a finite level is still no noise: one title each
    plot_run(_attack_rows("ideal", "device", (10.0, math.inf)), tmp_path / "b", "digits: fam")
    titles = [f._suptitle.get_text().replace("\n", " ") for f in kept[n:]]
    assert len(titles) == 2 and all(" — no noise (" in t for t in titles), titles
    assert not (tmp_path / "b" / "robust_vs_snr.png").exists()
    n = len(kept)
    plot_run(_attack_rows("snr", "signal", (10.0, math.inf)), tmp_path / "c",
             "digits: fam · signal noise")
    titles = [f._suptitle.get_text().replace("\n", " ") for f in kept[n:]]
    assert any("signal noise — white-box at 10 dB (" in t for t in titles), titles
    assert any("signal noise — SNR ∞: no noise (" in t for t in titles), titles
    assert (tmp_path / "c" / "robust_vs_snr.png").exists()
    from noisydeq.attacks.plots import _over

    assert _over([{"n_samples": 50, "chip": c} for c in (0, 1)]) == \
        "50 test inputs, mean over 2 chips"
    assert level_text("white-box", math.inf, False, own_noise=True) == \
        "only the models' training noise"


def test_sweep_and_study_titles_of_runs_without_noise_say_no_noise_once(tmp_path, kept):
    """A sweep on the ideal device at SNR ∞ only was titled "digits · ideal, noise mode
    static" and a study tested and trained without noise "… · state noise": a run that adds
    no noise anywhere names no device or site, it says "no noise" once."""
    from noisydeq import plots
    from noisydeq.config import SweepSpec
    from noisydeq.studies.plots import study_title
    from tests.test_plots_look import _rows

    rows = [{**r, "task": "digits"} for r in _rows(depths=(1, 3), chips=1, seeds=(0,))
            if math.isinf(r["snr_db"])]
    spec = SweepSpec(task="digits", device="ideal", snr_db=[math.inf])
    assert plots._mode_title(spec, "run", rows) == "run — digits · no noise · ReLU input"
    noisy = [{**r, "task": "digits"} for r in _rows(depths=(1, 3), chips=1, seeds=(0,))]
    spec = SweepSpec(task="digits", device="rram", snr_db=[0.0, 10.0, math.inf])
    assert "digits · rram, noise mode" in plots._mode_title(spec, "run", noisy)
    trained = [{**r, "train_snr_db": 10.0} for r in rows]  # noisy training counts as noise
    assert "no noise" not in plots._mode_title(
        SweepSpec(task="digits", noise_site="signal", snr_db=[math.inf],
                  train_snr_db=[10.0]), "run", trained)
    plots.plot_sweep(rows, tmp_path, SweepSpec(task="digits", device="ideal",
                                               snr_db=[math.inf]))
    text = _texts(kept[-1]).replace("\n", " ")
    assert text.count("no noise") == 1 and "ideal" not in text, text

    study = [{"task": "digits", "noise_site": "state", "train_snr_db": math.inf,
              "test_snr_db": math.inf, "seeds": 1}]
    assert study_title(study, "s") == "s — digits · no noise\none seed (no band)"
    assert "state noise" in study_title([{**study[0], "test_snr_db": 0.0}], "s")


def test_device_noise_on_the_ideal_device_at_finite_levels_is_titled_no_noise(tmp_path, kept):
    """The ideal device runs the digital weights at every level: a sweep of its 'device
    noise' at 0 and 10 dB was titled "digits · ideal, noise mode physical" and summarised
    as a total-SNR sweep, while an attack run on it says "no noise" (attacks/plots.py);
    both now say no noise, the sweep why (its axis still shows the levels)."""
    from noisydeq import plots
    from noisydeq.config import SweepSpec
    from noisydeq.summary import swept_description
    from tests.test_plots_look import _rows

    rows = [{**r, "task": "digits", "device": "ideal", "noise_site": "device",
             "noise_mode": "physical"} for r in _rows(depths=(1,), chips=1, seeds=(0,))]
    assert any(math.isfinite(r["snr_db"]) for r in rows)
    spec = SweepSpec(task="digits", device="ideal", snr_db=[0.0, 10.0, math.inf])
    assert plots._mode_title(spec, "run", rows) == \
        "run — digits · ideal device: no noise at any level · ReLU input"
    assert swept_description(rows) == \
        "swept: nothing (ideal device: no noise at any level; it runs the digital weights)"
    plots.plot_sweep(rows, tmp_path, spec)
    text = _texts(kept[-1]).replace("\n", " ")
    assert "no noise at any level" in text and "noise mode" not in text, text
    # another device keeps its noise mode; model noise on the ideal device its site
    assert "rram, noise mode physical" in plots._mode_title(
        SweepSpec(task="digits", device="rram", snr_db=[0.0, 10.0]), "", rows)
    assert "signal noise" in plots._mode_title(
        SweepSpec(task="digits", device="ideal", noise_site="signal", snr_db=[0.0]), "", rows)



def test_the_depth_figure_says_error_bars_where_it_draws_them(tmp_path, kept):
    """metric_vs_depth draws min…max as error bars under the sweep's title, which said
    "band: min-max over …" (a band is what metric_vs_snr draws)."""
    from noisydeq import plots
    from noisydeq.config import SweepSpec
    from tests.test_plots_look import _rows

    rows = _rows(depths=(1, 3), chips=2, seeds=(0, 1))
    spec = SweepSpec(task="digits", device="rram", snr_db=[0.0, 10.0, math.inf],
                     fixed_snr_db=[0.0])
    plots.plot_sweep(rows, tmp_path, spec)
    by_name = {}
    for fig in kept:
        names = {ax.get_xlabel() for ax in fig.axes}
        by_name["depth" if "FFW layers (parameters)" in names else "snr"] = fig
    depth = by_name["depth"]._suptitle.get_text().replace("\n", " ")
    snr = by_name["snr"]._suptitle.get_text().replace("\n", " ")
    assert "error bars: min-max over 2 chips × 2 seeds" in depth and "band" not in depth
    assert "band: min-max over 2 chips × 2 seeds" in snr
    assert any(ax.containers for ax in by_name["depth"].axes)  # error bars indeed
    assert plots.band_note(rows[:1], "error bars") == "one chip, one seed (no error bars)"


def test_sensitivity_legend_names_no_line_it_does_not_draw(tmp_path, kept):
    """The DEQ's Eq. 12 bounds are ∞ at every depth (ρ(W) ≥ 1): nothing is drawn, yet the
    legend listed "DEQ Eq. 12 (ρ)" and "DEQ Eq. 12 (‖·‖₂)" beside a marker and line a
    reader then looks for. An entry without a drawn point says it is ∞."""
    from noisydeq.analysis.runs import plot_sensitivity
    from noisydeq.config import NoiseSpec

    rows = [{"seed": 0, "train_snr_db": math.inf, "depth": d, "deq_sens": 0.06,
             "ffw_sens": 0.04 + 0.01 * d, "deq_bound_paper": math.inf,
             "deq_bound_norm": math.inf, "ffw_bound_paper": 0.1 * d, "ffw_bound_norm": 0.2 * d,
             "ratio": 0.06 / (0.04 + 0.01 * d), "ratio_sem": 0.01, "device": "ideal"}
            for d in (1, 3, 5)]
    plot_sensitivity(rows, NoiseSpec(site="signal", kind="additive", eta=0.1),
                     tmp_path / "sens")
    ax = kept[-1].axes[1]
    for line in ax.get_lines():
        label = line.get_label()
        if label.startswith("_"):
            continue
        drawn = any(math.isfinite(y) for y in line.get_ydata())
        assert drawn != label.endswith("∞, not drawn"), label
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "DEQ Eq. 12 (ρ): ∞, not drawn" in labels and "FFW Eq. 12 (ρ)" in labels


def test_extrapolation_y_label_fits_beside_its_axes(tmp_path, kept):
    """'fraction fully correct (trained and tested at the same SNR)' on one line ran past
    the axes' height, above and below them."""
    from noisydeq.studies.plots import plot_extrapolation

    rows = [{"task": "mazes", "model": k, "kind": k, "params": 100, "solver": "-",
             "budget": "-", "train_snr_db": math.inf, "test_snr_db": math.inf, "shift": sh,
             "shift_name": "size", "value": 0.5, "value_min": 0.4, "value_max": 0.6,
             "metric": "accuracy", "noise_site": "state", "seeds": 1}
            for k in ("deq", "ffw") for sh in (9, 11, 13, 17)]
    plot_extrapolation(rows, tmp_path / "ext", "mazes")
    fig = kept[-1]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    label = ax.yaxis.label
    assert "fraction fully correct" in label.get_text()
    box, frame = label.get_window_extent(renderer), ax.get_window_extent(renderer)
    assert box.height <= frame.height, (box.height, frame.height)


def test_fig5_says_which_curves_run_along_the_cap(tmp_path, kept):
    """rel and mean_rel (w=5) at the 60-iteration cap at every SNR lay on one another and on
    the cap line: four legend entries, two lines to be seen. A curve at the cap throughout
    says so in its label; the cap line is drawn over the curves."""
    from noisydeq.analysis import solver_runs

    rows = [{"stop": stop, "window": w, "snr_db": s,
             "mean_steps": 60.0 if w < 20 or s < 15 else 40.0}
            for stop, w in (("rel", 1), ("mean_rel", 5), ("mean_rel", 20))
            for s in (0.0, 10.0, 15.0, 20.0)]
    solver_runs.plot_counts(rows, 0.01, 60, tmp_path / "it")
    ax = kept[-1].axes[0]
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    assert set(lines) == {"rel: at the cap throughout",
                          "mean_rel (w=5): at the cap throughout", "mean_rel (w=20)",
                          "cap (60)"}, set(lines)
    assert lines["cap (60)"].get_zorder() > max(
        ln.get_zorder() for name, ln in lines.items() if name != "cap (60)")
    # the 300-step count of docs/analysis.md: curves fall from the cap across the whole
    # panel; inside it the legend lay over one of them
    rows = [{"stop": stop, "window": w, "snr_db": s, "mean_steps": m}
            for stop, w, ms in (("rel", 1, (300, 300, 300, 300, 300)),
                                ("mean_rel", 5, (300, 300, 300, 300, 300)),
                                ("mean_rel", 20, (300, 300, 300, 205, 27)),
                                ("mean_rel", 50, (300, 300, 62, 53, 53)),
                                ("mean_rel", 100, (300, 103, 101, 101, 101)),
                                ("mean_rel", 200, (200, 200, 200, 200, 200)))
            for s, m in zip((0.0, 5.0, 10.0, 15.0, 20.0), ms, strict=True)]
    solver_runs.plot_counts(rows, 0.01, 300, tmp_path / "it300", "a family")
    fig = kept[-1]
    fig.canvas.draw()
    ax = fig.axes[0]
    box = ax.get_legend().get_window_extent(fig.canvas.get_renderer())
    segments, markers = figures.drawn_obstacles(ax)
    assert figures.box_hits(box, segments, markers) == 0


def test_lyapunov_one_seed_titles_name_what_is_not_drawn():
    """The Table 1 attack figure draws error bars, the device figure bands: with one seed
    both said "no band"."""
    from noisydeq.analysis.lyapunov_report import _band

    one = [{"seed": 0, "chip": 0}]
    assert _band(one, chips=False) == "one seed (no error bars)"
    assert _band(one, chips=True) == "one seed, one chip (no band)"
    assert _band([{"seed": s, "chip": 0} for s in (0, 1)], chips=False) == \
        "bars: min-max over 2 seeds"


def test_solvers_accuracy_figure_says_accuracy_not_median(family, tmp_path, kept, capsys):
    """Every figure of `noisydeq solvers --family` said "median / mean over N test inputs";
    the accuracy figure's points are accuracies over the N inputs."""
    from tests.cli_helpers import run_cli

    code, _, err = run_cli(
        ["solvers", "--family", str(family), "--depth", "1", "--solvers", "unroll", "--snr",
         "10", "--max-iter", "8", "--width", "8", "--batch", "2", "--inputs", "16",
         "--count-snr", "10", "--window", "4", "--threshold", "8", "--no-floors",
         "--accuracy-snr", "inf", "--accuracy-solvers", "unroll", "--accuracy-max-iter", "4",
         "--out", str(tmp_path / "o")], capsys)
    assert code == 0, err
    titles = {fig.axes[0].get_title().split("\n")[0]: fig.axes[0].get_title().replace("\n", " ")
              for fig in kept if fig.axes}
    acc = next(t for k, t in titles.items() if k.startswith("Accuracy per solver"))
    its = next(t for k, t in titles.items() if k.startswith("Stop-rule iterations"))
    assert "accuracy over 16 test inputs" in acc and "median" not in acc, acc
    assert "median / mean over 16 test inputs" in its, its


def test_attack_legends_name_the_depth_a_deq_is_matched_to(tmp_path, kept):
    """An attack figure's legend said 'DEQ d3 (w222)', giving a DEQ a depth it does not
    have; it names members as the sweep figures do (DEQ by width, FFW by depth) and says
    which FFW depth a DEQ is parameter-matched to, in the level and the SNR figures."""
    from noisydeq.attacks.plots import plot_run

    rows = [{**r, "model_id": f"{k}-d{d}", "depth": d, "width": w}
            for d, k, w in ((1, "deq", 128), (1, "ffw", 128), (3, "deq", 222), (3, "ffw", 128))
            for r in _attack_rows("snr", "signal", (10.0, math.inf)) if r["kind"] == k]
    plot_run(rows, tmp_path, "digits: fam · signal noise")
    level = [t.get_text() for t in kept[0].legends[0].get_texts()]
    assert level == ["DEQ w=128 (≙ FFW 1 layer)", "FFW 1 layer", "DEQ w=222 (≙ FFW 3 layers)",
                     "FFW 3 layers"], level
    snr = {t.get_text() for t in kept[-1].legends[0].get_texts()}
    assert "DEQ w=222 (≙ FFW 3 layers), white-box" in snr and "FFW 3 layers, transfer" not in \
        snr and "FFW 1 layer, white-box" in snr, snr
    assert not any(" d1" in t or " d3" in t for t in level + sorted(snr))
    assert figures.member_label("deq", 3, 222) == "DEQ w=222"  # the sweep figures' label
    assert figures.member_label("lyadeq", 3, 64, matched=True) == "LyaDEQ w=64"  # never matched


def test_certified_figure_has_one_legend_for_its_panels(tmp_path, kept):
    """Each envelope's panel drew its own legend, the same entries twice: one legend for the
    figure, under the panels, every entry once (a family drawn in one panel only too)."""
    from noisydeq.analysis.certified import plot_accuracy

    rows = [{"envelope": env, "kind": kind, "param": "", "width": 64, "eps_train": et,
             "eps": eps, "seed": 0, "n_samples": 50, "certified_acc": 0.5 - eps,
             "pgd_acc": 0.6 - eps, "clean_acc": 0.7}
            for env in ("none", "rram:chip0") for kind in ("mondeq", "ffw_relu")
            for et in (0.2, 0.3) for eps in (0.0, 0.1) if (env, et) != ("none", 0.3)
            or kind != "ffw_relu"]
    plot_accuracy(rows, tmp_path / "cert", "Table 2")
    fig = kept[-1]
    assert all(ax.get_legend() is None for ax in fig.axes) and len(fig.legends) == 1
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert len(labels) == len(set(labels)) == 8 and "ffw_relu w64, ε_train 0.3: PGD" in labels
    fig.canvas.draw()  # under the panels
    bottom = min(ax.get_tightbbox().y0 for ax in fig.axes)
    assert fig.legends[0].get_window_extent().y1 <= bottom + 1


def test_fig2_right_tells_the_ibp_lines_apart(tmp_path, kept):
    """The three IBP-MonDEQ lines (gaps 1e-3..5e-2) lay on one another on an axis the monDEQ
    lines stretch over 130 decades: they get a panel on their own scale, and each α a line
    style (markers: circle monDEQ, square IBP-MonDEQ); one legend for the figure."""
    from noisydeq.analysis.certify_experiments import plot_fig2
    from noisydeq.specs.certify import Fig2Spec

    rows = [{"param": p, "alpha": a, "iteration": k, "seed": s,
             "mean_gap": (1.0 + a) ** (3 * k) * 1e-3 if p == "mon" else 0.05 - 0.04 * (1 - a) ** k}
            for p in ("mon", "ibp") for a in (0.1, 0.5, 1.0) for k in range(1, 51) for s in (0, 1)]
    spec = Fig2Spec(task="digits", width=16, alpha=[0.1, 0.5, 1.0], n_test=10, seeds=[0, 1])
    plot_fig2(rows, tmp_path / "fig2", "Fig. 2 right", spec, echo=lambda s: None)
    fig = kept[-1]
    full, ibp = fig.axes
    assert len(full.lines) == 6 and len(ibp.lines) == 3
    assert {ln.get_marker() for ln in ibp.lines} == {"s"}
    assert len({ln.get_linestyle() for ln in ibp.lines}) == 3  # one per α
    lo, hi = ibp.get_ylim()
    assert math.log10(hi / lo) < 3  # the IBP lines' own scale, not the monDEQ's decades
    assert all(ax.get_legend() is None for ax in fig.axes) and len(fig.legends) == 1
    assert len(fig.legends[0].get_texts()) == 6
    back = _csv(tmp_path / "fig2.csv")
    assert len(back) == 6 * 50 and float(back[0]["mean_gap"]) == pytest.approx(1.1**3 * 1e-3)


def test_titles_wrap_a_level_with_its_unit():
    """The wrapped title of a white-box figure read "... at 10" / "dB (DEQ: ...": at 12 of
    90 widths from 1.5 to 6 in a line began with "dB". A number and its "dB" now stay on
    one line (mathtext stays whole, as before)."""
    import numpy as np

    from noisydeq.figures import wrap_titles

    title = ("digits: fam1 · device rram — white-box at 10 dB (DEQ: worst estimator, final "
             "state) $\\epsilon = 0.3$")
    for w in np.arange(1.5, 6.0, 0.05):
        fig = plt.figure(figsize=(w, 2))
        fig.suptitle(title)
        wrap_titles(fig)
        lines = fig._suptitle.get_text().split("\n")
        plt.close(fig)
        assert not any(ln.startswith("dB") for ln in lines), (w, lines)
        assert " ".join(lines) == title, (w, lines)  # nothing lost or added but the breaks
