"""What a design is: the choices that differ between the kernels and proposals modelled.

A design never copies kernel code. It sets the switches the shared code reads and, where
it adds an API (yu-v2's ``test_clear_young``, reviewed's ``test_clear_young_range``),
defines that API's mm-side walker, KVM callback and MGLRU batch hooks in its own file.

Switches:

- ``mglru``: how MGLRU's walk and look-around reach the secondary MMU
  (``primary-only`` | ``per-page`` | ``batched``), see ``kernel/mm/vmscan.py``;
- ``rmap_flush``: the rmap path calls ``clear_flush_young`` (True) or ``clear_young``;
- ``flush_if_young``: KVM flushes remote TLBs when ``clear_flush_young`` found a young
  SPTE (``kvm_arch_flush_tlb_if_young``; x86 stopped in 6.13);
- ``accessed_volatile``: locked SPTE writers treat the A bit as volatile (before 6.15);
- ``kvm_lockless(arch)``: whether KVM's aging callbacks run without ``mmu_lock`` on this
  secondary MMU.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Generator

from ..kernel.kvm.kvm_main import kvm_mmu_notifier_ops
from ..kernel.mm.mmu_notifier import MmuNotifierOps

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
