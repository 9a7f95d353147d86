"""Small built-in scenarios for ``youngsim check --design D --mmu M``.

Each is a handful of pages, one or two vCPUs, one aging thread and at most one zapper:
small enough to explore, and together they exercise faults, zaps that free tables
through RCU, every aging caller, and the bitmaps of the batched designs.

=============  ==========================================================================
scenario       threads
=============  ==========================================================================
fault-age      a vCPU faults two pages in (write, read) while MGLRU's walk ages them
age-zap        a vCPU writes a mapped page while the walk ages and a zapper unmaps one
               page (invalidate_range_start/end) then zaps the leaf table (RCU free)
rmap           folio_referenced with look-around on one page while a vCPU reads a
               neighbour and a zapper zaps the leaf table
two-vms        two VMs subscribed to one mm; the walk ages pages young in both
bitmap         the walk alone over 4 pages: young, young but outside the reclaim scope,
               young, old (the batched designs' bitmap offsets and predicate)
fault-unmap    a vCPU faults a page in while it is unmapped (the invalidation retry)
age-wrprot     the walk ages a dirty page while KVM write-protects it under mmu_lock
               (TDP MMU only): a locked writer may clobber a lockless clear
=============  ==========================================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Generator

from ..kernel.hw.vcpu import guest_access
from ..kernel.kvm.kvm_main import kvm_flush_remote_tlbs
from ..kernel.mm.mmu_notifier import (mmu_notifier_invalidate_range_end,
                                      mmu_notifier_invalidate_range_start)
from ..kernel.mm.mm import pte_pfn
from ..kernel.mm.vmscan import folio_referenced, walk_pte_range
from ..kernel.system import PAGE_SIZE, System
from ..sim import Machine, Op, Program, write_lock, write_unlock, xchg
from .model import NotModelled, build_system, prepopulate

Gen = Generator[Op, Any, Any]


def vcpu_thread(sys: System, kvm_idx: int, vcpu_idx: int,
                accesses: list[tuple[int, bool]]) -> Gen:
    vcpu = sys.kvms[kvm_idx].vcpus[vcpu_idx]
    for gfn, write in accesses:
        yield from guest_access(sys, vcpu, gfn, write)


def mglru_walk(sys: System) -> Gen:
    """One ``walk_mm`` over the VMA (one leaf table here)."""
    yield from walk_pte_range(sys, sys.mm, sys.mm.start, sys.mm.end)


def rmap_ager(sys: System, pfn: int) -> Gen:
    """Reclaim's rmap path on one folio (``shrink_folio_list`` -> ``folio_referenced``)."""
    yield from folio_referenced(sys, sys.mm, pfn)


def unmapper(sys: System, gfn: int) -> Gen:
    """``try_to_unmap_one`` on one page: notify, clear the primary PTE, notify."""
    mm = sys.mm
    addr = mm.start + gfn * PAGE_SIZE
    yield from mmu_notifier_invalidate_range_start(mm, addr, addr + PAGE_SIZE)
    t, i = mm.pte_slot(addr)
    yield xchg(t, i, 0, cost="pte_clear")  # ptep_clear_flush
    yield from mmu_notifier_invalidate_range_end(mm, addr, addr + PAGE_SIZE)


def table_zapper(sys: System, kvm_idx: int = 0, ri: int = 0) -> Gen:
    """Zap and free a leaf table under mmu_lock for write (``kvm_tdp_mmu_zap_sp``
    recovering an NX huge page, or a memslot flush), then flush TLBs."""
    kvm = sys.kvms[kvm_idx]
    yield write_lock(kvm.mmu_lock, cost="mmu_lock_write")
    if (yield from kvm.arch.zap_leaf_table(kvm, ri)):
        yield from kvm_flush_remote_tlbs(kvm)
    yield write_unlock(kvm.mmu_lock, cost="mmu_lock_write_release")


def unmap_then_zap(sys: System, gfn: int) -> Gen:
    yield from unmapper(sys, gfn)
    yield from table_zapper(sys)


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    setup: Callable[[Machine, str, str, str | None], System]


def _fault_age(m: Machine, design: str, mmu: str, mutant: str | None) -> System:
    sys = build_system(m, design, mmu, npages=2, nvcpus=1, mutant=mutant)
    m.spawn(vcpu_thread, sys, 0, 0, [(0, True), (1, False)], name="vcpu0")
    m.spawn(mglru_walk, sys, name="mglru")
    return sys


