"""What a design is: the choices that differ between the kernels and proposals modelled.

A design never copies kernel code. It sets the switches the shared code reads and, where
it adds an API (yu-v2's ``test_clear_young``, reviewed's ``test_clear_young_range``),
defines that API's mm-side walker, KVM callback and MGLRU batch hooks in its own file.

Switches:

- ``mglru``: how MGLRU's walk and look-around reach the secondary MMU
  (``primary-only`` | ``per-page`` | ``batched``), see ``kernel/mm/vmscan.py``;
- ``rmap_flush``: the rmap path calls ``clear_flush_young`` (True) or ``clear_young``;
- ``classic_rmap_flush``: the same for the classic LRU's rmap path (MGLRU off), None:
  as ``rmap_flush``. Designs whose ``rmap_flush`` is False only because 6.12's MGLRU
  look-around clears with ``clear_young`` set it True: with MGLRU off, mainline's
  ``folio_referenced_one`` still calls ``ptep_clear_flush_young_notify``;
- ``flush_if_young``: KVM flushes remote TLBs when ``clear_flush_young`` found a young
  SPTE (``kvm_arch_flush_tlb_if_young``; x86 stopped in 6.13);
- ``accessed_volatile``: locked SPTE writers treat the A bit as volatile (before 6.15);
- ``kvm_lockless(arch)``: whether KVM's aging callbacks run without ``mmu_lock`` on this
  secondary MMU.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Generator

from ..kernel.kvm.kvm_main import kvm_mmu_notifier_ops
from ..kernel.mm.mmu_notifier import (MmuNotifierOps, mmu_notifier_clear_young,
                                      ptep_clear_young_notify)

if TYPE_CHECKING:
    from ..kernel.kvm.kvm_main import Kvm
    from ..kernel.mm.mm import MM
    from ..kernel.system import System
    from ..sim import Op

Gen = Generator["Op", Any, Any]

MMU_VARIANTS = ("x86-tdp", "x86-tdp-noad", "x86-shadow", "arm64", "arm64-swaf")


class Design:
    name = "?"
    summary = ""
    kernel = ""
    mglru = "primary-only"
    rmap_flush = True
    classic_rmap_flush: bool | None = None
    flush_if_young = True
    accessed_volatile = True

    def applies(self, mmu: str) -> str | None:
        """None if the design runs on ``mmu``, else why it does not apply."""
        return None

    def kvm_lockless(self, kvm: "Kvm") -> bool:
        return False

    def kvm_flush_if_young(self, kvm: "Kvm") -> bool:
        """``kvm_arch_flush_tlb_if_young``."""
        return self.flush_if_young

    def notifier_ops(self, kvm: "Kvm") -> MmuNotifierOps:
        """``kvm_mmu_notifier_ops`` as this design's KVM registers them."""
        return kvm_mmu_notifier_ops(self.kvm_flush_if_young(kvm), self.kvm_lockless(kvm))

    #: may a lockless walker access-track (A/D-off) SPTEs? (6.15: yes, by cmpxchg)
    lockless_access_tracking = False

    def ptep_clear_young_notify(self, sys: "System", mm: "MM", addr: int) -> Gen:
        """``ptep_clear_young_notify`` as this design's mm has it: the primary PTE, then
        ``mmu_notifier_clear_young`` (the classic LRU's rmap path when it does not ask
        for a flush). Designs whose API supersedes ``clear_young`` override it."""
        return (yield from ptep_clear_young_notify(mm, addr))

    def mmu_notifier_clear_young(self, sys: "System", mm: "MM", start: int, end: int
                                 ) -> Gen:
        """``mmu_notifier_clear_young(mm, start, end)`` as this design's mm has it: the
        secondary MMUs only, over a range (one aging pass over a whole VMA, say)."""
        return (yield from mmu_notifier_clear_young(mm, start, end))

    # -- MGLRU batch hooks (batched designs only) ---------------------------------------
    def lru_gen_batch(self, sys: "System", mm: "MM", start: int, end: int, caller: str,
                      skip: int | None = None) -> Gen:
        """Age one batch of up to ``MIN_LRU_BATCH`` pages [start, end), primary and
        secondary, deciding each page (``vmscan.decide``); ``skip`` is a page the caller
        already handled."""
        raise NotImplementedError(f"{self.name} does not batch")

    def should_look_around(self, sys: "System", mm: "MM", addr: int, pte: int, lo: int,
                           hi: int, look_around: bool) -> Gen:
        raise NotImplementedError(f"{self.name} does not batch")

    def __repr__(self) -> str:
        return f"<design {self.name}>"
