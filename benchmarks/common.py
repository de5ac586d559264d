"""Timing helpers, result rows and the ratio table shared by every benchmark module.

A benchmark compares *our* code with a peer (torchdeq, aihwkit, ``nn.Linear``) or a bound
(the machine's measured matmul peak) **in the same run**: only the ratio counts, absolute
times vary between runs and with the load of the machine. Each timing is the median (and
best) of ``repeat`` runs after ``warmup`` untimed ones.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch


@dataclass
class Timing:
    """Wall times (s) of repeated runs of one callable."""

    times: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def best(self) -> float:
        return min(self.times)


def timeit(fn: Callable[[], Any], repeat: int = 5, warmup: int = 1) -> Timing:
    """Run ``fn`` ``warmup`` times untimed, then ``repeat`` times timed (perf_counter)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return Timing(times)


def timeit_pair(
    ours: Callable[[], Any], peer: Callable[[], Any], repeat: int = 5, warmup: int = 1
) -> tuple[Timing, Timing]:
    """Time two callables *interleaved* (ours, peer, ours, ...) so load changes hit both."""
    for _ in range(warmup):
        ours()
        peer()
    a: list[float] = []
    b: list[float] = []
    for _ in range(repeat):
        for fn, out in ((ours, a), (peer, b)):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return Timing(a), Timing(b)


def pair_spread(ours: list[float], peer: list[float]) -> str:
    """``pairs 0.91 [0.85, 1.03] (n=15)``: the median and range of the per-pair ratios
    ours/peer of interleaved runs (item i of each list ran back to back)."""
    r = [a / b for a, b in zip(ours, peer, strict=True) if b > 0]
    if not r:
        return "pairs — (n=0)"
    return f"pairs {statistics.median(r):.2f} [{min(r):.2f}, {max(r):.2f}] (n={len(r)})"


@dataclass
class Row:
    """One line of the ratio table.

    ``ratio`` = ours / peer for times (lower is better) unless ``higher_is_better`` (then it
    is a speed-up or a fraction of a bound and must reach ``target``). With ``target_low``
    the target is the range [``target_low``, ``target``] (e.g. a fitted scaling exponent).
    ``check`` records the correctness check of the fast path against the reference path
    (``ok`` True/False).
    """

    area: str
    name: str
    ours: float
    peer: float
    ratio: float
    target: float | None = None
    higher_is_better: bool = False
    unit: str = "s"
    check: str = ""
    ok: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    target_low: float | None = None

    @property
    def met(self) -> bool | None:
        if self.target is None or not math.isfinite(self.ratio):
            return None
        if self.target_low is not None:
            return self.target_low <= self.ratio <= self.target
        return self.ratio >= self.target if self.higher_is_better else self.ratio <= self.target

    @property
    def target_text(self) -> str:
        """``≤ 1.5``, ``≥ 4`` or ``1.6–2.2`` (a range); '' without a target."""
        if self.target is None:
            return ""
        if self.target_low is not None:
            return f"{self.target_low:g}–{self.target:g}"
        return ("≥ " if self.higher_is_better else "≤ ") + f"{self.target:g}"

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["met"] = self.met
        return d


def ratio(ours: float, peer: float) -> float:
    """ours / peer (nan when the peer is missing or zero)."""
    if not (math.isfinite(ours) and math.isfinite(peer)) or peer == 0:
        return math.nan
    return ours / peer


def machine_info() -> dict[str, Any]:
    """CPU model, core count, torch threads and versions (for RESULTS.md and the JSON)."""
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        load = os.getloadavg()
    except OSError:
        load = (math.nan,) * 3
    info: dict[str, Any] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_avg_start": [round(v, 2) for v in load],
    }
    from importlib.metadata import PackageNotFoundError, version

    for mod in ("torchdeq", "aihwkit"):
        try:
            info[mod] = version(mod)
        except PackageNotFoundError:  # pragma: no cover - peer missing
            info[mod] = None
    return info


def _fmt(v: float, unit: str) -> str:
    if not math.isfinite(v):
        return "—"
    if unit == "s":
        return f"{v * 1e3:.2f} ms" if v < 1 else f"{v:.2f} s"
    return f"{v:.3g} {unit}".rstrip()


def format_table(rows: list[Row], markdown: bool = False) -> str:
    """The ratio table as aligned text (or GitHub markdown)."""
    head = ["area", "measure", "ours", "peer/bound", "ratio", "target", "met", "check"]
    lines = []
    for r in rows:
        tgt = r.target_text
        met = {True: "yes", False: "NO", None: ""}[r.met]
        chk = r.check + ("" if r.ok is None else (" ✓" if r.ok else " ✗"))
        rat = f"{r.ratio:.2f}" if math.isfinite(r.ratio) else "—"
        lines.append([r.area, r.name, _fmt(r.ours, r.unit), _fmt(r.peer, r.unit), rat, tgt, met,
                      chk])
    if markdown:
        out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        out += ["| " + " | ".join(c.replace("|", "/") for c in line) + " |" for line in lines]
        return "\n".join(out)
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h)
              for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*head), fmt.format(*("-" * w for w in widths))]
                     + [fmt.format(*line) for line in lines])
