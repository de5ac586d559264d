"""Smoke test of the benchmark suite: every benchmark runs at a tiny size and its fast path
gives the reference path's answers. No timing is asserted (timings are not tests)."""

from __future__ import annotations

import copy
import csv
import json
import math

import pytest
import torch

from benchmarks.common import Row, format_table, timeit_pair
from tests.sweep_helpers import toy_models, toy_spec, toy_task


def test_solvers_agree_with_torchdeq_and_reference() -> None:
    from benchmarks.solvers import bench_solvers

    rows = bench_solvers(cells=("fig4",), snrs=(math.inf, 20.0), sizes={"fig4": (16, 8)},
                         repeat=1, max_iter=60, tol=1e-4)
    assert len(rows) == 8
    for r in rows:
        assert r.extra["steps_ours"] >= 1 and r.extra["steps_torchdeq"] >= 1
        assert math.isfinite(r.ratio)
    # noiseless: ours meets the tolerance and lands on the float64 fixed point (z0*)
    for r in rows:
        if "noiseless" in r.name and "stochastic" not in r.name:
            assert r.ok, r.check
            assert r.extra["quality_ours"]["res_max"] < 2e-4


def test_devices_rows_and_checks() -> None:
    from benchmarks.devices import bench_devices

    rows = bench_devices(width=24, batch=16, repeat=1)
    names = [r.name for r in rows]
    assert len(rows) == 5 and any("aihwkit" in n for n in names)
    by = {n.split()[0]: r for n, r in zip(names, rows, strict=True) if "aihwkit" not in n}
    assert by["ideal"].ok  # deployed ideal layer == nn.Linear
    assert abs(by["snr"].extra["measured_snr_db"] - 20.0) < 1.5


def test_sweep_batched_equals_per_point() -> None:
    from benchmarks.sweep import FlopCounter, bench_sweep, gemm_replay

    task = toy_task()
    rows = bench_sweep(toy_spec(chips=1, snr_db="0,10,inf"), task=task, models=toy_models(task),
                       peak=1.0)
    assert rows[0].ok, "batched table differs from the per-point table"
    assert rows[1].extra["flop"] > 0
    floor = {r.name.split(" (")[0]: r for r in rows[2:]}
    sweep_floor = floor["batched sweep vs its GEMMs alone"]
    assert sweep_floor.extra["matmul_calls"] > 0 and math.isfinite(sweep_floor.ratio)
    deq_rows = [r for n, r in floor.items() if n.startswith("DEQ forward")]
    if any(m.kind == "deq" for m in toy_models(task)):
        assert len(deq_rows) == 1 and deq_rows[0].extra["matmul_calls"] > 0
    lin = torch.nn.Linear(5, 3)
    with FlopCounter() as fc:
        lin(torch.zeros(4, 5))
        lin(torch.zeros(2, 3, 5))
    assert fc.flops == 2 * 4 * 5 * 3 + 2 * 6 * 5 * 3
    assert fc.shapes == {(4, 5, 3): 1, (6, 5, 3): 1}
    times = gemm_replay(fc.shapes, repeat=3)
    assert len(times) == 3 and all(t > 0 for t in times)


def test_training_gradients_match_torchdeq() -> None:
    from benchmarks.training import bench_training

    (row,) = bench_training(width=16, batch=8, steps=1, repeat=1)
    assert row.ok, row.check
    assert row.extra["grad_rel_diff"] < 1e-2


def test_main_job_cold_and_warm_tables_equal(tmp_path, monkeypatch) -> None:
    from benchmarks import main_job
    from benchmarks.main_job import bench_main_job

    monkeypatch.setitem(main_job.TARGETS, "warm", 1e-9)  # a missed warm row gets a profile
    args = ["sweep", "--device", "snr", "--snr", "0,10", "--depths", "1", "--epochs", "0",
            "--chips", "1", "--set", "max_test_samples=16"]
    rows, cache = bench_main_job(tmp_path, args, timeout=300)
    assert [r.extra["returncode"] for r in rows] == [0, 0], [r.check for r in rows]
    assert all(r.ok for r in rows)
    assert cache.is_dir()
    prof = rows[1].extra["profile"]  # one more warm run, one process, under cProfile
    cats = {name for name, _s, _f in prof["categories"]}
    assert "imports" in cats and prof["total_s"] > 0 and "--jobs 1" in prof["command"]


