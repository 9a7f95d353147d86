"""Reclaim: kswapd, the multi-gen LRU's generations and eviction (the reclaim half of
``mm/vmscan.c``), and ``try_to_unmap_one`` (``mm/rmap.c``).

This is where the aging callers of ``vmscan.py`` run under memory pressure, as in the
2023 series' ``max_guest_memory_test`` figures: kswapd wakes below the low watermark and
reclaims until the high one, each round either *aging* (``try_to_inc_max_seq``: a new
generation, then ``walk_mm``, which calls ``walk_pte_range`` per leaf table, the design's
way) or *evicting* a batch of ``SWAP_CLUSTER_MAX`` folios from the oldest generation
(``evict_folios`` -> ``shrink_folio_list``: ``folio_referenced`` on each, the design's
rmap path with look-around; a referenced folio is promoted, the others are unmapped
(the mmu_notifier invalidation zaps the secondary MMU's entry), written to swap and
freed).

The generations (``struct lru_gen_folio``) are kernel bookkeeping kept in Python dicts,
each change charged by a labelled ``nop``: only kswapd and the faulting threads touch
them, and the timed driver runs one step at a time, so they are consistent; the checker
does not explore them (its scenarios have unlimited memory and no LRU).

Direct reclaim (``try_to_free_pages``) is the same ``shrink_node`` run by a faulting task
whose allocation found the zone at its min watermark (``page_alloc.py``). Reclaimers
run concurrently: isolation takes folios off the lists between two operations (the
kernel's ``lru_lock``), so no two reclaim the same folio, and only one of them walks the
mm for a new generation at a time (``iterate_mm_list`` hands the mm to one walker; the
others skip aging and evict).

With MGLRU off (``lru_gen_enabled()`` false: the core bit of ``System.lru_gen_enabled``
clear when reclaim is enabled) the mm gets the classic active/inactive lists instead
(``lru_classic.py``): ``shrink_node`` -> ``shrink_lruvec`` -> ``shrink_list`` ->
``shrink_active_list`` / ``shrink_inactive_list``, whose eviction is this file's
``shrink_folio_list`` (with ``folio_check_references``' ``PG_referenced`` rule),
``try_to_unmap_one`` and ``pageout``; kswapd and direct reclaim then scan at decreasing
priorities (``ScanControl``), as ``balance_pgdat`` and ``do_try_to_free_pages`` do.

Left out, and why: the file LRU and the anon/file balance (a VM's
memory is one swap-backed shmem file); for MGLRU, refault tracking (``lru_gen_refault``),
tiers and the PID controller (one tier). The classic LRU has the refault distance
(``workingset_refault``, ``lru_classic.py``): eviction leaves a shadow in the swap slot.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Generator

from ...sim import Op, fetch_and, load, nop, wait_until, xchg
from ..system import PAGE_SIZE
from .lru_classic import (DEF_PRIORITY, FOLIOREF_ACTIVATE, FOLIOREF_KEEP, FOLIOREF_RECLAIM,
                          ClassicLruvec, ScanControl, kswapd_age_node, prepare_scan_count,
                          shrink_lruvec, snapshot_refaults)
from .mm import PTRS_PER_PTE
from .mmu_notifier import (mmu_notifier_invalidate_range_end,
                           mmu_notifier_invalidate_range_start)
from .page_alloc import (KSWAPD, KSWAPD_STOP, KSWAPD_WAKE, NR_FREE, SWAP_CLUSTER_MAX, Zone,
                         free_pages)
from .swap import SwapDevice, swap_writepage, swp_entry_to_pte
from .vmscan import folio_referenced, lru_gen_enabled, walk_pte_range

if TYPE_CHECKING:
    from ..system import System
    from .mm import MM

Gen = Generator[Op, Any, Any]

MIN_NR_GENS = 2  # include/linux/mmzone.h
MAX_NR_GENS = 4


class Lruvec:
    """One memcg's MGLRU lists for the VM's (swap-backed) folios: generations
    ``min_seq..max_seq``, each an insertion-ordered set of pfns."""

    def __init__(self) -> None:
        self.min_seq = 0
        self.max_seq = MIN_NR_GENS + 1  # lru_gen_init_lruvec
        self.gens: dict[int, dict[int, None]] = {s: {} for s in range(self.max_seq + 1)}
        self.folio_seq: dict[int, int] = {}
        self.stats = {"aging_passes": 0, "isolated": 0, "activated": 0, "promoted": 0,
                      "evicted": 0, "aging_skipped": 0}
        #: a reclaimer is walking the mm for a new generation (``lru_gen_mm_state``)
        self.walking = False

    def nr_gens(self) -> int:
        return self.max_seq - self.min_seq + 1

    def nr_folios(self) -> int:
        return len(self.folio_seq)

    def _move(self, pfn: int, seq: int) -> None:
        old = self.folio_seq.get(pfn)
        if old is not None:
            del self.gens[old][pfn]
        self.gens[seq][pfn] = None
        self.folio_seq[pfn] = seq

    # -- the kernel operations (each charged by its caller's op) ------------------------
    def folio_add_lru(self, pfn: int, swapcache: bool, shadow: int | None = None) -> Gen:
        """``lru_gen_add_folio``: a freshly faulted anon folio goes to the second
        youngest generation; one read back from swap (in the swap cache) to the oldest,
        or the second oldest if there are more than ``MIN_NR_GENS``. (``shadow``: MGLRU's
        refault tracking, ``lru_gen_refault``, feeds tiers, which are not modelled.)"""
        yield nop(cost="lru_add")
        if not swapcache:
            seq = self.max_seq - 1
        elif self.min_seq + MIN_NR_GENS >= self.max_seq:
            seq = self.min_seq
        else:
            seq = self.min_seq + 1
        self._move(pfn, seq)

    def workingset_eviction(self, pfn: int) -> int | None:
        """MGLRU's ``lru_gen_eviction`` shadow (generation and tier) is not modelled."""
        return None

    def folio_update_gen(self, pfn: int) -> None:
        """The walk or look-around found the folio young: to the youngest generation
        (charged by the walk's own PTE operations, as the kernel's is a flag update)."""
        if pfn in self.folio_seq and self.folio_seq[pfn] != self.max_seq:
            self._move(pfn, self.max_seq)
            self.stats["promoted"] += 1

    def folio_activate(self, pfn: int) -> None:
        """``shrink_folio_list`` found the folio referenced: put it back, youngest."""
        self.gens[self.max_seq][pfn] = None
        self.folio_seq[pfn] = self.max_seq
        self.stats["activated"] += 1

    def inc_max_seq(self) -> None:
        """``inc_max_seq``: a new youngest generation; with ``MAX_NR_GENS`` already, the
        oldest is first folded into the next (``inc_min_seq``)."""
        if self.nr_gens() >= MAX_NR_GENS:
            self._inc_min_seq()
        self.max_seq += 1
        self.gens[self.max_seq] = {}
        self.stats["aging_passes"] += 1

    def _inc_min_seq(self) -> None:
        old = self.gens.pop(self.min_seq)
        self.min_seq += 1
        nxt = self.gens[self.min_seq]
        for pfn in old:
            self.folio_seq[pfn] = self.min_seq
        # the oldest folios stay first in line (kernel: moved to the head's tail)
        merged = dict(old)
        merged.update(nxt)
        self.gens[self.min_seq] = merged

    def should_run_aging(self) -> bool:
        """``should_run_aging``: eviction needs more than ``MIN_NR_GENS`` generations."""
        return self.min_seq + MIN_NR_GENS > self.max_seq

    def isolate_folios(self, n: int) -> list[int]:
        """``isolate_folios``: up to ``n`` folios from the oldest generation; an emptied
        oldest generation is retired (``try_to_inc_min_seq``). The ``MIN_NR_GENS``
        youngest generations are never evicted (``scan_folios`` returns 0 once only they
        remain): then nothing is isolated and the caller must age first."""
        out: list[int] = []
        while len(out) < n and self.nr_gens() > MIN_NR_GENS:
            gen = self.gens[self.min_seq]
            if not gen:
                self.gens.pop(self.min_seq)
                self.min_seq += 1
                continue
            pfn = next(iter(gen))
            del gen[pfn]
            del self.folio_seq[pfn]
            out.append(pfn)
        self.stats["isolated"] += len(out)
        return out


