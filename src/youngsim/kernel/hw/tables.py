"""The two-level secondary page-table shape every modelled MMU shares.

EPT, the shadow MMU's shadow pages and arm64's stage 2 all reduce here to one root
table whose entries point to leaf tables of ``leaf_entries`` entries (512 by default),
gfn ``g`` living at root index ``g // leaf_entries``, leaf index ``g % leaf_entries``.
What differs per MMU is only the entry format, which a subclass gives with
``entry_present`` and ``entry_addr``.

Also shared: the ghost bookkeeping the SPTE invariants read (``check/model.py``): which
pfn each legitimate writer installed per gfn, and which gfns' current entries the
hardware (or a write fault) made dirty.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ..system import System


class TwoLevelTables:
    """A root of ``ceil(npages / leaf_entries)`` entries over leaf tables."""

    def __init__(self, sys: "System", root_name: str, npages: int, leaf_entries: int
                 ) -> None:
        self.sys = sys
        self.npages = npages
        self.leaf_entries = leaf_entries
        nroot = max(1, (npages + leaf_entries - 1) // leaf_entries)
        self.root = sys.m.new_words(root_name, nroot, tag="spt")
        self.ghost_installed: dict[int, int] = {}  # gfn -> pfn legitimately installed
        self.ghost_dirty: set[int] = set()  # gfns whose current entry was made dirty

    # -- the entry format (per MMU) --------------------------------------------------
    def entry_present(self, entry: int) -> bool:
        """Is this root entry a link to a leaf table?"""
        raise NotImplementedError

    def entry_addr(self, entry: int) -> int:
        """The address of the table a root entry links."""
        raise NotImplementedError

    def link_entry(self, addr: int) -> int:
        """A root entry linking the leaf table at ``addr``."""
        raise NotImplementedError

    #: name prefix of a leaf table (``sp3``: the shadow page of root index 3)
    table_prefix = "sp"

    # -- geometry --------------------------------------------------------------------
    def split(self, gfn: int) -> tuple[int, int]:
        return gfn // self.leaf_entries, gfn % self.leaf_entries

    def gfn_of(self, ri: int, li: int) -> int:
        return ri * self.leaf_entries + li

    def segments(self, start: int, end: int) -> list[tuple[int, int, int]]:
        """[start, end) as (root index, first leaf index, end leaf index) per leaf table."""
        out = []
        g = start
        while g < end:
            ri, li = self.split(g)
            hi = min(self.leaf_entries, li + (end - g))
            out.append((ri, li, hi))
            g += hi - li
        return out

    def child(self, entry: int) -> Any:
        """The leaf table a root entry links (pointer arithmetic, not an access)."""
        return self.sys.m.deref(self.entry_addr(entry))

    # -- plain reads and writes for invariants and set-up (between steps) -----------
    def setup_leaf_table(self, ri: int) -> Any:
        """Scenario set-up (not a model operation): the leaf table of root index ``ri``,
        created and linked as a past fault would have if there is none."""
        e = self.root[ri]
        if not self.entry_present(e):
            t = self.sys.m.new_words(f"{self.table_prefix}{ri}", self.leaf_entries,
                                     tag="spt")
            e = self.link_entry(t.addr)
            self.root[ri] = e
        return self.child(e)

    def leaf_entries_now(self) -> np.ndarray:
        """Every gfn's current leaf entry, 0 where no linked, live table maps it."""
        out = np.zeros(self.npages, dtype=np.uint64)
        for ri in range(len(self.root)):
            e = self.root[ri]
            if not self.entry_present(e):
                continue
            table = self.child(e)
            if table.freed:
                continue
            lo = ri * self.leaf_entries
            n = min(self.leaf_entries, self.npages - lo)
            out[lo:lo + n] = table.data[:n]
        return out

    def leaf_entry(self, gfn: int) -> int | None:
        """One gfn's leaf entry, None if no linked, live table maps it."""
        ri, li = self.split(gfn)
        e = self.root[ri]
        if not self.entry_present(e):
            return None
        table = self.child(e)
        return None if table.freed else table[li]

    # -- ghost bookkeeping (thread-local code right after the operation it describes) --
    def ghost_install(self, gfn: int, pfn: int, dirty: bool = False) -> None:
        """A fault (or set-up) legitimately installed ``pfn`` for ``gfn``."""
        self.ghost_installed[gfn] = pfn
        if dirty:
            self.ghost_dirty.add(gfn)
        else:
            self.ghost_dirty.discard(gfn)

    def ghost_zap(self, gfn: int, was_young: bool, why: str = "young_dropped_at_zap"
                  ) -> None:
        """A zap legitimately removed ``gfn``'s entry; count a young bit it dropped."""
        self.ghost_installed.pop(gfn, None)
        self.ghost_dirty.discard(gfn)
        if was_young:
            self.sys.count(why)
