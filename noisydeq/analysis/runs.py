"""Family-level analyses behind ``noisydeq sensitivity`` and ``noisydeq spectrum``.

Sensitivity (paper §4.1.1, Fig. 2b): E_ξ |dz*/dξ_i| of each DEQ and FFW over noise samples ×
test inputs, the DEQ/FFW ratio per depth, and the Eq. 12 bounds next to the measurement.
Spectrum (Fig. 2a, Fig. 13 right): eigenvalues of W (DEQ) and W_m⋯W₁ (FFW), spectral radii,
and ρ(∂f/∂z) at the DEQ fixed point.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from noisydeq.analysis import probe
from noisydeq.analysis.family import DIGITAL, Member, Pair, group_order, pairs
from noisydeq.analysis.on_device import DIGITAL_COLUMNS, OnDevice
from noisydeq.errors import NoisyDEQError
from noisydeq.figures import (
    context_title,
    input_note,
    kind_colour,
    kind_line,
    layout,
    save_figure,
    shades,
    styled,
    write_csv,
)
from noisydeq.noise import derive_seed, seeded_generator
from noisydeq.specs.noise import NoiseSpec
from noisydeq.summary import fmt_db


def family_inputs(members: list[Member], n_inputs: int, data_dir: str | None,
                  device: torch.device) -> torch.Tensor:
    """The first ``n_inputs`` test inputs of the family's task (fingerprint-checked)."""
    from noisydeq.analysis.family import load_family_task

    if n_inputs < 1:
        raise NoisyDEQError(f"--inputs: need at least 1 input, got {n_inputs}")
    return load_family_task(members, data_dir).x_test[:n_inputs].to(device)


def _label(group: tuple) -> str:
    seed, snr, where, *chip = group
    text = f"seed {seed}, train SNR {fmt_db(snr, 'legend')}"
    text += "" if where == DIGITAL else f", trained on {where}"
    return text + (f", chip {chip[0]}" if chip else "")


def trained_on_columns(members: list[Member]) -> Callable[[Member], dict[str, str]]:
    """A member's ``trained_on`` column (:attr:`Member.trained_on`) when the family holds
    models trained on a device, else no column (the tables of digital families unchanged)."""
    if all(m.trained_on == DIGITAL for m in members):
        return lambda m: {}
    return lambda m: {"trained_on": m.trained_on}


def run_sensitivity(
    members: list[Member], spec: NoiseSpec, x: torch.Tensor, out_dir: Path, *,
    n_noise: int = 100, precision: float | None = 0.05, seed: int = 0,
    echo: Callable[[str], None] = print, on: OnDevice | None = None,
) -> tuple[list[dict[str, Any]], list[Path]]:
    """Measure every member (on each chip of ``on``: ``members`` as
    :func:`noisydeq.analysis.on_device.on_chips` made them); write ``sensitivity.csv`` and
    the ratio/bounds figure."""
    rows: list[dict[str, Any]] = []
    all_pairs = pairs(members)
    for pair in all_pairs:
        warn = pair.count_warning()
        if warn:
            echo(warn)
    results: dict[int, Any] = {}
    for m in members:
        gen = seeded_generator(derive_seed(seed, "sensitivity", m.kind, m.depth, m.seed,
                                           *(() if m.chip is None else ("chip", m.chip))))
        s = probe.sensitivity(m.model, x, spec, n_noise=n_noise, generator=gen)
        if precision is not None:
            s.check_precision(precision, what=f"depth {m.depth}")
        results[id(m)] = s
    trained = trained_on_columns(members)
    for pair in all_pairs:
        row = _pair_row(pair, results, spec)
        member = pair.deq or pair.ffw
        where = on.columns(member.chip or 0) if on is not None else DIGITAL_COLUMNS
        rows.append({**row, **trained(member), **where})
    band = f"error bars: ±1 s.e. over {n_noise} noise samples × {len(x)} inputs"
    return rows, plot_sensitivity(rows, spec, out_dir / "sensitivity",
                                  family_title(members, band, on))