def test_help_row_runs_the_cli() -> None:
    from benchmarks.main_job import bench_help

    (row,) = bench_help(repeat=1)
    assert row.ok, row.check


def test_table_and_json_output(tmp_path) -> None:
    from benchmarks.run import main

    rows = [Row("a", "x", 1.0, 2.0, 0.5, 1.0), Row("b", "y", 3.0, 1.0, 3.0, 5.0, True)]
    text = format_table(rows)
    assert "0.50" in text and "NO" in text and "yes" in text
    t_a, t_b = timeit_pair(lambda: None, lambda: None, repeat=2, warmup=0)
    assert len(t_a.times) == 2 and t_b.best >= 0
    out = tmp_path / "r.json"
    md = tmp_path / "R.md"
    assert main(["--only", "training", "--quick", "--json", str(out), "--markdown", str(md)]) == 0
    data = json.loads(out.read_text())
    assert data["rows"][0]["area"] == "training" and "cpu" in data["machine"]
    assert "| training |" in md.read_text()
    assert main(["--only", "nonsense"]) == 2


def test_partial_runs_leave_the_committed_results_alone(tmp_path, monkeypatch) -> None:
    import benchmarks.run as run

    monkeypatch.setattr(run, "HERE", tmp_path)
    assert run.main(["--only", "training", "--quick"]) == 0
    assert (tmp_path / "partial" / "RESULTS.md").exists()
    assert (tmp_path / "partial" / "results.json").exists()
    assert not (tmp_path / "RESULTS.md").exists() and not (tmp_path / "results.json").exists()


def test_attack_rows_check_pgd_against_torchattacks_and_warm_against_cold() -> None:
    from benchmarks.attacks import bench_attacks

    rows = bench_attacks(quick=True)
    assert len(rows) == 5
    assert all(r.ok for r in rows), [r.check for r in rows]
    assert rows[2].extra["f_evals_warm"] < rows[2].extra["f_evals_cold"]
    assert rows[4].name.startswith("PGD-10 digits DEQ w=")
    assert rows[4].extra["f_evals_warm"] < rows[4].extra["f_evals_cold"]


def test_attack_warm_rows_on_a_trained_family(tmp_path, capsys) -> None:
    """``python -m benchmarks.attacks --family DIR``: one row per DEQ and estimator of a
    trained family, with its own test inputs."""
    from benchmarks.attacks import bench_pgd_deq_warm_family, main
    from noisydeq.families import train_family
    from noisydeq.specs.base import build
    from noisydeq.specs.family import FamilySpec

    spec = build(FamilySpec, {"task": "digits", "depths": [1], "kinds": ["deq", "ffw"],
                              "hidden": 8, "train": {"epochs": 1}})
    train_family(spec, cache_dir=tmp_path)
    entries = sorted((tmp_path / "models").iterdir())
    deq = next(e for e in entries if '"deq"' in (e / "model.json").read_text())
    rows = bench_pgd_deq_warm_family(str(deq), estimators=("exact", "phantom"), batch=8,
                                     repeat=1)
    assert [r.name.split()[-5] for r in rows] == ["exact:", "phantom:"]
    # named as the docs name DEQs ("mnist10k DEQ w=128 seed 0"), not "digits-trained d1 w8 s0"
    assert all(r.name.startswith("PGD-10 digits DEQ w=8 seed 0 b8 ") for r in rows), rows
    assert all(r.extra["f_evals_warm"] < r.extra["f_evals_cold"] for r in rows)
    main(["--family", str(deq), "--estimators", "exact", "--batch", "8", "--repeat", "1",
          "--btol", "1e-3"])
    out = capsys.readouterr().out
    assert "load average" in out and "exact(btol=0.001): warm vs cold" in out
    # --bsolver: the exact rows once per backward method (the synthetic rows here)
    main(["--synthetic", "--estimators", "exact,phantom", "--batch", "8", "--repeat", "1",
          "--bsolver", "fixed-point,gmres"])
    out = capsys.readouterr().out
    names = [line.split(" | ")[1] for line in out.splitlines() if line.startswith("| attacks")]
    assert names == ["PGD-10 DEQ 784-222 b8 exact(fixed-point): warm vs cold solves",
                     "PGD-10 DEQ 784-222 b8 phantom: warm vs cold solves",
                     "PGD-10 DEQ 784-222 b8 exact(gmres): warm vs cold solves"]


