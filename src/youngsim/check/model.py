"""Build a modelled host (mm, KVM, secondary MMU, vCPUs) and its safety invariants.

Used by the checker's scenarios here and, later, by the timed driver: the same kernel
objects, built the same way, at different sizes.

The invariants are section 4 of the kernel-semantics spec, as predicates over the
machine's state evaluated after every step:

- ``spte-coherence``: a shadow-present leaf SPTE maps the pfn the primary PTE maps (the
  mmu_notifier contract; a fault that missed an invalidation breaks it);
- ``spte-lost-update``: a leaf SPTE is present exactly when the last legitimate writer
  (fault, zap) left it present, with that pfn: a clear that writes back a stale value
  resurrects a zapped SPTE or reverts a new pfn;
- ``spte-dirty-lost``: a D bit the hardware set stays set while the SPTE is present.

Use-after-free of page-table pages, lock discipline and sleeping in atomic context are
the substrate's own checks; the API contracts are checked at each call (designs/*).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..designs import DESIGNS, Design
from ..kernel.hw.vcpu import Vcpu
from ..kernel.kvm.kvm_main import Kvm, Memslot, gfn_to_hva_memslot
from ..kernel.mm.mm import MM, PTE_PFN_SHIFT, pte_pfn, pte_present
from ..kernel.system import PAGE_SIZE, System
from ..kernel.arm64.mmu import Arm64Stage2Mmu
from ..kernel.x86.mmu import X86TdpMmu
from ..kernel.x86.shadow_mmu import X86ShadowMmu
from ..sim import Machine

HVA_BASE = 0x7F0000000000

#: MMU variants modelled so far; the others are reported as not modelled, never faked.
MODELLED_MMUS = ("x86-tdp", "x86-tdp-noad", "x86-shadow", "arm64", "arm64-swaf")


class NotModelled(Exception):
    """A design or MMU variant the model does not cover yet."""


def make_arch(sys: System, kvm: Kvm, mmu: str, npages: int, chunk: int) -> Any:
    if mmu == "x86-tdp":
        return X86TdpMmu(sys, kvm, ad_enabled=True, npages=npages, chunk=chunk)
    if mmu == "x86-tdp-noad":
        return X86TdpMmu(sys, kvm, ad_enabled=False, npages=npages, chunk=chunk)
    if mmu == "x86-shadow":
        return X86ShadowMmu(sys, kvm, npages=npages, chunk=chunk)
    if mmu == "arm64":
        return Arm64Stage2Mmu(sys, kvm, hw_af=True, npages=npages, chunk=chunk)
    if mmu == "arm64-swaf":
        return Arm64Stage2Mmu(sys, kvm, hw_af=False, npages=npages, chunk=chunk)
    raise NotModelled(f"MMU variant {mmu!r} is not modelled yet")


def build_system(m: Machine, design: Design | str, mmu: str, npages: int, nvcpus: int,
                 nkvms: int = 1, mutant: str | None = None, chunk: int = 1,
                 prefault_primary: bool = True, slot_pages: int | None = None) -> System:
    """A host with one mm of ``npages`` pages, ``nkvms`` VMs each mapping all of it in
    memslots of ``slot_pages`` pages (default: one memslot), and ``nvcpus`` vCPUs per VM,
    with the invariants installed."""
    d = DESIGNS[design] if isinstance(design, str) else design
    reason = d.applies(mmu)
    if reason:
        raise NotModelled(f"{d.name} does not apply to {mmu}: {reason}")
    sys = System(m, d, mmu, npages, mutant=mutant)
    mm = MM(sys, HVA_BASE, npages, prefault=prefault_primary)
    sys.mm = mm
    sys.ghost.accessed[:] = prefault_primary  # the host's prefault touched them
    for k in range(nkvms):
        per = slot_pages or npages
        slots = [Memslot(g, min(per, npages - g), HVA_BASE + g * PAGE_SIZE, id=n)
                 for n, g in enumerate(range(0, npages, per))]
        kvm = Kvm(sys, mm, slots, name=f"kvm{k}" if nkvms > 1 else "kvm")
        kvm.arch = make_arch(sys, kvm, mmu, npages, chunk)
        for v in range(nvcpus):
            Vcpu(sys, kvm, v, npages)
        kvm.register(d.notifier_ops(kvm))
    install_invariants(sys)
    return sys


def prepopulate(sys: System, gfn: int, write: bool = False, young: bool = True) -> None:
    """Set-up: every VM maps ``gfn`` to the primary's pfn, as a past fault left it."""
    mm = sys.mm
    for kvm in sys.kvms:
        hva = gfn_to_hva_memslot(gfn, kvm.memslots[0])
        t, i = mm.pte_slot(hva)
        pte = t[i]
        assert pte_present(pte), "prepopulate needs the primary PTE present"
        kvm.arch.prepopulate(gfn, pte_pfn(pte), write, young)


