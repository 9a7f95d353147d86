"""Operations: the only way model code touches shared state.

A model thread is a generator. Each time it needs shared memory, a lock or RCU it
*yields* an operation built by one of the constructors below, and the driver (checker or
timed) decides when that operation runs and sends back its result::

    old = yield cas(spte_table, i, expected, new)

Everything between two yields is thread-local computation and runs atomically with the
preceding operation. That is the contract that makes exploring interleavings sound: two
schedules that order the same operations the same way are the same execution.

An operation carries its *footprint* (``obj``, ``lo``, ``hi``, ``write``): the object it
touches, the word range, and whether it may modify it. The checker's partial-order
reduction treats two operations as independent exactly when their footprints do not
conflict (different objects, disjoint ranges, or both reads). Locks and RCU domains are
objects too: every lock operation writes its lock; ``rcu_read_lock``/``unlock`` only read
their domain (readers never exclude each other), while grace-period operations write it.
"""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING, Any, Callable, Final

if TYPE_CHECKING:
    from .memory import Words
    from .sync import Lock, RcuDomain

# Operation kinds. Small ints so the drivers can dispatch on a tuple index; ``Final`` so
# that, compiled, they are constants.
LOAD: Final = 0
STORE: Final = 1
CAS: Final = 2
XCHG: Final = 3
FETCH_AND: Final = 4
FETCH_OR: Final = 5
FETCH_ADD: Final = 6
WAIT: Final = 7  # wait_until: block until (word & mask) == value, then return the word
FREE: Final = 8
ALLOC: Final = 9
LOCK: Final = 10  # spinlock / mutex acquire
UNLOCK: Final = 11
READ_LOCK: Final = 12
READ_UNLOCK: Final = 13
WRITE_LOCK: Final = 14
WRITE_UNLOCK: Final = 15
GRANT: Final = 16  # internal: a queued lock waiter takes the lock
RCU_READ_LOCK: Final = 17
RCU_READ_UNLOCK: Final = 18
SYNC_RCU: Final = 19  # synchronize_rcu: starts a grace period ...
GP_WAIT: Final = 20  # internal: ... and waits for it
CALL_RCU: Final = 21
MIGHT_SLEEP: Final = 22
SPAWN: Final = 23
NOP: Final = 24  # a scheduling point with no shared effect (cpu_relax, a timed delay)
VLOAD: Final = 25  # vector ops: the same semantics on a word range, for chunked walkers
VFETCH_AND: Final = 26
VFETCH_OR: Final = 27
VSTORE: Final = 28
VXCHG: Final = 29
VCAS: Final = 30
VUPDATE: Final = 31  # a per-word update a function decides from each word (vupdate)
#: n cycles of (acquire, hold, release, gap) on one lock (``lock_cycles``): never pending
#: itself, the executor runs it as those ordinary operations, so it has no cost entry
LOCK_CYCLES: Final = 32

KIND_NAMES = {
    LOAD: "load", STORE: "store", CAS: "cas", XCHG: "xchg", FETCH_AND: "fetch_and",
    FETCH_OR: "fetch_or", FETCH_ADD: "fetch_add", WAIT: "wait_until", FREE: "free",
    ALLOC: "alloc", LOCK: "lock", UNLOCK: "unlock", READ_LOCK: "read_lock",
    READ_UNLOCK: "read_unlock", WRITE_LOCK: "write_lock", WRITE_UNLOCK: "write_unlock",
    GRANT: "acquire", RCU_READ_LOCK: "rcu_read_lock", RCU_READ_UNLOCK: "rcu_read_unlock",
    SYNC_RCU: "synchronize_rcu", GP_WAIT: "gp_wait", CALL_RCU: "call_rcu",
    MIGHT_SLEEP: "might_sleep", SPAWN: "spawn", NOP: "nop", VLOAD: "vload",
    VFETCH_AND: "vfetch_and", VFETCH_OR: "vfetch_or", VSTORE: "vstore", VXCHG: "vxchg",
    VCAS: "vcas", VUPDATE: "vupdate",
}

#: Kinds that may sleep: illegal inside an RCU read section or with a spinning lock held.
SLEEPING_KINDS = frozenset({SYNC_RCU, MIGHT_SLEEP})


