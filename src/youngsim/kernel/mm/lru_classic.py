"""The classic (active/inactive) LRU: reclaim with MGLRU off (``mm/vmscan.c``, ``mm/swap.c``).

Selected when the core bit of ``/sys/kernel/mm/lru_gen/enabled`` is clear
(``System.lru_gen_enabled & LRU_GEN_CORE == 0``: ``lru_gen_enabled()`` is false);
``reclaim.enable_reclaim`` then gives the mm a ``ClassicLruvec`` instead of MGLRU's
generations. Kernel behaviour modelled (as in Linux 6.1-6.4, the v1 series' base):

- **Lists.** The VM's memory is swap-backed (a shmem memfd, or anon): its folios live on
  ``LRU_INACTIVE_ANON`` and ``LRU_ACTIVE_ANON``. Folios are added at the head
  (``lruvec_add_folio``: ``list_add``) and isolated from the tail (``lru_to_folio`` is
  ``head->prev``). There is no file LRU here, so the anon/file balance of
  ``get_scan_count`` leaves anon as the only list to scan (``SCAN_ANON``).
- **New folios** (``do_anonymous_page`` -> ``folio_add_lru_vma``, shmem's
  ``folio_add_lru``): to the *inactive* list, as since Linux 5.9 (commit b518154e59aa,
  "mm/vmscan: protect the workingset on anonymous LRU"; before it new anon folios went to
  the active list). KVM faults them in through ``hva_to_pfn_slow`` ->
  ``get_user_pages_unlocked``, which adds ``FOLL_TOUCH``: after the fault,
  ``follow_page_pte`` calls ``mark_page_accessed``, which on a folio without
  ``PG_referenced`` sets ``PG_referenced``. The model's only caller of
  ``folio_add_lru`` is that path (``MM.do_fault_limited`` under ``kvm_faultin_pfn``), so
  ``folio_add_lru`` sets ``PG_referenced`` too (its cost is folded into ``lru_add``, as
  MGLRU's ``folio_inc_refs`` is). A fault on a present PTE is ``hva_to_pfn_fast`` (GUP
  fast, no ``mark_page_accessed``) and does not come here.
- **Swap-ins** (``do_swap_page``, also under GUP): like a new folio (inactive head,
  ``PG_referenced``), unless ``workingset_refault`` activates it (``mm/workingset.c``,
  anon detection since 5.9, commit aae466b0052e): the lruvec's ``nonresident_age``
  counts evictions and activations; eviction leaves the counter's value as a shadow
  entry in the swap cache (``workingset_eviction``, from ``__remove_mapping``); at the
  refault the *refault distance* is the counter's advance since then, and a folio whose
  distance is at most the workingset size (for anon with swap available: the active
  anon list; the file lists are empty here) goes to the active list at once and ages
  the counter. ``move_folios_to_lru`` ages it for every folio it puts on the active
  list. Not modelled: the ``PG_workingset`` flag (it feeds statistics and PSI, not
  placement) and the bucket order of the packed shadow (exact counts here).
- **shrink_lruvec** (from ``shrink_node`` -> ``shrink_node_memcgs``, one lruvec here):
  ``get_scan_count`` targets ``size >> priority`` folios of each list; batches of
  ``SWAP_CLUSTER_MAX`` alternate between the lists (``for_each_evictable_lru``) while
  the inactive target is not done, and stop once ``nr_to_reclaim`` is reclaimed (except
  in direct reclaim at ``DEF_PRIORITY``: ``proportional_reclaim``). The active list is
  scanned only when ``prepare_scan_count`` allowed deactivation (``inactive_is_low``);
  afterwards ``inactive_is_low`` -> one more ``shrink_active_list(SWAP_CLUSTER_MAX)``.
  kswapd also ages the active list at each priority (``kswapd_age_node``).
- **shrink_active_list**: isolate from the active tail; ``folio_referenced`` on each
  (the design's rmap path, which clears the accessed bits); every anon folio is then
  deactivated to the inactive head, referenced or not: only referenced *file* folios of
  ``VM_EXEC`` mappings get another trip on the active list. ``PG_referenced`` is left as
  it is ("the mark is set for activated folios as well so that recently deactivated but
  used folios are quickly recovered").
- **shrink_inactive_list**: isolate from the inactive tail, ``shrink_folio_list``
  (shared with MGLRU, ``reclaim.py``) with ``folio_check_references`` for a folio mapped
  once: PTEs referenced and ``PG_referenced`` was set -> activate; referenced for the
  first time -> set ``PG_referenced`` and keep (back to the inactive head); not
  referenced -> reclaim (unmap, swap out, free). Then ``move_folios_to_lru`` puts the
  kept folios back on the inactive list and the activated ones on the active list.
- **inactive_is_low**: ``inactive * inactive_ratio < active`` with ``inactive_ratio =
  int_sqrt(10 * GiB)`` of the two lists, 1 below 1 GiB: at the model's sizes the rule
  is inactive < active (at the 2023 figures' 250 GiB the ratio is 50).
- No look-around (MGLRU only) and no page-table walk: the rmap path is the only caller
  that tests accessed bits (``folio_referenced_one`` -> ``ptep_clear_flush_young_notify``,
  or the design's ``ptep_clear_young_notify`` for designs with the 2022 no-flush rmap
  patch: ``Design.classic_rmap_flush``), one notifier call per folio.

Simplified, and why: the lists are Python dicts (``struct list_head``) changed between
operations, as MGLRU's generations are, with ``lru_lock`` not modelled as a lock
(isolation hands each folio to one reclaimer); ``PG_referenced`` is kept here, the model
having no ``struct folio``; ``folio_referenced`` never fails a trylock (no rotation on
rmap lock contention); ``force_deactivate`` (do_try_to_free_pages' retry after
``skipped_deactivate``) is not modelled;
``too_many_isolated`` throttling of direct reclaimers and ``kswapd_failures`` are not
modelled (nor are they on the MGLRU side); the counter reads of ``get_scan_count`` and
``inactive_is_low`` are not charged (MGLRU's ``should_run_aging`` is not either); the
lists are chosen once, when reclaim is enabled (switching ``lru_gen/enabled`` at run
time, ``lru_gen_change_state``, is not modelled).
"""

