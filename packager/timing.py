"""Phase timings for profiling the catalog path: with PACKAGER_PROFILE=1 in the environment, each phase
prints its wall time and the CPU time of this process and of the children it waited for, to stderr
(`PACKAGER_PROFILE=1 scripts/bench.py plan` shows them under each step). Otherwise a phase costs nothing."""

from __future__ import annotations

import os
import resource
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

ENABLED = bool(os.environ.get("PACKAGER_PROFILE"))


def _cpu() -> tuple[float, float]:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, kids.ru_utime + kids.ru_stime


@contextmanager
def phase(name: str) -> Iterator[None]:
    if not ENABLED:
        yield
        return
    wall, (own, kids) = time.perf_counter(), _cpu()
    try:
        yield
    finally:
        own2, kids2 = _cpu()
        print(
            f"  phase {name:<34} {time.perf_counter() - wall:8.2f} s wall {own2 - own:8.2f} s cpu "
            f"{kids2 - kids:8.2f} s children",
            file=sys.stderr,
            flush=True,
        )
