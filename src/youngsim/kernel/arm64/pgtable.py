"""``arch/arm64/kvm/hyp/pgtable.c`` (stage-2 part) and the hardware's stage-2 walker.

Descriptor format (4 KiB granule, ``arch/arm64/include/asm/kvm_pgtable.h``):

=========================  =====  ==========================================================
``KVM_PTE_VALID``          0      valid descriptor
``KVM_PTE_TYPE``           1      table (levels 0-2) / page (level 3)
``S2AP_R`` / ``S2AP_W``    6, 7   ``KVM_PTE_LEAF_ATTR_LO_S2_S2AP_{R,W}``: stage-2 permission
``AF``                     10     ``KVM_PTE_LEAF_ATTR_LO_S2_AF``: the access flag
``DBM``                    51     dirty bit modifier (FEAT_HAFDBS, hardware dirty state)
output address             12-47  ``KVM_PTE_ADDR_MASK``: the pfn (or child table) << 12
=========================  =====  ==========================================================

The memory attributes, shareability and XN bits are not modelled (they never change here).

Two levels (a root whose entries point to 512-entry leaf tables) stand for the four of a
real 48-bit IPA space, as for the x86 TDP MMU: enough to fault tables in, unlink them and
free them through RCU.

**Dirty state** (the ``spte-dirty-lost`` invariant reads it) is ``S2AP_W`` of a valid leaf:

- with FEAT_HAFDBS (``hw_af=True``) a read fault installs a *writable-clean* descriptor,
  ``DBM=1, S2AP_W=0``; a guest write makes the walker set ``S2AP_W`` (with ``AF``) in one
  atomic update, the architecture's "writable-dirty" state, which is the hardware-set
  dirty bit of this MMU. A write fault installs ``DBM=1, S2AP_W=1``;
- without it (``hw_af=False``: no HA, no HD) there is no writable-clean state the hardware
  could promote, so KVM does what it does today: a fault on a host-writable page maps it
  writable (``S2AP_W=1``) even for a read, and marks the page dirty in software at that
  moment (``kvm_set_pfn_dirty``/``mark_page_dirty_in_slot``). The descriptor is dirty from
  installation on. A write to a write-protected descriptor (dirty logging; only built
  directly by tests here) takes a permission fault that KVM fixes under ``mmu_lock`` for
  read with ``kvm_pgtable_stage2_relax_perms`` (a cmpxchg).

This is a simplification, stated plainly: KVM today does not set ``VTCR_EL2.HD`` (only
``HA``), so it never uses DBM for stage 2, on FEAT_HAFDBS hardware either. We model DBM
on ``arm64`` anyway (the architectural feature, as used by the unmerged "hardware dirty
state management" RFCs, and as the variant is specified for youngsim) because it is the
one way the hardware can change a stage-2 descriptor other than ``AF``, which is what
makes write-back of a stale descriptor a lost-dirty bug rather than a harmless one.
Dirty logging (write protection) is not modelled.

**Concurrency**, as in the kernel since the parallel stage-2 fault series (Linux 6.2/6.3;
details of the kernel code cited here are from our reading, not checked line by line):

- faults (``user_mem_abort``) hold ``mmu_lock`` for read and install with
  ``stage2_try_set_pte`` = cmpxchg (``KVM_PGTABLE_WALK_SHARED``); a failed cmpxchg makes
  the walker return ``-EAGAIN`` and the vCPU re-enters the guest. The kernel breaks the
  old entry first (cmpxchg to ``KVM_INVALID_PTE_LOCKED``, then ``smp_store_release`` of the
  new one); faults here only ever replace an invalid entry, for which the locked
  intermediate is indistinguishable from the invalid one, so it is one cmpxchg;
- access-flag faults (``handle_access_fault`` -> ``kvm_pgtable_stage2_mkyoung``) and
  permission faults (``kvm_pgtable_stage2_relax_perms``) hold the read lock and use
  cmpxchg;
- unmap, table unlink and (before 6.15 on every arch, still on arm64) aging hold the lock
  for write. With the write lock the kernel's ``stage2_try_set_pte`` is a plain
  ``WRITE_ONCE`` of a value computed from the entry read earlier. That is safe in the
  kernel because the only concurrent writer is then the hardware setting ``AF`` (HA
  without HD). With DBM modelled it is not: a write-locked mkold whose ``WRITE_ONCE``
  follows a hardware DBM update loses the dirty state. So the locked age walker here
  clears ``AF`` with a cmpxchg loop when the hardware manages bits (``hw_af``), and with
  a plain store (the kernel's code) when it does not. Unmap clears leaves with an atomic
  exchange; a table unlink exchanges the table descriptor and leaves the unlinked
  table's entries as they are (see ``stage2_unlink_table``).
  ``tests/test_arm64.py`` shows the kernel-literal ``WRITE_ONCE`` losing a DBM update;
- page-table pages: every walk runs in an RCU read section (``kvm_pgtable_walk_begin``;
  under ``mmu_lock`` the held lock is that section, see ``kvm_pgtable_walk``);
  an unlinked table is freed after a grace period (``stage2_free_unlinked_table``,
  earlier ``stage2_free_removed_table``, via ``call_rcu`` for shared-walk unlinks). Upstream frees tables emptied by a
  write-locked unmap through ``put_page`` at once; yu-v2's "kvm/arm64: make stage2 page
  tables RCU safe" deferred those too, which its lockless walker needs. We always defer.

Walkers work in chunks of ``chunk`` entries (one entry when checked, a leaf table when
timed): one ``vload`` per chunk, atomic per entry.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Generator

import numpy as np
from numba import njit

from ...sim import (Op, alloc, call_rcu, cas, free, load, rcu_read_lock, rcu_read_unlock,
                    vcas, vload, vstore, vupdate, vxchg, xchg)
from ...sim.vec import bits_set, clear_where_set
from ..hw.tables import TwoLevelTables
from ..kvm.arch import all_set, clears_every_young, should_clear_chunk

if TYPE_CHECKING:
    from ..system import System

Gen = Generator[Op, Any, Any]

MASK = (1 << 64) - 1
PAGE_SHIFT = 12
PTRS_PER_TABLE = 512

KVM_PTE_VALID = 1 << 0
KVM_PTE_TYPE = 1 << 1  # KVM_PTE_TYPE_TABLE at levels 0-2, KVM_PTE_TYPE_PAGE at level 3
KVM_PTE_LEAF_ATTR_LO_S2_S2AP_R = 1 << 6
KVM_PTE_LEAF_ATTR_LO_S2_S2AP_W = 1 << 7
KVM_PTE_LEAF_ATTR_LO_S2_AF = 1 << 10
KVM_PTE_LEAF_ATTR_HI_S2_DBM = 1 << 51
KVM_PTE_ADDR_MASK = ((1 << 36) - 1) << PAGE_SHIFT  # bits 12-47
#: what a shared walker writes while it breaks an entry (not used: see module doc)
KVM_INVALID_PTE_LOCKED = 1 << 10

S2AP_R = KVM_PTE_LEAF_ATTR_LO_S2_S2AP_R
S2AP_W = KVM_PTE_LEAF_ATTR_LO_S2_S2AP_W
AF = KVM_PTE_LEAF_ATTR_LO_S2_AF
DBM = KVM_PTE_LEAF_ATTR_HI_S2_DBM

# ESR_ELx fault status codes (the class of stage-2 abort the hardware reports)
ESR_ELx_FSC_FAULT = 0x04  # translation fault
ESR_ELx_FSC_ACCESS = 0x08  # access flag fault
ESR_ELx_FSC_PERM = 0x0C  # permission fault

# return values of the fault-side walkers (KVM's 0 / -EAGAIN, x86's RET_PF_* names)
RET_PF_CONTINUE, RET_PF_RETRY, RET_PF_FIXED, RET_PF_SPURIOUS = 0, 1, 2, 3

__all__ = [n for n in dir() if n.isupper()] + ["Stage2Pgtable", "kvm_pte_valid",
                                               "kvm_pte_to_pfn", "kvm_init_table_pte",
                                               "kvm_init_valid_leaf_pte"]


_NOT_AF = np.uint64(~AF & MASK)
_VALID_AF = np.uint64(KVM_PTE_VALID | AF)
_AF = np.uint64(AF)


def kvm_pte_valid(pte: int) -> bool:
    return bool(pte & KVM_PTE_VALID)


def kvm_pte_young(pte: int) -> bool:
    """A valid leaf with the access flag set."""
    return bool(pte & KVM_PTE_VALID) and bool(pte & AF)


def kvm_pte_to_pfn(pte: int) -> int:
    return (pte & KVM_PTE_ADDR_MASK) >> PAGE_SHIFT


def kvm_init_table_pte(child_addr: int) -> int:
    if child_addr & ~KVM_PTE_ADDR_MASK:
        raise ValueError(f"table address {child_addr:#x} does not fit the output address")
    return KVM_PTE_VALID | KVM_PTE_TYPE | child_addr


def kvm_init_valid_leaf_pte(pfn: int, write: bool, hw_dirty: bool, young: bool = True
                            ) -> int:
    """A page descriptor for a fault on a host-writable page (``kvm_init_valid_leaf_pte``
    + ``stage2_set_prot_attr``). With hardware dirty management: ``DBM``, and
    ``S2AP_W`` only after a write (writable-clean otherwise). Without: ``S2AP_W``
    always (KVM maps it writable and counts it dirty). KVM always creates it with ``AF``
    set."""
    pte = KVM_PTE_VALID | KVM_PTE_TYPE | S2AP_R | ((pfn << PAGE_SHIFT) & KVM_PTE_ADDR_MASK)
    if young:
        pte |= AF
    if hw_dirty:
        pte |= DBM
        if write:
            pte |= S2AP_W
    else:
        pte |= S2AP_W
    return pte


def hw_permits(pte: int, write: bool, hw_dirty: bool) -> bool:
    """Would the access be permitted once ``AF`` is set? (write: S2AP_W, or DBM with HD)"""
    return not write or bool(pte & S2AP_W) or (hw_dirty and bool(pte & DBM))


def _chunks(lo: int, hi: int, chunk: int) -> list[tuple[int, int]]:
    return [(a, min(a + chunk, hi)) for a in range(lo, hi, chunk)]


Visitor = Callable[[Any, int, np.ndarray, int], Gen]


class Stage2Pgtable(TwoLevelTables):
    """``struct kvm_pgtable`` for one VM's stage 2 (``kvm->arch.mmu.pgt``) plus the ghost
    bookkeeping the invariants read."""

    def __init__(self, sys: "System", kvm: Any, hw_af: bool, npages: int, chunk: int = 1,
                 leaf_entries: int = PTRS_PER_TABLE) -> None:
        super().__init__(sys, f"{kvm.name}.pgd", npages, leaf_entries)
        self.kvm = kvm
        #: FEAT_HAFDBS: VTCR_EL2.HA (hardware AF) and, as modelled here, HD (DBM)
        self.hw_af = hw_af
        self.chunk = chunk
        #: in run mode, the age walk reads, tests and clears each chunk with one
        #: ``vupdate`` (``FusedVisit``); False keeps the ``vload`` and the ``vcas``
        #: apart, as the checker's chunks of one entry have them (tests compare both)
        self.fuse = True

    def entry_present(self, entry: int) -> bool:
        return kvm_pte_valid(entry)

    def entry_addr(self, entry: int) -> int:
        return kvm_pte_to_pfn(entry) << PAGE_SHIFT

    def link_entry(self, addr: int) -> int:
        return kvm_init_table_pte(addr)

    table_prefix = "s2pt"

    # -- ghost bookkeeping ----------------------------------------------------------
    def _ghost_install(self, gfn: int, pte: int) -> None:
        self.ghost_install(gfn, kvm_pte_to_pfn(pte), dirty=bool(pte & S2AP_W))

    def _ghost_zap(self, gfn: int, old: int) -> None:
        self.ghost_zap(gfn, kvm_pte_young(old))

    # -- set-up and invariants (plain accesses between steps) ------------------------
    def prepopulate(self, gfn: int, pfn: int, write: bool, young: bool) -> None:
        ri, li = self.split(gfn)
        pte = kvm_init_valid_leaf_pte(pfn, write, hw_dirty=self.hw_af, young=young)
        self.setup_leaf_table(ri)[li] = pte
        self._ghost_install(gfn, pte)

    def leaf_entries_for(self, pfns: np.ndarray, write: bool, young: bool
                         ) -> tuple[np.ndarray, bool]:
        # the descriptor is the output address OR'd into bits that do not depend on it
        base = kvm_init_valid_leaf_pte(0, write, hw_dirty=self.hw_af, young=young)
        addr = (pfns << np.uint64(PAGE_SHIFT)) & np.uint64(KVM_PTE_ADDR_MASK)
        return addr | np.uint64(base), bool(base & S2AP_W)

    # -- the generic walker ----------------------------------------------------------
    def kvm_pgtable_walk(self, start: int, end: int, visitor: Visitor,
                         lockless: bool = False, fused: "FusedVisit | None" = None) -> Gen:
        """``kvm_pgtable_walk`` with ``KVM_PGTABLE_WALK_LEAF`` over gfns [start, end):
        ``kvm_pgtable_walk_begin``, then per leaf table one load of the table descriptor
        and one ``vload`` per chunk, handed to ``visitor(table, lo, values, gfn)``
        (``values`` are the table's entries from ``lo``; the first maps ``gfn``). A
        nonzero visitor return stops the walk and is returned.

        With a chunk of several leaf tables (large guests), a run of them is walked as
        the TDP MMU's aging does: one ``vload`` of their table descriptors, then each
        stretch still linked as set-up linked it as chunks of the arena
        (``arena_spans``), any other table on its own. There, a walk given ``fused``
        (and ``self.fuse``) visits each chunk with one ``vupdate`` instead of a
        ``vload`` and the visitor's operations (``FusedVisit``).

        ``kvm_pgtable_walk_begin`` is ``rcu_read_lock()``. Under ``mmu_lock`` (a spinning
        rwlock: preemption off) the walk is already an RCU-sched read section, which
        the machine models (consolidated RCU), so the explicit section is taken only by
        the lockless walk: two scheduling points fewer per locked walk, same
        semantics."""
        sys = self.sys
        in_rcu = lockless
        ret = 0
        if lockless:
            yield rcu_read_lock(sys.rcu, cost="rcu_read_lock")
        run = self.chunk // self.leaf_entries
        if run > 1 and self.arena is not None:
            ret = yield from self._walk_runs(start, end, run, visitor,
                                             fused if self.fuse else None)
            if in_rcu:
                yield rcu_read_unlock(sys.rcu, cost="rcu_read_unlock")
            return ret
        for ri, lo, hi in self.segments(start, end):
            e = yield load(self.root, ri, cost="spte_read")
            if not kvm_pte_valid(e):
                continue
            table = self.child(e)
            if sys.bug("rcu-unlock-early") and lockless and in_rcu:
                # seeded bug: "RCU only protects the walk down to the leaf table"
                yield rcu_read_unlock(sys.rcu, cost="rcu_read_unlock")
                in_rcu = False
            for clo, chi in _chunks(lo, hi, self.chunk):
                vals = yield vload(table, clo, chi, cost="spte_read")
                ret = yield from visitor(table, clo, vals, self.gfn_of(ri, clo))
                if ret:
                    break
            if ret:
                break
        if in_rcu:
            yield rcu_read_unlock(sys.rcu, cost="rcu_read_unlock")
        return ret

    def _walk_runs(self, start: int, end: int, run: int, visitor: Visitor,
                   fused: "FusedVisit | None") -> Gen:
        """The walk over runs of ``run`` leaf tables (see ``kvm_pgtable_walk``)."""
        per = self.leaf_entries
        for r0, r1, g0, g1 in self.runs(start, end, run):
            es = yield vload(self.root, r0, r1, cost="spte_read")
            for lo, hi, table in self.arena_spans(es, r0, g0, g1):
                tbl, base = (self.arena, 0) if table is None else (table, lo - lo % per)
                for clo, chi in _chunks(lo - base, hi - base, self.chunk):
                    if fused is not None:
                        got = yield vupdate(tbl, clo, chi, fused.fn, cost="spte_read",
                                            atomic_cost=fused.atomic_cost,
                                            store_cost=fused.store_cost,
                                            cmpxchg=fused.atomic_cost is not None)
                        ret = fused.visited(got, base + clo)
                    else:
                        vals = yield vload(tbl, clo, chi, cost="spte_read")
                        ret = yield from visitor(tbl, clo, vals, base + clo)
                    if ret:
                        return ret
        return 0

    # -- fault side (mmu_lock held for read, shared walks) ----------------------------
    def kvm_pgtable_stage2_map(self, gfn: int, pfn: int, write: bool) -> Gen:
        """Install the page descriptor for a translation fault (``stage2_map_walker``
        with ``KVM_PGTABLE_WALK_SHARED``): link a new leaf table if needed, then
        cmpxchg the leaf in. ``RET_PF_RETRY`` (``-EAGAIN``) on a lost race."""
        self.sys.m.lockdep_assert_held(self.kvm.mmu_lock, write=False)
        # (no explicit rcu_read_lock: the read-held mmu_lock is an RCU-sched section)
        return (yield from self._map(gfn, pfn, write))

    def _map(self, gfn: int, pfn: int, write: bool) -> Gen:
        ri, li = self.split(gfn)
        e = yield load(self.root, ri, cost="spte_read")
        if not kvm_pte_valid(e):
            # mm_ops->zalloc_page from the vCPU's memcache, then stage2_try_break_pte +
            # stage2_make_pte on an invalid entry: one cmpxchg
            t = yield alloc(f"s2pt{ri}", self.leaf_entries, tag="spt", cost="sp_alloc")
            new = kvm_init_table_pte(t.addr)
            old = yield cas(self.root, ri, e, new, cost="spte_cmpxchg")
            if old != e:
                yield free(t)  # never published: put_page at once
                return RET_PF_RETRY
            e = new
        table = self.child(e)
        old = yield load(table, li, cost="spte_read")
        if kvm_pte_valid(old):
            # !stage2_pte_needs_update(): same mapping, or only permissions differ (the
            # vCPU comes back through the permission or access-flag fault path)
            return RET_PF_SPURIOUS
        new = kvm_init_valid_leaf_pte(pfn, write, hw_dirty=self.hw_af)
        r = yield cas(table, li, old, new, cost="spte_cmpxchg")
        if r != old:
            return RET_PF_RETRY
        self._ghost_install(gfn, new)
        return RET_PF_FIXED

    def _update_leaf_attrs_shared(self, gfn: int, set_bits: int) -> Gen:
        """``stage2_update_leaf_attrs`` with ``KVM_PGTABLE_WALK_SHARED |
        KVM_PGTABLE_WALK_HANDLE_FAULT`` on one page: ``stage2_attr_walker`` ORs
        ``set_bits`` in with a cmpxchg; ``-EAGAIN`` if the entry is invalid or changed.
        Returns (ret, new descriptor or 0)."""
        sys = self.sys
        sys.m.lockdep_assert_held(self.kvm.mmu_lock, write=False)
        ret, new = RET_PF_RETRY, 0
        ri, li = self.split(gfn)
        e = yield load(self.root, ri, cost="spte_read")
        if kvm_pte_valid(e):
            table = self.child(e)
            old = yield load(table, li, cost="spte_read")
            if kvm_pte_valid(old):
                new = old | set_bits
                if new == old:
                    ret = RET_PF_SPURIOUS
                else:
                    r = yield cas(table, li, old, new, cost="spte_cmpxchg")
                    ret = RET_PF_FIXED if r == old else RET_PF_RETRY
        return ret, new

    def kvm_pgtable_stage2_mkyoung(self, gfn: int) -> Gen:
        """Set ``AF`` for an access-flag fault. Returns the new descriptor (0 if none)."""
        ret, new = yield from self._update_leaf_attrs_shared(gfn, AF)
        return new if ret in (RET_PF_FIXED, RET_PF_SPURIOUS) else 0

    def kvm_pgtable_stage2_relax_perms(self, gfn: int) -> Gen:
        """Make the page writable for a permission fault on a write."""
        ret, _ = yield from self._update_leaf_attrs_shared(gfn, S2AP_W)
        if ret == RET_PF_FIXED:
            self.ghost_dirty[gfn] = True  # the write fault made it dirty
        return ret

    # -- the hardware ----------------------------------------------------------------
    def hw_walk(self, gfn: int, write: bool) -> Gen:
        """The stage-2 walk on a TLB miss. Returns ``(ok, fault status)``.

        With FEAT_HAFDBS the walker sets ``AF`` and, for a write to a ``DBM``
        descriptor, ``S2AP_W``, in one atomic update (a cmpxchg loop against software
        updates). Without it an ``AF``-clear descriptor raises an access-flag fault, and
        a write to a non-writable one a permission fault (access flag reported first)."""
        ri, li = self.split(gfn)
        e = yield load(self.root, ri, cost="hw_walk")
        if not kvm_pte_valid(e):
            return False, ESR_ELx_FSC_FAULT
        table = self.child(e)
        while True:
            s = yield load(table, li, cost="hw_walk")
            if not kvm_pte_valid(s):
                return False, ESR_ELx_FSC_FAULT
            if not self.hw_af:
                if not s & AF:
                    return False, ESR_ELx_FSC_ACCESS
                if write and not s & S2AP_W:
                    return False, ESR_ELx_FSC_PERM
                return True, 0
            if not hw_permits(s, write, hw_dirty=True):
                return False, ESR_ELx_FSC_PERM
            new = s | AF | (S2AP_W if write else 0)
            if new == s:
                return True, 0
            old = yield cas(table, li, s, new, cost="hw_ad_update")
            if old == s:
                if write:
                    self.ghost_dirty[gfn] = True
                return True, 0

    # -- exclusive side (mmu_lock held for write) -----------------------------------
    def kvm_pgtable_stage2_unmap(self, start: int, end: int) -> Gen:
        """``stage2_unmap_walker`` on every leaf in [start, end): make it invalid.
        Returns True if anything was unmapped (TLBs must be invalidated)."""
        sys = self.sys
        sys.m.lockdep_assert_held(self.kvm.mmu_lock, write=True)
        flush = False
        # The kernel reads each entry (ctx->old) and, if valid, clears it with
        # WRITE_ONCE(0) (kvm_clear_pte). Invalid entries are 0 here, so one exchange of 0
        # over the chunk has the same final state, and gives the exact old values for the
        # young-dropped counter, in one scheduling point instead of two.
        for ri, lo, hi in self.segments(start, end):
            e = yield load(self.root, ri, cost="spte_read")
            if not kvm_pte_valid(e):
                continue
            table = self.child(e)
            for clo, chi in _chunks(lo, hi, self.chunk):
                old = yield vxchg(table, clo, chi, 0, cost="spte_zap")
                for k in np.flatnonzero((old & np.uint64(KVM_PTE_VALID)) != 0):
                    self._ghost_zap(self.gfn_of(ri, clo + int(k)), int(old[k]))
                    flush = True
        return flush

    def stage2_unlink_table(self, ri: int) -> Gen:
        """Unlink leaf table ``ri`` and free it after an RCU grace period, as arm64
        unlinks a table: break the table descriptor (``stage2_try_break_pte``; here an
        exchange with 0, which also reads it), and hand the table to
        ``stage2_free_unlinked_table`` through ``call_rcu``. The leaves of the unlinked
        table are not written (the kernel's free walk only drops page references), so a
        walker that loaded the table descriptor earlier may still update them; they are
        unreachable for everyone else. The caller invalidates TLBs before dropping
        ``mmu_lock``. Returns True if a table was unlinked."""
        sys = self.sys
        sys.m.lockdep_assert_held(self.kvm.mmu_lock, write=True)
        e = yield xchg(self.root, ri, 0, cost="spte_zap")
        if not kvm_pte_valid(e):
            return False
        table = self.child(e)
        base = self.gfn_of(ri, 0)
        for g in range(base, min(base + self.leaf_entries, self.npages)):
            # ghost: the leaves' values at the unlink (atomic with the exchange)
            self._ghost_zap(g, int(table.data[g - base]))
        sys.count("tables_zapped")
        if sys.bug("free-without-grace-period"):
            yield free(table)
        else:
            yield call_rcu(sys.rcu, stage2_free_unlinked_table_rcu_cb, table)
        return True

    # -- aging --------------------------------------------------------------------------
    def kvm_pgtable_stage2_test_clear_young(self, start: int, end: int, mkold: bool,
                                            lockless: bool,
                                            should_clear: Callable[[int], Any] | None = None
                                            ) -> Gen:
        """Test (and with ``mkold`` clear) ``AF`` on every valid leaf in [start, end)
        (``stage2_age_walker``; ``kvm_pgtable_stage2_mkold`` before 6.9). Returns whether
        any was young. ``should_clear(gfn)``, if given, is called for every young page
        and decides whether to clear it."""
        sys = self.sys
        if not lockless:
            sys.m.lockdep_assert_held(self.kvm.mmu_lock, write=True)
        young = False

        def visit(table: Any, lo: int, vals: np.ndarray, first: int) -> Gen:
            nonlocal young
            acc, n = bits_set(vals, _VALID_AF)  # kvm_pte_young per descriptor
            if not n:
                return 0
            young = True
            sys.ghost_seen_young_many(first, acc)
            if should_clear is not None:
                # called for every young page, in gfn order (or once for the chunk)
                acc = acc & should_clear_chunk(should_clear, first, acc)
            elif not mkold:
                return 0
            if not mkold or not acc.any():
                return 0
            if lockless:
                if not self.hw_af and not sys.design.lockless_access_tracking:
                    sys.contract(False, f"{sys.design.name}: the lockless path ran on a "
                                 "stage 2 without hardware AF; it must have reported "
                                 "failure so the caller falls back")
                yield from self._lockless_clear(table, lo, vals, acc, first)
            else:
                yield from self._locked_clear(table, lo, vals, acc, first)
            return 0

        fused = None
        if mkold and clears_every_young(should_clear):
            # in run mode: read, test and clear each chunk with one vupdate
            def visited(got: tuple[np.ndarray | None, int], first: int) -> int:
                nonlocal young
                sel, n = got
                if not n:
                    return 0
                young = True
                acc = all_set(n) if sel is None else sel  # (None: every descriptor)
                sys.ghost_seen_young_many(first, acc, n)
                if should_clear is not None:  # asked, for what it records; clears all
                    should_clear_chunk(should_clear, first, acc)
                if lockless and not self.hw_af and not sys.design.lockless_access_tracking:
                    sys.contract(False, f"{sys.design.name}: the lockless path ran on a "
                                 "stage 2 without hardware AF; it must have reported "
                                 "failure so the caller falls back")
                sys.ghost_cleared_many(first, acc, n)
                return 0
            fused = FusedVisit(self._fused_atomic_cost(lockless), visited)
        yield from self.kvm_pgtable_walk(start, end, visit, lockless=lockless, fused=fused)
        return young

    def _fused_atomic_cost(self, lockless: bool) -> str | None:
        """How a fused age visit clears ``AF``, as ``_lockless_clear`` and
        ``_locked_clear`` would: the label of its cmpxchg, or None for a plain write."""
        if lockless:
            return None if self.sys.bug("plain-store-clear") else "spte_cmpxchg"
        return "spte_clear_young" if self.hw_af else None

    def _lockless_clear(self, table: Any, lo: int, vals: np.ndarray, sel: np.ndarray,
                        first: int) -> Gen:
        """yu-v2's ``kvm_test_clear_young`` visitor: ``stage2_try_set_pte`` (cmpxchg) of
        the descriptor minus ``AF``; a failure is ignored. Every way the cmpxchg can fail
        leaves nothing to clear or a fresh access to keep: the hardware set ``AF``/dirty
        (the page was just used: keep it young), a fault or ``mkyoung`` changed it (same),
        a write-locked unmap invalidated it (retrying on the new value must not
        resurrect it) or another ager already cleared it."""
        sys = self.sys
        if sys.bug("plain-store-clear"):
            # seeded bug: write back the value read earlier, minus AF
            yield from self._plain_clear(table, lo, vals, sel, first)
            return
        # one cmpxchg per selected descriptor (a vector of them: one per entry if checked)
        found = yield vcas(table, lo, lo + len(vals), vals, vals & _NOT_AF, select=sel,
                           cost="spte_cmpxchg")
        sys.ghost_cleared_many(first, stage2_cas_outcome(found, vals, sel)[0])

    def _plain_clear(self, table: Any, lo: int, vals: np.ndarray, sel: np.ndarray,
                     first: int) -> Gen:
        """Write back the descriptors read earlier, minus ``AF`` (``WRITE_ONCE``)."""
        yield vstore(table, lo, vals & _NOT_AF, select=sel, cost="spte_write")
        self.sys.ghost_cleared_many(first, sel)

    def _locked_clear(self, table: Any, lo: int, vals: np.ndarray, sel: np.ndarray,
                      first: int) -> Gen:
        """``stage2_age_walker`` under the write lock. Without hardware-managed bits
        nothing else can write the descriptor now, so the kernel's ``WRITE_ONCE`` is
        kept. With them the hardware may set ``AF``/``S2AP_W`` concurrently, so ``AF`` is
        cleared by a cmpxchg loop (see the module doc)."""
        sys = self.sys
        sys.m.lockdep_assert_held(self.kvm.mmu_lock, write=True)
        if not self.hw_af:
            yield from self._plain_clear(table, lo, vals, sel, first)
            return
        cur, pending, n_retry = vals, sel, 1
        while n_retry:  # retry each descriptor on the value found, while young
            found = yield vcas(table, lo, lo + len(vals), cur, cur & _NOT_AF,
                               select=pending, cost="spte_clear_young")
            done, pending, _, n_retry = stage2_cas_outcome(found, cur, pending)
            sys.ghost_cleared_many(first, done)
            cur = found  # a retry starts from the value its cmpxchg found


class FusedVisit:
    """A visit of a chunk as one ``vupdate`` (``kvm_pgtable_walk`` in run mode): the
    age walker's reading and clearing of ``AF`` in each young descriptor, each
    descriptor's read and cmpxchg adjacent (so a cmpxchg always finds the value just
    read and succeeds), as the kernel's loop has them, instead of a chunk apart.
    ``atomic_cost``: the label of the cmpxchgs, or None: plain writes (``spte_write``).
    ``visited(result, first gfn)`` takes the ``fn``'s result (the young mask, None
    when none or every descriptor was young, and how many were) and returns what a
    visitor returns."""

    def __init__(self, atomic_cost: str | None, visited: Callable[[Any, int], int]
                 ) -> None:
        self.atomic_cost = atomic_cost
        self.store_cost = None if atomic_cost is not None else "spte_write"
        self.visited = visited

    def fn(self, desc: np.ndarray) -> tuple[Any, ...]:
        """The ``vupdate`` function: ``AF`` cleared where ``kvm_pte_young``."""
        sel, n = clear_where_set(desc, _VALID_AF, _AF)
        some = None if n in (0, len(desc)) else sel  # (else possibly left unwritten)
        if self.atomic_cost is not None:
            return (some, n), some, n, None, 0
        return (some, n), None, 0, some, n


def stage2_free_unlinked_table_rcu_cb(table: Any) -> Gen:
    """``stage2_free_unlinked_table_rcu_cb``: the grace period has passed."""
    yield free(table, cost="sp_free")


# -- the age walker's reading of a vector cmpxchg, one compiled pass ---------------------
# (numba, as kernel/x86/spte_vec.py for SPTEs; tests/test_vec_kernels.py checks it
# against the per-descriptor reading of a cmpxchg's outcome)



@njit(cache=True, nogil=True)
def stage2_cas_outcome(found: np.ndarray, cur: np.ndarray, pending: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, int, int]:
    """After a vector cmpxchg of ``pending`` descriptors from ``cur`` (``found``: what it
    found): ``done``, those it swapped (found == cur), and ``retry``, those still
    pending that are still young (a clear lost to a concurrent update is retried from
    the value found while it is young, as the kernel's cmpxchg loop does). Returns
    (done, retry, how many done, how many to retry)."""
    n = len(found)
    done = np.empty(n, np.uint8)
    retry = np.empty(n, np.uint8)
    n_done = 0
    n_retry = 0
    for i in range(n):
        f = found[i]
        p = np.uint8(pending[i])
        d = p & np.uint8(f == cur[i])
        r = p & (d ^ np.uint8(1)) & np.uint8((f & _VALID_AF) == _VALID_AF)
        done[i] = d
        retry[i] = r
        n_done += int(d)
        n_retry += int(r)
    return done.view(np.bool_), retry.view(np.bool_), n_done, n_retry