class Op:
    """One yielded operation: its kind, footprint and arguments.

    ``cost`` is an optional label the timed driver looks up in the cost model (for example
    ``"spte_walk"``); the checker ignores it. ``sleeps`` marks operations that may sleep
    (a mutex acquire, synchronize_rcu), so sleeping in atomic context can be reported.
    """

    __slots__ = ("kind", "obj", "lo", "hi", "write", "a", "b", "cost", "sleeps")

    def __init__(
        self,
        kind: int,
        obj: Any,
        lo: int = 0,
        hi: int = 1,
        write: bool = True,
        a: Any = None,
        b: Any = None,
        cost: str | None = None,
        sleeps: bool = False,
    ) -> None:
        self.kind = kind
        self.obj = obj
        self.lo = lo
        self.hi = hi
        self.write = write
        self.a = a
        self.b = b
        self.cost = cost
        self.sleeps = sleeps

    def conflicts(self, other: "Op") -> bool:
        """True if the two operations do not commute (same object, overlapping, a write)."""
        o = self.obj
        if o is None or other.obj is None or o.oid != other.obj.oid:
            return False
        if not (self.write or other.write):
            return False
        return self.lo < other.hi and other.lo < self.hi

    def describe(self) -> str:
        """Human-readable form for step tables: ``cas(spt[3], 0x1, 0x0)``."""
        if self.kind == LOCK_CYCLES:
            return f"lock_cycles({getattr(self.obj, 'name', self.obj)}, {self.b!r})"
        name = KIND_NAMES[self.kind]
        if self.kind in (LOAD, STORE, CAS, XCHG, FETCH_AND, FETCH_OR, FETCH_ADD, WAIT):
            where = f"{self.obj.name}[{self.lo}]"
            args = [x for x in (self.a, self.b) if x is not None]
            return f"{name}({', '.join([where] + [_hex(x) for x in args])})"
        if self.kind in (VLOAD, VFETCH_AND, VFETCH_OR, VSTORE, VXCHG, VCAS, VUPDATE):
            where = f"{self.obj.name}[{self.lo}:{self.hi}]"
            extra = (f", {_hex(self.a)}" if isinstance(self.a, int) else
                     f", {getattr(self.a, '__name__', '?')}" if self.kind == VUPDATE else "")
            return f"{name}({where}{extra})"
        if self.kind == CALL_RCU:
            return f"call_rcu({self.obj.name}, {getattr(self.a, '__name__', self.a)})"
        if self.kind == SPAWN:
            return f"spawn({getattr(self.a, '__name__', self.a)})"
        if self.kind == NOP:
            return f"nop({self.a})" if self.a else "nop"
        if self.obj is None:
            return name
        return f"{name}({self.obj.name})"


def _hex(x: Any) -> str:
    return hex(x) if isinstance(x, int) and not isinstance(x, bool) else repr(x)


# Hot path: every yield builds one Op, so the constructors below do not go through
# ``Op.__init__`` (a class call costs about 1.8x as much in CPython 3.11): ``_op``
# allocates with ``object.__new__`` and fills all nine slots from positional arguments.
# The result is an ordinary, fully initialised ``Op``. Compiled (mypyc, see
# docs/architecture.md), ``Op`` is a native class whose constructor is the fast way and
# which ``object.__new__`` refuses.
_new = object.__new__
#: this module runs compiled by mypyc (its file is an extension module, not the source)
NATIVE: Final = not __file__.endswith(".py")


def _op(kind: int, obj: Any, lo: int, hi: int, write: bool, a: Any, b: Any,
        cost: str | None, sleeps: bool) -> Op:
    if NATIVE:
        return Op(kind, obj, lo, hi, write, a, b, cost, sleeps)
    op = _new(Op)
    op.kind = kind
    op.obj = obj
    op.lo = lo
    op.hi = hi
    op.write = write
    op.a = a
    op.b = b
    op.cost = cost
    op.sleeps = sleeps
    return op


# --- memory ---------------------------------------------------------------------------