def enable_reclaim(sys: "System", host_pages: int, direct_reclaim: bool = True) -> None:
    """Give the host ``host_pages`` frames, a swap device and LRU lists (MGLRU's
    generations, or the classic active/inactive lists if ``lru_gen_enabled()`` is false);
    with ``direct_reclaim``, allocations at the min watermark reclaim by themselves."""
    mm = sys.mm
    zone = mm.zone = Zone(sys, host_pages)
    mm.swap = SwapDevice(sys)
    mm.lru = Lruvec() if lru_gen_enabled(sys) else ClassicLruvec()
    if direct_reclaim:
        zone.direct_reclaim = lambda: try_to_free_pages(sys, zone)


def try_to_free_pages(sys: "System", zone: Zone) -> Gen:
    """Direct reclaim (``__alloc_pages_direct_reclaim`` -> ``try_to_free_pages`` ->
    ``do_try_to_free_pages``) in the allocating task: ``shrink_node`` at each priority
    from ``DEF_PRIORITY`` down to 0 until a batch (``SWAP_CLUSTER_MAX``) is reclaimed;
    returns the frames reclaimed (0: no progress, the caller throttles)."""
    yield nop(cost="direct_reclaim_enter")
    sys.count("direct_reclaim")
    sc = ScanControl(nr_to_reclaim=SWAP_CLUSTER_MAX)
    for priority in range(DEF_PRIORITY, -1, -1):
        sc.priority = priority
        sc.nr_scanned = 0
        yield from shrink_node(sys, zone, sc)
        if sc.nr_reclaimed >= sc.nr_to_reclaim or not sys.mm.lru.nr_folios():
            break
    snapshot_refaults(sys.mm.lru)
    return sc.nr_reclaimed