from __future__ import annotations

from dataclasses import dataclass
from math import isqrt
from typing import TYPE_CHECKING, Any, Generator

from ...sim import Op, nop
from ..system import PAGE_SHIFT
from .page_alloc import SWAP_CLUSTER_MAX, Zone
from .vmscan import folio_referenced

if TYPE_CHECKING:
    from ..system import System

Gen = Generator[Op, Any, Any]

LRU_INACTIVE_ANON = "inactive_anon"
LRU_ACTIVE_ANON = "active_anon"
#: ``for_each_evictable_lru`` order (``enum lru_list``; the file lists are empty here)
EVICTABLE_LRUS = (LRU_INACTIVE_ANON, LRU_ACTIVE_ANON)

#: ``DEF_PRIORITY``: reclaim scans ``size >> priority`` folios, priority 12 down to 0
DEF_PRIORITY = 12

#: ``enum folio_references`` (``FOLIOREF_RECLAIM_CLEAN`` is for file folios only)
FOLIOREF_RECLAIM, FOLIOREF_KEEP, FOLIOREF_ACTIVATE = "reclaim", "keep", "activate"


@dataclass
class ScanControl:
    """``struct scan_control``: what one reclaimer asks of ``shrink_node``."""

    priority: int = DEF_PRIORITY
    nr_to_reclaim: int = SWAP_CLUSTER_MAX
    #: kswapd's reclaim (``current_is_kswapd()``), else direct reclaim
    kswapd: bool = False
    nr_scanned: int = 0
    nr_reclaimed: int = 0
    #: ``may_deactivate & DEACTIVATE_ANON``, set by ``prepare_scan_count``
    may_deactivate: bool = False