def load(w: "Words", i: int, cost: str | None = None) -> Op:
    """READ_ONCE(w[i])."""
    return _op(LOAD, w, i, i + 1, False, None, None, cost, False)


def store(w: "Words", i: int, v: int, cost: str | None = None) -> Op:
    """WRITE_ONCE(w[i], v)."""
    return _op(STORE, w, i, i + 1, True, v, None, cost, False)


def cas(w: "Words", i: int, old: int, new: int, cost: str | None = None) -> Op:
    """cmpxchg(&w[i], old, new): returns the value found; it succeeded iff that == old."""
    return _op(CAS, w, i, i + 1, True, old, new, cost, False)


def xchg(w: "Words", i: int, v: int, cost: str | None = None) -> Op:
    """xchg(&w[i], v): returns the old value."""
    return _op(XCHG, w, i, i + 1, True, v, None, cost, False)


def fetch_and(w: "Words", i: int, mask: int, cost: str | None = None) -> Op:
    """atomic64_fetch_and: w[i] &= mask, returns the old value."""
    return _op(FETCH_AND, w, i, i + 1, True, mask, None, cost, False)


def fetch_or(w: "Words", i: int, mask: int, cost: str | None = None) -> Op:
    """atomic64_fetch_or: w[i] |= mask, returns the old value."""
    return _op(FETCH_OR, w, i, i + 1, True, mask, None, cost, False)


def fetch_add(w: "Words", i: int, delta: int, cost: str | None = None) -> Op:
    """atomic64_fetch_add (wrapping at 64 bits): returns the old value."""
    return _op(FETCH_ADD, w, i, i + 1, True, delta, None, cost, False)


def wait_until(w: "Words", i: int, mask: int, value: int, cost: str | None = None) -> Op:
    """Spin until ``w[i] & mask == value``; returns the word.

    Models a spin-wait loop (``while (test_bit(...)) cpu_relax();``) as one blocking
    operation so that exhaustive exploration stays finite: the thread is simply not
    runnable until the condition holds.
    """
    return _op(WAIT, w, i, i + 1, False, mask, value, cost, False)


def vload(w: "Words", lo: int, hi: int, cost: str | None = None) -> Op:
    """Load words ``w[lo:hi]`` (a chunk); returns a numpy copy."""
    return _op(VLOAD, w, lo, hi, False, None, None, cost, False)


def vstore(w: "Words", lo: int, values: Any, select: Any = None,
           cost: str | None = None) -> Op:
    """Store a numpy array of words at ``w[lo:lo+len(values)]`` (plain stores, one per
    word; with ``select``, only where it is True)."""
    return _op(VSTORE, w, lo, lo + len(values), True, values, select, cost, False)


def vxchg(w: "Words", lo: int, hi: int, value: int, select: Any = None,
          cost: str | None = None) -> Op:
    """Atomic exchange of ``value`` into each selected word of ``w[lo:hi]``; returns the
    old words."""
    return _op(VXCHG, w, lo, hi, True, value, select, cost, False)


def vfetch_and(w: "Words", lo: int, hi: int, mask: int, select: Any = None,
               cost: str | None = None) -> Op:
    """Atomic AND of ``mask`` into each selected word of ``w[lo:hi]``; returns old words.

    ``select`` is an optional boolean array: only those words are updated. Per word the
    update is atomic; the chunk as a whole is not (a vector of atomics, as a loop of
    ``atomic64_fetch_and`` would be).
    """
    return _op(VFETCH_AND, w, lo, hi, True, mask, select, cost, False)


def vfetch_or(w: "Words", lo: int, hi: int, mask: int, select: Any = None,
              cost: str | None = None) -> Op:
    """Atomic OR of ``mask`` into each selected word of ``w[lo:hi]``; returns old words."""
    return _op(VFETCH_OR, w, lo, hi, True, mask, select, cost, False)


def vcas(w: "Words", lo: int, hi: int, old: Any, new: Any, select: Any = None,
         cost: str | None = None) -> Op:
    """A cmpxchg of each selected word of ``w[lo:hi]``: word ``k`` becomes ``new[k]``
    if it equals ``old[k]`` (numpy arrays of the chunk's length). Returns the words
    found (word ``k``'s cmpxchg succeeded iff ``found[k] == old[k]``). Per word the
    update is atomic; the chunk as a whole is not (a loop of ``try_cmpxchg64``)."""
    return _op(VCAS, w, lo, hi, True, (old, new), select, cost, False)


