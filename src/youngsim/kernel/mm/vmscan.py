"""``mm/vmscan.c`` (multi-gen LRU) and ``mm/rmap.c``: the callers that harvest accessed
bits.

- ``walk_pte_range``: MGLRU's page-table walk over one leaf table range (``walk_mm``).
- ``lru_gen_look_around``: from the rmap path, age the neighbours of a young page.
- ``folio_referenced`` -> ``folio_referenced_one``: the rmap path of classic LRU and of
  MGLRU eviction. With MGLRU off (``lru_gen_enabled()`` false) it is the kernel's
  ``else`` branch: ``ptep_clear_flush_young_notify`` (or the design's
  ``ptep_clear_young_notify`` for designs carrying the 2022 no-flush rmap patch,
  ``Design.classic_rmap_flush``), no look-around, whatever the design's MGLRU callers.

How a caller reaches the secondary MMU is what the designs change, so each of these asks
the design (``designs/base.py``): ``design.mglru`` is ``"primary-only"`` (before 6.12: the
walk and look-around never consult the secondary MMU), ``"per-page"`` (6.12+: one
``clear_young`` notifier call per PTE examined) or ``"batched"`` (yu-v2 and reviewed:
one test call per batch of ``MIN_LRU_BATCH`` pages and one clear call for the young ones).

Every young/old decision is compared with the ghost ground truth (did the guest touch the
page since the last decision?) and counted: ``false_old``, ``false_young``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Generator

from ...sim import Op, load
from ..system import PAGE_SHIFT, PAGE_SIZE
from .mm import pte_pfn, pte_present, pte_young
from .mmu_notifier import ptep_clear_flush_young_notify, ptep_clear_young_notify

if TYPE_CHECKING:
    from ..system import System
    from .mm import MM

Gen = Generator[Op, Any, Any]

MIN_LRU_BATCH = 64  # BITS_PER_LONG

#: ``/sys/kernel/mm/lru_gen/enabled`` bit 0x0001 (``LRU_GEN_CORE``): MGLRU on
LRU_GEN_CORE = 0x0001


def lru_gen_enabled(sys: "System") -> bool:
    """``lru_gen_enabled()``: the multi-gen LRU's core switch is on."""
    return bool(sys.lru_gen_enabled & LRU_GEN_CORE)


def classic_rmap_flush(sys: "System") -> bool:
    """With MGLRU off, does ``folio_referenced_one`` ask for a flush?"""
    design = sys.design
    flush = design.classic_rmap_flush
    return design.rmap_flush if flush is None else flush


def decide(sys: "System", mm: "MM", addr: int, young: bool, caller: str) -> None:
    """Record an aging decision against the ground truth, then start a new interval."""
    gfn = (addr - mm.start) >> PAGE_SHIFT
    truth = sys.ghost.accessed[gfn]
    sys.count(f"{caller}_pages")
    if young:
        sys.count(f"{caller}_young")
    if truth and not young:
        sys.count("false_old")
    elif young and not truth:
        sys.count("false_young")
    sys.ghost.accessed[gfn] = False
    if young and caller != "rmap" and mm.lru is not None:  # walk or look-around
        t, i = mm.pte_slot(addr)
        mm.lru.folio_update_gen(pte_pfn(int(t.data[i])))  # the folio the PTE maps


def get_pte_pfn_ok(mm: "MM", pte: int, examine_old: bool) -> bool:
    """``get_pte_pfn() != -1``: present, and young unless the mm has notifiers and the
    design examines primary-old PTEs for them (6.12+)."""
    if not pte_present(pte):
        return False
    return pte_young(pte) or (examine_old and mm.mm_has_notifiers())