class ClassicLruvec:
    """One lruvec's anon lists. Each list is an insertion-ordered dict of pfns: the
    first entry is the tail (oldest, isolated first), the last the head (newest)."""

    def __init__(self) -> None:
        self.lists: dict[str, dict[int, None]] = {lru: {} for lru in EVICTABLE_LRUS}
        #: the list each folio on the LRU is on (absent: isolated, or not on the LRU)
        self.folio_lru: dict[int, str] = {}
        #: folios a reclaimer has isolated (off every list until put back or freed)
        self.isolated: set[int] = set()
        #: ``PG_referenced`` of each folio (a folio flag; the model has no struct folio)
        self.referenced: set[int] = set()
        self.stats = {"isolated": 0, "activated": 0, "kept": 0, "evicted": 0,
                      "refill": 0, "deactivated": 0, "refaults": 0,
                      "refault_activated": 0}
        #: ``lruvec->nonresident_age``: evictions and activations so far
        self.nonresident_age = 0
        #: ``lruvec->refaults[WORKINGSET_ANON]``: refault activations when the last
        #: reclaim ended (``snapshot_refaults``)
        self.refaults_snapshot = 0

    def nr_folios(self) -> int:
        """Folios on either list (isolated ones are not)."""
        return len(self.folio_lru)

    def lruvec_lru_size(self, lru: str) -> int:
        return len(self.lists[lru])

    def lruvec_add_folio(self, pfn: int, lru: str) -> None:
        """``lruvec_add_folio``: to the head of ``lru``."""
        assert pfn not in self.folio_lru, f"folio {pfn} is already on {self.folio_lru[pfn]}"
        self.isolated.discard(pfn)
        self.lists[lru][pfn] = None
        self.folio_lru[pfn] = lru

    def folio_add_lru(self, pfn: int, swapcache: bool, shadow: int | None = None) -> Gen:
        """``folio_add_lru`` of a folio KVM faulted in: the inactive head, or the active
        one if it was read back from swap and ``workingset_refault`` on its ``shadow``
        says so; then GUP's ``mark_page_accessed`` sets ``PG_referenced`` (module
        docstring). The refault check's few loads are folded into ``lru_add``."""
        yield nop(cost="lru_add")
        lru = LRU_INACTIVE_ANON
        if swapcache and shadow is not None and self.workingset_refault(shadow):
            lru = LRU_ACTIVE_ANON
        self.lruvec_add_folio(pfn, lru)
        self.referenced.add(pfn)

    def workingset_age_nonresident(self, nr_pages: int = 1) -> None:
        self.nonresident_age += nr_pages

    def workingset_eviction(self, pfn: int) -> int | None:
        """``workingset_eviction``: age the counter, return the shadow to leave."""
        self.workingset_age_nonresident()
        return self.nonresident_age

    def workingset_refault(self, shadow: int) -> bool:
        """``workingset_refault``: activate the refaulting folio (True) if its refault
        distance is at most the workingset size (anon with swap: active anon)."""
        self.stats["refaults"] += 1
        refault_distance = self.nonresident_age - shadow
        if refault_distance > self.lruvec_lru_size(LRU_ACTIVE_ANON):
            return False
        self.workingset_age_nonresident()
        self.stats["refault_activated"] += 1
        return True

    def isolate(self, nr_to_scan: int, lru: str) -> list[int]:
        """Take up to ``nr_to_scan`` folios from the tail of ``lru`` (the list work of
        ``isolate_lru_folios``, uncharged)."""
        src = self.lists[lru]
        out: list[int] = []
        while len(out) < nr_to_scan and src:
            pfn = next(iter(src))
            del src[pfn]
            del self.folio_lru[pfn]
            self.isolated.add(pfn)
            out.append(pfn)
        return out

    def folio_test_clear_referenced(self, pfn: int) -> bool:
        if pfn in self.referenced:
            self.referenced.discard(pfn)
            return True
        return False

    def folio_set_referenced(self, pfn: int) -> None:
        self.referenced.add(pfn)

    def folio_freed(self, pfn: int) -> None:
        """An isolated folio was reclaimed: it leaves the LRU for good."""
        self.isolated.discard(pfn)
        self.referenced.discard(pfn)

    def inactive_is_low(self) -> bool:
        """``inactive_is_low(lruvec, LRU_INACTIVE_ANON)``."""
        inactive = self.lruvec_lru_size(LRU_INACTIVE_ANON)
        active = self.lruvec_lru_size(LRU_ACTIVE_ANON)
        return inactive * inactive_ratio(inactive + active) < active


