"""Lock-cycle benchmark: ``mmu_lock`` traffic shaped like ``access_tracking_perf_test -p``,
yielded one operation at a time and as ``lock_cycles``.

Run as ``python3 benchmarks/bench_lock_cycles.py``. Prints plain text; never fails the
process on a figure (speed depends on the machine); exits 1 only if the two ways' timed
results differ, which would be a bug.

The model: ``--vcpus`` threads each take ``kvm->mmu_lock`` for read ``--faults`` times
(one EPT violation each: the lock held ``--read-hold`` ns, then ``--read-gap`` ns of the
rest of the fault and the guest), while one aging thread takes it for write once per
page, ``--vcpus x --faults`` times (``upstream-6.12``'s per-page locked
``kvm_age_gfn``: held ``--write-hold`` ns, ``--write-gap`` ns between pages), under the
default cost model's lock costs (lock-word surcharge, qrwlock fairness, spinning
waiters). The default hold and gap times come from ``youngsim run
access_tracking_perf_test -p -v 112 -b 2M --mmu x86-tdp``: with ``--design
upstream-6.12``, vCPU read hold mean 31 ns, aging write hold mean 17 ns and a 10.2 ms
pass over 57,344 pages (about 180 ns a page); with ``--design upstream``, whose faults
never wait for the lock, 1385 ns of host time per fault (the gap, rounded).

Both runs must give the same timed result (checked: the whole ``TimedResult`` apart from
wall time), so the comparison is of the same simulation:

- ``loop``: each thread a generator yielding ``read_lock``, ``nop(hold)``,
  ``read_unlock``, ``nop(gap)`` per cycle, as the model's code does today;
- ``lock_cycles``: each thread yields one ``lock_cycles`` operation, which the executor
  runs as the same operations without resuming the generator, and which the timed
  driver hands to the cycle engine (``sim/cycles.py``, compiled) where it may.

``--body`` makes the read cycles fault-shaped: each installs an entry by cmpxchg in its
vCPU's own 512-entry table while holding the lock (``lock_cycles(body=CycleCas(...))``
against ``cas`` in the loop), one ``lock_cycles`` per 512 faults (a leaf table's worth,
the table cleared between them by the model code), so the engine hands back to the
driver once per chunk, as a fault stream would.

``--stagger`` (with ``--body``) starts vCPU ``i`` ``i / vcpus`` of a chunk's time late, so
the chunks end one at a time and the engine hands back about once per ``4 x 512``
events instead of once per round of chunks: the hand-over-bound case a fault stream
would be.

It prints the wall time and the cost per lock cycle of each, and that cost extrapolated
linearly to the lock traffic alone of the full-size target (``-v 112 -b 1G``: 29.4 M
faults, and one per-page locked pass over as many pages): roughly a floor under that
scenario's time with the driver stepping each operation, not a prediction of it (every
fault and pass also runs model code; the machine's noise moves it by +-30%).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from typing import Any

import numpy as np
from _common import pin_one_core

from youngsim.sim import (CycleCas, Machine, RWLock, _native, cas, lock_cycles, nop, read_lock,
                          read_unlock, write_lock, write_unlock)
from youngsim.sim.costmodel import load_cost_model
from youngsim.sim.timed import TimedDriver

FULL_FAULTS = 112 * (1 << 30) // 4096  # -v 112 -b 1G: 29.4 M pages
CHUNK = 512  # --body: faults per lock_cycles (a leaf table)


def build(args: argparse.Namespace, fused: bool) -> Machine:
    m = Machine()
    lk = RWLock("kvm->mmu_lock")
    n = args.faults

    def vcpu(i: int) -> Any:
        if not args.body:
            if fused:
                yield lock_cycles(lk, n, read=True, hold="bench_read_hold",
                                  gap="bench_read_gap", acquire="mmu_lock_read",
                                  release="mmu_lock_read_release")
                return
            for _ in range(n):
                yield read_lock(lk, "mmu_lock_read")
                yield nop(cost="bench_read_hold")
                yield read_unlock(lk, "mmu_lock_read_release")
                yield nop(cost="bench_read_gap")
            return
        table = m.new_words(f"vcpu{i}.spt", CHUNK)
        if args.stagger:  # start vCPU i a fraction i / vcpus of a chunk's time late
            yield nop(cost=f"bench_stagger{i}")
        for c0 in range(0, n, CHUNK):
            k = min(CHUNK, n - c0)
            new = np.arange(c0 + 1, c0 + k + 1, dtype=np.uint64)  # never 0
            if fused:
                body = CycleCas(table, 0, np.zeros(k, np.uint64), new,
                                cost="spte_cmpxchg")
                got = yield lock_cycles(lk, k, read=True, hold="bench_read_hold",
                                        gap="bench_read_gap", acquire="mmu_lock_read",
                                        release="mmu_lock_read_release", body=body)
                assert got == k
            else:
                for j in range(k):
                    yield read_lock(lk, "mmu_lock_read")
                    yield cas(table, j, 0, int(new[j]), cost="spte_cmpxchg")
                    yield nop(cost="bench_read_hold")
                    yield read_unlock(lk, "mmu_lock_read_release")
                    yield nop(cost="bench_read_gap")
            table.data[:] = 0  # the next chunk's table (model code, not an operation)

    def ager() -> Any:
        pages = args.vcpus * n
        if fused:
            yield lock_cycles(lk, pages, hold="bench_write_hold", gap="bench_write_gap")
            return
        for _ in range(pages):
            yield write_lock(lk)
            yield nop(cost="bench_write_hold")
            yield write_unlock(lk)
            yield nop(cost="bench_write_gap")

    for i in range(args.vcpus):
        m.spawn(vcpu, i, name=f"vcpu{i}")
    if not args.no_writer:
        m.spawn(ager, name="lru_gen")
    return m


def run(args: argparse.Namespace, cm: Any, fused: bool) -> tuple[float, dict[str, Any]]:
    m = build(args, fused)
    roles = {i: "vcpu" for i in range(args.vcpus)}
    if not args.no_writer:
        roles[args.vcpus] = "aging"
    d = TimedDriver(m, cm, roles=roles)
    t0 = time.perf_counter()
    r = d.run()
    dt = time.perf_counter() - t0
    out = r.to_dict()
    out.pop("wall_s", None)
    return dt, out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vcpus", type=int, default=112)
    ap.add_argument("--faults", type=int, default=2000, help="read cycles per vCPU")
    ap.add_argument("--read-hold", type=int, default=31)
    ap.add_argument("--read-gap", type=int, default=1400)
    ap.add_argument("--write-hold", type=int, default=17)
    ap.add_argument("--write-gap", type=int, default=180)
    ap.add_argument("--no-writer", action="store_true",
                    help="no aging thread: the lockless designs' traffic (readers only)")
    ap.add_argument("--body", action="store_true",
                    help="each read cycle installs an entry by cmpxchg (fault-shaped), "
                    "one lock_cycles per 512 faults")
    ap.add_argument("--stagger", action="store_true",
                    help="with --body: start the vCPUs at evenly spread times, so their "
                    "chunks end one at a time rather than together")
    ap.add_argument("--repeat", type=int, default=3, help="runs per side; best kept")
    ap.add_argument("--no-pin", action="store_true", help="do not pin to one CPU")
    args = ap.parse_args(argv)
    if min(args.vcpus, args.faults, args.repeat) < 1 or min(
            args.read_hold, args.read_gap, args.write_hold, args.write_gap) < 0:
        print("bench_lock_cycles: error: counts must be >= 1 and times >= 0",
              file=sys.stderr)
        return 2
    if args.stagger and not args.body:
        print("bench_lock_cycles: error: --stagger needs --body", file=sys.stderr)
        return 2
    pin = "not pinned (--no-pin)" if args.no_pin else pin_one_core()
    cm = load_cost_model().with_labels({
        "bench_read_hold": {"ns": args.read_hold, "rationale": "benchmark: see docstring"},
        "bench_read_gap": {"ns": args.read_gap, "rationale": "benchmark: see docstring"},
        "bench_write_hold": {"ns": args.write_hold, "rationale": "benchmark: see docstring"},
        "bench_write_gap": {"ns": args.write_gap, "rationale": "benchmark: see docstring"},
        **{f"bench_stagger{i}": {
            "ns": i * CHUNK * (args.read_hold + args.read_gap) // args.vcpus,
            "rationale": "benchmark: --stagger"} for i in range(args.vcpus)}})
    writers = 0 if args.no_writer else 1
    cycles = (1 + writers) * args.vcpus * args.faults
    print(f"== mmu_lock cycles: {args.vcpus} vCPUs x {args.faults} read cycles + "
          f"{writers * args.vcpus * args.faults} write cycles ({cycles:,} cycles)")
    print(f"python {platform.python_version()} on {platform.machine()}, {pin}, "
          f"sim core {_native.MODE}")
    best = {False: float("inf"), True: float("inf")}
    res: dict[bool, dict[str, Any]] = {}
    for _ in range(args.repeat):
        for fused in (False, True):
            dt, res[fused] = run(args, cm, fused)
            best[fused] = min(best[fused], dt)
    same = res[False] == res[True]
    r = res[True]
    lock = r["locks"]["kvm->mmu_lock"]
    print(f"timed result of the two runs: {'identical' if same else 'DIFFERENT (a bug)'}; "
          f"{r['steps']:,} steps, {lock['acquisitions']:,} acquisitions, "
          f"{lock['contended']:,} contended, virtual end {r['end_ns'] / 1e6:.3f} ms")
    for fused, name in ((False, "loop"), (True, "lock_cycles")):
        per = best[fused] / cycles
        full = per * (1 + writers) * FULL_FAULTS
        print(f"{name:<12} {best[fused]:7.3f} s  {1e9 * per:7.0f} ns per cycle  "
              f"{r['steps'] / best[fused]:>12,.0f} steps/s  -> extrapolated to the lock "
              f"traffic of -v 112 -b 1G ({1 + writers} x {FULL_FAULTS / 1e6:.1f} M cycles) "
              f"at this cost per cycle: {full:6.0f} s")
    if args.vcpus != 112:
        print(f"(the cost per cycle was measured with {args.vcpus} vCPU threads; it grows "
              "with the thread count, so the extrapolation is for 112 only with --vcpus 112)")
    print(f"lock_cycles / loop: {best[False] / best[True]:.2f}x faster")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
