"""``noisydeq solvers``: residual traces (Fig. 4), rel vs mean_rel iterations (Fig. 5), Fig. 6."""

from __future__ import annotations

from pathlib import Path

import click

from noisydeq.commands.sensitivity import torch_device_option
from noisydeq.config import parse_snr_range
from noisydeq.errors import NoisyDEQError


@click.command("solvers")
@click.option("--solvers", "names", default="unroll,stochastic,anderson,broyden",
              show_default=True, help="comma list of solvers to trace.")
@click.option("--snr", "snr", default="0,20", show_default=True,
              help="state-noise SNRs (dB) of the Fig. 4 traces.")
@click.option("--max-iter", type=int, default=100, show_default=True)
@click.option("--width", type=int, default=100, show_default=True, help="Fig. 4 cell width.")
@click.option("--batch", type=int, default=16, show_default=True, help="Fig. 4 random inputs.")
@click.option("--family", type=click.Path(path_type=Path), default=None,
              help="trained family/checkpoint: adds Fig. 5 and Fig. 6 on its DEQ.")
@click.option("--depth", type=int, default=None, help="which DEQ of the family (default: deepest).")
@click.option("--count-snr", default="0:20:5", show_default=True,
              help="signal SNRs (dB) for the Fig. 5 iteration counts.")
@click.option("--eps", type=float, default=0.01, show_default=True, help="Fig. 5 stop tolerance.")
@click.option("--count-max-iter", type=int, default=100, show_default=True)
@click.option("--accuracy-snr", default="0:20:5,inf", show_default=True,
              help="test signal SNRs (dB) for the Fig. 6 accuracy comparison.")
@click.option("--accuracy-solvers", default="stochastic,broyden", show_default=True)
@click.option("--inputs", type=int, default=500, show_default=True,
              help="test inputs for Fig. 5 and Fig. 6.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--data-dir", default=None, help="data directory for MNIST tasks.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="output directory (default: <family>/analysis/solvers or ./solvers).")
@torch_device_option
def command(names, snr, max_iter, width, batch, family, depth, count_snr, eps, count_max_iter,
            accuracy_snr, accuracy_solvers, inputs, seed, data_dir, out, torch_device) -> None:
    """Noisy fixed-point solving: traces, stop-rule iteration counts, accuracy per solver."""
    from noisydeq.analysis import solver_runs, traces
    from noisydeq.sweep import resolve_torch_device

    solvers = traces.check_solvers(names.split(","))
    acc_solvers = traces.check_solvers(accuracy_solvers.split(","))
    for name, v in (("--max-iter", max_iter), ("--count-max-iter", count_max_iter),
                    ("--width", width), ("--batch", batch), ("--inputs", inputs)):
        if v < 1:
            raise NoisyDEQError(f"{name}: must be a positive integer, got {v}")
    if not eps > 0:
        raise NoisyDEQError(f"--eps: must be > 0, got {eps:g}")
    snrs = parse_snr_range(snr)
    dev = resolve_torch_device(torch_device)
    if out is None:
        base = Path(".") if family is None else (family if family.is_dir() else family.parent)
        out = base / "analysis" / "solvers" if family is not None else Path("solvers")
    cell, xt = traces.fig4_cell(width, batch, seed, device=dev)
    ts = traces.residual_traces(cell, xt, snrs, solvers, max_iter=max_iter, seed=seed)
    paths = solver_runs.write_traces(ts, out)
    click.echo("Fig. 4 (median over inputs) final rel / mean_rel residual:")
    for t in ts:
        click.echo(f"  {t.solver:>10} SNR {t.snr_db:>5g}: rel {float(t.rel[-1].median()):.3g}  "
                   f"mean_rel {float(t.mean_rel[-1].median()):.3g}")
    if family is not None:
        from noisydeq.analysis.family import load_family
        from noisydeq.tasks import load_task

        members = [m for m in load_family(family, dev) if m.kind == "deq"]
        if not members:
            raise NoisyDEQError(f"--family: no DEQ model under {family}")
        if depth is not None:
            members = [m for m in members if m.depth == depth]
            if not members:
                raise NoisyDEQError(f"--depth: no DEQ of depth {depth} in the family")
        m = max(members, key=lambda m: m.depth)
        task = load_task(m.task, data_dir=data_dir, seed=m.task_seed)
        x, y = task.x_test[:inputs].to(dev), task.y_test[:inputs].to(dev)
        counts = traces.iteration_counts(m.model, x, parse_snr_range(count_snr), eps=eps,
                                         max_iter=count_max_iter, seed=seed)
        rows, more = solver_runs.write_counts(counts, eps, count_max_iter, out)
        paths += more
        click.echo(f"Fig. 5 (DEQ width {m.width}, unroll, ε = {eps:g}): mean iterations")
        for r in rows:
            click.echo(f"  {r['stop']:>8} SNR {r['snr_db']:>5g}: {r['mean_steps']:.1f} "
                       f"(converged {r['converged_frac']:.0%})")
        if task.kind == "classification":
            acc = traces.accuracy_under_noise(m.model, x, y, parse_snr_range(accuracy_snr),
                                              acc_solvers, seed=seed)
            paths += solver_runs.write_accuracy(acc, out)
            click.echo("Fig. 6 claim: accuracy under test-time signal noise")
            for r in acc:
                click.echo(f"  {r['solver']:>10} SNR {r['snr_db']:>5g}: {r['accuracy']:.3f} "
                           f"({r['mean_steps']:.1f} steps)")
    for p in paths:
        click.echo(f"wrote {p}")
