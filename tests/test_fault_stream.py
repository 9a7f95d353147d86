"""Fault streams (``kernel/x86/fault_stream.py``): a vCPU's first touches of a leaf
table's pages as one ``lock_program`` of the per-page code's operations.

The contract: a scenario gives the same results with streams as with every access
run through ``guest_access`` (``System.fault_streams = False``): the same figures,
timeline, statistics, counters, samples and ghost state, run alone or beside an ager
that races with the vCPUs (its clears make the streams' checks fail and hand pages
back to the per-page code at the point the check stands for).
"""

from __future__ import annotations

from typing import Any

import pytest

from youngsim.kernel.x86 import fault_stream as FS
from youngsim.perf.access_tracking import Config, run_access_tracking


class _Count:
    """How many streams ran, pages they planned and accessed, and hand-overs."""

    def __init__(self, monkeypatch: Any) -> None:
        self.streams = self.planned = self.done = self.handed = 0
        run, walk, pre = FS._Stream.run, FS._Stream._resume_walk, FS._Stream._resume_pre
        me = self

        def counted_run(st: Any) -> Any:
            me.streams += 1
            me.planned += st.n
            done = yield from run(st)
            me.done += done
            return done

        def counted(f: Any) -> Any:
            def g(st: Any, *a: Any) -> Any:
                me.handed += 1
                return (yield from f(st, *a))
            return g
        monkeypatch.setattr(FS._Stream, "run", counted_run)
        monkeypatch.setattr(FS._Stream, "_resume_walk", counted(walk))
        monkeypatch.setattr(FS._Stream, "_resume_pre", counted(pre))


def _both(cfg: Config) -> tuple[dict[str, Any], dict[str, Any], Any, Any]:
    a = run_access_tracking(cfg)
    b = run_access_tracking(Config(**{**cfg.__dict__, "fault_streams": False}))
    da, db = dict(a.data), dict(b.data)
    for d in (da, db):
        d.pop("config")  # says which way it ran
        d.pop("wall_s", None)
    return da, db, a, b


@pytest.mark.parametrize("design,mmu,vcpus,nbytes,bench", [
    ("upstream", "x86-tdp", 1, 2 << 20, False),   # alone, every phase
    ("yu-v2", "x86-tdp", 2, 512 << 10, False),
    ("upstream", "x86-tdp", 4, 1 << 20, True),    # -p: the lockless ager races
    ("upstream-6.12", "x86-tdp", 4, 1 << 20, True),  # -p: a per-page locked ager
    ("legacy", "x86-tdp-noad", 4, 1 << 20, True),  # A/D off: fast_page_fault's reads
    ("legacy", "x86-tdp", 3, 1 << 20, True),       # flushes TLBs while vCPUs fault
    ("reviewed-locked", "x86-tdp-noad", 2, 512 << 10, False),
    # A/D off and -p on 128 pages: a livelock (reported), reached the same way
    ("reviewed", "x86-tdp-noad", 8, 64 << 10, True),
])
def test_streams_give_the_per_page_results(monkeypatch, design, mmu, vcpus, nbytes, bench):
    c = _Count(monkeypatch)
    cfg = Config(design=design, mmu=mmu, vcpus=vcpus, bytes_per_vcpu=nbytes,
                 benchmark=bench)
    da, db, a, b = _both(cfg)
    assert c.streams > 0 and c.done > 0  # streams ran...
    assert da == db  # ...and changed nothing
    assert a.timed.steps == b.timed.steps


