"""``arch/x86/kvm/mmu/tdp_mmu.c``: the TDP MMU (EPT/NPT) of one VM.

Two levels of 512-entry tables (a root whose entries point to leaf tables) stand for the
four or five of real hardware: enough to fault tables in, unlink them, and free them
through RCU, which is all the aging question needs.

Locking, as in the kernel:
- faults run under ``mmu_lock`` for read, inside an RCU read section, and install
  entries with cmpxchg (``tdp_mmu_set_spte_atomic``); a failed cmpxchg retries the fault;
- zaps run under ``mmu_lock`` for write; an unlinked table's entries are frozen
  (``handle_removed_pt``) and the table is freed by ``call_rcu``, never at once;
- aging runs under ``mmu_lock`` for write, or, with ``range.lockless`` (6.15's
  ``CONFIG_KVM_MMU_LOCKLESS_AGING``), under RCU alone, clearing A/D-enabled SPTEs with an
  atomic fetch-AND and access-tracking the others with a cmpxchg whose failure is
  ignored.

Walkers work in chunks of ``TdpMmu.chunk`` entries (one entry when checked, a whole leaf
table when timed): a chunk is one vector operation, atomic per entry. With a chunk of
several leaf tables the aging walk runs in *run mode* (``_age_run``): one vector load of
the run's root entries, then one vector operation on set-up's arena per stretch of
tables still linked as set-up linked them (``hw/tables.py``), so one pass over a 1 TiB
guest is some 25,000 operations, not 500,000 (``benchmarks/bench_aging_scale.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Generator

import numpy as np

from ...sim import (Op, alloc, call_rcu, cas, free, load, rcu_read_lock, rcu_read_unlock,
                    store, vfetch_and, vload, vstore, vupdate, vxchg, xchg)
from ...sim.vec import bits_set
from ..kvm.arch import all_set, clears_every_young, should_clear_chunk
from .ept import EptTables, ept_walk
from . import spte as S
from . import spte_vec as V

if TYPE_CHECKING:
    from ..kvm.kvm_main import Kvm, KvmGfnRange
    from ..system import System

Gen = Generator[Op, Any, Any]

RET_PF_CONTINUE, RET_PF_RETRY, RET_PF_FIXED, RET_PF_SPURIOUS = 0, 1, 2, 3


class TdpMmu(EptTables):
    """The TDP MMU state of one VM: its root and configuration."""

    def __init__(self, sys: "System", kvm: "Kvm", ad_enabled: bool, npages: int,
                 chunk: int = 1, leaf_entries: int = S.PT_ENTRIES) -> None:
        super().__init__(sys, f"{kvm.name}.root", npages, leaf_entries)
        self.kvm = kvm
        self.ad = ad_enabled
        self.chunk = chunk
        #: in run mode (a chunk of several leaf tables), a clearing walk reads, tests and
        #: clears each chunk with one ``vupdate``; False keeps the ``vload`` and the clear
        #: apart, as the checker's chunks of one entry have them (the tests compare both)
        self.fuse = True
        #: ghost: the gfns a locked writer has read and not yet written back
        #: (``write_protect_gfn``), each with the lockless clears of its A bit since the
        #: read: such a clear is lost to the writer's stale value ("clears_clobbered").
        #: A lockless clear looks up only these windows, so aging a chunk costs nothing
        #: per page here (a counter per gfn cost a pass over a byte per page).
        self.ghost_windows: dict[int, int] = {}

    def prepopulate(self, gfn: int, pfn: int, write: bool, young: bool) -> None:
        """Scenario set-up (not a model operation): map ``gfn`` as a past fault did."""
        ri, li = self.split(gfn)
        sp = self.setup_leaf_table(ri)
        spte = S.make_spte(pfn, writable=True, ad_enabled=self.ad, prefetch=not young)
        if write and self.ad:
            spte |= S.shadow_dirty_mask
        sp[li] = spte
        self.ghost_install(gfn, pfn, dirty=write and self.ad)

    def leaf_entries_for(self, pfns: np.ndarray, write: bool, young: bool
                         ) -> tuple[np.ndarray, bool]:
        # make_spte is the pfn field OR'd into bits that do not depend on the pfn
        base = S.make_spte(0, writable=True, ad_enabled=self.ad, prefetch=not young)
        if write and self.ad:
            base |= S.shadow_dirty_mask
        return (pfns << np.uint64(S.SPTE_PFN_SHIFT)) | np.uint64(base), write and self.ad

    # -- vCPU fault path (kvm_tdp_mmu_map) -------------------------------------------
    def kvm_tdp_mmu_map(self, gfn: int, pfn: int, write: bool) -> Gen:
        """Install the translation for ``gfn``; caller holds mmu_lock for read."""
        m = self.sys.m
        m.lockdep_assert_held(self.kvm.mmu_lock, write=False)
        yield rcu_read_lock(self.sys.rcu, cost="rcu_read_lock")
        ret = yield from self._map(gfn, pfn, write)
        yield rcu_read_unlock(self.sys.rcu, cost="rcu_read_unlock")
        return ret

    def _map(self, gfn: int, pfn: int, write: bool, root: int | None = None,
             leaf: int | None = None) -> Gen:
        """``root``, ``leaf``: the entries already loaded (a fault stream hands its
        fault over after a check found them, ``fault_stream.py``)."""
        ri, li = self.split(gfn)
        e = (yield load(self.root, ri, cost="spte_read")) if root is None else root
        if S.is_frozen_spte(e):
            return RET_PF_RETRY
        if not S.is_shadow_present_pte(e):
            sp = yield alloc(f"sp{ri}", self.leaf_entries, tag="spt", cost="sp_alloc")  # tdp_mmu_alloc_sp
            new = S.make_nonleaf_spte(sp.addr, self.ad)
            old = yield cas(self.root, ri, e, new, cost="spte_cmpxchg")  # tdp_mmu_link_sp
            if old != e:
                yield free(sp)  # never published: freed at once (tdp_mmu_free_sp)
                return RET_PF_RETRY
            e = new
        table = self.child(e)
        old = (yield load(table, li, cost="spte_read")) if leaf is None else leaf
        if S.is_frozen_spte(old):
            return RET_PF_RETRY
        if S.hw_present(old) and (not write or old & S.VMX_EPT_WRITABLE):
            return RET_PF_SPURIOUS
        new = S.make_spte(pfn, writable=True, ad_enabled=self.ad)
        if write and self.ad:
            new |= S.shadow_dirty_mask
        r = yield cas(table, li, old, new, cost="spte_cmpxchg")  # tdp_mmu_set_spte_atomic
        if r != old:
            return RET_PF_RETRY
        self.ghost_install(gfn, pfn, dirty=write and self.ad)
        return RET_PF_FIXED

    def fast_page_fault(self, gfn: int, write: bool, root: int | None = None,
                        leaf: int | None = None) -> Gen:
        """Lockless fix of an access-tracked SPTE (``fast_page_fault``): restore the saved
        R/X bits with a cmpxchg. Returns True if the fault was fixed. ``root``,
        ``leaf``: it is inside its RCU section and its reads found these (a fault
        stream hands over there)."""
        if self.ad:
            return False  # page_fault_can_be_fast(): a non-present fault with A/D is slow
        if root is None:
            yield rcu_read_lock(self.sys.rcu, cost="rcu_read_lock")
        fixed = False
        ri, li = self.split(gfn)
        e = (yield load(self.root, ri, cost="spte_read")) if root is None else root
        if S.is_shadow_present_pte(e):
            table = self.child(e)
            old = (yield load(table, li, cost="spte_read")) if leaf is None else leaf
            if (S.is_shadow_present_pte(old) and S.is_access_track_spte(old)
                    and not write):
                new = S.restore_acc_track_spte(old)
                r = yield cas(table, li, old, new, cost="spte_cmpxchg")
                fixed = r == old
        yield rcu_read_unlock(self.sys.rcu, cost="rcu_read_unlock")
        return fixed

    # -- hardware ---------------------------------------------------------------------
    def hw_walk(self, gfn: int, write: bool, root: int | None = None,
                leaf: int | None = None) -> Gen:
        """The CPU's EPT walk on a TLB miss (``ept.ept_walk``; ``root``, ``leaf``: the
        entries its loads already found)."""
        return (yield from ept_walk(self, gfn, write, root, leaf))

    # -- zapping (mmu_lock held for write) ------------------------------------------
    def kvm_tdp_mmu_unmap_gfn_range(self, kvm: "Kvm", range: "KvmGfnRange") -> Gen:
        """``tdp_mmu_zap_leafs``: make every leaf SPTE in the range non-present."""
        m = self.sys.m
        m.lockdep_assert_held(kvm.mmu_lock, write=True)
        flush = False
        yield rcu_read_lock(self.sys.rcu, cost="rcu_read_lock")
        for ri, lo, hi in self.segments(range.start, range.end):
            e = yield load(self.root, ri, cost="spte_read")
            if not S.is_shadow_present_pte(e):
                continue
            table = self.child(e)
            for clo in range_chunks(lo, hi, self.chunk):
                vals = yield vload(table, clo[0], clo[1], cost="spte_read")
                present = _vec(S.is_shadow_present_pte, vals)
                if not present.any():
                    continue
                # kvm_tdp_mmu_write_spte: xchg so no concurrent A/D update is lost
                old = yield vxchg(table, clo[0], clo[1], 0, select=present,
                                  cost="spte_zap")
                for k in np.flatnonzero(present):
                    self.ghost_zap(self.gfn_of(ri, clo[0] + int(k)),
                                   S.is_accessed_spte(int(old[k])))
                flush = True
        yield rcu_read_unlock(self.sys.rcu, cost="rcu_read_unlock")
        return flush

    def zap_leaf_table(self, kvm: "Kvm", ri: int) -> Gen:
        """Unlink and free one leaf table (``tdp_mmu_zap_sp``-like): write the parent entry,
        freeze every child entry (``handle_removed_pt``), free the table after an RCU grace
        period. Returns True if a table was zapped (the caller must flush TLBs)."""
        m = self.sys.m
        m.lockdep_assert_held(kvm.mmu_lock, write=True)
        e = yield load(self.root, ri, cost="spte_read")
        if not S.is_shadow_present_pte(e):
            return False
        yield store(self.root, ri, 0, cost="spte_write")
        base = self.gfn_of(ri, 0)
        for g in range(base, min(base + self.leaf_entries, self.npages)):
            self.ghost_zap(g, False)  # unlinked: no longer mapped (young counted below)
        table = self.child(e)
        old = yield vxchg(table, 0, len(table), S.FROZEN_SPTE, cost="spte_zap")
        self.sys.count("tables_zapped")
        young = int(_vec(S.is_accessed_spte, old).sum())
        if young:
            self.sys.count("young_dropped_at_zap", young)
        if self.sys.bug("free-without-grace-period"):
            yield free(table)
        else:
            yield call_rcu(self.sys.rcu, tdp_mmu_free_sp_rcu_callback, table)
        return True

    def write_protect_gfn(self, kvm: "Kvm", gfn: int) -> Gen:
        """``kvm_tdp_mmu_write_protect_gfn`` (write-tracking a guest page table): under
        mmu_lock for write, clear the writable bit of the leaf SPTE with
        ``tdp_mmu_iter_set_spte``: an xchg if the SPTE is volatile, else a plain write of
        the value read earlier. Either writes back the A bit it read, so a lockless clear
        between the read and the write is lost: counted as ``clears_clobbered``.
        Returns whether the SPTE changed."""
        sys = self.sys
        sys.m.lockdep_assert_held(kvm.mmu_lock, write=True)
        ri, li = self.split(gfn)
        yield rcu_read_lock(sys.rcu, cost="rcu_read_lock")
        changed = False
        e = yield load(self.root, ri, cost="spte_read")
        if S.is_shadow_present_pte(e):
            table = self.child(e)
            old = yield load(table, li, cost="spte_read")
            self.ghost_windows[gfn] = 0
            new = old & ~S.VMX_EPT_WRITABLE
            if S.is_shadow_present_pte(old) and new != old:
                if S.spte_needs_atomic_update(old, sys.design.accessed_volatile):
                    got = yield xchg(table, li, new, cost="spte_write")
                    if got & S.shadow_dirty_mask and not new & S.shadow_dirty_mask:
                        # handle_changed_spte: the hardware's D moves to the folio
                        self.ghost_dirty[gfn] = False
                else:
                    yield store(table, li, new, cost="spte_write")
                if self.ghost_windows[gfn] and new & S.shadow_accessed_mask:
                    sys.count("clears_clobbered")
                changed = True
            del self.ghost_windows[gfn]
        yield rcu_read_unlock(sys.rcu, cost="rcu_read_unlock")
        return changed

    # -- aging ------------------------------------------------------------------------
    def age_gfn_range(self, kvm: "Kvm", range: "KvmGfnRange", test_only: bool,
                      accessed_volatile: bool, should_clear: Any = None) -> Gen:
        """``__kvm_tdp_mmu_age_gfn_range``: test (and unless ``test_only`` clear) the
        accessed state of every leaf SPTE in the range. Returns whether any was young.

        ``should_clear(gfn)``, if given, decides per young page whether to clear it (the
        batched designs' predicate); every young page is still recorded as seen. It may
        also answer for a whole chunk (``should_clear_chunk``).

        ``accessed_volatile``: locked writers treat the A bit as volatile (before 6.15)
        and clear it atomically when hardware could change the SPTE meanwhile; from 6.15
        a plain write may be used (and clobber a lockless clear: counted, tolerated)."""
        sys = self.sys
        if not range.lockless:
            sys.m.lockdep_assert_held(kvm.mmu_lock, write=True)
        young = False
        in_rcu = True
        run = self.chunk // self.leaf_entries  # > 1: age runs of arena tables at once
        yield rcu_read_lock(sys.rcu, cost="rcu_read_lock")
        if run > 1 and self.arena is not None:
            for r0, r1, g0, g1 in self.runs(range.start, range.end, run):
                found, stop = yield from self._age_run(r0, r1, g0, g1, test_only,
                                                       should_clear, range.lockless,
                                                       accessed_volatile)
                young = young or found
                if stop:
                    break
            yield rcu_read_unlock(sys.rcu, cost="rcu_read_unlock")
            return young
        for ri, lo, hi in self.segments(range.start, range.end):
            e = yield load(self.root, ri, cost="spte_read")
            if not S.is_shadow_present_pte(e):
                continue
            table = self.child(e)
            if sys.bug("rcu-unlock-early") and range.lockless and in_rcu:
                # the seeded bug: "RCU only protects the walk down to the leaf table"
                yield rcu_read_unlock(sys.rcu, cost="rcu_read_unlock")
                in_rcu = False
            found, stop = yield from self._age_table(table, self.gfn_of(ri, 0), lo, hi,
                                                     test_only, should_clear,
                                                     range.lockless, accessed_volatile)
            young = young or found
            if stop:
                break
        if in_rcu:
            yield rcu_read_unlock(sys.rcu, cost="rcu_read_unlock")
        return young

    def _age_run(self, r0: int, r1: int, g0: int, g1: int, test_only: bool,
                 should_clear: Any, lockless: bool, accessed_volatile: bool) -> Gen:
        """Age gfns ``[g0, g1)``, which lie in the leaf tables of root indices
        ``[r0, r1)``: one ``vload`` of their root entries, then each stretch of tables
        still linked as set-up linked them as one chunk of the arena (arena index =
        gfn), any other present table on its own. Returns (young, stop) as
        ``_age_table`` does."""
        es = yield vload(self.root, r0, r1, cost="spte_read")
        per = self.leaf_entries
        spans = self.arena_spans(es, r0, g0, g1)
        young = False
        for lo, hi, table in spans:
            if table is None:
                found, stop = yield from self._age_table(self.arena, 0, lo, hi, test_only,
                                                         should_clear, lockless,
                                                         accessed_volatile, chunk=hi - lo)
            else:
                base = lo - lo % per
                found, stop = yield from self._age_table(table, base, lo - base, hi - base,
                                                         test_only, should_clear, lockless,
                                                         accessed_volatile)
            young = young or found
            if stop:
                return young, True
        return young, False

    def _age_table(self, table: Any, base: int, lo: int, hi: int, test_only: bool,
                   should_clear: Any, lockless: bool, accessed_volatile: bool,
                   chunk: int | None = None) -> Gen:
        """Age entries ``[lo, hi)`` of ``table`` (entry ``k`` maps gfn ``base + k``) in
        chunks. Returns (any young, stop: a plain test has its answer)."""
        sys = self.sys
        young = False
        if sys.bug("plain-store-clear") and lockless:
            # the seeded bug: write back the value read earlier, minus A
            mode = V.NONE
        elif lockless:
            mode = V.LOCKLESS
        else:  # tdp_mmu_clear_spte_bits: atomic only where the SPTE is volatile
            mode = V.LOCKED
        # a run-mode walk (chunks of several leaf tables) that clears every young page:
        # each chunk's read, test and clear is one vupdate
        fuse = (self.fuse and not test_only and self.chunk // self.leaf_entries > 1
                and clears_every_young(should_clear))
        for clo, chi in range_chunks(lo, hi, chunk or self.chunk):
            if fuse:
                acc, ad, n, n_ad, idx, noad = yield vupdate(
                    table, clo, chi, self._age_clear_fn(mode, base + clo, lockless),
                    cost="spte_read", atomic_cost="spte_clear_young",
                    store_cost="spte_write")
                if not n:
                    continue
                young = young or not sys.bug("age-forgets-young")
                acc = all_set(n) if acc is None else acc  # (None: every entry)
                sys.ghost_seen_young_many(base + clo, acc, n)
                if should_clear is not None:  # asked, for what it records; it clears all
                    should_clear_chunk(should_clear, base + clo, acc)
                if n_ad:
                    sys.ghost_cleared_many(base + clo, all_set(n_ad) if ad is None else ad,
                                           n_ad)
                if len(idx):
                    yield from self._age_noad(table, base, clo, idx, noad, lockless)
                continue
            vals = yield vload(table, clo, chi, cost="spte_read")
            if test_only:
                acc, n = V.accessed(vals)
            else:  # and what a clear does to each (one read of the chunk)
                acc, ad, atomic, n, n_ad, n_noad, n_atomic = V.age_scan(vals, mode)
            if not n:
                continue
            # the seeded bug: only a test reports young, a clear forgets to say so
            young = young or test_only or not sys.bug("age-forgets-young")
            sys.ghost_seen_young_many(base + clo, acc, n)
            if should_clear is not None:
                # called for every young page, in test mode too (it may record it)
                acc = acc & should_clear_chunk(should_clear, base + clo, acc)
                if not test_only and np.count_nonzero(acc) != n:  # it kept some young
                    ad, atomic, n_ad, n_noad, n_atomic = V.age_select(vals, acc, mode,
                                                                      accessed_volatile)
            elif test_only:
                return young, True  # kvm_test_age_gfn: the first young SPTE answers
            if test_only or not n_ad + n_noad:  # (acc = ad | noad)
                continue
            yield from self._age_chunk(table, base, clo, chi, vals, acc, ad, atomic, n_ad,
                                       n_noad, n_atomic, lockless)
        return young, False

    def _lockless_cleared(self, first: int, mask: np.ndarray, n: int) -> None:
        """A lockless clear of A in gfn ``first + k`` wherever ``mask[k]`` (``n`` of
        them): counted for each gfn a locked writer has read and not yet written."""
        for gfn in self.ghost_windows:
            k = gfn - first
            if 0 <= k < len(mask) and (n == len(mask) or mask[k]):
                self.ghost_windows[gfn] += 1

    def _age_clear_fn(self, mode: int, first: int, lockless: bool) -> Any:
        """The ``vupdate`` function of a fused aging chunk whose first gfn is ``first``:
        ``age_scan`` and the clear of each accessed A/D entry in one pass
        (``spte_vec.age_clear``), as ``_age_chunk`` would clear them after a ``vload``
        (the same atomics, plain writes, cleared pages and lockless-clear counts, with
        no window between an entry's read and its clear). Its result: (acc, ad, how many
        acc, how many ad, the young A/D-disabled entries' indices and values), a mask
        None when its count is 0 or the chunk's length (``age_clear`` may leave it
        unwritten then)."""
        def age_clear(spte: np.ndarray) -> tuple[Any, ...]:
            acc, ad, atomic, n, n_ad, n_noad, n_atomic = V.age_clear(spte, mode)
            full = len(spte)
            if lockless and n_ad and self.ghost_windows:
                self._lockless_cleared(first, ad, n_ad)
            n_store = n_ad - n_atomic
            idx = (_NO_IDX if not n_noad else np.arange(full) if n_noad == full
                   else np.flatnonzero(acc & ~ad))
            return ((acc if 0 < n < full else None, ad if 0 < n_ad < full else None, n,
                     n_ad, idx, spte[idx]),
                    None if n_atomic in (0, full) else atomic, n_atomic,
                    None if n_store in (0, full) else ad & ~atomic, n_store)
        return age_clear

    def _age_chunk(self, table: Any, base: int, lo: int, hi: int, vals: np.ndarray,
                   acc: np.ndarray, ad: np.ndarray, atomic: np.ndarray, n_ad: int,
                   n_noad: int, n_atomic: int, lockless: bool) -> Gen:
        """Clear the young entries ``acc`` selects, as ``age_select`` split them: ``ad``
        by clearing A (``atomic`` of them with a fetch-and), the others by marking them
        for access tracking."""
        sys = self.sys
        if n_ad:
            old = vals
            if n_atomic == len(vals):  # (so is ad: one fetch-and over the whole chunk)
                # tdp_mmu_clear_spte_bits_atomic: atomic64_fetch_and
                old = yield vfetch_and(table, lo, hi, ~S.shadow_accessed_mask,
                                       cost="spte_clear_young")
            else:
                if n_atomic:
                    got = yield vfetch_and(table, lo, hi, ~S.shadow_accessed_mask,
                                           select=atomic, cost="spte_clear_young")
                    old = np.where(atomic, got, vals)
                if n_atomic < n_ad:
                    # a plain write of the value read earlier, minus A
                    yield vstore(table, lo,
                                 vals & np.uint64(~S.shadow_accessed_mask & S.MASK),
                                 select=None if n_ad == len(vals) and not n_atomic
                                 else ad & ~atomic, cost="spte_write")
            cleared, n_cleared = V.cleared(old, ad)
            if lockless and n_cleared and self.ghost_windows:
                self._lockless_cleared(base + lo, cleared, n_cleared)
            sys.ghost_cleared_many(base + lo, cleared, n_cleared)
        if n_noad:
            idx = np.flatnonzero(acc & ~ad)
            yield from self._age_noad(table, base, lo, idx, vals[idx], lockless)

    def _age_noad(self, table: Any, base: int, lo: int, idx: np.ndarray,
                  vals: np.ndarray, lockless: bool) -> Gen:
        """Mark for access tracking the young A/D-disabled entries ``lo + idx`` (read
        as ``vals``), one by one."""
        sys = self.sys
        if lockless and not sys.design.lockless_access_tracking:
            sys.contract(False, f"{sys.design.name}: the lockless path met an A/D-disabled"
                         " SPTE; it must have reported failure so the caller falls back")
        for k, v in zip(idx.tolist(), vals.tolist()):
            new = S.mark_spte_for_access_track(v)
            if lockless:
                # cmpxchg; on failure leave it: "the access was most likely recent"
                r = yield cas(table, lo + k, v, new, cost="spte_cmpxchg")
                if r == v:
                    sys.ghost_cleared(base + lo + k)
            else:
                sys.m.lockdep_assert_held(self.kvm.mmu_lock, write=True)
                yield xchg(table, lo + k, new, cost="spte_write")
                sys.ghost_cleared(base + lo + k)


def tdp_mmu_free_sp_rcu_callback(table: Any) -> Gen:
    yield free(table, cost="sp_free")


def range_chunks(lo: int, hi: int, chunk: int) -> list[tuple[int, int]]:
    return [(a, min(a + chunk, hi)) for a in range(lo, hi, chunk)]


_NO_IDX = np.zeros(0, dtype=np.intp)
_PRESENT = np.uint64(S.SPTE_MMU_PRESENT_MASK)
_AD_ENABLED = np.uint64(S.SPTE_AD_ENABLED)


def _vec(fn: Any, vals: np.ndarray) -> np.ndarray:
    """Apply an SPTE predicate to a chunk (a fused kernel for the common ones)."""
    if fn is S.is_shadow_present_pte:
        return bits_set(vals, _PRESENT)[0]
    if fn is S.spte_ad_enabled:
        return bits_set(vals, _AD_ENABLED)[0]
    if fn is S.is_accessed_spte:
        return V.accessed(vals)[0]
    return np.array([fn(int(v)) for v in vals], dtype=bool)
