"""``virt/kvm/kvm_main.c``: memslots, the generic hva-range walker and the mmu_notifier
callbacks, written once for every architecture.

The walker ``__kvm_handle_hva_range`` translates a host-virtual range into a gfn range per
overlapping memslot (under ``kvm->srcu``) and calls an arch handler on each. Unless the
range is ``lockless`` it takes ``kvm->mmu_lock`` for write around the handlers, which is
the lock round trip the whole 2023 discussion is about.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Generator

import numpy as np

from ...sim import (Op, RcuDomain, RWLock, fetch_add, load, rcu_read_lock, rcu_read_unlock,
                    vstore, wait_until, write_lock, write_unlock)
from ..mm.mmu_notifier import MmuNotifier, MmuNotifierOps, mmu_notifier_register
from ..system import PAGE_SHIFT, PAGE_SIZE

if TYPE_CHECKING:
    from ..mm.mm import MM
    from ..system import System

Gen = Generator[Op, Any, Any]


@dataclass
class Memslot:
    """``struct kvm_memory_slot``: guest frames [base_gfn, base_gfn + npages) backed by
    host virtual addresses from ``userspace_addr``."""

    base_gfn: int
    npages: int
    userspace_addr: int
    id: int = 0

    @property
    def hva_end(self) -> int:
        return self.userspace_addr + self.npages * PAGE_SIZE


def hva_to_gfn_memslot(hva: int, slot: Memslot) -> int:
    return slot.base_gfn + ((hva - slot.userspace_addr) >> PAGE_SHIFT)


def gfn_to_hva_memslot(gfn: int, slot: Memslot) -> int:
    return slot.userspace_addr + ((gfn - slot.base_gfn) << PAGE_SHIFT)


def gfn_to_hva(kvm: "Kvm", gfn: int) -> int:
    """``gfn_to_hva``: through whichever memslot holds ``gfn``."""
    slot = kvm.gfn_to_memslot(gfn)
    assert slot is not None, f"gfn {gfn} outside every memslot"
    return gfn_to_hva_memslot(gfn, slot)


@dataclass
class KvmGfnRange:
    """``struct kvm_gfn_range``: what an arch handler gets."""

    slot: Memslot
    start: int  # gfn
    end: int  # gfn, exclusive
    arg: Any = None
    may_block: bool = False
    lockless: bool = False


Handler = Callable[["Kvm", KvmGfnRange], Gen]


@dataclass
class KvmHvaRange:
    """``struct kvm_mmu_notifier_range`` (``kvm_hva_range`` in older kernels)."""

    start: int
    end: int
    handler: Handler
    on_lock: Callable[["Kvm"], Gen] | None = None
    flush_on_ret: bool = False
    may_block: bool = False
    lockless: bool = False
    arg: Any = None
    #: yu-v2: a lockless handler's nonzero return means "fast path failed": stop walking
    stop_on_ret: bool = False
    #: an aging walk (counted: ``aging_mmu_lock`` when it takes mmu_lock)
    aging: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


class Kvm:
    """``struct kvm``: one VM, subscribed to the mm of the process that created it."""

    def __init__(self, sys: "System", mm: "MM", memslots: list[Memslot], name: str = "kvm"
                 ) -> None:
        self.sys = sys
        self.mm = mm
        self.name = name
        self.memslots = memslots
        self.mmu_lock = RWLock(f"{name}->mmu_lock")  # KVM_HAVE_MMU_RWLOCK (x86, arm64)
        self.srcu = RcuDomain(f"{name}->srcu", sleepable=True)
        # mmu_invalidate_seq, mmu_invalidate_in_progress: written under mmu_lock for write
        self.mmu_invalidate = sys.m.new_words(f"{name}->mmu_invalidate", 2)
        self.vcpus: list[Any] = []
        self.arch: Any = None  # the secondary MMU (x86 TDP / shadow, arm64 stage-2)
        self.mn = MmuNotifier(MmuNotifierOps(), self, name=f"{name}->mmu_notifier")
        sys.kvms.append(self)

    def register(self, ops: MmuNotifierOps) -> None:
        """``kvm_init_mmu_notifier``."""
        self.mn.ops = ops
        mmu_notifier_register(self.mm, self.mn)

    def gfn_to_memslot(self, gfn: int) -> Memslot | None:
        for s in self.memslots:
            if s.base_gfn <= gfn < s.base_gfn + s.npages:
                return s
        return None


SEQ, IN_PROGRESS = 0, 1


def mmu_notifier_to_kvm(mn: MmuNotifier) -> Kvm:
    kvm: Kvm = mn.owner
    return kvm


def __kvm_handle_hva_range(kvm: Kvm, range: KvmHvaRange) -> Gen:
    """Run ``range.handler`` over every memslot overlapping the hva range. Returns the
    OR of the handlers' results and whether any memslot was found."""
    ret = False
    found = False
    locked = False
    yield rcu_read_lock(kvm.srcu, cost="srcu_read_lock")  # idx = srcu_read_lock(&kvm->srcu)
    for slot in kvm.memslots:
        hva_start = max(range.start, slot.userspace_addr)
        hva_end = min(range.end, slot.hva_end)
        if hva_start >= hva_end:
            continue
        gfn_range = KvmGfnRange(
            slot=slot,
            start=hva_to_gfn_memslot(hva_start, slot),
            end=hva_to_gfn_memslot(hva_end + PAGE_SIZE - 1, slot),
            arg=range.arg, may_block=range.may_block, lockless=range.lockless)
        found = True
        if not locked:
            locked = True
            if not range.lockless and not kvm.sys.bug("locked-fallback-forgets-lock"):
                yield write_lock(kvm.mmu_lock, cost="mmu_lock_write")  # KVM_MMU_LOCK(kvm)
                if range.aging:
                    kvm.sys.count("aging_mmu_lock")
            if range.on_lock is not None:
                yield from range.on_lock(kvm)
        r = yield from range.handler(kvm, gfn_range)
        ret |= bool(r)
        if range.lockless and range.stop_on_ret and r:
            break
    if range.flush_on_ret and ret:
        yield from kvm_flush_remote_tlbs(kvm)
    if locked and not range.lockless and not kvm.sys.bug("locked-fallback-forgets-lock"):
        yield write_unlock(kvm.mmu_lock, cost="mmu_lock_write_release")
    yield rcu_read_unlock(kvm.srcu, cost="srcu_read_unlock")
    return ret, found


