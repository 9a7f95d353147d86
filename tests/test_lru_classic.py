"""The classic active/inactive LRU ("MGLRU off", ``kernel/mm/lru_classic.py``): the lists,
``folio_check_references``' rules, ``shrink_active_list``/``shrink_inactive_list`` and
the ``inactive_is_low`` balance, reclaim under a faulting vCPU, ``--lru`` and the
calibration rows it adds.
"""

from __future__ import annotations

import functools
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from youngsim.check.model import build_system
from youngsim.cli import main
from youngsim.kernel.hw.vcpu import guest_access
from youngsim.kernel.mm.lru_classic import (FOLIOREF_ACTIVATE, FOLIOREF_KEEP,
                                            FOLIOREF_RECLAIM, LRU_ACTIVE_ANON,
                                            LRU_INACTIVE_ANON, ClassicLruvec, ScanControl,
                                            inactive_ratio, move_folios_to_lru,
                                            prepare_scan_count, shrink_active_list,
                                            shrink_inactive_list, shrink_lruvec,
                                            snapshot_refaults)
from youngsim.kernel.mm.mm import pte_pfn
from youngsim.kernel.mm.page_alloc import KSWAPD, KSWAPD_STOP, KSWAPD_WAKE, SWAP_CLUSTER_MAX
from youngsim.kernel.mm.reclaim import (Lruvec, enable_reclaim, folio_check_references,
                                        kswapd)
from youngsim.kernel.mm.swap import is_swap_pte
from youngsim.kernel.mm.vmscan import LRU_GEN_CORE, lru_gen_enabled
from youngsim.kernel.system import PAGE_SHIFT, PAGE_SIZE
from youngsim.perf import calibration as cal
from youngsim.perf.access_tracking import secondary_young
from youngsim.perf.harness import perf_cost_model
from youngsim.perf.max_guest_memory import Config, run_max_guest_memory
from youngsim.sim import Machine, fetch_or
from youngsim.sim.timed import TimedDriver

INACTIVE, ACTIVE = LRU_INACTIVE_ANON, LRU_ACTIVE_ANON


def check_lists(lru: ClassicLruvec) -> None:
    """A folio is on exactly one list or isolated, never both; the index agrees."""
    on = {}
    for name, lst in lru.lists.items():
        for pfn in lst:
            assert pfn not in on, f"folio {pfn} on {on[pfn]} and {name}"
            on[pfn] = name
    assert on == lru.folio_lru
    assert not (set(on) & lru.isolated)
    assert lru.nr_folios() == len(on)


def add(lru: ClassicLruvec, pfn: int, swapcache: bool = False) -> None:
    ops = list(lru.folio_add_lru(pfn, swapcache))
    assert [op.cost for op in ops] == ["lru_add"]


# -- the lists --------------------------------------------------------------------------

def test_new_and_swapped_in_folios_join_the_inactive_head_marked_referenced():
    lru = ClassicLruvec()
    for pfn in range(4):
        add(lru, pfn, swapcache=pfn == 3)
    assert list(lru.lists[INACTIVE]) == [0, 1, 2, 3] and not lru.lists[ACTIVE]
    assert lru.referenced == {0, 1, 2, 3}  # GUP's mark_page_accessed after the fault
    assert lru.isolate(3, INACTIVE) == [0, 1, 2]  # from the tail, oldest first
    assert lru.isolated == {0, 1, 2} and lru.nr_folios() == 1
    check_lists(lru)
    lru.lruvec_add_folio(1, ACTIVE)
    assert lru.isolated == {0, 2} and lru.folio_lru[1] == ACTIVE
    lru.folio_freed(0)
    assert 0 not in lru.isolated and 0 not in lru.referenced
    with pytest.raises(AssertionError, match="already on"):
        lru.lruvec_add_folio(1, INACTIVE)
    check_lists(lru)


