"""Each design's API contract, driven one call at a time on a small modelled host.

A test builds a host (``check/model.build_system`` + ``prepopulate``), spawns a single
thread that makes one call (a notifier call, an MGLRU walk or an rmap call), runs it
along the non-preemptive schedule and then checks the postconditions of section 2 of
the kernel-semantics spec *directly* on the SPTEs, the bitmaps and the return value (not
only through the model's own contract monitors, which are checked too: a run must end
without a violation).

Only the ``x86-tdp`` and ``x86-tdp-noad`` secondary MMUs are used here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from youngsim.check.model import build_system
from youngsim.designs import reviewed as rv
from youngsim.designs import yu_v2 as yu
from youngsim.designs.bitmap import Bitmap
from youngsim.kernel.kvm.kvm_main import kvm_mmu_notifier_ops
from youngsim.kernel.mm.mm import _PAGE_ACCESSED, pte_pfn, pte_young
from youngsim.kernel.mm.vmscan import folio_referenced, walk_pte_range
from youngsim.kernel.system import PAGE_SIZE, System
from youngsim.kernel.x86 import spte as S
from youngsim.sim import Machine, Program
from youngsim.sim import ops as O
from youngsim.sim.explore import run_schedule

LOCKLESS = yu.MMU_NOTIFIER_RANGE_LOCKLESS
YOUNG = yu.MMU_NOTIFIER_RANGE_YOUNG
NBITS = 64
X86 = ("x86-tdp", "x86-tdp-noad")


# --- harness ----------------------------------------------------------------------------

@dataclass
class Run:
    """One finished single-call run."""

    m: Machine
    sys: System
    ret: Any
    before: list[list[int | None]]  # per VM, per gfn: leaf SPTE before the call
    box: dict[str, Any] = field(default_factory=dict)

    def sptes(self, k: int = 0) -> list[int | None]:
        kvm = self.sys.kvms[k]
        return [kvm.arch.leaf_spte(g) for g in range(self.sys.mm.npages)]

    def young(self, k: int = 0) -> set[int]:
        return {g for g, s in enumerate(self.sptes(k)) if s is not None
                and S.is_accessed_spte(s)}

    def young_before(self, k: int = 0) -> set[int]:
        return {g for g, s in enumerate(self.before[k]) if s is not None
                and S.is_accessed_spte(s)}

    def changed(self, k: int = 0) -> set[int]:
        return {g for g, (a, b) in enumerate(zip(self.before[k], self.sptes(k))) if a != b}

    def ops(self, kind: int, obj: Any = None) -> list[Any]:
        return [s.op for s in self.m.trace
                if s.op.kind == kind and (obj is None or s.op.obj is obj)]


def run_call(design: str, mmu: str, npages: int, young: set[int] | list[set[int]],
             call: Callable[[System, dict[str, Any]], Any], nkvms: int = 1,
             nvcpus: int = 0, setup: Callable[[System, dict[str, Any]], None] | None = None,
             write: set[int] = frozenset(), absent: set[int] = frozenset()) -> Run:
    """Build a host whose every VM maps every page (young as ``young`` says, per VM if a
    list) except the ``absent`` ones (mapped by neither MMU), run ``setup(sys, box)``
    then one thread ``call(sys, box)`` (a generator), with tracing on."""
    holder: dict[str, Any] = {}

    def build(m: Machine) -> None:
        sys = build_system(m, design, mmu, npages=npages, nvcpus=nvcpus, nkvms=nkvms)
        for k, kvm in enumerate(sys.kvms):
            yk = young[k] if isinstance(young, list) else young
            for g in range(npages):
                t, i = sys.mm.pte_slot(sys.mm.start + g * PAGE_SIZE)
                if g not in absent:
                    kvm.arch.prepopulate(g, pte_pfn(t[i]), g in write, g in yk)
        for g in absent:
            t, i = sys.mm.pte_slot(sys.mm.start + g * PAGE_SIZE)
            t[i] = 0
        box: dict[str, Any] = {}
        if setup is not None:
            setup(sys, box)
        holder.update(sys=sys, box=box,
                      before=[[kvm.arch.leaf_spte(g) for g in range(npages)]
                              for kvm in sys.kvms])
        m.spawn(call, sys, box, name="caller")

    m, _, _ = run_schedule(Program("test/api", build), [], trace=True)
    assert m.live == 0
    return Run(m, holder["sys"], m.threads[0].result, holder["before"], holder["box"])


def addr(sys: System, gfn: int) -> int:
    return sys.mm.start + gfn * PAGE_SIZE


def bitmap(bits: set[int] | list[int]) -> Bitmap:
    b = Bitmap(NBITS)
    for nr in bits:
        b.set_bit(nr)
    return b


def yu_off(lo: int, hi: int, g: int) -> int:
    """The spec's yu-v2 offset: (end - addr) / PAGE_SIZE - 1, counted in pages."""
    return hi - g - 1


