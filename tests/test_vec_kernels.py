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


def expected_atomic(mode: int, want_ad: np.ndarray, values: list[int], volatile: bool
                    ) -> np.ndarray:
    """Which of the A/D entries ``want_ad`` a walker in ``mode`` clears with an atomic,
    by the scalar definition (``spte_needs_atomic_update`` for a locked walk)."""
    if mode == V.LOCKLESS:
        return want_ad
    if mode == V.LOCKED:
        return want_ad & scalar(S.spte_needs_atomic_update, values, volatile)
    return np.zeros(len(values), dtype=bool)


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
            want_atomic = expected_atomic(mode, want_ad, values, volatile)
            assert ad.tolist() == want_ad.tolist(), (mode, volatile)
            assert atomic.tolist() == want_atomic.tolist(), (mode, volatile)
            assert (n_ad, n_noad, n_atomic) == (int(want_ad.sum()),
                                                int((acc & ~ad_on).sum()),
                                                int(want_atomic.sum())), (mode, volatile)


#: chunks made of runs of equal SPTEs, so that ``age_scan`` meets whole blocks whose
#: entries agree (decided once) as well as mixed ones, and blocks cut short at the end;
#: each run is the chunk's base SPTE with one bit flipped (or none), so that a mixed
#: block may differ in one bit only (D alone, say: ``atomic`` per entry, the rest not)
_TYPICAL = [S.make_spte(5, writable=w, ad_enabled=ad, prefetch=not young) | (
    S.shadow_dirty_mask if dirty else 0) for w in (False, True) for ad in (False, True)
    for young in (False, True) for dirty in (False, True)]
spte_runs = st.tuples(
    st.one_of(st.sampled_from(_TYPICAL),
              st.lists(st.sampled_from(BITS), max_size=len(BITS)).map(
                  lambda bs: sum(set(bs)))),
    st.lists(st.tuples(st.sampled_from([0] + BITS),
                       st.sampled_from([1, 2, 7, 100, V.BLOCK - 1, V.BLOCK, V.BLOCK + 3,
                                        2 * V.BLOCK])), max_size=6)
).map(lambda t: [(t[0] ^ flip, k) for flip, k in t[1]])


_A, _D = S.shadow_accessed_mask, S.shadow_dirty_mask
_YOUNG_AD = S.SPTE_MMU_PRESENT_MASK | S.SPTE_AD_ENABLED | _A
_YOUNG_W = _YOUNG_AD | S.VMX_EPT_WRITABLE


@settings(max_examples=150, deadline=None)
@given(spte_runs, st.integers(0, V.BLOCK - 1))
# a block of young A/D SPTEs whose D varies: atomic per entry (if writable), the rest not
@example([(_YOUNG_W, 100), (_YOUNG_W | _D, 100)], 0)
@example([(_YOUNG_AD, 100), (_YOUNG_AD | _D, 100)], 0)  # (none writable: none atomic)
@example([(_YOUNG_AD, 100), (_YOUNG_AD ^ _A, 100)], 0)  # A varies: all per entry
@example([(_YOUNG_AD ^ _A, 100), (_YOUNG_AD ^ _A | _D, 100)], 0)  # old: D does not count
def test_age_scan_is_accessed_then_the_per_spte_decision(
        runs: list[tuple[int, int]], shift: int) -> None:
    """``age_scan`` = ``accessed``, then ``age_select`` of what it selects, per entry
    against the scalar helpers, whatever ``accessed_volatile`` (it has no say over an
    accessed SPTE); runs of equal entries starting anywhere in a block."""
    values = [0] * shift + [v for v, k in runs for _ in range(k)]
    vals = arr(values)
    want_acc = scalar(S.is_accessed_spte, values)
    want_ad = want_acc & scalar(S.spte_ad_enabled, values)
    for mode in (V.LOCKLESS, V.LOCKED, V.NONE):
        acc, ad, atomic, n, n_ad, n_noad, n_atomic = V.age_scan(vals, mode)
        assert acc.dtype == ad.dtype == atomic.dtype == np.bool_
        assert acc.tolist() == want_acc.tolist(), mode
        assert ad.tolist() == want_ad.tolist(), mode
        for volatile in (False, True):
            want_atomic = expected_atomic(mode, want_ad, values, volatile)
            assert atomic.tolist() == want_atomic.tolist(), (mode, volatile)
        assert (n, n_ad, n_noad, n_atomic) == (
            int(want_acc.sum()), int(want_ad.sum()), int((want_acc & ~want_ad).sum()),
            int(atomic.sum())), mode
        # and the same as age_select makes of accessed's answer
        s_ad, s_atomic, *s_counts = V.age_select(vals, want_acc, mode, False)
        assert ad.tolist() == s_ad.tolist() and atomic.tolist() == s_atomic.tolist()
        assert [n_ad, n_noad, n_atomic] == s_counts


