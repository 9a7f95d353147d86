"""The compiled vector kernels against their definitions.

``kernel/x86/spte_vec.py`` decides per SPTE of a chunk what ``spte.py``'s scalar helpers
decide one SPTE at a time; ``sim/vec.py`` does the executor's vector read-modify-writes
and the driver's cache-line stamps in one pass. Each kernel is checked here, entry by
entry, against the scalar helper or the numpy expression it replaced, over SPTEs made of
the bits the predicates read (so every combination occurs)."""

from __future__ import annotations

import numpy as np
from hypothesis import example, given, settings
from hypothesis import strategies as st

from youngsim.kernel.arm64 import pgtable as P
from youngsim.kernel.x86 import spte as S
from youngsim.kernel.x86 import spte_vec as V
from youngsim.sim import vec

#: every bit a predicate reads, and a pfn bit and a saved-RX bit that none may read
BITS = [S.VMX_EPT_READABLE, S.VMX_EPT_WRITABLE, S.VMX_EPT_EXECUTABLE,
        S.shadow_accessed_mask, S.shadow_dirty_mask, S.SPTE_MMU_PRESENT_MASK,
        S.SPTE_AD_ENABLED, S.SPTE_LEAF, 1 << S.SPTE_PFN_SHIFT,
        1 << S.SHADOW_ACC_TRACK_SAVED_BITS_SHIFT]

sptes = st.lists(st.lists(st.sampled_from(BITS), max_size=len(BITS))
                 .map(lambda bs: sum(set(bs))), min_size=0, max_size=300)


def arr(values: list[int]) -> np.ndarray:
    return np.array(values, dtype=np.uint64)


def scalar(fn, values: list[int], *args) -> np.ndarray:  # type: ignore[no-untyped-def]
    return np.array([bool(fn(v, *args)) for v in values], dtype=bool)


@settings(max_examples=150, deadline=None)
@given(sptes)
def test_predicates_match_the_scalar_helpers(values: list[int]) -> None:
    vals = arr(values)
    for kernel, fn in ((lambda v: vec.bits_set(v, np.uint64(S.SPTE_MMU_PRESENT_MASK)),
                        S.is_shadow_present_pte),
                       (lambda v: vec.bits_set(v, np.uint64(S.SPTE_AD_ENABLED)),
                        S.spte_ad_enabled),
                       (V.accessed, S.is_accessed_spte)):
        got, n = kernel(vals)
        want = scalar(fn, values)
        assert got.dtype == np.bool_ and got.tolist() == want.tolist(), fn.__name__
        assert n == int(want.sum()), fn.__name__


@settings(max_examples=150, deadline=None)
@given(sptes, st.data())
def test_age_select_is_the_per_spte_decision(values: list[int], data: st.DataObject
                                             ) -> None:
    vals = arr(values)
    acc = np.array(data.draw(st.lists(st.booleans(), min_size=len(values),
                                      max_size=len(values))), dtype=bool)
    ad_on = scalar(S.spte_ad_enabled, values)
    for mode in (V.LOCKLESS, V.LOCKED, V.NONE):
        for volatile in (False, True):
            ad, atomic, n_ad, n_noad, n_atomic = V.age_select(vals, acc, mode, volatile)
            want_ad = acc & ad_on
            if mode == V.LOCKLESS:
                want_atomic = want_ad
            elif mode == V.LOCKED:
                want_atomic = want_ad & scalar(S.spte_needs_atomic_update, values,
                                               volatile)
            else:
                want_atomic = np.zeros(len(values), dtype=bool)
            assert ad.tolist() == want_ad.tolist(), (mode, volatile)
            assert atomic.tolist() == want_atomic.tolist(), (mode, volatile)
            assert (n_ad, n_noad, n_atomic) == (int(want_ad.sum()),
                                                int((acc & ~ad_on).sum()),
                                                int(want_atomic.sum())), (mode, volatile)


@settings(max_examples=100, deadline=None)
@given(sptes, st.data())
def test_cleared_reports_and_counts_each_clear(values: list[int], data: st.DataObject
                                               ) -> None:
    old = arr(values)
    n = len(values)
    ad = np.array(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=bool)
    first = data.draw(st.integers(0, 5))
    start = data.draw(st.integers(0, 255))
    counts = np.full(n + 10, start, dtype=np.uint8)
    got, c = V.cleared(old, ad, counts, first, True)
    want = ad & ((old & np.uint64(S.shadow_accessed_mask)) != 0)
    assert got.tolist() == want.tolist() and c == int(want.sum())
    expect = np.full(n + 10, start, dtype=np.uint8)
    expect[first:first + n] += want.astype(np.uint8)  # wraps at 256, as a change detector
    assert counts.tolist() == expect.tolist()
    untouched = np.full(n + 10, start, dtype=np.uint8)
    V.cleared(old, ad, untouched, first, False)
    assert (untouched == start).all()


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, (1 << 64) - 1), max_size=200),
       st.integers(0, (1 << 64) - 1), st.sampled_from([vec.XCHG, vec.AND, vec.OR]))
def test_rmw_returns_the_old_words_and_writes_the_new(words: list[int], value: int,
                                                      kind: int) -> None:
    view = np.array(words, dtype=np.uint64)
    before = view.copy()
    old = vec.rmw(view, np.uint64(value), kind)
    v = np.uint64(value)
    want = {vec.XCHG: np.full_like(before, v), vec.AND: before & v,
            vec.OR: before | v}[kind]
    assert old.tolist() == before.tolist()
    assert view.tolist() == want.tolist()


