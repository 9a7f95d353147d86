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
    flush_if_young = False
    accessed_volatile = True

    def kvm_flush_if_young(self, kvm: "Kvm") -> bool:
        return not kvm.arch.name.startswith("x86")  # 6.13: x86 never flushes when aging


DESIGN = Upstream612()
