"""Host memory pressure pieces: MGLRU generations (``Lruvec``), zone watermarks and
page allocation, the swap device, the look-around window, and kswapd reclaiming under a
faulting vCPU (``kernel/mm/reclaim.py``, ``page_alloc.py``, ``swap.py``, ``vmscan.py``).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from youngsim.check.model import HVA_BASE, build_system
from youngsim.kernel.hw.vcpu import guest_access
from youngsim.kernel.mm.mm import MM, mk_pte, pte_pfn
from youngsim.kernel.mm.page_alloc import (EMPTY, KSWAPD, KSWAPD_STOP, KSWAPD_WAKE, NR_FREE,
                                           SWAP_CLUSTER_MAX, Zone, alloc_page, free_pages,
                                           watermarks)
from youngsim.kernel.mm.reclaim import (MAX_NR_GENS, MIN_NR_GENS, Lruvec, enable_reclaim,
                                        kswapd)
from youngsim.kernel.mm.swap import (SwapDevice, is_swap_pte, swp_entry_to_pte,
                                     swp_offset)
from youngsim.kernel.mm.vmscan import MIN_LRU_BATCH, PMD_SIZE, look_around_window
from youngsim.kernel.system import PAGE_SIZE
from youngsim.perf.harness import perf_cost_model
from youngsim.sim import Machine, fetch_or, wait_until
from youngsim.sim.timed import TimedDriver

_ALL = (1 << 64) - 1


def add(lru: Lruvec, pfn: int, swapcache: bool = False) -> None:
    ops = list(lru.folio_add_lru(pfn, swapcache))  # a generator: one charged nop
    assert len(ops) == 1 and ops[0].cost == "lru_add"


def order(lru: Lruvec) -> list[int]:
    """Every folio, oldest generation first, in list order within a generation."""
    return [p for s in range(lru.min_seq, lru.max_seq + 1) for p in lru.gens[s]]


def check_lruvec(lru: Lruvec) -> None:
    assert sorted(lru.gens) == list(range(lru.min_seq, lru.max_seq + 1))
    assert MIN_NR_GENS <= lru.nr_gens() <= MAX_NR_GENS
    seen: dict[int, int] = {}
    for seq, gen in lru.gens.items():
        for p in gen:
            assert p not in seen, f"folio {p} in generations {seen[p]} and {seq}"
            seen[p] = seq
    assert seen == lru.folio_seq
    assert lru.nr_folios() == len(seen)
    assert all(lru.min_seq <= s <= lru.max_seq for s in seen.values())


# -- Lruvec ---------------------------------------------------------------------------

def test_lruvec_starts_as_lru_gen_init_lruvec():
    lru = Lruvec()
    assert (lru.min_seq, lru.max_seq) == (0, MIN_NR_GENS + 1)
    assert lru.nr_gens() == MAX_NR_GENS and lru.nr_folios() == 0
    assert not lru.should_run_aging()
    assert lru.stats == dict.fromkeys(
        ("aging_passes", "isolated", "activated", "promoted", "evicted",
         "aging_skipped"), 0)
    check_lruvec(lru)


def test_new_anon_folios_join_the_second_youngest_generation():
    lru = Lruvec()
    for pfn in range(5):
        add(lru, pfn)
    assert list(lru.gens[lru.max_seq - 1]) == list(range(5))
    lru.inc_max_seq()
    add(lru, 99)
    assert lru.folio_seq[99] == lru.max_seq - 1 and lru.folio_seq[0] == lru.max_seq - 2
    check_lruvec(lru)


def test_swapcache_folios_join_the_oldest_generation_or_the_second_oldest():
    # lru_gen_folio_seq(): min_seq if min_seq + MIN_NR_GENS >= max_seq, else min_seq + 1
    lru = Lruvec()
    assert lru.nr_gens() == MAX_NR_GENS
    add(lru, 1, swapcache=True)
    assert lru.folio_seq[1] == lru.min_seq + 1 == 1
    assert lru.isolate_folios(1) == [1]  # retires generation 0 on the way
    assert lru.nr_gens() == MIN_NR_GENS + 1
    add(lru, 2, swapcache=True)
    assert lru.folio_seq[2] == lru.min_seq == 1
    assert lru.isolate_folios(1) == [2]
    assert lru.isolate_folios(1) == [] and lru.nr_gens() == MIN_NR_GENS
    add(lru, 3, swapcache=True)
    assert lru.folio_seq[3] == lru.min_seq
    check_lruvec(lru)


def test_inc_max_seq_never_exceeds_max_nr_gens_and_keeps_the_oldest_first():
    lru = Lruvec()
    add(lru, 10)  # generation 2 (max_seq - 1)
    lru.gens[0][1] = None  # an old folio in generation 0, and one in generation 1
    lru.folio_seq[1] = 0
    lru.gens[1][2] = None
    lru.folio_seq[2] = 1
    check_lruvec(lru)
    for k in range(1, 7):
        lru.inc_max_seq()
        assert lru.nr_gens() == MAX_NR_GENS
        assert lru.max_seq == MIN_NR_GENS + 1 + k and lru.stats["aging_passes"] == k
        check_lruvec(lru)
    # folding the oldest generation into the next keeps the oldest folios first in line
    assert order(lru)[:3] == [1, 2, 10]
    assert lru.isolate_folios(2) == [1, 2]


def test_isolate_takes_the_oldest_first_and_retires_empty_generations():
    lru = Lruvec()
    for pfn in range(4):
        add(lru, pfn)  # generation 2
    lru.inc_max_seq()  # generations 1..4 (generation 0 folded into 1)
    add(lru, 4)  # generation 3
    lru.folio_update_gen(1)  # generation 4
    assert order(lru) == [0, 2, 3, 4, 1]
    assert lru.isolate_folios(2) == [0, 2]
    assert lru.min_seq == 2  # generation 1 was empty and retired
    assert lru.stats["isolated"] == 2
    check_lruvec(lru)
    # generation 2 empties and is retired; the youngest two are never evicted
    assert lru.isolate_folios(10) == [3]
    assert lru.nr_gens() == MIN_NR_GENS and lru.should_run_aging()
    assert lru.isolate_folios(10) == [] and lru.nr_gens() == MIN_NR_GENS
    lru.inc_max_seq()  # aging makes a third generation: its oldest can be evicted
    assert lru.isolate_folios(10) == [4]
    assert list(lru.folio_seq) == [1] and lru.nr_gens() == MIN_NR_GENS
    check_lruvec(lru)


def test_isolate_stops_at_min_nr_gens_when_the_oldest_is_empty():
    lru = Lruvec()
    for s in range(lru.min_seq, lru.max_seq - 1):
        lru.gens.pop(s)
    lru.min_seq = lru.max_seq - 1  # two generations, the older one empty
    lru.gens[lru.max_seq][5] = None
    lru.folio_seq[5] = lru.max_seq
    assert lru.should_run_aging()
    assert lru.isolate_folios(32) == []
    assert lru.nr_gens() == MIN_NR_GENS and lru.folio_seq[5] == lru.max_seq


def test_should_run_aging_iff_only_min_nr_gens_generations():
    lru = Lruvec()
    states = []
    for _ in range(3):
        lru.isolate_folios(1)  # retires empty generations while more than MIN remain
        states.append((lru.nr_gens(), lru.should_run_aging()))
    assert states == [(MIN_NR_GENS, True)] * 3
    lru.inc_max_seq()
    assert (lru.nr_gens(), lru.should_run_aging()) == (MIN_NR_GENS + 1, False)


def test_folio_update_gen_promotes_to_the_youngest_once():
    lru = Lruvec()
    add(lru, 1)
    lru.folio_update_gen(1)
    assert lru.folio_seq[1] == lru.max_seq and lru.stats["promoted"] == 1
    lru.folio_update_gen(1)  # already youngest: no move, no count
    lru.folio_update_gen(2)  # not on the LRU (isolated, or never added): ignored
    assert lru.stats["promoted"] == 1 and 2 not in lru.folio_seq
    check_lruvec(lru)


def test_folio_activate_puts_an_isolated_folio_back_youngest():
    lru = Lruvec()
    add(lru, 1)
    add(lru, 2)
    lru.gens[0][3] = None
    lru.folio_seq[3] = 0
    assert lru.nr_gens() > MIN_NR_GENS
    assert lru.isolate_folios(2) == [3]  # generation 0; 1 and 2 (in gen 2) stay
    lru.folio_activate(3)
    assert lru.folio_seq[3] == lru.max_seq and order(lru)[-1] == 3
    lru.inc_max_seq()
    lru.inc_max_seq()  # generations 2..5: 1 and 2 are now the oldest
    assert lru.isolate_folios(1) == [1]
    lru.folio_activate(1)
    assert lru.folio_seq[1] == lru.max_seq and lru.stats["activated"] == 2
    assert order(lru)[-1] == 1
    check_lruvec(lru)


def test_eviction_never_takes_folios_from_the_two_youngest_generations():
    lru = Lruvec()
    for pfn in range(100):
        add(lru, pfn)  # freshly faulted: max_seq - 1; generations 0 and 1 are empty
    assert not lru.should_run_aging()
    seq = dict(lru.folio_seq)
    out = lru.isolate_folios(SWAP_CLUSTER_MAX)
    assert all(seq[p] <= lru.max_seq - MIN_NR_GENS for p in out)


OPS = st.lists(st.one_of(
    st.tuples(st.just("add"), st.booleans()),
    st.tuples(st.just("update"), st.integers(0, 1 << 16)),
    st.tuples(st.just("isolate"), st.integers(0, 12), st.integers(0, (1 << 12) - 1)),
    st.tuples(st.just("inc")),
), max_size=80)


@given(OPS)
def test_lruvec_invariants_under_random_operations(ops):
    lru = Lruvec()
    live: set[int] = set()
    next_pfn = 0
    n_isolated = n_activated = n_aging = 0
    for op in ops:
        if op[0] == "add":
            swapcache = op[1]
            gens_before = lru.nr_gens()
            add(lru, next_pfn, swapcache)
            want = (lru.max_seq - 1 if not swapcache else
                    lru.min_seq if gens_before <= MIN_NR_GENS + 1 else lru.min_seq + 1)
            assert lru.folio_seq[next_pfn] == want
            live.add(next_pfn)
            next_pfn += 1
        elif op[0] == "update":
            if not live:
                continue
            pfn = sorted(live)[op[1] % len(live)]
            was, promoted = lru.folio_seq[pfn], lru.stats["promoted"]
            lru.folio_update_gen(pfn)
            assert lru.folio_seq[pfn] == lru.max_seq
            assert lru.stats["promoted"] == promoted + (was != lru.max_seq)
        elif op[0] == "isolate":
            n, keep = op[1], op[2]
            before = order(lru)
            before_seq = dict(lru.folio_seq)
            out = lru.isolate_folios(n)
            assert out == before[:len(out)]  # the oldest first, in list order
            assert len(out) <= n
            if len(out) < n:
                # stopped early: only the two youngest generations are left
                assert lru.nr_gens() == MIN_NR_GENS
            for pfn in out:  # never from the two youngest generations
                assert before_seq[pfn] <= lru.max_seq - MIN_NR_GENS
            for k, pfn in enumerate(out):
                assert pfn not in lru.folio_seq
                if keep >> k & 1:
                    lru.folio_activate(pfn)
                    assert lru.folio_seq[pfn] == lru.max_seq
                    n_activated += 1
                else:
                    live.discard(pfn)  # evicted
            n_isolated += len(out)
        else:
            max_before, min_before, gens_before = lru.max_seq, lru.min_seq, lru.nr_gens()
            oldest = list(lru.gens[lru.min_seq])
            lru.inc_max_seq()
            n_aging += 1
            assert lru.max_seq == max_before + 1 and not lru.gens[lru.max_seq]
            if gens_before >= MAX_NR_GENS:
                assert lru.min_seq == min_before + 1
                assert list(lru.gens[lru.min_seq])[:len(oldest)] == oldest
            else:
                assert lru.min_seq == min_before
        check_lruvec(lru)
        assert set(lru.folio_seq) == live
        assert lru.should_run_aging() == (lru.nr_gens() == MIN_NR_GENS)
    assert lru.stats["isolated"] == n_isolated
    assert lru.stats["activated"] == n_activated
    assert lru.stats["aging_passes"] == n_aging


# -- watermarks and the zone ----------------------------------------------------------

@given(st.integers(8 * SWAP_CLUSTER_MAX, 1 << 28))
def test_watermarks_are_ordered_with_a_batch_between_them(n):
    wmin, low, high = watermarks(n)
    assert 0 < wmin < low < high < n
    assert low - wmin >= SWAP_CLUSTER_MAX and high - low >= SWAP_CLUSTER_MAX
    assert low - wmin == high - low  # low = min + gap, high = min + 2 gap
    assert wmin >= n // 1000 and high - low >= n // 1000


def small_system(npages: int = 8, design: str = "yu-v2", mmu: str = "x86-tdp"):
    m = Machine()
    sys = build_system(m, design, mmu, npages=npages, nvcpus=1, prefault_primary=False)
    return m, sys


def test_zone_refuses_too_few_frames():
    _, sys = small_system()
    with pytest.raises(ValueError, match=f"at least {8 * SWAP_CLUSTER_MAX} frames"):
        Zone(sys, 8 * SWAP_CLUSTER_MAX - 1)
    z = Zone(sys, 8 * SWAP_CLUSTER_MAX)
    assert z.nr_free_now() == 8 * SWAP_CLUSTER_MAX and int(z.ctl[EMPTY]) == 0
    assert (z.wmark_min, z.wmark_low, z.wmark_high) == watermarks(8 * SWAP_CLUSTER_MAX)


def test_enable_reclaim_gives_the_mm_a_zone_swap_and_lru():
    _, sys = small_system()
    assert sys.mm.zone is None and sys.mm.swap is None and sys.mm.lru is None
    enable_reclaim(sys, 300)
    assert sys.mm.zone.nr_pages == 300 and sys.mm.swap.in_use == 0
    assert sys.mm.lru.nr_folios() == 0


def run_threads(m: Machine, *threads) -> object:
    for fn, args in threads:
        m.spawn(fn, *args)
    return TimedDriver(m, perf_cost_model()).run()


@pytest.mark.parametrize("extra,woken", [(0, False), (1, True)])
def test_allocation_wakes_kswapd_below_the_low_watermark(extra, woken):
    m, sys = small_system()
    enable_reclaim(sys, 256, direct_reclaim=False)
    zone = sys.mm.zone

    def taker(k):
        for _ in range(k):
            yield from alloc_page(zone)

    r = run_threads(m, (taker, (256 - zone.wmark_low + extra,)))
    assert r.stopped == "done"
    assert zone.nr_free_now() == zone.wmark_low - extra
    assert bool(int(zone.ctl[KSWAPD]) & KSWAPD_WAKE) is woken


def test_allocation_sleeps_while_no_frame_is_free():
    m, sys = small_system()
    enable_reclaim(sys, 256, direct_reclaim=False)
    zone = sys.mm.zone
    assert zone.floor == 0
    done = []

    def taker():
        for _ in range(257):
            yield from alloc_page(zone)
        done.append("taker")

    r = run_threads(m, (taker, ()))
    # nobody frees a frame (no kswapd here): the 257th allocation sleeps forever
    assert r.stopped == "deadlock" and "zone" in r.violation.message and done == []
    assert zone.nr_free_now() == 0 and int(zone.ctl[EMPTY]) == 1

    m, sys = small_system()
    enable_reclaim(sys, 256, direct_reclaim=False)
    zone = sys.mm.zone

    def freer():
        yield wait_until(zone.ctl, EMPTY, _ALL, 1, cost="perf_wait_kick")
        yield from free_pages(zone, 3)
        done.append("freer")

    r = run_threads(m, (taker, ()), (freer, ()))
    assert r.stopped == "done" and done == ["freer", "taker"]
    assert zone.nr_free_now() == 2 and int(zone.ctl[EMPTY]) == 0
    assert int(zone.ctl[NR_FREE]) == 2


def test_kswapd_exits_on_stop_without_reclaiming():
    m, sys = small_system()
    enable_reclaim(sys, 256)
    zone = sys.mm.zone

    def stopper():
        yield fetch_or(zone.ctl, KSWAPD, KSWAPD_WAKE | KSWAPD_STOP, cost="perf_stop")

    r = run_threads(m, (kswapd, (sys,)), (stopper, ()))
    assert r.stopped == "done" and sys.mm.lru.stats["aging_passes"] == 0
    assert zone.nr_free_now() == 256


# -- the swap device ------------------------------------------------------------------

@given(st.integers(1, (1 << 40) - 1))
def test_swap_entries_round_trip_and_are_not_present(slot):
    pte = swp_entry_to_pte(slot)
    assert is_swap_pte(pte) and not pte & 1 and swp_offset(pte) == slot
    assert not is_swap_pte(mk_pte(slot, write=True)) and not is_swap_pte(0)


def test_swap_slots_are_unique_and_reused_after_swap_in():
    _, sys = small_system()
    swap = SwapDevice(sys)
    a, b, c = (swap.get_swap_page() for _ in range(3))
    assert len({a, b, c}) == 3 and 0 not in {a, b, c} and swap.in_use == 3
    swap.swap_free(b)
    assert swap.in_use == 2
    assert swap.get_swap_page() == b and swap.in_use == 3
    assert swap.get_swap_page() not in {a, b, c}


# -- lru_gen_look_around's window -----------------------------------------------------

_, _SYS = small_system()


@given(first=st.integers(0, 1023), npages=st.integers(1, 1500), at=st.integers(0, 1 << 20))
def test_look_around_window(first, npages, at):
    mm = MM(_SYS, HVA_BASE + first * PAGE_SIZE, npages, prefault=False)
    addr = mm.start + (at % npages) * PAGE_SIZE
    lo, hi = look_around_window(mm, addr)
    pmd = addr & ~(PMD_SIZE - 1)
    clip_lo, clip_hi = max(pmd, mm.start), min(pmd + PMD_SIZE, mm.end)
    assert lo % PAGE_SIZE == 0 and hi % PAGE_SIZE == 0
    assert clip_lo <= lo <= addr < hi <= clip_hi  # within the PMD and the VMA
    if clip_hi - clip_lo <= MIN_LRU_BATCH * PAGE_SIZE:
        assert (lo, hi) == (clip_lo, clip_hi)
    else:
        assert hi - lo == MIN_LRU_BATCH * PAGE_SIZE


@pytest.mark.parametrize("first,npages", [(0, 1), (0, 64), (100, 64), (448, 64), (3, 17)])
def test_look_around_window_covers_a_small_vma_inside_one_pmd(first, npages):
    mm = MM(_SYS, HVA_BASE + first * PAGE_SIZE, npages, prefault=False)
    for k in range(npages):
        assert look_around_window(mm, mm.start + k * PAGE_SIZE) == (mm.start, mm.end)


def test_look_around_window_is_centred_in_a_large_vma():
    mm = MM(_SYS, HVA_BASE, 512, prefault=False)
    half = MIN_LRU_BATCH // 2 * PAGE_SIZE
    assert look_around_window(mm, mm.start) == (mm.start, mm.start + 2 * half)
    mid = mm.start + 200 * PAGE_SIZE
    assert look_around_window(mm, mid) == (mid - half, mid + half)
    last = mm.end - PAGE_SIZE
    assert look_around_window(mm, last) == (mm.end - 2 * half, mm.end)


# -- kswapd against a faulting vCPU, with the SPTE invariants checked at every step ----

def direct_reclaim_run(design: str, mmu: str, npages: int, host: int, passes: int = 2,
                       direct: bool = True, with_kswapd: bool = True):
    m, sys = small_system(npages, design, mmu)
    enable_reclaim(sys, host, direct_reclaim=direct)
    vcpu = sys.kvms[0].vcpus[0]
    zone = sys.mm.zone
    floor = zone.floor
    m.invariant("zone floor", lambda m: None if zone.nr_free_now() >= floor else
                f"{zone.nr_free_now()} free frames, below the floor {floor}")

    def guest():
        for _ in range(passes):
            for g in range(npages):
                yield from guest_access(sys, vcpu, g, True)
        yield fetch_or(zone.ctl, KSWAPD, KSWAPD_WAKE | KSWAPD_STOP, cost="perf_stop")

    roles = {m.spawn(guest, name="vcpu0"): "vcpu"}
    if with_kswapd:
        roles[m.spawn(kswapd, sys, name="kswapd0")] = "kswapd"
    return sys, TimedDriver(m, perf_cost_model(), roles=roles, sample_period_ns=1000).run()


def test_direct_reclaim_alone_keeps_a_faulting_vcpu_going_above_the_min_watermark():
    npages, host = 320, 8 * SWAP_CLUSTER_MAX
    # no kswapd and no direct reclaim: the first allocation on an empty zone sleeps forever
    _, r = direct_reclaim_run("yu-v2", "x86-tdp", npages, host, direct=False,
                              with_kswapd=False)
    assert r.stopped == "deadlock" and "zone" in r.violation.message
    # no kswapd, direct reclaim: the vCPU frees frames itself and never goes below min
    sys, r = direct_reclaim_run("yu-v2", "x86-tdp", npages, host, with_kswapd=False)
    assert r.stopped == "done" and r.violation is None  # the floor invariant held
    zone, lru = sys.mm.zone, sys.mm.lru
    assert zone.floor == zone.wmark_min > 0 and r.counters["direct_reclaim"] > 0
    assert lru.stats["evicted"] == r.counters["pages_reclaimed"] > 0
    assert lru.stats["aging_passes"] > 0 and r.counters["swap_ins"] > 0
    # the reclaim ran in the vCPU's fault path, below the allocation
    stacks = [st for st in r.profile.samples if "try_to_free_pages" in st]
    assert stacks and all(st[0] == "[vcpu]" for st in stacks)
    assert all(st.index("alloc_page") < st.index("try_to_free_pages") for st in stacks)
    assert all(st.index("try_to_free_pages") < st.index("shrink_node")
               for st in stacks if "shrink_node" in st)
    assert any("folio_referenced" in st for st in stacks)


def test_only_one_reclaimer_walks_the_mm_at_a_time():
    _, sys = small_system()
    enable_reclaim(sys, 256)
    lru = sys.mm.lru
    from youngsim.kernel.mm.reclaim import try_to_inc_max_seq
    lru.walking = True  # another reclaimer is between two operations of its walk
    assert list(try_to_inc_max_seq(sys)) == []  # this one skips aging: no operation
    assert lru.stats["aging_skipped"] == 1 and lru.stats["aging_passes"] == 0
    lru.walking = False
    m = sys.m
    seen = []

    def reclaimer():
        yield from try_to_inc_max_seq(sys)
        seen.append(lru.walking)

    r = run_threads(m, (reclaimer, ()))
    assert r.stopped == "done" and seen == [False]
    assert lru.stats["aging_passes"] == 1 and lru.stats["aging_skipped"] == 1


@pytest.mark.parametrize("design,mmu", [("yu-v2", "x86-tdp"), ("legacy", "arm64")])
def test_kswapd_reclaims_under_a_faulting_vcpu(design, mmu):
    npages, host = 320, 8 * SWAP_CLUSTER_MAX
    sys, r = direct_reclaim_run(design, mmu, npages, host)
    assert r.stopped == "done" and r.violation is None  # invariants held at every step
    mm, lru = sys.mm, sys.mm.lru
    assert lru.stats["evicted"] > 0 and lru.stats["aging_passes"] > 0
    # the second pass refaulted what the first one lost to swap
    assert r.counters["swap_ins"] == mm.swap.reads > 0
    assert r.counters["vcpu_faults"] >= npages + r.counters["swap_ins"]
    ptes = mm.ptes()
    present = int(np.count_nonzero(ptes & np.uint64(1)))
    swapped = sum(is_swap_pte(int(p)) for p in ptes)
    assert present + swapped == npages
    assert present + mm.zone.nr_free_now() == host
    assert swapped == mm.swap.in_use == mm.swap.writes - mm.swap.reads
    assert set(mm.rmap) == set(lru.folio_seq) and len(mm.rmap) == present
    for pfn, addr in mm.rmap.items():
        t, i = mm.pte_slot(addr)
        assert pte_pfn(int(t.data[i])) == pfn
    assert lru.stats["isolated"] == lru.stats["activated"] + lru.stats["evicted"]
    assert r.label_counts["kswapd_wakeup"] > 0 and r.label_counts["lru_add"] >= npages