def _age_zap(m: Machine, design: str, mmu: str, mutant: str | None) -> System:
    sys = build_system(m, design, mmu, npages=2, nvcpus=1, mutant=mutant)
    prepopulate(sys, 0, write=False, young=True)
    prepopulate(sys, 1, write=False, young=True)
    m.spawn(vcpu_thread, sys, 0, 0, [(0, True)], name="vcpu0")
    m.spawn(mglru_walk, sys, name="mglru")
    m.spawn(unmap_then_zap, sys, 1, name="zapper")
    return sys


def _rmap(m: Machine, design: str, mmu: str, mutant: str | None) -> System:
    sys = build_system(m, design, mmu, npages=3, nvcpus=1, mutant=mutant)
    for g in range(3):
        prepopulate(sys, g, write=False, young=g != 2)
    t, i = sys.mm.pte_slot(sys.mm.start)
    m.spawn(vcpu_thread, sys, 0, 0, [(1, False)], name="vcpu0")
    m.spawn(rmap_ager, sys, pte_pfn(t[i]), name="reclaim")
    m.spawn(table_zapper, sys, name="zapper")
    return sys


def _two_vms(m: Machine, design: str, mmu: str, mutant: str | None) -> System:
    sys = build_system(m, design, mmu, npages=2, nvcpus=1, nkvms=2, mutant=mutant)
    for g in range(2):
        prepopulate(sys, g, write=False, young=True)
    m.spawn(vcpu_thread, sys, 1, 0, [(1, True)], name="vm1.vcpu0")
    m.spawn(mglru_walk, sys, name="mglru")
    return sys


def _bitmap(m: Machine, design: str, mmu: str, mutant: str | None) -> System:
    sys = build_system(m, design, mmu, npages=4, nvcpus=1, mutant=mutant)
    for g in range(4):
        prepopulate(sys, g, write=False, young=g != 3)
    sys.mm.out_of_scope.add(sys.mm.start + 1 * PAGE_SIZE)
    m.spawn(mglru_walk, sys, name="mglru")
    return sys


def _fault_unmap(m: Machine, design: str, mmu: str, mutant: str | None) -> System:
    sys = build_system(m, design, mmu, npages=1, nvcpus=1, mutant=mutant)
    m.spawn(vcpu_thread, sys, 0, 0, [(0, False)], name="vcpu0")
    m.spawn(unmapper, sys, 0, name="unmapper")
    return sys


def write_protector(sys: System, gfn: int) -> Gen:
    """``kvm_mmu_slot_gfn_write_protect`` for write tracking, under mmu_lock for write."""
    kvm = sys.kvms[0]
    yield write_lock(kvm.mmu_lock, cost="mmu_lock_write")
    if (yield from kvm.arch.tdp.write_protect_gfn(kvm, gfn)):
        yield from kvm_flush_remote_tlbs(kvm)
    yield write_unlock(kvm.mmu_lock, cost="mmu_lock_write_release")


def _age_wrprot(m: Machine, design: str, mmu: str, mutant: str | None) -> System:
    if not mmu.startswith("x86-tdp"):
        raise NotModelled(f"write-protection is modelled for the TDP MMU only, not {mmu}")
    sys = build_system(m, design, mmu, npages=1, nvcpus=1, mutant=mutant)
    prepopulate(sys, 0, write=True, young=True)
    m.spawn(mglru_walk, sys, name="mglru")
    m.spawn(write_protector, sys, 0, name="wrprot")
    return sys


SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    Scenario("fault-age", "a vCPU faults pages in while MGLRU's walk ages them", _fault_age),
    Scenario("age-zap", "walk ages while a vCPU writes and a zapper unmaps and frees a table",
             _age_zap),
    Scenario("rmap", "folio_referenced + look-around against a vCPU and a table zap", _rmap),
    Scenario("two-vms", "two VMs on one mm: every subscriber is aged", _two_vms),
    Scenario("bitmap", "the walk over young, out-of-scope and old pages", _bitmap),
    Scenario("fault-unmap", "a fault races with an unmap of the same page", _fault_unmap),
    Scenario("age-wrprot", "aging races with write-protection (TDP MMU only)", _age_wrprot),
)}


def program(design: str, mmu: str, scenario: str, mutant: str | None = None,
            max_steps: int = 5000) -> Program:
    sc = SCENARIOS[scenario]
    key = f"model/{design}/{mmu}/{scenario}" + (f"/{mutant}" if mutant else "")

    def build(m: Machine) -> None:
        sc.setup(m, design, mmu, mutant)

    return Program(key, build, f"{design} on {mmu}: {sc.description}", max_steps=max_steps)
