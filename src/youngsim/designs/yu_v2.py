"""``yu-v2``: "mm/kvm: locklessly clear the accessed bit", v2 (May 2023), as posted.

mm side (patch 1): ``mmu_notifier_ops->test_clear_young(mn, mm, start, end, clear,
bitmap)``. ``mmu_notifier_test_clear_young()`` ORs the subscribers' results and stops
early once young and ``!clear``; it returns ``MMU_NOTIFIER_RANGE_LOCKLESS`` if the fast
path ran, ``MMU_NOTIFIER_RANGE_YOUNG`` if the slow path did. The optional bitmap is
fast-path only: the bit of ``addr`` is ``(end - addr) / PAGE_SIZE - 1``; in test mode the
callee sets the bit of each young page, in clear mode it clears the accessed bit of each
young page whose bit is set (a predicate; the bitmap is not modified). With a bitmap and
no fast path the call bails out (returns 0); without one it falls back to the slow path.
``clear_young``/``test_young`` become calls of ``test_clear_young``.

KVM side: ``kvm_mmu_notifier_test_clear_young`` runs the arch fast path through the
generic walker with ``lockless = true`` (memslot iteration stops at the first arch
failure); ``kvm_should_clear_young`` records young, sets or tests the bitmap bit and tells
the arch whether to clear. ``kvm_arch_has_test_clear_young()`` may say yes while the
feature is off at run time (EPT A/D off, arm64 without hardware AF, the shadow MMU): the
arch function must then report failure.

MGLRU side (patch 10): one *test* call per batch of up to 64 pages (bitmap out), then at
the batch's last page one *clear* call over the span of the selected pages (bitmap as
predicate); pages that must not be aged have their bit cleared first. All of it only
while the capability bit 0x0008 of ``lru_gen/enabled`` is set (``LRU_GEN_SPTE_WALK``).
``should_look_around`` clears the faulting page's secondary PTE first and looks around on
behalf of the secondary MMU only if that ran the fast path.

Every call is checked against this contract by the monitors in ``_checked_call``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generator

import numpy as np

from ..kernel.kvm.kvm_main import (KvmHvaRange, __kvm_handle_hva_range, hva_to_gfn_memslot,
                                   gfn_to_hva, kvm_mmu_notifier_ops,
                                   mmu_notifier_to_kvm)
from ..kernel.mm.mm import pte_present, pte_young
from ..kernel.mm.mmu_notifier import MmuNotifierOps
from ..kernel.mm.vmscan import MIN_LRU_BATCH, decide, lru_gen_look_around
from ..kernel.system import PAGE_SIZE
from ..sim import Op, load, rcu_read_lock, rcu_read_unlock
from ..sim.vec import first_set, last_set
from .base import Design
from .bitmap import Bitmap

if TYPE_CHECKING:
    from ..kernel.kvm.kvm_main import Kvm, KvmGfnRange
    from ..kernel.mm.mm import MM
    from ..kernel.mm.mmu_notifier import MmuNotifier
    from ..kernel.system import System

Gen = Generator[Op, Any, Any]

MMU_NOTIFIER_RANGE_LOCKLESS = 1 << 1
MMU_NOTIFIER_RANGE_YOUNG = 1 << 2


#: the lru_gen/enabled capability bit that lets MGLRU walk secondary MMUs (patch 10)
LRU_GEN_SPTE_WALK = 0x0008


def bitmap_offset(start: int, end: int, addr: int) -> int:
    """The spec: the bit for ``addr`` is counted from the end of the range."""
    return (end - addr) // PAGE_SIZE - 1


# --- mm/mmu_notifier.c ----------------------------------------------------------------

def __mmu_notifier_test_clear_young(sys: "System", mm: "MM", start: int, end: int,
                                    clear: bool, bitmap: Bitmap | None) -> Gen:
    ret = 0
    yield rcu_read_lock(mm.srcu, cost="srcu_read_lock")
    for mn in mm.subscriptions:
        if mn.ops.test_clear_young is not None:
            ret |= yield from mn.ops.test_clear_young(mn, mm, start, end, clear, bitmap)
            if ret and (not clear or sys.bug("early-break-in-clear")):
                break
    yield rcu_read_unlock(mm.srcu, cost="srcu_read_unlock")
    return ret


def mmu_notifier_test_clear_young(sys: "System", mm: "MM", start: int, end: int,
                                  clear: bool, bitmap: Bitmap | None) -> Gen:
    if not mm.mm_has_notifiers():
        return 0
    return (yield from _checked_call(sys, mm, start, end, clear, bitmap))


def mmu_notifier_clear_young(sys: "System", mm: "MM", start: int, end: int) -> Gen:
    return (yield from mmu_notifier_test_clear_young(sys, mm, start, end, True, None))


def mmu_notifier_test_young(sys: "System", mm: "MM", addr: int) -> Gen:
    return (yield from mmu_notifier_test_clear_young(sys, mm, addr, addr + 1, False, None))


# --- virt/kvm/kvm_main.c --------------------------------------------------------------

@dataclass
class TestClearYoungArgs:
    bitmap: Bitmap | None
    end: int
    clear: bool
    young: bool = False


def kvm_should_clear_young(sys: "System", range: "KvmGfnRange", gfn: int) -> bool:
    args: TestClearYoungArgs = range.arg
    if gfn < range.start or gfn >= range.end:
        sys.contract(False, f"kvm_should_clear_young: gfn {gfn} outside the range")
    args.young = True
    if args.bitmap is not None:
        if sys.bug("bitmap-offset-from-start"):
            offset = gfn - range.start
        else:
            offset = hva_to_gfn_memslot(args.end - 1, range.slot) - gfn
        if args.clear:
            return True if sys.bug("clear-ignores-predicate") else args.bitmap.test_bit(offset)
        args.bitmap.set_bit(offset)
    return args.clear


def kvm_mmu_notifier_test_clear_young(mn: "MmuNotifier", mm: "MM", start: int, end: int,
                                      clear: bool, bitmap: Bitmap | None) -> Gen:
    kvm = mmu_notifier_to_kvm(mn)
    sys = kvm.sys
    sys.ghost_note("subscribers", kvm.name)
    sys.count("aging_notifier_calls")
    range = KvmHvaRange(start=start, end=end, handler=kvm_arch_test_clear_young,
                        aging=True)
    if kvm_arch_has_test_clear_young(kvm):
        args = TestClearYoungArgs(bitmap=bitmap, end=end, clear=clear)
        range.arg = args
        range.lockless = True
        range.stop_on_ret = True
        failed, _ = yield from __kvm_handle_hva_range(kvm, range)
        if not failed:
            sys.ghost_note("paths", "fast")
            return MMU_NOTIFIER_RANGE_LOCKLESS if args.young else 0
    if bitmap is not None:
        sys.ghost_note("paths", "bail")
        sys.count("aging_bitmap_bailouts")  # the secondary MMU is not aged by this call
        return 0
    sys.ghost_note("paths", "slow")
    range = KvmHvaRange(start=start, end=end,
                        handler=kvm.arch.kvm_age_gfn if clear else kvm.arch.kvm_test_age_gfn,
                        aging=True)
    young, _ = yield from __kvm_handle_hva_range(kvm, range)
    if not young:
        return 0
    if sys.bug("slow-path-returns-lockless"):
        return MMU_NOTIFIER_RANGE_LOCKLESS
    return MMU_NOTIFIER_RANGE_YOUNG


class ShouldClearYoung:
    """``kvm_should_clear_young`` bound to one range, as the arch walker calls it per
    young SPTE; ``chunk`` is the same for a chunk of them when no bitmap makes the
    answer depend on the page (the timed driver's vectorised walk)."""

    def __init__(self, sys: "System", range: "KvmGfnRange") -> None:
        self.sys, self.range = sys, range

    def __call__(self, gfn: int) -> bool:
        return kvm_should_clear_young(self.sys, self.range, gfn)

    @property
    def clears_young(self) -> bool:
        """Is every young page cleared (no bitmap, a clear)? Then the walker may clear
        a chunk before it asks (``chunk`` still records)."""
        args: TestClearYoungArgs = self.range.arg
        return args.bitmap is None and args.clear

    def chunk(self, first: int, young: Any) -> Any:
        args: TestClearYoungArgs = self.range.arg
        if args.bitmap is not None:
            return [young[k] and self(first + k) for k in range(len(young))]
        k = int(first_set(young))  # the first young page, if any
        if k >= 0:
            lo, hi = first + k, first + int(last_set(young))  # (and the last one)
            if lo < self.range.start or hi >= self.range.end:
                self.sys.contract(False, "kvm_should_clear_young: gfn "
                                  f"{lo if lo < self.range.start else hi} outside the range")
            args.young = True
        return young if args.clear else np.zeros(len(young), dtype=bool)


def kvm_arch_has_test_clear_young(kvm: "Kvm") -> bool:
    """Compile-time answer: x86 and arm64 implement the op."""
    return kvm.arch.name.startswith(("x86", "arm64"))


def kvm_arch_test_clear_young(kvm: "Kvm", range: "KvmGfnRange") -> Gen:
    """The arch fast path. Returns True on *failure* (the caller falls back)."""
    sys = kvm.sys
    if not kvm.arch.lockless_fast_path_ok() and not sys.bug("fast-path-ignores-ad-off"):
        return True
    yield from kvm.arch.age_gfn_range(kvm, range, test_only=not range.arg.clear,
                                      should_clear=ShouldClearYoung(sys, range))
    return False


# --- the contract, checked around every mm-side call ----------------------------------

def _checked_call(sys: "System", mm: "MM", start: int, end: int, clear: bool,
                  bitmap: Bitmap | None) -> Gen:
    before = bitmap.copy() if bitmap is not None else None
    rec = sys.begin_call()
    ret = yield from __mmu_notifier_test_clear_young(sys, mm, start, end, clear, bitmap)
    sys.end_call()
    kvm = mm.subscriptions[0].owner if mm.subscriptions else None
    npages = max(1, (end - start + PAGE_SIZE - 1) // PAGE_SIZE)
    paths = rec["paths"]
    sys.contract(not (ret & MMU_NOTIFIER_RANGE_LOCKLESS) or "fast" in paths,
                 "test_clear_young returned LOCKLESS but no fast path ran")
    sys.contract(not (ret & MMU_NOTIFIER_RANGE_YOUNG) or "slow" in paths,
                 "test_clear_young returned YOUNG but no slow path ran")
    if clear:
        with_op = [mn.owner.name for mn in mm.subscriptions
                   if mn.ops.test_clear_young is not None]
        sys.contract(rec["subscribers"] == with_op,
                     f"clear mode must call every subscriber: called {rec['subscribers']}"
                     f" of {with_op}")
        if rec["cleared"] and ret == 0:  # (the message lists them: only then)
            sys.contract(False, f"cleared young pages {sorted(rec['cleared'])} but "
                         "returned 0")
    if bitmap is not None and before is not None and kvm is not None:
        for nr in range(npages, len(bitmap)):
            sys.contract(bitmap.bits[nr] == before.bits[nr],
                         f"bit {nr} outside the {npages}-page range was changed")
        if clear:
            sys.contract(bitmap == before, "clear mode modified the predicate bitmap")
            for gfn in rec["cleared"]:
                off = bitmap_offset(start, end, gfn_to_hva(kvm, gfn))
                sys.contract(0 <= off < npages and before.bits[off],
                             f"cleared gfn {gfn} whose predicate bit {off} is not set")
        elif "fast" in paths:
            for gfn in rec["young"]:
                off = bitmap_offset(start, end, gfn_to_hva(kvm, gfn))
                sys.contract(0 <= off < npages and bitmap.bits[off],
                             f"young gfn {gfn}: bit {off} (counted from the end) not set")
            young_offs = {bitmap_offset(start, end, gfn_to_hva(kvm, g))
                          for g in rec["young"]}
            for nr in range(npages):
                if bitmap.bits[nr] and not before.bits[nr]:
                    sys.contract(nr in young_offs, f"bit {nr} set for a page not seen young")
    return ret


# --- mm/vmscan.c (patch 10) -----------------------------------------------------------

def lru_gen_batch(sys: "System", mm: "MM", start: int, end: int, caller: str,
                  skip: int | None = None) -> Gen:
    """``walk_pte_range``/look-around for one batch: ``test_spte_young`` for the batch,
    the per-page loop, then ``clear_spte_young`` over the selected span."""
    nbits = MIN_LRU_BATCH
    bitmap = Bitmap(nbits)
    ret = 0
    if sys.lru_gen_enabled & LRU_GEN_SPTE_WALK:
        ret = yield from mmu_notifier_test_clear_young(sys, mm, start, end, False, bitmap)
    if not ret & MMU_NOTIFIER_RANGE_LOCKLESS:
        bitmap = Bitmap(nbits)  # no fast path: the secondary MMU is not walked
    selected: list[int] = []
    for addr in range(start, end, PAGE_SIZE):
        off = bitmap_offset(start, end, addr)
        if addr == skip:
            bitmap.clear_bit(off)
            continue
        t, i = mm.pte_slot(addr)
        pte = yield load(t, i, cost="pte_read")
        if not pte_present(pte) or not mm.in_reclaim_scope(addr):
            bitmap.clear_bit(off)  # must not be aged: keep its accessed bit
            continue
        young = False
        if pte_young(pte):
            young = yield from mm.ptep_test_and_clear_young(addr)
        if bitmap.test_bit(off):
            selected.append(addr)
            young = True
        decide(sys, mm, addr, bool(young), caller)
    if selected:
        # clear_spte_young: one call over [lowest, highest] selected page, the bitmap
        # re-based to the new end
        lo, hi = selected[0], selected[-1] + PAGE_SIZE
        shift = (end - hi) // PAGE_SIZE
        pred = Bitmap(nbits)
        for nr in bitmap.set_bits():
            if nr >= shift:
                pred.set_bit(nr - shift)
        yield from mmu_notifier_test_clear_young(sys, mm, lo, hi, True, pred)


def should_look_around(sys: "System", mm: "MM", addr: int, pte: int, lo: int, hi: int,
                       look_around: bool) -> Gen:
    """Clear the faulting page (primary, then secondary with ``clear_young``); look
    around on behalf of the secondary MMU only if its fast path ran."""
    young = yield from mm.ptep_test_and_clear_young(addr)
    ret = yield from mmu_notifier_clear_young(sys, mm, addr, addr + PAGE_SIZE)
    if look_around:
        if ret & MMU_NOTIFIER_RANGE_LOCKLESS and sys.lru_gen_enabled & LRU_GEN_SPTE_WALK:
            for bstart in range(lo, hi, MIN_LRU_BATCH * PAGE_SIZE):
                yield from lru_gen_batch(sys, mm, bstart,
                                         min(hi, bstart + MIN_LRU_BATCH * PAGE_SIZE),
                                         "look_around", skip=addr)
        elif pte_young(pte):
            yield from lru_gen_look_around(sys, mm, addr, lo, hi)
    return int(bool(young) or bool(ret))


class YuV2(Design):
    name = "yu-v2"
    summary = "2023 series v2: test_clear_young, lockless fast path, one bitmap"
    kernel = "Linux 6.4 + v2 series"
    mglru = "batched"
    rmap_flush = False
    flush_if_young = True
    accessed_volatile = True

    def notifier_ops(self, kvm: "Kvm") -> MmuNotifierOps:
        ops = kvm_mmu_notifier_ops(self.flush_if_young, lockless=False)
        ops.test_clear_young = kvm_mmu_notifier_test_clear_young
        # clear_young and test_young become calls of test_clear_young
        ops.clear_young = None
        ops.test_young = None
        return ops

    def mmu_notifier_clear_young(self, sys: "System", mm: "MM", start: int, end: int
                                 ) -> Gen:
        """Patch 1: ``test_clear_young(clear=true, NULL)`` over the range."""
        return (yield from mmu_notifier_clear_young(sys, mm, start, end))

    def ptep_clear_young_notify(self, sys: "System", mm: "MM", addr: int) -> Gen:
        """Patch 1: ``mmu_notifier_clear_young`` is ``test_clear_young(clear=true,
        NULL)`` (the fast path, else the locked slow path)."""
        young = yield from mm.ptep_test_and_clear_young(addr)
        ret = yield from mmu_notifier_clear_young(sys, mm, addr, addr + PAGE_SIZE)
        return bool(young) or bool(ret)

    lru_gen_batch = staticmethod(lru_gen_batch)
    should_look_around = staticmethod(should_look_around)


DESIGN = YuV2()