def spy(sys: System, op_name: str, calls: list[tuple[str, int, int]]) -> None:
    """Wrap every VM's notifier op ``op_name`` to record (vm, start, end) per call."""
    for kvm in sys.kvms:
        orig = getattr(kvm.mn.ops, op_name)
        if orig is None:
            continue

        def wrapped(mn, mm, start, end=None, *rest, _orig=orig, _name=kvm.name):
            calls.append((_name, start, end if end is not None else start + 1))
            if end is None:
                return (yield from _orig(mn, mm, start))
            return (yield from _orig(mn, mm, start, end, *rest))
        setattr(kvm.mn.ops, op_name, wrapped)


# --- yu-v2 ------------------------------------------------------------------------------

def yu_call(lo: int, hi: int, clear: bool, bits: set[int] | None):
    def call(sys: System, box: dict[str, Any]):
        bm = bitmap(bits) if bits is not None else None
        box["bitmap"] = bm
        return (yield from yu.mmu_notifier_test_clear_young(
            sys, sys.mm, addr(sys, lo), addr(sys, hi), clear, bm))
    return call


def test_yu_v2_bitmap_offset_helper_counts_from_the_end():
    start = 0x10000
    end = start + 4 * PAGE_SIZE
    assert [yu.bitmap_offset(start, end, start + g * PAGE_SIZE) for g in range(4)] \
        == [3, 2, 1, 0]


def test_yu_v2_test_mode_sets_bits_counted_from_the_end():
    garbage = {9, 40, 63}
    r = run_call("yu-v2", "x86-tdp", 4, {0, 2}, yu_call(0, 4, False, garbage))
    assert r.m.violation is None, r.m.violation
    assert r.ret == LOCKLESS
    # gfn 0 -> bit 3, gfn 2 -> bit 1; the out-of-range garbage untouched
    assert r.box["bitmap"].set_bits() == sorted({3, 1} | garbage)
    assert r.changed() == set()  # test mode clears nothing


def test_yu_v2_test_mode_subrange_offsets_relative_to_the_call():
    r = run_call("yu-v2", "x86-tdp", 6, {1, 2, 5}, yu_call(1, 4, False, set()))
    assert r.m.violation is None, r.m.violation
    # [1, 4): gfn 1 -> 2, gfn 2 -> 1; gfn 5 is outside the call
    assert r.box["bitmap"].set_bits() == [1, 2]
    assert r.ret == LOCKLESS and r.changed() == set()


def test_yu_v2_clear_mode_uses_the_bitmap_as_a_predicate():
    pred = {yu_off(0, 4, 0), yu_off(0, 4, 3), 17}  # gfn 0 (young), gfn 3 (old), garbage
    r = run_call("yu-v2", "x86-tdp", 4, {0, 1, 2}, yu_call(0, 4, True, pred))
    assert r.m.violation is None, r.m.violation
    assert r.ret == LOCKLESS
    assert r.changed() == {0}  # only the young page whose bit is set
    assert r.young() == {1, 2}
    assert r.box["bitmap"].set_bits() == sorted(pred)  # not modified


def test_yu_v2_clear_only_touches_the_accessed_bit():
    r = run_call("yu-v2", "x86-tdp", 2, {0, 1}, yu_call(0, 2, True, None), write={0})
    assert r.m.violation is None, r.m.violation
    for g in (0, 1):
        assert r.sptes()[g] == r.before[0][g] & ~S.shadow_accessed_mask
    assert S.is_dirty_spte(r.sptes()[0])


def test_yu_v2_no_young_page_returns_zero():
    r = run_call("yu-v2", "x86-tdp", 3, set(), yu_call(0, 3, False, {50}))
    assert r.m.violation is None and r.ret == 0
    assert r.box["bitmap"].set_bits() == [50]


@pytest.mark.parametrize("clear", [False, True])
def test_yu_v2_fast_path_without_bitmap(clear):
    r = run_call("yu-v2", "x86-tdp", 3, {0, 2}, yu_call(0, 3, clear, None))
    assert r.m.violation is None, r.m.violation
    assert r.ret == LOCKLESS
    assert r.changed() == ({0, 2} if clear else set())
    assert r.ops(O.WRITE_LOCK) == []  # the fast path takes no mmu_lock


