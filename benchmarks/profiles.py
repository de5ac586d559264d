"""Where a benchmark row's time goes: a cProfile of one run, self time by category.

A row that misses its target carries, in ``Row.extra["profile"]`` (and the peer's in
``"profile_peer"``), the breakdown of extra, untimed runs (the timed runs are not profiled).
Two tools: :func:`op_profile` (``torch.profiler``: self time of each torch operation by
kind, :data:`OP_GROUPS`) for the small, operation-bound rows (device layers, solvers, the
training step), and cProfile with a CPU-time clock (:func:`profile_call` in-process,
:mod:`benchmarks.profile_run` for a whole process) for the sweeps, where Python matters.
In a cProfile breakdown every function's self time goes to one category:

* a matmul builtin (``addmm``, ``mm``, ``bmm``, ``matmul``, ``linear``, …) → ``GEMM``, wherever
  it is called from — the floor the sweep rows measure;
* any other builtin (a torch operation) → the category of the Python function that called it
  (cProfile records self time per caller), so a ``mul`` in ``noisydeq/rng.py`` counts as a
  noise draw and a ``tanh`` in ``noisydeq/models`` as the model's;
* a Python function → the category of its own file (:data:`CATEGORIES`, first match).

(Operators — ``a @ b``, ``a * b`` — are not calls cProfile sees: their time stays in the
calling function's self time, so a ``@`` matmul counts for its function's category.) The
fractions are of the profiled run's total. cProfile adds a fixed cost to every Python call
(~1 µs), so it inflates Python-heavy categories; on a shared machine fractions are more
robust than the absolute seconds, which the load scales. :func:`format_profile` is the
short line RESULTS.md prints next to each missed row (``make bench`` regenerates it).
"""

from __future__ import annotations

import cProfile
import pstats
import re
import time
from collections.abc import Callable
from typing import Any

GEMM = "GEMM"
#: (category, path fragments) in priority order; a path matches if it contains a fragment
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("imports", ("<frozen importlib", "importlib/", "site-packages/_distutils_hack",
                 "<frozen zipimport")),
    ("noise draws", ("noisydeq/rng.py", "noisydeq/noise.py", "noisydeq/solvers/draws.py")),
    ("calibration", ("noisydeq/hardware/calibration", "noisydeq/hardware/in_network.py",
                     "noisydeq/hardware/modes.py")),
    ("chip programming", ("noisydeq/hardware/rram_program.py",)),
    ("device read", ("noisydeq/hardware/", "noisydeq/scalars.py")),
    ("solver loop", ("noisydeq/solvers/",)),
    ("model", ("noisydeq/models/",)),
    ("figures", ("noisydeq/plots.py", "noisydeq/figures.py", "matplotlib/", "PIL/")),
    ("sweep driver", ("noisydeq/sweep/", "noisydeq/sweep_jobs", "noisydeq/store.py",
                      "noisydeq/results.py")),
    ("noisydeq other", ("noisydeq/",)),
    ("torchdeq", ("torchdeq/",)),
    ("aihwkit", ("aihwkit/",)),
    ("autograd", ("torch/autograd/", "torch/_tensor.py")),
    ("optimiser", ("torch/optim/",)),
    ("torch nn", ("torch/nn/",)),
    ("torch other", ("torch/",)),
    ("peer script", ("benchmarks/peers/",)),
)
#: inclusive phases a cProfile breakdown also reports (label, file suffix, function): the
#: share of the run spent inside each (phases nest: the reads are part of calibration and of
#: the evaluation); absent ones are left out
PHASES: tuple[tuple[str, str, str], ...] = (
    ("imports", "<frozen importlib._bootstrap>", "_find_and_load"),
    ("training", "noisydeq/train.py", "train_model"),
    ("calibration", "noisydeq/hardware/calibration_store.py", "calibrate_levels"),
    ("evaluation", "noisydeq/sweep/evaluate.py", "evaluate_cell"),
    ("DEQ solves", "noisydeq/solvers/loop.py", "run_loop"),
    ("RRAM reads", "noisydeq/hardware/rram_io.py", "io_forward"),
    ("noise draws", "noisydeq/noise.py", "randn"),
    ("chip programming", "noisydeq/hardware/rram.py", "_chip"),
    ("figures", "noisydeq/plots.py", "plot_sweep"),
    ("peer: aihwkit forward", "aihwkit/nn/modules/base.py", "forward"),
    ("peer: programming", "benchmarks/peers/aihwkit_sweep.py", "program"),
)
_GEMM_NAMES = re.compile(r"(?:\.|'|\b)(addmm_?|mm|bmm|baddbmm|matmul|linear|mv|addmv)[>']")


