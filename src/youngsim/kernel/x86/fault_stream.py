"""Fault streams on the x86 TDP MMU: a vCPU's first touches of consecutive pages of one
leaf table as the operations the per-page code yields, in one ``lock_program``.

A guest access that misses the TLB and finds no SPTE runs, page after page, the same
operations (``hw.vcpu.guest_access`` -> ``kvm_mmu_page_fault`` -> ``kvm_faultin_pfn``
and, under ``mmu_lock`` for read, ``is_page_fault_stale`` -> ``kvm_tdp_mmu_map``)::

    pre     wait for requests, enter (insn=1), TLB lookup, EPT walk (root, leaf: not
            present), VM exit (insn=0), [A/D off: fast_page_fault's RCU section and
            reads], mmu_invalidate_seq, the primary PTE (present: its pfn)
    locked  read_lock(mmu_lock); mmu_invalidate_in_progress, mmu_invalidate_seq;
            rcu_read_lock; root entry; leaf entry; cmpxchg the new SPTE; rcu_read_unlock;
            read_unlock
    post    wait for requests, re-enter (insn=1), EPT walk (finds it), TLB fill,
            retire (insn=0)

So the stream is one ``lock_program`` whose cycle ``i`` is page ``i``'s locked part,
its post part and page ``i + 1``'s pre part: the same operations, with the same
labels, costs and words, in the same order; only the model code between them (Python
deciding what comes next) is not run. What that code would decide is decided once, when
the stream is planned (``_plan``: the TLB slots miss, the leaf entries are empty, the
primary PTEs are present, no invalidation is in progress), and every load whose value
the per-page code branches on is a *check* of the value planned: the EPT walk's
entries, ``mmu_invalidate_seq`` and ``_in_progress``, the primary PTE's pfn, the entry
the cmpxchg replaces. While the checks hold, the stream is the per-page code step for
step, run alone or not. The notes record what the per-page code records between its
operations (the fault's start, the ghost state, the fault latency sample) at the same
steps. The TLB lookup, whose value only this vCPU can change (a miss stays a miss), is a
plain load.

At a failed check the run ends right after it (under ``mmu_lock``, still holding it)
and the page's access goes on in the per-page code from what the check found
(``guest_access(resume=..., walk=..., fault=...)``, ``_map(root=, leaf=)``,
``kvm_faultin_pfn(mmu_seq=, pte=)``): a stale fault releases the lock, waits and
re-enters; a walk goes on from the entry it found; a fault from the sequence count or
primary PTE it read; a map from the root or leaf entry it read. So a race (an aging
thread clearing an accessed bit between a fault and its walk, another vCPU faulting
the same page, an invalidation) gives the per-page code's operations too. Two
operations of the per-page code are ``nop``s with their labels here: the
``rcu_read_lock``/``rcu_read_unlock`` nested inside ``mmu_lock``, whose RCU-sched read
section (a spinning lock held) already covers them, so no grace period can tell them
apart. With A/D bits off, ``fast_page_fault``'s reads are checks too, inside its RCU
read section; a hand-over there goes on in ``fast_page_fault(root=, leaf=)`` and the
slow path (``kvm_mmu_page_fault(fast=False)``). Left inexact: after a hand-over inside
``_map`` or ``fast_page_fault`` the profile's stacks lack the frames above it.

Not streamed (the per-page code runs): the first fault of a leaf table (it allocates
and links it), pages whose TLB slot hits, entries that are present, a primary PTE that
is not present (the fault would fault the page in on the primary MMU), an invalidation
in progress, a seeded bug (the checker's mutants), runs shorter than ``MIN_PAGES``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Generator

import numpy as np

from ...sim import (Op, nop, rcu_read_lock, rcu_read_unlock, read_unlock, store,
                    wait_until)
from ...sim.profile import TRANSPARENT
from ...sim.ops import each_cas, each_load, each_store, lock_program
from ..hw.vcpu import ENTER, FAULT, TLB_TAG_SHIFT, TLB_VALID, TLB_WRITE, WALK, \
    guest_access
from .tdp_mmu import RET_PF_RETRY
from ..kvm.kvm_main import IN_PROGRESS, SEQ, gfn_to_hva_memslot, kvm_mmu_invalidate_wait
from ..mm.mm import PTE_PFN_SHIFT, PTRS_PER_PTE, _PAGE_PRESENT
from . import spte as S

if TYPE_CHECKING:
    from ..hw.vcpu import Vcpu
    from .mmu import X86TdpMmu

Gen = Generator[Op, Any, Any]

#: a stream of fewer pages is left to the per-page code (one page gains nothing)
MIN_PAGES = 2
_ALL = (1 << 64) - 1
#: what the per-page code reads of a primary PTE: present, and the pfn
_PTE_MASK = (_ALL & ~((1 << PTE_PFN_SHIFT) - 1)) | _PAGE_PRESENT

#: positions of the walk's root-entry load in the pre and post parts (its leaf-entry
#: load follows), of the last stale check and of the root-entry check in a cycle
#: (the acquire is 0)
_PRE_ROOT = 3
_PRE_FAST = 7  # A/D off: fast_page_fault's root-entry read (its RCU lock is 6)
_POST_ROOT = 2
_LOCKED_STALE = 2
_LOCKED_ROOT = 4

# profile frames below the stream's own, as the per-page code's stacks have them
_ACCESS = ("guest_access",)
_ENTER = _ACCESS + ("vcpu_enter",)
_WALK = _ACCESS + ("hw_walk", "hw_walk", "ept_walk")
_FAULT = _ACCESS + ("kvm_mmu_page_fault",)
_FAST = _FAULT + ("fast_page_fault",)
_SEQ = _FAULT + ("kvm_faultin_pfn", "mmu_invalidate_seq")
_PTE = _FAULT + ("kvm_faultin_pfn", "handle_mm_fault")
_STALE = _FAULT + ("is_page_fault_stale", "mmu_invalidate_retry")
_MAP = _FAULT + ("kvm_tdp_mmu_map",)
_MAP_ = _MAP + ("_map",)


class _Stream:
    """A planned stream: pages ``g0 .. g0 + n - 1``, with what the per-page code would
    find and write for each (arrays indexed by page)."""

    def __init__(self, arch: "X86TdpMmu", vcpu: "Vcpu", g0: int, n: int, write: bool,
                 e_root: int, leaf: Any, li0: int, slot0: int, pt: Any, pi0: int,
                 seq: int, ptes: np.ndarray) -> None:
        self.arch, self.vcpu, self.g0, self.n, self.write = arch, vcpu, g0, n, write
        self.sys = arch.sys
        self.e_root, self.leaf, self.li0, self.slot0 = e_root, leaf, li0, slot0
        self.pt, self.pi0, self.seq = pt, pi0, seq
        pfns = ptes >> np.uint64(PTE_PFN_SHIFT)
        # per page, as lists of ints: the executor reads one a step, and a list item is
        # several times cheaper than a numpy scalar
        self.pte_expect = (ptes & np.uint64(_PTE_MASK)).tolist()
        self.old = [0] * n
        new, self.dirty = arch.tdp.leaf_entries_for(pfns, write, young=True)
        self.new = new.tolist()
        gfns = np.arange(g0, g0 + n, dtype=np.uint64)
        flags = TLB_VALID | (TLB_WRITE if write else 0)
        self.tlb = ((gfns << np.uint64(TLB_TAG_SHIFT)) | np.uint64(flags)).tolist()
        self.pfns = pfns.tolist()
        #: per page: virtual time of its EPT violation (set by a note), -1 before
        self.fault_at = np.full(n, -1, dtype=np.int64)

    # -- the per-page operations, as templates for pages b, b + 1, ... ---------------------
    def pre(self, b: int) -> list[tuple[Any, tuple[str, ...], Callable[[int], None] | None]]:
        """Page ``b``'s operations up to the fault's ``read_lock``, with frames and
        notes (a note's argument is the page's offset from ``b``)."""
        vcpu, tdp, inv = self.vcpu, self.arch.tdp, self.arch.kvm.mmu_invalidate
        ops: list[tuple[Any, tuple[str, ...], Callable[[int], None] | None]] = [
            (wait_until(vcpu.req, 0, _ALL, 0, cost="vcpu_requests"), _ENTER, None),
            (store(vcpu.insn, 0, 1, cost="guest_insn"), _ENTER, None),
            (each_load(vcpu.tlb, self.slot0 + b, cost="tlb_lookup"), _ACCESS, None),
            (each_load(tdp.root, self._ri, stride=0, expect=self.e_root, cost="hw_walk"),
             _WALK, None),
            (each_load(self.leaf, self.li0 + b, expect=self.old[b:], cost="hw_walk"),
             _WALK, lambda i: self._faulted(b + i)),
            (store(vcpu.insn, 0, 0, cost="vm_exit"), _ACCESS,
             lambda i: self.sys.count("vcpu_faults")),
        ]
        if not tdp.ad:  # fast_page_fault: can an access-tracked SPTE be restored?
            ops += [(rcu_read_lock(self.sys.rcu, cost="rcu_read_lock"), _FAST, None),
                    (each_load(tdp.root, self._ri, stride=0, expect=self.e_root,
                               cost="spte_read"), _FAST, None),
                    (each_load(self.leaf, self.li0 + b, expect=self.old[b:],
                               cost="spte_read"), _FAST, None),
                    (rcu_read_unlock(self.sys.rcu, cost="rcu_read_unlock"), _FAST, None)]
        ops += [
            (each_load(inv, SEQ, stride=0, expect=self.seq, cost="mmu_seq_read"), _SEQ,
             None),
            (each_load(self.pt, self.pi0 + b, expect=self.pte_expect[b:], mask=_PTE_MASK,
                       cost="pte_read"), _PTE, None),
        ]
        return ops

    def locked(self, b: int) -> list[tuple[Any, tuple[str, ...], Callable[[int], None] | None]]:
        """Page ``b``'s operations under ``mmu_lock`` (between its acquire and release)."""
        tdp, inv = self.arch.tdp, self.arch.kvm.mmu_invalidate
        return [
            (each_load(inv, IN_PROGRESS, stride=0, expect=0, cost="mmu_seq_read"), _STALE,
             None),
            (each_load(inv, SEQ, stride=0, expect=self.seq, cost="mmu_seq_read"), _STALE,
             None),
            (nop(cost="rcu_read_lock"), _MAP, None),
            (each_load(tdp.root, self._ri, stride=0, expect=self.e_root, cost="spte_read"),
             _MAP_, None),
            (each_load(self.leaf, self.li0 + b, expect=self.old[b:], cost="spte_read"),
             _MAP_, None),
            (each_cas(self.leaf, self.li0 + b, self.old[b:], self.new[b:],
                      cost="spte_cmpxchg"), _MAP_, lambda i: self._installed(b + i)),
            (nop(cost="rcu_read_unlock"), _MAP, None),
        ]

    def post(self, b: int) -> list[tuple[Any, tuple[str, ...], Callable[[int], None] | None]]:
        """Page ``b``'s operations after the fault's ``read_unlock``."""
        vcpu, tdp = self.vcpu, self.arch.tdp
        return [
            (wait_until(vcpu.req, 0, _ALL, 0, cost="vcpu_requests"), _ENTER, None),
            (store(vcpu.insn, 0, 1, cost="vm_entry"), _ENTER, None),
            (each_load(tdp.root, self._ri, stride=0, expect=self.e_root, cost="hw_walk"),
             _WALK, None),
            (each_load(self.leaf, self.li0 + b, expect=self.new[b:], cost="hw_walk"),
             _WALK, lambda i: self._walked(b + i)),
            (each_store(vcpu.tlb, self.slot0 + b, self.tlb[b:], cost="tlb_fill"), _ACCESS,
             lambda i: self._accessed(b + i)),
            (store(vcpu.insn, 0, 0, cost="guest_insn_end"), _ACCESS, None),
        ]

    @property
    def _ri(self) -> int:
        return self.arch.tdp.split(self.g0)[0]

    # -- notes: what the per-page code records between these operations -----------------
    def _faulted(self, p: int) -> None:
        self.fault_at[p] = self.sys.m.now

    def _installed(self, p: int) -> None:
        self.arch.tdp.ghost_install(self.g0 + p, self.pfns[p], dirty=self.dirty)

    def _walked(self, p: int) -> None:
        self.sys.sample("fault_latency_ns", self.sys.m.now - int(self.fault_at[p]))

    def _accessed(self, p: int) -> None:
        self.sys.ghost.accessed[self.g0 + p] = True

    # -- running it -----------------------------------------------------------------------
    def run(self) -> Gen:
        """Page 0's pre part, then the cycles; returns the pages accessed."""
        pre0 = self.pre(0)
        self.npre = len(pre0)
        # one cycle without a lock: page 0's pre part
        _, j, v = yield self._program(None, 1, [], pre0)
        if j >= 0:
            yield from self._resume_pre(0, j, v)
            return 1
        n = self.n
        # cycle i: page i's locked and post parts, page i + 1's pre part; the last page
        # has no next page
        for b, cycles, nxt in ((0, n - 1, True), (n - 1, 1, False)):
            locked, post = self.locked(b), self.post(b)
            gap = post + (self.pre(b + 1) if nxt else [])
            i, j, v = yield self._program(self.arch.kvm.mmu_lock, cycles, locked, gap)
            if j < 0:
                continue
            rel = len(locked) + 1
            p = b + i
            if j < rel:  # a check under mmu_lock (still held): the fault goes on
                yield from self._resume_locked(p, j, v)
                return p + 1
            if j < rel + 1 + len(post):  # the walk after the fault found another entry
                yield from self._resume_walk(p, j - rel - 1 - _POST_ROOT, v)
                return p + 1
            yield from self._resume_pre(p + 1, j - rel - 1 - len(post), v)
            return p + 2
        return n

    @staticmethod
    def _program(lock: Any, n: int, locked: list[Any], gap: list[Any]) -> Op:
        """The ``lock_program`` of ``(operation, frames, note)`` triples: ``mmu_lock``
        taken for read around ``locked`` (its acquire and release in
        ``kvm_mmu_page_fault``'s frames), or with ``lock`` None the gap alone."""
        parts = gap if lock is None else (
            [(None, _FAULT, None)] + locked + [(None, _FAULT, None)] + gap)
        return lock_program(
            lock, n, locked=[x for x, _, _ in locked], gap=[x for x, _, _ in gap],
            read=True, acquire="mmu_lock_read", release="mmu_lock_read_release",
            notes={j: f for j, (_, _, f) in enumerate(parts) if f is not None},
            frames={j: fr for j, (_, fr, _) in enumerate(parts)})

    def _resume_pre(self, p: int, pos: int, v: int) -> Gen:
        """Page ``p``'s check at position ``pos`` of its pre part found ``v``: the
        per-page code goes on from there. In the walk: the walk, from what it found.
        After the VM exit: the fault handler, with the ``mmu_invalidate_seq`` (or the
        primary PTE) it read."""
        if pos < _PRE_ROOT + 2:
            yield from self._resume_walk(p, pos - _PRE_ROOT, v)
            return
        g = self.g0 + p
        if not self.arch.tdp.ad and pos < _PRE_FAST + 2:  # fast_page_fault's reads
            fault = self._fast_fault(g, v if pos == _PRE_FAST else self.e_root,
                                     None if pos == _PRE_FAST else v)
        elif pos == self.npre - 2:  # mmu_invalidate_seq changed since the plan
            fault = self.arch.kvm_mmu_page_fault(self.vcpu, g, self.write, mmu_seq=v)
        else:  # the primary PTE changed
            fault = self.arch.kvm_mmu_page_fault(self.vcpu, g, self.write,
                                                 mmu_seq=self.seq, pte=v)
        yield from guest_access(self.sys, self.vcpu, g, self.write, resume=FAULT,
                                fault_at=int(self.fault_at[p]), fault=fault)

    def _fast_fault(self, g: int, root: int, leaf: int | None) -> Gen:
        """``kvm_mmu_page_fault`` going on inside ``fast_page_fault`` from the entries
        its reads found: fixed there, or on to the slow path."""
        if (yield from self.arch.tdp.fast_page_fault(g, self.write, root, leaf)):
            return 0
        return (yield from self.arch.kvm_mmu_page_fault(self.vcpu, g, self.write,
                                                        fast=False))

    def _resume_locked(self, p: int, j: int, v: int) -> Gen:
        """Page ``p``'s check at position ``j`` under ``mmu_lock`` (held) found ``v``:
        the fault goes on as the per-page code's would. ``mmu_invalidate_in_progress``
        or ``_seq``: the fault is stale (``RET_PF_RETRY``); the root or leaf entry:
        ``kvm_tdp_mmu_map`` goes on from it; the cmpxchg lost: ``RET_PF_RETRY``. Then
        its ``rcu_read_unlock`` (a nop, as its lock was), the unlock, the wait for a
        retry, and the re-entry."""
        kvm, tdp, g = self.arch.kvm, self.arch.tdp, self.g0 + p
        ret = RET_PF_RETRY
        if j > _LOCKED_STALE:
            if j == _LOCKED_ROOT:
                ret = yield from tdp._map(g, self.pfns[p], self.write, root=v)
            elif j == _LOCKED_ROOT + 1:
                ret = yield from tdp._map(g, self.pfns[p], self.write, root=self.e_root,
                                          leaf=v)
            yield nop(cost="rcu_read_unlock")
        yield read_unlock(kvm.mmu_lock, cost="mmu_lock_read_release")
        if ret == RET_PF_RETRY:
            yield from kvm_mmu_invalidate_wait(kvm)
        yield from guest_access(self.sys, self.vcpu, g, self.write, resume=ENTER,
                                fault_at=int(self.fault_at[p]))

    def _resume_walk(self, p: int, k: int, v: int) -> Gen:
        """The EPT walk of page ``p`` found ``v`` at its root entry (``k`` = 0) or its
        leaf entry (1), not what the stream planned: the per-page walk goes on from
        there, and the access with it."""
        g = self.g0 + p
        walk = (self.arch.hw_walk(self.vcpu, g, self.write, root=v) if k == 0 else
                self.arch.hw_walk(self.vcpu, g, self.write, root=self.e_root, leaf=v))
        yield from guest_access(self.sys, self.vcpu, self.g0 + p, self.write,
                                resume=WALK, fault_at=int(self.fault_at[p]), walk=walk)


