"""Paper Fig. 13: DEQ (width matched to 9 layers) vs 9-layer FFW with and without per-layer
Jacobian regularisation — accuracy against test signal SNR, and the eigenvalue spectra.

The sweep's ``ExperimentSpec`` has no field for a regularised FFW, so this experiment has its
own small strict spec (``experiments/fig13_jacreg_ffw.toml``) run by :func:`run_fig13`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from pydantic import Field, field_validator

from noisydeq.config import InfFloat, JacobianRegSpec, ModelSpec, StrictModel, TrainSpec, load_toml
from noisydeq.noise import derive_seed, make_noise


class Fig13Spec(StrictModel):
    """DEQ vs FFW vs Jacobian-regularised FFW at one depth (App. D.2, Fig. 13)."""

    task: str = "mnist10k"
    data_dir: str | None = None
    depth: int = Field(default=9, ge=1)
    hidden: int = Field(default=128, ge=1)
    jac_weight: float = Field(default=1.0, ge=0.0)
    jac_samples: int = Field(default=1, ge=1)
    train_preset: str = "quick"
    epochs: int | None = Field(default=None, ge=0)
    snr_db: list[InfFloat] = Field(default_factory=lambda: [0.0, 5.0, 10.0, 15.0, 20.0, math.inf])
    seed: int = 0
    max_test_samples: int = Field(default=2000, ge=1)

    @field_validator("snr_db", mode="before")
    @classmethod
    def _grid(cls, v: Any) -> list[float]:
        from noisydeq.config import _snr_list

        return _snr_list(v, "snr_db")


def _models(spec: Fig13Spec, task) -> dict[str, tuple[torch.nn.Module, TrainSpec]]:
    from noisydeq.analysis.jacobian_ffw import JacRegFFW
    from noisydeq.models.factory import build_model

    extra = {} if spec.epochs is None else {"epochs": spec.epochs}
    reg = JacobianRegSpec(weight=spec.jac_weight, n_samples=spec.jac_samples)
    out = {}
    for name in ("deq", "ffw", "ffw_jacreg"):
        torch.manual_seed(derive_seed(spec.seed, "fig13", name) % (2**31))
        kind = "deq" if name == "deq" else "ffw"
        mspec = ModelSpec(kind=kind, in_features=task.in_features,
                          out_features=task.out_features, width=spec.hidden, depth=spec.depth)
        if name == "ffw_jacreg":
            model = JacRegFFW(task.in_features, spec.hidden, spec.depth, task.out_features,
                              jac_reg=reg)
            train = TrainSpec.preset(spec.train_preset, "ffw", jac_reg=reg, seed=spec.seed,
                                     **extra)
        else:
            model = build_model(mspec)
            train = TrainSpec.preset(spec.train_preset, kind, seed=spec.seed, **extra)
        out[name] = (model, train)
    return out


def run_fig13(spec: Fig13Spec, out_dir: str | Path) -> list[Path]:
    """Train the three models (cached in ``out_dir``), write accuracy.csv and spectra figures."""
    from noisydeq.analysis import probe
    from noisydeq.analysis.outputs import pyplot, save_figure, write_csv
    from noisydeq.config import NoiseSpec
    from noisydeq.tasks import load_task
    from noisydeq.train import train_model

    out = Path(out_dir)
    task = load_task(spec.task, data_dir=spec.data_dir, seed=spec.seed)
    x = task.x_test[: spec.max_test_samples]
    y = task.y_test[: spec.max_test_samples]
    rows, spectra_ = [], {}
    for name, (model, train) in _models(spec, task).items():
        train_model(model, task, train, out_dir=out / name)
        model.eval()
        for snr in spec.snr_db:
            noise = make_noise(NoiseSpec(site="signal", snr_db=snr),
                               seed=derive_seed(spec.seed, "fig13-test", name, snr))
            with torch.no_grad():
                logits = model(x, noise)
            rows.append({"model": name, "snr_db": snr,
                         "accuracy": float((logits.argmax(1) == y).double().mean())})
        spectra_[name] = probe.spectrum(model)
    paths = [write_csv(out / "fig13_accuracy.csv", rows)]
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for name in spectra_:
        rs = [r for r in rows if r["model"] == name]
        xs = [r["snr_db"] if math.isfinite(r["snr_db"]) else 30.0 for r in rs]
        axes[0].plot(xs, [r["accuracy"] for r in rs], "o-", label=name)
        axes[1].hist(spectra_[name].eig.abs().numpy(), bins=50, alpha=0.5,
                     label=f"{name} ρ={spectra_[name].rho:.3g}")
    axes[0].set_xlabel("test signal SNR (dB; 30 = no noise)")
    axes[0].set_ylabel("accuracy")
    axes[0].legend(fontsize=8)
    axes[1].set_xlabel("|λ| of W (DEQ) / W_m…W_1 (FFW)")
    axes[1].set_yscale("log")
    axes[1].legend(fontsize=8)
    paths += save_figure(fig, out / "fig13")
    return paths


def main(argv: list[str] | None = None) -> None:
    """``python -m noisydeq.analysis.fig13 SPEC.toml OUT_DIR``."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        raise SystemExit("usage: python -m noisydeq.analysis.fig13 SPEC.toml OUT_DIR")
    for p in run_fig13(load_toml(Fig13Spec, args[0]), args[1]):
        print(f"wrote {p}")


if __name__ == "__main__":  # pragma: no cover
    main()