def test_refault_distance_decides_whether_a_swap_in_is_activated():
    """workingset_eviction/workingset_refault: the shadow is the non-resident age at
    eviction; a refault whose distance (evictions and activations since) is at most
    the active anon list's size goes straight to the active list and ages the counter."""
    lru = ClassicLruvec()
    for pfn in range(3):
        lru.lruvec_add_folio(pfn, ACTIVE)  # a workingset of 3 active folios
    shadows = [lru.workingset_eviction(100 + k) for k in range(5)]  # 5 evictions
    assert shadows == [1, 2, 3, 4, 5] and lru.nonresident_age == 5
    # shadow 1: distance 4 > 3 active folios -> inactive; shadow 3: distance 2 -> active
    list(lru.folio_add_lru(200, True, shadows[0]))
    list(lru.folio_add_lru(201, True, shadows[2]))
    assert lru.folio_lru[200] == INACTIVE and lru.folio_lru[201] == ACTIVE
    assert lru.nonresident_age == 6  # the activation aged it
    assert lru.stats["refaults"] == 2 and lru.stats["refault_activated"] == 1
    # a new folio, or a swap-in without a shadow, is never activated
    list(lru.folio_add_lru(202, False, shadows[4]))
    list(lru.folio_add_lru(203, True, None))
    assert lru.folio_lru[202] == lru.folio_lru[203] == INACTIVE
    assert lru.stats["refaults"] == 2
    check_lists(lru)


def test_move_to_the_active_list_ages_and_refaults_trigger_deactivation():
    lru = ClassicLruvec()
    for pfn in range(4):
        lru.lruvec_add_folio(pfn, INACTIVE)
    lru.lruvec_add_folio(9, ACTIVE)
    folios = lru.isolate(2, INACTIVE)
    list(move_folios_to_lru(lru, [(folios[0], ACTIVE), (folios[1], INACTIVE)]))
    assert lru.nonresident_age == 1  # one activation
    sc = ScanControl()
    prepare_scan_count(lru, sc)
    assert not sc.may_deactivate  # 2 inactive, 2 active: not low, no refaults
    lru.lruvec_add_folio(50, ACTIVE)
    assert lru.workingset_refault(lru.nonresident_age)  # distance 0: activated
    prepare_scan_count(lru, sc)
    assert sc.may_deactivate  # "a new workingset is being established"
    snapshot_refaults(lru)
    prepare_scan_count(lru, sc)
    assert not sc.may_deactivate
    snapshot_refaults(Lruvec())  # MGLRU's lists: nothing to snapshot


@pytest.mark.parametrize("pages,ratio", [(0, 1), ((1 << 18) - 1, 1), (1 << 18, 3),
                                         (10 << 18, 10), (250 << 18, 50)])
def test_inactive_ratio_is_int_sqrt_of_ten_times_the_gib(pages, ratio):
    assert inactive_ratio(pages) == ratio


def test_inactive_is_low_below_a_gib_means_fewer_inactive_than_active():
    lru = ClassicLruvec()
    for pfn in range(10):
        add(lru, pfn)
    for pfn in lru.isolate(5, INACTIVE):
        lru.lruvec_add_folio(pfn, ACTIVE)
    assert not lru.inactive_is_low()  # 5 : 5
    pfn = lru.isolate(1, INACTIVE)[0]
    lru.lruvec_add_folio(pfn, ACTIVE)
    assert lru.inactive_is_low()  # 4 : 6
    # 1 GiB and more: the ratio grows (int_sqrt(10 * gb))
    big = ClassicLruvec()
    big.lists[INACTIVE] = dict.fromkeys(range(100_000))
    big.lists[ACTIVE] = dict.fromkeys(range(100_000, 100_000 + 250_000))
    assert (100_000 + 250_000) >> (30 - PAGE_SHIFT) == 1
    assert not big.inactive_is_low()  # 100k * 3 >= 250k
    big.lists[ACTIVE] = dict.fromkeys(range(100_000, 100_000 + 310_000))
    assert big.inactive_is_low()


LIST_OPS = st.lists(st.one_of(
    st.tuples(st.just("add"), st.booleans()),
    st.tuples(st.just("isolate"), st.sampled_from([INACTIVE, ACTIVE]), st.integers(0, 40)),
    st.tuples(st.just("putback"), st.integers(0, 1 << 16), st.sampled_from([INACTIVE, ACTIVE])),
    st.tuples(st.just("free"), st.integers(0, 1 << 16)),
), max_size=80)