def vupdate(w: "Words", lo: int, hi: int, fn: Callable[[Any], tuple[Any, ...]],
            cost: str | None = None, atomic_cost: str | None = None,
            store_cost: str | None = None, cmpxchg: bool = False) -> Op:
    """Read each word of ``w[lo:hi]`` and update it as ``fn`` decides from its current
    value: a loop of "read the word, test it, clear what the test found" with each
    word's read and update adjacent, as they are in a kernel loop over entries, rather
    than a whole chunk apart (a ``vload`` of the chunk, then a vector atomic).

    ``fn(view)`` gets the live words (a numpy view), updates them in place and returns
    ``(result, atomic, n_atomic, stored, n_stored)``: what the thread receives, then the
    words it updated with an atomic and those it updated with a plain store, each a
    boolean array over the chunk (``None``: every word, or none if its count is 0) and
    its count (checked against the array). Like every operation it is one step, so no
    other thread runs inside the chunk: that models each word's read and update being
    adjacent, and hides the interleavings between words of the chunk (which the
    checker's chunks of one entry, with a separate load and update, explore).

    The timed driver charges ``cost`` per word read, then ``atomic_cost`` per atomic
    word (with the contended-line surcharge of a vector atomic) and ``store_cost`` per
    stored word (unlabelled: as ``kinds.vfetch_and``, or ``vcas`` with ``cmpxchg``, and
    ``kinds.vstore``), the writes dated after the read. For a thread running alone that
    is exactly what it charges the ``vload``, vector atomic and ``vstore`` it
    replaces; with others, a chunk hides their operations' places inside it, and a
    write dated after the read may make another CPU's atomic in that interval the
    contended one instead of this. ``cmpxchg``: the atomics are cmpxchgs of the value
    just read (a ``vcas`` they replace), counted as attempts that succeeded."""
    return _op(VUPDATE, w, lo, hi, True, fn, (atomic_cost, store_cost, cmpxchg), cost,
               False)


def free(w: "Words", cost: str | None = None) -> Op:
    """Free an object: every later access to it is reported as a use-after-free."""
    return _op(FREE, w, 0, max(len(w), 1), True, None, None, cost, False)


def alloc(name: str, n: int, init: int = 0, tag: str | None = None,
          cost: str | None = None) -> Op:
    """Allocate a fresh, zeroed (or ``init``-filled) array of ``n`` words; returns it.

    A fresh object is invisible to other threads until published, so allocation commutes
    with everything.
    """
    return _op(ALLOC, None, 0, 0, False, name, (n, init, tag), cost, False)


# --- locks ----------------------------------------------------------------------------

def spin_lock(lock: "Lock", cost: str | None = None) -> Op:
    return _op(LOCK, lock, 0, 1, True, None, None, cost, False)


def spin_unlock(lock: "Lock", cost: str | None = None) -> Op:
    return _op(UNLOCK, lock, 0, 1, True, None, None, cost, False)


def mutex_lock(lock: "Lock", cost: str | None = None) -> Op:
    """Acquire a sleeping lock: illegal in atomic context (RCU read side, spinlock held)."""
    return _op(LOCK, lock, 0, 1, True, None, None, cost, True)


def mutex_unlock(lock: "Lock", cost: str | None = None) -> Op:
    return _op(UNLOCK, lock, 0, 1, True, None, None, cost, False)


def read_lock(lock: "Lock", cost: str | None = None) -> Op:
    return _op(READ_LOCK, lock, 0, 1, True, None, None, cost, False)


def read_unlock(lock: "Lock", cost: str | None = None) -> Op:
    return _op(READ_UNLOCK, lock, 0, 1, True, None, None, cost, False)


def write_lock(lock: "Lock", cost: str | None = None) -> Op:
    return _op(WRITE_LOCK, lock, 0, 1, True, None, None, cost, False)


def write_unlock(lock: "Lock", cost: str | None = None) -> Op:
    return _op(WRITE_UNLOCK, lock, 0, 1, True, None, None, cost, False)