# -- kswapd ---------------------------------------------------------------------------

def kswapd(sys: "System") -> Gen:
    """The kswapd kthread: sleep until woken, balance the node, until stopped."""
    zone: Zone = sys.mm.zone
    while True:
        w = yield from kswapd_try_to_sleep(zone)
        if w & KSWAPD_STOP:
            return
        yield from balance_pgdat(sys, zone)


def kswapd_try_to_sleep(zone: Zone) -> Gen:
    """Sleep on ``pgdat->kswapd_wait`` until a wake-up is pending, then consume it."""
    w = yield wait_until(zone.ctl, KSWAPD, KSWAPD_WAKE, KSWAPD_WAKE, cost="kswapd_sleep")
    yield fetch_and(zone.ctl, KSWAPD, ~KSWAPD_WAKE, cost="kswapd_wakeup")
    return w


def balance_pgdat(sys: "System", zone: Zone) -> Gen:
    """Reclaim until the free frames reach the high watermark (or nothing is left).

    With the classic LRU, as the kernel's loop: at each priority from ``DEF_PRIORITY``
    down, ``kswapd_age_node`` then ``kswapd_shrink_node`` (``nr_to_reclaim`` is the high
    watermark, at least ``SWAP_CLUSTER_MAX``); the priority is raised (its number
    lowered) when fewer folios than that were scanned or none was reclaimed. Past
    priority 1 unbalanced, kswapd runs ``balance_pgdat`` again without sleeping
    (``prepare_kswapd_sleep`` is false): the priority starts over. MGLRU's
    ``lru_gen_shrink_node`` evicts one batch per ``shrink_node`` whatever the priority."""
    lru = sys.mm.lru
    classic = isinstance(lru, ClassicLruvec)
    sc = ScanControl(nr_to_reclaim=max(zone.wmark_high, SWAP_CLUSTER_MAX), kswapd=True)
    while True:
        free = yield load(zone.ctl, NR_FREE, cost="zone_counter_read")
        if free >= zone.wmark_high or not lru.nr_folios():
            snapshot_refaults(lru)
            return
        if not classic:
            yield from shrink_node(sys, zone, sc)
            continue
        yield from kswapd_age_node(sys, sc)
        sc.nr_scanned = 0
        nr_reclaimed = sc.nr_reclaimed
        yield from shrink_node(sys, zone, sc)  # kswapd_shrink_node
        raise_priority = sc.nr_scanned < sc.nr_to_reclaim
        if raise_priority or sc.nr_reclaimed == nr_reclaimed:
            sc.priority -= 1
            if sc.priority < 1:
                sc.priority = DEF_PRIORITY


def shrink_node(sys: "System", zone: Zone, sc: ScanControl | None = None) -> Gen:
    """``shrink_node``. MGLRU: ``lru_gen_shrink_node`` -> ``try_to_shrink_lruvec``: age if
    eviction has too few generations, then evict one batch. Classic LRU:
    ``prepare_scan_count``, then ``shrink_node_memcgs`` -> ``shrink_lruvec`` (one lruvec).
    Returns the frames reclaimed (also added to ``sc.nr_reclaimed``)."""
    if sc is None:
        sc = ScanControl()
    lru = sys.mm.lru
    if isinstance(lru, ClassicLruvec):
        prepare_scan_count(lru, sc)
        reclaimed = yield from shrink_lruvec(sys, zone, lru, sc)
    else:
        if lru.should_run_aging():
            yield from try_to_inc_max_seq(sys)
        reclaimed = yield from evict_folios(sys, zone, SWAP_CLUSTER_MAX)
    sc.nr_reclaimed += reclaimed
    return reclaimed