@given(LIST_OPS)
def test_a_folio_is_on_exactly_one_list_or_isolated(ops):
    lru = ClassicLruvec()
    live: set[int] = set()
    next_pfn = 0
    for op in ops:
        if op[0] == "add":
            add(lru, next_pfn, op[1])
            live.add(next_pfn)
            assert next(reversed(lru.lists[INACTIVE])) == next_pfn  # the head
            next_pfn += 1
        elif op[0] == "isolate":
            _, name, n = op
            before = list(lru.lists[name])
            out = lru.isolate(n, name)
            assert out == before[:n]  # the tail first, in list order
            assert lru.isolated >= set(out)
        elif op[0] == "putback" and lru.isolated:
            pfn = sorted(lru.isolated)[op[1] % len(lru.isolated)]
            lru.lruvec_add_folio(pfn, op[2])
            assert next(reversed(lru.lists[op[2]])) == pfn
        elif op[0] == "free" and lru.isolated:
            pfn = sorted(lru.isolated)[op[1] % len(lru.isolated)]
            lru.folio_freed(pfn)
            live.discard(pfn)
        check_lists(lru)
        assert set(lru.folio_lru) | lru.isolated == live


# -- folio_check_references and the two shrink functions on a tiny host ---------------

def tiny(design: str = "legacy", npages: int = 8, host: int = 8 * SWAP_CLUSTER_MAX):
    """A host with the classic LRU and room for every page (no reclaim by itself)."""
    m = Machine()
    sys = build_system(m, design, "x86-tdp", npages=npages, nvcpus=1,
                       prefault_primary=False)
    sys.lru_gen_enabled &= ~LRU_GEN_CORE
    enable_reclaim(sys, host, direct_reclaim=False)
    return m, sys


def run_thread(m: Machine, fn, *args):
    """Run one thread to its end on the timed driver (profiled); return its result."""
    out = []

    def body():
        out.append((yield from fn(*args)))

    r = TimedDriver(m, perf_cost_model(), roles={m.spawn(body, name="t"): "kswapd"},
                    sample_period_ns=100).run()
    assert r.stopped == "done" and r.violation is None, r.violation
    return out[0], r


def touch(sys, gfns):
    vcpu = sys.kvms[0].vcpus[0]
    for g in gfns:
        yield from guest_access(sys, vcpu, g, True)


def pfn_of(sys, gfn: int) -> int:
    t, i = sys.mm.pte_slot(sys.mm.start + gfn * PAGE_SIZE)
    return pte_pfn(int(t.data[i]))


def test_enable_reclaim_picks_the_lists_from_the_lru_gen_core_bit():
    m, sys = tiny()
    assert not lru_gen_enabled(sys) and isinstance(sys.mm.lru, ClassicLruvec)
    m2 = Machine()
    sys2 = build_system(m2, "legacy", "x86-tdp", npages=8, nvcpus=1, prefault_primary=False)
    assert lru_gen_enabled(sys2)
    enable_reclaim(sys2, 8 * SWAP_CLUSTER_MAX)
    assert isinstance(sys2.mm.lru, Lruvec)