def test_rmw_writes_through_a_view_of_a_larger_array() -> None:
    data = np.arange(10, dtype=np.uint64)
    old = vec.rmw(data[3:7], np.uint64(0), vec.AND)
    assert old.tolist() == [3, 4, 5, 6]
    assert data.tolist() == [0, 1, 2, 0, 0, 0, 0, 7, 8, 9]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 10)), max_size=40),
       st.integers(0, 15), st.integers(0, 16), st.integers(0, 2), st.integers(0, 30),
       st.booleans())
@example([(0, 0)], 0, 1, 0, 0, True)  # its own recent write: not contended
@example([(1, 0)], 0, 1, 0, 0, True)  # another CPU's recent write: contended
@example([(1, 0)], 0, 1, 0, 20, True)  # another CPU's, a window ago: not
def test_touch_lines_is_the_line_table_rule(history: list[tuple[int, int]], lo: int,
                                            span: int, tid: int, now_after: int,
                                            atomic: bool) -> None:
    """Contended lines: written by another CPU (tid + 1 stored, 0 never written) less
    than ``window`` ns ago; then every line in the range is stamped."""
    nlines, window = 16, 20
    time = np.zeros(nlines, dtype=np.int64)
    tid1 = np.zeros(nlines, dtype=np.int32)
    t = 0
    for k, (who, step) in enumerate(history):  # earlier writes, one line each
        t += step
        time[k % nlines], tid1[k % nlines] = t, who + 1
    now = t + now_after
    hi = min(nlines, lo + span)
    prev_t, prev_id = time[lo:hi].copy(), tid1[lo:hi].copy()
    want = int(np.count_nonzero((prev_id != 0) & (prev_id != tid + 1)
                                & (now - prev_t < window))) if atomic else 0
    got = vec.touch_lines(time, tid1, lo, hi, tid, now, window, atomic)
    assert got == want
    assert (time[lo:hi] == now).all() and (tid1[lo:hi] == tid + 1).all()


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3), st.integers(0, 3),
                          st.booleans()), max_size=60), st.booleans())
def test_cas_swaps_each_selected_word_that_matches(rows: list[tuple[int, int, int, bool]],
                                                   all_selected: bool) -> None:
    view = np.array([r[0] for r in rows], dtype=np.uint64)
    expected = np.array([r[1] for r in rows], dtype=np.uint64)
    new = np.array([r[2] for r in rows], dtype=np.uint64)
    sel = np.array([r[3] for r in rows], dtype=bool) | all_selected
    before = view.copy()
    old = vec.cas(view, expected, new, sel, all_selected)
    assert old.tolist() == before.tolist()
    hit = sel & (before == expected)
    assert view.tolist() == np.where(hit, new, before).tolist()


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 10)), max_size=40),
       st.lists(st.booleans(), max_size=40), st.integers(0, 8), st.integers(0, 2),
       st.integers(0, 30), st.booleans())
@example([(1, 0)], [True, True], 0, 0, 0, True)  # two words of one line: counted once
def test_touch_selected_is_touch_lines_over_the_selected_lines(
        history: list[tuple[int, int]], sel: list[bool], lo: int, tid: int,
        now_after: int, atomic: bool) -> None:
    shift, window, nlines = 2, 20, 16  # 4 words a line
    time = np.zeros(nlines, dtype=np.int64)
    tid1 = np.zeros(nlines, dtype=np.int32)
    t = 0
    for k, (who, step) in enumerate(history):
        t += step
        time[k % nlines], tid1[k % nlines] = t, who + 1
    now = t + now_after
    ref_t, ref_id = time.copy(), tid1.copy()
    lines = sorted({(lo + k) >> shift for k, s in enumerate(sel) if s})
    want = sum(vec.touch_lines(ref_t, ref_id, ln, ln + 1, tid, now, window, atomic)
               for ln in lines)
    got = vec.touch_selected(time, tid1, np.array(sel, dtype=bool), lo, shift, tid, now,
                             window, atomic)
    assert got == want
    assert time.tolist() == ref_t.tolist() and tid1.tolist() == ref_id.tolist()


S2_BITS = [P.KVM_PTE_VALID, P.AF, P.S2AP_R, P.S2AP_W, P.DBM, 1 << P.PAGE_SHIFT]
descriptors = st.lists(st.lists(st.sampled_from(S2_BITS), max_size=len(S2_BITS))
                       .map(lambda bs: sum(set(bs))), max_size=200)


@settings(max_examples=100, deadline=None)
@given(descriptors)
def test_bits_set_of_valid_and_af_is_kvm_pte_young(values: list[int]) -> None:
    got, n = vec.bits_set(arr(values), np.uint64(P.KVM_PTE_VALID | P.AF))
    want = scalar(P.kvm_pte_young, values)
    assert got.tolist() == want.tolist() and n == int(want.sum())


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(S2_BITS), st.sampled_from(S2_BITS),
                          st.booleans()), max_size=100))
def test_stage2_cas_outcome_is_the_per_descriptor_loop(rows: list[tuple[int, int, bool]]
                                                      ) -> None:
    """Per descriptor, as the kernel's loop reads one cmpxchg: swapped if it found what
    it expected; else retried (from what it found: the caller's part, tested in
    test_scale.py) while that is young."""
    found = arr([r[0] for r in rows])
    cur = arr([r[1] for r in rows])
    pending = np.array([r[2] for r in rows], dtype=bool)
    done, retry, n_done, n_retry = P.stage2_cas_outcome(found, cur, pending)
    for k, (f, c, p) in enumerate(rows):
        assert done[k] == (p and f == c)
        assert retry[k] == (p and f != c and P.kvm_pte_young(f))
    assert n_done == int(done.sum()) and n_retry == int(retry.sum())
