"""Checker benchmark: how much DPOR saves, and how fast the driver steps the model.

Run as ``python benchmarks/bench_checker.py``. Prints plain text, one figure per line,
with the targets and a PASS/FAIL word next to the measured figures. It never fails the
process on a missed target (speed depends on the machine): read the words.

1. Schedules explored by naive enumeration and by DPOR with sleep sets, both full
   explorations (``stop_on_violation=False``), per built-in example, with the ratio, and
   the total over the 3-thread examples. Target: >= 10x fewer schedules.
2. Raw driver speed: model steps per second when running schedules without exploration
   overhead (random walks over every example, each run built afresh, as replays and the
   randomised searches do), and the default non-preemptive schedule for reference.
   Target: >= 50,000 model steps/s on one core.
3. DPOR's own steps per second (same process, same run), for comparison.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time

from _common import pin_one_core, verdict
from youngsim.check.examples import EXAMPLES
from youngsim.sim.explore import random_walk, run_schedule, systematic

REDUCTION_TARGET = 10.0
SPEED_TARGET = 50_000.0




def initial_threads(name: str) -> int:
    return len(EXAMPLES[name].build().threads)


def reduction_table() -> tuple[float, float]:
    print("== schedules explored: naive enumeration vs DPOR with sleep sets "
          "(full exploration, stop_on_violation=False)")
    tot_naive = tot_dpor = 0
    dpor_steps = 0
    dpor_time = 0.0
    for name in sorted(EXAMPLES):
        p = EXAMPLES[name]
        n = systematic(p, reduction=False, stop_on_violation=False)
        d = systematic(p, reduction=True, stop_on_violation=False)
        dpor_steps += d.steps
        dpor_time += d.elapsed
        nthreads = initial_threads(name)
        ratio = n.executions / max(d.executions, 1)
        print(f"{name:<16} threads={nthreads}  naive={n.executions:<6} dpor={d.executions:<5}"
              f" ratio={ratio:6.1f}x  (dpor verdict: {d.status},"
              f" naive verdict: {n.status})")
        if nthreads == 3:
            tot_naive += n.executions
            tot_dpor += d.executions
    total_ratio = tot_naive / max(tot_dpor, 1)
    print(f"total over 3-thread examples: naive={tot_naive} dpor={tot_dpor} "
          f"ratio={total_ratio:.1f}x  target >= {REDUCTION_TARGET:.0f}x  "
          f"{verdict(total_ratio >= REDUCTION_TARGET)}")
    return total_ratio, dpor_steps / max(dpor_time, 1e-9)


def driver_speed(seconds: float) -> tuple[float, float]:
    print("== raw driver speed (single process, no exploration bookkeeping)")
    names = sorted(EXAMPLES)
    # random walks: a fresh build and a random runnable thread at every step
    steps = 0
    runs = 0
    t0 = time.perf_counter()
    seed = 0
    while time.perf_counter() - t0 < seconds:
        for name in names:
            r = random_walk(EXAMPLES[name], runs=20, seed=seed)
            steps += r.steps
            runs += r.executions
        seed += 1
    rw_elapsed = time.perf_counter() - t0
    rw_rate = steps / rw_elapsed
    print(f"random-walk replay: {steps} steps in {runs} runs, {rw_elapsed:.2f} s = "
          f"{rw_rate:,.0f} model steps/s  target >= {SPEED_TARGET:,.0f}/s on one core  "
          f"{verdict(rw_rate >= SPEED_TARGET)}")
    # the default non-preemptive schedule (run_schedule with an empty list)
    steps = 0
    runs = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for name in names:
            m, _, _ = run_schedule(EXAMPLES[name], [])
            steps += m.nsteps
            runs += 1
    rs_elapsed = time.perf_counter() - t0
    rs_rate = steps / rs_elapsed
    print(f"run_schedule (default schedule): {steps} steps in {runs} runs, "
          f"{rs_elapsed:.2f} s = {rs_rate:,.0f} model steps/s  "
          f"target >= {SPEED_TARGET:,.0f}/s on one core  {verdict(rs_rate >= SPEED_TARGET)}")
    return rw_rate, rs_rate


def dpor_speed(seconds: float) -> float:
    print("== DPOR speed (same process)")
    steps = 0
    elapsed = 0.0
    execs = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for name in sorted(EXAMPLES):
            r = systematic(EXAMPLES[name], reduction=True, stop_on_violation=False)
            steps += r.steps
            execs += r.executions
            elapsed += r.elapsed
    rate = steps / max(elapsed, 1e-9)
    print(f"DPOR with sleep sets: {steps} steps in {execs} executions, {elapsed:.2f} s = "
          f"{rate:,.0f} model steps/s  (reference: driver target "
          f"{SPEED_TARGET:,.0f}/s; {verdict(rate >= SPEED_TARGET)} against it)")
    return rate


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0,
                    help="wall time per speed measurement (default 2)")
    args = ap.parse_args(argv)
    print(f"youngsim checker benchmark: python {platform.python_version()} on "
          f"{platform.machine()}, {pin_one_core()}")
    reduction_table()
    driver_speed(args.seconds)
    dpor_speed(args.seconds)
    return 0  # targets are reported, never enforced


if __name__ == "__main__":
    sys.exit(main())