def test_folio_check_references_looks_twice():
    m, sys = tiny()
    lru = sys.mm.lru

    def scenario():
        yield from touch(sys, [0])  # faulted in: young PTEs, PG_referenced from GUP
        pfn = pfn_of(sys, 0)
        # 1. young PTEs + PG_referenced -> activate (the mark is set again)
        got = [(yield from folio_check_references(sys, pfn)), pfn in lru.referenced]
        # 2. nothing referenced since: reclaim, PG_referenced cleared
        got += [(yield from folio_check_references(sys, pfn)), pfn in lru.referenced]
        # 3. referenced (the flush in 1 emptied the TLB: the walk sets the SPTE's A bit)
        #    without the mark: keep, and mark ("look twice")
        yield from touch(sys, [0])
        got += [(yield from folio_check_references(sys, pfn)), pfn in lru.referenced]
        # 4. referenced again, with the mark: activate
        yield from touch(sys, [0])
        got += [(yield from folio_check_references(sys, pfn)), pfn in lru.referenced]
        return got

    got, r = run_thread(m, scenario)
    assert got == [FOLIOREF_ACTIVATE, True, FOLIOREF_RECLAIM, False,
                   FOLIOREF_KEEP, True, FOLIOREF_ACTIVATE, True]
    assert r.counters["rmap_pages"] == 4 and r.counters["rmap_young"] == 3
    # legacy's classic rmap path: clear_flush_young under mmu_lock, a flush if young
    assert r.counters["tlb_flushes"] == 3
    frames = {f for stack in r.profile.samples for f in stack}
    assert {"folio_check_references", "ptep_clear_flush_young_notify",
            "kvm_mmu_notifier_clear_flush_young"} <= frames
    assert not frames & {"lru_gen_look_around", "should_look_around", "lru_gen_batch",
                         "walk_pte_range"}


def test_shrink_lists_activate_keep_deactivate_and_evict():
    m, sys = tiny(npages=8)
    lru = sys.mm.lru
    zone = sys.mm.zone

    def scenario():
        yield from touch(sys, range(8))
        pfns = [pfn_of(sys, g) for g in range(8)]
        lru.referenced.discard(pfns[1])  # as if never marked by GUP
        sc = ScanControl()
        # inactive tail: 0..3, all young; 1 without PG_referenced is kept, others activated
        yield from shrink_inactive_list(sys, zone, 4, lru, sc)
        s1 = (list(lru.lists[INACTIVE]), list(lru.lists[ACTIVE]), sc.nr_scanned)
        # the active list: every anon folio is deactivated, referenced or not
        yield from touch(sys, [2])  # 2 is young again (TLB flushed by the rmap path)
        yield from shrink_active_list(sys, 2, lru, sc)
        s2 = (list(lru.lists[INACTIVE]), list(lru.lists[ACTIVE]))
        # the inactive tail now: 4..7 (young, marked) -> active
        yield from shrink_inactive_list(sys, zone, 4, lru, sc)
        # then 1 (old, marked), 0 and 2 (deactivated; 0 old, 2 cleared just before)
        freed = yield from shrink_inactive_list(sys, zone, 3, lru, sc)
        s3 = (list(lru.lists[INACTIVE]), list(lru.lists[ACTIVE]), freed)
        return pfns, s1, s2, s3

    (pfns, s1, s2, s3), r = run_thread(m, scenario)
    p = pfns
    assert s1 == ([p[4], p[5], p[6], p[7], p[1]], [p[0], p[2], p[3]], 4)
    assert s2 == ([p[4], p[5], p[6], p[7], p[1], p[0], p[2]], [p[3]])
    assert s3 == ([], [p[3], p[4], p[5], p[6], p[7]], 3)
    st_ = lru.stats
    assert st_ == {"isolated": 11, "activated": 7, "kept": 1, "evicted": 3, "refill": 2,
                   "deactivated": 2, "refaults": 0, "refault_activated": 0}
    # evictions and the activations put on the active list aged the non-resident age
    assert lru.nonresident_age == 3 + 7
    for g in (0, 1, 2):  # evicted: swap entries, rmap dropped, off the LRU
        t, i = sys.mm.pte_slot(sys.mm.start + g * PAGE_SIZE)
        assert is_swap_pte(int(t.data[i])) and p[g] not in sys.mm.rmap
        assert p[g] not in lru.folio_lru and p[g] not in lru.isolated
    assert not lru.isolated and sys.mm.swap.writes == 3
    check_lists(lru)
    stacks = list(r.profile.samples)
    assert any("shrink_active_list" in s and "folio_referenced" in s for s in stacks)
    assert any("shrink_inactive_list" in s and "try_to_unmap_one" in s for s in stacks)


