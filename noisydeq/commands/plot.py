"""``noisydeq plot RUN_DIR... [--out DIR] [--title T]``: redraw a finished run's figures.

A sweep: reads the run's ``config.toml`` and ``results.csv`` (checked against its
``SHA256SUMS``) and draws the figures the sweep draws (:func:`noisydeq.plots.plot_sweep`: PNG,
SVG and the CSV of the plotted points). A study (``noisydeq study``): reads ``study.toml``
and ``results.csv`` and draws the study's figures (:func:`noisydeq.studies.plots.plot_study`)
from the seed aggregate of its rows. Several studies of one task (e.g. one seed per run) are
drawn as one: their rows merged (:mod:`noisydeq.studies.merge`; a row two runs both hold is
refused), then averaged over seeds with the band min…max — into ``--out``, which several
runs need. No model is loaded and no cell computed. Into the run's own ``figures/`` by
default (under the run's lock, its ``SHA256SUMS`` rewritten), or into ``--out``. For runs
made before a change of the figures' look, with another title, or seeds run apart; a
sweep's title is by default its own (``meta.json``: an experiment run's title and variant).
"""

from __future__ import annotations

from pathlib import Path

import click

from noisydeq.errors import NoisyDEQError


def _seal_own(rd, draw) -> list[Path]:
    """Draw into ``rd.figures`` under the run's lock and list every figure file of the run
    in its ``SHA256SUMS``, the redrawn ones with new digests."""
    from noisydeq import store

    for folder in (rd.path, rd.figures):  # its lock, SHA256SUMS and figures are written
        try:
            if folder.is_dir():
                store.try_writing(folder)
        except OSError as err:
            raise NoisyDEQError(
                f"plot: cannot write in {folder} ({err.strerror or err}): a run's figures "
                "are redrawn into its own figures/ by default; pass --out DIR to draw "
                "them elsewhere") from None
    with rd.lock:
        store.make_dir(rd.figures, "figures")
        paths = draw(rd.figures)
        rd.seal(sorted(p for p in rd.figures.iterdir() if p.is_file()))
    return paths


def _studies(run_dirs: tuple[Path, ...], out: Path | None, title: str | None) -> list[Path]:
    from noisydeq import store
    from noisydeq.studies.merge import load_studies, merged_rows, merged_spec
    from noisydeq.studies.plots import plot_study
    from noisydeq.studies.rundir import StudyDir
    from noisydeq.studies.summary import summarise

    studies = load_studies(run_dirs, "plot")
    spec, summary = merged_spec(studies), summarise(merged_rows(studies))
    title = title or studies[0].name

    def draw(folder: Path) -> list[Path]:
        return plot_study(summary, spec, folder, title=title)

    own = run_dirs[0] / "figures"
    if out is None or (len(run_dirs) == 1 and out.resolve() == own.resolve()):
        if len(run_dirs) > 1:
            raise NoisyDEQError("plot: several study runs are drawn together into --out DIR "
                                "only (no run's own figures/ holds them)")
        return _seal_own(StudyDir(run_dirs[0]), draw)
    store.make_dir(out, "--out")
    return draw(out)


@click.command("plot")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Folder for the figures (default: the run's own figures/).")
@click.option("--title", default=None,
              help="First part of every figure's title (default: the run's own, e.g. an "
                   "experiment's title and variant).")
def command(run_dirs: tuple[Path, ...], out: Path | None, title: str | None) -> None:
    """Redraw a finished run's figures from its results.csv (nothing is recomputed).

    Several studies of one task (e.g. one seed each) are drawn as one figure over their
    seeds, into --out.

    \b
    Examples:
      noisydeq plot runs/sweep-1a2b3c
      noisydeq plot runs/sweep-1a2b3c --out figs --title "Fig. 1a"
      noisydeq plot runs/mazes-s0 runs/mazes-s1 runs/mazes-s2 --out figs
    """
    from noisydeq.studies.merge import is_study

    if any(is_study(p) for p in run_dirs):
        sweeps = [p for p in run_dirs if not is_study(p)]
        if sweeps:
            raise NoisyDEQError(f"plot: {sweeps[0]} is not a study run directory; studies "
                                "and sweeps are drawn apart")
        paths = _studies(run_dirs, out, title)
        if not paths:
            from noisydeq.studies.plots import NO_FIGURE

            click.echo(NO_FIGURE)
    else:
        if len(run_dirs) > 1:
            raise NoisyDEQError("plot: one sweep run directory at a time (several run "
                                "directories are drawn together only for studies)")
        paths = _sweep(run_dirs[0], out, title)
    for p in paths:
        click.echo(f"wrote {p}")


def _sweep(run_dir: Path, out: Path | None, title: str | None) -> list[Path]:
    from noisydeq import store
    from noisydeq.compare import load_run
    from noisydeq.plots import plot_sweep
    from noisydeq.results import RunDir

    run = load_run(run_dir, "plot")  # one line when RUN_DIR is not a finished sweep
    if title is None:  # the title the run's figures were drawn with (meta.json), if any
        rd = RunDir(run_dir)
        recorded = rd.read_meta().get("title") if rd.meta_path.is_file() else None
        title = recorded if isinstance(recorded, str) else ""
    native = None
    if run.spec.noise_site == "device":
        from noisydeq.sweep.hardware import Hardware

        native = Hardware(run.spec).native_snr_db()
    if out is not None and out.resolve() != (run_dir / "figures").resolve():
        store.make_dir(out, "--out")
        return plot_sweep(run.rows, out, run.spec, native, title=title)
    return _seal_own(RunDir(run_dir),
                     lambda folder: plot_sweep(run.rows, folder, run.spec, native,
                                               title=title))