def test_rng_rows_and_checks() -> None:
    from benchmarks.rng import bench_rng

    rows = bench_rng(shapes=((32, 24), (64, 33)), repeat=1, threads=(1,))
    assert len(rows) == 3 and all(math.isfinite(r.ratio) for r in rows)
    assert all(r.ok for r in rows), [r.check for r in rows]


def test_peer_rows_run_both_sides_and_match_accuracies(tmp_path) -> None:
    pytest.importorskip("aihwkit")
    from benchmarks.peer_sweep import bench_peer

    grid = {"snr": "10,20", "chips": 1, "depths": "1", "epochs": 1}
    rows = bench_peer(tmp_path, grid, repeat=1)
    assert len(rows) == 6, [r.check for r in rows]
    for r in rows:  # accuracies of 1-epoch models on one chip need not match within 0.03
        assert all(r.extra["warm_equals"].values()), r.check
        assert r.ours > 0 and r.peer > 0 and math.isfinite(r.ratio)
        acc = r.extra["accuracy"]
        assert {c["snr_db"] for c in acc} == {10.0, 20.0}
        assert all(0 <= c["sweep"] <= 1 and 0 <= c["peer"] <= 1 for c in acc)


def test_hwaware_aihwkit_peer_learns_at_the_digital_rate() -> None:
    """The aihwkit peer steps its ω = 1-normalised tile weights at lr / max|W|, so its loss
    curve follows the digital FFW's; torch's Adam at the bare lr on the same converted model
    (the peer before 2026-12-07) learns ~10× slower, which this comparison would catch."""
    pytest.importorskip("aihwkit")
    from benchmarks.hwaware import _data, _ffw, _Stepper, aihwkit_model, aihwkit_stepper, loss_after

    data, model = _data(32, 4), _ffw()
    torch.manual_seed(1)
    digital = _Stepper(copy.deepcopy(model), data, device_streams=False)
    d0, d = loss_after(digital, 1), loss_after(digital, 40)
    torch.manual_seed(1)
    peer = loss_after(aihwkit_stepper(model, data), 40)
    torch.manual_seed(1)
    bare = loss_after(_Stepper(aihwkit_model(model), data, device_streams=False), 40)
    assert d < d0 - 0.5, (d0, d)
    assert abs(peer - d) < 0.15 * (d0 - d), (d0, d, peer)
    assert bare - d > 0.5 * (d0 - d), (d0, d, bare)


def test_hwaware_rows_run_at_a_tiny_size() -> None:
    pytest.importorskip("aihwkit")
    from benchmarks.hwaware import bench_hwaware

    rows = bench_hwaware(steps=2, repeat=1, batch=16)
    peer_rows = [r for r in rows if "aihwkit" in r.name]
    assert len(rows) == 11 and len(peer_rows) == 3
    assert all(r.ok and math.isfinite(r.ratio) for r in rows), [r.check for r in rows]
    assert all("digital" in r.check and "aihwkit" in r.check for r in peer_rows)


def test_a_run_keeps_the_hand_written_sections_of_results_md(tmp_path):
    """`make bench` rewrites the generated table and keeps what follows the marker."""
    from benchmarks.run import KEEP_MARKER, _kept_sections

    report = tmp_path / "RESULTS.md"
    assert _kept_sections(str(report)) == ""  # no report yet
    report.write_text("# old table\n\n" + KEEP_MARKER + "\n\n## By hand\n\nkept\n")
    assert _kept_sections(str(report)) == "\n" + KEEP_MARKER + "\n\n## By hand\n\nkept\n"
    report.write_text("# a report without the marker\n")
    assert _kept_sections(str(report)) == ""


