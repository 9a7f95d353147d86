"""Synchronisation objects with the kernel's semantics.

- ``SpinLock``: exclusive, FIFO hand-over as with the kernel's queued spinlock.
- ``Mutex``: exclusive and sleeping; acquiring it in atomic context is a bug.
- ``RWLock``: the kernel's queued rwlock (``kernel/locking/qrwlock.c``). Readers share,
  a writer excludes everyone, and waiters are served in FIFO order, so once a writer is
  waiting, new readers queue behind it instead of starving it. That fairness is what makes
  a write-locked aging pass stall every vCPU that faults on ``kvm->mmu_lock`` for read.
- ``RcuDomain``: RCU (``sleepable=False``) or SRCU (``sleepable=True``). A grace period
  started at time t ends once every read section open at t has closed. Each SRCU domain is
  separate: an SRCU reader does not hold up an RCU grace period and vice versa.

These classes are pure state machines; the drivers call them when they execute a lock or
RCU operation. They never block by themselves: ``request`` says whether the lock was
granted at once, and a refused thread is queued until ``grantable`` says it is its turn.
"""

from __future__ import annotations

from typing import Final

from mypy_extensions import mypyc_attr

EXCL: Final = 0
READ: Final = 1


# compiled by mypyc, these may be subclassed in interpreted code (the tests' broken locks)
@mypyc_attr(allow_interpreted_subclasses=True)
class Lock:
    """A lock with a FIFO wait queue. ``mode`` is ``EXCL`` or ``READ``."""

    kind = "lock"
    sleeping = False
    shared_ok = False

    __slots__ = ("name", "oid", "owner", "readers", "queue", "acquisitions", "contended")

    def __init__(self, name: str) -> None:
        self.name = name
        self.oid: int | None = None
        self.owner: int | None = None  # exclusive holder (writer)
        self.readers: dict[int, int] = {}  # reader tid -> hold count
        self.queue: list[tuple[int, int]] = []  # (tid, mode), FIFO
        self.acquisitions = 0
        self.contended = 0

    # -- queries -------------------------------------------------------------------
    def compatible(self, mode: int) -> bool:
        if self.owner is not None:
            return False
        return mode == READ or not self.readers

    def held_by(self, tid: int) -> bool:
        owner = self.owner
        return (owner is not None and owner == tid) or tid in self.readers

    def is_free(self) -> bool:
        return self.owner is None and not self.readers

    def grantable(self, tid: int) -> bool:
        """A queued waiter may take the lock: it is at the head and the lock is compatible."""
        q = self.queue
        return bool(q) and q[0][0] == tid and self.compatible(q[0][1])

    # -- transitions ---------------------------------------------------------------
    def request(self, tid: int, mode: int) -> bool:
        """Try to take the lock. True: taken. False: queued (the caller now waits)."""
        if not self.queue and self.compatible(mode):
            self._take(tid, mode)
            return True
        self.queue.append((tid, mode))
        self.contended += 1
        return False

    def grant(self, tid: int) -> None:
        """Hand the lock to the head waiter ``tid`` (``grantable(tid)`` must hold)."""
        t, mode = self.queue.pop(0)
        assert t == tid
        self._take(tid, mode)

    def _take(self, tid: int, mode: int) -> None:
        self.acquisitions += 1
        if mode == EXCL:
            self.owner = tid
        else:
            self.readers[tid] = self.readers.get(tid, 0) + 1

    def release(self, tid: int, mode: int) -> str | None:
        """Release; returns an error message if ``tid`` did not hold it in ``mode``."""
        if mode == EXCL:
            owner = self.owner
            if owner is None or owner != tid:
                return f"{self.kind} {self.name} released by a thread that does not hold it"
            self.owner = None
            return None
        n = self.readers.get(tid, 0)
        if n == 0:
            return f"read_unlock({self.name}) by a thread that does not hold it for read"
        if n == 1:
            del self.readers[tid]
        else:
            self.readers[tid] = n - 1
        return None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} owner={self.owner} readers={self.readers}>"


class SpinLock(Lock):
    kind = "spinlock"
    __slots__ = ()


class Mutex(Lock):
    kind = "mutex"
    sleeping = True
    __slots__ = ()


@mypyc_attr(allow_interpreted_subclasses=True)
class RWLock(Lock):
    """Queued rwlock: shared readers, exclusive writer, FIFO waiters (writer fairness)."""

    kind = "rwlock"
    shared_ok = True
    __slots__ = ()


@mypyc_attr(allow_interpreted_subclasses=True)
class RcuDomain:
    """An RCU (or, with ``sleepable=True``, SRCU) domain.

    Read sections nest per thread. A grace period is a snapshot of the read sections open
    when it starts, identified by (thread, section number) so that a reader which leaves
    and re-enters does not hold the grace period up.
    """

    __slots__ = ("name", "sleepable", "oid", "depth", "section", "grace_periods")

    def __init__(self, name: str = "rcu", sleepable: bool = False) -> None:
        self.name = name
        self.sleepable = sleepable
        self.oid: int | None = None
        self.depth: dict[int, int] = {}  # tid -> nesting depth (only while > 0)
        self.section: dict[int, int] = {}  # tid -> number of its current outermost section
        self.grace_periods = 0

    def read_lock(self, tid: int) -> None:
        d = self.depth.get(tid, 0)
        if d == 0:
            self.section[tid] = self.section.get(tid, 0) + 1
        self.depth[tid] = d + 1

    def read_unlock(self, tid: int) -> str | None:
        d = self.depth.get(tid, 0)
        if d == 0:
            return f"{self.name}: read_unlock without read_lock"
        if d == 1:
            del self.depth[tid]
        else:
            self.depth[tid] = d - 1
        return None

    def in_reader(self, tid: int) -> bool:
        return tid in self.depth

    def start_gp(self) -> tuple[tuple[int, int], ...]:
        """Snapshot the open read sections: the grace period waits for exactly these."""
        self.grace_periods += 1
        return tuple((t, self.section[t]) for t in sorted(self.depth))

    def gp_done(self, snapshot: tuple[tuple[int, int], ...]) -> bool:
        for t, sec in snapshot:
            if t in self.depth and self.section[t] == sec:
                return False
        return True

    def __repr__(self) -> str:
        kind = "SRCU" if self.sleepable else "RCU"
        return f"<{kind} {self.name} readers={sorted(self.depth)}>"