def category(path: str, name: str = "") -> str:
    """The category of a Python function (its file ``path``; ``<module>`` code: imports)."""
    if name == "<module>":
        return "imports"
    p = path.replace("\\", "/")
    for cat, frags in CATEGORIES:
        if any(f in p for f in frags):
            return cat
    if "/lib/python3" in p and "site-packages" not in p:
        return "stdlib (json, copy, traceback, …)"
    return "other"


def is_gemm(builtin_name: str) -> bool:
    """Whether a cProfile builtin entry (``<built-in method torch.addmm>``) is a matmul."""
    return bool(_GEMM_NAMES.search(builtin_name))


def breakdown(stats: pstats.Stats, top: int = 5) -> dict[str, Any]:
    """Self time by category (seconds, descending) and the ``top`` self-time functions."""
    cats: dict[str, float] = {}
    funcs: list[tuple[float, str]] = []
    for (path, _line, name), (_cc, _nc, tt, _ct, callers) in stats.stats.items():  # type: ignore[attr-defined]
        if path == "~":  # a builtin: GEMM, else its time goes to each caller's category
            if name.startswith("<method 'disable' of '_lsprof"):
                continue
            label = name.removeprefix("<built-in method ").removeprefix("<method ").rstrip(">")
            if is_gemm(name):
                cats[GEMM] = cats.get(GEMM, 0.0) + tt
            elif callers:
                for (cpath, _cl, cname), cstat in callers.items():
                    c = category(cpath, cname)
                    cats[c] = cats.get(c, 0.0) + cstat[2]
            else:
                cats["other"] = cats.get("other", 0.0) + tt
        else:
            c = category(path, name)
            cats[c] = cats.get(c, 0.0) + tt
            label = f"{path.rsplit('/', 1)[-1]}:{name}"
        funcs.append((tt, label))
    total = sum(cats.values())
    order = sorted(cats.items(), key=lambda kv: -kv[1])
    funcs.sort(reverse=True)
    phases = []
    for label, suffix, func in PHASES:
        ct = sum(v[3] for (path, _l, name), v in stats.stats.items()  # type: ignore[attr-defined]
                 if name == func and path.replace("\\", "/").endswith(suffix))
        if ct > 0:
            phases.append([label, ct, ct / total if total else 0.0])
    return {"total_s": total,
            "categories": [[k, v, v / total if total else 0.0] for k, v in order],
            "top": [[label, t, t / total if total else 0.0] for t, label in funcs[:top]],
            "phases": phases}


def profile_call(fn: Callable[[], Any], repeat: int = 1, top: int = 5) -> dict[str, Any]:
    """Run ``fn`` ``repeat`` times under cProfile timed by this thread's CPU time
    (:func:`time.thread_time`: a preempted run is not charged for waiting; with one torch
    thread every operation runs on this thread); its :func:`breakdown`."""
    prof = cProfile.Profile(time.thread_time)
    prof.enable()
    try:
        for _ in range(repeat):
            fn()
    finally:
        prof.disable()
    out = breakdown(pstats.Stats(prof), top=top)
    out["repeat"] = repeat
    out["tool"] = "cProfile, thread CPU time"
    return out


