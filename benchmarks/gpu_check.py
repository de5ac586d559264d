"""The GPU check's two measurements (``benchmarks/gpu_check.sh`` runs them after the tests).

``agreement``: the default family (hidden 128, quick preset, depths 1 and 3) is trained
once on the CPU, then one small sweep (digits, rram, SNR 0/10/20/inf, 2 chips, DEQ + FFW) is
evaluated with the same models on the CPU and on ``--device``: the rows must name the same
cells and every accuracy must agree within 1 point (random draws are counter-based and equal
on both devices, so only float rounding differs).

``throughput``: the default family's members on mnist10k at FFW depths 1, 3, …, 13 (DEQ
widths matched, App. E.1), freshly initialised, evaluated on the mnist10k test samples at 4
SNR levels of signal noise (a sweep's batched forward): test samples × levels per second on
the CPU (a ``--cpu-samples`` subset, the CPU being slow) and on ``--device`` (all), next to
the device's float32 matmul peak (best 4096³ ``torch.mm``).

``--device cpu`` runs both on the CPU (a dry run of the script on a machine without a GPU).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch


def matmul_peak(dev: torch.device, n: int = 4096, repeat: int = 5) -> float:
    """Best float32 GFLOP/s of an n³ ``torch.mm`` on ``dev``."""
    a, b = torch.rand(n, n, device=dev), torch.rand(n, n, device=dev)
    best = math.inf
    for i in range(repeat + 1):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        torch.mm(a, b)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if i:
            best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def agreement(dev: str, work: Path) -> dict:
    """CPU vs ``dev`` rows of one small sweep with the same (CPU-trained) models."""
    from noisydeq.config import SweepSpec, build
    from noisydeq.families import family_spec_for_sweep, train_family
    from noisydeq.sweep import SweepModel, run_sweep
    from noisydeq.tasks import load_task

    base = dict(task="digits", device="rram", snr_db="0,10,20,inf", depths=[1, 3], chips=2)
    cpu_spec = build(SweepSpec, base)
    task = load_task("digits", seed=0)
    fam = train_family(family_spec_for_sweep(cpu_spec, 0, math.inf), task,
                       cache_dir=work / "cache")
    models = [SweepModel(m.model, m.kind, m.depth, m.width, m.params)
              for m in sorted(fam.members, key=lambda m: (m.depth, m.kind))]
    rows = {}
    for name, spec in (("cpu", cpu_spec), (dev, build(SweepSpec, {**base, "torch_device": dev}))):
        res = run_sweep(spec, work / name, task=task, models=models, progress=False,
                        plots=False, threads="1", jobs=1)
        rows[name] = {(r["model_id"], r["chip"], r["snr_db"]): r["value"] for r in res.rows}
        for sm in models:
            sm.model.to("cpu")
    same = rows["cpu"].keys() == rows[dev].keys()
    worst = max(abs(rows["cpu"][k] - rows[dev][k]) for k in rows["cpu"]) if same else math.nan
    return {"rows": len(rows["cpu"]), "same_rows": same, "max_accuracy_diff": worst,
            "ok": bool(same and worst <= 0.01)}


def throughput(dev: torch.device, data_dir: str, cpu_samples: int,
               samples: int | None = None) -> list[dict]:
    """Test samples × levels per second of each default-family member on mnist10k."""
    from noisydeq.families import build_member, member_spec
    from noisydeq.noise import Noise, NoiseStream
    from noisydeq.specs.base import build
    from noisydeq.specs.family import FamilySpec
    from noisydeq.specs.noise import NoiseSpec
    from noisydeq.tasks import load_task

    task = load_task("mnist10k", data_dir=data_dir, seed=0)
    fspec = build(FamilySpec, {"task": "mnist10k", "depths": list(range(1, 14, 2))})
    levels = [0.0, 10.0, 20.0, 30.0]
    out = []
    for depth in fspec.depths:
        for kind in fspec.kinds:
            model = build_member(member_spec(fspec, task, kind, depth), 0).eval()
            row = {"kind": kind, "depth": depth, "width": int(model.width)}
            n_dev = len(task.x_test) if samples is None else min(samples, len(task.x_test))
            for where, n in (("cpu", cpu_samples), (dev.type, n_dev)):
                d = torch.device("cpu") if where == "cpu" else dev
                x = task.x_test[:n].to(d).repeat(len(levels), 1)
                snr = torch.tensor(levels, device=d).repeat_interleave(n)
                stream = NoiseStream.from_seed(0, d, samples=torch.arange(len(x), device=d))
                noise = Noise(NoiseSpec(site="signal"), stream, snr_db=snr)
                model.to(d)
                with torch.no_grad():
                    model(x[:64], None)  # warm-up
                    if d.type == "cuda":
                        torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    model(x, noise)
                    if d.type == "cuda":
                        torch.cuda.synchronize()
                row[f"{where}_samples_per_s"] = len(x) / (time.perf_counter() - t0)
            out.append(row)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--data-dir", required=True, help="directory with the MNIST IDX files")
    ap.add_argument("--cpu-samples", type=int, default=1000,
                    help="test samples timed on the CPU (default 1000)")
    ap.add_argument("--samples", type=int, default=None,
                    help="test samples timed on --device (default: all)")
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: error: CUDA is not available on this machine", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        agree = agreement(args.device, Path(tmp))
    report = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "agreement": agree,
        "matmul_peak_gflops": {"cpu": matmul_peak(torch.device("cpu"), 2048),
                               dev.type: matmul_peak(dev)},
        "throughput": throughput(dev, args.data_dir, args.cpu_samples, args.samples),
    }
    print(json.dumps(report, indent=2))
    print(f"{'member':<12} {'cpu samples/s':>14} {dev.type + ' samples/s':>14}")
    for r in report["throughput"]:
        print(f"{r['kind']} d{r['depth']:<2} w{r['width']:<4} {r['cpu_samples_per_s']:>14.0f} "
              f"{r[f'{dev.type}_samples_per_s']:>14.0f}")
    print(f"matmul peak (GFLOP/s): cpu {report['matmul_peak_gflops']['cpu']:.0f}, "
          f"{dev.type} {report['matmul_peak_gflops'][dev.type]:.0f}")
    print("agreement:", "ok" if agree["ok"] else "FAILED", json.dumps(agree))
    return 0 if agree["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