def lock_cycles(lock: "Lock", n: int, read: bool = False, hold: str | None = None,
                gap: str | None = None, acquire: str | None = None,
                release: str | None = None, body: "CycleCas | None" = None) -> Op:
    """``n`` cycles of: take ``lock``, ``nop(cost=hold)``, release it, ``nop(cost=gap)``;
    returns None once the last cycle's gap has run.

    ``body``: each cycle also does, right after taking the lock, cycle ``i``'s
    ``cas(body.words, body.lo + i, body.old[i], body.new[i], cost=body.cost)``. At the
    first one that fails (the word was not ``old[i]``) that cycle releases the lock and
    the run ends there, without its gap, as a fault's ``RET_PF_RETRY`` does. With a
    body the operation returns how many cycles' cmpxchg succeeded (``n`` if all did).

    ``read``: an rwlock's read side; else the lock exclusively (``write_lock`` on an
    rwlock, ``spin_lock`` on a spinlock, ``mutex_lock`` on a sleeping lock). ``acquire``
    and ``release`` label the lock operations; a ``hold`` or ``gap`` of None leaves that
    ``nop`` out. ``n`` must be an integer (a float is a TypeError, as ``range``'s);
    a negative ``n`` is the machine's ``model-error`` (a count gone wrong), not zero
    cycles.

    The executor runs it as exactly those operations, one step each, without resuming
    the generator between them (``Machine._next_cycle_op``): both drivers see, charge
    and interleave the same steps as a loop yielding them, so the checker explores the
    same schedules and the timed driver computes the same waits, fairness and costs.
    What it saves is the model code's round trip per operation, for the per-page lock
    traffic of a chunked walker or fault stream (docs/timed.md, the full-scale plan's
    step 3)."""
    acq, rel = _take_and_drop(lock, read, acquire, release)
    seq = [acq]
    if body is not None:
        # the template of each cycle's cmpxchg: the executor builds cycle i's from it
        seq.append(_op(CAS, body.words, body.lo, body.lo + 1, True, body.old, body.new,
                       body.cost, False))
    if hold is not None:
        seq.append(nop(cost=hold))
    seq.append(rel)
    if gap is not None:
        seq.append(nop(cost=gap))
    return _op(LOCK_CYCLES, lock, 0, 1, True, tuple(seq), operator.index(n), None, False)


def cycle_cas(template: Op, i: int) -> Op:
    """Cycle ``i``'s cmpxchg of a ``lock_cycles`` body, from its template (the op
    ``lock_cycles`` puts after the acquire): ``cas(words, lo + i, old[i], new[i])``.
    The executor builds it when the cycle reaches it; the cycle engine too."""
    lo = template.lo + i
    return _op(CAS, template.obj, lo, lo + 1, True, int(template.a[i]),
               int(template.b[i]), template.cost, False)


def grant(lock: "Lock", mode: int, cost: str | None) -> Op:
    """Internal: the wait of a refused lock request (``mode``: ``EXCL`` or ``READ``),
    pending until the lock can be handed to this thread; ``cost`` is the request's."""
    return _op(GRANT, lock, 0, 1, True, mode, None, cost, False)


class CycleCas:
    """``lock_cycles``'s per-cycle cmpxchg: cycle ``i`` does ``cas(words, lo + i,
    old[i], new[i], cost)`` (``old`` and ``new``: sequences of at least the cycle
    count, e.g. numpy uint64 arrays)."""

    __slots__ = ("words", "lo", "old", "new", "cost")

    def __init__(self, words: "Words", lo: int, old: Any, new: Any,
                 cost: str | None = None) -> None:
        self.words = words
        self.lo = operator.index(lo)
        self.old = old
        self.new = new
        self.cost = cost


class Each:
    """One operation of every cycle of a ``lock_program`` that varies with the cycle
    ``i``: a load, a store or a cmpxchg of word ``lo + stride * i`` (``each_load``,
    ``each_store``, ``each_cas``)."""

    __slots__ = ("op", "stride", "values", "expect", "mask")

    def __init__(self, op: Op, stride: int, values: Any, expect: Any, mask: int) -> None:
        self.op = op
        self.stride = operator.index(stride)
        self.values = values  # a store's value, a cmpxchg's new value: per cycle
        self.expect = expect  # a load's or cmpxchg's expected value: per cycle, or one
        self.mask = mask


