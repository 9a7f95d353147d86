"""What generic KVM code needs from an architecture's secondary MMU (``kvm->arch``).

In the kernel these are the ``kvm_arch_*``/``kvm_*_gfn_range`` hooks that
``virt/kvm/kvm_main.c`` calls and each ``arch/*/kvm/mmu.c`` defines. Here they are the
methods of one class per MMU variant (``x86/mmu.py``, ``x86/shadow_mmu.py``,
``arm64/mmu.py``); this base documents the contract and holds what is the same for all.

Model-side extras (not kernel hooks) that the checker's invariants and scenarios use:
``leaf_view``, ``prepopulate``, ``zap_leaf_table``, and ``tables`` (the page tables,
with the ghost bookkeeping: ``tables.installed_pfn(s)``, ``tables.ghost_dirty``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Generator

import numpy as np

from ...sim import Op

if TYPE_CHECKING:
    from ..hw.tables import TwoLevelTables
    from ..hw.vcpu import Vcpu
    from .kvm_main import Kvm, KvmGfnRange

Gen = Generator[Op, Any, Any]


class KvmArchMmu:
    """Base of every modelled secondary MMU. ``tables`` is its page-table state."""

    name = "?"
    tables: "TwoLevelTables"

    # -- hooks called by kvm_main ----------------------------------------------------
    def kvm_unmap_gfn_range(self, kvm: "Kvm", range: "KvmGfnRange") -> Gen:
        """Zap the range (mmu_lock held for write); True if TLBs must be flushed."""
        raise NotImplementedError

    def kvm_age_gfn(self, kvm: "Kvm", range: "KvmGfnRange") -> Gen:
        return (yield from self.age_gfn_range(kvm, range, test_only=False))

    def kvm_test_age_gfn(self, kvm: "Kvm", range: "KvmGfnRange") -> Gen:
        return (yield from self.age_gfn_range(kvm, range, test_only=True))

    def age_gfn_range(self, kvm: "Kvm", range: "KvmGfnRange", test_only: bool,
                      should_clear: Any = None) -> Gen:
        """Test (and unless ``test_only``, clear) the accessed state of every mapping in
        ``range``, under mmu_lock for write or, with ``range.lockless``, without it.
        ``should_clear(gfn)`` is called for every young page (it may record it) and
        decides whether to clear it; with it, a test visits every page instead of
        stopping at the first young one. Records what it sees young and what it clears
        with ``sys.ghost_seen_young``/``sys.ghost_cleared``. Returns whether any page
        was young."""
        raise NotImplementedError

    def lockless_fast_path_ok(self) -> bool:
        """Can this MMU, at run time, age without mmu_lock as the 2023 designs would?"""
        raise NotImplementedError

    # -- the vCPU side ---------------------------------------------------------------
    def hw_walk(self, vcpu: "Vcpu", gfn: int, write: bool) -> Gen:
        """The CPU's walk on a TLB miss; False means a fault (the vCPU exits). (The x86
        MMUs also take the root and leaf entries already loaded, for a fault stream's
        hand-over.)"""
        raise NotImplementedError

    def kvm_mmu_page_fault(self, vcpu: "Vcpu", gfn: int, write: bool) -> Gen:
        """(The x86 MMUs also take the ``mmu_invalidate_seq`` and primary PTE already
        read, for a fault stream's hand-over.)"""
        raise NotImplementedError

    def fault_stream(self, vcpu: "Vcpu", gfn: int, hi: int, write: bool) -> Gen:
        """Guest accesses to pages ``gfn, gfn + 1, ...`` (below ``hi``) that fault, as
        a stream of the per-page operations (``hw.vcpu.guest_access_range``); returns
        how many pages it accessed, 0 if it does not apply from ``gfn`` (the caller
        then takes that page on its own). The default: no streams."""
        return 0
        yield  # pragma: no cover  (a generator)

    # -- model-side: invariants and scenarios ----------------------------------------
    def leaf_view(self) -> tuple[Any, Any, Any, Any]:
        """Per gfn, as numpy arrays: (raw leaf entries, present, pfn, dirty)."""
        raise NotImplementedError

    def leaf_spte(self, gfn: int) -> int | None:
        return self.tables.leaf_entry(gfn)

    def prepopulate(self, gfn: int, pfn: int, write: bool, young: bool) -> None:
        """Set-up: map ``gfn`` as a past fault left it."""
        raise NotImplementedError

    def prepopulate_range(self, lo: int, pfns: Any, write: bool, young: bool) -> None:
        """Set-up: ``prepopulate`` gfns ``lo, lo + 1, ...`` with ``pfns`` (an MMU may do
        it with vector operations, for large guests)."""
        for k, pfn in enumerate(pfns.tolist()):
            self.prepopulate(lo + k, pfn, write, young)

    def zap_leaf_table(self, kvm: "Kvm", idx: int) -> Gen:
        """Unlink and free leaf table ``idx`` as the MMU does (mmu_lock held for write);
        True if the caller must still flush TLBs."""
        raise NotImplementedError


_ALL_SET: dict[int, np.ndarray] = {}


def all_set(n: int) -> np.ndarray:
    """A read-only mask of ``n`` entries all set, made once per length: a chunk whose
    entries are all young, for a predicate to read, without a mask written per chunk."""
    mask = _ALL_SET.get(n)
    if mask is None:
        mask = _ALL_SET[n] = np.ones(n, dtype=bool)
        mask.flags.writeable = False
    return mask


def clears_every_young(should_clear: Any) -> bool:
    """May an aging walk clear every young page of a chunk before it asks
    ``should_clear``? Yes with no predicate, or with one that says it clears them all
    (``clears_young``: no bitmap); the walker then still asks it, for what it records."""
    return should_clear is None or bool(getattr(should_clear, "clears_young", False))


def should_clear_chunk(should_clear: Any, first: int, young: np.ndarray) -> np.ndarray:
    """``should_clear`` asked for every young page of a chunk (gfn ``first + k`` where
    ``young[k]``), in gfn order; its ``chunk(first, young)`` answers at once if it has
    one (a design whose answer does not depend on the page: no bitmap)."""
    chunk = getattr(should_clear, "chunk", None)
    if chunk is not None:
        return np.asarray(chunk(first, young), dtype=bool)
    sel = np.zeros(len(young), dtype=bool)
    for k in np.flatnonzero(young):
        sel[k] = bool(should_clear(first + int(k)))
    return sel
