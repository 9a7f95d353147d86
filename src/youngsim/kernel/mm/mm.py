"""The primary MMU: an ``mm_struct`` with one VMA, its leaf page tables, folios and rmap.

PTE bits follow x86-64 (``arch/x86/include/asm/pgtable_types.h``): present bit 0, RW bit
1, accessed bit 5, dirty bit 6, pfn from bit 12. Each leaf table holds 512 PTEs; the
upper levels are not modelled (the primary side's tables are never freed here, so only
the leaves matter).

The rmap is the reverse map a reclaim caller walks (``folio_referenced``): for each folio
(pfn) the address it is mapped at in this mm. One mm, one VMA: enough for a VM's memory,
which QEMU maps once.

The leaf tables are views of one array (the *arena*) and the rmap is a numpy array
indexed by pfn, and a host prefault fills both with vector operations, so that an mm of
hundreds of millions of pages can be built (``benchmarks/bench_aging_scale.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Generator

import numpy as np

from ...sim import Op, RcuDomain, cas, fetch_and, load, nop
from ..system import PAGE_SHIFT, PAGE_SIZE

if TYPE_CHECKING:
    from ..system import System

Gen = Generator[Op, Any, Any]

_PAGE_PRESENT = 1 << 0
_PAGE_RW = 1 << 1
_PAGE_ACCESSED = 1 << 5
_PAGE_DIRTY = 1 << 6
PTE_PFN_SHIFT = 12
PTRS_PER_PTE = 512

#: the global SRCU domain that mmu_notifier subscriptions are walked under (``srcu`` in
#: ``mm/mmu_notifier.c``)
MMU_NOTIFIER_SRCU = "mmu_notifier srcu"


def pte_present(pte: int) -> bool:
    return bool(pte & _PAGE_PRESENT)


def pte_young(pte: int) -> bool:
    return bool(pte & _PAGE_ACCESSED)


def pte_pfn(pte: int) -> int:
    return pte >> PTE_PFN_SHIFT


def mk_pte(pfn: int, write: bool) -> int:
    pte = (pfn << PTE_PFN_SHIFT) | _PAGE_PRESENT | _PAGE_ACCESSED
    if write:
        pte |= _PAGE_RW | _PAGE_DIRTY
    return pte


class Rmap:
    """pfn -> the address its folio is mapped at in this mm, absent if none: the part of
    ``folio->mapping``/``folio->index`` plus the VMA that ``rmap_walk`` needs. A growable
    array indexed by pfn (the folio allocator hands pfns out in order) holding the
    address + 1, so 0 means "not mapped"; it supports the dict operations the model uses."""

    def __init__(self) -> None:
        self._addr = np.zeros(1024, dtype=np.int64)

    def _reserve(self, end: int) -> None:
        if end > len(self._addr):
            grown = np.zeros(max(end, 2 * len(self._addr)), dtype=np.int64)
            grown[:len(self._addr)] = self._addr
            self._addr = grown

    def get(self, pfn: int, default: int | None = None) -> int | None:
        v = int(self._addr[pfn]) if 0 <= pfn < len(self._addr) else 0
        return v - 1 if v else default

    def __getitem__(self, pfn: int) -> int:
        v = self.get(pfn)
        if v is None:
            raise KeyError(pfn)
        return v

    def __setitem__(self, pfn: int, addr: int) -> None:
        self._reserve(pfn + 1)
        self._addr[pfn] = addr + 1

    def __delitem__(self, pfn: int) -> None:
        self[pfn]  # KeyError if absent, as a dict would
        self._addr[pfn] = 0

    def __contains__(self, pfn: object) -> bool:
        return isinstance(pfn, (int, np.integer)) and self.get(int(pfn)) is not None

    def __iter__(self) -> Any:
        return iter(np.flatnonzero(self._addr).tolist())

    def __len__(self) -> int:
        return int(np.count_nonzero(self._addr))

    def values(self) -> list[int]:
        return (self._addr[np.flatnonzero(self._addr)] - 1).tolist()

    def items(self) -> list[tuple[int, int]]:
        pfns = np.flatnonzero(self._addr)
        return list(zip(pfns.tolist(), (self._addr[pfns] - 1).tolist()))

    def set_range(self, pfn: int, addrs: np.ndarray) -> None:
        """Map pfns ``pfn, pfn + 1, ...`` at ``addrs`` (a prefault)."""
        self._reserve(pfn + len(addrs))
        self._addr[pfn:pfn + len(addrs)] = addrs + 1


class MM:
    """``struct mm_struct`` with a single anonymous/shmem VMA ``[start, start + n pages)``."""

    def __init__(self, sys: "System", start: int, npages: int, prefault: bool = True) -> None:
        self.sys = sys
        self.start = start
        self.npages = npages
        self.end = start + npages * PAGE_SIZE
        ntables = (npages + PTRS_PER_PTE - 1) // PTRS_PER_PTE
        n = min(npages, PTRS_PER_PTE) if ntables == 1 else PTRS_PER_PTE
        self._pte_arena = np.zeros(ntables * n, dtype=np.uint64)
        self.pte_tables = [sys.m.new_words(f"pte{i}", n, tag="pte",
                                           data=self._pte_arena[i * n:(i + 1) * n])
                           for i in range(ntables)]
        self.subscriptions: list[Any] = []  # struct mmu_notifier_subscriptions
        self.srcu = RcuDomain(MMU_NOTIFIER_SRCU, sleepable=True)
        self.next_pfn = 0x100  # folio allocator: pfns handed out in order
        self.rmap = Rmap()
        #: pages whose folio is outside the reclaim scope (another memcg): the aging
        #: walk must leave them alone (``get_pfn_folio`` returns NULL)
        self.out_of_scope: set[int] = set()
        #: host memory pressure (``enable_reclaim`` in ``reclaim.py``): a zone of fewer
        #: frames than pages, a swap device and the MGLRU lists. None: unlimited memory,
        #: pages never leave (the checker's scenarios and access_tracking_perf_test)
        self.zone: Any = None
        #: idle page tracking's folio flags (``page_idle.PageIdle``, on first use)
        self.page_idle: Any = None
        self.swap: Any = None
        self.lru: Any = None
        if prefault:  # host-prefaulted guest memory (as the kernel selftests do)
            # alloc_pfn + mk_pte(pfn, write=True) for every page, in address order
            pfns = np.arange(self.next_pfn, self.next_pfn + npages, dtype=np.uint64)
            self.rmap.set_range(self.next_pfn,
                                start + np.arange(npages, dtype=np.int64) * PAGE_SIZE)
            self.next_pfn += npages
            self._pte_arena[:npages] = ((pfns << np.uint64(PTE_PFN_SHIFT))
                                        | np.uint64(mk_pte(0, write=True)))

    def ptes(self, lo: int = 0, hi: int | None = None) -> "np.ndarray":
        """Pages ``[lo, hi)``'s primary PTEs (default: all), for invariants and set-up
        (a plain read between steps)."""
        return self._pte_arena[lo:self.npages if hi is None else hi].copy()

    def pte_slot(self, addr: int) -> tuple[Any, int]:
        i = (addr - self.start) >> PAGE_SHIFT
        return self.pte_tables[i // PTRS_PER_PTE], i % PTRS_PER_PTE

    def alloc_pfn(self, addr: int) -> int:
        """A new folio for ``addr``, entered in the rmap (thread-local bookkeeping: a fresh
        folio is invisible to others until its PTE is published)."""
        pfn = self.next_pfn
        self.next_pfn += 1
        self.rmap[pfn] = addr
        return pfn

    def in_reclaim_scope(self, addr: int) -> bool:
        return addr not in self.out_of_scope

    def mm_has_notifiers(self) -> bool:
        return bool(self.subscriptions)

    # -- the primary PTE primitives ---------------------------------------------------
    def ptep_test_and_clear_young(self, addr: int) -> Gen:
        """x86: ``test_and_clear_bit(_PAGE_BIT_ACCESSED)``, an atomic RMW."""
        t, i = self.pte_slot(addr)
        old = yield fetch_and(t, i, ~_PAGE_ACCESSED, cost="pte_clear_young")
        return pte_young(old)

    def ptep_clear_flush_young(self, addr: int) -> Gen:
        """x86 never flushes here: "clearing the accessed bit without a TLB flush doesn't
        cause data corruption" (``arch/x86/mm/pgtable.c``)."""
        return (yield from self.ptep_test_and_clear_young(addr))

    def handle_mm_fault(self, addr: int, write: bool, found: int | None = None) -> Gen:
        """Fault the page in on the primary MMU if needed; return its pfn
        (``hva_to_pfn`` -> ``get_user_pages``). The new PTE is young. ``found``: the
        PTE the first read already found."""
        t, i = self.pte_slot(addr)
        while True:
            if found is None:
                pte = yield load(t, i, cost="pte_read")
            else:
                pte, found = found, None
            if pte_present(pte):
                return pte_pfn(pte)
            if self.zone is not None:  # memory is limited: allocate, maybe swap in
                pfn = yield from self.do_fault_limited(addr, pte, write)
                if pfn is not None:
                    return pfn
                continue
            pfn = self.alloc_pfn(addr)
            old = yield cas(t, i, pte, mk_pte(pfn, write), cost="pte_install")
            if old == pte:
                return pfn
            del self.rmap[pfn]

    def do_fault_limited(self, addr: int, pte: int, write: bool) -> Gen:
        """``do_anonymous_page`` / ``do_swap_page`` (shmem: ``shmem_get_folio`` with
        ``shmem_swapin_folio``) on a host with a zone: take a frame (which may wake
        kswapd or wait for it), zero it or read it back from swap, and publish the PTE.
        Returns the pfn, or None if another thread changed the PTE first (retry)."""
        from .page_alloc import alloc_page, free_pages
        from .swap import is_swap_pte, swap_read_folio, swp_offset
        yield from alloc_page(self.zone)
        swapped = is_swap_pte(pte)
        if swapped:
            yield from swap_read_folio(self.swap)
        else:
            yield nop(cost="clear_page")
        t, i = self.pte_slot(addr)
        pfn = self.alloc_pfn(addr)
        old = yield cas(t, i, pte, mk_pte(pfn, write), cost="pte_install")
        if old != pte:
            del self.rmap[pfn]
            yield from free_pages(self.zone, 1)
            return None
        shadow = None
        if swapped:
            shadow = self.swap.take_shadow(swp_offset(pte))  # workingset_refault's input
            self.swap.swap_free(swp_offset(pte))
            self.sys.count("swap_ins")
        yield from self.lru.folio_add_lru(pfn, swapped, shadow)
        return pfn