def kvm_handle_hva_range(mn: MmuNotifier, start: int, end: int, handler: Handler,
                         flush_on_ret: bool, lockless: bool = False) -> Gen:
    """The aging callbacks' walk (one notifier call into KVM: ``aging_notifier_calls``)."""
    kvm = mmu_notifier_to_kvm(mn)
    kvm.sys.count("aging_notifier_calls")
    range = KvmHvaRange(start=start, end=end, handler=handler, flush_on_ret=flush_on_ret,
                        lockless=lockless, aging=True)
    ret, _ = yield from __kvm_handle_hva_range(kvm, range)
    return ret


def kvm_flush_remote_tlbs(kvm: Kvm) -> Gen:
    """Flush every vCPU's TLB (``kvm_make_all_cpus_request(KVM_REQ_TLB_FLUSH)``): raise
    the request, wait until the vCPU is between instructions (the IPI is taken at an
    instruction boundary), drop its cached translations, then let it run again."""
    kvm.sys.count("tlb_flushes")
    for vcpu in kvm.vcpus:
        yield fetch_add(vcpu.req, 0, 1, cost="tlb_flush_request")
    for vcpu in kvm.vcpus:
        yield wait_until(vcpu.insn, 0, 1, 0, cost="tlb_flush_ipi")
        yield vstore(vcpu.tlb, 0, np.zeros(len(vcpu.tlb), dtype=np.uint64),
                     cost="tlb_flush_local")
        yield fetch_add(vcpu.req, 0, -1, cost="tlb_flush_done")


# -- invalidation: the retry protocol that keeps faults coherent with the primary MMU ---

def kvm_mmu_invalidate_begin(kvm: Kvm) -> Gen:
    kvm.sys.m.lockdep_assert_held(kvm.mmu_lock, write=True)
    yield fetch_add(kvm.mmu_invalidate, IN_PROGRESS, 1)


def kvm_mmu_invalidate_end(kvm: Kvm) -> Gen:
    kvm.sys.m.lockdep_assert_held(kvm.mmu_lock, write=True)
    yield fetch_add(kvm.mmu_invalidate, SEQ, 1)
    yield fetch_add(kvm.mmu_invalidate, IN_PROGRESS, -1)


def mmu_invalidate_seq(kvm: Kvm) -> Gen:
    """``mmu_seq = kvm->mmu_invalidate_seq; smp_rmb();`` before resolving the pfn."""
    return (yield load(kvm.mmu_invalidate, SEQ, cost="mmu_seq_read"))


def mmu_invalidate_retry(kvm: Kvm, mmu_seq: int) -> Gen:
    """Under mmu_lock: must the fault retry because an invalidation raced with it?"""
    if (yield load(kvm.mmu_invalidate, IN_PROGRESS, cost="mmu_seq_read")):
        return True
    return (yield load(kvm.mmu_invalidate, SEQ, cost="mmu_seq_read")) != mmu_seq