def test_shrink_lruvec_rebalances_when_the_inactive_list_is_low():
    m, sys = tiny(npages=8)
    lru, zone = sys.mm.lru, sys.mm.zone

    def scenario():
        yield from touch(sys, range(8))
        for pfn in lru.isolate(6, INACTIVE):
            lru.lruvec_add_folio(pfn, ACTIVE)
        # priority 12: 2 >> 12 == 6 >> 12 == 0, nothing to scan; the inactive list is
        # low (2 < 6), so shrink_lruvec still deactivates a batch at its end
        sc = ScanControl(priority=12)
        prepare_scan_count(lru, sc)
        got = [sc.may_deactivate, (yield from shrink_lruvec(sys, zone, lru, sc)),
               sc.nr_scanned, lru.lruvec_lru_size(INACTIVE), lru.lruvec_lru_size(ACTIVE)]
        # balanced now (8 : 0): priority 0 scans the whole inactive list, no deactivation
        sc = ScanControl(priority=0)
        prepare_scan_count(lru, sc)
        got += [sc.may_deactivate, (yield from shrink_lruvec(sys, zone, lru, sc)),
                sc.nr_scanned]
        return got

    got, r = run_thread(m, scenario)
    # the second pass found the six deactivated folios old (cleared by
    # shrink_active_list) and marked: reclaimed; the two never-active ones, young and
    # marked: activated, which left the inactive list empty (0 < 2), so the end of
    # shrink_lruvec deactivated them again
    assert got == [True, 0, 0, 8, 0, False, 6, 8]
    assert lru.stats["activated"] == 2 and lru.stats["evicted"] == 6
    assert lru.stats["refill"] == lru.stats["deactivated"] == 6 + 2
    assert (lru.lruvec_lru_size(INACTIVE), lru.lruvec_lru_size(ACTIVE)) == (2, 0)
    check_lists(lru)


NOTIFIER_WALKERS = {"__mmu_notifier_clear_young", "__mmu_notifier_clear_flush_young",
                    "__mmu_notifier_test_clear_young", "__mmu_notifier_test_clear_young_range"}


@pytest.mark.parametrize("design,notifier", [
    ("legacy", "__mmu_notifier_clear_flush_young"),
    ("legacy-noflush", "__mmu_notifier_clear_young"),  # the 2022 no-flush rmap patch
    # its base carries that patch, and its clear_young is test_clear_young(clear, NULL)
    ("yu-v2", "__mmu_notifier_test_clear_young"),
    ("reviewed", "__mmu_notifier_test_clear_young_range"),
    ("upstream-6.12", "__mmu_notifier_clear_flush_young"),  # mainline: MGLRU-only change
    ("upstream", "__mmu_notifier_clear_flush_young"),
])
def test_the_classic_rmap_path_of_each_design(design, notifier):
    m, sys = tiny(design)

    def scenario():
        yield from touch(sys, range(4))
        yield from shrink_active_list(sys, 4, sys.mm.lru, ScanControl())  # empty list
        lru = sys.mm.lru
        for pfn in lru.isolate(4, INACTIVE):
            lru.lruvec_add_folio(pfn, ACTIVE)
        before = secondary_young(sys.kvms[0].arch)[:4].copy()
        yield from shrink_active_list(sys, 4, lru, ScanControl())
        return before

    before, r = run_thread(m, scenario)
    assert before.all()
    frames = {f for stack in r.profile.samples for f in stack}
    assert frames & NOTIFIER_WALKERS == {notifier}
    # no look-around, no batch, no walk: one rmap decision per folio
    assert not frames & {"lru_gen_batch", "lru_gen_look_around", "should_look_around",
                         "walk_pte_range"}
    assert r.counters["rmap_pages"] == 4 and r.counters["rmap_young"] == 4
    assert "look_around_pages" not in r.counters
    assert sys.mm.lru.stats["deactivated"] == 4
    # the secondary MMU's accessed bits were cleared too (the first four pages)
    assert not secondary_young(sys.kvms[0].arch)[:4].any()


# -- reclaim under a faulting vCPU -------------------------------------------------------

