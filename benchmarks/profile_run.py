"""Run a module as ``python -m`` would, under cProfile with a CPU-time clock.

``python -m benchmarks.profile_run DUMP MODULE [ARGS ...]`` — like ``python -m cProfile -o
DUMP -m MODULE ARGS``, but timed with :func:`time.process_time` (CPU time of the process)
instead of the wall clock, so a run preempted on a shared machine is not charged for the
time it waited. Used for the profiles of whole-process rows (:mod:`benchmarks.profiles`).
"""

from __future__ import annotations

import cProfile
import runpy
import sys
import time


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 2:
        print("usage: python -m benchmarks.profile_run DUMP MODULE [ARGS ...]", file=sys.stderr)
        return 2
    dump, module, rest = argv[0], argv[1], argv[2:]
    sys.argv = [module, *rest]
    prof = cProfile.Profile(time.process_time)
    code = 0
    prof.enable()
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as e:  # the CLI exits through sys.exit / click
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        prof.disable()
        prof.dump_stats(dump)
    return code


if __name__ == "__main__":
    sys.exit(main())