def family_title(members: list[Member], band: str | None = None,
                 on: OnDevice | None = None) -> str:
    """The context of a family's figures: its task, the device its members are on
    (``on``: :mod:`noisydeq.analysis.on_device`; else digital weights) and how they were
    trained, and ``band`` on a second line (:func:`noisydeq.figures.context_title`)."""
    tasks = ", ".join(dict.fromkeys(m.task for m in members))
    trained = sorted({m.train_snr_db for m in members}, reverse=True)
    seeds = sorted({m.seed for m in members})
    how = "trained " + ", ".join("without noise" if math.isinf(t) else f"at {t:g} dB"
                                 for t in trained)
    places = list(dict.fromkeys(m.trained_on for m in members))
    if places != [DIGITAL]:
        how += " (" + ", ".join("digitally" if w == DIGITAL else f"on {w}" for w in places) + ")"
    how += f", seed{'s' * (len(seeds) > 1)} {', '.join(map(str, seeds))}"
    acts = [input_note(getattr(m.model, "input_act", None)) for m in members]
    notes = [a for a in dict.fromkeys(acts) if a]
    how += "".join(f", {a}" for a in notes)
    where = f"on {on.describe()}" if on is not None else "digital weights"
    return context_title("", task=tasks, device=where, trained=how, band=band)


def _pair_row(pair: Pair, results: dict[int, Any], spec: NoiseSpec) -> dict[str, Any]:
    row: dict[str, Any] = {"seed": pair.group[0], "train_snr_db": pair.group[1],
                           "depth": pair.depth}
    eta = spec.eta if spec.kind == "additive" else math.nan
    for kind, m in (("deq", pair.deq), ("ffw", pair.ffw)):
        if m is None:
            row.update({f"{kind}_{k}": math.nan for k in
                        ("width", "params", "sens", "sem", "abs_entry", "n", "failed",
                         "bound_paper", "bound_norm")})
            continue
        s = results[id(m)]
        row.update({
            f"{kind}_width": m.width, f"{kind}_params": m.params, f"{kind}_sens": s.mean,
            f"{kind}_sem": s.sem, f"{kind}_abs_entry": float(s.abs_entry.mean()),
            f"{kind}_n": s.n, f"{kind}_failed": s.n_failed,
        })
        if spec.kind == "additive":
            b = probe.eq12_bounds(m.model, eta)
            row[f"{kind}_bound_paper"], row[f"{kind}_bound_norm"] = b.paper, b.norm
        else:
            row[f"{kind}_bound_paper"] = row[f"{kind}_bound_norm"] = math.nan
    d, f = row["deq_sens"], row["ffw_sens"]
    row["ratio"] = d / f if (f == f and d == d and f > 0) else math.nan
    if row["ratio"] == row["ratio"]:  # standard error of a ratio (delta method)
        row["ratio_sem"] = row["ratio"] * math.hypot(row["deq_sem"] / d, row["ffw_sem"] / f)
    else:
        row["ratio_sem"] = math.nan
    return row


def _group(row: dict[str, Any]) -> tuple:
    """(seed, training SNR, where trained[, chip]) of a sensitivity row (the chip when on a
    device), as :attr:`Member.group`."""
    base = (row["seed"], row["train_snr_db"], row.get("trained_on", DIGITAL))
    return base if row.get("device", "ideal") == "ideal" else (*base, row["chip"])


def _noise_text(spec: NoiseSpec) -> str:
    amount = f"additive η = {spec.eta:g}" if spec.kind == "additive" else \
        f"multiplicative {spec.snr_db:g} dB"
    return f"{spec.site} noise, {amount}"