def each_load(words: "Words", lo: int, stride: int = 1, expect: Any = None,
              mask: int = (1 << 64) - 1, cost: str | None = None) -> Each:
    """Cycle ``i`` loads ``words[lo + stride * i]``. With ``expect`` (an int, or one
    value per cycle) it is a *check*: if ``value & mask`` differs, the cycle fails."""
    return Each(load(words, lo, cost), stride, None, expect, mask)


def each_store(words: "Words", lo: int, values: Any, stride: int = 1,
               cost: str | None = None) -> Each:
    """Cycle ``i`` stores ``values[i]`` to ``words[lo + stride * i]``."""
    return Each(store(words, lo, 0, cost), stride, values, None, (1 << 64) - 1)


def each_cas(words: "Words", lo: int, old: Any, new: Any, stride: int = 1,
             cost: str | None = None) -> Each:
    """Cycle ``i`` does ``cas(words, lo + stride * i, old[i], new[i])``; it fails if
    the word was not ``old[i]``."""
    return Each(cas(words, lo, 0, 0, cost), stride, new, old, (1 << 64) - 1)


class CycleProgram:
    """What ``lock_program`` yields (as its operation's ``a``): the operations of one
    cycle, ``seq`` (the acquire, the locked part, the release, the gap), and per
    position: the stride, values, expected values and mask of an ``Each`` (None for an
    operation run as it is), a note to call, and profile frames. ``rel`` is the
    release's position."""

    __slots__ = ("seq", "each", "notes", "frames", "rel")

    def __init__(self, seq: tuple[Op, ...], each: tuple["Each | None", ...],
                 notes: tuple[Any, ...], frames: tuple[tuple[str, ...], ...],
                 rel: int) -> None:
        self.seq = seq
        self.each = each
        self.notes = notes
        self.frames = frames
        self.rel = rel


def _take_and_drop(lock: "Lock", read: bool, acquire: str | None, release: str | None
                   ) -> tuple[Op, Op]:
    """A cycle's acquire and release of ``lock`` (``lock_cycles``' rule for ``read``)."""
    if read:
        return read_lock(lock, acquire), read_unlock(lock, release)
    if lock.shared_ok:
        return write_lock(lock, acquire), write_unlock(lock, release)
    if lock.sleeping:
        return mutex_lock(lock, acquire), mutex_unlock(lock, release)
    return spin_lock(lock, acquire), spin_unlock(lock, release)


def lock_program(lock: "Lock | None", n: int, locked: Any = (), gap: Any = (),
                 read: bool = False,
                 acquire: str | None = None, release: str | None = None,
                 notes: dict[int, Callable[[int], None]] | None = None,
                 frames: dict[int, tuple[str, ...]] | None = None) -> Op:
    """``n`` cycles of: take ``lock``; the operations ``locked``; release it; the
    operations ``gap``: a fault stream's cycles, each page's fault as the operations
    the per-page code would yield (docs/timed.md, "Fault streams").

    Each operation is an ``Op`` run as it is every cycle (a ``nop``, a ``wait_until``,
    a store to a fixed word...) or an ``Each`` that varies with the cycle. A *check* (an
    ``each_load`` with ``expect``, or an ``each_cas``) that fails ends the run right
    after it, so that the model code goes on from what it found: in the locked part
    the thread still holds the lock (the model code releases it). The operation
    returns ``(i, j, v)``: the cycle, the position in the cycle (0 is the acquire,
    ``len(locked) + 1`` the release) and the value found of the failed check, or
    ``(n, -1, None)`` when every cycle ran.

    ``notes[j]`` is called with the cycle ``i`` right after position ``j`` ran (and its
    check passed), as model code after a yield would run: to record ghost state or a
    time stamp (``Machine.now``). ``frames[j]`` are function names the profile adds
    below the thread's own stack for position ``j``'s samples.

    With ``lock`` None a cycle is the operations ``gap`` alone (``locked`` must be
    empty): positions count from 0 and a failed check ends the run right after it.

    ``read`` and the labels are ``lock_cycles``'s. Both drivers run each operation as
    an ordinary step (``Machine._next_cycle_op``), and the cycle engine
    (``sim/cycles.py``) may run a program on a lock in compiled code: it copies the
    ``Each`` values once, so they must not change after the program is yielded."""
    if lock is None:
        if locked or not gap:
            raise ValueError("lock_program: without a lock, a cycle is the operations "
                             "of gap (at least one), none under a lock")
        return _program(None, n, list(gap), -1, notes, frames)
    acq, rel = _take_and_drop(lock, read, acquire, release)
    return _program(lock, n, [acq, *locked, rel, *gap], len(locked) + 1, notes, frames)


