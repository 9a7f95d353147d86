"""``mm/page_idle.c``: idle page tracking, ``/sys/kernel/mm/page_idle/bitmap``.

The bitmap has one bit per pfn, read and written 64 bits (one word, 64 pfns) at a time:

- **write** (``page_idle_bitmap_write``): for each set bit whose pfn is an LRU folio
  (``page_idle_get_folio``), ``page_idle_clear_pte_refs`` then ``folio_set_idle``;
- **read** (``page_idle_bitmap_read``): for *every* pfn of the word whose folio is marked
  idle, ``page_idle_clear_pte_refs`` and, if it is still idle, set its bit. So reading
  the word of one pfn also walks the rmap of every idle neighbour in the word, as the
  kernel does;
- ``page_idle_clear_pte_refs`` walks the folio's rmap to its PTE
  (``page_idle_clear_pte_refs_one``) and calls ``ptep_clear_young_notify``: the primary
  PTE's accessed bit, then the secondary MMUs' through ``mmu_notifier_clear_young``, as
  the design's mm has it (``Design.ptep_clear_young_notify``: yu-v2's
  ``test_clear_young(clear, NULL)``, reviewed's ``test_clear_young_range``). A young
  result clears the folio's idle flag (and sets ``PG_young`` so that reclaim's
  ``folio_referenced`` still counts the reference).

This is the selftest's fallback when MGLRU is not usable (``access_tracking_perf_test``
marks its memory idle with ``mark_page_idle`` per page and checks ``is_page_idle``, each
one 8-byte ``pwrite``/``pread`` of the bitmap). Every page the walk decides is recorded
against the ground truth (``vmscan.decide``, caller ``page_idle``).

Simplified: ``PG_idle`` and ``PG_young`` live in this module's sets (no ``struct folio``
or ``page_ext``); ``PG_young`` is recorded but the model's reclaim does not consult it
(no scenario runs page_idle under memory pressure); the folio is "on the LRU" when it is
mapped (the model keeps no LRU without memory pressure); THP (``pmdp_clear_young_notify``)
is not modelled. The per-word work that is not a model operation (the syscall, and
``page_idle_get_folio`` for each of the 64 pfns) is one labelled ``nop``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Generator

from ...sim import Op, load, nop
from .mm import pte_pfn, pte_present
from .vmscan import decide

if TYPE_CHECKING:
    from ..system import System
    from .mm import MM

Gen = Generator[Op, Any, Any]

#: ``BITMAP_CHUNK_BITS``: the bitmap is read and written in 64-bit words
BITMAP_CHUNK_BITS = 64


class PageIdle:
    """The folio flags idle page tracking uses, by pfn."""

    def __init__(self) -> None:
        self.idle: set[int] = set()  # PG_idle
        self.young: set[int] = set()  # PG_young


def page_idle(mm: "MM") -> PageIdle:
    """The mm's idle-tracking flags (created on first use)."""
    if mm.page_idle is None:
        mm.page_idle = PageIdle()
    state: PageIdle = mm.page_idle
    return state


def page_idle_get_folio(mm: "MM", pfn: int) -> bool:
    """Is ``pfn`` a folio idle tracking looks at (online, on an LRU: here, mapped)?"""
    return mm.rmap.get(pfn) is not None


def page_idle_clear_pte_refs(sys: "System", mm: "MM", pfn: int) -> Gen:
    """``page_idle_clear_pte_refs`` -> ``rmap_walk`` -> ``page_idle_clear_pte_refs_one``."""
    addr = mm.rmap.get(pfn)
    if addr is None:
        return
    t, i = mm.pte_slot(addr)
    pte = yield load(t, i, cost="pte_read")  # page_vma_mapped_walk
    if not pte_present(pte) or pte_pfn(pte) != pfn:
        return
    referenced = yield from sys.design.ptep_clear_young_notify(sys, mm, addr)
    decide(sys, mm, addr, bool(referenced), "page_idle")
    if referenced:
        state = page_idle(mm)
        state.idle.discard(pfn)  # folio_clear_idle
        state.young.add(pfn)  # folio_set_young


def page_idle_bitmap_read(sys: "System", mm: "MM", word: int) -> Gen:
    """Read bitmap word ``word`` (pfns ``64 x word`` ..): returns its 64 bits."""
    yield nop(cost="page_idle_bitmap_rw")
    state = page_idle(mm)
    out = 0
    for bit in range(BITMAP_CHUNK_BITS):
        pfn = word * BITMAP_CHUNK_BITS + bit
        if not page_idle_get_folio(mm, pfn) or pfn not in state.idle:
            continue
        # "The page might have been referenced via a pte, in which case it is not
        # idle. Clear refs and recheck."
        yield from page_idle_clear_pte_refs(sys, mm, pfn)
        if pfn in state.idle:
            out |= 1 << bit
    return out


def page_idle_bitmap_write(sys: "System", mm: "MM", word: int, bits: int) -> Gen:
    """Write ``bits`` to bitmap word ``word``: mark each set bit's folio idle."""
    yield nop(cost="page_idle_bitmap_rw")
    state = page_idle(mm)
    for bit in range(BITMAP_CHUNK_BITS):
        if not bits >> bit & 1:
            continue
        pfn = word * BITMAP_CHUNK_BITS + bit
        if not page_idle_get_folio(mm, pfn):
            continue
        yield from page_idle_clear_pte_refs(sys, mm, pfn)
        state.idle.add(pfn)  # folio_set_idle