def profile_file(path: str, top: int = 5) -> dict[str, Any]:
    """The :func:`breakdown` of a ``python -m benchmarks.profile_run path MODULE …`` dump
    (process CPU time)."""
    out = breakdown(pstats.Stats(path), top=top)
    out["tool"] = "cProfile, process CPU time"
    return out


def format_profile(prof: dict[str, Any], n: int = 6, min_frac: float = 0.02) -> str:
    """``GEMM 31 %, device read 28 %, …`` — the ``n`` largest categories ≥ ``min_frac``."""
    parts = [f"{name} {frac * 100:.0f} %" for name, _s, frac in prof["categories"][:n]
             if frac >= min_frac]
    tool = prof.get("tool", "cProfile")
    text = ", ".join(parts)
    phases = [f"{name} {frac * 100:.0f} %" for name, _s, frac in prof.get("phases", [])
              if frac >= 0.005]
    if phases:
        text += "; inclusive: " + ", ".join(phases)
    total = prof["total_s"]
    size = f"{total * 1e3:.2f} ms" if total < 1 else f"{total:.2f} s"
    return text + f" (of {size}, {tool})"


#: (op group, aten names) for :func:`op_profile`; ops not listed count as ``other ops``
OP_GROUPS: tuple[tuple[str, frozenset[str]], ...] = (
    (GEMM, frozenset({"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::addmv",
                      "aten::mv", "aten::dot", "aten::addbmm"})),
    ("integer ops (counter-based RNG)", frozenset({
        "aten::bitwise_xor", "aten::bitwise_xor_", "aten::bitwise_and", "aten::bitwise_and_",
        "aten::bitwise_or", "aten::bitwise_or_", "aten::bitwise_right_shift",
        "aten::bitwise_right_shift_", "aten::bitwise_left_shift", "aten::bitwise_left_shift_",
        "aten::__rshift__", "aten::__lshift__", "aten::__irshift__", "aten::__ilshift__",
        "aten::__xor__", "aten::__ixor__", "aten::__and__", "aten::__iand__", "aten::arange"})),
    ("transcendental (log, sin, cos, tanh, sqrt, exp)", frozenset({
        "aten::log", "aten::log_", "aten::sin", "aten::sin_", "aten::cos", "aten::cos_",
        "aten::tanh", "aten::tanh_", "aten::sqrt", "aten::sqrt_", "aten::exp", "aten::exp_",
        "aten::rsqrt", "aten::pow", "aten::log1p", "aten::tanh_backward"})),
    ("torch RNG (randn, normal)", frozenset({"aten::randn", "aten::normal_", "aten::uniform_",
                                             "aten::rand"})),
    ("reductions (max, sum, norm)", frozenset({
        "aten::amax", "aten::amin", "aten::max", "aten::min", "aten::sum", "aten::mean",
        "aten::norm", "aten::linalg_vector_norm", "aten::any", "aten::all", "aten::aminmax",
        "aten::count_nonzero", "aten::median", "aten::std", "aten::var"})),
    ("rounding, clamp, compare, where", frozenset({
        "aten::round", "aten::round_", "aten::clamp", "aten::clamp_", "aten::clamp_min",
        "aten::clamp_max", "aten::where", "aten::gt", "aten::lt", "aten::ge", "aten::le",
        "aten::eq", "aten::ne", "aten::abs", "aten::abs_", "aten::sign", "aten::floor",
        "aten::trunc", "aten::masked_fill_", "aten::logical_and", "aten::logical_or",
        "aten::logical_not"})),
    ("elementwise arithmetic", frozenset({
        "aten::mul", "aten::mul_", "aten::add", "aten::add_", "aten::sub", "aten::sub_",
        "aten::div", "aten::div_", "aten::addcmul", "aten::addcmul_", "aten::addcdiv_",
        "aten::neg", "aten::reciprocal", "aten::lerp_", "aten::rsub", "aten::square"})),
    ("copies, indexing, allocation", frozenset({
        "aten::copy_", "aten::to", "aten::_to_copy", "aten::clone", "aten::cat",
        "aten::stack", "aten::index", "aten::index_select", "aten::index_put_",
        "aten::index_copy_", "aten::gather", "aten::scatter_", "aten::empty",
        "aten::empty_like", "aten::zeros", "aten::zeros_like", "aten::ones_like", "aten::fill_",
        "aten::zero_", "aten::contiguous", "aten::resize_", "aten::masked_select",
        "aten::nonzero", "aten::empty_strided", "aten::full", "aten::select",
        "aten::slice", "aten::view", "aten::reshape", "aten::t", "aten::transpose",
        "aten::expand", "aten::as_strided", "aten::unsqueeze", "aten::squeeze",
        "aten::narrow", "aten::detach", "aten::item", "aten::_local_scalar_dense",
        "aten::lift_fresh", "aten::alias", "aten::unbind", "aten::split"})),
    ("small linear solves", frozenset({"aten::linalg_solve_ex", "aten::linalg_solve",
                                       "aten::_linalg_solve_ex", "aten::linalg_lu_factor_ex",
                                       "aten::linalg_lu_solve", "aten::_linalg_check_errors"})),
)