def plot_sensitivity(rows: list[dict[str, Any]], spec: NoiseSpec, stem: Path,
                     title: str = "") -> list[Path]:
    """Fig. 2b: DEQ/FFW sensitivity ratio against depth; right: measured vs Eq. 12 bounds.
    The house look (:mod:`noisydeq.figures`): DEQ blues solid, FFW oranges dashed; the
    ratio's groups (seed, training SNR) in blues, darker = later group; ``sensitivity.csv``
    (``rows``) beside the figure."""
    with styled() as plt:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        groups = sorted({_group(r) for r in rows}, key=group_order)
        for g, colour in zip(groups, shades("deq", len(groups)), strict=True):
            rs = [r for r in rows if _group(r) == g and r["ratio"] == r["ratio"]]
            if rs:
                axes[0].errorbar([r["depth"] for r in rs], [r["ratio"] for r in rs],
                                 yerr=[r["ratio_sem"] for r in rs], capsize=3,
                                 label=_label(g), **kind_line("deq", colour))
        axes[0].axhline(1.0, color="grey", ls=":", lw=1)
        axes[0].set_xlabel("FFW depth (DEQ width parameter-matched)")
        axes[0].set_ylabel("sensitivity ratio DEQ / FFW")
        axes[0].set_title("E‖dz*/dξ_i‖ ratio DEQ / FFW", fontsize=9)
        if axes[0].get_legend_handles_labels()[0]:
            axes[0].legend(frameon=False)
        ax = axes[1]
        g0 = [r for r in rows if _group(r) == groups[0]]
        depth = [r["depth"] for r in g0]
        for kind in ("deq", "ffw"):
            line = kind_line(kind)
            ax.plot(depth, [r[f"{kind}_sens"] for r in g0], label=f"{kind.upper()} measured",
                    **line)
            if spec.kind == "additive":
                for col, marker, what in (("bound_paper", "x", "Eq. 12 (ρ)"),
                                          ("bound_norm", "+", "Eq. 12 (‖·‖₂)")):
                    ys = [_finite(r[f"{kind}_{col}"]) for r in g0]
                    # a bound infinite at every depth draws nothing: its legend entry says
                    # so instead of naming a line the reader cannot find
                    none = all(math.isnan(y) for y in ys)
                    ax.plot(depth, ys, ls=line["ls"], marker=marker, ms=6, lw=0.9,
                            color=kind_colour(kind, 0.5),
                            label=f"{kind.upper()} {what}" + (": ∞, not drawn" if none else ""))
        ax.set_yscale("log")
        ax.set_xlabel("FFW depth")
        ax.set_ylabel("E‖dz*/dξ_i‖₂")
        ax.set_title(f"measured ({_label(groups[0])}) and Eq. 12 bounds"
                     + (" (∞ not drawn)" if spec.kind == "additive" else ""), fontsize=9)
        ax.legend(frameon=False, fontsize=7)
        for a_ in axes:  # the family's depths: integer ticks
            a_.set_xticks(sorted({r["depth"] for r in rows}))
        fig.suptitle(context_title("Sensitivity (Fig. 2b) — " + _noise_text(spec))
                     + (f" · {title}" if title else ""))
        layout(fig)
        return save_figure(fig, stem, rows)


def _finite(v: float) -> float:
    return v if math.isfinite(v) else math.nan


# --------------------------------------------------------------------------- spectra