def walk_pte_range(sys: "System", mm: "MM", start: int, end: int) -> Gen:
    """Age every PTE in [start, end) of one leaf table, the design's way."""
    design = sys.design
    if design.mglru == "batched":
        for bstart in range(start, end, MIN_LRU_BATCH * PAGE_SIZE):
            bend = min(end, bstart + MIN_LRU_BATCH * PAGE_SIZE)
            yield from design.lru_gen_batch(sys, mm, bstart, bend, "walk")
        return
    for addr in range(start, end, PAGE_SIZE):
        t, i = mm.pte_slot(addr)
        pte = yield load(t, i, cost="pte_read")
        if not get_pte_pfn_ok(mm, pte, examine_old=design.mglru == "per-page"):
            if pte_present(pte) and mm.in_reclaim_scope(addr):
                decide(sys, mm, addr, False, "walk")
            continue
        if not mm.in_reclaim_scope(addr):
            continue  # get_pfn_folio() == NULL
        if design.mglru == "per-page":
            young = yield from ptep_clear_young_notify(mm, addr)
        else:
            young = yield from mm.ptep_test_and_clear_young(addr)
        decide(sys, mm, addr, bool(young), "walk")


def lru_gen_look_around(sys: "System", mm: "MM", addr: int, start: int, end: int) -> Gen:
    """Age the neighbours [start, end) of a page the rmap walk found young (the page at
    ``addr`` itself is handled by the caller). Returns nothing; decisions are counted."""
    design = sys.design
    for a in range(start, end, PAGE_SIZE):
        if a == addr:
            continue
        t, i = mm.pte_slot(a)
        pte = yield load(t, i, cost="pte_read")
        if not get_pte_pfn_ok(mm, pte, examine_old=design.mglru == "per-page"):
            continue
        if not mm.in_reclaim_scope(a):
            continue
        if design.mglru == "per-page":
            young = yield from ptep_clear_young_notify(mm, a)
        else:
            young = yield from mm.ptep_test_and_clear_young(a)
        decide(sys, mm, a, bool(young), "look_around")


PMD_SIZE = 512 * PAGE_SIZE


def look_around_window(mm: "MM", addr: int) -> tuple[int, int]:
    """``lru_gen_look_around``'s window: the PMD around ``addr`` clipped to the VMA, cut
    to ``MIN_LRU_BATCH`` pages centred on ``addr`` when larger."""
    start = max(addr & ~(PMD_SIZE - 1), mm.start)
    end = min(addr | (PMD_SIZE - 1), mm.end - 1) + 1
    span = MIN_LRU_BATCH * PAGE_SIZE
    if end - start > span:
        if addr - start < span // 2:
            end = start + span
        elif end - addr < span // 2:
            start = end - span
        else:
            start, end = addr - span // 2, addr + span // 2
    return start, end


def folio_referenced(sys: "System", mm: "MM", pfn: int, look_around: bool = True) -> Gen:
    """``folio_referenced`` for a folio mapped once: walk the rmap to its PTE and ask
    ``folio_referenced_one``. Returns the number of references found."""
    addr = mm.rmap.get(pfn)
    if addr is None:
        return 0
    return (yield from folio_referenced_one(sys, mm, addr, look_around))


def folio_referenced_one(sys: "System", mm: "MM", addr: int, look_around: bool) -> Gen:
    design = sys.design
    t, i = mm.pte_slot(addr)
    pte = yield load(t, i, cost="pte_read")
    if not pte_present(pte):
        return 0
    if not lru_gen_enabled(sys):  # the classic LRU: no look-around
        if classic_rmap_flush(sys):
            referenced = yield from ptep_clear_flush_young_notify(mm, addr)
        else:
            referenced = yield from design.ptep_clear_young_notify(sys, mm, addr)
        decide(sys, mm, addr, bool(referenced), "rmap")
        return int(bool(referenced))
    lo, hi = look_around_window(mm, addr)
    if design.mglru == "batched":
        referenced = yield from design.should_look_around(sys, mm, addr, pte, lo, hi,
                                                          look_around)
    elif design.mglru == "per-page":
        # 6.12: lru_gen_look_around() clears this page (primary + secondary) first
        referenced = yield from ptep_clear_young_notify(mm, addr)
        if referenced and look_around:
            yield from lru_gen_look_around(sys, mm, addr, lo, hi)
    else:
        if look_around and pte_young(pte):
            yield from lru_gen_look_around(sys, mm, addr, lo, hi)
        if design.rmap_flush:
            referenced = yield from ptep_clear_flush_young_notify(mm, addr)
        else:
            referenced = yield from ptep_clear_young_notify(mm, addr)
    decide(sys, mm, addr, bool(referenced), "rmap")
    return int(bool(referenced))
