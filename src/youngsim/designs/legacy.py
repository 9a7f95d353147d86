"""``legacy``: Linux 6.1-6.4, before the 2023 series.

KVM serves ``clear_flush_young``/``clear_young``/``test_young`` under ``kvm->mmu_lock``
taken for write, and flushes remote TLBs when ``clear_flush_young`` found a young SPTE.
MGLRU's walk and look-around clear only primary PTEs; secondary MMUs are reached only
from the rmap path, one ``ptep_clear_flush_young_notify`` per mapping (one lock round trip
per page).
"""

from .base import Design


class Legacy(Design):
    name = "legacy"
    summary = "6.1-6.4: rmap path only, write-locked, flush if young"
    kernel = "Linux 6.1-6.4"
    mglru = "primary-only"
    rmap_flush = True
    flush_if_young = True
    accessed_volatile = True


DESIGN = Legacy()
