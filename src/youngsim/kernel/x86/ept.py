"""The CPU's EPT walker, as the TDP MMU and the shadow MMU both see it: both install
EPT-format SPTEs (``spte.py``) in two-level tables (``hw/tables.py``), so one walker
serves both."""

from __future__ import annotations

from typing import Any, Generator

import numpy as np

from ...sim import Op, cas, load
from ..hw.tables import TwoLevelTables
from . import spte as S

Gen = Generator[Op, Any, Any]


class EptTables(TwoLevelTables):
    """Two-level tables whose root entries are EPT non-leaf SPTEs: the entry format the
    TDP MMU and the shadow MMU share (``self.ad``: A/D bits on)."""

    ad: bool

    def entry_present(self, entry: int) -> bool:
        return S.is_shadow_present_pte(entry)

    def entry_addr(self, entry: int) -> int:
        return S.spte_to_pfn(entry) << S.PAGE_SHIFT

    def link_entry(self, addr: int) -> int:
        return S.make_nonleaf_spte(addr, self.ad)


def ept_walk(tables: TwoLevelTables, gfn: int, write: bool, root: int | None = None,
             leaf: int | None = None) -> Gen:
    """A TLB miss: walk to the leaf and, if A/D bits are on, set A (and D on a write)
    with an atomic update, as the page walker's locked RMW does. False means an EPT
    violation (the vCPU exits to KVM). ``root`` and ``leaf``: the walk's loads already
    ran and found these (a fault stream hands the walk over at a failed check)."""
    ri, li = tables.split(gfn)
    e = (yield load(tables.root, ri, cost="hw_walk")) if root is None else root
    if not S.hw_present(e):
        return False
    table = tables.child(e)
    while True:
        if leaf is None:
            s = yield load(table, li, cost="hw_walk")
        else:
            s, leaf = leaf, None
        if not S.hw_present(s) or (write and not s & S.VMX_EPT_WRITABLE):
            return False
        if not S.spte_ad_enabled(s):
            return True
        new = s | S.shadow_accessed_mask | (S.shadow_dirty_mask if write else 0)
        if new == s:
            return True
        old = yield cas(table, li, s, new, cost="hw_ad_update")
        if old == s:
            if write:
                tables.ghost_dirty[gfn] = True
            return True


def spte_leaf_view(sptes: Any) -> tuple[Any, Any, Any, Any]:
    """(raw SPTEs, shadow-present, pfn, dirty) for an array of leaf SPTEs."""
    present = (sptes & np.uint64(S.SPTE_MMU_PRESENT_MASK)) != 0
    pfn = (sptes & np.uint64(S.SPTE_PFN_MASK)) >> np.uint64(S.SPTE_PFN_SHIFT)
    dirty = (sptes & np.uint64(S.shadow_dirty_mask)) != 0
    return sptes, present, pfn, dirty
