"""``arch/x86/kvm/mmu/mmu.c``: the x86 side of the generic hooks (``kvm_age_gfn``,
``kvm_test_age_gfn``, ``kvm_unmap_gfn_range``) and the page-fault entry point, for the
TDP MMU with and without A/D bits. The shadow MMU lives in ``shadow_mmu.py``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Generator


from ...sim import Op, read_lock, read_unlock
from ..kvm.arch import KvmArchMmu
from ..kvm.kvm_main import (is_page_fault_stale, kvm_faultin_pfn, kvm_mmu_invalidate_wait)
from . import spte as S
from .ept import spte_leaf_view
from .fault_stream import fault_stream
from ...sim.profile import TRANSPARENT
from .tdp_mmu import RET_PF_RETRY, TdpMmu

if TYPE_CHECKING:
    from ..hw.vcpu import Vcpu
    from ..kvm.kvm_main import Kvm, KvmGfnRange
    from ..system import System

Gen = Generator[Op, Any, Any]


class X86TdpMmu(KvmArchMmu):
    """``kvm->arch`` for a VM on the TDP MMU (``tdp_mmu_enabled``)."""

    def __init__(self, sys: "System", kvm: "Kvm", ad_enabled: bool, npages: int,
                 chunk: int = 1, leaf_entries: int = S.PT_ENTRIES) -> None:
        self.sys = sys
        self.kvm = kvm
        self.tdp = TdpMmu(sys, kvm, ad_enabled, npages, chunk, leaf_entries)
        self.tables = self.tdp
        self.name = "x86-tdp" if ad_enabled else "x86-tdp-noad"

    @property
    def ad_enabled(self) -> bool:
        """``kvm_ad_enabled``: the run-time switch (EPT A/D bits, ``enable_ept_ad_bits``)."""
        return self.tdp.ad

    # -- hooks called by kvm_main ----------------------------------------------------
    def kvm_unmap_gfn_range(self, kvm: "Kvm", range: "KvmGfnRange") -> Gen:
        return (yield from self.tdp.kvm_tdp_mmu_unmap_gfn_range(kvm, range))

    def age_gfn_range(self, kvm: "Kvm", range: "KvmGfnRange", test_only: bool,
                      should_clear: Any = None) -> Gen:
        return (yield from self.tdp.age_gfn_range(
            kvm, range, test_only=test_only,
            accessed_volatile=self.sys.design.accessed_volatile,
            should_clear=should_clear))

    def lockless_fast_path_ok(self) -> bool:
        """yu-v2's ``kvm_arch_test_clear_young`` at run time: only with A/D bits (2023:
        changing R/X bits of an access-tracked SPTE locklessly was considered unsafe)."""
        return self.tdp.ad

    # -- vCPU side -------------------------------------------------------------------
    def hw_walk(self, vcpu: "Vcpu", gfn: int, write: bool, root: int | None = None,
                leaf: int | None = None) -> Gen:
        return (yield from self.tdp.hw_walk(gfn, write, root, leaf))

    def kvm_mmu_page_fault(self, vcpu: "Vcpu", gfn: int, write: bool,
                           mmu_seq: int | None = None, pte: int | None = None,
                           fast: bool = True) -> Gen:
        """``kvm_mmu_page_fault`` -> ``kvm_tdp_page_fault``: fast path, then the slow
        path under mmu_lock for read with the invalidation retry check. ``mmu_seq``
        and ``pte``: the fault is past its fast path and those reads; ``fast=False``:
        past its fast path (a fault stream hands over there, ``fault_stream.py``)."""
        kvm = self.kvm
        if fast and mmu_seq is None and (yield from self.tdp.fast_page_fault(gfn, write)):
            return 0
        mmu_seq, pfn = yield from kvm_faultin_pfn(kvm, gfn, write, mmu_seq, pte)
        yield read_lock(kvm.mmu_lock, cost="mmu_lock_read")
        if (yield from is_page_fault_stale(kvm, mmu_seq)):
            ret = RET_PF_RETRY
        else:
            ret = yield from self.tdp.kvm_tdp_mmu_map(gfn, pfn, write)
        yield read_unlock(kvm.mmu_lock, cost="mmu_lock_read_release")
        if ret == RET_PF_RETRY:
            yield from kvm_mmu_invalidate_wait(kvm)
        return ret

    def fault_stream(self, vcpu: "Vcpu", gfn: int, hi: int, write: bool) -> Gen:
        """First touches of consecutive pages as one stream (``fault_stream.py``)."""
        return (yield from fault_stream(self, vcpu, gfn, hi, write))

    # -- model side ------------------------------------------------------------------
    def leaf_view(self) -> tuple[Any, Any, Any, Any]:
        return spte_leaf_view(self.tdp.leaf_entries_now())

    def prepopulate(self, gfn: int, pfn: int, write: bool, young: bool) -> None:
        self.tdp.prepopulate(gfn, pfn, write, young)

    def prepopulate_range(self, lo: int, pfns: Any, write: bool, young: bool) -> None:
        self.tdp.prepopulate_range(lo, pfns, write, young)

    def zap_leaf_table(self, kvm: "Kvm", idx: int) -> Gen:
        return (yield from self.tdp.zap_leaf_table(kvm, idx))


TRANSPARENT.add(X86TdpMmu.fault_stream.__code__)  # a way of running the per-page code
