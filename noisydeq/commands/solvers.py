"""``noisydeq solvers``: residual traces (Fig. 4), rel vs mean_rel iterations (Fig. 5), Fig. 6."""

from __future__ import annotations

import math
from pathlib import Path

import click

from noisydeq import limits, store
from noisydeq.commands import cache_option
from noisydeq.commands.sensitivity import (
    MAX_COUNT,
    SEED,
    check_device,
    check_family,
    device_options,
    threads_option,
    torch_device_option,
)
from noisydeq.commands.sweep import parse_grid
from noisydeq.errors import NoisyDEQError
from noisydeq.progress import with_heartbeat
from noisydeq.specs.task_names import check_data_dir


@click.command("solvers")
@click.option("--solvers", "names", default="unroll,stochastic,anderson,broyden",
              show_default=True, help="comma list of solvers to trace.")
@click.option("--snr", "snr", default="0,20", show_default=True,
              help="state-noise SNRs (dB) of the Fig. 4 traces.")
@click.option("--max-iter", type=int, default=100, show_default=True,
              help="steps of the Fig. 4 traces.")
@click.option("--window", "window", default="5", show_default=True,
              help="mean_rel window length(s) (Eq. 54), e.g. 5 or 5,20,50: Fig. 5 counts and "
                   "floors use every one, Fig. 4 traces and Fig. 6 the first.")
@click.option("--width", type=int, default=100, show_default=True, help="Fig. 4 cell width.")
@click.option("--batch", type=int, default=16, show_default=True, help="Fig. 4 random inputs.")
@click.option("--family", type=click.Path(path_type=Path), default=None,
              help="trained family (run dir of 'noisydeq sweep', 'noisydeq study' or "
                   "'noisydeq run', output dir of 'noisydeq train') or a checkpoint: adds "
                   "Fig. 5 and Fig. 6 on its DEQ.")
@click.option("--depth", type=int, default=None, help="which DEQ of the family (default: deepest).")
@click.option("--member-seed", type=int, default=None,
              help="training seed of the family's DEQ (default: the lowest seed).")
@click.option("--member-train-snr", default=None,
              help="training SNR (dB, inf = noise-free) of the family's DEQ (default: inf if "
                   "the family has it, else the highest).")
@click.option("--member-train-device", default=None,
              help="training device of the family's DEQ (a sweep with --train-device): none "
                   "(digital), a device name, or its label as printed (e.g. 'rram 10 dB'); "
                   "default: digital if the family has it, else the first.")
@click.option("--count-snr", default="0:20:5", show_default=True,
              help="signal SNRs (dB) for the Fig. 5 iteration counts.")
@click.option("--eps", "--tol", "eps", type=float, default=0.01, show_default=True,
              help="Fig. 5 stop tolerance ε.")
@click.option("--count-max-iter", "--threshold", "count_max_iter", type=int, default=100,
              show_default=True, help="Fig. 5 iteration cap (the paper's threshold).")
@click.option("--floors/--no-floors", default=True, show_default=True,
              help="also measure the rel / mean_rel noise floors per SNR and window "
                   "(runs of max(threshold, 2·window) steps).")
@click.option("--accuracy-snr", default="0:20:5,inf", show_default=True,
              help="test signal SNRs (dB) for the Fig. 6 accuracy comparison.")
@click.option("--accuracy-solvers", default="stochastic,broyden", show_default=True,
              help="comma list of solvers compared in Fig. 6 (test accuracy per SNR).")
@click.option("--accuracy-max-iter", type=int, default=40, show_default=True,
              help="iteration cap of the Fig. 6 solvers (stop mean_rel at 0.01).")
@click.option("--inputs", type=int, default=500, show_default=True,
              help="test inputs for Fig. 5 and Fig. 6.")
@click.option("--seed", type=SEED, default=0, show_default=True,
              help="seed of the Fig. 4 cell and inputs and of every noise draw.")
@click.option("--data-dir", default=None,
              help="data directory for MNIST tasks (default: the one a sweep recorded).")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="output directory (default: <family>/analysis/solvers or ./solvers).")
