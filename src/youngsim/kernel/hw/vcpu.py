"""The guest's side: a vCPU issuing memory accesses through its TLB.

A TLB hit sets nothing. A miss walks the secondary tables (the arch's ``hw_walk``),
which sets the accessed (and, on a write, dirty) bit atomically, then caches the
translation. An EPT/stage-2 violation exits to KVM's fault handler and the access is
retried. Aging never flushes the TLB unless the design says so, so a page whose SPTE was
cleared while cached can be used without setting A again: the accepted "false old".

The TLB is bounded, as real ones are: ``TLB_ENTRIES`` direct-mapped slots (gfn ``g`` in
slot ``g % entries``, tagged with ``g``), so a vCPU sweeping more pages than that misses
again on its next sweep and sets the accessed bit again, while a working set that fits
stays cached. Direct mapping is exact for the scenarios' sequential sweeps (no conflict
misses within a sweep that fits) and simpler than the hardware's set associativity. A
guest with fewer pages than entries gets one slot per page.

``insn`` is 1 while the vCPU is inside an instruction; ``req`` counts pending TLB-flush
requests (``KVM_REQ_TLB_FLUSH``). A remote flush raises the request, waits until the vCPU
is between instructions (the IPI is taken at an instruction boundary), drops the TLB
and clears the request; a vCPU does not start an instruction while a request is pending
(it services requests before entering the guest). So a walk that read an entry before a
zap cannot refill the TLB after the flush, and no instruction started after the flush
began can use a translation it removed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Generator

from ...sim import Op, Violation, load, store, wait_until

if TYPE_CHECKING:
    from ..kvm.kvm_main import Kvm
    from ..system import System

Gen = Generator[Op, Any, Any]

TLB_VALID = 1 << 0
TLB_WRITE = 1 << 1  # the cached translation already has D set: writes need no walk
TLB_TAG_SHIFT = 2  # a slot holds (gfn << TLB_TAG_SHIFT) | flags

#: translations a vCPU's TLB holds: Intel's second-level TLB has 1536 entries for 4 KiB
#: pages from Skylake on (Intel 64 and IA-32 Architectures Optimization Reference
#: Manual, Skylake microarchitecture, "STLB: 1536 entries, 12 ways"); Ice Lake has 2048,
#: Arm Neoverse N1's L2 TLB 1280: the order of magnitude is what matters here
TLB_ENTRIES = 1536


def tlb_entry(gfn: int, write: bool) -> int:
    return (gfn << TLB_TAG_SHIFT) | TLB_VALID | (TLB_WRITE if write else 0)


def tlb_hit(entry: int, gfn: int, write: bool) -> bool:
    """Does a slot's entry translate ``gfn`` (for a write: with D already set)?"""
    return bool(entry & TLB_VALID) and entry >> TLB_TAG_SHIFT == gfn and (
        not write or bool(entry & TLB_WRITE))


class Vcpu:
    def __init__(self, sys: "System", kvm: "Kvm", idx: int, npages: int,
                 tlb_entries: int = TLB_ENTRIES) -> None:
        self.sys = sys
        self.kvm = kvm
        self.idx = idx
        self.tlb = sys.m.new_words(f"vcpu{idx}.tlb", max(1, min(npages, tlb_entries)))
        self.insn = sys.m.new_words(f"vcpu{idx}.insn", 1)
        self.req = sys.m.new_words(f"vcpu{idx}.req", 1)
        kvm.vcpus.append(self)

    def tlb_slot(self, gfn: int) -> int:
        """The TLB slot that may cache ``gfn`` (direct-mapped)."""
        return gfn % len(self.tlb)


#: an access that faults more often than this is reported as a livelock (a ``Violation``)
#: instead of running forever: a fault retries only when another thread changed the
#: entry or invalidated the range meanwhile, a handful of times in any run seen; an
#: aging thread whose passes are shorter than a fault's round trip (``-p`` on a few
#: pages with A/D bits off: each pass access-tracks the page again before the vCPU's
#: walk) undoes every fault
MAX_FAULTS_PER_ACCESS = 1000

#: where ``guest_access`` starts: a new access; the walk after a fault; the fault
#: handler after the VM exit; the re-entry after the fault handler (a stream that
#: stopped in the middle of a page's access hands it over at one of these)
START, WALK, FAULT, ENTER = 0, 1, 2, 3


def guest_access(sys: "System", vcpu: Vcpu, gfn: int, write: bool, resume: int = START,
                 fault_at: int = -1, walk: Gen | None = None,
                 fault: Gen | None = None) -> Gen:
    """One guest load or store to page ``gfn`` (from ``resume``, with the fault that
    started it at virtual time ``fault_at`` if there was one; ``walk`` and ``fault``
    instead of the arch's ``hw_walk`` and ``kvm_mmu_page_fault`` the first time, when
    a stream handed over in one of them)."""
    arch = vcpu.kvm.arch
    slot = vcpu.tlb_slot(gfn)
    hit = False
    if resume == START:
        yield from vcpu_enter(vcpu, "guest_insn")
        t = yield load(vcpu.tlb, slot, cost="tlb_lookup")
        hit = tlb_hit(t, gfn, write)
    if hit:
        sys.count("tlb_hits")
    else:
        at = resume
        faults = 1 if fault_at >= 0 else 0  # a stream hands over after its first fault
        while True:
            if at <= WALK:
                if walk is None:
                    walk = arch.hw_walk(vcpu, gfn, write)
                ok = yield from walk
                walk = None
                if ok:
                    break
                if fault_at < 0:
                    fault_at = sys.m.now  # the EPT violation / stage-2 abort
                yield store(vcpu.insn, 0, 0, cost="vm_exit")  # the access did not retire
                sys.count("vcpu_faults")
                faults += 1
                if faults > MAX_FAULTS_PER_ACCESS:
                    raise Violation(
                        "livelock", f"vcpu{vcpu.idx}: one access to gfn {gfn} faulted "
                        f"{faults} times: another thread undoes each fault before the "
                        "vCPU retries (an aging pass shorter than a fault's round trip?)")
                at = FAULT
            if at == FAULT:
                if fault is None:
                    fault = arch.kvm_mmu_page_fault(vcpu, gfn, write)
                yield from fault
                fault = None
            yield from vcpu_enter(vcpu, "vm_entry")
            at = WALK
        if fault_at >= 0:  # virtual time from the fault to the translation that worked
            sys.sample("fault_latency_ns", sys.m.now - fault_at)
        yield store(vcpu.tlb, slot, tlb_entry(gfn, write), cost="tlb_fill")
    sys.ghost.accessed[gfn] = True
    yield store(vcpu.insn, 0, 0, cost="guest_insn_end")


def guest_access_range(sys: "System", vcpu: Vcpu, lo: int, hi: int, write: bool) -> Gen:
    """Guest accesses to pages ``[lo, hi)`` in order: as many as the arch can at a time
    as a fault stream (``KvmArchMmu.fault_stream``: the same operations, without the
    model code between them), the others one ``guest_access`` each."""
    arch = vcpu.kvm.arch
    g = lo
    while g < hi:
        n = yield from arch.fault_stream(vcpu, g, hi, write)
        if n:
            g += n
        else:
            yield from guest_access(sys, vcpu, g, write)
            g += 1


def vcpu_enter(vcpu: Vcpu, cost: str) -> Gen:
    """Start an instruction in guest mode, after any pending TLB-flush request."""
    yield wait_until(vcpu.req, 0, (1 << 64) - 1, 0, cost="vcpu_requests")
    yield store(vcpu.insn, 0, 1, cost=cost)
