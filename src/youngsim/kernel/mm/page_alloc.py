"""``mm/page_alloc.c``: a host with a fixed number of page frames, its watermarks, and
the wake-up of kswapd.

Only the counts matter to the aging question (which frame backs a page is an id handed
out by ``MM.alloc_pfn``), so a zone is its free-page counter, updated under
``zone->lock`` as the buddy allocator does. Below the low watermark an allocation wakes
kswapd (``wakeup_kswapd``); when no frame is free it waits until reclaim frees some
(``reclaim_throttle``). Direct reclaim by the allocating task is not modelled: every
frame is freed by kswapd, so an allocation that finds the zone empty sleeps instead of
reclaiming itself (``docs/timed.md``, max_guest_memory_test, says what this leaves out).

The control words (``Zone.ctl``): ``NR_FREE`` (free frames), ``EMPTY`` (1 exactly when
``NR_FREE`` is 0, kept under the lock so a throttled allocation can wait for it to
clear), ``KSWAPD`` (bit ``KSWAPD_WAKE``: pgdat->kswapd_wait has a wake-up pending; bit
``KSWAPD_STOP``: kthread_stop).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Generator

from ...sim import (Op, SpinLock, fetch_or, load, spin_lock, spin_unlock, store,
                    wait_until)

if TYPE_CHECKING:
    from ..system import System

Gen = Generator[Op, Any, Any]

NR_FREE, EMPTY, KSWAPD = 0, 1, 2
KSWAPD_WAKE = 1 << 0
KSWAPD_STOP = 1 << 1
_ALL = (1 << 64) - 1

#: ``SWAP_CLUSTER_MAX``: reclaim works in batches of 32 folios (include/linux/swap.h)
SWAP_CLUSTER_MAX = 32


def watermarks(nr_pages: int) -> tuple[int, int, int]:
    """(min, low, high) for a zone of ``nr_pages`` frames.

    The kernel's gaps (``__setup_per_zone_wmarks``): low = min + and high = min + 2 x
    ``max(min/4, managed * watermark_scale_factor / 10000)``, with the default
    ``watermark_scale_factor`` 10, i.e. 0.1% of the zone; min is ``min_free_kbytes``
    (about sqrt(16 x memory in KiB), a fraction of a percent on a large host). At the few
    thousand frames youngsim simulates, 0.1% is a handful of pages, less than one reclaim
    batch, so each gap is floored at ``SWAP_CLUSTER_MAX``: kswapd then reclaims at least
    one batch per wake-up, as it does on a large host."""
    gap = max(SWAP_CLUSTER_MAX, nr_pages // 1000)
    wmin = max(SWAP_CLUSTER_MAX, nr_pages // 1000)
    return wmin, wmin + gap, wmin + 2 * gap


class Zone:
    """The host's memory: one zone of ``nr_pages`` frames, all free at boot."""

    def __init__(self, sys: "System", nr_pages: int) -> None:
        if nr_pages < 8 * SWAP_CLUSTER_MAX:
            raise ValueError(f"a zone needs at least {8 * SWAP_CLUSTER_MAX} frames, got "
                             f"{nr_pages}")
        self.sys = sys
        self.nr_pages = nr_pages
        self.ctl = sys.m.new_words("zone", 3)
        self.ctl[NR_FREE] = nr_pages
        self.lock = SpinLock("zone->lock")
        self.wmark_min, self.wmark_low, self.wmark_high = watermarks(nr_pages)

    def nr_free_now(self) -> int:
        """The free-frame count (a plain read, for checks and reports)."""
        return int(self.ctl[NR_FREE])


def wakeup_kswapd(zone: Zone) -> Gen:
    """Wake kswapd unless a wake-up is already pending (``waitqueue_active``)."""
    if not ((yield load(zone.ctl, KSWAPD, cost="kswapd_wakeup_check")) & KSWAPD_WAKE):
        yield fetch_or(zone.ctl, KSWAPD, KSWAPD_WAKE, cost="kswapd_wakeup")


def alloc_page(zone: Zone) -> Gen:
    """``alloc_pages(GFP_HIGHUSER_MOVABLE, 0)``: take a free frame; wake kswapd below the
    low watermark; with none free, sleep until reclaim frees some, then retry."""
    while True:
        yield spin_lock(zone.lock, cost="zone_lock")
        free = yield load(zone.ctl, NR_FREE, cost="zone_counter_read")
        if free:
            yield store(zone.ctl, NR_FREE, free - 1, cost="zone_counter_write")
            if free == 1:
                yield store(zone.ctl, EMPTY, 1, cost="zone_counter_write")
        yield spin_unlock(zone.lock, cost="zone_unlock")
        if not free or free - 1 < zone.wmark_low:
            yield from wakeup_kswapd(zone)
        if free:
            return
        yield wait_until(zone.ctl, EMPTY, _ALL, 0, cost="alloc_throttle")


def free_pages(zone: Zone, n: int) -> Gen:
    """Return ``n`` frames to the zone (``free_unref_folios`` for a reclaimed batch)."""
    yield spin_lock(zone.lock, cost="zone_lock")
    free = yield load(zone.ctl, NR_FREE, cost="zone_counter_read")
    yield store(zone.ctl, NR_FREE, free + n, cost="zone_counter_write")
    if free == 0 and n:
        yield store(zone.ctl, EMPTY, 0, cost="zone_counter_write")
    yield spin_unlock(zone.lock, cost="zone_unlock")