@pytest.mark.parametrize("clear", [False, True])
def test_yu_v2_noad_with_bitmap_bails_out(clear):
    bits = {0, 1, 2, 33}
    r = run_call("yu-v2", "x86-tdp-noad", 3, {0, 1}, yu_call(0, 3, clear, bits))
    assert r.m.violation is None, r.m.violation
    assert r.ret == 0
    assert r.changed() == set()  # the SPTEs are untouched
    assert r.box["bitmap"].set_bits() == sorted(bits)
    assert r.ops(O.WRITE_LOCK) == []  # no slow path either


def test_yu_v2_noad_without_bitmap_clear_takes_the_slow_path():
    r = run_call("yu-v2", "x86-tdp-noad", 3, {0, 2}, yu_call(0, 3, True, None))
    assert r.m.violation is None, r.m.violation
    assert r.ret == YOUNG
    assert r.young() == set() and r.changed() == {0, 2}
    for g in (0, 2):  # aged by access tracking: non-present to hardware, R/X saved
        s = r.sptes()[g]
        assert S.is_shadow_present_pte(s) and S.is_access_track_spte(s)
        assert S.restore_acc_track_spte(s) & S.VMX_EPT_RWX_MASK \
            == S.VMX_EPT_READABLE | S.VMX_EPT_EXECUTABLE
    kvm = r.sys.kvms[0]
    assert len(r.ops(O.WRITE_LOCK, kvm.mmu_lock)) == 1


def test_yu_v2_noad_without_bitmap_test_takes_the_slow_path():
    r = run_call("yu-v2", "x86-tdp-noad", 3, {1}, yu_call(0, 3, False, None))
    assert r.m.violation is None, r.m.violation
    assert r.ret == YOUNG and r.changed() == set()
    r = run_call("yu-v2", "x86-tdp-noad", 3, set(), yu_call(0, 3, False, None))
    assert r.m.violation is None and r.ret == 0


def test_yu_v2_clear_young_and_test_young_wrappers():
    def call(sys, box):
        box["test"] = yield from yu.mmu_notifier_test_young(sys, sys.mm, addr(sys, 1))
        box["clear"] = yield from yu.mmu_notifier_clear_young(sys, sys.mm, addr(sys, 0),
                                                              addr(sys, 3))
        box["after"] = yield from yu.mmu_notifier_test_young(sys, sys.mm, addr(sys, 1))
    r = run_call("yu-v2", "x86-tdp", 3, {1, 2}, call)
    assert r.m.violation is None, r.m.violation
    assert r.box == {"test": LOCKLESS, "clear": LOCKLESS, "after": 0}
    assert r.young() == set()


def _yu_two_vms(young: list[set[int]], clear: bool):
    calls: list[tuple[str, int, int]] = []
    r = run_call("yu-v2", "x86-tdp", 2, young, yu_call(0, 2, clear, None), nkvms=2,
                 setup=lambda sys, box: spy(sys, "test_clear_young", calls))
    assert r.m.violation is None, r.m.violation
    return r, [c[0] for c in calls]


def test_yu_v2_test_mode_stops_after_the_first_young_subscriber():
    r, called = _yu_two_vms([{0, 1}, {0, 1}], clear=False)
    assert called == ["kvm0"] and r.ret == LOCKLESS


def test_yu_v2_test_mode_goes_on_while_no_subscriber_was_young():
    r, called = _yu_two_vms([set(), {1}], clear=False)
    assert called == ["kvm0", "kvm1"] and r.ret == LOCKLESS


def test_yu_v2_clear_mode_visits_every_subscriber():
    r, called = _yu_two_vms([{0, 1}, {0, 1}], clear=True)
    assert called == ["kvm0", "kvm1"] and r.ret == LOCKLESS
    assert r.young(0) == set() and r.young(1) == set()


def test_yu_v2_test_mode_bitmap_reflects_only_the_subscribers_visited():
    """The early break applies with a bitmap too (as posted): pages young only in a
    later VM are not reported once an earlier VM was young."""
    r = run_call("yu-v2", "x86-tdp", 3, [{0}, {2}], yu_call(0, 3, False, set()), nkvms=2)
    assert r.m.violation is None, r.m.violation
    assert r.ret == LOCKLESS
    assert r.box["bitmap"].set_bits() == [yu_off(0, 3, 0)]


def test_yu_v2_ops_replace_clear_young_and_test_young():
    def nothing(sys, box):
        return
        yield  # pragma: no cover

    r = run_call("yu-v2", "x86-tdp", 1, {0}, nothing)
    ops = r.sys.kvms[0].mn.ops
    assert ops.test_clear_young is not None
    assert ops.clear_young is None and ops.test_young is None
    assert ops.clear_flush_young is not None  # stays


