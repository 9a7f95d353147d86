"""Timed-driver benchmark: youngsim's event rate against SimPy's on the same model.

Run as ``python benchmarks/bench_timed.py`` (needs ``pip install simpy==4.1.2``; SimPy is
not a dependency of youngsim). Prints plain text with the target and a PASS/FAIL word; it
never fails the process on a missed target (speed depends on the machine): read the words.

The model, identical on both sides: N processes, each looping forever

    acquire the lock; hold it for H ns; release it; think for T ns

with one FIFO lock (SimPy: ``Resource(capacity=1)``; youngsim: a ``SpinLock`` driven by
the timed driver, with ``spin_lock; nop(cost=hold); spin_unlock; nop(cost=think)``).
For the side-by-side rate the youngsim cost model gives the lock operations and the lock
handoff zero cost, like SimPy's resource, so both simulate the same timeline: the
benchmark prints the lock cycles each completed in the same virtual horizon, which must
agree. youngsim still does all its per-operation work (cost lookup, cache-line
contention bookkeeping, lock statistics, CPU-time categories, parking and waking).

Figures, all measured in this one process run, alternating the sides and keeping each
side's best of ``--repeat`` runs (default 15):

- events/s, each side counting its own events: SimPy's processed events (counted in a
  separate instrumented run: request, timeout, release, timeout per cycle, plus process
  start-up) and youngsim's executed operations (lock, [acquire], nop, unlock, nop);
- lock cycles/s: simulated work per wall second, the like-for-like figure (a contended
  youngsim cycle has one more step than SimPy's: the queued waiter's acquire).

The verdict (target: youngsim >= 2x SimPy) is taken on the lower of the two ratios.

For information it also prints the *executor ceiling*: ``Machine.step`` alone replaying the
schedule the driver chose, with no driver work at all, which bounds what any driver on
this executor can reach; and the same model under the default cost model.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from typing import Any

from _common import pin_one_core, verdict
from youngsim.sim import (Machine, SpinLock, _native, lock_cycles, nop, spin_lock,
                          spin_unlock)
from youngsim.sim.costmodel import load_cost_model
from youngsim.sim.timed import TimedDriver

TARGET = 2.0




# --- SimPy side -------------------------------------------------------------------------

def simpy_model(simpy: Any, n: int, hold: int, think: int) -> tuple[Any, list[int]]:
    env = simpy.Environment()
    res = simpy.Resource(env, capacity=1)
    cycles = [0]

    def proc(env: Any) -> Any:
        while True:
            with res.request() as req:
                yield req
                yield env.timeout(hold)
            cycles[0] += 1
            yield env.timeout(think)

    for _ in range(n):
        env.process(proc(env))
    return env, cycles


def simpy_run(simpy: Any, n: int, hold: int, think: int, horizon: int
              ) -> tuple[float, int]:
    env, cycles = simpy_model(simpy, n, hold, think)
    t0 = time.perf_counter()
    env.run(until=horizon)
    return time.perf_counter() - t0, cycles[0]


def simpy_events(simpy: Any, n: int, hold: int, think: int, horizon: int) -> int:
    """Events SimPy processes in the horizon (an instrumented, untimed run)."""
    env, _ = simpy_model(simpy, n, hold, think)
    count = 0
    while env.peek() < horizon:
        env.step()
        count += 1
    return count


# --- youngsim side ----------------------------------------------------------------------

def youngsim_cost_model(hold: int, think: int) -> Any:
    zero = "benchmark: zero, like SimPy's Resource, so both simulate the same timeline"
    cm = load_cost_model()
    cm = cm.with_labels({
        "bench_hold": {"ns": hold, "rationale": "benchmark: lock hold time H"},
        "bench_think": {"ns": think, "rationale": "benchmark: think time T"},
    })
    tables: dict[str, Any] = {"kinds": {k: {"ns": 0, "rationale": zero}
                                        for k in ("lock", "unlock", "acquire")},
                              "wakeup": {"spin_handoff": {"ns": 0, "rationale": zero}},
                              "contention": {"atomic_surcharge": {"ns": 0, "rationale": zero}}}
    return cm.with_tables(tables)


def youngsim_machine(n: int, fused: bool = False) -> tuple[Machine, list[int]]:
    """The model; ``fused``: each process yields one endless ``lock_cycles`` (the same
    operations, run by the executor without resuming the generator; its cycle count is
    then read from the lock's acquisitions)."""
    m = Machine()
    lock = SpinLock("lock")
    cycles = [0]

    def proc() -> Any:
        if fused:
            yield lock_cycles(lock, 1 << 62, hold="bench_hold", gap="bench_think")
        while True:
            yield spin_lock(lock)
            yield nop(cost="bench_hold")
            yield spin_unlock(lock)
            cycles[0] += 1
            yield nop(cost="bench_think")

    for i in range(n):
        m.spawn(proc, name=f"p{i}", daemon=True)
    return m, cycles


def youngsim_run(cm: Any, n: int, horizon: int, fused: bool = False
                 ) -> tuple[float, int, int]:
    m, cycles = youngsim_machine(n, fused)
    d = TimedDriver(m, cm)
    t0 = time.perf_counter()
    r = d.run(until_ns=horizon)
    dt = time.perf_counter() - t0
    if fused:  # cycles completed = releases: acquisitions minus a holder at the horizon
        held = 1 if m.threads and any(t.locks for t in m.threads) else 0
        return dt, r.locks["lock"].acquisitions - held, r.steps
    return dt, cycles[0], r.steps


def record_schedule(cm: Any, n: int, horizon: int) -> list[int]:
    """The thread ids the timed driver steps, in order (for the executor ceiling)."""
    m, _ = youngsim_machine(n)
    m.tracing = True
    TimedDriver(m, cm).run(until_ns=horizon)
    return [s.tid for s in m.trace]


def executor_run(n: int, sched: list[int]) -> tuple[float, int]:
    """``Machine.step`` alone replaying ``sched``, with no driver work: the most any
    driver on this executor can reach on this model."""
    m, cycles = youngsim_machine(n)
    step = m.step
    t0 = time.perf_counter()
    for tid in sched:
        step(tid)
    return time.perf_counter() - t0, cycles[0]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--procs", type=int, default=8, help="contending processes N")
    ap.add_argument("--hold", type=int, default=100, help="hold time H (ns)")
    ap.add_argument("--think", type=int, default=300, help="think time T (ns)")
    ap.add_argument("--cycles", type=int, default=40_000,
                    help="approximate lock cycles to simulate per run")
    ap.add_argument("--repeat", type=int, default=15,
                    help="runs per side, alternated; the best of each side is kept (on"
                    " this shared machine a run varies by +-30%%: 15 steadies the best)")
    ap.add_argument("--no-pin", action="store_true", help="do not pin to one CPU")
    args = ap.parse_args(argv)
    try:
        import simpy  # noqa: PLC0415 - optional, benchmark only
    except ImportError:
        print("SimPy is not installed; this benchmark compares against it. "
              "Install it with: pip install simpy==4.1.2")
        return 0
    pin = "not pinned (--no-pin)" if args.no_pin else pin_one_core()
    n, hold, think = args.procs, args.hold, args.think
    # the lock is the bottleneck when n * hold >= hold + think: one cycle per hold time
    period = max(hold, (hold + think) / n)
    horizon = int(args.cycles * period)
    print(f"== timed driver vs SimPy {getattr(simpy, '__version__', '?')}: {n} processes "
          f"contending one FIFO lock, hold {hold} ns, think {think} ns, horizon "
          f"{horizon} ns virtual")
    print(f"python {platform.python_version()} on {platform.machine()}, {pin}, "
          f"sim core {_native.MODE}")

    cm = youngsim_cost_model(hold, think)
    ev_simpy = simpy_events(simpy, n, hold, think, horizon)
    sched = record_schedule(cm, n, horizon)
    best_s = best_y = best_x = best_f = float("inf")
    cyc_s = cyc_y = steps_y = cyc_x = cyc_f = steps_f = 0
    for _ in range(args.repeat):
        dt, cyc_s = simpy_run(simpy, n, hold, think, horizon)
        best_s = min(best_s, dt)
        dt, cyc_y, steps_y = youngsim_run(cm, n, horizon)
        best_y = min(best_y, dt)
        dt, cyc_x = executor_run(n, sched)
        best_x = min(best_x, dt)
        dt, cyc_f, steps_f = youngsim_run(cm, n, horizon, fused=True)
        best_f = min(best_f, dt)

    print(f"simulated lock cycles in the horizon: simpy={cyc_s} youngsim={cyc_y} "
          f"({'same timeline' if abs(cyc_s - cyc_y) <= n else 'DIFFERENT timelines'})")
    ev_rate_s = ev_simpy / best_s
    ev_rate_y = steps_y / best_y
    cy_rate_s = cyc_s / best_s
    cy_rate_y = cyc_y / best_y
    print(f"simpy:    {ev_simpy} events in {best_s:.3f} s = {ev_rate_s:,.0f} events/s, "
          f"{cy_rate_s:,.0f} lock cycles/s")
    print(f"youngsim: {steps_y} events in {best_y:.3f} s = {ev_rate_y:,.0f} events/s, "
          f"{cy_rate_y:,.0f} lock cycles/s")
    ev_ratio = ev_rate_y / ev_rate_s
    cy_ratio = cy_rate_y / cy_rate_s
    ratio = min(ev_ratio, cy_ratio)
    print(f"ratio youngsim/simpy: events/s {ev_ratio:.2f}x, lock cycles/s {cy_ratio:.2f}x")
    print(f"event rate ratio (lower of the two) = {ratio:.2f}x  target >= {TARGET:.0f}x  "
          f"{verdict(ratio >= TARGET)}")

    ceil_steps, ceil_cycles = len(sched) / best_x, cyc_x / best_x
    print(f"(info) executor ceiling: Machine.step alone, replaying the same schedule with no "
          f"driver work: {ceil_steps:,.0f} steps/s, {ceil_cycles:,.0f} lock cycles/s = "
          f"{ceil_steps / ev_rate_s:.2f}x SimPy events/s, {ceil_cycles / cy_rate_s:.2f}x "
          f"SimPy lock cycles/s; the driver's own work is "
          f"{1e6 * (1 / ev_rate_y - 1 / ceil_steps):.2f} us per event")

    print(f"(info) the same model with each process yielding one lock_cycles: "
          f"{cyc_f} cycles, {steps_f} events "
          f"({'same' if (cyc_f, steps_f) == (cyc_y, steps_y) else 'DIFFERENT'} as above) in "
          f"{best_f:.3f} s = {steps_f / best_f / ev_rate_s:.2f}x SimPy events/s, "
          f"{cyc_f / best_f / cy_rate_s:.2f}x SimPy lock cycles/s")

    # for information: the same model with the default cost model's lock costs
    m, cycles = youngsim_machine(n)
    d = TimedDriver(m, load_cost_model().with_labels({
        "bench_hold": {"ns": hold, "rationale": "benchmark"},
        "bench_think": {"ns": think, "rationale": "benchmark"}}))
    t0 = time.perf_counter()
    r = d.run(until_ns=horizon)
    dt = time.perf_counter() - t0
    spin = r.categories.get("spin", 0) / max(sum(r.categories.values()), 1)
    print(f"(info) default cost model (atomics, contended-line surcharge, handoff): "
          f"{cycles[0]} cycles, {r.steps / dt:,.0f} events/s, {100 * spin:.1f}% of CPU "
          f"time spinning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
