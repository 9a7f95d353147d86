"""The two-level secondary page-table shape every modelled MMU shares.

EPT, the shadow MMU's shadow pages and arm64's stage 2 all reduce here to one root
table whose entries point to leaf tables of ``leaf_entries`` entries (512 by default),
gfn ``g`` living at root index ``g // leaf_entries``, leaf index ``g % leaf_entries``.
What differs per MMU is only the entry format, which a subclass gives with
``entry_present`` and ``entry_addr``.

Also shared: the ghost bookkeeping the SPTE invariants read (``check/model.py``): which
pfn each legitimate writer installed per gfn, and which gfns' current entries the
hardware (or a write fault) made dirty. Both are numpy arrays indexed by gfn (a few bytes
a page, allocated lazily by the OS where never written), so a guest of hundreds of
millions of pages fits.

Scenario set-up (``setup_leaf_table``) lays the leaf tables it creates out back to back
in one *arena* (a ``Words`` of ``nroot x leaf_entries`` words, leaf table ``ri`` its slice
``[ri x leaf_entries, (ri + 1) x leaf_entries)``, so arena index = gfn). A walker whose
``chunk`` is larger than a leaf table may then read a run of root entries with one
vector load and age the stretches still linking set-up's tables (``arena_links``) with
one vector operation on the arena each. Tables a fault allocates at run time are
separate objects; walkers take them one by one.
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
        #: per gfn: 1 + the pfn a legitimate writer installed, 0 if none (zero for "none"
        #: keeps the array lazily allocated); read it with ``installed_pfn(s)``
        self._ghost_installed = np.zeros(npages, dtype=np.int64)
        #: per gfn: the current entry was made dirty (by hardware or a write fault)
        self.ghost_dirty = np.zeros(npages, dtype=bool)
        #: set-up's leaf tables, back to back (created with the first one)
        self.arena: Any = None
        #: per root index, the entry set-up linked for its arena table (0: none). A
        #: root entry equal to it links that table, live: tables are unlinked before
        #: they are freed, and a freed table's address is never handed out again
        self.arena_links = np.zeros(0, dtype=np.uint64)

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

    def runs(self, start: int, end: int, run: int) -> list[tuple[int, int, int, int]]:
        """[start, end) in runs of up to ``run`` leaf tables, as (first root index, end
        root index, first gfn, end gfn): what a walker over runs of tables visits."""
        out = []
        per = self.leaf_entries
        g = start
        while g < end:
            r0 = g // per
            r1 = min(r0 + run, (end - 1) // per + 1)
            g1 = min(end, r1 * per)
            out.append((r0, r1, g, g1))
            g = g1
        return out

    def child(self, entry: int) -> Any:
        """The leaf table a root entry links (pointer arithmetic, not an access)."""
        return self.sys.m.deref(self.entry_addr(entry))

    def arena_spans(self, es: np.ndarray, r0: int, g0: int, g1: int
                    ) -> list[tuple[int, int, Any]]:
        """Split gfns ``[g0, g1)``, which lie in the leaf tables of root indices
        ``[r0, r0 + len(es))``, by what the root entries ``es`` (just loaded) link:
        ``(lo, hi, None)`` for a stretch of tables still linked as set-up linked them
        (so arena index = gfn: equal entries mean that table, live, since a freed
        table's address is never reused), ``(lo, hi, table)`` for any other present
        table, on its own. Absent tables are skipped. For walkers that age runs of
        tables with one vector operation on the arena."""
        per = self.leaf_entries
        ok = es == self.arena_links[r0:r0 + len(es)]
        if ok.all():
            return [(g0, g1, None)]
        spans: list[tuple[int, int, Any]] = []
        for k in range(len(es)):
            lo, hi = max(g0, (r0 + k) * per), min(g1, (r0 + k + 1) * per)
            if ok[k]:
                if spans and spans[-1][2] is None and spans[-1][1] == lo:
                    spans[-1] = (spans[-1][0], hi, None)
                else:
                    spans.append((lo, hi, None))
            elif self.entry_present(int(es[k])):
                spans.append((lo, hi, self.child(int(es[k]))))
        return spans

    # -- plain reads and writes for invariants and set-up (between steps) -----------
    def setup_leaf_table(self, ri: int) -> Any:
        """Scenario set-up (not a model operation): the leaf table of root index ``ri``,
        created and linked as a past fault would have if there is none."""
        e = self.root[ri]
        if not self.entry_present(e):
            n = self.leaf_entries
            if self.arena is None:
                self.arena = self.sys.m.new_words(f"{self.table_prefix}arena",
                                                  len(self.root) * n, tag="spt")
                self.arena_links = np.zeros(len(self.root), dtype=np.uint64)
            t = self.sys.m.new_words(f"{self.table_prefix}{ri}", n, tag="spt",
                                     data=self.arena.data[ri * n:(ri + 1) * n])
            e = self.link_entry(t.addr)
            self.root[ri] = e
            self.arena_links[ri] = e
        return self.child(e)

    def prepopulate(self, gfn: int, pfn: int, write: bool, young: bool) -> None:
        """Set-up: map ``gfn`` to ``pfn`` as a past fault would have (per MMU)."""
        raise NotImplementedError

    def leaf_entries_for(self, pfns: np.ndarray, write: bool, young: bool
                         ) -> tuple[np.ndarray, bool]:
        """The leaf entries ``prepopulate`` would write for ``pfns`` (uint64), and
        whether they count as dirty (per MMU)."""
        raise NotImplementedError

    def prepopulate_range(self, lo: int, pfns: np.ndarray, write: bool, young: bool
                          ) -> None:
        """``prepopulate`` of gfns ``lo, lo + 1, ...`` with one vector write to the arena
        (per gfn where a table is not arena-backed)."""
        n, per = len(pfns), self.leaf_entries
        r0, r1 = lo // per, (lo + n - 1) // per + 1
        for ri in range(r0, r1):
            self.setup_leaf_table(ri)
        if not (self.root.data[r0:r1] == self.arena_links[r0:r1]).all():
            for k, pfn in enumerate(pfns.tolist()):
                self.prepopulate(lo + k, pfn, write, young)
            return
        entries, dirty = self.leaf_entries_for(np.asarray(pfns, dtype=np.uint64), write,
                                               young)
        self.arena.data[lo:lo + n] = entries
        self.ghost_install_range(lo, np.asarray(pfns, dtype=np.int64), dirty=dirty)

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
    def installed_pfn(self, gfn: int) -> int | None:
        """The pfn legitimately installed for ``gfn``, None if none is."""
        v = int(self._ghost_installed[gfn])
        return v - 1 if v else None

    def installed_pfns(self) -> np.ndarray:
        """``installed_pfn`` of every gfn, -1 where none is."""
        return self._ghost_installed - 1

    def ghost_install(self, gfn: int, pfn: int, dirty: bool = False) -> None:
        """A fault (or set-up) legitimately installed ``pfn`` for ``gfn``."""
        self._ghost_installed[gfn] = pfn + 1
        self.ghost_dirty[gfn] = dirty

    def ghost_install_range(self, lo: int, pfns: np.ndarray, dirty: bool = False) -> None:
        """``ghost_install`` for gfns ``lo, lo + 1, ...`` (set-up of a large guest)."""
        self._ghost_installed[lo:lo + len(pfns)] = pfns + 1
        self.ghost_dirty[lo:lo + len(pfns)] = dirty

    def ghost_zap(self, gfn: int, was_young: bool, why: str = "young_dropped_at_zap"
                  ) -> None:
        """A zap legitimately removed ``gfn``'s entry; count a young bit it dropped."""
        self._ghost_installed[gfn] = 0
        self.ghost_dirty[gfn] = False
        if was_young:
            self.sys.count(why)