@settings(max_examples=150, deadline=None)
@given(spte_runs, st.integers(0, V.BLOCK - 1))
@example([(_YOUNG_W, 100), (_YOUNG_W | _D, 100)], 0)
@example([(_YOUNG_AD, 3 * V.BLOCK)], 0)  # every block decided once, the same
@example([(_YOUNG_AD, V.BLOCK), (_YOUNG_AD ^ _A, V.BLOCK)], 0)  # decided, differ
# a block decided accessed A/D, then one cleared as it is read that turns out mixed
@example([(_YOUNG_AD, V.BLOCK), (_YOUNG_AD, 100), (_YOUNG_AD ^ _A, 100)], 0)
@example([(_YOUNG_W, V.BLOCK), (_YOUNG_W, 10), (_YOUNG_W | _D, 10)], 0)
def test_age_clear_is_age_scan_then_the_clear_it_decides(
        runs: list[tuple[int, int]], shift: int) -> None:
    """``age_clear`` = ``age_scan`` of the chunk, then A cleared in place in every
    accessed A/D entry (nothing else changed); its masks are ``age_scan``'s wherever
    it says they are filled: whenever a count is neither 0 nor the chunk's length."""
    values = [0] * shift + [v for v, k in runs for _ in range(k)]
    if not values:
        return
    for mode in (V.LOCKLESS, V.LOCKED, V.NONE):
        want = V.age_scan(arr(values), mode)
        acc_w, ad_w, atomic_w = (m.tolist() for m in want[:3])
        spte = arr(values)
        acc, ad, atomic, *ns = V.age_clear(spte, mode)
        assert ns == list(want[3:]), mode
        assert spte.tolist() == [v & ~_A if d else v for v, d in zip(values, ad_w)]
        n = len(values)
        for got, exp, c in ((acc, acc_w, ns[0]), (ad, ad_w, ns[1]),
                            (atomic, atomic_w, ns[3])):
            if 0 < c < n:
                assert got.tolist() == exp, mode


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 7),
                          st.sampled_from([1, 5, vec.BLOCK - 1, vec.BLOCK, vec.BLOCK + 3])),
                max_size=6),
       st.integers(0, vec.BLOCK - 1))
@example([(5, vec.BLOCK), (5, 100), (4, 100)], 0)  # all match, then a mixed block
@example([(5, 3 * vec.BLOCK)], 0)  # every block all matched: the mask left unwritten
@example([(5, vec.BLOCK), (0, vec.BLOCK)], 0)  # blocks decided differently
def test_clear_where_set_clears_bits_where_the_mask_is_set(
        runs: list[tuple[int, int]], shift: int) -> None:
    """``clear_where_set`` = clear ``bits`` in each word with every bit of ``mask`` set,
    and nothing else; the count of them, and the mask of them wherever the count is
    neither 0 nor the length (else it may be left unwritten)."""
    values = [0] * shift + [v for v, k in runs for _ in range(k)]
    mask, bits = np.uint64(0b101), np.uint64(0b100)
    want = [(v & 0b101) == 0b101 for v in values]
    words = arr(values)
    sel, n = vec.clear_where_set(words, mask, bits)
    assert n == sum(want)
    assert words.tolist() == [v & ~0b100 if w else v for v, w in zip(values, want)]
    if 0 < n < len(values):
        assert sel.tolist() == want


@settings(max_examples=100, deadline=None)
@given(sptes, st.data())
def test_cleared_reports_each_clear(values: list[int], data: st.DataObject) -> None:
    old = arr(values)
    n = len(values)
    ad = np.array(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=bool)
    got, c = V.cleared(old, ad)
    want = ad & ((old & np.uint64(S.shadow_accessed_mask)) != 0)
    assert got.tolist() == want.tolist() and c == int(want.sum())


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


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, (1 << 64) - 1), st.booleans()), max_size=200),
       st.integers(0, (1 << 64) - 1), st.sampled_from([vec.XCHG, vec.AND, vec.OR]))
