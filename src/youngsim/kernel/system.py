"""The modelled host: one machine, its global RCU, the design and MMU variant, and the
ghost state that invariants and accuracy counters read.

*Ghost* state is bookkeeping the kernel does not have: what the guest really accessed
since each page was last aged, and which SPTE value each legitimate writer installed.
Model code updates it in the thread-local code right after the operation it describes
(so it changes atomically with that operation), and only invariants and counters read it.
"""

from __future__ import annotations

from array import array
from typing import TYPE_CHECKING, Any

import numpy as np

from ..sim import Machine, RcuDomain, Violation

if TYPE_CHECKING:
    from ..designs.base import Design

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT


class Ghost:
    """Ground truth per guest page (indexed by gfn), one byte per page so that a guest
    of hundreds of millions of pages fits (a Python list would take 8 bytes a page)."""

    def __init__(self, npages: int) -> None:
        self.npages = npages
        #: the guest touched the page since the aging caller last decided young/old for it
        self.accessed = np.zeros(npages, dtype=bool)


class GfnSet:
    """The gfns a monitored call saw young (or cleared): single gfns, plus chunks kept as
    (first gfn, length, the mask packed a bit a page, or None when every page is in),
    so that a chunked walker records a chunk without building a Python set of its pages
    (one call over a 1 TiB guest records 2 x 268 M pages). Truth is cheap; iteration
    builds the set once."""

    def __init__(self) -> None:
        self._set: set[int] = set()
        self._chunks: list[tuple[int, int, np.ndarray | None]] = []

    def add(self, gfn: int) -> None:
        self._set.add(gfn)

    def add_mask(self, first: int, mask: np.ndarray, n: int | None = None) -> None:
        """Gfn ``first + k`` wherever ``mask[k]``; ``n``, if given, is how many are (a
        walker's kernel counted them: no pass over the mask to ask any/all)."""
        if n is None:
            n = int(np.count_nonzero(mask))
        if n:  # (packbits copies: the caller may reuse its mask)
            self._chunks.append((first, len(mask),
                                 None if n == len(mask) else np.packbits(mask)))

    def _all(self) -> set[int]:
        for first, n, packed in self._chunks:
            idx = (np.arange(n) if packed is None
                   else np.flatnonzero(np.unpackbits(packed, count=n)))
            self._set.update((first + idx).tolist())
        self._chunks.clear()
        return self._set

    def __bool__(self) -> bool:
        return bool(self._set) or bool(self._chunks)

    def __iter__(self) -> Any:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())

    def __contains__(self, gfn: object) -> bool:
        return gfn in self._all()


class System:
    """Everything one modelled host shares: pass it to every model function."""

    def __init__(self, m: Machine, design: "Design", mmu: str, npages: int,
                 mutant: str | None = None) -> None:
        self.m = m
        self.design = design
        self.mmu = mmu
        self.rcu = RcuDomain("rcu")
        self.ghost = Ghost(npages)
        self.mutant = mutant
        self.kvms: list[Any] = []
        self.mm: Any = None
        #: /sys/kernel/mm/lru_gen/enabled: 0x1 core, 0x2 mm walk, 0x4 non-leaf young,
        #: 0x8 secondary-MMU walk (yu-v2 patch 10 adds the last); all on by default
        self.lru_gen_enabled = 0x000F
        self._calls: dict[int, list[dict[str, Any]]] = {}
        #: measured values by key: machine ints (8 bytes each), not a list of Python ints
        #: (about 36 bytes each): a full-size run records one per fault, 29.4 M
        self.samples: dict[str, array[int]] = {}
        #: let vCPUs run their first touches of a leaf table's pages as fault streams
        #: (``KvmArchMmu.fault_stream``: the same operations, fewer resumptions of
        #: model code); False runs every access through ``guest_access``
        self.fault_streams = True
        m.use_rcu_sched(self.rcu)

    def bug(self, name: str) -> bool:
        """Is the seeded bug ``name`` active? (``check/mutants.py``)"""
        return self.mutant == name

    def count(self, key: str, n: int = 1) -> None:
        self.m.count(key, n)

    def sample(self, key: str, value: int) -> None:
        """Record a measured value (a latency in virtual ns, from ``Machine.now``)."""
        xs = self.samples.get(key)
        if xs is None:
            xs = self.samples[key] = array("q")
        xs.append(value)

    # -- per-call ghost records for the API-contract monitors ---------------------------
    # A monitor opens a record around a call; the secondary MMU's code notes in every
    # open record of the running thread what it saw young, what it cleared, which
    # subscriber ran and which path it took. Records nest (walker, then subscriber).
    def begin_call(self) -> dict[str, Any]:
        t = self.m.current
        rec: dict[str, Any] = {"young": GfnSet(), "cleared": GfnSet(), "subscribers": [],
                               "paths": []}
        if t is not None:
            self._calls.setdefault(t.tid, []).append(rec)
        return rec

    def end_call(self) -> None:
        t = self.m.current
        if t is not None and self._calls.get(t.tid):
            self._calls[t.tid].pop()

    def _records(self) -> list[dict[str, Any]]:
        t = self.m.current
        return self._calls.get(t.tid, []) if t is not None else []

    def ghost_seen_young(self, gfn: int) -> None:
        for rec in self._records():
            rec["young"].add(gfn)

    def ghost_cleared(self, gfn: int) -> None:
        """The running thread's clear removed the accessed state of ``gfn``."""
        for rec in self._records():
            rec["cleared"].add(gfn)

    def ghost_seen_young_many(self, first: int, mask: np.ndarray,
                              n: int | None = None) -> None:
        """``ghost_seen_young`` for a chunk: gfn ``first + k`` wherever ``mask[k]``
        (``n`` of them, if the caller knows)."""
        for rec in self._records():
            rec["young"].add_mask(first, mask, n)

    def ghost_cleared_many(self, first: int, mask: np.ndarray, n: int | None = None
                           ) -> None:
        """``ghost_cleared`` for a chunk: gfn ``first + k`` wherever ``mask[k]``
        (``n`` of them, if the caller knows)."""
        for rec in self._records():
            rec["cleared"].add_mask(first, mask, n)

    def ghost_note(self, key: str, value: Any) -> None:
        for rec in self._records():
            rec[key].append(value)

    def contract(self, cond: Any, message: str) -> None:
        """An API-contract check: the design's documented promise, checked at run time."""
        if not cond:
            raise Violation("api-contract", message)