@pytest.mark.parametrize("design,mmu,vcpus,nbytes,bench", [
    ("upstream", "x86-tdp", 4, 1 << 20, False),    # every phase; populate alone
    ("upstream", "x86-tdp", 4, 1 << 20, True),     # -p: the ager bounds the engine
    ("legacy", "x86-tdp", 3, 1 << 20, True),       # TLB flushes: vCPUs wait (parked)
    ("reviewed-locked", "x86-tdp-noad", 3, 512 << 10, False),
])
def test_the_cycle_engine_runs_streams_with_the_same_results(monkeypatch, design, mmu,
                                                              vcpus, nbytes, bench):
    """With the cycle engine taking over wherever it may (not only where it pays), the
    streams' programs run in it and the results are still the per-page code's."""
    from youngsim.sim.timed import TimedDriver
    init = TimedDriver.__init__
    engine = [0]
    drivers: list[Any] = []

    def eager(d: Any, *a: Any, **kw: Any) -> None:
        init(d, *a, **kw)
        d.engine_min_stretch = 0
        d.engine_min_ops = 0
        drivers.append(d)
    monkeypatch.setattr(TimedDriver, "__init__", eager)
    cfg = Config(design=design, mmu=mmu, vcpus=vcpus, bytes_per_vcpu=nbytes,
                 benchmark=bench)
    da, db, a, b = _both(cfg)
    engine[0] = drivers[0].engine_steps
    assert engine[0] > 0
    assert da == db


def test_racing_ager_hands_pages_back(monkeypatch):
    """With -p and a lockless ager on x86 TDP, the ager clears the accessed bit of
    pages between their fault and the walk after it: the streams' checks fail, the
    per-page code takes those pages over, and the results are still the same."""
    c = _Count(monkeypatch)
    da, db, _, _ = _both(Config(design="upstream", mmu="x86-tdp", vcpus=4,
                                bytes_per_vcpu=1 << 20, benchmark=True))
    assert c.handed > 0 and c.done < c.planned
    assert da == db


def test_keep_tlb_and_page_idle(monkeypatch):
    c = _Count(monkeypatch)
    for kw in ({"keep_tlb": True}, {"page_idle": True}):
        da, db, _, _ = _both(Config(design="upstream", mmu="x86-tdp", vcpus=2,
                                    bytes_per_vcpu=512 << 10, **kw))
        assert da == db
    assert c.streams > 0


def test_profiled_runs_keep_the_per_page_stacks(monkeypatch):
    """Sampling changes no figure, with streams too; the vCPUs' fault functions stay in
    the profile (a stream's operations carry the per-page code's frames)."""
    cfg = Config(design="upstream", mmu="x86-tdp", vcpus=2, bytes_per_vcpu=1 << 20,
                 benchmark=True, profile_period_ns=50)
    a = run_access_tracking(cfg)
    b = run_access_tracking(Config(**{**cfg.__dict__, "fault_streams": False}))
    plain = run_access_tracking(Config(**{**cfg.__dict__, "profile_period_ns": 0}))
    pa, pb = a.timed.profile, b.timed.profile
    # the same stacks, sample for sample: the stream's own functions are transparent
    # and its operations carry the per-page code's frames
    assert pa.samples == pb.samples
    assert any("kvm_tdp_mmu_map" in st for st in pa.samples)
    for d in (a.data, plain.data):
        d.pop("wall_s", None)
    assert {k: v for k, v in a.data.items() if k not in ("profile", "config")} == \
        {k: v for k, v in plain.data.items() if k not in ("profile", "config")}


def test_streams_need_a_table_and_an_empty_entry():
    """What ``_plan`` leaves to the per-page code: a page whose leaf table does not
    exist yet, and pages already mapped."""
    from youngsim.check.model import build_system
    from youngsim.sim import Machine
    m = Machine()
    sys = build_system(m, "upstream", "x86-tdp", npages=1024, nvcpus=1,
                       prefault_primary=True)
    arch = sys.kvms[0].arch
    vcpu = sys.kvms[0].vcpus[0]
    assert FS._plan(arch, vcpu, 0, 1024, True) is None  # no leaf table yet
    arch.prepopulate(0, 7, write=True, young=True)  # links table 0, maps gfn 0
    assert FS._plan(arch, vcpu, 0, 1024, True) is None  # gfn 0 is mapped
    st = FS._plan(arch, vcpu, 1, 1024, True)
    assert st is not None and st.n == 511  # up to the end of the leaf table
    arch.prepopulate(9, 8, write=True, young=True)
    st = FS._plan(arch, vcpu, 1, 1024, True)
    assert st is not None and st.n == 8  # up to the next mapped page
    assert len(st.new) == 8 and all(st.new)
    sys.fault_streams = False
    assert FS._plan(arch, vcpu, 1, 1024, True) is None