def test_scaling_fit_recovers_known_exponents() -> None:
    from benchmarks.scaling import fit_exponent, scaling_row

    xs = [128, 256, 512, 1024]
    p, se = fit_exponent(xs, [3e-9 * w**2 for w in xs])
    assert p == pytest.approx(2.0, abs=1e-12) and se == pytest.approx(0.0, abs=1e-9)
    assert fit_exponent([16, 64, 256], [5e-4 * b for b in (16, 64, 256)])[0] == pytest.approx(1.0)
    # fixed cost plus linear work: sub-linear, and the fit's error is no longer zero
    p, se = fit_exponent([1, 2, 4, 8, 16], [1.0 + 0.1 * k for k in (1, 2, 4, 8, 16)])
    assert 0 < p < 1 and se > 0
    with pytest.raises(ValueError):
        fit_exponent([4, 4], [1.0, 2.0])
    with pytest.raises(ValueError):
        fit_exponent([1, 2], [0.0, 1.0])
    # a row: value = exponent of the medians, bound = expected, target a range
    times = {w: [2e-9 * w**2 * f for f in (1.0, 1.1, 0.9)] for w in xs}
    row = scaling_row("t vs w", "w", times, 2.0, (1.6, 2.2))
    assert row.ratio == pytest.approx(2.0) and row.peer == 2.0 and row.met
    assert row.target_text == "1.6–2.2" and "w1024:" in row.check
    times = {w: [1e-6 * w] for w in xs}  # linear where w² is expected: outside the range
    assert scaling_row("t vs w", "w", times, 2.0, (1.6, 2.2)).met is False
    assert "1.6–2.2" in format_table([row], markdown=True)


def test_scaling_rows_run_at_tiny_sizes() -> None:
    from benchmarks.scaling import SOLVE_ITERS, _deq, bench_scaling

    rows = bench_scaling(widths=(16, 32), batches=(8, 16), levels=(1, 2), width=32, batch=8,
                         repeat=1, level_rows=24, level_width=12)
    assert len(rows) == 7 and all(r.area == "scaling" for r in rows)
    assert all(math.isfinite(r.ratio) and r.extra["median_seconds"] for r in rows)
    assert [r.peer for r in rows] == [2.0] * 3 + [1.0] * 3 + [1.0]
    assert rows[-1].ok, rows[-1].check  # batched levels == the per-point loop
    model = _deq(8, 12)  # the solve runs the fixed iteration count (tolerance never met)
    with torch.no_grad():
        model(torch.rand(5, 8))
    assert int(model.last_solution.steps.max()) == SOLVE_ITERS
    assert int(model.last_solution.steps.min()) == SOLVE_ITERS


def test_hwa_science_runs_at_a_tiny_size(tmp_path) -> None:
    """The issue-16 science check: three ways of training from one init, each evaluated on
    the rram sweep, at native SNR and on aihwkit; the aihwkit model's weights come back in
    model units (an untrained conversion round-trips the init)."""
    pytest.importorskip("aihwkit")
    from benchmarks.hwa_science import digital_copy, main
    from benchmarks.hwaware import _ffw, aihwkit_model

    model = _ffw()
    back = digital_copy(model, aihwkit_model(model))
    for (name, p), (_n, q) in zip(model.named_parameters(), back.named_parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-6), name
    assert main(["--seeds", "0", "--chips", "1", "--snr", "0,inf", "--epochs", "1",
                 "--aihwkit-std", "0.02,match", "--out", str(tmp_path)]) == 0
    got = json.loads((tmp_path / "hwa_science.json").read_text())
    rows = got["rows"]
    ways = {r["way"] for r in rows}
    assert ways == {"digital", "ours rram@native", "aihwkit HWA", "aihwkit HWA σ@10 dB"}, ways
    assert len(rows) == 4 * 4 and all(0 <= r["accuracy"] <= 1 for r in rows)
    matched = got["facts"]["aihwkit_matched_std"]["0-ffw"]
    assert set(matched) == {"proj.U", "layers.0.W", "layers.1.W", "layers.2.W", "head"}
    assert all(0.02 < v["std_output_snr"] < 1 for v in matched.values()), matched
    digital_clean = [r["accuracy"] for r in rows if r["snr"] == math.inf]
    assert all(a > 0.5 for a in digital_clean), digital_clean  # all three learned


