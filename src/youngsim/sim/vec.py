"""One-pass compiled kernels (numba) for the executor, the timed driver and chunked
walkers.

A vector atomic (``vxchg``, ``vfetch_and``, ``vfetch_or``, ``vcas`` over a range)
returns the old values and writes the new ones. With numpy that is a copy and then an
in-place operation: two passes over the range, the second one re-reading what the first
just read (with a selection, masked indexing: slower still); compiled, it is one loop
that reads each word once (``rmw``, ``rmw_selected``, ``cas``; ``store_selected`` for
a vector store with a selection). The same goes for the driver's bookkeeping of such
an operation (``count_mismatches``: a vector cmpxchg's failures;
``touch_lines``/``touch_selected``: the cache lines a large vector write stamps,
``timed._LineTable``) and for the word predicate walkers apply to a chunk they loaded
(``bits_set``: is a present bit set, say).

``Machine._execute_vector`` and the numpy expressions these replaced define what they
do; ``tests/test_vec_kernels.py`` checks each kernel against them.
"""

from __future__ import annotations

import numpy as np
from numba import njit

#: the ``sel`` argument of a kernel called with ``all_selected`` (numba needs an array)
NO_SEL = np.zeros(0, dtype=bool)

#: ``rmw`` kinds
XCHG = 0
AND = 1
OR = 2


@njit(cache=True, nogil=True)
def bits_set(words: np.ndarray, mask: np.uint64) -> tuple[np.ndarray, int]:
    """Per word, are all the bits of ``mask`` set; and how many words are (a page-table
    entry's present bit, say: the predicate over a chunk in one pass)."""
    n = len(words)
    out = np.empty(n, np.uint8)
    c = 0
    for i in range(n):
        x = np.uint8((words[i] & mask) == mask)
        out[i] = x
        c += int(x)
    return out.view(np.bool_), c


#: entries per block of ``clear_where_set`` (a 4 KiB page-table page's worth)
BLOCK = 512


@njit(cache=True, nogil=True)
def decided_alike(state: np.ndarray, mixed: int) -> bool:
    """Was every block of a by-blocks kernel decided once (none in state ``mixed``),
    and the same way? Then its per-entry masks follow from its counts (each 0 or the
    length) and are left unwritten."""
    for b in range(len(state)):
        if state[b] == mixed or state[b] != state[0]:
            return False
    return True


@njit(cache=True, nogil=True)
def clear_where_set(words: np.ndarray, mask: np.uint64, bits: np.uint64
                    ) -> tuple[np.ndarray, int]:
    """Clear ``bits`` in every word that has all the bits of ``mask`` set (a young
    descriptor's access flag, say), in place, in one pass; return which words matched
    and how many. The mask is filled only if some block of ``BLOCK`` words differs
    from another (so it is valid exactly when the count is neither 0 nor the length).

    By blocks: each is counted as it is read; one whose words all match is cleared
    then (it is in L1), one where none does is left alone. After a block that all
    matched, the next is cleared while it is read (whether a word is cleared depends
    on the word alone), noting which were, so a block that turns out mixed is decided
    from the values before."""
    n = len(words)
    sel = np.empty(n, np.uint8)
    nblocks = (n + BLOCK - 1) // BLOCK
    state = np.empty(nblocks, np.uint8)  # 0 none matched, 1 all did, 2 mixed
    was = np.empty(BLOCK, np.uint64)
    keep = ~bits
    total = 0
    ahead = False
    for b in range(nblocks):
        b0 = b * BLOCK
        blk = words[b0:b0 + BLOCK]
        m = len(blk)
        c = 0
        if ahead:
            for i in range(m):
                v = blk[i]
                x = np.uint64((v & mask) == mask)
                blk[i] = v & ~(bits * x)
                was[i] = x
                c += int(x)
        else:
            for i in range(m):
                c += int((blk[i] & mask) == mask)
        total += c
        if c == m:
            if not ahead:
                for i in range(m):
                    blk[i] &= keep
            state[b] = 1
            ahead = True
            continue
        if c:
            for i in range(m):
                x = was[i] if ahead else np.uint64((blk[i] & mask) == mask)
                sel[b0 + i] = np.uint8(x)
                if not ahead and x:
                    blk[i] &= keep
            state[b] = 2
        else:
            state[b] = 0
        ahead = False
    if not decided_alike(state, 2):
        for b in range(nblocks):
            if state[b] != 2:
                sel[b * BLOCK:min((b + 1) * BLOCK, n)] = state[b]
    return sel.view(np.bool_), int(total)


