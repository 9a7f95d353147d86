"""SPTE format and helpers (``arch/x86/kvm/mmu/spte.h``, ``spte.c``), for EPT.

Bit positions follow EPT as KVM uses it: R/W/X permission bits 0-2, the hardware
accessed and dirty bits 8 and 9 (``VMX_EPT_ACCESS_BIT``/``VMX_EPT_DIRTY_BIT``), KVM's
software ``SPTE_MMU_PRESENT_MASK`` bit 11, the pfn from bit 12, and, when A/D bits are
off, the R/X bits saved at ``SHADOW_ACC_TRACK_SAVED_BITS_SHIFT`` (54) while the SPTE is
access-tracked (non-present to hardware, still "shadow present" to KVM).

``SPTE_AD_ENABLED``: KVM records per SPTE whether A/D bits are in use (the
``SPTE_TDP_AD_MASK`` field, bits 52-53); we keep one bit for it.
"""

from __future__ import annotations

MASK = (1 << 64) - 1
PT_LEVEL_BITS = 9
PT_ENTRIES = 1 << PT_LEVEL_BITS  # 512 entries per table
PAGE_SHIFT = 12

VMX_EPT_READABLE = 1 << 0
VMX_EPT_WRITABLE = 1 << 1
VMX_EPT_EXECUTABLE = 1 << 2
VMX_EPT_RWX_MASK = VMX_EPT_READABLE | VMX_EPT_WRITABLE | VMX_EPT_EXECUTABLE
shadow_accessed_mask = 1 << 8  # VMX_EPT_ACCESS_BIT
shadow_dirty_mask = 1 << 9  # VMX_EPT_DIRTY_BIT
SPTE_MMU_PRESENT_MASK = 1 << 11
SPTE_PFN_SHIFT = 12
SPTE_PFN_MASK = ((1 << 40) - 1) << SPTE_PFN_SHIFT
SPTE_AD_ENABLED = 1 << 52  # SPTE_TDP_AD_ENABLED (simplified to one bit)
SHADOW_ACC_TRACK_SAVED_BITS_SHIFT = 54
SHADOW_ACC_TRACK_SAVED_BITS_MASK = VMX_EPT_READABLE | VMX_EPT_EXECUTABLE
SPTE_LEAF = 1 << 7  # PT_PAGE_SIZE_MASK stands in for "last level" at level 1 in our tables

#: ``FROZEN_SPTE``: a non-present placeholder a thread without exclusive mmu_lock writes
#: while it performs a multi-part update (``SHADOW_NONPRESENT_VALUE | 0x5a0``). Note that
#: 0x5a0 includes bit 8, the EPT accessed bit.
FROZEN_SPTE = 0x5A0

__all__ = [name for name in dir() if not name.startswith("_")]


def is_shadow_present_pte(spte: int) -> bool:
    return bool(spte & SPTE_MMU_PRESENT_MASK)


def is_frozen_spte(spte: int) -> bool:
    return spte == FROZEN_SPTE


def spte_ad_enabled(spte: int) -> bool:
    return bool(spte & SPTE_AD_ENABLED)


def is_access_track_spte(spte: int) -> bool:
    """A/D disabled and made non-present to hardware by aging."""
    return not spte_ad_enabled(spte) and not (spte & VMX_EPT_RWX_MASK)


def is_accessed_spte(spte: int) -> bool:
    if not is_shadow_present_pte(spte):
        return False
    if spte_ad_enabled(spte):
        return bool(spte & shadow_accessed_mask)
    return not is_access_track_spte(spte)


def is_dirty_spte(spte: int) -> bool:
    return bool(spte & shadow_dirty_mask)


def spte_to_pfn(spte: int) -> int:
    return (spte & SPTE_PFN_MASK) >> SPTE_PFN_SHIFT


def hw_present(spte: int) -> bool:
    """Present to the hardware walker: shadow-present and some permission bit set."""
    return is_shadow_present_pte(spte) and bool(spte & VMX_EPT_RWX_MASK)


def make_nonleaf_spte(child_addr: int, ad_enabled: bool) -> int:
    """An SPTE pointing to a child table (``make_nonleaf_spte``)."""
    spte = SPTE_MMU_PRESENT_MASK | VMX_EPT_RWX_MASK | ((child_addr >> PAGE_SHIFT) << SPTE_PFN_SHIFT)
    if ad_enabled:
        spte |= SPTE_AD_ENABLED
    return spte


def make_spte(pfn: int, writable: bool, ad_enabled: bool, prefetch: bool = False) -> int:
    """A leaf SPTE for a fault (``make_spte``): accessed unless prefetched; with A/D off a
    prefetched SPTE is created access-tracked."""
    spte = SPTE_MMU_PRESENT_MASK | SPTE_LEAF | (pfn << SPTE_PFN_SHIFT)
    spte |= VMX_EPT_READABLE | VMX_EPT_EXECUTABLE
    if writable:
        spte |= VMX_EPT_WRITABLE
    if ad_enabled:
        spte |= SPTE_AD_ENABLED
        if not prefetch:
            spte |= shadow_accessed_mask
    elif prefetch:
        spte = mark_spte_for_access_track(spte)
    return spte


def mark_spte_for_access_track(spte: int) -> int:
    """Save R/X in spare bits and clear RWX, so the next access faults (``spte.c``)."""
    if spte_ad_enabled(spte) or is_access_track_spte(spte):
        return spte & ~shadow_accessed_mask
    saved = spte & SHADOW_ACC_TRACK_SAVED_BITS_MASK
    spte |= saved << SHADOW_ACC_TRACK_SAVED_BITS_SHIFT
    spte &= ~VMX_EPT_RWX_MASK
    return spte


def restore_acc_track_spte(spte: int) -> int:
    """Undo ``mark_spte_for_access_track`` (fast page fault). Write permission is not
    saved: a write fault on a restored SPTE takes the slow path, as in KVM."""
    saved = (spte >> SHADOW_ACC_TRACK_SAVED_BITS_SHIFT) & SHADOW_ACC_TRACK_SAVED_BITS_MASK
    spte &= ~(SHADOW_ACC_TRACK_SAVED_BITS_MASK << SHADOW_ACC_TRACK_SAVED_BITS_SHIFT)
    return spte | saved


def spte_needs_atomic_update(spte: int, accessed_volatile: bool) -> bool:
    """May something outside mmu_lock change this leaf SPTE, so that a locked writer must
    update it atomically (``spte_needs_atomic_update``, once ``spte_has_volatile_bits``)?

    Hardware may set D on a writable SPTE that is not yet dirty; an access-tracked SPTE
    may be restored by the lockless fast page fault. Before 6.15 hardware setting A on a
    not-yet-accessed SPTE counted too (``accessed_volatile``); 6.15 dropped that, so a
    locked writer may clobber a lockless aging clear (tolerated, counted).
    """
    if not is_shadow_present_pte(spte):
        return False
    if not spte_ad_enabled(spte):
        return True
    if spte & VMX_EPT_WRITABLE and not spte & shadow_dirty_mask:
        return True
    return accessed_volatile and not spte & shadow_accessed_mask
