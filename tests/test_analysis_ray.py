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
    # the driver wrote a cell per (model, ε) and its digital cell; one lost is the one the
    # resume sends to Ray: its envelope row alone (the digital row served), or both rows
    from noisydeq import store

    cells = sorted((tmp_path / "ray" / "cells").iterdir())
    assert len(cells) == 8
    rows = {p: len(store.read_signed_json(p)["rows"]) for p in cells}
    both = [p for p in cells if rows[p] == 2]
    assert len(both) == 4
    both[1].unlink()
    code, stdout, err = run_cli([*base, "--out", str(tmp_path / "ray"), "--backend", "ray"],
                                capsys)
    assert code == 0, err
    assert "cells: 1 computed, 3 served" in stdout and "1 of the computed only in" in stdout
    assert _without_seconds(tmp_path / "ray" / "results.csv") == local
    def head(p):  # model, weights, ε and inputs: what a cell and its digital cell share
        return store.read_signed_json(p)["key"].rsplit("|", 1)[0]

    lost = [both[2], *(p for p in cells if rows[p] == 1 and head(p) == head(both[2]))]
    assert len(lost) == 2
    for p in lost:  # a cell and its digital cell: both rows computed on Ray
        p.unlink()
    code, stdout, err = run_cli([*base, "--out", str(tmp_path / "ray"), "--backend", "ray"],
                                capsys)
    assert code == 0, err
    assert "cells: 1 computed, 3 served" in stdout and "only in" not in stdout
    assert all(p.is_file() for p in lost)
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


def _ray_evaluations(monkeypatch) -> list[str]:
    """The model ids whose rows a Ray study task returns (it evaluated them there) from
    now on, read off what the driver receives (:func:`noisydeq.cluster.finished`)."""
    from noisydeq import cluster

    got: list[str] = []
    real = cluster.finished

    def counting(futures, what):
        for key, (blob, metric, rows) in real(futures, what):
            if rows is not None:
                got.append(key[0])
            yield key, (blob, metric, rows)

    monkeypatch.setattr(cluster, "finished", counting)
    return got


def _other_weights(cell):
    """Rewrite a study cell as if computed on other weights of its model."""
    from noisydeq import store

    data = store.read_signed_json(cell)
    store.write_signed_json(cell, {**data, "weights": "0" * len(data["weights"])})


@pytest.mark.ray
@pytest.mark.slow
def test_study_on_ray_equals_local_and_resumes(ray_cluster, tmp_path, monkeypatch):
    """Ray and local runs of a study with overrides (the model's solver and Jacobian
    regulariser, the study's learning rate): the same tables, checkpoints and evaluations
    — a model trained again into the weights its cell records is not evaluated again on
    Ray either, one trained into other weights is."""
    import shutil

    from noisydeq.runtime import num_threads
    from noisydeq.store import load_tensors
    from noisydeq.studies import run_study
    from noisydeq.studies import runner as study_runner
    from noisydeq.studies.ray_models import run_on_ray
    from tests.test_studies import FAST, tiny

    spec = tiny(train_snr_db=["inf"], shifts=[4, 8], budgets=["train"],
                train={**FAST, "lr": 0.02},
                models={"deq": {"kind": "deq", "cell": "conv1d", "width": 3,
                                "weight_norm": False, "train": {
                                    "solver": {"name": "unroll", "max_iter": 4, "window": 1},
                                    "jac_reg": {"weight": 0.5, "n_samples": 1}}},
                        "ffw": {"kind": "ffw", "cell": "conv1d", "width": 3, "depth": 2,
                                "weight_norm": False}})
    local_out, ray_out = tmp_path / "local", tmp_path / "ray"
    evaluate = study_runner.evaluate_model
    here: list[str] = []

    def counting(spec_, name, model, seed, tsnr, *rest):
        here.append(study_runner.model_id(name, seed, tsnr))
        return evaluate(spec_, name, model, seed, tsnr, *rest)

    def local():
        here.clear()
        monkeypatch.setattr(study_runner, "evaluate_model", counting)
        with num_threads(1):  # as the Ray tasks train
            res = run_study(spec, local_out, plots=False)
        monkeypatch.setattr(study_runner, "evaluate_model", _not_here)  # the workers do
        return res, sorted(here)

    on_ray = _ray_evaluations(monkeypatch)

    def ray():
        on_ray.clear()
        res = run_study(spec, ray_out, plots=False, backend=Backend("ray"), remote=run_on_ray)
        return res, sorted(on_ray)

    def weights(root):
        return {p.parent.name: {k: t.numpy().tobytes() for k, t in load_tensors(p)[0].items()}
                for p in (root / "models").rglob("model.safetensors")}

    def both(edit):
        for root in (local_out, ray_out):
            edit(root)
        (a, here_), (b, there) = local(), ray()
        assert _untimed(b.rows) == _untimed(a.rows) and there == here_
        assert (b.trained, b.loaded, b.served) == (a.trained, a.loaded, a.served)
        assert weights(ray_out) == weights(local_out)  # the driver wrote them
        return b, there

    first, evaluated = both(lambda root: None)
    assert (first.trained, first.loaded) == (2, 0) and len(first.rows) == 2 * 2 + 2 * 2
    assert evaluated == ["deq-s0-tinf", "ffw-s0-tinf"]
    # one model lost (its cell kept), the other's cell lost: the first is trained again
    # into the weights its cell records (served, not evaluated), the other loaded, evaluated
    again, evaluated = both(lambda root: (shutil.rmtree(root / "models" / "deq-s0-tinf"),
                                          (root / "cells" / "ffw-s0-tinf.json").unlink()))
    assert (again.trained, again.loaded) == (1, 1) and evaluated == ["ffw-s0-tinf"]
    assert _untimed(again.rows) == _untimed(first.rows)
    # lost again, its cell computed on other weights: trained again and evaluated
    other, evaluated = both(lambda root: (shutil.rmtree(root / "models" / "deq-s0-tinf"),
                                          _other_weights(root / "cells" / "deq-s0-tinf.json")))
    assert (other.trained, other.loaded) == (1, 0) and evaluated == ["deq-s0-tinf"]
    assert _untimed(other.rows) == _untimed(first.rows)
    # trained into the weights its cell records, yet the driver does not serve it (here:
    # load_cell patched): evaluated by the driver, the same rows
    from noisydeq.studies.rundir import StudyDir

    shutil.rmtree(ray_out / "models" / "deq-s0-tinf")
    load_cell = StudyDir.load_cell
    monkeypatch.setattr(StudyDir, "load_cell", lambda self, key, expect: None if (
        key == "deq-s0-tinf") else load_cell(self, key, expect))
    driver, evaluated = ray()
    monkeypatch.setattr(StudyDir, "load_cell", load_cell)
    assert (driver.trained, evaluated) == (1, [])
    assert _untimed(driver.rows) == _untimed(other.rows)
    # finished: every evaluation served from the checkpoints' digests, no model loaded
    from noisydeq import train

    monkeypatch.setattr(train, "train_model", _not_here)
    served, evaluated = ray()
    assert (served.trained, served.loaded, served.served) == (0, 0, 2) and evaluated == []
    assert _untimed(served.rows) == _untimed(other.rows)


def test_study_bad_backend_is_one_line(tmp_path, capsys):
    out = tmp_path / "s"
    code, _, err = run_cli(["study", "algorithmic-prefix-sums", "--out", str(out),
                            "--address", "auto"], capsys)
    one_line_error(code, err, "--address needs --backend ray")
    assert not out.exists()