@cache_option
@device_options
@torch_device_option
@threads_option
@with_heartbeat("solvers")
def command(names, snr, max_iter, window, width, batch, family, depth, member_seed,
            member_train_snr, member_train_device, count_snr, eps,
            count_max_iter, floors, accuracy_snr, accuracy_solvers, accuracy_max_iter, inputs,
            seed, data_dir, out, device, chips, device_snr, torch_device,
            threads) -> None:
    """Noisy fixed-point solving: traces, stop-rule iteration counts, accuracy per solver.

    \b
    Examples:
      noisydeq solvers
      noisydeq solvers --family runs/sweep-1a2b3c --window 5,20,40 --inputs 500
      noisydeq solvers --family runs/sweep-1a2b3c --device ideal
    """
    from noisydeq.analysis.solver_names import check_solvers, parse_windows

    data_dir = check_data_dir(data_dir)
    solvers = check_solvers(names.split(","))
    acc_solvers = check_solvers(accuracy_solvers.split(","), "--accuracy-solvers")
    windows = parse_windows(window)
    for name, v, top in (("--max-iter", max_iter, limits.MAX_ITER),
                         ("--count-max-iter", count_max_iter, limits.MAX_ITER),
                         ("--accuracy-max-iter", accuracy_max_iter, limits.MAX_ITER),
                         ("--width", width, limits.MAX_WIDTH), ("--batch", batch, MAX_COUNT),
                         ("--inputs", inputs, MAX_COUNT)):
        if v < 1:
            raise NoisyDEQError(f"{name}: must be a positive integer, got {v}")
        if v > top:
            raise NoisyDEQError(f"{name}: at most {top}, got {v}")
    if not (eps > 0 and math.isfinite(eps)):
        raise NoisyDEQError(f"--eps: must be a finite number > 0, got {eps:g}")
    # the Fig. 4 cell (width² weights) and its traces must fit: one line, before any work
    limits.check_memory(limits.model_bytes(width * width, batch, width) +
                        limits.FLOAT * 3 * max_iter * batch * len(names.split(",")),
                        f"solvers: a width-{width} cell with {batch} inputs", torch_device,
                        "lower --width / --batch / --max-iter")
    _check_window(windows[0], max_iter, "--max-iter")
    if family is not None:
        _check_window(max(windows), count_max_iter, "--count-max-iter")
        _check_window(windows[0], accuracy_max_iter, "--accuracy-max-iter")
    snrs = parse_grid("--snr", snr)
    count_snrs = parse_grid("--count-snr", count_snr)
    acc_snrs = parse_grid("--accuracy-snr", accuracy_snr)
    if family is not None:
        check_device(device)
        check_family(family)
    elif device is not None or chips is not None or device_snr is not None:
        raise NoisyDEQError("--device/--chips/--device-snr: give --family (the Fig. 4 cell "
                            "is random and digital)")
    _check_member(family, depth, member_seed, member_train_snr, member_train_device)
    if out is None:
        base = Path(".") if family is None else (family if family.is_dir() else family.parent)
        out = base / "analysis" / "solvers" if family is not None else Path("solvers")
    store.check_out_dir(out)
    # the CLI input is checked: now the heavy imports (torch), seconds under load
    from noisydeq.analysis import solver_runs, traces
    from noisydeq.analysis.family import training_text
    from noisydeq.runtime import num_threads, resolve_torch_device

    with num_threads(threads):
        dev = resolve_torch_device(torch_device)
        model_info = None
        on = None
        if family is not None:  # load (and fail on bad input) before the Fig. 4 work
            model_info = _family_deq(family, depth, member_seed, member_train_snr,
                                     member_train_device, inputs, data_dir, dev)
            model_info, on = _on_device(family, device, chips, device_snr, model_info, data_dir,
                                        dev)
        cell, xt = traces.fig4_cell(width, batch, seed, device=dev)
        ts = traces.residual_traces(cell, xt, snrs, solvers, max_iter=max_iter, seed=seed,
                                    window=windows[0])
        paths = solver_runs.write_traces(ts, out)
        click.echo(f"Fig. 4 (median over inputs) final rel / mean_rel (w={windows[0]}) residual:")
        for t in ts:
            click.echo(f"  {t.solver:>10} SNR {t.snr_db:>5g}: rel {float(t.rel[-1].median()):.3g}  "
                       f"mean_rel {float(t.mean_rel[-1].median()):.3g}")
        if model_info is not None:
            m, task, x, y = model_info
            title = solver_runs.member_title(m, len(x), on)
            counts = traces.iteration_counts(m.model, x, count_snrs, eps=eps,
                                             max_iter=count_max_iter, seed=seed, window=windows)
            frows = None
            if floors:  # measured first: a Fig. 5 where nothing stopped names their floor
                n_iter = max(count_max_iter, 2 * max(windows))
                frows = solver_runs.floor_rows(
                    traces.residual_floors(m.model, x, count_snrs, windows, n_iter=n_iter,
                                           seed=seed), eps)
            note = solver_runs.capped_note(solver_runs.count_rows(counts), frows, eps,
                                           count_max_iter, on_device=on is not None)
            rows, more = solver_runs.write_counts(counts, eps, count_max_iter, out, title, note)
            paths += more
            click.echo(f"Fig. 5 (DEQ width {m.width}, seed {m.seed}, "
                       f"{training_text(m)}, unroll, ε = {eps:g}, threshold "
                       f"{count_max_iter}): mean iterations")
            for r in rows:
                label = "rel" if r["stop"] == "rel" else f"mean_rel w={r['window']}"
                click.echo(f"  {label:>14} SNR {r['snr_db']:>5g}: {r['mean_steps']:.1f} "
                           f"(converged {r['converged_frac']:.0%})")
            if frows is not None:
                paths += solver_runs.plot_floors(frows, eps, out / "floors", title)
                click.echo(f"noise floors (median of the last {n_iter - n_iter // 2} of {n_iter} "
                           "steps):")
                for r in frows:
                    click.echo(solver_runs.floor_line(r))
            if note:
                click.echo(f"Fig. 5: {note}")
            if task.kind == "classification":
                acc = traces.accuracy_under_noise(m.model, x, y, acc_snrs, acc_solvers, seed=seed,
                                                  max_iter=accuracy_max_iter, window=windows[0])
                paths += solver_runs.write_accuracy(
                    acc, out, solver_runs.member_title(m, len(x), on, over="accuracy"))
                click.echo("Fig. 6 claim: accuracy under test-time signal noise")
                for r in acc:
                    click.echo(f"  {r['solver']:>10} SNR {r['snr_db']:>5g}: {r['accuracy']:.3f} "
                               f"({r['mean_steps']:.1f} steps)")
        paths.append(store.write_manifest(out, paths))  # sha256sum -c SHA256SUMS
        for p in paths:
            click.echo(f"wrote {p}")