def run_spectrum(
    members: list[Member], x: torch.Tensor | None, out_dir: Path, *, seed: int = 0,
    on: OnDevice | None = None,
) -> tuple[list[dict[str, Any]], list[Path]]:
    """Eigenvalues and radii of every member (on each chip of ``on``: ``members`` as
    :func:`noisydeq.analysis.on_device.on_chips` made them): spectrum.csv, eigenvalues.csv
    and figures."""
    summary: list[dict[str, Any]] = []
    eig_rows: list[dict[str, Any]] = []
    reports = []
    trained = trained_on_columns(members)
    for m in members:
        gen = seeded_generator(derive_seed(seed, "spectrum", m.kind, m.depth, m.seed,
                                           *(() if m.chip is None else ("chip", m.chip))))
        where = on.columns(m.chip or 0) if on is not None else DIGITAL_COLUMNS
        # conv operators need the input size: their FFWs get the inputs too
        wants_x = m.kind == "deq" or not probe.is_mlp_model(m.model)
        rep = probe.spectrum(m.model, x if wants_x else None, generator=gen)
        reports.append((m, rep))
        row: dict[str, Any] = {
            "seed": m.seed, "train_snr_db": m.train_snr_db, **trained(m), "kind": m.kind,
            "depth": m.depth, "width": m.width, "params": m.params, "rho": rep.rho,
            "rho_layers_max": max(rep.layer_radii) if rep.layer_radii else math.nan,
            "spectral_norm_max": max(rep.spectral_norms) if rep.spectral_norms else math.nan,
            "rho_products": " ".join(f"{r:.4g}" for r in rep.radii), **where,
        }
        if rep.jac_rho is not None:
            ok = rep.jac_converged
            vals = rep.jac_rho[ok]
            row.update({
                "jac_rho_mean": float(vals.mean()) if vals.numel() else math.nan,
                "jac_rho_max": float(vals.max()) if vals.numel() else math.nan,
                "jac_converged": f"{int(ok.sum())}/{ok.numel()}",
            })
        summary.append(row)
        for lam in rep.eig.tolist():
            eig_rows.append({"seed": m.seed, "train_snr_db": m.train_snr_db, **trained(m),
                             "kind": m.kind, "depth": m.depth, "real": lam.real, "imag": lam.imag,
                             "abs": abs(lam), **where})
    paths = [write_csv(out_dir / "spectrum.csv", summary),
             write_csv(out_dir / "eigenvalues.csv", eig_rows)]
    paths += plot_spectrum(reports, out_dir / "spectrum", family_title(members, on=on))
    return summary, paths


#: the FFW eigenvalue histograms' symlog axis is linear below this |λ|
SYMLOG_THRESHOLD = 1e-3


def _symlog_bins(values: Any, threshold: float, n: int = 40) -> list[float]:
    """``n`` histogram edges even on a symlog axis for non-negative ``values``: [0,
    threshold] as one bin, log-spaced from ``threshold`` to the largest value above it."""
    top = max(float(values.max()), threshold * 10)
    ratio = (top / threshold) ** (1.0 / (n - 1))
    return [0.0] + [threshold * ratio**k for k in range(n - 1)] + [top]