def op_group(name: str) -> str:
    """The :data:`OP_GROUPS` group of an aten operation (``other ops`` if unlisted)."""
    for group, names in OP_GROUPS:
        if name in names:
            return group
    if name.startswith("autograd::") or "Backward" in name:
        return "autograd engine"
    if name.startswith("Optimizer.") or name.startswith("aten::_foreach"):
        return "optimiser"
    return "other ops"


def op_profile(fn: Callable[[], Any], repeat: int = 5, top: int = 5) -> dict[str, Any]:
    """Run ``fn`` ``repeat`` times, each under its own ``torch.profiler`` session (CPU, no
    stacks): self CPU time of the torch operations by :data:`OP_GROUPS`, and ``outside torch
    ops`` = the run's wall time minus every operation's self time (Python, the interpreter,
    dispatch before an op starts, the profiler's own cost). Each group's time is its
    **least over the runs**, per call of ``fn`` — as the rows' times are best of N: a run
    preempted on a shared machine inflates whichever operation was running, and the
    profiler clocks wall time. Same result shape as :func:`breakdown`."""

    from torch.profiler import ProfilerActivity, profile

    per_run: list[dict[str, float]] = []
    per_op: list[dict[str, float]] = []
    for _ in range(max(1, repeat)):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            t0 = time.perf_counter()
            fn()
            wall = time.perf_counter() - t0
        groups: dict[str, float] = {}
        ops: dict[str, float] = {}
        for evt in prof.key_averages():
            sec = evt.self_cpu_time_total / 1e6
            if sec <= 0:
                continue
            g = op_group(evt.key)
            groups[g] = groups.get(g, 0.0) + sec
            ops[evt.key] = ops.get(evt.key, 0.0) + sec
        groups["outside torch ops"] = max(wall - sum(groups.values()), 0.0)
        per_run.append(groups)
        per_op.append(ops)

    def least(runs: list[dict[str, float]]) -> dict[str, float]:
        keys = {k for r in runs for k in r}
        return {k: min(r.get(k, 0.0) for r in runs) for k in keys}

    groups, ops = least(per_run), least(per_op)
    total = sum(groups.values())
    order = sorted(groups.items(), key=lambda kv: -kv[1])
    top_ops = sorted(ops.items(), key=lambda kv: -kv[1])[:top]
    return {"total_s": total, "tool": f"torch.profiler, least of {repeat} runs per kind",
            "repeat": repeat,
            "categories": [[k, v, v / total if total else 0.0] for k, v in order],
            "top": [[k, v, v / total if total else 0.0] for k, v in top_ops]}
