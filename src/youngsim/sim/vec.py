"""One-pass compiled kernels (numba) for the executor, the timed driver and chunked
walkers.

A vector atomic (``vxchg``, ``vfetch_and``, ``vfetch_or``, ``vcas`` over a range)
returns the old values and writes the new ones. With numpy that is a copy and then an
in-place operation: two passes over the range, the second one re-reading what the first
just read; compiled, it is one loop that reads each word once (``rmw``, ``cas``). The
same goes for the driver's bookkeeping of such an operation (``count_mismatches``: a
vector cmpxchg's failures; ``touch_lines``/``touch_selected``: the cache lines a large
vector write stamps, ``timed._LineTable``) and for the word predicate walkers apply to
a chunk they loaded (``bits_set``: is a present bit set, say).

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
    nc = 0
    if atomic:
        for ln in range(lo, hi):
            p = tid1[ln]
            nc += (p != 0) & (p != me) & (now - time[ln] < window)
    for ln in range(lo, hi):
        time[ln] = now
        tid1[ln] = me
    return nc


@njit(cache=True, nogil=True)
def touch_selected(time: np.ndarray, tid1: np.ndarray, sel: np.ndarray, lo: int,
                   shift: int, tid: int, now: int, window: int, atomic: bool) -> int:
    """``touch_lines`` for the lines holding a selected word (word ``lo + k`` where
    ``sel[k]``; a line holds ``1 << shift`` words), each line once."""
    me = np.int32(tid + 1)
    nc = 0
    last = -1
    for i in range(len(sel)):
        if sel[i]:
            ln = (lo + i) >> shift
            if ln != last:
                last = ln
                if atomic:
                    p = tid1[ln]
                    nc += (p != 0) & (p != me) & (now - time[ln] < window)
                time[ln] = now
                tid1[ln] = me
    return nc