@st.composite
def call_inputs(draw):
    """Pages, which are young, the call's page range, and bitmap contents: in-range bits
    (the predicate in clear mode) and out-of-range garbage."""
    n = draw(st.integers(1, 8))
    young = draw(st.sets(st.integers(0, n - 1)))
    lo = draw(st.integers(0, n - 1))
    hi = draw(st.integers(lo + 1, n))
    inrange = draw(st.sets(st.integers(0, hi - lo - 1)))
    garbage = draw(st.sets(st.integers(hi - lo, NBITS - 1), max_size=6))
    return n, young, lo, hi, inrange, garbage


@settings(max_examples=40)
@given(inp=call_inputs(), clear=st.booleans())
def test_yu_v2_bitmap_rules_fast_path(inp, clear):
    n, young, lo, hi, inrange, garbage = inp
    bits = (inrange if clear else set()) | garbage
    r = run_call("yu-v2", "x86-tdp", n, young, yu_call(lo, hi, clear, bits))
    assert r.m.violation is None, r.m.violation
    in_call = {g for g in young if lo <= g < hi}
    assert r.ret == (LOCKLESS if in_call else 0)
    bm = r.box["bitmap"]
    if clear:
        assert set(bm.set_bits()) == bits  # a predicate: not modified
        assert r.changed() == {g for g in in_call if yu_off(lo, hi, g) in inrange}
        assert r.young() == young - r.changed()
    else:
        assert set(bm.set_bits()) == {yu_off(lo, hi, g) for g in in_call} | garbage
        assert r.changed() == set()


@settings(max_examples=30)
@given(inp=call_inputs(), clear=st.booleans(), with_bitmap=st.booleans())
def test_yu_v2_rules_without_fast_path(inp, clear, with_bitmap):
    """x86-tdp-noad: with a bitmap bail out (0, nothing touched); without one run the
    locked slow path and return YOUNG iff a page in range was young."""
    n, young, lo, hi, inrange, garbage = inp
    bits = (inrange | garbage) if with_bitmap else None
    r = run_call("yu-v2", "x86-tdp-noad", n, young, yu_call(lo, hi, clear, bits))
    assert r.m.violation is None, r.m.violation
    in_call = {g for g in young if lo <= g < hi}
    if with_bitmap:
        assert r.ret == 0 and r.changed() == set()
        assert set(r.box["bitmap"].set_bits()) == bits
    else:
        assert r.ret == (YOUNG if in_call else 0)
        assert r.changed() == (in_call if clear else set())


# --- reviewed ---------------------------------------------------------------------------

def rv_call(lo: int, hi: int, young_bits: set[int] | None, pred_bits: set[int] | None):
    def call(sys: System, box: dict[str, Any]):
        yb = bitmap(young_bits) if young_bits is not None else None
        pb = bitmap(pred_bits) if pred_bits is not None else None
        box["young"], box["pred"] = yb, pb
        return (yield from rv.mmu_notifier_test_clear_young_range(
            sys, sys.mm, addr(sys, lo), addr(sys, hi), yb, pb))
    return call


def generic_ops(sys: System, box: dict[str, Any]) -> None:
    """Replace every VM's ops by the pre-series ones: no test_clear_young_range, so the
    mm side must use its generic fallback over clear_young/test_young."""
    for kvm in sys.kvms:
        ops = kvm_mmu_notifier_ops(True, False)
        assert ops.test_clear_young_range is None and ops.clear_young is not None
        kvm.mn.ops = ops


def test_reviewed_range_bit_helper_counts_from_the_start():
    start = 0x20000
    assert [rv.mmu_notifier_range_bit(start, start + g * PAGE_SIZE) for g in range(4)] \
        == [0, 1, 2, 3]


def test_reviewed_young_bitmap_set_for_every_young_page():
    r = run_call("reviewed", "x86-tdp", 5, {0, 3, 4}, rv_call(0, 5, {40}, None))
    assert r.m.violation is None, r.m.violation
    assert r.ret
    assert r.box["young"].set_bits() == [0, 3, 4, 40]  # offsets from the start + garbage
    assert r.changed() == {0, 3, 4}  # NULL predicate: every young page cleared
    assert r.young() == set()


def test_reviewed_predicate_limits_clears_and_is_not_modified():
    r = run_call("reviewed", "x86-tdp", 5, {0, 1, 3}, rv_call(1, 5, set(), {0, 1, 60}))
    assert r.m.violation is None, r.m.violation
    # range [1, 5): predicate bits 0 -> gfn 1 (young), 1 -> gfn 2 (old)
    assert r.changed() == {1}
    assert r.young() == {0, 3}
    assert r.box["young"].set_bits() == [0, 2]  # gfn 1 and gfn 3, both seen young
    assert r.box["pred"].set_bits() == [0, 1, 60]
    assert r.ret


