"""``noisydeq adversarial``'s strongest-defence figure: a curve per attack, and a marker per
model where the attack ran at one strength (AutoAttack at a single ε)."""

from __future__ import annotations


def _rows():
    info, rows, summary = {}, [], []
    for kind in ("deq", "ffw"):
        for seed in (0, 1):
            mid = f"{kind}-{seed}"
            info[mid] = {"kind": kind, "method": "pgd", "defence": "none", "seed": seed}
            summary.append({"method": "pgd", "defence": "final", "all": 0.3, "kind": kind,
                            "train_defence": "none"})
            for fam, lab, xs in (("aa", "AA", [0.3]), ("pgd-eps", "PGD-10", [0.0, 0.1, 0.3])):
                rows += [{"family": fam, "attack": lab, "x_name": "eps", "x": x,
                          "defence": "final", "model_id": mid, "estimator": "exact",
                          "mode": "white-box", "value": 0.9 - x - 0.05 * seed}
                         for x in xs]
    return rows, info, summary


def test_a_single_strength_is_a_marker_per_model_not_a_curve(tmp_path):
    from noisydeq.analysis.adversarial_report import _plot_best
    from noisydeq.figures import save_figure, styled

    seen = {}

    def save(fig, path, table):
        seen.update({ax.get_title(): ax for ax in fig.axes})
        return save_figure(fig, path, table)

    rows, info, summary = _rows()
    with styled() as plt:
        paths = _plot_best(plt, save, rows, info, summary, "pgd", tmp_path, "t")
    assert any(p.suffix == ".png" and p.stat().st_size > 0 for p in paths)
    aa = seen["AA at ε = 0.3"]  # the ε in the title, not a 0.285-0.315 axis around one point
    assert [t.get_text() for t in aa.get_xticklabels()] == ["DEQ (none)", "FFW (none)"]
    assert aa.get_xlim() == (-0.6, 1.6)
    pgd = seen["PGD-10"]  # several strengths stay a curve over ε
    assert pgd.get_xlabel() == "ε" and pgd.get_xlim()[0] < 0.0 < 0.3 < pgd.get_xlim()[1]


def test_a_panel_without_curves_has_no_legend_and_no_warning(tmp_path):
    """A kind with no PGD-vs-steps rows left its panel empty and ax.legend() printed
    matplotlib's two-line "No artists with labels found to put in legend" on a
    successful `noisydeq adversarial` run."""
    import warnings

    from noisydeq.analysis.adversarial_report import plot_report

    rows, info, summary = _rows()
    rows += [{"family": "pgd-steps", "attack": "PGD", "x_name": "steps", "x": s,
              "defence": "final", "model_id": "deq-0", "estimator": "exact",
              "mode": "white-box", "value": 0.5 - 0.01 * s} for s in (1, 10)]
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        paths = plot_report(rows, info, summary, tmp_path, "t")
    assert any(p.name == "pgd_pgd.png" for p in paths), paths
    assert not [w for w in said if "legend" in str(w.message)], [str(w.message) for w in said]


def test_the_figures_title_names_the_task():
    """The adversarial figures' titles were 'adversarial-fig3 [quick] curves': no task."""
    from noisydeq.analysis import adversarial_experiment as ae
    from noisydeq.analysis.adversarial_report import report_title
    from noisydeq.bundled import find_experiment

    exp = ae.load_experiment(find_experiment("adversarial-fig3", "adversarial"))
    res = exp.resolve("quick", grid={"seeds": [0], "methods": ["pgd"], "defences": ["none"]})
    assert report_title(res, "curves") == "mnist10k: adversarial-fig3 [quick] curves"
    res = exp.resolve("quick", family={"task": "digits"})
    assert report_title(res, "autoattack") == "digits: adversarial-fig3 [quick] autoattack"


def test_the_tables_clean_column_is_said_to_be_over_the_attacked_inputs():
    """The run's log gave a model's clean accuracy over the whole test set (0.756) and its
    table a clean column over the attacked inputs (0.745) with nothing telling them apart."""
    from noisydeq.analysis.adversarial_report import markdown

    assert markdown([], 0.3).startswith("accuracy at ε = 0.3 on the attacked test inputs (")
