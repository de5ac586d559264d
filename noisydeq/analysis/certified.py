"""Certify trained models over an ε grid: certified, PGD and clean accuracy, with and without
a device envelope; the tidy table (CSV + Parquet) and the accuracy-vs-ε figure.

Every row is one (model, envelope, ε). Certificates are computed in float64 on a copy of
the model in eval mode (:func:`noisydeq.certify.propagate.bounds`); the PGD attack runs on
the digital model. Per sample a certified input must survive PGD and a PGD-robust one must
be classified correctly: ``violations`` counts certified samples the attack broke (a wrong
bound — it must be 0) and the ordering certified ≤ PGD ≤ clean is then guaranteed.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from noisydeq import store
from noisydeq.certify.envelope import build_envelope
from noisydeq.certify.envelope_types import Envelope
from noisydeq.certify.fixed_point import (
    CERT_SOLVER,
    CHIP_ADVICE,
    ENVELOPE_ADVICE,
    check_dynamic_slope,
    chip_margin,
    interval_margin,
)
from noisydeq.certify.pgd import pgd_robust
from noisydeq.certify.propagate import bounds
from noisydeq.certify.spec import CertifySpec
from noisydeq.noise import derive_seed
from noisydeq.specs.certify import check_device_options

COLUMNS = {
    "model_id": "str", "kind": "str", "param": "str", "depth": "int", "width": "int",
    "params": "int", "seed": "int", "eps_train": "float", "eps": "float",
    "envelope": "str", "assumption": "str", "n_samples": "int", "clean_acc": "float",
    "pgd_acc": "float", "certified_acc": "float", "certified_err": "float",
    "violations": "int", "interval_margin": "float", "chip_margin": "float",
    "mean_iters": "float", "max_enclosure": "float", "seconds": "float",
}


def model_label(member: Any) -> str:
    """``kind[-param]-d<depth>-w<width>-s<seed>[-e<eps_train>]``."""
    param = getattr(getattr(member.model, "cell", None), "param", None)
    base = member.kind + (f"-{param}" if param else "")
    eps = getattr(member, "eps_train", math.nan)
    tail = "" if math.isnan(eps) else f"-e{eps:g}"
    return f"{base}-d{member.depth}-w{member.width}-s{member.seed}{tail}"


@dataclass
class Plan:
    """One envelope (None = digital weights) of a model with its interval margins."""

    envelope: Envelope | None
    margin: float = math.nan
    chip: float = math.nan


def certify_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A frozen float64 eval-mode copy (certificates are computed in float64); a DEQ's
    clean forward (clean accuracy, PGD) is solved tightly, as the interval equilibrium is."""
    out = copy.deepcopy(model).double().eval()
    for p in out.parameters():
        p.requires_grad_(False)
    if getattr(out, "kind", None) == "mondeq":
        out.test_solver = CERT_SOLVER
    return out


def plan(member: Any, spec: CertifySpec, x: torch.Tensor) -> list[Plan]:
    """The envelopes of ``member`` with their margins μ — every refusal (unknown device,
    unbounded noise, an envelope too wide for the interval fixed point, a non-monotone
    model, an envelope setting without a device) is raised here, before anything runs or is
    written."""
    from noisydeq.certify.checks import check_certifiable
    from noisydeq.errors import NoisyDEQError

    check_device_options(spec)
    check_certifiable(member.model)
    try:
        env = build_envelope(member.model, spec.device, chip=spec.chip,
                             coverage=spec.coverage, k=spec.k, dynamic=spec.dynamic,
                             read_k=spec.read_k, seed=spec.seed)
        envs = [None] if env is None else [None, env.to(dtype=torch.float64)]
        model = certify_copy(member.model)
        out = []
        for e in envs:
            if getattr(model, "kind", None) != "mondeq":
                out.append(Plan(e))
                continue
            cell = model.cell
            le = e.layer("cell.M") if e is not None and cell.param != "mon" else None
            shape = None
            if cell.conv:
                with torch.no_grad():
                    shape = tuple(model.proj.U(model.proj.shaped(x[:1].double())).shape[1:])
            delta = None if le is None else le.delta
            mu = interval_margin(cell, delta, shape,
                                 CHIP_ADVICE if spec.chip is not None else ENVELOPE_ADVICE)
            if le is not None and le.dyn is not None:
                check_dynamic_slope(cell, le.dyn, mu, shape)
            out.append(Plan(e, mu, chip_margin(cell, delta, shape)))
    except NoisyDEQError as err:
        if spec.device is None:
            raise
        raise NoisyDEQError(f"{model_label(member)}: {err}") from None
    return out


