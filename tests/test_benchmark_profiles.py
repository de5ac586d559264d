"""The benchmark profiles (benchmarks/profiles.py): where a missed row's time goes.

No timing is asserted: only that the time is attributed to the right categories and the
shares add up, for both tools (torch.profiler by operation kind, cProfile by file)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from benchmarks.common import Row
from benchmarks.profiles import (
    GEMM,
    category,
    format_profile,
    is_gemm,
    op_group,
    op_profile,
    profile_call,
    profile_file,
)

ROOT = Path(__file__).resolve().parents[1]


def test_categories_by_file_and_gemm_builtins() -> None:
    assert category("/x/noisydeq/rng.py", "randn") == "noise draws"
    assert category("/x/noisydeq/hardware/rram_io.py", "io_forward") == "device read"
    assert category("/x/noisydeq/hardware/rram_program.py", "program") == "chip programming"
    assert category("/x/noisydeq/hardware/in_network.py", "f") == "calibration"
    assert category("/x/noisydeq/solvers/loop.py", "solve") == "solver loop"
    assert category("/x/site-packages/torchdeq/solver/anderson.py", "f") == "torchdeq"
    assert category("/x/noisydeq/solvers/loop.py", "<module>") == "imports"
    assert category("/somewhere/else.py", "f") == "other"
    assert category("/usr/lib/python3.11/json/encoder.py", "encode").startswith("stdlib")
    assert is_gemm("<built-in method torch.addmm>")
    assert is_gemm("<built-in method torch._C._nn.linear>")
    assert is_gemm("<method 'mm' of 'torch._C.TensorBase' objects>")
    assert not is_gemm("<built-in method torch.tanh>")
    assert not is_gemm("<method 'mul_' of 'torch._C.TensorBase' objects>")
    assert op_group("aten::addmm") == GEMM and op_group("aten::bitwise_xor") != GEMM
    assert op_group("aten::not_an_op") == "other ops"


def _work() -> None:
    a, b = torch.rand(96, 96), torch.rand(96, 96)
    for _ in range(20):
        torch.mm(a, b)
        torch.tanh(a)


def test_cprofile_breakdown_finds_the_gemms_and_sums_to_one() -> None:
    prof = profile_call(_work, repeat=2)
    cats = {name: frac for name, _s, frac in prof["categories"]}
    assert GEMM in cats and cats[GEMM] > 0
    assert abs(sum(cats.values()) - 1.0) < 1e-9
    assert prof["top"] and prof["total_s"] > 0
    assert "GEMM" in format_profile(prof, min_frac=0.0)


def test_op_profile_groups_operations_and_sums_to_one() -> None:
    prof = op_profile(_work, repeat=2)
    cats = {name: frac for name, _s, frac in prof["categories"]}
    assert cats.get(GEMM, 0) > 0
    assert "transcendental (log, sin, cos, tanh, sqrt, exp)" in cats
    assert "outside torch ops" in cats
    assert abs(sum(cats.values()) - 1.0) < 1e-9
    assert any(name == "aten::mm" for name, _s, _f in prof["top"])


def test_profile_run_dumps_a_cli_process(tmp_path) -> None:
    dump = tmp_path / "help.pstats"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.profile_run", str(dump),
                           "noisydeq.cli", "--help"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "sweep" in proc.stdout
    prof = profile_file(str(dump))
    cats = {name for name, _s, _f in prof["categories"]}
    assert "imports" in cats and prof["tool"] == "cProfile, process CPU time"


def test_missed_rows_with_profiles_get_the_generated_section() -> None:
    from benchmarks.run import _markdown

    prof = profile_call(_work)
    missed = Row("devices", "x vs y", 2.0, 1.0, 2.0, 1.0, extra={"profile": prof})
    met = Row("devices", "met row", 1.0, 1.0, 1.0, 1.5, extra={"profile": prof})
    info = {"date": "d", "cores": 2, "cpu": "c", "torch": "t", "torch_threads": 1,
            "python": "p", "load_avg_start": [0], "load_avg_end": [0]}
    text = _markdown([missed, met], info, 1.0, quick=True)
    section = text.split("## Where the time goes", 1)[1].split("## Solver details", 1)[0]
    line = next(ln for ln in section.splitlines() if ln.startswith("| devices: x vs y |"))
    assert "| 2.00 (≤ 1) |" in line and "GEMM" in line
    assert "met row" not in section
