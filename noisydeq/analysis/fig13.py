"""Paper Fig. 13: DEQ (width matched to 9 layers) vs 9-layer FFW with and without per-layer
Jacobian regularisation — accuracy against test signal SNR, and the eigenvalue spectra.

The DEQ and the plain FFW are the depth-``depth`` members of a family
(:class:`~noisydeq.config.FamilySpec`, trained or loaded from the model cache exactly as a
sweep with the same settings makes them: the ``repro-fig1-mnist`` study's depth-9 members
are reused, not retrained). The regularised FFW (:class:`~noisydeq.analysis.jacobian_ffw.JacRegFFW`,
"coefficient 1 additive with task loss") starts from the plain FFW's initial weights and is
trained with Σ_m weight·‖J_m‖²_F/d added; it is cached under the hash of its own config.
The sweep's ``ExperimentSpec`` has no field for a regularised FFW, so this experiment has its
own small strict spec (``noisydeq/experiments/fig13_jacreg_ffw.toml``) run by :func:`run_fig13`:

    python -m noisydeq.analysis.fig13 SPEC.toml OUT_DIR [key=value ...]
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from pydantic import Field, field_validator

from noisydeq.errors import NoisyDEQError
from noisydeq.noise import derive_seed, make_noise
from noisydeq.specs.base import InfFloat, Seed, StrictModel, build, check_choice
from noisydeq.specs.family import FamilySpec
from noisydeq.specs.model import FFW_FORMS
from noisydeq.specs.solver import JacobianRegSpec, SolverSpec
from noisydeq.specs.toml import load_toml, parse_assignments
from noisydeq.specs.training import TrainSpec

MODELS = ("deq", "ffw", "ffw_jacreg")


class Fig13Spec(StrictModel):
    """DEQ vs FFW vs Jacobian-regularised FFW at one depth (App. D.2, Fig. 13).

    ``seeds``: one family member set per seed (the paper averages three). ``ffw_form``: the
    FFW layer form (``None`` = the default). ``test_solver``: the DEQ's evaluation solver in
    place of the preset's (give the same one as the sweep whose models are reused).
    """

    NO_REPEATS = frozenset({"seeds"})

    task: str = "mnist10k"
    data_dir: str | None = None
    depth: int = Field(default=9, ge=1)
    hidden: int = Field(default=128, ge=1)
    jac_weight: float = Field(default=1.0, ge=0.0)
    jac_samples: int = Field(default=1, ge=1)
    train_preset: str = "quick"
    epochs: int | None = Field(default=None, ge=0)
    max_train_samples: int | None = Field(default=None, ge=1)
    ffw_form: str | None = None
    test_solver: SolverSpec | None = None
    snr_db: list[InfFloat] = Field(default_factory=lambda: [0.0, 5.0, 10.0, 15.0, 20.0, math.inf])
    seeds: list[Seed] = Field(default_factory=lambda: [0])
    max_test_samples: int = Field(default=2000, ge=1)

    @field_validator("snr_db", mode="before")
    @classmethod
    def _grid(cls, v: Any) -> list[float]:
        from noisydeq.specs.noise import snr_list

        return snr_list(v)

    @field_validator("ffw_form")
    @classmethod
    def _form(cls, v: Any) -> str | None:
        return None if v is None else check_choice(v, FFW_FORMS)

    @field_validator("seeds", mode="before")
    @classmethod
    def _seeds(cls, v: Any) -> list[int]:
        v = [v] if isinstance(v, int) and not isinstance(v, bool) else v
        if not isinstance(v, list) or not v:
            raise ValueError("seeds must be a non-empty list of integers, e.g. [0, 1, 2]")
        return v

    def family(self, seed: int) -> FamilySpec:
        """The one-depth family whose DEQ and FFW members this figure compares."""
        train: dict[str, Any] = {}
        for key in ("epochs", "max_train_samples", "test_solver"):
            if getattr(self, key) is not None:
                train[key] = getattr(self, key)
        return build(FamilySpec, {
            "task": self.task, "data_dir": self.data_dir, "depths": [self.depth],
            "hidden": self.hidden, "seed": seed, "train_preset": self.train_preset,
            "train": train, "ffw_form": self.ffw_form,
        }, where="fig13")


def _trained_models(spec: Fig13Spec, task, seed: int, dev: torch.device):
    """{name: trained model} of one seed, each trained once and cached."""
    from noisydeq.analysis.jacobian_ffw import JacRegFFW
    from noisydeq.families import cache_root, member_spec, prepared_member
    from noisydeq.store import config_hash
    from noisydeq.train import train_model
    from noisydeq.train_config import training_config

    fam = spec.family(seed)
    root = cache_root() / "models"
    out: dict[str, torch.nn.Module] = {}
    for kind in ("deq", "ffw"):
        model, tspec, entry = prepared_member(fam, task, kind, spec.depth, root, dev)
        out[kind] = train_model(model, task, tspec, out_dir=entry, torch_device=dev).model
    mspec = member_spec(fam, task, "ffw", spec.depth)
    reg = JacobianRegSpec(weight=spec.jac_weight, n_samples=spec.jac_samples)
    with torch.random.fork_rng(devices=[]):  # the plain FFW member's initial weights
        torch.manual_seed(derive_seed(seed, "ffw", spec.depth, spec.hidden) % (2**63))
        jac = JacRegFFW(task.in_features, spec.hidden, spec.depth, task.out_features,
                        mspec.input_act, form=mspec.ffw_form, jac_reg=reg)
    jac.spec = mspec  # the form is part of its cache key
    tspec = build(TrainSpec, {**fam.train_spec("ffw").model_dump(), "jac_reg": reg},
                  where="fig13 train")
    entry = root / config_hash(training_config(jac, task, tspec, dev))
    out["ffw_jacreg"] = train_model(jac, task, tspec, out_dir=entry, torch_device=dev).model
    return out


def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, snr_db: float,
             seed: int) -> tuple[float, float]:
    """(accuracy, converged fraction) under test signal noise at ``snr_db`` (Eq. 3-4)."""
    from noisydeq.specs.noise import NoiseSpec

    noise = make_noise(NoiseSpec(site="signal", snr_db=snr_db), seed=seed)
    model.eval()
    with torch.no_grad():
        out = model(x, noise, return_solution=True)
    correct = (out.logits.argmax(1) == y).double().mean()
    sol = out.solution
    conv = 1.0 if sol is None else float((sol.converged & ~sol.diverged).double().mean())
    return float(correct), conv


def run_fig13(spec: Fig13Spec, out_dir: str | Path) -> list[Path]:
    """Train or load the three models per seed; write fig13_accuracy.csv, fig13_spectra.csv
    and the figure (accuracy vs SNR, mean over seeds; |λ| histograms of the first seed)."""
    from noisydeq.analysis import probe
    from noisydeq.figures import (
        context_title,
        kind_colour,
        kind_line,
        layout,
        save_figure,
        snr_axis,
        styled,
        write_csv,
    )
    from noisydeq.tasks import load_task

    out = Path(out_dir)
    dev = torch.device("cpu")
    task = load_task(spec.task, data_dir=spec.data_dir, seed=spec.seeds[0])
    x = task.x_test[: spec.max_test_samples]
    y = task.y_test[: spec.max_test_samples]
    form = spec.ffw_form or FFW_FORMS[0]
    rows: list[dict[str, Any]] = []
    radii: list[dict[str, Any]] = []
    hist: dict[str, Any] = {}
    for seed in spec.seeds:
        for name, model in _trained_models(spec, task, seed, dev).items():
            for snr in spec.snr_db:
                acc, conv = evaluate(model, x, y, snr,
                                     derive_seed(seed, "fig13-test", name, snr))
                rows.append({"model": name, "ffw_form": form, "seed": seed, "snr_db": snr,
                             "accuracy": acc, "converged_frac": conv})
            rep = probe.spectrum(model)
            radii.append({"model": name, "ffw_form": form, "seed": seed, "rho": rep.rho})
            hist.setdefault(name, rep)
    # the figure's two panels: fig13_accuracy.csv (left), fig13_spectra.csv (right)
    paths = [write_csv(out / "fig13_accuracy.csv", rows),
             write_csv(out / "fig13_spectra.csv", radii)]
    look = {"deq": kind_line("deq"), "ffw": kind_line("ffw"),
            # the Jacobian-regularised FFW: an FFW (oranges, dashed), darker, other marker
            "ffw_jacreg": {**kind_line("ffw", kind_colour("ffw", 0.95)), "marker": "^"}}
    levels = sorted(spec.snr_db)
    pos = snr_positions(levels)
    # shared logarithmic bins: one model's spectral radius in the thousands (a regularised
    # FFW's product) must not push every other model's |λ| into the first linear bin
    mags = {name: hist[name].eig.abs().double() for name in MODELS}
    top = max(float(m.max()) for m in mags.values())
    floor = max(min(float(m[m > 0].min()) for m in mags.values() if (m > 0).any()),
                top * 1e-8)
    bins = torch.logspace(math.log10(floor), math.log10(top), 51).numpy()
    n = len(spec.seeds)
    with styled() as plt:
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
        for name in MODELS:
            per = {s: [r["accuracy"] for r in rows if r["model"] == name and r["snr_db"] == s]
                   for s in levels}
            means = [sum(v) / len(v) for v in per.values()]
            xs = [pos[s] for s in levels]
            axes[0].plot(xs, means, ms=4, label=name, **look[name])
            if n > 1:
                axes[0].fill_between(xs, [min(v) for v in per.values()],
                                     [max(v) for v in per.values()], color=look[name]["color"],
                                     alpha=0.15, lw=0)
            # the two FFWs' histograms differ in more than a shade of orange: the
            # regularised one is hatched and unfilled, drawn over the filled ones
            hatched = name == "ffw_jacreg"
            axes[1].hist(mags[name].clamp_min(floor).numpy(), bins=bins,
                         alpha=1.0 if hatched else 0.45, histtype="stepfilled",
                         facecolor="none" if hatched else look[name]["color"],
                         hatch="////" if hatched else None, lw=1.2 if hatched else 0.8,
                         ls=look[name]["ls"], edgecolor=look[name]["color"],
                         zorder=3 if hatched else 2, label=f"{name} ρ={hist[name].rho:.3g}")
        snr_axis(axes[0], pos)
        axes[0].set_xlabel("test signal SNR (dB; ∞ = no noise)")
        axes[0].set_ylabel(f"accuracy (mean of {n} seed{'s' * (n > 1)})")
        axes[0].set_title(f"depth {spec.depth}, FFW form {form}", fontsize=9)
        axes[0].legend(frameon=False, fontsize=8)
        axes[1].set_xlabel("|λ| of W (DEQ) / W_m…W_1 (FFW), first seed (log scale)")
        axes[1].set_xscale("log")
        axes[1].set_yscale("log")
        from matplotlib.ticker import FuncFormatter, NullFormatter

        axes[1].xaxis.set_minor_formatter(NullFormatter())  # decades only: no crowded labels
        axes[1].yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))  # 1, 10, 100
        axes[1].yaxis.set_minor_formatter(NullFormatter())
        axes[1].set_ylabel("count")
        # a decade of head room: the legend sits above the tallest bin, never on the bars
        axes[1].set_ylim(top=axes[1].get_ylim()[1] * 10)
        axes[1].legend(frameon=False, fontsize=8, ncol=3, loc="upper center")
        fig.suptitle(context_title(
            "Fig. 13: DEQ vs FFW vs Jacobian-regularised FFW", task=task.name,  # mnist10k
            noise="signal noise", trained=f"{spec.train_preset} preset, trained without noise",
            band=(f"band: min-max over {n} seeds" if n > 1 else "one seed (no band)")
            + f"; {min(len(x), spec.max_test_samples)} test inputs"))
        layout(fig)
        paths += save_figure(fig, out / "fig13")
    return paths


def snr_positions(levels: list[float]) -> dict[float, float]:
    """x position of each test SNR: finite levels at their value, ∞ one grid gap right of
    the largest finite one (as in the sweep figures), so it never lands on a swept level."""
    from noisydeq.figures import snr_positions as positions

    return positions(levels)


def load_spec(path: str, overrides: list[str]) -> Fig13Spec:
    """The spec file with ``key=value`` overrides (values parsed as TOML, else text)."""
    base = load_toml(Fig13Spec, path).model_dump(exclude_none=True)
    return build(Fig13Spec, {**base, **parse_assignments(overrides, "argument")}, where=path)


def main(argv: list[str] | None = None) -> None:
    """``python -m noisydeq.analysis.fig13 SPEC.toml|fig13_jacreg_ffw OUT_DIR [key=value ...]``;
    bad input is one line on stderr and exit status 2."""
    import sys

    from noisydeq.bundled import FIG13, find_experiment

    args = sys.argv[1:] if argv is None else argv
    if len(args) < 2:
        print("usage: python -m noisydeq.analysis.fig13 SPEC.toml OUT_DIR [key=value ...]",
              file=sys.stderr)
        raise SystemExit(2)
    try:
        spec = load_spec(str(find_experiment(args[0], FIG13)), args[2:])
        for p in run_fig13(spec, args[1]):
            print(f"wrote {p}")
    except NoisyDEQError as err:
        print(f"noisydeq: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":  # pragma: no cover
    main()