def test_reviewed_no_bitmaps_no_young_returns_zero():
    r = run_call("reviewed", "x86-tdp", 3, set(), rv_call(0, 3, None, None))
    assert r.m.violation is None and not r.ret and r.changed() == set()


@pytest.mark.parametrize("mmu", X86)
def test_reviewed_generic_fallback_matches_the_native_op(mmu):
    native = run_call("reviewed", mmu, 4, {0, 2, 3}, rv_call(0, 4, set(), {0, 1, 3}))
    generic = run_call("reviewed", mmu, 4, {0, 2, 3}, rv_call(0, 4, set(), {0, 1, 3}),
                       setup=generic_ops)
    for r in (native, generic):
        assert r.m.violation is None, r.m.violation
        assert r.changed() == {0, 3} and r.young() == {2}
        assert r.box["young"].set_bits() == [0, 2, 3]
    assert native.sptes() == generic.sptes()
    assert bool(native.ret) == bool(generic.ret) is True


def test_reviewed_two_vms_every_subscriber_young_bits_ored():
    calls: list[tuple[str, int, int]] = []
    r = run_call("reviewed", "x86-tdp", 4, [{0, 1}, {1, 3}], rv_call(0, 4, set(), {1, 3}),
                 nkvms=2, setup=lambda sys, box: spy(sys, "test_clear_young_range", calls))
    assert r.m.violation is None, r.m.violation
    assert [c[0] for c in calls] == ["kvm0", "kvm1"]
    assert r.box["young"].set_bits() == [0, 1, 3]
    assert r.changed(0) == {1} and r.changed(1) == {1, 3}
    assert r.young(0) == {0} and r.young(1) == set()
    assert r.ret


@pytest.mark.parametrize("design,mmu,locks", [
    ("reviewed-locked", "x86-tdp", 1),
    ("reviewed", "x86-tdp", 0),
    ("reviewed", "x86-tdp-noad", 1),  # no lockless path without A/D: locked, once
    ("reviewed-locked", "x86-tdp-noad", 1),
])
def test_reviewed_mmu_lock_round_trips_per_call(design, mmu, locks):
    n = 6
    r = run_call(design, mmu, n, {0, 2, 5}, rv_call(0, n, set(), None))
    assert r.m.violation is None, r.m.violation
    lock = r.sys.kvms[0].mmu_lock
    assert len(r.ops(O.WRITE_LOCK, lock)) == locks
    assert len(r.ops(O.WRITE_UNLOCK, lock)) == locks
    assert r.ops(O.READ_LOCK, lock) == []
    assert r.changed() == {0, 2, 5}


def test_reviewed_generic_fallback_takes_the_lock_per_page():
    n = 4
    r = run_call("reviewed-locked", "x86-tdp", n, {1}, rv_call(0, n, set(), None),
                 setup=generic_ops)
    assert r.m.violation is None, r.m.violation
    assert len(r.ops(O.WRITE_LOCK, r.sys.kvms[0].mmu_lock)) == n


@settings(max_examples=40)
@given(inp=call_inputs(), mmu=st.sampled_from(X86),
       design=st.sampled_from(("reviewed", "reviewed-locked")),
       generic=st.booleans(), with_young=st.booleans(), with_pred=st.booleans())
def test_reviewed_bitmap_rules(inp, mmu, design, generic, with_young, with_pred):
    n, young, lo, hi, pred, garbage = inp
    yb = garbage if with_young else None
    pb = (pred | garbage) if with_pred else None
    r = run_call(design, mmu, n, young, rv_call(lo, hi, yb, pb),
                 setup=generic_ops if generic else None)
    assert r.m.violation is None, r.m.violation
    in_call = {g for g in young if lo <= g < hi}
    assert bool(r.ret) == bool(in_call)
    allowed = in_call if pb is None else {g for g in in_call if g - lo in pred}
    assert r.changed() == allowed
    assert r.young() == young - allowed
    if with_young:
        assert set(r.box["young"].set_bits()) == {g - lo for g in in_call} | garbage
    if with_pred:
        assert set(r.box["pred"].set_bits()) == pb


# --- upstream and upstream-6.12: one clear_young per examined PTE -----------------------

def walk(sys: System, box: dict[str, Any]):
    yield from walk_pte_range(sys, sys.mm, sys.mm.start, sys.mm.end)


def _walk_setup(calls, primary_old: set[int]):
    def setup(sys: System, box: dict[str, Any]) -> None:
        for g in primary_old:
            t, i = sys.mm.pte_slot(addr(sys, g))
            t[i] = t[i] & ~_PAGE_ACCESSED
        spy(sys, "clear_young", calls)
        spy(sys, "clear_flush_young", calls)
    return setup


