"""Fault-stream benchmark: ``access_tracking_perf_test -p`` with the vCPUs' faults as
fault streams (``kernel/x86/fault_stream.py``) and through the per-page code.

Run as ``python3 benchmarks/bench_fault_stream.py``. Prints plain text; never fails the
process on a figure (speed depends on the machine); exits 1 only if the two ways'
results differ (the scenario's whole JSON apart from wall time and the config echo),
which would be a bug.

Each way runs ``--rounds`` times, alternating, and the best wall time counts. Two
cases: the scenario as it is (the vCPUs populate while an aging thread runs passes),
and the vCPUs alone (no aging thread: the part streams change). For each it prints
the wall time, the driver steps (the same both ways: a stream yields the per-page
code's operations) and the wall time per step, and the ratio per page / stream.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from _common import pin_one_core  # noqa: E402

from youngsim.perf import access_tracking as A  # noqa: E402
from youngsim.perf.harness import (ConfigError, parse_size, prepare_run,  # noqa: E402
                                   spawn_vcpus)
from youngsim.sim.timed import TimedDriver  # noqa: E402


def run(cfg: A.Config, ager: bool) -> tuple[float, int, dict[str, Any]]:
    """The scenario's threads on the timed driver: wall time, steps, the JSON data."""
    if ager:
        t = time.perf_counter()
        r = A.run_access_tracking(cfg)
        wall = time.perf_counter() - t
        d = dict(r.data)
        d.pop("config")
        d.pop("wall_s", None)
        return wall, r.timed.steps, d
    cm, m = prepare_run(cfg, None)
    h = A._Harness(m, cfg)
    roles = spawn_vcpus(m, h.vcpu, cfg.vcpus)
    roles[m.spawn(h.main, name="main")] = "aging"
    t = time.perf_counter()
    res = TimedDriver(m, cm, roles=roles).run()
    wall = time.perf_counter() - t
    d = res.to_dict()
    d.pop("wall_s", None)
    d["samples"] = {k: list(v) for k, v in h.sys.samples.items()}
    return wall, res.steps, d


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--design", default="upstream")
    p.add_argument("--mmu", default="x86-tdp")
    p.add_argument("-v", "--vcpus", type=int, default=112)
    p.add_argument("-b", "--bytes", default="2M", help="per vCPU (default 2M)")
    p.add_argument("--rounds", type=int, default=2)
    a = p.parse_args(argv)
    try:
        cfg = A.Config(design=a.design, mmu=a.mmu, vcpus=a.vcpus,
                       bytes_per_vcpu=parse_size(a.bytes), benchmark=True)
        cfg.validate()
    except (ConfigError, ValueError) as e:
        print(f"bench_fault_stream: {e}", file=sys.stderr)
        return 2
    if a.rounds < 1:
        print("bench_fault_stream: --rounds must be at least 1", file=sys.stderr)
        return 2
    print(f"bench_fault_stream: access_tracking_perf_test -p, {a.design} on {a.mmu}, "
          f"{a.vcpus} vCPUs x {a.bytes} ({cfg.total_pages} pages); {pin_one_core()}")
    run(A.Config(**{**cfg.__dict__, "vcpus": 2, "bytes_per_vcpu": 32768}), True)  # warm
    bad = False
    for ager, name in ((True, "scenario (vCPUs and the aging thread)"),
                       (False, "vCPUs alone (no aging thread)")):
        best: dict[bool, float] = {}
        steps: dict[bool, int] = {}
        data: dict[bool, dict[str, Any]] = {}
        for _ in range(a.rounds):
            for streams in (True, False):
                wall, n, d = run(A.Config(**{**cfg.__dict__, "fault_streams": streams}),
                                 ager)
                best[streams] = min(best.get(streams, wall), wall)
                steps[streams], data[streams] = n, d
        same = data[True] == data[False]
        bad |= not same
        print(f"{name}:")
        for streams in (True, False):
            print(f"  {'streams ' if streams else 'per page'}: {best[streams]:7.2f} s, "
                  f"{steps[streams]} steps, {1e6 * best[streams] / steps[streams]:.2f} us "
                  f"a step")
        print(f"  per page / streams: {best[False] / best[True]:.2f}x; results "
              f"{'identical' if same else 'DIFFER'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