def _on_device(family: Path, device, chips, device_snr, model_info, data_dir, dev):
    """The family DEQ as programmed on the first chip of the chosen device (default: the
    sweep run's; :mod:`noisydeq.analysis.on_device`), said on stderr."""
    import dataclasses

    from noisydeq.analysis.on_device import chip_model, resolve

    on = resolve(family, device, chips, device_snr)
    if on is None:
        click.echo("device: none (digital weights)", err=True)
        return model_info, None
    on = dataclasses.replace(on, chips=on.chips[:1])  # one DEQ, one chip
    m, task, x, y = model_info
    calib = task.x_train[:512].to(dev) if on.snr_db is not None else None
    m = dataclasses.replace(m, model=chip_model(m.model, on, m.seed, on.chips[0], calib),
                            chip=on.chips[0])
    click.echo(f"device: {on.describe()} (the DEQ as programmed on it; the Fig. 4 cell "
               "stays digital)", err=True)
    return (m, task, x, y), on


def _check_window(window: int, cap: int, flag: str) -> None:
    if window > cap:
        raise NoisyDEQError(f"--window {window}: must not exceed {flag} {cap} (mean_rel can "
                            "only stop once its window is full)")


def _check_member(family: Path | None, depth: int | None, member_seed: int | None,
                  member_train_snr: str | None, member_train_device: str | None) -> None:
    """The options that choose the family's DEQ, before any work: they need ``--family`` (they
    were ignored without one), a depth is positive and a training SNR is one value."""
    given = [flag for flag, v in (("--depth", depth), ("--member-seed", member_seed),
                                  ("--member-train-snr", member_train_snr),
                                  ("--member-train-device", member_train_device))
             if v is not None]
    if given and family is None:
        raise NoisyDEQError(f"{'/'.join(given)}: choose the DEQ of a --family; give --family "
                            "(the Fig. 4 cell is random)")
    if depth is not None and depth < 1:
        raise NoisyDEQError(f"--depth: must be a positive integer, got {depth}")
    if member_train_snr is not None and len(parse_grid("--member-train-snr",
                                                       member_train_snr)) != 1:
        raise NoisyDEQError(f"--member-train-snr: one value, got {member_train_snr!r}")


