"""The large-guest paths: arena-backed leaf tables, vectorised set-up, and the TDP MMU's
run mode (a chunk larger than a leaf table ages a stretch of set-up's tables with one
vector operation on the arena). Each must give the same model state as the per-table
path the checker explores."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from youngsim.check.model import build_system, prepopulate, prepopulate_all
from youngsim.designs import DESIGNS
from youngsim.kernel.hw.vcpu import guest_access
from youngsim.kernel.mm.mm import Rmap
from youngsim.kernel.system import GfnSet
from youngsim.kernel.arm64 import pgtable as P2
from youngsim.kernel.arm64.pgtable import AF
from youngsim.kernel.x86 import spte as S
from youngsim.perf.harness import perf_cost_model
from youngsim.sim import Machine, write_lock, write_unlock
from youngsim.sim.timed import TimedDriver

PER = S.PT_ENTRIES


def finish(m: Machine, fn: Any, *args: Any) -> Any:
    out: list[Any] = []

    def body() -> Any:
        out.append((yield from fn(*args)))

    tid = m.spawn(body, name="t")
    t = m.threads[tid]
    while not t.done:
        assert m.violation is None and m.enabled(tid)
        m.step(tid)
    assert m.violation is None
    return out[0] if out else None


def host(design: str, npages: int, chunk: int) -> Any:
    m = Machine()
    sys = build_system(m, design, "x86-tdp", npages=npages, nvcpus=1, chunk=chunk)
    m.invariants.clear()  # checked explicitly below, once, instead of after every write
    return m, sys


def test_prepopulate_all_matches_prepopulate_per_gfn():
    for write, young in ((False, True), (True, False)):
        _, a = host("upstream", 3 * PER + 7, 1)
        _, b = host("upstream", 3 * PER + 7, 1)
        prepopulate_all(a, write=write, young=young)
        for g in range(3 * PER + 7):
            prepopulate(b, g, write=write, young=young)
        ta, tb = a.kvms[0].arch.tables, b.kvms[0].arch.tables
        assert np.array_equal(ta.leaf_entries_now(), tb.leaf_entries_now())
        assert np.array_equal(ta.installed_pfns(), tb.installed_pfns())
        assert np.array_equal(ta.ghost_dirty, tb.ghost_dirty)
        # set-up's tables are views of one arena, gfn = arena index
        assert np.array_equal(ta.arena.data[:3 * PER + 7], ta.leaf_entries_now())


def test_rmap_behaves_as_the_dict_it_replaced():
    r = Rmap()
    r[5000] = 0x7F0000001000
    r.set_range(10, np.array([0, 4096], dtype=np.int64))
    assert r[5000] == 0x7F0000001000 and r.get(11) == 4096 and r.get(12) is None
    assert 10 in r and 12 not in r and len(r) == 3 and sorted(r) == [10, 11, 5000]
    del r[10]
    with pytest.raises(KeyError):
        del r[10]
    with pytest.raises(KeyError):
        r[10]
    assert r.items() == [(11, 4096), (5000, 0x7F0000001000)]


def setup_state(sys: Any, seed: int, zap: list[int], refault: list[int],
                young_bit: int = S.shadow_accessed_mask, by_table: bool = False) -> None:
    """Set-up shared by both hosts: every page mapped, a random subset young (its
    ``young_bit`` cleared in the others; with ``by_table``, whole leaf tables young or
    old, as the blocks a by-blocks kernel decides at once), some leaf tables zapped
    (freed after RCU), a few gfns faulted back in (run-time tables)."""
    prepopulate_all(sys, write=False, young=True)
    tables = sys.kvms[0].arch.tables
    rng = np.random.default_rng(seed)
    if by_table:
        old = np.repeat(rng.random(sys.mm.npages // PER + 1) < 0.5, PER)[:sys.mm.npages]
    else:
        old = rng.random(sys.mm.npages) < 0.5
    tables.arena.data[:sys.mm.npages][old] &= np.uint64(~young_bit & S.MASK)
    kvm = sys.kvms[0]

    def zapper() -> Any:
        yield write_lock(kvm.mmu_lock)
        for ri in zap:
            yield from kvm.arch.zap_leaf_table(kvm, ri)
        yield write_unlock(kvm.mmu_lock)

    finish(sys.m, zapper)
    for g in refault:
        finish(sys.m, guest_access, sys, kvm.vcpus[0], g, True)


def draw_zaps(data: Any, npages: int) -> tuple[list[int], list[int]]:
    """Leaf tables to zap, and a few of their gfns to fault back in."""
    nroot = (npages + PER - 1) // PER
    zap = data.draw(st.lists(st.integers(0, nroot - 1), unique=True, max_size=nroot))
    refault = data.draw(st.lists(st.sampled_from([ri * PER + k for ri in zap
                                                  for k in (0, 3) if ri * PER + k < npages]),
                                 unique=True, max_size=3)) if zap else []
    return zap, refault


@settings(max_examples=30, deadline=None)
@given(design=st.sampled_from(["upstream", "upstream-6.12", "yu-v2", "reviewed", "legacy"]),
       ntables=st.integers(1, 5), tail=st.integers(0, PER - 1), seed=st.integers(0, 2**16),
       run=st.sampled_from([2, 3, 8]), data=st.data())
def test_run_mode_ages_exactly_as_the_per_table_walk(design, ntables, tail, seed, run, data):
    npages = max(1, (ntables - 1) * PER + tail)
    zap, refault = draw_zaps(data, npages)
    results = []
    for chunk in (PER, run * PER):
        m, sys = host(design, npages, chunk)
        setup_state(sys, seed, zap, refault)
        mm = sys.mm
        ret = finish(m, sys.design.mmu_notifier_clear_young, sys, mm, mm.start, mm.end)
        arch = sys.kvms[0].arch
        results.append((bool(ret), arch.tables.leaf_entries_now(), dict(m.counters)))
    (r0, e0, n0), (r1, e1, n1) = results
    assert r0 == r1
    assert np.array_equal(e0, e1)
    assert n0 == n1
    # and the pass did its job: nothing still young
    assert not (e1 & np.uint64(S.shadow_accessed_mask)).any()


def test_run_mode_uses_one_vector_operation_per_stretch():
    m, sys = host("upstream", 8 * PER, 4 * PER)
    prepopulate_all(sys)
    mm = sys.mm
    m.tracing = True  # every step recorded, to count them
    assert finish(m, sys.design.mmu_notifier_clear_young, sys, mm, mm.start, mm.end)
    counts = Counter((s.op.describe().split("(")[0], s.op.cost) for s in m.trace)
    # 8 tables in runs of 4: two root loads, then each run read, tested and cleared
    # with one vupdate
    assert counts[("vload", "spte_read")] == 2 and counts[("vupdate", "spte_read")] == 2
    assert not [c for c in counts if c[0] != "vupdate" and c[1] == "spte_clear_young"]
    # unfused (the split the checker's chunks have), a load and a fetch-and per run
    m, sys = host("upstream", 8 * PER, 4 * PER)
    prepopulate_all(sys)
    sys.kvms[0].arch.tdp.fuse = False
    m.tracing = True
    assert finish(m, sys.design.mmu_notifier_clear_young, sys, sys.mm, sys.mm.start,
                  sys.mm.end)
    counts = Counter(s.op.cost for s in m.trace)
    assert counts["spte_read"] == 4 and counts["spte_clear_young"] == 2


@settings(max_examples=30, deadline=None)
@given(design=st.sampled_from(["upstream", "upstream-6.12", "yu-v2", "reviewed", "legacy"]),
       mmu=st.sampled_from(["arm64", "arm64-swaf"]), ntables=st.integers(1, 5),
       tail=st.integers(0, PER - 1), seed=st.integers(0, 2**16),
       chunk=st.sampled_from([7, 64, PER, 2 * PER, 3 * PER, 8 * PER]), data=st.data())
def test_stage2_chunked_aging_matches_the_per_entry_walk(design, mmu, ntables, tail, seed,
                                                         chunk, data):
    """Stage 2 clears with a cmpxchg per descriptor: a chunk's worth as one ``vcas``, and
    with a chunk of several tables a run of set-up's tables as chunks of the arena, must
    leave the same descriptors, answer and counters as one ``cas`` per entry, with
    zapped and re-faulted tables in the range."""
    npages = max(1, (ntables - 1) * PER + tail)
    zap, refault = draw_zaps(data, npages)
    results = []
    for c in (1, chunk):
        m = Machine()
        sys = build_system(m, design, mmu, npages=npages, nvcpus=1, chunk=c)
        m.invariants.clear()
        setup_state(sys, seed, zap, refault, young_bit=AF)
        tables = sys.kvms[0].arch.tables
        mm = sys.mm
        ret = finish(m, sys.design.mmu_notifier_clear_young, sys, mm, mm.start, mm.end)
        results.append((bool(ret), tables.leaf_entries_now(), dict(m.counters)))
    (r0, e0, n0), (r1, e1, n1) = results
    assert r0 == r1 and n0 == n1
    assert np.array_equal(e0, e1)


def ops_of_one_pass(design: str, mmu: str, npages: int, chunk: int,
                    fuse: bool = True) -> Counter[Any]:
    """The (operation kind, cost label) pairs one ``mmu_notifier_clear_young`` over a
    prefaulted, all-young guest issues, counted."""
    m = Machine()
    sys = build_system(m, design, mmu, npages=npages, nvcpus=1, chunk=chunk)
    sys.kvms[0].arch.tables.fuse = fuse
    m.invariants.clear()
    prepopulate_all(sys, write=False, young=True)
    m.tracing = True  # every step recorded, to count them
    mm = sys.mm
    assert finish(m, sys.design.mmu_notifier_clear_young, sys, mm, mm.start, mm.end)
    return Counter((s.op.describe().split("(")[0], s.op.cost) for s in m.trace)


@pytest.mark.parametrize("design,label", [("yu-v2", "spte_cmpxchg"),
                                          ("upstream", "spte_clear_young")])
def test_stage2_clears_a_chunk_with_one_vector_cmpxchg(design, label):
    counts = ops_of_one_pass(design, "arm64", 4 * PER, PER)
    clears = {kind: n for (kind, cost), n in counts.items() if cost == label}
    assert clears == {"vcas": 4}  # one per leaf table, not one per descriptor


def test_stage2_run_mode_reads_and_clears_a_run_of_tables_with_one_vupdate():
    counts = ops_of_one_pass("yu-v2", "arm64", 8 * PER, 4 * PER)
    kinds = Counter(kind for kind, _ in counts.elements())
    # 8 tables in runs of 4: two descriptor loads, then each run one vupdate
    assert kinds["vload"] == 2 and kinds["vupdate"] == 2
    assert "vcas" not in kinds and "cas" not in kinds
    # unfused: two arena loads and two vcas more
    counts = ops_of_one_pass("yu-v2", "arm64", 8 * PER, 4 * PER, fuse=False)
    kinds = Counter(kind for kind, _ in counts.elements())
    assert kinds["vload"] == 4 and kinds["vcas"] == 2 and "cas" not in kinds


@pytest.mark.parametrize("mmu", ["arm64", "arm64-swaf"])
def test_stage2_prepopulate_all_matches_prepopulate_per_gfn(mmu):
    for write, young in ((False, True), (True, False)):
        npages = 3 * PER + 7
        m1, m2 = Machine(), Machine()
        a = build_system(m1, "upstream", mmu, npages=npages, nvcpus=1)
        b = build_system(m2, "upstream", mmu, npages=npages, nvcpus=1)
        prepopulate_all(a, write=write, young=young)
        for g in range(npages):
            prepopulate(b, g, write=write, young=young)
        ta, tb = a.kvms[0].arch.tables, b.kvms[0].arch.tables
        assert np.array_equal(ta.leaf_entries_now(), tb.leaf_entries_now())
        assert np.array_equal(ta.installed_pfns(), tb.installed_pfns())
        assert np.array_equal(ta.ghost_dirty, tb.ghost_dirty)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1000), st.lists(st.booleans(), max_size=40)),
                max_size=6), st.lists(st.integers(0, 1100), max_size=5))
def test_gfnset_holds_exactly_the_pages_recorded(chunks, singles):
    """The monitors' record of a call: chunks as (first gfn, mask), kept packed or as a
    whole range, and single gfns; it must hold exactly those pages."""
    s = GfnSet()
    want: set[int] = set()
    for j, (first, bits) in enumerate(chunks):
        mask = np.array(bits, dtype=bool)
        # a walker's kernel may say how many are set (every other chunk here)
        s.add_mask(first, mask, sum(bits) if j % 2 else None)
        mask[:] = False  # the caller may reuse its mask
        want.update(first + k for k, b in enumerate(bits) if b)
    for g in singles:
        s.add(g)
        want.add(g)
    assert bool(s) == bool(want)
    assert set(s) == want and len(s) == len(want)
    assert all(g in s for g in want) and 1101 not in s


def test_stage2_locked_clear_retries_from_the_value_its_cmpxchg_found():
    """Hardware sets the dirty state of a descriptor between the walker's load and its
    cmpxchg: the cmpxchg fails, and the retry starts from the value found, so AF is
    cleared and the hardware's update is kept."""
    m = Machine()
    sys = build_system(m, "upstream", "arm64", npages=PER, nvcpus=1, chunk=PER)
    m.invariants.clear()
    prepopulate_all(sys, write=False, young=True)
    tables = sys.kvms[0].arch.tables
    mm = sys.mm

    def ager() -> Any:
        yield from sys.design.mmu_notifier_clear_young(sys, mm, mm.start, mm.end)

    tid = m.spawn(ager, name="ager")
    t = m.threads[tid]
    vcas_seen = 0
    for _ in range(10_000):
        if t.done:
            break
        op = t.pending
        if op.describe().startswith("vcas"):
            if vcas_seen == 0:  # the hardware writes first: page 5 becomes dirty
                tables.arena.data[5] |= np.uint64(P2.S2AP_W)
            vcas_seen += 1
        m.step(tid)
    assert t.done and m.violation is None
    assert vcas_seen == 2  # the whole chunk, then the one descriptor it lost
    e = tables.leaf_entries_now()
    assert not (e & np.uint64(AF)).any()
    assert e[5] & np.uint64(P2.S2AP_W)


