"""``noisydeq attack`` and ``noisydeq certify`` with ``--backend ray`` on the session's local
Ray cluster (127.0.0.1, tests/conftest.py): the same tables as this process computes with
one torch thread, resumable attack cells written once by the driver, bad input one line."""

from __future__ import annotations

import csv
import io
import socket

import pytest
import torch

from noisydeq.attacks.runner import Runner
from noisydeq.cluster import Backend
from tests.analysis.analysis_family import tiny_sweep
from tests.cli_helpers import one_line_error, run_cli
from tests.sweep_helpers import count_cell_saves

ATTACK = ["--attacks", "pgd-eps,speckle", "--eps", "0,0.3", "--pgd-steps", "3",
          "--sigma", "0,1", "--samples", "16", "--val-samples", "8", "--estimators",
          "exact,phantom:k=3,lam=0.5", "--defences", "final,early", "--noise-site", "signal",
          "--snr", "0,inf", "--quiet"]


def _not_here(*_args, **_kwargs):
    raise AssertionError("computed in the driver, not on Ray")


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    """A tiny sweep's DEQ and FFW (digits, depth 1, one epoch) and its model cache."""
    with tiny_sweep(tmp_path_factory.mktemp("ray-attack"), "--depths", "1", "--snr", "inf",
                    "--chips", "1", "--device", "ideal", "--noise-site", "signal",
                    "--jobs", "1") as run_dir:
        yield run_dir


@pytest.mark.ray
@pytest.mark.slow
def test_attack_on_ray_equals_local_and_resumes(ray_cluster, family, tmp_path, capsys,
                                                monkeypatch):
    local, ray_out = tmp_path / "local", tmp_path / "ray"
    code, _, err = run_cli(["attack", "--family", str(family), *ATTACK, "--out", str(local)],
                           capsys)
    assert code == 0, err
    saved = count_cell_saves(monkeypatch)
    monkeypatch.setattr(Runner, "compute", _not_here)  # the workers compute
    argv = ["attack", "--family", str(family), *ATTACK, "--out", str(ray_out),
            "--backend", "ray"]
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    # DEQ: 2 levels x (2 estimators x 2 eps + 2 sigma); FFW: 2 levels x (2 + 2); + the
    # DEQ's 2 early-state cells: every one written once, by this process
    assert len(saved) == len(set(saved)) == 2 * 6 + 2 * 4 + 2
    assert "20 computed" in out
    for name in ("results.csv", "whitebox.csv"):
        assert (ray_out / name).read_bytes() == (local / name).read_bytes()
    # a driver that stopped half way: the same command computes the missing cells only
    cells = sorted(p for p in (ray_out / "cells").iterdir())
    for p in cells[::3]:
        p.unlink()
    saved.clear()
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    assert len(saved) == len(set(saved)) == len(cells[::3])
    assert (ray_out / "results.csv").read_bytes() == (local / "results.csv").read_bytes()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_attack_bad_backend_is_one_line_and_writes_nothing(family, tmp_path, capsys,
                                                           monkeypatch):
    out = tmp_path / "a"
    code, _, err = run_cli(["attack", "--family", str(family), *ATTACK, "--out", str(out),
                            "--address", "auto"], capsys)
    one_line_error(code, err, "--address needs --backend ray")
    ray = pytest.importorskip("ray")
    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # as in a fresh process
    code, _, err = run_cli(["attack", "--family", str(family), *ATTACK, "--out", str(out),
                            "--backend", "ray", "--address", f"127.0.0.1:{_free_port()}"],
                           capsys)
    one_line_error(code, err, "no Ray head node")
    assert not out.exists()


@pytest.fixture(scope="module")
def certifiable(tmp_path_factory):
    """A monDEQ and a ReLU FFW on digits (width 16, one epoch): two members to certify."""
    from noisydeq.config import FamilySpec, build
    from noisydeq.families import train_family

    root = tmp_path_factory.mktemp("ray-certify")
    torch.manual_seed(0)
    spec = build(FamilySpec, {"task": "digits", "depths": [1], "kinds": ["mondeq", "ffw_relu"],
                              "hidden": 16, "train": {"epochs": 1, "batch_size": 64}})
    train_family(spec, cache_dir=root / "fam")
    return root / "fam"


