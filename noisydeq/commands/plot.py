"""``noisydeq plot RUN_DIR [--out DIR] [--title T]``: redraw a finished sweep's figures.

Reads the run's ``config.toml`` and ``results.csv`` (checked against its ``SHA256SUMS``)
and draws the figures the sweep draws (:func:`noisydeq.plots.plot_sweep`: PNG, SVG and
the CSV of the plotted points) — no model is loaded and no cell computed. Into the run's
own ``figures/`` by default (under the run's lock, its ``SHA256SUMS`` rewritten), or into
``--out``. For runs made before a change of the figures' look, or with another title; by
default with the run's own (``meta.json``: an experiment run's title and variant).
"""

from __future__ import annotations

from pathlib import Path

import click


@click.command("plot")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Folder for the figures (default: the run's own figures/).")
@click.option("--title", default=None,
              help="First part of every figure's title (default: the run's own, e.g. an "
                   "experiment's title and variant).")
def command(run_dir: Path, out: Path | None, title: str | None) -> None:
    """Redraw a finished sweep's figures from its results.csv (nothing is recomputed).

    \b
    Examples:
      noisydeq plot runs/sweep-1a2b3c
      noisydeq plot runs/sweep-1a2b3c --out figs --title "Fig. 1a"
    """
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
        paths = plot_sweep(run.rows, out, run.spec, native, title=title)
    else:
        rd = RunDir(run_dir)
        with rd.lock:
            paths = plot_sweep(run.rows, rd.figures, run.spec, native, title=title)
            # every figure file of the run stays listed, the redrawn ones with new digests
            rd.seal(sorted(p for p in rd.figures.iterdir() if p.is_file()))
    for p in paths:
        click.echo(f"wrote {p}")
