"""Shared memory: named arrays of 64-bit words.

A page table is one ``Words`` of 512 entries; a counter is a ``Words`` of one. The data
lives in a numpy ``uint64`` array so the timed driver can age a whole leaf table with one
vectorised operation, while the checker touches one entry per step.

A ``Words`` may be a view into a larger array (an *arena*) that is itself a ``Words``:
scenario set-up lays leaf tables out back to back so that the timed driver can age a run
of consecutive tables with one vector operation on the arena (``hw/tables.py``).

Model code reads and writes ``Words`` only through yielded operations (``sim.ops``).
Invariants and scenario set-up may read ``data`` directly: they run between steps, when
no operation is in flight.
"""

from __future__ import annotations

import numpy as np

MASK64 = (1 << 64) - 1


class Words:
    """A named, freeable array of 64-bit words.

    ``oid`` is the object's identity for partial-order reduction; the driver assigns it
    deterministically (in order of first use) so the same schedule prefix names the same
    objects in every re-execution.
    """

    __slots__ = ("name", "data", "freed", "oid", "freed_by", "addr", "tag", "__weakref__")

    def __init__(self, name: str, n: int, init: int = 0, tag: str | None = None,
                 data: np.ndarray | None = None) -> None:
        if n < 1:
            raise ValueError(f"Words {name!r}: size must be >= 1, got {n}")
        self.name = name
        if data is None:
            self.data = np.full(n, init, dtype=np.uint64)
        else:  # a view into an arena (see ``Machine.new_words``)
            if data.dtype != np.uint64 or data.shape != (n,):
                raise ValueError(f"Words {name!r}: backing must be {n} uint64 words")
            self.data = data
        self.freed = False
        self.freed_by: int | None = None
        self.oid: int | None = None
        self.addr = 0  # set when the machine registers it (``Machine.new_words``)
        #: what kind of memory this is ("spt", "pte", ...): invariants watch tags, so they
        #: are re-evaluated only after a write to memory they read
        self.tag = tag

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> int:
        """Plain read for invariants and set-up (not a model operation)."""
        return int(self.data[i])

    def __setitem__(self, i: int, v: int) -> None:
        """Plain write for scenario set-up only (not a model operation)."""
        self.data[i] = v & MASK64

    def __repr__(self) -> str:
        state = " freed" if self.freed else ""
        return f"<Words {self.name} x{len(self.data)}{state}>"