def _without_seconds(path) -> list[list[str]]:
    rows = list(csv.reader(io.StringIO(path.read_text())))
    drop = rows[0].index("seconds")  # wall time: the one column that may differ
    return [r[:drop] + r[drop + 1:] for r in rows]


@pytest.mark.ray
@pytest.mark.slow
def test_certify_on_ray_equals_local(ray_cluster, certifiable, tmp_path, capsys,
                                     monkeypatch):
    from noisydeq.analysis import certify_ray

    base = ["certify", str(certifiable), "--eps", "0.002,0.02", "--n-test", "40",
            "--device", "rram", "--k", "0.5", "--pgd-steps", "5", "--quiet"]
    code, _, err = run_cli([*base, "--out", str(tmp_path / "local")], capsys)
    assert code == 0, err
    monkeypatch.setattr(certify_ray, "certify_member", _not_here)  # the workers certify
    code, _, err = run_cli([*base, "--out", str(tmp_path / "ray"), "--backend", "ray"], capsys)
    assert code == 0, err
    local = _without_seconds(tmp_path / "local" / "results.csv")
    assert len(local) == 1 + 2 * 2 * 2  # header + models x envelopes x radii
    assert _without_seconds(tmp_path / "ray" / "results.csv") == local


def test_certify_bad_backend_is_one_line(certifiable, tmp_path, capsys, monkeypatch):
    out = tmp_path / "c"
    code, _, err = run_cli(["certify", str(certifiable), "--out", str(out), "--address",
                            "auto"], capsys)
    one_line_error(code, err, "--address needs --backend ray")
    pytest.importorskip("ray")
    code, _, err = run_cli(["certify", "certify-fig2", "--out", str(out), "--backend",
                            "ray"], capsys)
    one_line_error(code, err, "run it without --backend ray")
    assert not out.exists()


TIMING = ("train_seconds", "eval_seconds")


def _untimed(rows):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


@pytest.mark.ray
@pytest.mark.slow
def test_study_on_ray_equals_local_and_resumes(ray_cluster, tmp_path, monkeypatch):
    from noisydeq.store import load_tensors
    from noisydeq.studies import run_study
    from noisydeq.studies import runner as study_runner
    from noisydeq.studies.ray_models import run_on_ray
    from tests.test_studies import tiny

    spec = tiny(train_snr_db=["inf"], shifts=[4, 8], budgets=["train"])
    local = run_study(spec, tmp_path / "local", plots=False)
    monkeypatch.setattr(study_runner, "evaluate_model", _not_here)  # the workers evaluate
    ray_out = tmp_path / "ray"
    res = run_study(spec, ray_out, plots=False, backend=Backend("ray"), remote=run_on_ray)
    assert (res.trained, res.loaded) == (2, 0)
    assert _untimed(res.rows) == _untimed(local.rows) and len(res.rows) == 2 * 2 + 2 * 2

    def weights(root):
        return {p.parent.name: {k: t.numpy().tobytes() for k, t in load_tensors(p)[0].items()}
                for p in (root / "models").rglob("model.safetensors")}

    assert weights(ray_out) == weights(tmp_path / "local")  # the driver wrote them
    # one model lost, the other's cell lost: the rerun trains one, evaluates both
    import shutil

    shutil.rmtree(ray_out / "models" / "deq-s0-tinf")
    (ray_out / "cells" / "ffw-s0-tinf.json").unlink()
    again = run_study(spec, ray_out, plots=False, backend=Backend("ray"), remote=run_on_ray)
    assert (again.trained, again.loaded) == (1, 1)
    assert _untimed(again.rows) == _untimed(local.rows)
    assert weights(ray_out) == weights(tmp_path / "local")
    # finished: every evaluation served from the checkpoints' digests, no model loaded
    from noisydeq import train

    monkeypatch.setattr(train, "train_model", _not_here)
    served = run_study(spec, ray_out, plots=False, backend=Backend("ray"), remote=run_on_ray)
    assert (served.trained, served.loaded, served.served) == (0, 0, 2)
    assert served.rows == again.rows


def test_study_bad_backend_is_one_line(tmp_path, capsys):
    out = tmp_path / "s"
    code, _, err = run_cli(["study", "algorithmic-prefix-sums", "--out", str(out),
                            "--address", "auto"], capsys)
    one_line_error(code, err, "--address needs --backend ray")
    assert not out.exists()
