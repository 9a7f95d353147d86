"""The executor's vector read-modify-writes and the timed driver's cache-line stamps,
each in one fused pass.

A vector atomic (``vxchg``, ``vfetch_and``, ``vfetch_or`` over a range) returns the old
values and writes the new ones. With numpy that is a copy and then an in-place operation:
two passes over the range, the second one re-reading what the first just read. Compiled
with numba it is one loop that reads each word once. The same goes for stamping the cache
lines a large vector write touched (``timed._LineTable``).

``Machine._execute_vector`` and ``_LineTable.touch`` define what these do; the tests check
the kernels against the numpy expressions they replace (``tests/test_sim_vec.py``).
"""

from __future__ import annotations

import numpy as np
from numba import njit

#: ``rmw`` kinds
XCHG = 0
AND = 1
OR = 2


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