def test_hwa_science_matched_std_gives_the_target_snr() -> None:
    """The σ matched to an SNR, injected as aihwkit's ADD_NORMAL (σ·max|W|·ξ) into one
    layer, gives that total SNR on the layer's inputs, measured by sampling."""
    from benchmarks.hwa_science import matched_std
    from benchmarks.hwaware import _ffw

    torch.manual_seed(0)
    model, x = _ffw().eval(), torch.rand(128, 64)
    std = matched_std(model, x, 7.0)
    for name in ("proj.U", "layers.1.W", "head"):
        lin = model.get_submodule(name)
        seen: list[torch.Tensor] = []
        hook = lin.register_forward_hook(lambda _m, inp, _o, seen=seen: seen.append(inp[0]))
        with torch.no_grad():
            model(x)
        hook.remove()
        w = lin.weight.detach()
        noise = std[name]["std_output_snr"] * w.abs().max() * torch.randn(100, *w.shape)
        signal = 100 * float((seen[0] @ w.T).square().sum())
        error = float(torch.einsum("bi,koi->kbo", seen[0], noise).square().sum())
        assert abs(10 * math.log10(signal / error) - 7.0) < 0.2, name


def test_hwa_science_ablation_arms(tmp_path) -> None:
    """``--arms``: each ablation way of training is its own model (its own id, trained
    differently from the same init), named by its arm, evaluated on the same cells; an
    unknown arm is refused in one line before anything runs."""
    from benchmarks.hwa_science import main, way_name

    assert way_name("rram", 10.0) == "ours rram@10 dB"  # the existing ways keep their names
    assert way_name("rram", None) == "ours rram@native"
    assert way_name(None, None) == "digital"
    assert way_name(None, None, 10.0) == "signal noise@10 dB"
    assert way_name("arm-static", 10.0) == "ours rram@10 dB static"
    assert way_name("snr", 10.0) == "ours snr@10 dB"
    assert way_name("arm-snr-hidden", 10.0) == "ours snr@10 dB snr-hidden"
    with pytest.raises(SystemExit) as err:
        main(["--arms", "static,bogus", "--out", str(tmp_path / "no")])
    assert err.value.code == 2 and not (tmp_path / "no").exists()
    assert main(["--seeds", "0", "--chips", "1", "--snr", "0", "--epochs", "1",
                 "--train-device-snr", "10", "--aihwkit-std", "none",
                 "--arms", "static,dynamic,snr,snr-hidden,signal",
                 "--out", str(tmp_path)]) == 0
    got = json.loads((tmp_path / "hwa_science.json").read_text())
    rows = got["rows"]
    ways = list(dict.fromkeys(r["way"] for r in rows))
    assert ways == ["digital", "ours rram@10 dB", "ours rram@10 dB static",
                    "ours rram@10 dB dynamic", "ours snr@10 dB", "ours snr@10 dB snr-hidden",
                    "signal noise@10 dB"], ways
    assert len(rows) == 7 * 3  # 0 dB, native and aihwkit's inference, one chip each
    assert set(got["facts"]["cpu_s_arm_training"]) == {"static", "dynamic", "snr",
                                                       "snr-hidden", "signal"}
    at_native = {r["way"]: r["accuracy"] for r in rows if r["snr"] == "native"}
    assert len(set(at_native.values())) > 1, at_native  # not one model under seven names
    # the sweep directory's table labels each model with the noise mode it trained in (it
    # said physical for every arm): the static and dynamic arms theirs, the others the
    # reference's physical, the digitally trained models none
    with open(tmp_path / "sweep" / "results.csv", newline="") as fh:
        modes = {(r["train_device"], r["train_snr_db"]): r["train_noise_mode"]
                 for r in csv.DictReader(fh)}
    assert modes == {("none", "inf"): "none", ("rram", "inf"): "physical",
                     ("arm-static", "inf"): "static", ("arm-dynamic", "inf"): "dynamic",
                     ("snr", "inf"): "physical", ("arm-snr-hidden", "inf"): "physical",
                     ("none", "10.0"): "none"}, modes
