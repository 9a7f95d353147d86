"""``arch/arm64/kvm/mmu.c``: the arm64 side of the generic hooks (``kvm_age_gfn``,
``kvm_test_age_gfn``, ``kvm_unmap_gfn_range``) and the stage-2 abort handler, for a
stage 2 with hardware access flag management (``arm64``: FEAT_HAFDBS, ``VTCR_EL2.HA``,
plus DBM as described in ``pgtable.py``) or without it (``arm64-swaf``: every access to a
descriptor whose ``AF`` is clear takes an access-flag fault).

Which aging path runs is the design's choice (``designs/*``), through the same interface
as ``X86TdpMmu``:

- ``upstream`` and ``upstream-6.12`` (and ``legacy``) age under ``mmu_lock`` for write:
  upstream's ``kvm_lockless`` is x86-only, and arm64 still has no lockless aging;
- ``yu-v2`` (2023) had an arm64 fast path: a shared walk under RCU clearing ``AF`` with
  ``stage2_try_set_pte`` (cmpxchg), failure ignored. Its ``kvm_arch_has_test_clear_young``
  was ``cpu_has_hw_af() && !is_protected_kvm_enabled()``. Our reading is that the fast
  path needs hardware AF, so ``lockless_fast_path_ok()`` is ``hw_af``: on ``arm64-swaf``
  the arch reports failure at run time and yu-v2 falls back to the locked slow path (with
  a bitmap it bails out). The patch presents this as a scope choice ("focuses on a simple
  case, i.e., hardware sets the accessed bit"); the cmpxchg clear races only with
  cmpxchg-based ``mkyoung`` on a software-AF stage 2, so we do not claim it would be
  unsafe there;
- ``reviewed`` runs lockless exactly where yu-v2's fast path would (``hw_af``), else
  takes the lock once per call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Generator

import numpy as np

from ...sim import Op, read_lock, read_unlock
from ..kvm.arch import KvmArchMmu
from ..kvm.kvm_main import (is_page_fault_stale, kvm_faultin_pfn, kvm_mmu_invalidate_wait)
from . import pgtable as P
from .pgtable import RET_PF_FIXED, RET_PF_RETRY, Stage2Pgtable

if TYPE_CHECKING:
    from ..hw.vcpu import Vcpu
    from ..kvm.kvm_main import Kvm, KvmGfnRange
    from ..system import System

Gen = Generator[Op, Any, Any]


class Arm64Stage2Mmu(KvmArchMmu):
    """``kvm->arch`` for an arm64 VM: its stage-2 page table and the abort handler."""

    def __init__(self, sys: "System", kvm: "Kvm", hw_af: bool, npages: int,
                 chunk: int = 1, leaf_entries: int = P.PTRS_PER_TABLE) -> None:
        self.sys = sys
        self.kvm = kvm
        self.pgt = Stage2Pgtable(sys, kvm, hw_af, npages, chunk, leaf_entries)
        self.tables = self.pgt
        self.name = "arm64" if hw_af else "arm64-swaf"
        #: ESR_EL2.FSC of each vCPU's last stage-2 abort (the hardware's syndrome; set by
        #: ``hw_walk`` and read by the handler in the same vCPU thread)
        self._fsc: dict[int, int] = {}

    @property
    def hw_af(self) -> bool:
        return self.pgt.hw_af

    # -- hooks called by kvm_main ----------------------------------------------------
    def kvm_unmap_gfn_range(self, kvm: "Kvm", range: "KvmGfnRange") -> Gen:
        """``kvm_unmap_gfn_range`` -> ``__unmap_stage2_range``. The kernel invalidates
        the TLB per entry inside the walker and returns false; we return whether anything
        was unmapped so the generic code's flush does that invalidation (same effect:
        every TLB is clean before ``mmu_lock`` is dropped)."""
        return (yield from self.pgt.kvm_pgtable_stage2_unmap(range.start, range.end))

    def age_gfn_range(self, kvm: "Kvm", range: "KvmGfnRange", test_only: bool,
                      should_clear: Any = None) -> Gen:
        """``kvm_pgtable_stage2_test_clear_young`` over ``range``: under ``mmu_lock`` for
        write, or (``range.lockless``) under RCU alone with cmpxchg. ``should_clear(gfn)``
        is called for every young page (it may record it) and decides whether to clear
        it; with it a test visits every page. Without it, a test also visits every page
        (arm64's walker does not stop at the first young one)."""
        return (yield from self.pgt.kvm_pgtable_stage2_test_clear_young(
            range.start, range.end, mkold=not test_only, lockless=range.lockless,
            should_clear=should_clear))

    # -- vCPU side -------------------------------------------------------------------
    def hw_walk(self, vcpu: "Vcpu", gfn: int, write: bool) -> Gen:
        ok, fsc = yield from self.pgt.hw_walk(gfn, write)
        if not ok:
            self._fsc[vcpu.idx] = fsc
        return ok

    def kvm_mmu_page_fault(self, vcpu: "Vcpu", gfn: int, write: bool) -> Gen:
        """``kvm_handle_guest_abort``: an access-flag fault goes to
        ``handle_access_fault`` (``mkyoung`` under the read lock, no invalidation check:
        it only sets ``AF`` on a descriptor that is still valid); a translation or
        permission fault to ``user_mem_abort``: read ``mmu_invalidate_seq``, resolve the
        pfn, take ``mmu_lock`` for read, retry if an invalidation raced, else map (or
        relax permissions) with cmpxchg."""
        kvm = self.kvm
        fsc = self._fsc.pop(vcpu.idx, P.ESR_ELx_FSC_FAULT)
        if fsc == P.ESR_ELx_FSC_ACCESS:
            yield from self.handle_access_fault(gfn)
            return RET_PF_FIXED
        mmu_seq, pfn = yield from kvm_faultin_pfn(kvm, gfn, write)
        yield read_lock(kvm.mmu_lock, cost="mmu_lock_read")
        if (yield from is_page_fault_stale(kvm, mmu_seq)):
            ret = RET_PF_RETRY
        elif fsc == P.ESR_ELx_FSC_PERM:
            ret = yield from self.pgt.kvm_pgtable_stage2_relax_perms(gfn)
        else:
            ret = yield from self.pgt.kvm_pgtable_stage2_map(gfn, pfn, write)
        yield read_unlock(kvm.mmu_lock, cost="mmu_lock_read_release")
        if ret == RET_PF_RETRY:
            yield from kvm_mmu_invalidate_wait(kvm)
        return ret

    def handle_access_fault(self, gfn: int) -> Gen:
        """``handle_access_fault``: ``kvm_pgtable_stage2_mkyoung`` under ``mmu_lock`` for
        read. If the descriptor was zapped meanwhile nothing happens; the vCPU's next
        walk takes a translation fault."""
        kvm = self.kvm
        yield read_lock(kvm.mmu_lock, cost="mmu_lock_read")
        yield from self.pgt.kvm_pgtable_stage2_mkyoung(gfn)
        yield read_unlock(kvm.mmu_lock, cost="mmu_lock_read_release")

    # -- the interface the checker's invariants and scenarios use ----------------------
    def leaf_view(self) -> tuple[Any, Any, Any, Any]:
        """Per gfn: (raw descriptors, valid, pfn, dirty = valid and ``S2AP_W``)."""
        descs = self.pgt.leaf_entries_now()
        valid = (descs & np.uint64(P.KVM_PTE_VALID)) != 0
        pfn = (descs & np.uint64(P.KVM_PTE_ADDR_MASK)) >> np.uint64(P.PAGE_SHIFT)
        dirty = valid & ((descs & np.uint64(P.S2AP_W)) != 0)
        return descs, valid, pfn, dirty

    def prepopulate(self, gfn: int, pfn: int, write: bool, young: bool) -> None:
        self.pgt.prepopulate(gfn, pfn, write, young)

    def prepopulate_range(self, lo: int, pfns: Any, write: bool, young: bool) -> None:
        self.pgt.prepopulate_range(lo, pfns, write, young)

    def zap_leaf_table(self, kvm: "Kvm", idx: int) -> Gen:
        """Unlink leaf table ``idx`` and free it after a grace period (``mmu_lock`` held
        for write). True if the caller must flush TLBs."""
        return (yield from self.pgt.stage2_unlink_table(idx))

    def lockless_fast_path_ok(self) -> bool:
        """yu-v2's ``kvm_arch_test_clear_young`` at run time: only with hardware AF."""
        return self.pgt.hw_af
