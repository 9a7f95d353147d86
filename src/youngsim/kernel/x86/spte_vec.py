"""``spte.h``'s per-SPTE predicates over a chunk of SPTEs, each in one fused pass.

A walker reads a chunk of SPTEs with one vector load (``vload``) and then decides, for
every entry, what the kernel's per-SPTE loop decides one entry at a time: is it
accessed, are its A/D bits enabled, must a locked writer update it atomically. Written
as numpy expressions each decision took several passes over the chunk and a temporary
array per pass, which is where a large guest's aging pass spent its time (a 1 TiB guest
is 268 M SPTEs); compiled with numba, each decision is one loop over the chunk.

The scalar helpers in ``spte.py`` stay the definition: the tests check these kernels
against them entry by entry (``tests/test_vec_kernels.py``). No kernel's loop body
branches on an entry (only on flags fixed for the call), and each returns its counts,
so a caller asks "any?" without another pass.

An aging walker's decisions are one kernel (``age_scan``: ``accessed`` and
``age_select`` in one read of the chunk), which goes by blocks of ``BLOCK`` entries (a
leaf table's worth): one branch-free reduction finds which of the bits the decisions
read vary within the block; where none that matters does (a guest touched all of the
block since the last pass, or none of it), the block is decided once and its masks
filled, else entry by entry (the block is in L1 by then). Decided per entry, in 64-bit
lanes, the decisions are compute-bound, some 4x a read of the chunk; a block decided
once costs about its read.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ...sim.vec import decided_alike
from . import spte as S

_A = np.uint64(S.shadow_accessed_mask)
_D = np.uint64(S.shadow_dirty_mask)
_W = np.uint64(S.VMX_EPT_WRITABLE)
_RWX = np.uint64(S.VMX_EPT_RWX_MASK)
_P = np.uint64(S.SPTE_MMU_PRESENT_MASK)
_AD = np.uint64(S.SPTE_AD_ENABLED)
_P_A = np.uint64(S.SPTE_MMU_PRESENT_MASK | S.shadow_accessed_mask)
_P_AD_A = np.uint64(S.SPTE_MMU_PRESENT_MASK | S.SPTE_AD_ENABLED | S.shadow_accessed_mask)
_ZERO = np.uint64(0)
_A_SHIFT = np.uint64(S.shadow_accessed_mask.bit_length() - 1)
_D_SHIFT = np.uint64(S.shadow_dirty_mask.bit_length() - 1)
_W_SHIFT = np.uint64(S.VMX_EPT_WRITABLE.bit_length() - 1)
_P_SHIFT = np.uint64(S.SPTE_MMU_PRESENT_MASK.bit_length() - 1)
_AD_SHIFT = np.uint64(S.SPTE_AD_ENABLED.bit_length() - 1)
_W_D = np.uint64(S.VMX_EPT_WRITABLE | S.shadow_dirty_mask)
_ONES = np.uint64(S.MASK)
#: the bits ``is_accessed_spte`` and ``spte_ad_enabled`` read (entries equal on these
#: are equally accessed, A/D or not), and with D the bits ``spte_needs_atomic_update``
#: reads of an accessed A/D entry (writable, not dirty)
_ACC_BITS = np.uint64(S.SPTE_MMU_PRESENT_MASK | S.SPTE_AD_ENABLED | S.shadow_accessed_mask
                      | S.VMX_EPT_RWX_MASK)
_DECIDED_BY = _ACC_BITS | _D
#: entries per block of ``age_scan`` (a leaf table's worth)
BLOCK = S.PT_ENTRIES

#: ``age_select`` modes: which young A/D SPTEs a walker clears with an atomic
LOCKLESS = 0  # every one: the lockless walker cannot know who else writes the SPTE
LOCKED = 1  # those ``spte_needs_atomic_update`` says may change under mmu_lock
NONE = 2  # none (the seeded "plain-store-clear" bug)


@njit(cache=True, nogil=True)
def accessed(vals: np.ndarray) -> tuple[np.ndarray, int]:
    """``is_accessed_spte`` per entry (present and, with A/D bits, A set; without them,
    not access-tracked: some RWX bit set), and how many are."""
    n = len(vals)
    out = np.empty(n, np.uint8)
    c = 0
    for i in range(n):
        v = vals[i]
        key = v & _P_AD_A
        x = np.uint8((key == _P_AD_A) | (((key | _A) == _P_A) & ((v & _RWX) != _ZERO)))
        out[i] = x
        c += int(x)
    return out.view(np.bool_), c


@njit(cache=True, nogil=True)
def age_select(vals: np.ndarray, acc: np.ndarray, mode: int, accessed_volatile: bool
               ) -> tuple[np.ndarray, np.ndarray, int, int, int]:
    """Of the entries ``acc`` selects (young, to be cleared): ``ad``, those whose A/D bits
    are enabled (cleared by clearing A; the others are access-tracked one by one), and
    ``atomic``, those of ``ad`` cleared with an atomic (``mode``; for ``LOCKED``,
    ``spte_needs_atomic_update``: A/D off, a writable SPTE not yet dirty, or with
    ``accessed_volatile`` one not yet accessed). Returns (ad, atomic, how many ad, how
    many of ``acc`` are not ad, how many atomic)."""
    n = len(vals)
    ad = np.empty(n, np.uint8)
    atomic = np.empty(n, np.uint8)
    n_ad = 0
    n_noad = 0
    n_atomic = 0
    pick = np.uint64(1) if mode == LOCKLESS else _ZERO  # every ad entry
    check = np.uint64(1) if mode == LOCKED else _ZERO  # those that need it
    vol = np.uint64(1) if accessed_volatile else _ZERO
    one = np.uint64(1)
    for i in range(n):
        v = vals[i]
        a = np.uint64(acc[i])
        on = (v & _AD) >> _AD_SHIFT
        d = a & on
        needs = ((v & _P) >> _P_SHIFT) & (
            (on ^ one) | (((v & _W) >> _W_SHIFT) & (((v & _D) >> _D_SHIFT) ^ one))
            | (vol & (((v & _A) >> _A_SHIFT) ^ one)))
        x = d & (pick | (check & needs))
        ad[i] = np.uint8(d)
        atomic[i] = np.uint8(x)
        n_ad += d
        n_noad += a & (on ^ one)
        n_atomic += x
    return ad.view(np.bool_), atomic.view(np.bool_), n_ad, n_noad, n_atomic


@njit(cache=True, nogil=True, inline="always")
def _age_bits(v: np.uint64, pick: bool, check: bool) -> tuple[bool, bool, bool, bool]:
    """One entry's decisions, as ``accessed`` then ``age_select`` with ``acc`` = accessed
    take them: (accessed, ad, accessed without A/D, atomic). An accessed A/D entry is
    present with A set, so of ``spte_needs_atomic_update`` only "writable, not dirty" is
    left to ask."""
    k = v & _P_AD_A
    d = k == _P_AD_A
    o = ((k | _A) == _P_A) & ((v & _RWX) != _ZERO)
    x = d & (pick | (check & ((v & _W_D) == _W)))
    return d | o, d, o, x


@njit(cache=True, nogil=True)
def age_scan(vals: np.ndarray, mode: int
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int, int, int]:
    """``accessed`` and then ``age_select`` of what it selects, in one read of the chunk:
    (acc, ad, atomic, how many acc, how many ad, how many of acc are not ad, how many
    atomic). No ``accessed_volatile``: it asks whether an A/D entry has A clear, and
    every accessed one has it set.

    By blocks of ``BLOCK`` entries, with the bits that vary within the block (``vary``,
    one branch-free reduction): if none of ``_ACC_BITS`` does, the block is equally
    accessed and A/D throughout, decided once; so is ``atomic``, unless the block's
    entries are accessed A/D ones of a ``LOCKED`` walk and D varies (then ``atomic``
    alone is decided entry by entry). Any other block: every decision per entry."""
    n = len(vals)
    acc = np.empty(n, np.uint8)
    ad = np.empty(n, np.uint8)
    atomic = np.empty(n, np.uint8)
    n_ad = 0
    n_noad = 0
    n_atomic = 0
    pick = mode == LOCKLESS  # every ad entry
    check = mode == LOCKED  # those that need it
    for b0 in range(0, n, BLOCK):
        blk = vals[b0:b0 + BLOCK]
        m = len(blk)
        f_and = _ONES
        f_or = _ZERO
        for i in range(m):
            f = blk[i] & _DECIDED_BY
            f_and &= f
            f_or |= f
        vary = f_and ^ f_or
        b_atomic = atomic[b0:b0 + m]
        if (vary & _ACC_BITS) == _ZERO:  # accessed, A/D: one decision for the block
            a, d, o, x = _age_bits(f_and, pick, check)
            acc[b0:b0 + m] = a
            ad[b0:b0 + m] = d
            n_ad += m * d
            n_noad += m * o
            if (vary & _D) == _ZERO or not (d and check):
                b_atomic[:] = x
                n_atomic += m * x
            else:  # accessed A/D entries, LOCKED: atomic if writable, not dirty
                for i in range(m):
                    x = (blk[i] & _W_D) == _W
                    b_atomic[i] = x
                    n_atomic += x
        else:
            b_acc = acc[b0:b0 + m]
            b_ad = ad[b0:b0 + m]
            for i in range(m):
                a, d, o, x = _age_bits(blk[i], pick, check)
                b_acc[i] = a
                b_ad[i] = d
                b_atomic[i] = x
                n_ad += d
                n_noad += o
                n_atomic += x
    return (acc.view(np.bool_), ad.view(np.bool_), atomic.view(np.bool_), n_ad + n_noad,
            n_ad, n_noad, n_atomic)


@njit(cache=True, nogil=True)
def cleared(old: np.ndarray, ad: np.ndarray) -> tuple[np.ndarray, int]:
    """Which entries of ``ad`` a clear of A found accessed (``old``: the values the clear
    replaced), and how many."""
    n = len(old)
    out = np.empty(n, np.uint8)
    c = 0
    for i in range(n):
        x = np.uint8(ad[i]) & np.uint8((old[i] & _A) >> _A_SHIFT)
        out[i] = x
        c += int(x)
    return out.view(np.bool_), c


@njit(cache=True, nogil=True)
def age_clear(spte: np.ndarray, mode: int
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int, int, int]:
    """``age_scan`` and the clear it decides, in one pass over the live SPTEs: each
    accessed A/D entry gets A cleared in place (how the walker clears it, atomically or
    with a plain write, is ``atomic``: the caller charges each as such). A/D-disabled
    entries are left to the caller (marked for access tracking one by one).

    Returns what ``age_scan`` returns, except that the three masks are filled only when
    some block differs from another: when every block was decided once, and the same
    (the common case: all young, all old), each count is 0 or the chunk's length and
    the masks are left unwritten (three bytes of writes per entry). So a mask is valid
    at least whenever its count is neither 0 nor the chunk's length.

    Blocks as ``age_scan``'s. Which entries get A cleared depends on each entry alone,
    so after a block decided once as accessed A/D entries the next block is cleared
    while it is read (one pass over it, not a read then a write), noting which entries
    it cleared; should it turn out mixed, its entries' values before the clear are
    those values with A back where it was cleared."""
    n = len(spte)
    acc = np.empty(n, np.uint8)
    ad = np.empty(n, np.uint8)
    atomic = np.empty(n, np.uint8)
    nblocks = (n + BLOCK - 1) // BLOCK
    state = np.empty(nblocks, np.uint8)  # a decided block's (a, d, o, x) bits; 16: mixed
    was = np.empty(BLOCK, np.uint64)  # 1 where the block's read-and-clear cleared A
    n_ad = 0
    n_noad = 0
    n_atomic = 0
    pick = mode == LOCKLESS
    check = mode == LOCKED
    clear = ~_A
    ahead = False  # clear while reading: the previous block was decided accessed A/D
    for b in range(nblocks):
        b0 = b * BLOCK
        blk = spte[b0:b0 + BLOCK]
        m = len(blk)
        f_and = _ONES
        f_or = _ZERO
        if ahead:
            for i in range(m):
                v = blk[i]
                c = np.uint64((v & _P_AD_A) == _P_AD_A)
                blk[i] = v & ~(c << _A_SHIFT)
                was[i] = c
                f = v & _DECIDED_BY
                f_and &= f
                f_or |= f
        else:
            for i in range(m):
                f = blk[i] & _DECIDED_BY
                f_and &= f
                f_or |= f
        vary = f_and ^ f_or
        if (vary & _ACC_BITS) == _ZERO:
            a, d, o, x = _age_bits(f_and, pick, check)
            if (vary & _D) == _ZERO or not (d and check):  # one decision for the block
                state[b] = np.uint8(a) | (np.uint8(d) << 1) | (np.uint8(o) << 2) | (
                    np.uint8(x) << 3)
                n_ad += m * d
                n_noad += m * o
                n_atomic += m * x
                if d and not ahead:
                    for i in range(m):
                        blk[i] &= clear
                ahead = d
                continue
        state[b] = 16
        for i in range(m):
            v = blk[i]
            if ahead:
                v |= was[i] << _A_SHIFT
            a, d, o, x = _age_bits(v, pick, check)
            acc[b0 + i] = a
            ad[b0 + i] = d
            atomic[b0 + i] = x
            n_ad += d
            n_noad += o
            n_atomic += x
            if d:
                blk[i] = v & clear
        ahead = False
    if not decided_alike(state, 16):
        for b in range(nblocks):
            s = state[b]
            if s != 16:
                b0 = b * BLOCK
                b1 = min(b0 + BLOCK, n)
                acc[b0:b1] = s & 1
                ad[b0:b1] = (s >> 1) & 1
                atomic[b0:b1] = (s >> 3) & 1
    return (acc.view(np.bool_), ad.view(np.bool_), atomic.view(np.bool_), n_ad + n_noad,
            n_ad, n_noad, n_atomic)