def kvm_faultin_pfn(kvm: Kvm, gfn: int, write: bool, mmu_seq: int | None = None,
                    pte: int | None = None) -> Gen:
    """The first half of every arch's fault path (x86 ``kvm_faultin_pfn``, arm64
    ``user_mem_abort``): snapshot ``mmu_invalidate_seq``, then resolve the pfn on the
    primary MMU, faulting it in if needed. Returns (mmu_seq, pfn). ``mmu_seq``,
    ``pte``: what those reads already found (a fault stream hands over after them)."""
    slot = kvm.gfn_to_memslot(gfn)
    assert slot is not None, f"gfn {gfn} outside every memslot"
    if mmu_seq is None:
        mmu_seq = yield from mmu_invalidate_seq(kvm)
    pfn = yield from kvm.mm.handle_mm_fault(gfn_to_hva_memslot(gfn, slot), write, pte)
    return mmu_seq, pfn


def is_page_fault_stale(kvm: Kvm, mmu_seq: int) -> Gen:
    """Under mmu_lock: did an invalidation race with the fault since ``mmu_seq``? (The
    seeded bug ``fault-skips-retry-check`` forgets to ask.)"""
    stale = yield from mmu_invalidate_retry(kvm, mmu_seq)
    return stale and not kvm.sys.bug("fault-skips-retry-check")


def kvm_mmu_invalidate_wait(kvm: Kvm) -> Gen:
    """After a fault gave up for a racing invalidation: the vCPU re-enters the guest,
    faults again and retries until the invalidation is over. That busy loop makes no
    progress, so it is modelled as waiting for ``mmu_invalidate_in_progress == 0`` (a
    fairness abstraction: exploration never spins through an unbounded retry loop)."""
    yield wait_until(kvm.mmu_invalidate, IN_PROGRESS, (1 << 64) - 1, 0, cost="fault_retry")


# -- the mmu_notifier callbacks (``kvm_mmu_notifier_ops``) ------------------------------

def kvm_mmu_notifier_invalidate_range_start(mn: MmuNotifier, mm: "MM", start: int, end: int
                                            ) -> Gen:
    kvm = mmu_notifier_to_kvm(mn)
    range = KvmHvaRange(start=start, end=end, handler=kvm.arch.kvm_unmap_gfn_range,
                        on_lock=kvm_mmu_invalidate_begin, flush_on_ret=True, may_block=True)
    yield from __kvm_handle_hva_range(kvm, range)
    return 0


def kvm_mmu_notifier_invalidate_range_end(mn: MmuNotifier, mm: "MM", start: int, end: int
                                          ) -> Gen:
    kvm = mmu_notifier_to_kvm(mn)
    range = KvmHvaRange(start=start, end=end, handler=_kvm_null_fn,
                        on_lock=kvm_mmu_invalidate_end)
    yield from __kvm_handle_hva_range(kvm, range)
    return 0


def _kvm_null_fn(kvm: Kvm, range: KvmGfnRange) -> Gen:
    return False
    yield  # pragma: no cover  (a generator that yields nothing)


def make_aging_callbacks(flush_if_young: bool, lockless: bool
                         ) -> tuple[Callable[..., Gen], Callable[..., Gen], Callable[..., Gen]]:
    """``kvm_mmu_notifier_{clear_flush_young,clear_young,test_young}`` for a design:
    whether a young result flushes remote TLBs (``kvm_arch_flush_tlb_if_young``) and
    whether the handlers run without mmu_lock (``CONFIG_KVM_MMU_LOCKLESS_AGING``)."""

    def kvm_mmu_notifier_clear_flush_young(mn: MmuNotifier, mm: "MM", start: int, end: int
                                           ) -> Gen:
        kvm = mmu_notifier_to_kvm(mn)
        return (yield from kvm_handle_hva_range(mn, start, end, kvm.arch.kvm_age_gfn,
                                                flush_on_ret=flush_if_young,
                                                lockless=lockless))

    def kvm_mmu_notifier_clear_young(mn: MmuNotifier, mm: "MM", start: int, end: int) -> Gen:
        kvm = mmu_notifier_to_kvm(mn)
        return (yield from kvm_handle_hva_range(mn, start, end, kvm.arch.kvm_age_gfn,
                                                flush_on_ret=False, lockless=lockless))

    def kvm_mmu_notifier_test_young(mn: MmuNotifier, mm: "MM", address: int) -> Gen:
        kvm = mmu_notifier_to_kvm(mn)
        return (yield from kvm_handle_hva_range(mn, address, address + 1,
                                                kvm.arch.kvm_test_age_gfn,
                                                flush_on_ret=False, lockless=lockless))

    return (kvm_mmu_notifier_clear_flush_young, kvm_mmu_notifier_clear_young,
            kvm_mmu_notifier_test_young)


def kvm_mmu_notifier_ops(flush_if_young: bool, lockless: bool) -> MmuNotifierOps:
    cfy, cy, ty = make_aging_callbacks(flush_if_young, lockless)
    return MmuNotifierOps(clear_flush_young=cfy, clear_young=cy, test_young=ty,
                          invalidate_range_start=kvm_mmu_notifier_invalidate_range_start,
                          invalidate_range_end=kvm_mmu_notifier_invalidate_range_end)
