"""``upstream-6.12``: Linux 6.12-6.14, the "locked, per page" corner of the comparison.

MGLRU (6.12 fix) calls ``clear_young`` for every PTE it examines in ``walk_pte_range`` and
look-around (``ptep_clear_young_notify``), examining primary-old PTEs too for mms with
notifiers; KVM ages under ``kvm->mmu_lock`` for write; from 6.13 x86 never flushes TLBs
when aging (we model 6.13-6.14, so no flush).
"""

from typing import TYPE_CHECKING

from .base import Design

if TYPE_CHECKING:
    from ..kernel.kvm.kvm_main import Kvm


class Upstream612(Design):
    name = "upstream-6.12"
    summary = "6.12-6.14: clear_young per page, write-locked, no flush"
    kernel = "Linux 6.13-6.14"
    mglru = "per-page"
    rmap_flush = False
    # MGLRU off: mainline never took the 2022 no-flush rmap patch, so the classic LRU's
    # folio_referenced_one calls ptep_clear_flush_young_notify (x86 KVM skips the flush
    # since 6.13: kvm_flush_if_young below)
    classic_rmap_flush = True
    flush_if_young = False
    accessed_volatile = True

    def kvm_flush_if_young(self, kvm: "Kvm") -> bool:
        return not kvm.arch.name.startswith("x86")  # 6.13: x86 never flushes when aging


DESIGN = Upstream612()