def pressure_run(design: str = "legacy", npages: int = 320, host: int = 8 * SWAP_CLUSTER_MAX,
                 passes: int = 2):
    m, sys = tiny(design, npages=npages, host=host)
    sys.mm.zone.direct_reclaim = None
    enable_reclaim(sys, host)  # again, with direct reclaim (the lists stay classic)
    vcpu = sys.kvms[0].vcpus[0]
    zone = sys.mm.zone
    lru = sys.mm.lru

    def one_list_or_isolated(m):
        """After every step: no folio on two lists, none both listed and isolated."""
        if sum(len(x) for x in lru.lists.values()) != len(lru.folio_lru):
            return "a folio is on two lists (or the index is stale)"
        if not lru.isolated.isdisjoint(lru.folio_lru):
            return f"folios both isolated and listed: {lru.isolated & set(lru.folio_lru)}"
        return None

    m.invariant("classic lru lists", one_list_or_isolated)

    def guest():
        for _ in range(passes):
            for g in range(npages):
                yield from guest_access(sys, vcpu, g, True)
        yield fetch_or(zone.ctl, KSWAPD, KSWAPD_WAKE | KSWAPD_STOP, cost="perf_stop")

    roles = {m.spawn(guest, name="vcpu0"): "vcpu",
             m.spawn(kswapd, sys, name="kswapd0"): "kswapd"}
    return sys, TimedDriver(m, perf_cost_model(), roles=roles, sample_period_ns=1000).run()


def test_kswapd_and_direct_reclaim_with_the_classic_lru():
    npages, host = 320, 8 * SWAP_CLUSTER_MAX
    sys, r = pressure_run(npages=npages, host=host)
    assert r.stopped == "done" and r.violation is None  # SPTE invariants held
    mm, lru = sys.mm, sys.mm.lru
    assert isinstance(lru, ClassicLruvec)
    s = lru.stats
    assert s["evicted"] > 0 and s["activated"] > 0 and s["deactivated"] > 0
    assert r.counters["swap_ins"] == mm.swap.reads > 0
    # each folio isolated from the inactive list was activated, kept or evicted; each
    # isolated folio (either list) had one rmap decision
    assert s["isolated"] == s["activated"] + s["kept"] + s["evicted"]
    assert s["refill"] == s["deactivated"]
    assert r.counters["rmap_pages"] == s["isolated"] + s["refill"]
    assert s["evicted"] == r.counters["pages_reclaimed"] == mm.swap.writes
    # the end state: resident folios are exactly the folios on the lists
    ptes = mm.ptes()
    present = [i for i, p in enumerate(ptes) if int(p) & 1]
    assert len(present) + sum(is_swap_pte(int(p)) for p in ptes) == npages
    assert len(present) + mm.zone.nr_free_now() == host
    assert set(mm.rmap) == set(lru.folio_lru) and not lru.isolated
    for pfn in mm.rmap:
        t, i = mm.pte_slot(mm.rmap[pfn])
        assert pte_pfn(int(t.data[i])) == pfn
    check_lists(lru)
    # no MGLRU: no aging walk, no look-around; both lists' shrinkers ran in kswapd
    ks = [stk for stk in r.profile.samples if stk[0] == "[kswapd]"]
    frames = {f for stk in ks for f in stk}
    assert {"balance_pgdat", "shrink_node", "shrink_lruvec", "shrink_list",
            "shrink_inactive_list", "shrink_active_list", "shrink_folio_list",
            "folio_check_references", "try_to_unmap_one", "pageout"} <= frames
    assert not frames & {"walk_mm", "walk_pte_range", "lru_gen_look_around",
                         "try_to_inc_max_seq", "evict_folios"}
    assert "walk_pages" not in r.counters and "look_around_pages" not in r.counters
    assert r.counters["direct_reclaim"] > 0
    # refaults carried the shadows eviction left; slots in use keep theirs
    assert s["refaults"] == r.counters["swap_ins"] and s["refault_activated"] >= 0
    assert set(mm.swap.shadows) <= {int(p) >> 12 for p in ptes if is_swap_pte(int(p))}
    direct = [stk for stk in r.profile.samples if "try_to_free_pages" in stk]
    assert all(stk[0] == "[vcpu]" for stk in direct)
    assert any("shrink_inactive_list" in stk for stk in direct)


