"""``mm/swapfile.c``, ``mm/page_io.c`` and ``mm/memory.c``'s ``do_swap_page``: a swap
device that evicted pages are written to and read back from.

The device is a queue with a bandwidth and a latency (both from the cost model): one
transfer at a time holds the device (a ``Mutex``: a queued request sleeps) for
``swap_*_xfer`` (4 KiB at the device's bandwidth); a read then waits ``swap_read_latency``
for its completion, off-CPU. Writes are asynchronous as in the kernel (``pageout`` starts
writeback and reclaim moves on): they occupy the device's bandwidth but nobody waits for
their latency, and the frame is returned at once (the kernel frees it when writeback
completes, a later pass of ``shrink_folio_list``; the difference is one device latency
per batch, not modelled).

A swapped-out page's PTE holds a swap entry: not present, nonzero, the swap slot in the
pfn field (``swp_entry_to_pte``). Slots are bookkeeping (``swap_map``), handed out and
released in order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Generator

from ...sim import Mutex, Op, mutex_lock, mutex_unlock, nop

if TYPE_CHECKING:
    from ..system import System

Gen = Generator[Op, Any, Any]

#: a non-present PTE with this bit holds a swap entry (youngsim's encoding; x86 stores
#: the entry inverted in the pfn bits, any non-present nonzero encoding says the same)
_PAGE_SWP = 1 << 9
PTE_PFN_SHIFT = 12


def swp_entry_to_pte(slot: int) -> int:
    return (slot << PTE_PFN_SHIFT) | _PAGE_SWP


def is_swap_pte(pte: int) -> bool:
    return not (pte & 1) and bool(pte & _PAGE_SWP)


def swp_offset(pte: int) -> int:
    return pte >> PTE_PFN_SHIFT


class SwapDevice:
    """One swap device (``struct swap_info_struct``) with its queue."""

    def __init__(self, sys: "System", name: str = "swap") -> None:
        self.sys = sys
        self.queue = Mutex(f"{name} device queue")
        self.next_slot = 1
        self.free_slots: list[int] = []
        self.in_use = 0
        self.writes = 0
        self.reads = 0
        #: slot -> the shadow entry reclaim left in the swap cache for the folio it
        #: evicted (``workingset_eviction``; only the classic LRU leaves one here)
        self.shadows: dict[int, int] = {}

    def get_swap_page(self) -> int:
        """``folio_alloc_swap``: a free slot (bookkeeping; its cost is the caller's)."""
        self.in_use += 1
        if self.free_slots:
            return self.free_slots.pop()
        slot = self.next_slot
        self.next_slot += 1
        return slot

    def swap_free(self, slot: int) -> None:
        self.in_use -= 1
        self.shadows.pop(slot, None)
        self.free_slots.append(slot)

    def take_shadow(self, slot: int) -> int | None:
        """The shadow entry of ``slot``, removed (a swap-in replaces it by the folio)."""
        return self.shadows.pop(slot, None)


def swap_writepage(swap: SwapDevice) -> Gen:
    """``swap_writepage`` -> ``submit_bio``: queue a 4 KiB write; do not wait for it."""
    yield mutex_lock(swap.queue, cost="swap_queue")
    yield nop(cost="swap_write_xfer")
    yield mutex_unlock(swap.queue, cost="swap_queue_release")
    swap.writes += 1


def swap_read_folio(swap: SwapDevice) -> Gen:
    """``swap_read_folio``: queue a 4 KiB read and sleep until it completes."""
    yield mutex_lock(swap.queue, cost="swap_queue")
    yield nop(cost="swap_read_xfer")
    yield mutex_unlock(swap.queue, cost="swap_queue_release")
    yield nop(cost="swap_read_latency")
    swap.reads += 1