def test_rmw_selected_is_a_copy_then_the_masked_numpy_operation(
        rows: list[tuple[int, bool]], value: int, kind: int) -> None:
    """What ``Machine._execute_vector`` did for a vector atomic with a selection:
    ``old = view.copy()``, then ``view[sel] = v`` / ``&= v`` / ``|= v``."""
    data = np.array([0x5A5A] + [r[0] for r in rows] + [0xA5A5], dtype=np.uint64)
    view = data[1:-1]  # (a view into a larger array, as a vector op's range is)
    sel = np.array([r[1] for r in rows], dtype=bool)
    want = view.copy()
    v = np.uint64(value)
    if kind == vec.XCHG:
        want[sel] = v
    elif kind == vec.AND:
        want[sel] &= v
    else:
        want[sel] |= v
    before = view.copy()
    old = vec.rmw_selected(view, sel, v, kind)
    assert old.tolist() == before.tolist()
    assert view.tolist() == want.tolist()
    assert data[0] == 0x5A5A and data[-1] == 0xA5A5


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, (1 << 64) - 1), st.integers(0, (1 << 64) - 1),
                          st.booleans()), max_size=200))
def test_store_selected_is_the_masked_numpy_assignment(
        rows: list[tuple[int, int, bool]]) -> None:
    data = np.array([7] + [r[0] for r in rows] + [9], dtype=np.uint64)
    view = data[1:-1]
    values = np.array([r[1] for r in rows], dtype=np.uint64)
    sel = np.array([r[2] for r in rows], dtype=bool)
    want = view.copy()
    want[sel] = values[sel]
    vec.store_selected(view, values, sel)
    assert view.tolist() == want.tolist() and data[0] == 7 and data[-1] == 9


@settings(max_examples=100, deadline=None)
@given(st.lists(st.booleans(), max_size=100))
def test_first_and_last_set_are_the_first_and_last_true(bits: list[bool]) -> None:
    mask = np.array(bits, dtype=bool)
    want = max((k for k, b in enumerate(bits) if b), default=-1)
    assert vec.last_set(mask) == want
    firsts = [i for i, b in enumerate(bits) if b]
    assert vec.first_set(mask) == (firsts[0] if firsts else -1)
    if want >= 0:  # what yu-v2 computed with numpy
        assert want == len(bits) - 1 - int(mask[::-1].argmax())


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


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 10)), max_size=80),
       st.lists(st.tuples(st.booleans(), st.integers(1, 40)), max_size=8),
       st.integers(0, 40), st.sampled_from([0, 1, 2, 3, 4, 5]), st.integers(0, 2),
       st.integers(0, 30), st.booleans(), st.booleans())
@example([(1, 0)] * 8, [(True, 16)], 0, 3, 0, 0, True, False)  # two whole lines
@example([(1, 0)] * 8, [(False, 9), (True, 1), (False, 20)], 3, 3, 0, 0, True, True)
def test_touch_selected_of_long_selections_any_line_size(
        history: list[tuple[int, int]], runs: list[tuple[bool, int]], lo: int,
        shift: int, tid: int, now_after: int, atomic: bool, strided: bool) -> None:
    """``touch_selected`` reads the selections of a line wholly in the range 8 at a
    time (lines of a multiple of 8 words), the others word by word; a strided
    selection word by word throughout. Each is ``touch_lines`` over the lines holding
    a selected word."""
    window, nlines = 20, 512
    time = np.zeros(nlines, dtype=np.int64)
    tid1 = np.zeros(nlines, dtype=np.int32)
    t = 0
    for k, (who, step) in enumerate(history):  # earlier writes, spread over the lines
        t += step
        ln = (lo >> shift) + k
        time[ln], tid1[ln] = t, who + 1
    now = t + now_after
    bits = [b for b, k in runs for _ in range(k)]
    sel = (np.repeat(np.array(bits, dtype=bool), 2)[::2] if strided
           else np.array(bits, dtype=bool))
    ref_t, ref_id = time.copy(), tid1.copy()
    lines = sorted({(lo + k) >> shift for k, s in enumerate(bits) if s})
    want = sum(vec.touch_lines(ref_t, ref_id, ln, ln + 1, tid, now, window, atomic)
               for ln in lines)
    got = vec.touch_selected(time, tid1, sel, lo, shift, tid, now, window, atomic)
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