def certify_member(
    member: Any, x: torch.Tensor, y: torch.Tensor, spec: CertifySpec,
    echo: Callable[[str], None] | None = None, plans: list[Plan] | None = None,
) -> list[dict[str, Any]]:
    """Rows of one trained model (``member``: an ``analysis.family.Member``-like record with
    ``model``, ``kind``, ``depth``, ``width``, ``params``, ``seed`` and optional
    ``eps_train``) on the test tensors ``x``, ``y``; ``plans`` from :func:`plan`."""
    plans = plan(member, spec, x) if plans is None else plans
    model = certify_copy(member.model)
    x, y = x.double(), y
    clip = (0.0, 1.0) if spec.clip else None
    rows = []
    pgd_cache: dict[float, torch.Tensor] = {}
    clean = None
    label = model_label(member)
    for pl in plans:
        env, mu, chip = pl.envelope, pl.margin, pl.chip
        for eps in spec.eps:
            t0 = time.perf_counter()
            cert, iters, encl = [], [], 0.0
            correct = []
            for i in range(0, len(x), spec.batch_size):
                xb, yb = x[i:i + spec.batch_size], y[i:i + spec.batch_size]
                with torch.no_grad():
                    b = bounds(model, xb, yb, eps, envelope=env, clip=clip,
                               margin=None if math.isnan(mu) else mu)
                cert.append(b.certified)
                correct.append(b.logits.argmax(dim=1) == yb)
                eq = b.info.get("interval")
                if eq is not None:
                    iters.append(float(eq.solution.steps.double().mean()))
                    encl = max(encl, float(eq.enclosure.max()))
            certified = torch.cat(cert)
            clean = torch.cat(correct)
            if eps not in pgd_cache:
                key = derive_seed(spec.seed, "pgd", label, eps)
                pgd_cache[eps] = torch.cat([
                    pgd_robust(model, x[i:i + spec.batch_size], y[i:i + spec.batch_size], eps,
                               steps=spec.pgd_steps, restarts=spec.pgd_restarts, clip=clip,
                               seed=key, samples=torch.arange(i, min(i + spec.batch_size,
                                                                     len(x))))
                    for i in range(0, len(x), spec.batch_size)
                ])
            robust = pgd_cache[eps] & clean
            violations = int((certified & ~robust).sum())
            n = len(x)
            row = {
                "model_id": label, "kind": member.kind,
                "param": str(getattr(getattr(model, "cell", None), "param", "")),
                "depth": int(member.depth), "width": int(member.width),
                "params": int(member.params), "seed": int(member.seed),
                "eps_train": float(getattr(member, "eps_train", math.nan)), "eps": float(eps),
                "envelope": "none" if env is None else env.label,
                "assumption": "exact digital weights" if env is None else env.assumption,
                "n_samples": n, "clean_acc": float(clean.double().mean()),
                "pgd_acc": float(robust.double().mean()),
                "certified_acc": float(certified.double().mean()),
                "certified_err": 1.0 - float(certified.double().mean()),
                "violations": violations, "interval_margin": mu, "chip_margin": chip,
                "mean_iters": sum(iters) / len(iters) if iters else math.nan,
                "max_enclosure": encl, "seconds": time.perf_counter() - t0,
            }
            rows.append(row)
            if echo is not None:
                echo(row_line(row))
    return rows


def row_line(row: dict[str, Any]) -> str:
    """The progress line of one certified row."""
    bad = row["violations"]
    return (f"{row['model_id']} eps {row['eps']:g} [{row['envelope']}]: clean "
            f"{row['clean_acc']:.4f} PGD {row['pgd_acc']:.4f} certified "
            f"{row['certified_acc']:.4f}" + (f"  VIOLATIONS {bad}" if bad else ""))


def write_table(rows: Sequence[dict[str, Any]], out_dir: Path) -> list[Path]:
    """``results.csv`` and ``results.parquet`` (atomic; call inside :func:`write_outputs`)."""
    from noisydeq.results import table_to_csv, table_to_parquet

    csv_path = store.atomic_write_text(out_dir / "results.csv", table_to_csv(rows, COLUMNS))
    pq_path = store.atomic_write_bytes(out_dir / "results.parquet",
                                       table_to_parquet(rows, COLUMNS))
    return [csv_path, pq_path]


def write_outputs(out_dir: Path, write: Callable[[], list[Path]]) -> list[Path]:
    """Run ``write`` (atomic writers, computing nothing) holding ``out_dir``'s lock
    (:class:`noisydeq.store.DirLock`), then list its files in ``out_dir/SHA256SUMS``
    (``sha256sum -c`` checks them; :func:`noisydeq.store.verify_manifest`). The old list is
    dropped first, so an interrupted rewrite leaves no list that vouches for a mix."""
    with store.DirLock(out_dir, "--out"):
        store.remove_manifest(out_dir)
        files = write()
        return [*files, store.write_manifest(out_dir, files)]


def group_rows(rows: Sequence[dict[str, Any]], keys: Sequence[str]) -> dict[tuple, list[dict]]:
    out: dict[tuple, list[dict]] = {}
    for r in rows:
        out.setdefault(tuple(r[k] for k in keys), []).append(r)
    return out


