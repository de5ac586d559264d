"""Small monotone DEQs and explicit ReLU nets for the certify tests (float64, seeded)."""

from __future__ import annotations

import torch

from noisydeq.models import build_model


def small_model(kind: str = "mondeq", param: str = "ibp", *, cell: str = "mlp", width: int = 12,
                in_features: int = 16, out: int = 5, m: float = 0.1, depth: int = 1,
                seed: int = 0, batch_norm: bool = True, warm: bool = True):
    """A seeded float64 model in eval mode; ``warm`` runs a few training-mode batches so BN's
    running statistics are not the identity."""
    torch.manual_seed(seed)
    spec = {"kind": kind, "in_features": in_features, "out_features": out, "width": width,
            "depth": depth, "cell": cell, "matched": False,
            "monotone": {"param": param, "m": m, "batch_norm": batch_norm}}
    model = build_model(spec).double()
    if param == "lben" and kind == "mondeq":
        with torch.no_grad():
            model.cell.beta.normal_(0.0, 2.0)  # a non-trivial Γ
    if warm:
        model.train()
        with torch.no_grad():
            for _ in range(3):
                model(torch.rand(40, in_features, dtype=torch.float64))
    return model.eval()


def dense_from_op(op, n: int) -> torch.Tensor:
    """The matrix of a linear map on (B, ...) states of ``n`` units (applied to the basis)."""
    eye = torch.eye(n, dtype=torch.float64)
    return op(eye).reshape(n, n).T


def run_certify(capsys, *argv):
    """(exit code, stdout, stderr) of ``noisydeq certify ARGV`` in process."""
    from tests.cli_helpers import run_cli

    return run_cli(["certify", *argv], capsys)


def run_certify_stopped(monkeypatch, capsys, *argv):
    """(exit code, stdout, stderr, [the key of the one cell saved]) of ``noisydeq certify
    ARGV`` stopped by a Ctrl-C between its first and its second cell."""
    from noisydeq.analysis.certify_run import CertifyDir

    real = CertifyDir.save_cell
    written: list[str] = []

    def stop_after_one(self, key, rows, layers=()):
        if written:
            raise KeyboardInterrupt  # Ctrl-C between the first and the second cell
        written.append(key)
        real(self, key, rows, layers)

    with monkeypatch.context() as m:
        m.setattr(CertifyDir, "save_cell", stop_after_one)
        return (*run_certify(capsys, *argv), written)