def plot_spectrum(reports: list, stem: Path, title: str = "") -> list[Path]:
    """Fig. 2a / 13 (right): |λ| histograms per depth, DEQ W (blues) vs FFW product
    (oranges), and ρ vs depth. The histograms' data are ``eigenvalues.csv`` and
    ``spectrum.csv`` (written by :func:`run_spectrum`), the radius figure's
    ``spectrum_radius.csv`` (written here)."""
    seeds = sorted({m.group[:3] for m, _ in reports}, key=group_order)
    group = [(m, r) for m, r in reports if m.group[:3] == seeds[0]]
    chips = sorted({m.chip for m, _ in group if m.chip is not None})
    first = [(m, r) for m, r in group if not chips or m.chip == chips[0]]
    depths = sorted({m.depth for m, _ in first})
    notes = [f"first group: {_label(seeds[0])}"] if len(seeds) > 1 else []
    if len(chips) > 1:
        notes.append(f"histograms: chip {chips[0]}; radii: mean, band min-max over "
                     f"{len(chips)} chips")
    which = "; ".join(notes)
    with styled() as plt:
        fig, axes = plt.subplots(len(depths), 2, figsize=(9, 1.6 * len(depths) + 1.4),
                                 squeeze=False, sharex="col")
        tops: dict[str, float] = {}
        for i, d in enumerate(depths):
            for j, kind in enumerate(("deq", "ffw")):
                ax = axes[i][j]
                hit = [(m, r) for m, r in first if m.depth == d and m.kind == kind]
                if not hit:
                    ax.set_axis_off()
                    continue
                m, r = hit[0]
                mags = r.eig.abs().numpy()
                mags = mags[mags == mags]  # cells without a single W have no eigenvalues (NaN)
                if not mags.size:
                    ax.set_axis_off()
                    continue
                # the FFW product's |λ| span decades (most near 0): bins even on its symlog
                # axis — one linear bin below the threshold, log-spaced above — so the
                # histogram is not one bar at the left edge
                bins = _symlog_bins(mags, SYMLOG_THRESHOLD) if kind == "ffw" else 40
                ax.hist(mags, bins=bins, color=kind_colour(kind), alpha=0.85)
                ax.axvline(r.rho, color="k", lw=1, ls=kind_line(kind)["ls"])
                what = (f"W (width {m.width})" if kind == "deq"
                        else f"W_{d}…W_1 ({d} layer{'' if d == 1 else 's'})")
                ax.set_title(f"{kind.upper()} depth {d}: |λ| of {what}, ρ={r.rho:.3g}",
                             fontsize=8)
                if kind == "ffw":
                    ax.set_xscale("symlog", linthresh=SYMLOG_THRESHOLD)
                tops[kind] = max(tops.get(kind, 0.0), float(mags.max()), float(r.rho))
        # |λ| ≥ 0: no negative half on the symlog axis; room right of the largest |λ|, so the
        # ρ line is not hidden under the axis' edge (one limit per column: it is shared)
        for j, kind in enumerate(("deq", "ffw")):
            if kind in tops:
                axes[0][j].set_xlim(0.0 if kind == "ffw" else None,
                                    tops[kind] * (1.6 if kind == "ffw" else 1.05))
        for ax in axes[-1]:
            ax.set_xlabel("|eigenvalue| (line: ρ)")
        fig.suptitle("\n".join(p for p in ("Eigenvalues (Fig. 2a) — " + title, which) if p))
        layout(fig)
        out = save_figure(fig, stem)
        fig2, ax = plt.subplots(figsize=(5.5, 3.8))
        table: list[dict[str, Any]] = []
        for kind in ("deq", "ffw"):
            curves = (("rho", "DEQ ρ(W)" if kind == "deq" else "FFW ρ(W_m…W_1)",
                       kind_line(kind), lambda r: r.rho),
                      ("jac_rho_mean", "DEQ ρ(∂f/∂z) at z*",
                       {"ls": "-", "marker": "D", "color": kind_colour("deq", 0.5)},
                       lambda r: float(r.jac_rho[r.jac_converged].mean())
                       if r.jac_rho is not None and bool(r.jac_converged.any()) else None))
            for quantity, label, look, value in curves:
                pts = [(m.depth, m.width, m.chip, value(r)) for m, r in group
                       if m.kind == kind and value(r) is not None]
                if not pts or (quantity == "jac_rho_mean" and kind != "deq"):
                    continue
                ds = sorted({p[0] for p in pts})
                per = {d: [p[3] for p in pts if p[0] == d] for d in ds}
                ax.plot(ds, [sum(v) / len(v) for v in per.values()], label=label, **look)
                if len(chips) > 1:
                    ax.fill_between(ds, [min(v) for v in per.values()],
                                    [max(v) for v in per.values()], color=look["color"],
                                    alpha=0.18, lw=0)
                table += [{"kind": kind, "depth": d, "width": w, "chip": c,
                           "quantity": quantity, "value": v} for d, w, c, v in sorted(
                               pts, key=lambda p: (p[0], -1 if p[2] is None else p[2]))]
        ax.set_yscale("log")
        ax.set_xticks(depths)  # the family's depths: integer ticks, no gaps between them
        ax.set_xlabel("FFW depth (DEQ width matched)")
        ax.set_ylabel("spectral radius")
        ax.legend(frameon=False)
        ax.set_title("\n".join(p for p in ("Spectral radii (Fig. 2a)", title, which) if p),
                     fontsize=8)
        layout(fig2)
        out += save_figure(fig2, stem.with_name(stem.name + "_radius"), table)
    return out