@njit(cache=True, nogil=True)
def first_set(mask: np.ndarray) -> int:
    """The index of the first True of ``mask``, -1 if none, stopping at it (numpy's
    ``argmax`` of a bool array read all of a 2 M-entry mask here: 0.4 ms)."""
    for i in range(len(mask)):
        if mask[i]:
            return i
    return -1


@njit(cache=True, nogil=True)
def last_set(mask: np.ndarray) -> int:
    """The index of the last True of ``mask``, -1 if none: ``argmax`` from the end,
    stopping at it (numpy's ``mask[::-1].argmax()`` copies the reversed array first)."""
    for i in range(len(mask) - 1, -1, -1):
        if mask[i]:
            return i
    return -1


@njit(cache=True, nogil=True)
def rmw(view: np.ndarray, value: np.uint64, kind: int) -> np.ndarray:
    """Replace every word of ``view`` by ``value`` (``XCHG``), ``word & value`` (``AND``)
    or ``word | value`` (``OR``); return the old words."""
    n = len(view)
    old = np.empty(n, np.uint64)
    if kind == XCHG:
        for i in range(n):
            old[i] = view[i]
            view[i] = value
    elif kind == AND:
        for i in range(n):
            v = view[i]
            old[i] = v
            view[i] = v & value
    else:
        for i in range(n):
            v = view[i]
            old[i] = v
            view[i] = v | value
    return old


@njit(cache=True, nogil=True)
def rmw_selected(view: np.ndarray, sel: np.ndarray, value: np.uint64, kind: int
                 ) -> np.ndarray:
    """``rmw`` of the words ``sel`` selects (a boolean array as long as ``view``); the
    others are left as they are. Returns every old word. One pass, branch-free: each
    word is written back, the selected ones changed (``m``: all ones where selected)."""
    n = len(view)
    old = np.empty(n, np.uint64)
    zero = np.uint64(0)
    if kind == XCHG:
        for i in range(n):
            v = view[i]
            old[i] = v
            m = zero - np.uint64(sel[i])
            view[i] = v ^ ((v ^ value) & m)
    elif kind == AND:
        for i in range(n):
            v = view[i]
            old[i] = v
            m = zero - np.uint64(sel[i])
            view[i] = v & (value | ~m)
    else:
        for i in range(n):
            v = view[i]
            old[i] = v
            m = zero - np.uint64(sel[i])
            view[i] = v | (value & m)
    return old


@njit(cache=True, nogil=True)
def store_selected(view: np.ndarray, values: np.ndarray, sel: np.ndarray) -> None:
    """``view[sel] = values[sel]`` (``values`` and ``sel`` as long as ``view``), in one
    branch-free pass."""
    zero = np.uint64(0)
    for i in range(len(view)):
        v = view[i]
        m = zero - np.uint64(sel[i])
        view[i] = v ^ ((v ^ values[i]) & m)


@njit(cache=True, nogil=True)
def cas(view: np.ndarray, expected: np.ndarray, new: np.ndarray, sel: np.ndarray,
        all_selected: bool) -> np.ndarray:
    """A cmpxchg of each word of ``view`` that ``sel`` selects (every word if
    ``all_selected``): where it equals ``expected``, write ``new``. Returns the words
    found."""
    n = len(view)
    old = np.empty(n, np.uint64)
    zero = np.uint64(0)
    for i in range(n):  # branch-free: write v or new[i] through a mask
        v = view[i]
        old[i] = v
        hit = (all_selected | sel[i]) & (v == expected[i])
        m = zero - np.uint64(hit)
        view[i] = v ^ ((v ^ new[i]) & m)
    return old