@pytest.mark.parametrize("design,locks_per_page", [("upstream", 0), ("upstream-6.12", 1)])
@pytest.mark.parametrize("mmu", X86)
def test_per_page_walk_one_notifier_call_per_pte(design, locks_per_page, mmu):
    n = 5
    calls: list[tuple[str, int, int]] = []
    r = run_call(design, mmu, n, {0, 3}, walk, nvcpus=1,
                 setup=_walk_setup(calls, primary_old={1, 3, 4}))
    assert r.m.violation is None, r.m.violation
    sys = r.sys
    # every present PTE is examined, primary-old ones too, one page per call
    assert calls == [("kvm", addr(sys, g), addr(sys, g + 1)) for g in range(n)]
    lock = sys.kvms[0].mmu_lock
    assert len(r.ops(O.WRITE_LOCK, lock)) == locks_per_page * n
    assert r.young() == set() and r.changed() == {0, 3}
    assert "tlb_flushes" not in r.m.counters  # x86 never flushes when aging (6.13)
    # young in either MMU: primary-young {0, 2}, secondary-young {0, 3}
    assert r.m.counters["walk_pages"] == n and r.m.counters["walk_young"] == 3
    ptes = sys.mm.ptes()
    assert not any(pte_young(int(p)) for p in ptes)


@pytest.mark.parametrize("design", ["upstream", "upstream-6.12"])
def test_per_page_rmap_path_clears_the_secondary_without_flush(design):
    calls: list[tuple[str, int, int]] = []

    def call(sys, box):
        t, i = sys.mm.pte_slot(addr(sys, 1))
        box["ret"] = yield from folio_referenced(sys, sys.mm, pte_pfn(t[i]),
                                                 look_around=False)
    r = run_call(design, "x86-tdp", 3, {0, 1, 2}, call, nvcpus=1,
                 setup=_walk_setup(calls, set()))
    assert r.m.violation is None, r.m.violation
    assert r.box["ret"] == 1
    assert calls == [("kvm", addr(r.sys, 1), addr(r.sys, 2))]
    assert r.changed() == {1}
    assert "tlb_flushes" not in r.m.counters


# --- legacy and legacy-noflush ----------------------------------------------------------

@pytest.mark.parametrize("design", ["legacy", "legacy-noflush"])
@pytest.mark.parametrize("mmu", X86)
def test_legacy_mglru_walk_never_touches_the_secondary(design, mmu):
    calls: list[tuple[str, int, int]] = []
    r = run_call(design, mmu, 4, {0, 1, 2, 3}, walk, nvcpus=1,
                 setup=_walk_setup(calls, set()))
    assert r.m.violation is None, r.m.violation
    assert calls == []
    assert r.changed() == set() and r.young() == {0, 1, 2, 3}
    assert not [s for s in r.m.trace if getattr(s.op.obj, "tag", None) == "spt"]
    assert r.ops(O.WRITE_LOCK) == []
    assert r.m.counters["walk_pages"] == 4
    assert not any(pte_young(int(p)) for p in r.sys.mm.ptes())  # primary aged


def _rmap(gfn: int, look_around: bool):
    def call(sys, box):
        t, i = sys.mm.pte_slot(addr(sys, gfn))
        box["ret"] = yield from folio_referenced(sys, sys.mm, pte_pfn(t[i]),
                                                 look_around=look_around)
    return call


@pytest.mark.parametrize("design,flushes", [("legacy", 1), ("legacy-noflush", 0)])
@pytest.mark.parametrize("mmu", X86)
def test_legacy_rmap_path_ages_the_secondary(design, flushes, mmu):
    calls: list[tuple[str, int, int]] = []
    r = run_call(design, mmu, 4, {0, 1, 2, 3}, _rmap(1, look_around=True), nvcpus=1,
                 setup=_walk_setup(calls, set()))
    assert r.m.violation is None, r.m.violation
    assert r.box["ret"] == 1
    sys = r.sys
    # one notifier call, for the folio's own page; look-around ages primaries only
    assert [c[1:] for c in calls] == [(addr(sys, 1), addr(sys, 2))]
    assert r.changed() == {1} and r.young() == {0, 2, 3}
    assert r.sys.kvms[0].mn.ops.clear_young is not None
    assert len(r.ops(O.WRITE_LOCK, sys.kvms[0].mmu_lock)) == 1
    assert r.m.counters.get("tlb_flushes", 0) == flushes
    tlb = sys.kvms[0].vcpus[0].tlb
    assert len(r.ops(O.VSTORE, tlb)) == flushes
    assert r.m.counters["look_around_pages"] == 3


