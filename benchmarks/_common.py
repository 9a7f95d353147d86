"""Helpers shared by the benchmark scripts (run as ``python3 benchmarks/NAME.py``)."""

from __future__ import annotations

import os


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def pin_one_core() -> str:
    """Run on a single CPU when the OS allows it (the figures are per core)."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpus[0]})
        return f"pinned to cpu {cpus[0]}"
    except (AttributeError, OSError):
        return "not pinned (no sched_setaffinity)"