@settings(max_examples=25, deadline=None)
@given(design=st.sampled_from(sorted(DESIGNS)),
       mmu=st.sampled_from(["x86-tdp", "x86-tdp-noad", "arm64", "arm64-swaf"]),
       ntables=st.integers(1, 6), tail=st.integers(0, PER - 1), seed=st.integers(0, 2**16),
       by_table=st.booleans(), data=st.data())
def test_fused_run_mode_aging_is_the_split_one_with_no_window(design, mmu, ntables, tail,
                                                              seed, by_table, data):
    """With nothing running beside it, a run-mode pass whose chunks are one ``vupdate``
    each (read, test and clear) leaves the same SPTEs and counters as the
    ``vload``-then-clear split, and the timed driver charges it the same: virtual time,
    per-label counts and ns, CPU categories, contended lines."""
    if DESIGNS[design].applies(mmu):
        return
    npages = max(1, (ntables - 1) * PER + tail)
    zap, refault = draw_zaps(data, npages)
    out = []
    for fuse in (False, True):
        m = Machine()
        sys = build_system(m, design, mmu, npages=npages, nvcpus=1, chunk=4 * PER)
        m.invariants.clear()
        setup_state(sys, seed, zap, refault,
                    young_bit={"x86-tdp": S.shadow_accessed_mask, "arm64": AF,
                               "arm64-swaf": AF}.get(mmu, 0), by_table=by_table)
        arch = sys.kvms[0].arch
        arch.tables.fuse = fuse
        mm = sys.mm
        ret: list[Any] = []

        def ager() -> Any:
            ret.append((yield from sys.design.mmu_notifier_clear_young(sys, mm, mm.start,
                                                                       mm.end)))

        tid = m.spawn(ager, name="ager")
        r = TimedDriver(m, perf_cost_model(), roles={tid: "aging"},
                        sample_period_ns=97).run()
        assert r.ok and r.stopped == "done"
        d = r.to_dict()
        d.pop("steps")
        for t in d["threads"]:
            t.pop("steps", None)
        d["samples"] = r.profile.total  # the stacks differ (one frame fewer), not how many
        d.pop("profile", None)
        out.append((ret, arch.tables.leaf_entries_now(), d, r.steps))
    (r0, e0, d0, s0), (r1, e1, d1, s1) = out
    assert r0 == r1
    assert np.array_equal(e0, e1)
    assert d0 == d1
    # fused: one operation per chunk instead of a load and the vector clears (if it
    # clears any: without A/D bits young SPTEs are marked one by one either way)
    assert s1 < s0 if r0[0] and mmu != "x86-tdp-noad" else s1 <= s0