def test_legacy_rmap_path_flushes_only_if_young():
    r = run_call("legacy", "x86-tdp", 2, set(), _rmap(0, look_around=False), nvcpus=1)
    assert r.m.violation is None, r.m.violation
    assert r.box["ret"] == 1  # the primary PTE was young
    assert "tlb_flushes" not in r.m.counters
    assert r.changed() == set()


@pytest.mark.parametrize("design,expected", [
    ("legacy", ["clear_flush_young"]),
    ("legacy-noflush", ["clear_young"]),
])
def test_legacy_rmap_path_notifier_choice(design, expected):
    def setup(sys, box):
        for name in ("clear_flush_young", "clear_young", "test_young"):
            calls: list = []
            spy(sys, name, calls)
            box[name] = calls

    r = run_call(design, "x86-tdp", 2, {0}, _rmap(0, look_around=False), nvcpus=1,
                 setup=setup)
    assert r.m.violation is None, r.m.violation
    seen = [name for name in ("clear_flush_young", "clear_young", "test_young")
            if r.box[name]]
    assert seen == expected


def test_x86_aging_never_flushes_from_6_13_on():
    """upstream and upstream-6.12 on x86: even clear_flush_young does not flush."""
    for design, flushes in (("upstream", 0), ("upstream-6.12", 0), ("legacy", 1)):
        def call(sys, box):
            from youngsim.kernel.mm.mmu_notifier import mmu_notifier_clear_flush_young
            box["ret"] = yield from mmu_notifier_clear_flush_young(sys.mm, addr(sys, 0),
                                                                   addr(sys, 2))
        r = run_call(design, "x86-tdp", 2, {0, 1}, call, nvcpus=1)
        assert r.m.violation is None, r.m.violation
        assert r.box["ret"] and r.changed() == {0, 1}, design
        assert r.m.counters.get("tlb_flushes", 0) == flushes, design


# --- MGLRU's walk, per design: who is asked, how often, and what is decided -------------

#: pages: 0 young in both MMUs; 1 young in both but outside the reclaim scope; 2 old in
#: the primary, young in the secondary; 3 old in both
WALK_CASES = [
    # design, mmu, notifier calls as (op, first page, end page), write locks, SPTEs aged
    ("yu-v2", "x86-tdp", [("tcy", 0, 4), ("tcy", 0, 3)], 0, {0, 2}),
    ("yu-v2", "x86-tdp-noad", [("tcy", 0, 4)], 0, set()),  # bails out: not walked
    ("reviewed", "x86-tdp", [("tcyr", 0, 4)], 0, {0, 2}),
    ("reviewed", "x86-tdp-noad", [("tcyr", 0, 4)], 1, {0, 2}),
    ("reviewed-locked", "x86-tdp", [("tcyr", 0, 4)], 1, {0, 2}),
    ("reviewed-locked", "x86-tdp-noad", [("tcyr", 0, 4)], 1, {0, 2}),
    ("upstream", "x86-tdp", [("cy", 0, 1), ("cy", 2, 3), ("cy", 3, 4)], 0, {0, 2}),
    ("upstream", "x86-tdp-noad", [("cy", 0, 1), ("cy", 2, 3), ("cy", 3, 4)], 0, {0, 2}),
    ("upstream-6.12", "x86-tdp", [("cy", 0, 1), ("cy", 2, 3), ("cy", 3, 4)], 3, {0, 2}),
    ("upstream-6.12", "x86-tdp-noad", [("cy", 0, 1), ("cy", 2, 3), ("cy", 3, 4)], 3,
     {0, 2}),
    ("legacy", "x86-tdp", [], 0, set()),
    ("legacy-noflush", "x86-tdp-noad", [], 0, set()),
]
OP_SHORT = {"test_clear_young": "tcy", "test_clear_young_range": "tcyr",
            "clear_young": "cy", "clear_flush_young": "cfy", "test_young": "ty"}