@njit(cache=True, nogil=True)
def count_mismatches(view: np.ndarray, expected: np.ndarray, sel: np.ndarray,
                     all_selected: bool) -> tuple[int, int]:
    """For a vector cmpxchg about to run: (attempts, failures), the selected words and
    those of them not equal to ``expected``."""
    att = 0
    fail = 0
    for i in range(len(view)):
        s = all_selected | sel[i]
        att += s
        fail += s & (view[i] != expected[i])
    return att, fail


@njit(cache=True, nogil=True)
def touch_lines(time: np.ndarray, tid1: np.ndarray, lo: int, hi: int, tid: int,
                now: int, window: int, atomic: bool) -> int:
    """Stamp lines ``[lo, hi)`` as written by ``tid`` at ``now``; for an atomic, first
    count those another CPU wrote within ``window`` (contended lines)."""
    me = np.int32(tid + 1)
    t = time[lo:hi]  # (indexing slices from 0, not ``range(lo, hi)``: that loop was not
    d = tid1[lo:hi]  # vectorised, at a third of the speed)
    nc = 0
    if atomic:  # (one loop reading and writing each line's stamp: a quarter faster)
        for i in range(len(t)):
            p = d[i]
            nc += (p != 0) & (p != me) & (now - t[i] < window)
            t[i] = now
            d[i] = me
    else:
        for i in range(len(t)):
            t[i] = now
            d[i] = me
    return nc


@njit(cache=True, nogil=True, inline="always")
def _any_selected(sel: np.ndarray, a: int, b: int) -> bool:
    """Is any of ``sel[a:b]`` set (``a``, ``b`` clipped to the array)."""
    h = False
    for k in range(max(a, 0), min(b, len(sel))):
        h |= sel[k]
    return h


@njit(cache=True, nogil=True)
def touch_selected(time: np.ndarray, tid1: np.ndarray, sel: np.ndarray, lo: int,
                   shift: int, tid: int, now: int, window: int, atomic: bool) -> int:
    """``touch_lines`` for the lines holding a selected word (word ``lo + k`` where
    ``sel[k]``; a line holds ``1 << shift`` words), each line once.

    Two branch-free passes: which lines hold a selected word (for a line of a multiple
    of 8 words wholly in the range, its selections read 8 at a time as one ``uint64``;
    the partial lines at the ends, or every line if lines are shorter, word by word),
    then every line of the range is written back, stamped where it holds one."""
    n = len(sel)
    if n == 0:
        return 0
    me = np.int32(tid + 1)
    per = 1 << shift
    off = lo & (per - 1)  # words of the first line before ``lo``
    l0 = lo >> shift
    nl = (off + n + per - 1) >> shift
    hit = np.empty(nl, np.uint8)
    j0 = 0 if off == 0 else 1  # lines [j0, j1) lie wholly in the range
    j1 = (off + n) >> shift
    if per % 8 != 0 or j1 <= j0 or sel.strides[0] != 1:
        j1 = j0  # (a strided ``sel`` has no 8 selections to read as one word)
    else:
        a = j0 * per - off
        words = sel[a:a + (j1 - j0) * per].view(np.uint64)
        q = per // 8
        h = hit[j0:j1]
        if q == 1:
            for j in range(len(h)):
                h[j] = words[j] != np.uint64(0)
        else:
            for j in range(len(h)):
                x = np.uint64(0)
                for k in range(q):
                    x |= words[j * q + k]
                h[j] = x != np.uint64(0)
    for j in range(j0):
        hit[j] = _any_selected(sel, j * per - off, (j + 1) * per - off)
    for j in range(j1, nl):
        hit[j] = _any_selected(sel, j * per - off, (j + 1) * per - off)
    t = time[l0:l0 + nl]
    d = tid1[l0:l0 + nl]
    nc = 0
    for j in range(len(t)):
        hj = hit[j] != 0
        p = d[j]
        tj = t[j]
        nc += hj & atomic & (p != 0) & (p != me) & (now - tj < window)
        t[j] = now if hj else tj
        d[j] = me if hj else p
    return nc
