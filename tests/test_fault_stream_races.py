"""Fault streams racing with other threads on the same entries (from a review): a
second vCPU faulting pages of the same stream, an invalidation while a stream runs,
and a zap of the stream's leaf table. Each check that fails hands the page to the per-page code at the point the
check stands for, so the run is the per-page code's, operation for operation."""

from __future__ import annotations

from typing import Any, Callable

import pytest

from youngsim.check.model import HVA_BASE, build_system
from youngsim.kernel.hw.vcpu import guest_access, guest_access_range
from youngsim.kernel.kvm.kvm_main import kvm_flush_remote_tlbs
from youngsim.kernel.mm.mmu_notifier import (mmu_notifier_invalidate_range_end,
                                             mmu_notifier_invalidate_range_start)
from youngsim.kernel.x86 import fault_stream as FS
from youngsim.sim import Machine, nop, write_lock, write_unlock
from youngsim.sim.timed import TimedDriver


def _race(streams: bool, mmu: str, eager: bool, hi: int, write: bool,
          other: Callable[[Any], Any]) -> dict[str, Any]:
    """vCPU 0 faults in gfn 0 (linking leaf table 0), then streams over gfns
    ``[1, hi)`` while ``other(system)`` runs beside it; what the run did: the timed
    result, the SPTEs, the ghost state, the samples, the steps of each thread and the
    violation if any."""
    m = Machine()
    s = build_system(m, "upstream", mmu, npages=1024, nvcpus=2)
    m.invariants.clear()
    m.watches.clear()
    s.fault_streams = streams
    v0 = s.kvms[0].vcpus[0]

    def vcpu0() -> Any:
        yield from guest_access(s, v0, 0, False)  # links the leaf table
        yield from guest_access_range(s, v0, 1, hi, write)

    m.spawn(vcpu0, name="vcpu0")
    m.spawn(other, s, name="other")
    d = TimedDriver(m)
    if eager:
        d.engine_min_stretch = d.engine_min_ops = 0
    r = d.run().to_dict()
    r.pop("wall_s", None)
    arch = s.kvms[0].arch
    r["sptes"] = arch.leaf_view()[0].tolist()
    r["ghost"] = (s.ghost.accessed.tolist(), arch.tables.installed_pfns().tolist())
    r["samples"] = {k: list(v) for k, v in s.samples.items()}
    r["steps_per_thread"] = [t.steps for t in m.threads]
    r["violation"] = None if m.violation is None else m.violation.kind
    return r


def _run(streams: bool, scen: str, delay: int, mmu: str, eager: bool, hold: int = 0
         ) -> dict[str, Any]:
    def other(s: Any) -> Any:
        for _ in range(delay):
            yield nop(cost="guest_insn")
        if scen == "inval":  # gfns 10-11: mmu_invalidate_seq moves, in_progress 1
            a, b = HVA_BASE + 10 * 4096, HVA_BASE + 12 * 4096
            yield from mmu_notifier_invalidate_range_start(s.mm, a, b)
            for _ in range(hold):  # in progress meanwhile: faults are stale
                yield nop(cost="guest_insn")
            yield from mmu_notifier_invalidate_range_end(s.mm, a, b)
        else:  # a second vCPU faults some of the same pages
            yield from guest_access_range(s, s.kvms[0].vcpus[1], 5, 30, False)

    return _race(streams, mmu, eager, 40, scen == "write", other)


@pytest.mark.parametrize("scen,delay,hold", [
    ("overlap", 0, 0), ("overlap", 700, 0), ("write", 0, 0), ("inval", 1525, 0),
    ("inval", 4000, 0), ("inval", 9000, 0), ("inval", 3000, 3000),
    ("inval", 6000, 2000)])
@pytest.mark.parametrize("mmu", ["x86-tdp", "x86-tdp-noad"])
@pytest.mark.parametrize("eager", [False, True])
def test_a_race_gives_the_per_page_run(monkeypatch, scen, delay, hold, mmu, eager):
    handed = [0]
    for name in ("_resume_pre", "_resume_walk", "_resume_locked"):
        f = getattr(FS._Stream, name)

        def counted(st: Any, *a: Any, f: Any = f) -> Any:
            handed[0] += 1
            return (yield from f(st, *a))
        monkeypatch.setattr(FS._Stream, name, counted)
    a = _run(True, scen, delay, mmu, eager, hold)
    b = _run(False, scen, delay, mmu, eager, hold)
    assert a == b
    if scen != "write":
        assert handed[0] > 0  # the race did reach a check


def _zap_run(streams: bool, delay: int, mmu: str, eager: bool) -> dict[str, Any]:
    """A stream over 199 pages of leaf table 0 while another thread zaps that table
    (``mmu_lock`` for write, unlink and freeze, flush): the stream's next cycle finds the
    root entry gone under the lock and ``_map`` goes on from it (a new table)."""
    def zapper(s: Any) -> Any:
        kvm = s.kvms[0]
        for _ in range(delay):
            yield nop(cost="guest_insn")
        yield write_lock(kvm.mmu_lock, cost="mmu_lock_write")
        zapped = yield from kvm.arch.zap_leaf_table(kvm, 0)
        yield write_unlock(kvm.mmu_lock, cost="mmu_lock_write_release")
        if zapped:
            yield from kvm_flush_remote_tlbs(kvm)

    return _race(streams, mmu, eager, 200, False, zapper)


@pytest.mark.parametrize("delay", [2000, 20718])
@pytest.mark.parametrize("mmu", ["x86-tdp", "x86-tdp-noad"])
@pytest.mark.parametrize("eager", [False, True])
def test_a_table_zapped_under_a_stream_gives_the_per_page_run(monkeypatch, delay, mmu,
                                                              eager):
    handed: dict[str, int] = {}
    for name in ("_resume_pre", "_resume_locked"):
        f = getattr(FS._Stream, name)

        def counted(st: Any, *a: Any, f: Any = f, name: str = name) -> Any:
            handed[name] = handed.get(name, 0) + 1
            return (yield from f(st, *a))
        monkeypatch.setattr(FS._Stream, name, counted)
    a = _zap_run(True, delay, mmu, eager)
    # where the stream sees the zap: with A/D bits, the root-entry check under
    # mmu_lock; without, first fast_page_fault's root-entry check (its pre part)
    assert handed.get("_resume_locked" if mmu == "x86-tdp" else "_resume_pre", 0) > 0
    assert a == _zap_run(False, delay, mmu, eager)