def inactive_ratio(nr_pages: int) -> int:
    """``inactive_is_low``'s target active:inactive ratio for lists of ``nr_pages``
    folios: ``int_sqrt(10 * GiB)``, 1 below 1 GiB."""
    gb = nr_pages >> (30 - PAGE_SHIFT)
    return isqrt(10 * gb) if gb else 1


def move_folios_to_lru(lruvec: ClassicLruvec, folios: list[tuple[int, str]]) -> Gen:
    """``move_folios_to_lru``: put isolated folios back, each at the head of its list
    (under ``lru_lock``: all at once, then the work is charged per folio); an active
    one ages ``nonresident_age`` (an activation)."""
    for pfn, lru in folios:
        lruvec.lruvec_add_folio(pfn, lru)
        if lru == LRU_ACTIVE_ANON:  # folio_test_active
            lruvec.workingset_age_nonresident()
    for _ in folios:
        yield nop(cost="lru_move_folio")


def isolate_lru_folios(lruvec: ClassicLruvec, nr_to_scan: int, lru: str) -> Gen:
    """``isolate_lru_folios``: up to ``nr_to_scan`` folios from the tail of ``lru`` (under
    ``lru_lock``: all at once, then the work is charged per folio)."""
    folios = lruvec.isolate(nr_to_scan, lru)
    for _ in folios:
        yield nop(cost="lru_isolate_folio")
    return folios


def prepare_scan_count(lruvec: ClassicLruvec, sc: ScanControl) -> None:
    """``prepare_scan_count``: deactivate anon folios if refaults were activated since
    the last reclaim ended ("a new workingset is being established. Deactivate to get
    rid of any stale active pages quickly") or the inactive list is low."""
    sc.may_deactivate = (lruvec.stats["refault_activated"] != lruvec.refaults_snapshot
                         or lruvec.inactive_is_low())


def snapshot_refaults(lruvec: Any) -> None:
    """``snapshot_refaults``, at the end of a reclaim (kswapd's or a direct one)."""
    if isinstance(lruvec, ClassicLruvec):
        lruvec.refaults_snapshot = lruvec.stats["refault_activated"]


def get_scan_count(lruvec: ClassicLruvec, sc: ScanControl) -> dict[str, int]:
    """``get_scan_count`` with anon the only evictable type: ``size >> priority``."""
    return {lru: lruvec.lruvec_lru_size(lru) >> sc.priority for lru in EVICTABLE_LRUS}


