"""Idle page tracking (``kernel/mm/page_idle.py``): the bitmap's write marks folios idle
after clearing their references, a read clears the references of every idle folio of
the word and reports the ones still idle; references go through the design's
``ptep_clear_young_notify``, so the secondary MMU's accessed bits count."""

from __future__ import annotations

from typing import Any

import pytest

from youngsim.check.model import build_system, prepopulate
from youngsim.kernel.hw.vcpu import guest_access
from youngsim.kernel.mm.mm import pte_pfn
from youngsim.kernel.mm.page_idle import (BITMAP_CHUNK_BITS, page_idle,
                                          page_idle_bitmap_read, page_idle_bitmap_write)
from youngsim.kernel.system import PAGE_SIZE
from youngsim.sim import Machine


def run(m: Machine, fn: Any, *args: Any) -> Any:
    out: list[Any] = []

    def body() -> Any:
        out.append((yield from fn(*args)))

    tid = m.spawn(body, name="t")
    while not m.threads[tid].done:
        assert m.violation is None and m.enabled(tid)
        m.step(tid)
    assert m.violation is None, m.violation
    return out[0]


def host(design: str, npages: int = 4) -> Any:
    m = Machine()
    sys = build_system(m, design, "x86-tdp", npages=npages, nvcpus=1)
    for g in range(npages):
        prepopulate(sys, g, young=True)
    return m, sys


def pfn_of(sys: Any, g: int) -> int:
    t, i = sys.mm.pte_slot(sys.mm.start + g * PAGE_SIZE)
    return pte_pfn(int(t.data[i]))


@pytest.mark.parametrize("design", ["legacy", "upstream", "yu-v2", "reviewed"])
def test_write_marks_idle_read_reports_unreferenced_folios(design):
    m, sys = host(design)
    mm = sys.mm
    pfns = [pfn_of(sys, g) for g in range(4)]
    word = pfns[0] // BITMAP_CHUNK_BITS
    bits = sum(1 << (p % BITMAP_CHUNK_BITS) for p in pfns[:3])
    assert all(p // BITMAP_CHUNK_BITS == word for p in pfns)
    # writing clears the references (the SPTEs were young) and marks the folios idle
    run(m, page_idle_bitmap_write, sys, mm, word, bits)
    assert page_idle(mm).idle == set(pfns[:3])
    assert m.counters["page_idle_pages"] == 3 and m.counters["page_idle_young"] == 3
    assert not any(int(sys.kvms[0].arch.leaf_spte(g)) & (1 << 8) for g in range(3))
    # the guest touches page 1 through the secondary MMU only (its TLB misses)
    run(m, guest_access, sys, sys.kvms[0].vcpus[0], 1, False)
    got = run(m, page_idle_bitmap_read, sys, mm, word)
    assert got == bits & ~(1 << (pfns[1] % BITMAP_CHUNK_BITS))
    assert page_idle(mm).idle == {pfns[0], pfns[2]}
    # the read walked every idle folio of the word (3), not only the one asked for
    assert m.counters["page_idle_pages"] == 6 and m.counters["page_idle_young"] == 4
    # page 3 was never marked: a read does not walk it
    assert pfns[3] not in page_idle(mm).idle
