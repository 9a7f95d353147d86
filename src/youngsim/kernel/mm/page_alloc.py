"""``mm/page_alloc.c``: a host with a fixed number of page frames, its watermarks, the
wake-up of kswapd, and direct reclaim.

Only the counts matter to the aging question (which frame backs a page is an id handed
out by ``MM.alloc_pfn``), so a zone is its free-page counter, updated under
``zone->lock`` as the buddy allocator does. Below the low watermark an allocation wakes
kswapd (``wakeup_kswapd``). With ``Zone.direct_reclaim`` set (``reclaim.enable_reclaim``
sets it to ``try_to_free_pages``), an ordinary allocation never takes the zone below its
min watermark: there it reclaims a batch itself (``__alloc_pages_direct_reclaim``) and
retries, as ``__alloc_pages_slowpath`` does. Without it (unit tests of this file) the
floor is zero. An allocation that cannot take a frame and whose reclaim made no
progress sleeps until reclaim frees some (``reclaim_throttle``).

The control words (``Zone.ctl``): ``NR_FREE`` (free frames), ``EMPTY`` (1 exactly when
``NR_FREE`` is at or below the allocation floor, kept under the lock so a throttled
allocation can wait for it to clear), ``KSWAPD`` (bit ``KSWAPD_WAKE``:
pgdat->kswapd_wait has a wake-up pending; bit ``KSWAPD_STOP``: kthread_stop).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Generator

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
        #: ``try_to_free_pages`` for an allocation at the min watermark (a generator
        #: function of no arguments returning the frames reclaimed), or None: no direct
        #: reclaim, and allocations may empty the zone
        self.direct_reclaim: Callable[[], Gen] | None = None

    @property
    def floor(self) -> int:
        """Free frames an ordinary allocation leaves (``ALLOC_WMARK_MIN``)."""
        return self.wmark_min if self.direct_reclaim is not None else 0

    def nr_free_now(self) -> int:
        """The free-frame count (a plain read, for checks and reports)."""
        return int(self.ctl[NR_FREE])


def wakeup_kswapd(zone: Zone) -> Gen:
    """Wake kswapd unless a wake-up is already pending (``waitqueue_active``)."""
    if not ((yield load(zone.ctl, KSWAPD, cost="kswapd_wakeup_check")) & KSWAPD_WAKE):
        yield fetch_or(zone.ctl, KSWAPD, KSWAPD_WAKE, cost="kswapd_wakeup")


def alloc_page(zone: Zone) -> Gen:
    """``alloc_pages(GFP_HIGHUSER_MOVABLE, 0)``: take a free frame above the floor; wake
    kswapd below the low watermark; at the floor, reclaim directly and retry; if that
    made no progress, sleep until reclaim frees frames, then retry."""
    floor = zone.floor
    while True:
        yield spin_lock(zone.lock, cost="zone_lock")
        free = yield load(zone.ctl, NR_FREE, cost="zone_counter_read")
        ok = free > floor
        if ok:
            yield store(zone.ctl, NR_FREE, free - 1, cost="zone_counter_write")
            if free - 1 == floor:
                yield store(zone.ctl, EMPTY, 1, cost="zone_counter_write")
        yield spin_unlock(zone.lock, cost="zone_unlock")
        if not ok or free - 1 < zone.wmark_low:
            yield from wakeup_kswapd(zone)
        if ok:
            return
        if zone.direct_reclaim is not None:
            if (yield from zone.direct_reclaim()):
                continue
        yield wait_until(zone.ctl, EMPTY, _ALL, 0, cost="alloc_throttle")


def free_pages(zone: Zone, n: int) -> Gen:
    """Return ``n`` frames to the zone (``free_unref_folios`` for a reclaimed batch)."""
    yield spin_lock(zone.lock, cost="zone_lock")
    free = yield load(zone.ctl, NR_FREE, cost="zone_counter_read")
    yield store(zone.ctl, NR_FREE, free + n, cost="zone_counter_write")
    if free <= zone.floor < free + n:
        yield store(zone.ctl, EMPTY, 0, cost="zone_counter_write")
    yield spin_unlock(zone.lock, cost="zone_unlock")