def _family_deq(family: Path, depth: int | None, member_seed: int | None,
                member_train_snr: str | None, member_train_device: str | None, inputs: int,
                data_dir: str | None, dev):
    """The family's DEQ (deepest, or ``depth``; lowest seed, or ``member_seed``; trained
    without noise if there is one, else at the highest SNR, or ``member_train_snr``;
    trained digitally if there is one, else on the first training device, or
    ``member_train_device``), its task and the first ``inputs`` tests. A family of several
    seeds, training SNRs or training devices is never reduced to an arbitrary member: the
    choice is explicit and printed."""
    from noisydeq.analysis.family import load_family, load_family_task
    from noisydeq.analysis.outputs import snr_text

    members = [m for m in load_family(family, dev, data_dir=data_dir)
               if m.kind == "deq"]
    if not members:
        raise NoisyDEQError(f"--family: no DEQ model under {family}")
    seeds = sorted({m.seed for m in members})
    seed = seeds[0] if member_seed is None else member_seed
    if seed not in seeds:
        raise NoisyDEQError(f"--member-seed {seed}: the family's seeds are "
                            f"{', '.join(map(str, seeds))}")
    members = [m for m in members if m.seed == seed]
    snrs = sorted({m.train_snr_db for m in members})
    if member_train_snr is None:
        train_snr = snrs[-1]  # inf sorts last: noise-free training if present
    else:
        values = parse_grid("--member-train-snr", member_train_snr)
        if len(values) != 1:
            raise NoisyDEQError(f"--member-train-snr: one value, got {member_train_snr!r}")
        train_snr = values[0]
        if train_snr not in snrs:
            raise NoisyDEQError(f"--member-train-snr {member_train_snr}: the family's training "
                                f"SNRs are {', '.join(snr_text(v) for v in snrs)}")
    members = [m for m in members if m.train_snr_db == train_snr]
    members = _trained_on(members, member_train_device)
    if depth is not None:
        members = [m for m in members if m.depth == depth]
        if not members:
            raise NoisyDEQError(f"--depth: no DEQ of depth {depth} in the family")
    m = max(members, key=lambda m: m.depth)
    task = load_family_task([m], data_dir)
    return m, task, task.x_test[:inputs].to(dev), task.y_test[:inputs].to(dev)


def _trained_on(members: list, wanted: str | None) -> list:
    """The members trained where ``--member-train-device`` says (``none``: digitally; a
    device name when the family trained on it at one SNR; or the full label), by default
    the digitally trained ones if any, else those of the first training device."""
    from noisydeq.analysis.family import DIGITAL
    from noisydeq.specs.device import DIGITAL_TRAINING

    places = list(dict.fromkeys(m.trained_on for m in members))  # digital first
    if wanted is None:
        where = places[0]
    else:
        key = DIGITAL if wanted.strip() == DIGITAL_TRAINING else wanted.strip()
        hits = [p for p in places if key in (p, p.split(" ")[0])]
        if len(hits) != 1:
            what = "matches several" if hits else "is not one"
            raise NoisyDEQError(
                f"--member-train-device {wanted}: {what} of the family's training devices "
                f"({'; '.join('none' if p == DIGITAL else p for p in places)})")
        where = hits[0]
    return [m for m in members if m.trained_on == where]
