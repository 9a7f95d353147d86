"""``reviewed``: the API the seed's reviewer asked for (never posted; ours to build).

mm side, touching only mmu_notifier code: ``mmu_notifier_test_clear_young_range(mm,
start, end, young, predicate)`` with two optional bitmaps and no mode flag:

- ``young`` (output, may be NULL): the bit of every page found young is set;
- ``predicate`` (input, may be NULL): only pages whose bit is set may be cleared; NULL
  means every young page is cleared;
- the bit of ``addr`` is ``mmu_notifier_range_bit(start, addr)``, counted from the start
  (an inline helper, so callers and implementations cannot disagree);
- returns nonzero iff a page in the range was young (accessed via the secondary MMU).

Subscribers that lack the op are served by a generic fallback in terms of the existing
``test_young``/``clear_young``, one page at a time (patch 1 of the reviewer's plan).

KVM side, "age" names: ``kvm_mmu_notifier_test_clear_young_range`` ->
``kvm_age_gfn_range``. The op is always implemented: lockless where the arch can walk
locklessly (and the lockless path is on), otherwise under ``mmu_lock`` taken once per
call with each page looked up individually, so batching amortises the lock round trip.
``reviewed-locked`` is the same design with the lockless path switched off, to measure
the locked batched fallback on its own (the reviewer's hypothesis).

MGLRU: the two bitmaps let one call per batch do what yu-v2 needs two for: the caller
first computes which pages may be aged (the predicate), then one call clears those and
reports every young page.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Generator

from ..kernel.kvm.kvm_main import (KvmHvaRange, __kvm_handle_hva_range, gfn_to_hva, gfn_to_hva_memslot,
                                   kvm_mmu_notifier_ops, mmu_notifier_to_kvm)
from ..kernel.mm.mm import pte_present, pte_young
from ..kernel.mm.mmu_notifier import MmuNotifierOps
from ..kernel.mm.vmscan import MIN_LRU_BATCH, decide
from ..kernel.system import PAGE_SHIFT, PAGE_SIZE
from ..sim import Op, load, rcu_read_lock, rcu_read_unlock
from .base import Design
from .bitmap import Bitmap

if TYPE_CHECKING:
    from ..kernel.kvm.kvm_main import Kvm, KvmGfnRange
    from ..kernel.mm.mm import MM
    from ..kernel.mm.mmu_notifier import MmuNotifier
    from ..kernel.system import System

Gen = Generator[Op, Any, Any]


def mmu_notifier_range_bit(start: int, addr: int) -> int:
    """The bitmap offset of ``addr`` in a call starting at ``start``."""
    return (addr - start) >> PAGE_SHIFT


# --- mm/mmu_notifier.c ----------------------------------------------------------------

def __mmu_notifier_test_clear_young_range(sys: "System", mm: "MM", start: int, end: int,
                                          young: Bitmap | None,
                                          predicate: Bitmap | None) -> Gen:
    ret = 0
    yield rcu_read_lock(mm.srcu, cost="srcu_read_lock")
    for mn in mm.subscriptions:
        if mn.ops.test_clear_young_range is not None:
            ret |= yield from mn.ops.test_clear_young_range(mn, mm, start, end, young,
                                                            predicate)
        else:
            ret |= yield from _generic_test_clear_young_range(mn, mm, start, end, young,
                                                              predicate)
    yield rcu_read_unlock(mm.srcu, cost="srcu_read_unlock")
    return ret


def _generic_test_clear_young_range(mn: "MmuNotifier", mm: "MM", start: int, end: int,
                                    young: Bitmap | None, predicate: Bitmap | None) -> Gen:
    """For a subscriber without the op: one ``clear_young`` or ``test_young`` per page."""
    ret = 0
    for addr in range(start, end, PAGE_SIZE):
        nr = mmu_notifier_range_bit(start, addr)
        if predicate is None or predicate.test_bit(nr):
            y = (yield from mn.ops.clear_young(mn, mm, addr, addr + PAGE_SIZE)
                 ) if mn.ops.clear_young else 0
        else:
            y = (yield from mn.ops.test_young(mn, mm, addr)) if mn.ops.test_young else 0
        if y:
            ret = 1
            if young is not None:
                young.set_bit(nr)
    return ret


def mmu_notifier_test_clear_young_range(sys: "System", mm: "MM", start: int, end: int,
                                        young: Bitmap | None, predicate: Bitmap | None
                                        ) -> Gen:
    if not mm.mm_has_notifiers():
        return 0
    return (yield from _checked_call(sys, mm, start, end, young, predicate))


# --- virt/kvm/kvm_main.c --------------------------------------------------------------

def kvm_gfn_range_bit(range: "KvmGfnRange", start: int, gfn: int) -> int:
    """The bitmap offset of ``gfn`` for a call that started at hva ``start``."""
    return mmu_notifier_range_bit(start, gfn_to_hva_memslot(gfn, range.slot))


def kvm_mmu_notifier_test_clear_young_range(mn: "MmuNotifier", mm: "MM", start: int,
                                            end: int, young: Bitmap | None,
                                            predicate: Bitmap | None) -> Gen:
    kvm = mmu_notifier_to_kvm(mn)
    sys = kvm.sys
    sys.ghost_note("subscribers", kvm.name)
    lockless = sys.design.kvm_lockless(kvm)
    sys.ghost_note("paths", "lockless" if lockless else "locked")
    sys.count("aging_notifier_calls")
    range = KvmHvaRange(start=start, end=end, handler=kvm_age_gfn_range,
                        lockless=lockless, arg=(start, young, predicate), aging=True)
    ret, _ = yield from __kvm_handle_hva_range(kvm, range)
    return int(bool(ret))


def kvm_age_gfn_range(kvm: "Kvm", range: "KvmGfnRange") -> Gen:
    """Age the range with the bitmaps: one walk, locked or lockless as the range says."""
    start, young, predicate = range.arg

    def should_clear(gfn: int) -> bool:
        nr = kvm_gfn_range_bit(range, start, gfn)
        if young is not None:
            young.set_bit(nr)
        return predicate is None or predicate.test_bit(nr)

    if young is None and predicate is None:  # no bitmap: every young page is cleared
        should_clear.chunk = lambda first, mask: mask  # type: ignore[attr-defined]
        should_clear.clears_young = True  # type: ignore[attr-defined]
    return (yield from kvm.arch.age_gfn_range(kvm, range, test_only=False,
                                              should_clear=should_clear))


# --- the contract, checked around every mm-side call ----------------------------------

def _checked_call(sys: "System", mm: "MM", start: int, end: int, young: Bitmap | None,
                  predicate: Bitmap | None) -> Gen:
    pred_before = predicate.copy() if predicate is not None else None
    young_before = young.copy() if young is not None else None
    rec = sys.begin_call()
    ret = yield from __mmu_notifier_test_clear_young_range(sys, mm, start, end, young,
                                                           predicate)
    sys.end_call()
    kvm = mm.subscriptions[0].owner if mm.subscriptions else None
    npages = (end - start + PAGE_SIZE - 1) // PAGE_SIZE
    with_op = [mn.owner.name for mn in mm.subscriptions
               if mn.ops.test_clear_young_range is not None]
    sys.contract(rec["subscribers"] == with_op,
                 f"every subscriber must be called: called {rec['subscribers']} of {with_op}")
    sys.contract(not rec["young"] or ret, "a page was young but the call returned 0")
    if kvm is None:
        return ret
    if predicate is not None and pred_before is not None:
        sys.contract(predicate == pred_before, "the predicate bitmap was modified")
        for gfn in rec["cleared"]:
            nr = mmu_notifier_range_bit(start, gfn_to_hva(kvm, gfn))
            sys.contract(0 <= nr < npages and pred_before.bits[nr],
                         f"cleared gfn {gfn} whose predicate bit {nr} is not set")
    if young is not None and young_before is not None:
        seen = {mmu_notifier_range_bit(start, gfn_to_hva(kvm, g))
                for g in rec["young"]}
        for nr in range(len(young)):
            if nr >= npages:
                sys.contract(young.bits[nr] == young_before.bits[nr],
                             f"bit {nr} outside the {npages}-page range was changed")
            elif nr in seen:
                sys.contract(young.bits[nr], f"young page bit {nr} not set")
            elif young.bits[nr] and not young_before.bits[nr]:
                sys.contract(False, f"bit {nr} set for a page not seen young")
    return ret


# --- mm/vmscan.c ----------------------------------------------------------------------

def lru_gen_batch(sys: "System", mm: "MM", start: int, end: int, caller: str,
                  skip: int | None = None) -> Gen:
    """One batch: compute which pages may be aged, then one call clears them in every
    secondary MMU and reports which pages were young there."""
    nbits = MIN_LRU_BATCH
    predicate = Bitmap(nbits)
    young = Bitmap(nbits)
    primary: dict[int, bool] = {}
    for addr in range(start, end, PAGE_SIZE):
        if addr == skip:
            continue
        t, i = mm.pte_slot(addr)
        pte = yield load(t, i, cost="pte_read")
        if not pte_present(pte) or not mm.in_reclaim_scope(addr):
            continue  # must not be aged: not in the predicate
        predicate.set_bit(mmu_notifier_range_bit(start, addr))
        y = False
        if pte_young(pte):
            y = yield from mm.ptep_test_and_clear_young(addr)
        primary[addr] = bool(y)
    if primary:
        yield from mmu_notifier_test_clear_young_range(sys, mm, start, end, young, predicate)
    for addr, y in primary.items():
        decide(sys, mm, addr, y or young.test_bit(mmu_notifier_range_bit(start, addr)),
               caller)


def should_look_around(sys: "System", mm: "MM", addr: int, pte: int, lo: int, hi: int,
                       look_around: bool) -> Gen:
    """Clear the faulting page everywhere; if it was young, age its neighbours in
    batches (the op is always implemented, so the secondary MMU is always included)."""
    y = yield from mm.ptep_test_and_clear_young(addr)
    ret = yield from mmu_notifier_test_clear_young_range(sys, mm, addr, addr + PAGE_SIZE,
                                                         None, None)
    referenced = bool(y) or bool(ret)
    if look_around and referenced:
        for bstart in range(lo, hi, MIN_LRU_BATCH * PAGE_SIZE):
            yield from lru_gen_batch(sys, mm, bstart,
                                     min(hi, bstart + MIN_LRU_BATCH * PAGE_SIZE),
                                     "look_around", skip=addr)
    return int(referenced)


class Reviewed(Design):
    name = "reviewed"
    summary = "reviewer's API: two bitmaps, always implemented, locked batched fallback"
    kernel = "Linux 6.4 + the reviewer's API (never posted)"
    mglru = "batched"
    rmap_flush = False
    flush_if_young = True
    accessed_volatile = True
    lockless = True

    def kvm_lockless(self, kvm: "Kvm") -> bool:
        """Lockless where the 2023 arch code could walk locklessly."""
        return self.lockless and kvm.arch.lockless_fast_path_ok()

    def notifier_ops(self, kvm: "Kvm") -> MmuNotifierOps:
        ops = kvm_mmu_notifier_ops(self.flush_if_young, lockless=False)
        ops.test_clear_young_range = kvm_mmu_notifier_test_clear_young_range
        return ops

    def mmu_notifier_clear_young(self, sys: "System", mm: "MM", start: int, end: int
                                 ) -> Gen:
        """As below, over the range: ``test_clear_young_range`` with no bitmap."""
        return (yield from mmu_notifier_test_clear_young_range(sys, mm, start, end, None,
                                                               None))

    def ptep_clear_young_notify(self, sys: "System", mm: "MM", addr: int) -> Gen:
        """Once KVM has switched to the new op (the reviewer's second step),
        ``mmu_notifier_clear_young`` is ``test_clear_young_range`` over the page with no
        bitmap, as ``should_look_around`` clears the rmap's page."""
        young = yield from mm.ptep_test_and_clear_young(addr)
        ret = yield from mmu_notifier_test_clear_young_range(sys, mm, addr, addr + PAGE_SIZE,
                                                             None, None)
        return bool(young) or bool(ret)

    lru_gen_batch = staticmethod(lru_gen_batch)
    should_look_around = staticmethod(should_look_around)


class ReviewedLocked(Reviewed):
    name = "reviewed-locked"
    summary = "reviewed with the lockless path off: the locked batched fallback alone"
    lockless = False


DESIGN = Reviewed()
DESIGN_LOCKED = ReviewedLocked()