@pytest.mark.parametrize("design,mmu,expected_calls,locks,aged", WALK_CASES)
def test_mglru_walk_per_design(design, mmu, expected_calls, locks, aged):
    calls: dict[str, list] = {}

    def setup(sys, box):
        sys.mm.out_of_scope.add(addr(sys, 1))
        for g in (2, 3):
            t, i = sys.mm.pte_slot(addr(sys, g))
            t[i] = t[i] & ~_PAGE_ACCESSED
        for op, short in OP_SHORT.items():
            calls[short] = []
            spy(sys, op, calls[short])
        box["order"] = calls

    r = run_call(design, mmu, 4, {0, 1, 2}, walk, setup=setup, nvcpus=1)
    assert r.m.violation is None, r.m.violation
    base = r.sys.mm.start
    got = sorted((short, (c[1] - base) // PAGE_SIZE, (c[2] - base) // PAGE_SIZE)
                 for short, cs in calls.items() for c in cs)
    assert got == sorted(expected_calls)
    assert len(r.ops(O.WRITE_LOCK, r.sys.kvms[0].mmu_lock)) == locks
    assert r.changed() == aged
    assert 1 in r.young()  # outside the reclaim scope: its accessed bit is kept
    assert r.m.counters["walk_pages"] == 3
    # page 2 is young only through the secondary MMU
    assert r.m.counters["walk_young"] == (2 if aged else 1)
    ptes = r.sys.mm.ptes()
    assert pte_young(int(ptes[1])) and not any(pte_young(int(ptes[g])) for g in (0, 2))


CONSULTS = {("yu-v2", "x86-tdp"), ("reviewed", "x86-tdp"), ("reviewed", "x86-tdp-noad"),
            ("reviewed-locked", "x86-tdp"), ("reviewed-locked", "x86-tdp-noad"),
            ("upstream", "x86-tdp"), ("upstream", "x86-tdp-noad"),
            ("upstream-6.12", "x86-tdp"), ("upstream-6.12", "x86-tdp-noad")}
ALL_PAIRS = sorted(CONSULTS | {("yu-v2", "x86-tdp-noad"), ("legacy", "x86-tdp"),
                               ("legacy", "x86-tdp-noad"), ("legacy-noflush", "x86-tdp")})


@st.composite
def walk_inputs(draw):
    n = draw(st.one_of(st.integers(1, 8), st.integers(60, 70), st.integers(126, 132)))
    pages = st.sets(st.integers(0, n - 1), max_size=n)
    return (n, draw(pages), draw(pages), draw(pages), draw(pages))


@settings(max_examples=40)
@given(inp=walk_inputs(), pair=st.sampled_from(ALL_PAIRS))
def test_mglru_walk_decisions(inp, pair):
    """One walk over the VMA, alone: every present in-scope page is decided once, young
    iff its primary PTE or (where the design consults it) its SPTE was young; those are
    then old in the MMUs consulted; pages outside the scope are untouched everywhere."""
    design, mmu = pair
    n, spte_young, prim_old, out_scope, absent = inp
    absent = absent - out_scope

    def setup(sys, box):
        for g in out_scope:
            sys.mm.out_of_scope.add(addr(sys, g))
        for g in prim_old - absent:
            t, i = sys.mm.pte_slot(addr(sys, g))
            t[i] = t[i] & ~_PAGE_ACCESSED
        box["ptes"] = [int(p) for p in sys.mm.ptes()]

    r = run_call(design, mmu, n, spte_young, walk, setup=setup, nvcpus=1, absent=absent)
    assert r.m.violation is None, r.m.violation
    decided = set(range(n)) - absent - out_scope
    consults = pair in CONSULTS
    young = {g for g in decided if g not in prim_old or (consults and g in spte_young)}
    assert r.m.counters.get("walk_pages", 0) == len(decided)
    assert r.m.counters.get("walk_young", 0) == len(young)
    assert r.m.counters.get("false_old", 0) == len(decided) - len(young)
    assert r.changed() == ({g for g in decided if g in spte_young} if consults else set())
    ptes = [int(p) for p in r.sys.mm.ptes()]
    for g in range(n):
        if g in decided:
            assert not pte_young(ptes[g])
        else:
            assert ptes[g] == r.box["ptes"][g]


def test_yu_v2_secondary_walk_needs_the_lru_gen_capability_bit():
    """Patch 10: MGLRU walks secondary MMUs only with bit 0x0008 of lru_gen/enabled."""
    from youngsim.check.model import prepopulate
    from youngsim.check.scenarios import mglru_walk
    from youngsim.designs.yu_v2 import LRU_GEN_SPTE_WALK

    def run(caps: int) -> int:
        m = Machine(trace=True)
        sys = build_system(m, "yu-v2", "x86-tdp", npages=2, nvcpus=1)
        for g in range(2):
            prepopulate(sys, g, young=True)
        sys.lru_gen_enabled = caps
        t = m.spawn(mglru_walk, sys, name="mglru")
        while not m.threads[t].done:
            m.step(t)
        assert m.violation is None
        return sum(bool(sys.kvms[0].arch.leaf_spte(g) & S.shadow_accessed_mask)
                   for g in range(2))

    assert run(0x000F) == 0  # both SPTEs aged
    assert run(0x000F & ~LRU_GEN_SPTE_WALK) == 2  # secondary MMU left alone