def prepopulate_all(sys: System, write: bool = False, young: bool = True) -> None:
    """Set-up: ``prepopulate`` every gfn of every VM (vectorised where the MMU can:
    a guest of hundreds of millions of pages)."""
    step = 1 << 22  # pages per vector write (bounds the temporaries at large sizes)
    for kvm in sys.kvms:
        for slot in kvm.memslots:
            first = (slot.userspace_addr - sys.mm.start) // PAGE_SIZE
            for k in range(0, slot.npages, step):
                n = min(step, slot.npages - k)
                ptes = sys.mm.ptes(first + k, first + k + n)
                assert bool(np.all(ptes & np.uint64(1))), \
                    "prepopulate needs the primary PTEs present"
                kvm.arch.prepopulate_range(slot.base_gfn + k,
                                           ptes >> np.uint64(PTE_PFN_SHIFT), write, young)


def install_invariants(sys: System) -> None:
    """The SPTE invariants, vectorised over every page and re-checked only after a write
    to a page table (primary or secondary)."""
    m = sys.m
    watch = ("spt", "pte")

    def coherence(_: Machine) -> str | None:
        ptes = sys.mm.ptes()
        ppresent = (ptes & np.uint64(1)) != 0
        ppfn = ptes >> np.uint64(PTE_PFN_SHIFT)
        for kvm in sys.kvms:
            _, present, spfn, _ = kvm.arch.leaf_view()
            bad = np.flatnonzero(present & (~ppresent | (ppfn != spfn)))
            if len(bad):
                g = int(bad[0])
                if not ppresent[g]:
                    return (f"{kvm.name}: gfn {g} mapped by the secondary MMU (pfn "
                            f"{int(spfn[g]):#x}) but not by the primary")
                return (f"{kvm.name}: gfn {g} maps pfn {int(spfn[g]):#x} but the primary "
                        f"maps {int(ppfn[g]):#x}")
        return None

    def lost_update(_: Machine) -> str | None:
        for kvm in sys.kvms:
            arch = kvm.arch
            raw, present, pfn, _ = arch.leaf_view()
            want = arch.tables.installed_pfns()
            bad = np.flatnonzero(present & ((want < 0) | (pfn.astype(np.int64) != want)))
            if len(bad):
                g = int(bad[0])
                if want[g] < 0:
                    return f"{kvm.name}: gfn {g}: zapped SPTE resurrected as {int(raw[g]):#x}"
                return (f"{kvm.name}: gfn {g}: SPTE pfn reverted to {int(pfn[g]):#x}, "
                        f"installed {int(want[g]):#x}")
            lost = np.flatnonzero((want >= 0) & ~present)
            if len(lost):
                g = int(lost[0])
                return f"{kvm.name}: gfn {g}: installed SPTE lost (now {int(raw[g]):#x})"
        return None

    def dirty_kept(_: Machine) -> str | None:
        for kvm in sys.kvms:
            _, present, _, dirty = kvm.arch.leaf_view()
            bad = np.flatnonzero(kvm.arch.tables.ghost_dirty & present & ~dirty)
            if len(bad):
                return f"{kvm.name}: gfn {int(bad[0])}: the hardware-set dirty bit was lost"
        return None

    m.invariant("spte-coherence", coherence, watch=watch)
    m.invariant("spte-lost-update", lost_update, watch=watch)
    m.invariant("spte-dirty-lost", dirty_kept, watch=watch)