# -- the scenario and its command line ---------------------------------------------------

SMALL = dict(vcpus=2, guest_bytes=512 * PAGE_SIZE)


@functools.lru_cache(maxsize=None)
def mgm(design: str = "legacy", lru: str = "classic"):
    return run_max_guest_memory(Config(design=design, mmu="x86-tdp", lru=lru, **SMALL))


def test_max_guest_memory_test_with_mglru_off():
    res = mgm()
    d = res.data
    assert res.ok and d["config"]["lru"] == "classic" and not d["unknown_labels"]
    rc = d["reclaim"]
    assert "lru_gen" not in rc and "lru_gen_seq" not in rc
    lc, lists = rc["lru_classic"], rc["lru_lists_at_end"]
    assert lc["evicted"] > 0 and rc["swap_reads"] > 0 and lc["deactivated"] > 0
    assert rc["swap_writes"] == lc["evicted"] == d["counters"]["pages_reclaimed"]
    assert lc["isolated"] == lc["activated"] + lc["kept"] + lc["evicted"]
    assert d["counters"]["rmap_pages"] == lc["isolated"] + lc["refill"]
    resident = 512 - rc["swap_slots_in_use_at_end"]
    assert lists[INACTIVE] + lists[ACTIVE] == resident
    assert resident + rc["free_at_end"] == 384
    assert d["run2_ns"] > 100 * d["reset_ns"]
    # the same inputs give the same JSON, bit for bit
    again = run_max_guest_memory(Config(design="legacy", mmu="x86-tdp", lru="classic",
                                        **SMALL))
    assert json.dumps(again.data, sort_keys=True) == json.dumps(d, sort_keys=True)
    # and the MGLRU run of the same design is a different run
    assert mgm("legacy", "mglru").data["run2_ns"] != d["run2_ns"]
    assert "lru_gen" in mgm("legacy", "mglru").data["reclaim"]


def test_yu_v2_with_mglru_off_never_calls_its_new_op():
    d = mgm("yu-v2").data
    assert d["ok"] and "lru_classic" in d["reclaim"]
    # the classic path clears with clear_young (the no-flush base), one call per folio
    assert "walk_pages" not in d["counters"] and "look_around_pages" not in d["counters"]
    assert d["counters"]["rmap_pages"] > 0


def run_cli(capsys, *args):
    rc = main(["run", "max_guest_memory_test", *args])
    out, err = capsys.readouterr()
    return rc, out, err


D = ["--design", "legacy", "--mmu", "x86-tdp", "-c", "2", "-m", "2M"]


def test_cli_lru_option(capsys, tmp_path):
    path = tmp_path / "out.json"
    rc, out, err = run_cli(capsys, *D, "--lru", "classic", "--json", str(path))
    assert rc == 0 and err == ""
    assert "design legacy, mmu x86-tdp, lru classic (MGLRU off), -c 2" in out
    assert "deactivated from the active list" in out
    d = json.loads(path.read_text())
    assert d["config"]["lru"] == "classic"
    assert json.dumps(d, sort_keys=True) == json.dumps(mgm().data, sort_keys=True)
    rc, out, err = run_cli(capsys, *D, "--json", str(path))
    assert rc == 0 and "lru mglru, -c 2" in out
    assert json.loads(path.read_text())["config"]["lru"] == "mglru"


@pytest.mark.parametrize("args,needle", [
    (["--lru", "active"], "unknown LRU 'active' for --lru (known: mglru, classic)"),
    (["--lru", ""], "unknown LRU ''"),
])
def test_cli_refuses_a_bad_lru_in_one_line(capsys, args, needle):
    rc, out, err = run_cli(capsys, *D, *args)
    assert rc == 2 and out == "" and err.count("\n") == 1
    assert err.startswith("youngsim: error: ") and needle in err