def fault_stream(arch: "X86TdpMmu", vcpu: "Vcpu", gfn: int, hi: int, write: bool) -> Gen:
    """``KvmArchMmu.fault_stream`` for the TDP MMU: 0 if no stream applies at ``gfn``."""
    st = _plan(arch, vcpu, gfn, hi, write)
    if st is None:
        return 0
    return (yield from st.run())


def _plan(arch: "X86TdpMmu", vcpu: "Vcpu", g0: int, hi: int, write: bool
          ) -> _Stream | None:
    """Read the state directly (between steps) and say what the per-page code would
    find for the pages from ``g0``: as many as it would fault on the same leaf table,
    through the same primary page table, into consecutive TLB slots."""
    sys, kvm, tdp = arch.sys, arch.kvm, arch.tdp
    if sys.mutant or not sys.fault_streams:
        return None
    ri, li0 = tdp.split(g0)
    e_root = int(tdp.root.data[ri])
    if not S.is_shadow_present_pte(e_root) or S.is_frozen_spte(e_root):
        return None  # the first fault of a leaf table allocates it: per page
    inv = kvm.mmu_invalidate.data
    if int(inv[IN_PROGRESS]):
        return None
    slot = kvm.gfn_to_memslot(g0)
    if slot is None:
        return None
    tlb = vcpu.tlb.data
    ntlb = len(tlb)
    slot0 = g0 % ntlb
    pt, pi0 = kvm.mm.pte_slot(gfn_to_hva_memslot(g0, slot))
    n = min(hi - g0, tdp.leaf_entries - li0, ntlb - slot0, PTRS_PER_PTE - pi0,
            slot.base_gfn + slot.npages - g0)
    if n < MIN_PAGES:
        return None
    leaf = tdp.child(e_root)
    if int(leaf.data[li0]) != 0 or not int(pt.data[pi0]) & _PAGE_PRESENT:
        return None  # the common case where no stream applies, without numpy
    ptes = pt.data[pi0:pi0 + n]
    gfns = np.arange(g0, g0 + n, dtype=np.uint64)
    ent = tlb[slot0:slot0 + n]
    hit = ((ent & np.uint64(TLB_VALID)) != 0) & ((ent >> np.uint64(TLB_TAG_SHIFT)) == gfns)
    if write:
        hit &= (ent & np.uint64(TLB_WRITE)) != 0
    ok = ~hit & (leaf.data[li0:li0 + n] == 0) & ((ptes & np.uint64(_PAGE_PRESENT)) != 0)
    bad = np.flatnonzero(~ok)
    if len(bad):
        n = int(bad[0])
    if n < MIN_PAGES:
        return None
    return _Stream(arch, vcpu, g0, n, write, e_root, leaf, li0, slot0, pt, pi0,
                   int(inv[SEQ]), ptes[:n].copy())


# a stream is a way of running the per-page code: its own functions stay out of the
# profile's stacks (the operations carry the per-page code's frames)
TRANSPARENT.update(f.__code__ for f in (fault_stream, _Stream.run, _Stream._resume_pre,
                                        _Stream._resume_walk, _Stream._resume_locked,
                                        _Stream._fast_fault))