def plot_accuracy(rows: Sequence[dict[str, Any]], stem: Path, title: str = "") -> list[Path]:
    """Certified (filled markers) and PGD (hollow markers) accuracy vs ε per model family,
    mean ± 1 s.d. over seeds; one panel per envelope; clean accuracy as a thin dotted line.
    The house look (:mod:`noisydeq.figures`): a family's kind gives its colour family and
    line style (monDEQ greens solid, DEQ blues solid, FFW oranges dashed), darker = wider or,
    at one width, trained at a larger ε;
    the plotted means and s.d. are ``stem.csv``."""
    from noisydeq.figures import (
        context_title,
        kind_line,
        layout,
        member_colours,
        save_figure,
        styled,
    )

    envs = list(dict.fromkeys(r["envelope"] for r in rows))
    fam_keys = {(r["kind"], r["param"], r["width"], r["eps_train"]) for r in rows}
    # one shade per member of a kind, darker = wider, then trained at a larger ε: models of
    # one width trained at several ε_train are told apart (they shared a colour)
    rank = {key: i for i, key in enumerate(sorted(
        fam_keys, key=lambda k: (k[0], k[2], -1.0 if math.isnan(k[3]) else k[3], k[1])))}
    colours = member_colours([(key[0], rank[key]) for key in fam_keys])
    seeds = len({r["seed"] for r in rows})
    band = (f"error bars: ±1 s.d. over {seeds} seeds" if seeds > 1 else "one seed (no bars)")
    n_samples = sorted({int(r["n_samples"]) for r in rows})
    table: list[dict[str, Any]] = []
    with styled() as plt:
        fig, axes = plt.subplots(1, len(envs), figsize=(5.6 * len(envs), 3.6),
                                 squeeze=False)
        for ax, env in zip(axes[0], envs, strict=True):
            sub = [r for r in rows if r["envelope"] == env]
            fams = group_rows(sub, ("kind", "param", "width", "eps_train"))
            for key, fam_rows in sorted(fams.items(), key=lambda kv: str(kv[0])):
                kind, param, width, eps_train = key
                name = kind + (f" ({param})" if param else "") + f" w{width}"
                if not math.isnan(eps_train):
                    name += f", ε_train {eps_train:g}"
                look = kind_line(kind, colours[(kind, rank[key])])
                by_eps = group_rows(fam_rows, ("eps",))
                eps = sorted(e for (e,) in by_eps)

                def stat(col: str, eps=eps, by_eps=by_eps) -> tuple[list[float], list[float]]:
                    vals = [torch.tensor([r[col] for r in by_eps[(e,)]], dtype=torch.float64)
                            for e in eps]
                    return ([float(v.mean()) for v in vals],
                            [float(v.std()) if len(v) > 1 else 0.0 for v in vals])

                c_m, c_s = stat("certified_acc")
                p_m, p_s = stat("pgd_acc")
                k_m, _ = stat("clean_acc")
                ax.errorbar(eps, c_m, yerr=c_s, capsize=3, ms=4, label=f"{name}: certified",
                            **look)
                ax.errorbar(eps, p_m, yerr=p_s, capsize=3, ms=4, mfc="white", alpha=0.8,
                            label=f"{name}: PGD", **{**look, "marker": "s"})
                ax.plot(eps, k_m, color=look["color"], ls=":", lw=0.8)
                table += [{"envelope": env, "kind": kind, "param": param, "width": width,
                           "eps_train": eps_train, "eps": e, "certified_mean": c_m[i],
                           "certified_sd": c_s[i], "pgd_mean": p_m[i], "pgd_sd": p_s[i],
                           "clean_mean": k_m[i], "seeds": len(by_eps[(e,)])}
                          for i, e in enumerate(eps)]
            ax.set_xlabel("ℓ∞ radius ε")
            ax.set_ylabel("accuracy")
            ax.set_ylim(-0.02, 1.02)
            ax.set_title("digital weights" if env == "none" else f"envelope {env}", fontsize=9)
        # one legend for the figure (every panel draws the same families), under the panels
        # in a column per kind: the entries of each panel, in its order, each once
        entries: dict[str, Any] = {}
        for ax in axes[0]:
            for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
                entries.setdefault(label, handle)
        kinds = len({key[0] for key in fam_keys})
        fig.legend(list(entries.values()), list(entries), loc="upper center",
                   bbox_to_anchor=(0.5, 0.0), ncol=kinds,
                   frameon=False, fontsize=7)
        fig.suptitle(context_title(
            title or "Certified accuracy",
            trained=f"{'/'.join(map(str, n_samples))} test inputs",
            band=f"{band}; filled: certified, hollow: PGD, dotted: clean"), fontsize=10)
        layout(fig)  # the title above the panels, not on them
        return save_figure(fig, stem, table)