def shrink_lruvec(sys: "System", zone: Zone, lruvec: ClassicLruvec, sc: ScanControl) -> Gen:
    """``shrink_lruvec``: scan both lists in batches toward ``get_scan_count``'s
    targets; returns the folios reclaimed."""
    nr = get_scan_count(lruvec, sc)
    nr_reclaimed = 0
    proportional_reclaim = not sc.kswapd and sc.priority == DEF_PRIORITY
    # the kernel's loop condition names the inactive anon and both file lists: the
    # active anon list is only scanned alongside the inactive one
    while nr[LRU_INACTIVE_ANON]:
        for lru in EVICTABLE_LRUS:
            if nr[lru]:
                nr_to_scan = min(nr[lru], SWAP_CLUSTER_MAX)
                nr[lru] -= nr_to_scan
                nr_reclaimed += yield from shrink_list(sys, zone, lru, nr_to_scan, lruvec, sc)
        if nr_reclaimed < sc.nr_to_reclaim or proportional_reclaim:
            continue
        break  # nr_file == 0: "vindictive to attack the larger once the smaller is gone"
    if lruvec.inactive_is_low():  # rebalance even if anon was not scanned
        yield from shrink_active_list(sys, SWAP_CLUSTER_MAX, lruvec, sc)
    return nr_reclaimed


def shrink_list(sys: "System", zone: Zone, lru: str, nr_to_scan: int,
                lruvec: ClassicLruvec, sc: ScanControl) -> Gen:
    """``shrink_list``: deactivate from the active list (if ``prepare_scan_count``
    allowed it; nothing is reclaimed there) or shrink the inactive list."""
    if lru == LRU_ACTIVE_ANON:
        if sc.may_deactivate:
            yield from shrink_active_list(sys, nr_to_scan, lruvec, sc)
        return 0
    return (yield from shrink_inactive_list(sys, zone, nr_to_scan, lruvec, sc))


def shrink_active_list(sys: "System", nr_to_scan: int, lruvec: ClassicLruvec,
                       sc: ScanControl) -> Gen:
    """Deactivate up to ``nr_to_scan`` folios from the active tail. ``folio_referenced``
    runs on each (clearing its accessed bits, primary and secondary); its answer only
    matters for executable file folios, so every anon folio moves to the inactive list."""
    folios = yield from isolate_lru_folios(lruvec, nr_to_scan, LRU_ACTIVE_ANON)
    lruvec.stats["refill"] += len(folios)
    l_inactive = []
    for pfn in folios:
        yield from folio_referenced(sys, sys.mm, pfn)
        l_inactive.append((pfn, LRU_INACTIVE_ANON))  # folio_clear_active
    yield from move_folios_to_lru(lruvec, l_inactive)
    lruvec.stats["deactivated"] += len(l_inactive)


def shrink_inactive_list(sys: "System", zone: Zone, nr_to_scan: int, lruvec: ClassicLruvec,
                         sc: ScanControl) -> Gen:
    """Isolate up to ``nr_to_scan`` folios from the inactive tail, ``shrink_folio_list``
    them, put back the kept and activated ones; returns the folios reclaimed."""
    from .reclaim import shrink_folio_list  # reclaim.py imports this module

    folios = yield from isolate_lru_folios(lruvec, nr_to_scan, LRU_INACTIVE_ANON)
    sc.nr_scanned += len(folios)
    lruvec.stats["isolated"] += len(folios)
    if not folios:
        return 0
    ret: list[tuple[int, str]] = []
    nr_reclaimed = yield from shrink_folio_list(sys, zone, folios, ret)
    back = []
    for pfn, references in ret:
        if references == FOLIOREF_ACTIVATE:
            lruvec.stats["activated"] += 1
            back.append((pfn, LRU_ACTIVE_ANON))
        else:
            lruvec.stats["kept"] += 1
            back.append((pfn, LRU_INACTIVE_ANON))
    kept = {pfn for pfn, _ in ret}
    for pfn in folios:
        if pfn not in kept:
            lruvec.folio_freed(pfn)
    yield from move_folios_to_lru(lruvec, back)
    return nr_reclaimed


def kswapd_age_node(sys: "System", sc: ScanControl) -> Gen:
    """``kswapd_age_node``: "background aging of the anon list" before each
    ``shrink_node`` of kswapd, if the inactive list is low."""
    lruvec: ClassicLruvec = sys.mm.lru
    if lruvec.inactive_is_low():
        yield from shrink_active_list(sys, SWAP_CLUSTER_MAX, lruvec, sc)