def try_to_inc_max_seq(sys: "System") -> Gen:
    """A new generation, then the page-table walk that promotes young folios into it;
    nothing if another reclaimer is walking already."""
    lru: Lruvec = sys.mm.lru
    if lru.walking:
        lru.stats["aging_skipped"] += 1
        return
    lru.walking = True
    yield nop(cost="lru_gen_inc_seq")
    lru.inc_max_seq()
    try:
        yield from walk_mm(sys, sys.mm)
    finally:
        lru.walking = False


def walk_mm(sys: "System", mm: "MM") -> Gen:
    """``walk_mm``: every leaf table of the VMA (the PMD level is not modelled)."""
    step = PTRS_PER_PTE * PAGE_SIZE
    for a in range(mm.start, mm.end, step):
        yield from walk_pte_range(sys, mm, a, min(mm.end, a + step))


def evict_folios(sys: "System", zone: Zone, n: int) -> Gen:
    """Isolate up to ``n`` folios from the oldest generation and try to reclaim them."""
    lru: Lruvec = sys.mm.lru
    folios = lru.isolate_folios(n)
    if folios:
        yield nop(cost="lru_isolate")
    return (yield from shrink_folio_list(sys, zone, folios))


def shrink_folio_list(sys: "System", zone: Zone, folios: list[int],
                      ret_folios: list[tuple[int, str]] | None = None) -> Gen:
    """For each isolated folio, ``folio_check_references``: reclaim -> unmapped, written
    to swap and freed; else kept. MGLRU promotes a kept folio at once
    (``folio_activate``); with ``ret_folios`` (the classic LRU) each kept folio is
    appended with its verdict (``FOLIOREF_ACTIVATE`` or ``FOLIOREF_KEEP``) for the
    caller's ``move_folios_to_lru``. Returns the number reclaimed."""
    mm = sys.mm
    lru = mm.lru
    reclaimed = 0
    for pfn in folios:
        references = yield from folio_check_references(sys, pfn)
        if references != FOLIOREF_RECLAIM:
            if ret_folios is None:
                lru.folio_activate(pfn)
            else:
                ret_folios.append((pfn, references))
            continue
        slot = yield from try_to_unmap_one(sys, mm, pfn)
        yield from pageout(mm.swap)
        shadow = lru.workingset_eviction(pfn)  # __remove_mapping
        if shadow is not None:
            mm.swap.shadows[slot] = shadow
        lru.stats["evicted"] += 1
        reclaimed += 1
    if reclaimed:
        yield from free_pages(zone, reclaimed)
        sys.count("pages_reclaimed", reclaimed)
    return reclaimed


def folio_check_references(sys: "System", pfn: int) -> Gen:
    """``folio_check_references`` for a folio mapped once. ``folio_referenced`` runs the
    design's rmap path (with look-around under MGLRU). MGLRU: referenced -> activate
    (promoted), else reclaim. Classic LRU: ``PG_referenced`` is tested and cleared;
    referenced PTEs with ``PG_referenced`` set (or more than one referenced mapping) ->
    activate; referenced PTEs alone -> set ``PG_referenced`` and keep ("look twice");
    no referenced PTE -> reclaim (anon: ``FOLIOREF_RECLAIM_CLEAN`` is file-only)."""
    mm = sys.mm
    referenced_ptes = yield from folio_referenced(sys, mm, pfn)
    lru = mm.lru
    if not isinstance(lru, ClassicLruvec):
        return FOLIOREF_ACTIVATE if referenced_ptes else FOLIOREF_RECLAIM
    yield nop(cost="folio_test_clear_referenced")
    referenced_folio = lru.folio_test_clear_referenced(pfn)
    if referenced_ptes:
        yield nop(cost="folio_set_referenced")
        lru.folio_set_referenced(pfn)
        if referenced_folio or referenced_ptes > 1:
            return FOLIOREF_ACTIVATE
        return FOLIOREF_KEEP
    return FOLIOREF_RECLAIM


def try_to_unmap_one(sys: "System", mm: "MM", pfn: int) -> Gen:
    """Replace the folio's PTE with a swap entry between the mmu_notifier invalidation
    calls (which zap every secondary MMU's entry for the page), and drop its rmap.
    Returns the swap slot."""
    addr = mm.rmap[pfn]
    slot = mm.swap.get_swap_page()
    yield from mmu_notifier_invalidate_range_start(mm, addr, addr + PAGE_SIZE)
    t, i = mm.pte_slot(addr)
    yield xchg(t, i, swp_entry_to_pte(slot), cost="pte_clear")  # ptep_clear_flush
    yield from mmu_notifier_invalidate_range_end(mm, addr, addr + PAGE_SIZE)
    del mm.rmap[pfn]
    return slot


def pageout(swap: SwapDevice) -> Gen:
    """``pageout`` -> ``swap_writepage``: start the write (asynchronous)."""
    yield from swap_writepage(swap)
