"""``arch/x86/kvm/mmu/mmu.c``: the x86 *shadow* MMU (rmap-based), as used for shadow
paging and nested (L2) guests, with the interface of ``X86TdpMmu`` (``mmu.py``).

Structures, as in the kernel, at the 4 KiB level only:

- **shadow pages** (``struct kvm_mmu_page``, ``sp->spt``): a parent table (the root,
  ``<kvm>.root``) whose entries point to leaf shadow pages (``sp<i>``) of
  ``leaf_entries`` SPTEs each; leaf shadow page ``i`` maps gfns ``[i*L, (i+1)*L)``
  (a direct-mapped simplification: a real shadow page shadows one guest page table);
- **rmaps** (``struct kvm_rmap_head``, ``slot->arch.rmap[0][gfn]``): one word per gfn
  (``<kvm>.rmap``, tag ``"rmap"``) naming the SPTE that maps the gfn. The word holds the
  *address* of the sptep: the shadow page's ``Words.addr`` plus ``8 * index``, so bits
  0-2 are free: bit 0 is ``KVM_RMAP_MANY`` (a ``pte_list_desc``; never used here, one SPTE
  per gfn) and bit 1 is 6.15's ``KVM_RMAP_LOCKED``.

Locking, as in the kernel:

- faults (``FNAME(page_fault)``/``direct_page_fault`` -> ``FNAME(fetch)`` ->
  ``mmu_set_spte``) take ``mmu_lock`` for **write** (unlike the TDP MMU, which takes it
  for read): write the SPTE, then ``rmap_add`` -> ``pte_list_add``;
- zaps (``kvm_unmap_gfn_range`` -> ``kvm_zap_rmap`` -> ``kvm_zap_all_rmap_sptes``; and
  ``kvm_mmu_prepare_zap_page`` -> ``drop_spte`` -> ``pte_list_remove``) run under
  ``mmu_lock`` for write; a zapped shadow page is freed by ``kvm_mmu_commit_zap_page``
  *immediately* after the remote TLB flush, never through RCU (see ``zap_leaf_table``);
- aging before 6.15 (``kvm_age_rmap``/``kvm_test_age_rmap``): under ``mmu_lock`` for
  write, ``clear_bit(accessed)`` on each SPTE of the rmap (an atomic RMW: ``lock btr``);
- aging in 6.15 (``kvm_rmap_age_gfn_range``, ``range.lockless``): no ``mmu_lock``; each
  non-empty rmap is locked "read-only" by cmpxchg-ing ``KVM_RMAP_LOCKED`` into its head
  (``kvm_rmap_lock_readonly``), the SPTE is read with ``mmu_spte_get_lockless`` and its
  A bit cleared with ``clear_bit``; the head is restored on unlock. In that kernel every
  rmap *writer* (``pte_list_add``/``pte_list_remove``/``kvm_zap_all_rmap_sptes``, all
  under ``mmu_lock`` for write) takes the same bit lock, except on an empty rmap, which
  writers may fill without it because lockless readers never walk an empty rmap. The bit
  lock is what keeps a shadow page alive under a lockless ager: the page is freed only
  after each of its SPTEs left its rmap, and leaving needs the bit lock.

Which kernel: the bit lock exists iff the design ages this VM locklessly
(``design.kvm_lockless(kvm)``, i.e. 6.15 ``upstream`` on x86); older kernels had neither.

Simplified (documented, not hidden): one SPTE per gfn (no ``pte_list_desc``, no
``KVM_RMAP_MANY`` lists), 4 KiB level only (no hugepage rmaps), two levels, A/D bits always
enabled (EPT with A/D, so no access-tracked SPTEs and no fast page fault), no
unsync/write-protected guest page tables, no ``parent_ptes`` list (the root entry is the
only parent), ``preempt_disable()`` around the read-only bit lock is not modelled, and
walkers go one gfn per step (``chunk`` is accepted for interface parity and ignored).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Generator


from ...sim import (BUG_ON, Op, alloc, cas, fetch_and, free, load, store, vload,
                    wait_until, write_lock, write_unlock, xchg)
from ..kvm.kvm_main import (is_page_fault_stale, kvm_faultin_pfn, kvm_flush_remote_tlbs,
                            kvm_mmu_invalidate_wait)
from ..kvm.arch import KvmArchMmu
from .ept import EptTables, ept_walk, spte_leaf_view
from . import spte as S
from .tdp_mmu import RET_PF_FIXED, RET_PF_RETRY, RET_PF_SPURIOUS

if TYPE_CHECKING:
    from ..hw.vcpu import Vcpu
    from ..kvm.kvm_main import Kvm, KvmGfnRange
    from ..system import System

Gen = Generator[Op, Any, Any]

KVM_RMAP_MANY = 1 << 0
KVM_RMAP_LOCKED = 1 << 1
SPTE_SIZE = 8  # bytes per SPTE: a sptep is sp->spt + 8 * index
_SP_OFFSET_MASK = 0xFFF  # Words addresses are 4 KiB aligned (Machine.ADDR_BASE)
_gfns = range  # the handlers' parameter is called ``range``, as in the kernel


class X86ShadowMmu(KvmArchMmu, EptTables):
    """``kvm->arch`` for a VM whose secondary MMU is the shadow MMU (rmap based): the
    arch hooks and, itself, the shadow page tables (``tables`` is ``self``)."""

    name = "x86-shadow"

    def __init__(self, sys: "System", kvm: "Kvm", npages: int, chunk: int = 1,
                 leaf_entries: int = S.PT_ENTRIES) -> None:
        if leaf_entries * SPTE_SIZE > _SP_OFFSET_MASK + 1:
            raise ValueError("a shadow page must fit in 4 KiB of sptep offsets")
        EptTables.__init__(self, sys, f"{kvm.name}.root", npages, leaf_entries)
        self.tables = self
        self.kvm = kvm
        self.ad = True
        self.chunk = chunk  # interface parity; rmap walks go one gfn at a time
        #: slot->arch.rmap[0]: one kvm_rmap_head per gfn (a single memslot at gfn 0)
        self.rmap = sys.m.new_words(f"{kvm.name}.rmap", max(npages, 1), tag="rmap")
        sys.m.final_check(f"{kvm.name}: rmap-coherence", self.rmap_coherence)

    @property
    def ad_enabled(self) -> bool:
        return self.ad

    @property
    def rmap_bitlock(self) -> bool:
        """Does this kernel have ``KVM_RMAP_LOCKED`` (6.15, with lockless aging)?"""
        return self.sys.design.kvm_lockless(self.kvm)

    # -- pointers (the entry format is EptTables') ---------------------------------
    @staticmethod
    def sptep(sp: Any, li: int) -> int:
        """The address of SPTE ``li`` of shadow page ``sp``: what an rmap head stores."""
        return sp.addr + SPTE_SIZE * li

    def sptep_deref(self, val: int) -> tuple[Any, int]:
        """(shadow page, index) named by an rmap value (pointer arithmetic only: the
        access is the operation on the returned page, which may have been freed)."""
        p = val & ~(KVM_RMAP_MANY | KVM_RMAP_LOCKED)
        return self.sys.m.deref(p & ~_SP_OFFSET_MASK), (p & _SP_OFFSET_MASK) // SPTE_SIZE

    # -- the rmap bit lock (6.15) ----------------------------------------------------
    def __kvm_rmap_lock(self, gfn: int) -> Gen:
        """``__kvm_rmap_lock``: returns the head's value without ``KVM_RMAP_LOCKED``, or
        0 for an empty rmap, which is *not* locked (the lock is elided)."""
        old = yield load(self.rmap, gfn, cost="rmap_read")
        if not old:
            return 0
        while True:
            if old & KVM_RMAP_LOCKED:
                # while (old_val & KVM_RMAP_LOCKED) { cpu_relax(); old_val = read(); }
                old = yield wait_until(self.rmap, gfn, KVM_RMAP_LOCKED, 0, cost="rmap_lock_wait")
            if not old:
                return 0  # purged by the task that held the lock
            r = yield cas(self.rmap, gfn, old, old | KVM_RMAP_LOCKED, cost="rmap_lock")
            if r == old:
                return old
            old = r

    def kvm_rmap_lock(self, kvm: "Kvm", gfn: int) -> Gen:
        """A writer's lock (``mmu_lock`` held for write). Before 6.15: a plain read."""
        self.sys.m.lockdep_assert_held(kvm.mmu_lock, write=True)
        if not self.rmap_bitlock:
            return (yield load(self.rmap, gfn, cost="rmap_read"))
        return (yield from self.__kvm_rmap_lock(gfn))

    def kvm_rmap_unlock(self, kvm: "Kvm", gfn: int, new_val: int) -> Gen:
        """``kvm_rmap_unlock``: publish the new head (``atomic_long_set_release``), which
        also drops the lock. Before 6.15: a plain write."""
        self.sys.m.lockdep_assert_held(kvm.mmu_lock, write=True)
        BUG_ON(new_val & KVM_RMAP_LOCKED, "kvm_rmap_unlock with KVM_RMAP_LOCKED set")
        yield store(self.rmap, gfn, new_val, cost="rmap_unlock")

    def kvm_rmap_lock_readonly(self, gfn: int) -> Gen:
        return (yield from self.__kvm_rmap_lock(gfn))

    def kvm_rmap_unlock_readonly(self, gfn: int, old_val: int) -> Gen:
        if not old_val:
            return
        yield store(self.rmap, gfn, old_val, cost="rmap_unlock")

    def pte_list_add(self, kvm: "Kvm", gfn: int, sptep: int) -> Gen:
        """``rmap_add`` -> ``pte_list_add`` (the one-SPTE case: the rmap was empty)."""
        old = yield from self.kvm_rmap_lock(kvm, gfn)
        if old:
            # a second SPTE for the gfn would need a pte_list_desc: not modelled
            yield from self.kvm_rmap_unlock(kvm, gfn, old)
            BUG_ON(True, f"pte_list_add: gfn {gfn} already has an rmap entry {old:#x}")
        yield from self.kvm_rmap_unlock(kvm, gfn, sptep)

    def pte_list_remove(self, kvm: "Kvm", gfn: int, sptep: int) -> Gen:
        """``rmap_remove`` -> ``pte_list_remove``."""
        val = yield from self.kvm_rmap_lock(kvm, gfn)
        if not val or val != sptep:
            if val:
                yield from self.kvm_rmap_unlock(kvm, gfn, val)
            BUG_ON(True, f"pte_list_remove: gfn {gfn}: rmap {val:#x}, sptep {sptep:#x}"
                   " (KVM_BUG_ON_DATA_CORRUPTION)")
        yield from self.kvm_rmap_unlock(kvm, gfn, 0)

    # -- set-up and invariants (plain accesses between steps) --------------------------
    def prepopulate(self, gfn: int, pfn: int, write: bool, young: bool) -> None:
        """Scenario set-up (not a model operation): map ``gfn`` as a past fault did,
        SPTE and rmap entry."""
        ri, li = self.split(gfn)
        sp = self.setup_leaf_table(ri)
        spte = S.make_spte(pfn, writable=True, ad_enabled=self.ad, prefetch=not young)
        if write:
            spte |= S.shadow_dirty_mask
        sp[li] = spte
        self.rmap[gfn] = self.sptep(sp, li)
        self.ghost_install(gfn, pfn, dirty=write)

    def rmap_coherence(self, _: Any = None) -> str | None:
        """End-of-run check (no writer is mid-update then): every rmap head is unlocked
        and names exactly the present leaf SPTE of its gfn, in a live shadow page."""
        sptes = self.leaf_entries_now()
        for gfn in _gfns(self.npages):
            head = self.rmap[gfn]
            present = S.is_shadow_present_pte(int(sptes[gfn]))
            if head & KVM_RMAP_LOCKED:
                return f"gfn {gfn}: rmap still locked ({head:#x})"
            if not head:
                if present:
                    return f"gfn {gfn}: present SPTE missing from its rmap"
                continue
            sp, li = self.sptep_deref(head)
            ri, want = self.split(gfn)
            if sp.freed:
                return f"gfn {gfn}: rmap names SPTE {li} of freed {sp.name}"
            e = self.root[ri]
            if (li != want or not S.is_shadow_present_pte(e) or self.child(e) is not sp
                    or not present):
                return f"gfn {gfn}: rmap names {sp.name}[{li}], not its present SPTE"
        return None

    def leaf_view(self) -> tuple[Any, Any, Any, Any]:
        """Per gfn: (raw leaf entries, shadow-present, pfn, dirty) as numpy arrays."""
        return spte_leaf_view(self.leaf_entries_now())

    # -- hardware ---------------------------------------------------------------------
    def hw_walk(self, vcpu: "Vcpu", gfn: int, write: bool, root: int | None = None,
                leaf: int | None = None) -> Gen:
        """The CPU's EPT walk on a TLB miss (``ept.ept_walk``; ``root``, ``leaf``: the
        entries its loads already found, as ``X86TdpMmu.hw_walk``)."""
        return (yield from ept_walk(self, gfn, write, root, leaf))

    # -- vCPU fault path (mmu_lock held for write) ---------------------------------------
    def kvm_mmu_page_fault(self, vcpu: "Vcpu", gfn: int, write: bool,
                           mmu_seq: int | None = None, pte: int | None = None,
                           fast: bool = True) -> Gen:
        """``kvm_mmu_page_fault`` -> ``FNAME(page_fault)``: resolve the pfn, then, under
        ``mmu_lock`` for **write**, check the invalidation sequence and map. (No fast
        page fault: with A/D bits a non-present fault always takes the slow path.)
        ``mmu_seq``, ``pte``: as ``X86TdpMmu.kvm_mmu_page_fault``."""
        kvm = self.kvm
        mmu_seq, pfn = yield from kvm_faultin_pfn(kvm, gfn, write, mmu_seq, pte)
        yield write_lock(kvm.mmu_lock, cost="mmu_lock_write")
        if (yield from is_page_fault_stale(kvm, mmu_seq)):
            ret = RET_PF_RETRY
        else:
            ret = yield from self.fetch(kvm, gfn, pfn, write)
        yield write_unlock(kvm.mmu_lock, cost="mmu_lock_write_release")
        if ret == RET_PF_RETRY:
            yield from kvm_mmu_invalidate_wait(kvm)
        return ret

    def fetch(self, kvm: "Kvm", gfn: int, pfn: int, write: bool) -> Gen:
        """``FNAME(fetch)``/``direct_map`` + ``mmu_set_spte``: link a leaf shadow page if
        needed, write the SPTE (``mmu_spte_set``: the old one is not present, so a plain
        write), then add it to the gfn's rmap (``rmap_add``)."""
        self.sys.m.lockdep_assert_held(kvm.mmu_lock, write=True)
        ri, li = self.split(gfn)
        e = yield load(self.root, ri, cost="spte_read")
        if not S.is_shadow_present_pte(e):
            # kvm_mmu_get_child_sp (from the memory cache topped up before the lock)
            sp = yield alloc(f"sp{ri}", self.leaf_entries, tag="spt", cost="sp_alloc")
            e = S.make_nonleaf_spte(sp.addr, self.ad)
            yield store(self.root, ri, e, cost="spte_write")  # link_shadow_page
        sp = self.child(e)
        old = yield load(sp, li, cost="spte_read")
        if S.is_shadow_present_pte(old):
            if S.hw_present(old) and (not write or old & S.VMX_EPT_WRITABLE):
                return RET_PF_SPURIOUS
            BUG_ON(True, f"shadow fault on present, unusable SPTE {old:#x} (not modelled)")
        new = S.make_spte(pfn, writable=True, ad_enabled=self.ad)
        if write:
            new |= S.shadow_dirty_mask
        yield store(sp, li, new, cost="spte_write")
        self.ghost_install(gfn, pfn, dirty=write)
        yield from self.pte_list_add(kvm, gfn, self.sptep(sp, li))
        return RET_PF_FIXED

    # -- zapping (mmu_lock held for write) ------------------------------------------
    def kvm_unmap_gfn_range(self, kvm: "Kvm", range: "KvmGfnRange") -> Gen:
        """``kvm_unmap_gfn_range`` -> ``kvm_zap_rmap`` -> ``kvm_zap_all_rmap_sptes``: lock
        each rmap, clear its SPTE (``mmu_spte_clear_track_bits``: an xchg, so a dirty bit
        the CPU sets meanwhile is not lost), and reset the head to empty on unlock.
        Returns whether the caller must flush TLBs."""
        self.sys.m.lockdep_assert_held(kvm.mmu_lock, write=True)
        flush = False
        for gfn in _gfns(range.start, min(range.end, self.npages)):
            val = yield from self.kvm_rmap_lock(kvm, gfn)
            if not val:
                continue
            sp, li = self.sptep_deref(val)
            old = yield xchg(sp, li, 0, cost="spte_zap")
            self.ghost_zap(gfn, S.is_accessed_spte(old))
            yield from self.kvm_rmap_unlock(kvm, gfn, 0)
            flush = True
        return flush

    def zap_leaf_table(self, kvm: "Kvm", idx: int) -> Gen:
        """Zap and free the leaf shadow page ``idx`` (``kvm_mmu_prepare_zap_page`` +
        ``kvm_mmu_commit_zap_page``), ``mmu_lock`` held for write. In kernel order:

        1. ``kvm_mmu_page_unlink_children``: for each present SPTE, ``drop_spte``: clear
           it (xchg) and remove it from its rmap (``pte_list_remove``, under the rmap bit
           lock in 6.15: this waits for any lockless ager holding that rmap);
        2. ``kvm_mmu_unlink_parents``: clear the parent entry, so no new walk reaches it;
        3. ``kvm_mmu_commit_zap_page``: ``kvm_flush_remote_tlbs`` (waits until no vCPU is
           mid-walk, so no hardware walk still holds a pointer into the page), then
           ``kvm_mmu_free_shadow_page``: ``free_page(sp->spt)`` at once, no grace period.

        Freeing without RCU is safe only because nothing can reach the page any more:
        the parent entry is gone, the TLB flush has drained hardware walkers, and every
        SPTE left its rmap (so a lockless ager either holds the rmap lock, which step 1
        waited for, or finds the rmap empty). Skipping the bit lock in the ager
        (``rmap-lockless-no-bitlock``) breaks the last point: use-after-free.

        The TLB flush is done here, before the free, as the kernel must; so this returns
        False ("nothing left for the caller to flush") even when a page was zapped,
        sparing the caller a redundant second flush."""
        m = self.sys.m
        m.lockdep_assert_held(kvm.mmu_lock, write=True)
        e = yield load(self.root, idx, cost="spte_read")
        if not S.is_shadow_present_pte(e):
            return False
        sp = self.child(e)
        base = self.gfn_of(idx, 0)
        n = max(0, min(self.leaf_entries, self.npages - base))
        vals = yield vload(sp, 0, max(n, 1), cost="spte_read")
        for li in range(n):
            if not S.is_shadow_present_pte(int(vals[li])):
                continue
            # drop_spte: mmu_spte_clear_track_bits, then rmap_remove
            old = yield xchg(sp, li, 0, cost="spte_zap")
            gfn = base + li
            self.ghost_zap(gfn, S.is_accessed_spte(old))
            if S.is_shadow_present_pte(old):
                yield from self.pte_list_remove(kvm, gfn, self.sptep(sp, li))
        yield store(self.root, idx, 0, cost="spte_write")  # drop_parent_pte
        self.sys.count("tables_zapped")
        yield from kvm_flush_remote_tlbs(kvm)  # kvm_mmu_commit_zap_page
        yield free(sp, cost="sp_free")  # kvm_mmu_free_shadow_page: no RCU
        return False

    # -- aging ------------------------------------------------------------------------
    def age_gfn_range(self, kvm: "Kvm", range: "KvmGfnRange", test_only: bool,
                      should_clear: Any = None) -> Gen:
        """``kvm_rmap_age_gfn_range`` (6.15) / ``kvm_handle_gfn_range(kvm_age_rmap or
        kvm_test_age_rmap)`` (before): test (and unless ``test_only`` clear) the A bit of
        the SPTE in each gfn's rmap. Returns whether any was young.

        Lockless (``range.lockless``): each non-empty rmap is held with the read-only
        bit lock across the SPTE read and clear. Locked: ``mmu_lock`` is held for write;
        in 6.15 the read-only bit lock is still taken (the same function serves both).
        ``should_clear(gfn)``, if given, is called for every young page and decides
        whether to clear it; a test then visits every page."""
        sys = self.sys
        if not range.lockless:
            sys.m.lockdep_assert_held(kvm.mmu_lock, write=True)
        bitlock = self.rmap_bitlock
        if range.lockless and sys.bug("rmap-lockless-no-bitlock"):
            bitlock = False  # the seeded bug: "the lockless walk need not lock the rmap"
        young = False
        for gfn in _gfns(range.start, min(range.end, self.npages)):
            if bitlock:
                val = yield from self.kvm_rmap_lock_readonly(gfn)
            else:
                val = (yield load(self.rmap, gfn, cost="rmap_read")) & ~KVM_RMAP_LOCKED
            if not val:
                continue
            sp, li = self.sptep_deref(val)
            spte = yield load(sp, li, cost="spte_read")  # mmu_spte_get_lockless
            clear = False
            if S.is_accessed_spte(spte):
                young = True
                sys.ghost_seen_young(gfn)
                if should_clear is not None:
                    clear = bool(should_clear(gfn)) and not test_only
                elif test_only:
                    if bitlock:
                        yield from self.kvm_rmap_unlock_readonly(gfn, val)
                    return True  # the first young SPTE answers
                else:
                    clear = True
            if clear:
                # A/D enabled: clear_bit(ffs(shadow_accessed_mask) - 1, sptep)
                old = yield fetch_and(sp, li, ~S.shadow_accessed_mask & S.MASK,
                                      cost="spte_clear_young")
                if old & S.shadow_accessed_mask:
                    sys.ghost_cleared(gfn)
            if bitlock:
                yield from self.kvm_rmap_unlock_readonly(gfn, val)
        return young

    def lockless_fast_path_ok(self) -> bool:
        """yu-v2's ``kvm_arch_test_clear_young`` at run time: the 2023 series never
        walked the shadow MMU locklessly (there was no rmap lock), so always False."""
        return False