def test_cli_lru_is_not_an_option_of_access_tracking(capsys):
    rc = main(["run", "access_tracking_perf_test", "--design", "legacy", "--mmu", "x86-tdp",
               "--lru", "classic"])
    out, err = capsys.readouterr()
    assert rc == 2 and out == "" and err.count("\n") == 1
    assert "--lru is not an option of access_tracking_perf_test" in err


# -- the calibration rows ------------------------------------------------------------------

def test_share_within_a_caller():
    from youngsim.sim.profile import Profile
    p = Profile(1000)
    for stack, n in {
        ("[kswapd]", "kswapd", "shrink_inactive_list", "queued_write_lock_slowpath"): 10,
        ("[kswapd]", "kswapd", "shrink_active_list", "queued_write_lock_slowpath"): 30,
        ("[kswapd]", "kswapd", "shrink_active_list", "folio_referenced"): 20,
        ("[kswapd]", "kswapd", "shrink_inactive_list", "pageout"): 40,
        ("[vcpu]", "vcpu", "shrink_active_list", "queued_write_lock_slowpath"): 99,
    }.items():
        p.add(stack, n)
    assert cal.kswapd_share(p, "_raw_write_lock", "shrink_inactive_list") == pytest.approx(10)
    assert cal.kswapd_share(p, "_raw_write_lock", "shrink_active_list") == pytest.approx(30)
    assert cal.kswapd_share(p, "_raw_write_lock") == pytest.approx(40)
    assert cal.kswapd_share(p, "folio_referenced", "shrink_inactive_list") == 0.0


@pytest.fixture(scope="module")
def small_calibration():
    mp = pytest.MonkeyPatch()
    mp.setattr(cal, "VCPUS", 2)
    mp.setattr(cal, "GUEST_BYTES", 2 << 20)
    try:
        yield cal.run_calibration()
    finally:
        mp.undo()


def test_calibration_compares_mglru_off(small_calibration):
    rows, runs, profiles = small_calibration
    off = runs[cal.MGLRU_OFF]
    assert off["ok"] and off["design"] == "legacy" and off["lru"] == "classic"
    assert "lru_classic" in off["reclaim"]
    by = {r["what"]: r for r in rows}
    r = by["max_guest_memory_test run2 (s), v1 MGLRU off/after"]
    assert r["published"] == pytest.approx(5.0)
    assert r["model"] == pytest.approx(off["run2_s"] / runs["yu-v2"]["run2_s"], rel=1e-3)
    assert r["designs"] == f"{cal.MGLRU_OFF} / yu-v2"
    r = by["max_guest_memory_test run2 (s), v1 before/MGLRU off"]
    assert r["published"] == pytest.approx(2.4)
    assert r["model"] == pytest.approx(runs["legacy"]["run2_s"] / off["run2_s"], rel=1e-3)
    parts = {}
    for within, pub in (("shrink_inactive_list", 9.93), ("shrink_active_list", 18.98)):
        r = by[f"kswapd % _raw_write_lock in {within}, v1 MGLRU off"]
        want = cal.kswapd_share(profiles[cal.MGLRU_OFF], "_raw_write_lock", within)
        assert r["published"] == pub and r["model"] == pytest.approx(want, abs=0.01)
        assert r["ratio"] == pytest.approx(r["model"] / pub, rel=1e-2, abs=1e-3)
        parts[within] = want
    total = by["kswapd % _raw_write_lock, v1 MGLRU off (sum of the two)"]
    assert total["published"] == pytest.approx(28.91)
    # a stack holds at most one of the two shrinkers: the parts add up to the total
    assert total["model"] == pytest.approx(sum(parts.values()), abs=0.02)
    text = cal.render(rows, runs)
    assert "MGLRU off/after" in text and "before/MGLRU off" in text
    not_compared = [ln for ln in text.splitlines() if ln.startswith("not compared")]
    assert not any("MGLRU off" in ln or "classic" in ln for ln in not_compared)
    # the MGLRU runs are the scenario's ordinary runs (the preset changes nothing)
    assert runs["legacy"]["lru"] == "mglru" and "lru_gen" in runs["legacy"]["reclaim"]