def _program(lock: "Lock | None", n: int, parts: list[Any], rel: int,
             notes: dict[int, Callable[[int], None]] | None,
             frames: dict[int, tuple[str, ...]] | None) -> Op:
    seq = tuple(x.op if type(x) is Each else x for x in parts)
    each = tuple(x if type(x) is Each else None for x in parts)
    nts = tuple((notes or {}).get(j) for j in range(len(parts)))
    frs = tuple((frames or {}).get(j, ()) for j in range(len(parts)))
    prog = CycleProgram(seq, each, nts, frs, rel)
    return _op(LOCK_CYCLES, lock, 0, 1, True, prog, operator.index(n), None, False)


def each_op(template: Op, e: Each, i: int) -> Op:
    """Cycle ``i``'s operation of an ``Each``."""
    lo = template.lo + e.stride * i
    k = template.kind
    if k == LOAD:
        return _op(LOAD, template.obj, lo, lo + 1, False, None, None, template.cost, False)
    if k == STORE:
        return _op(STORE, template.obj, lo, lo + 1, True, int(e.values[i]), None,
                   template.cost, False)
    return _op(CAS, template.obj, lo, lo + 1, True, int(e.expect[i]), int(e.values[i]),
               template.cost, False)


def each_expected(e: Each, i: int) -> int:
    """What cycle ``i``'s check of an ``Each`` expects (an int, or one per cycle)."""
    x = e.expect
    return x if type(x) is int else int(x[i])


# --- RCU ------------------------------------------------------------------------------

def rcu_read_lock(domain: "RcuDomain", cost: str | None = None) -> Op:
    return _op(RCU_READ_LOCK, domain, 0, 1, False, None, None, cost, False)


def rcu_read_unlock(domain: "RcuDomain", cost: str | None = None) -> Op:
    return _op(RCU_READ_UNLOCK, domain, 0, 1, False, None, None, cost, False)


def synchronize_rcu(domain: "RcuDomain", cost: str | None = None) -> Op:
    """Return only after every reader inside a read section of ``domain`` at the call has
    left it. Sleeps, so it is a bug inside a (non-sleepable) read section."""
    return _op(SYNC_RCU, domain, 0, 1, True, None, None, cost, True)


def call_rcu(domain: "RcuDomain", fn: Callable[..., Any], *args: Any,
             cost: str | None = None) -> Op:
    """Run the generator function ``fn(*args)`` as a new thread after a grace period of
    ``domain`` that starts now. Does not sleep."""
    return _op(CALL_RCU, domain, 0, 1, True, fn, args, cost, False)


# --- misc -----------------------------------------------------------------------------

def might_sleep(cost: str | None = None) -> Op:
    """Annotate a point where the thread may sleep (a GFP_KERNEL allocation, cond_resched)."""
    return _op(MIGHT_SLEEP, None, 0, 1, False, None, None, cost, True)


def spawn(fn: Callable[..., Any], *args: Any, name: str | None = None) -> Op:
    """Start ``fn(*args)`` as a new thread; returns its thread id."""
    return _op(SPAWN, None, 0, 1, False, fn, (args, name), None, False)


def nop(label: str | None = None, cost: str | None = None) -> Op:
    """A scheduling point with no shared effect; the timed driver charges ``cost``."""
    return _op(NOP, None, 0, 1, False, label, None, cost, False)
