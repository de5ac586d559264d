"""Small models shared by the attack tests (seeded, parameters frozen, eval mode)."""

from __future__ import annotations

import csv

import torch

from noisydeq.config import SolverSpec
from noisydeq.models import DEQ, FFW
from tests.cli_helpers import run_cli


def frozen(model):
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def small_deq(solver: SolverSpec | None = None, width: int = 12, in_features: int = 16,
              classes: int = 3, scale: float = 0.6, dtype=torch.float64, seed: int = 0) -> DEQ:
    """A contractive DEQ (W scaled by ``scale``) solved to 1e-10 by default."""
    torch.manual_seed(seed)
    solver = solver or SolverSpec(name="broyden", max_iter=60, tol=1e-10, stop="abs")
    m = DEQ(in_features, width, classes, solver=solver).to(dtype)
    with torch.no_grad():
        m.cell.W.weight.mul_(scale)
    return frozen(m)


def small_ffw(seed: int = 0, in_features: int = 64, classes: int = 10) -> FFW:
    torch.manual_seed(seed)
    return frozen(FFW(in_features, 32, 3, classes))


def attack_on_device_and_under_noise(family, tmp_path, capsys) -> dict[str, list[dict]]:
    """``noisydeq attack`` of ``family`` (PGD over ε and speckle, 6 samples) on rram at 20 dB
    (white-box through the chip and transferred from the digital twin, EOT 2) and under the
    model's own state noise at 0 dB: each run's rows by name ("rram", "state"), after the
    checks every task shares (the levels, the modes); the run directories are
    ``tmp_path / name``."""
    tables = {}
    for extra, name in ((["--device", "rram", "--snr", "20,inf", "--transfer", "--eot", "2"],
                         "rram"),
                        (["--noise-site", "state", "--snr", "0,inf"], "state")):
        out = tmp_path / name
        code, _, err = run_cli(["attack", "--family", str(family), "--attacks",
                                "pgd-eps,speckle", "--eps", "0,0.2", "--pgd-steps", "2",
                                "--sigma", "0,1", "--samples", "6", "--val-samples", "0",
                                "--threads", "1", "--quiet", "--out", str(out), *extra], capsys)
        assert code in (0, None), err
        with open(out / "results.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        assert {r["snr_db"] for r in rows} == {"20.0" if name == "rram" else "0.0", "inf"}
        if name == "rram":
            assert {r["mode"] for r in rows} == {"white-box", "transfer"}
        tables[name] = rows
    return tables


def ray_table_equals_local(family, tmp_path, capsys) -> bytes:
    """``noisydeq attack`` of ``family`` (PGD over ε and speckle, 6 samples) locally and on
    the Ray cluster: asserts both ``results.csv`` are the same bytes and returns them."""
    argv = ["attack", "--family", str(family), "--attacks", "pgd-eps,speckle", "--eps",
            "0,0.3", "--pgd-steps", "2", "--sigma", "0,1", "--samples", "6", "--val-samples",
            "0", "--threads", "1", "--quiet"]
    code, _, err = run_cli([*argv, "--out", str(tmp_path / "local")], capsys)
    assert code in (0, None), err
    code, _, err = run_cli([*argv, "--out", str(tmp_path / "ray"), "--backend", "ray"], capsys)
    assert code in (0, None), err
    local = (tmp_path / "local" / "results.csv").read_bytes()
    assert (tmp_path / "ray" / "results.csv").read_bytes() == local
    return local
