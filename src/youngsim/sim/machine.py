"""The executor: threads, their pending operations, and one step at a time.

Both drivers sit on this class. The *checker* decides which runnable thread steps next and
explores the choices; the *timed driver* picks by virtual time. Neither reimplements the
semantics of an operation: ``Machine.step`` is the single definition of what a load, a
cmpxchg, a queued rwlock or a grace period does.

Every thread always has its next operation pending (its generator is advanced to the next
``yield`` as soon as the previous operation completes). So before choosing, a driver can
see each thread's next footprint, which is what dynamic partial-order reduction needs and
what a cost model needs.

Bugs are reported as a ``Violation`` stored on the machine (and the run stops):
use-after-free, lock misuse, sleeping in atomic context, deadlock, a failed invariant,
an exception raised by model code (``BUG_ON``/``WARN_ON`` or a Python error), or a failed
end-of-run check.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Final, Generator, Iterable

import numpy as np

from . import ops as O
from . import vec
from .memory import MASK64, Words
from .ops import Op
from .callbacks import __file__ as _callbacks_file
from .callbacks import rcu_callback as _rcu_callback
from .sync import EXCL, READ, Lock, RcuDomain

# operation kinds as module constants (cheaper to read than ``O.KIND`` in the hot path)
_LOAD: Final = O.LOAD
_STORE: Final = O.STORE
_CAS: Final = O.CAS
_XCHG: Final = O.XCHG
_FETCH_AND: Final = O.FETCH_AND
_FETCH_OR: Final = O.FETCH_OR
_FETCH_ADD: Final = O.FETCH_ADD
_WAIT: Final = O.WAIT
_FREE: Final = O.FREE
_LOCK: Final = O.LOCK
_UNLOCK: Final = O.UNLOCK
_READ_LOCK: Final = O.READ_LOCK
_READ_UNLOCK: Final = O.READ_UNLOCK
_WRITE_LOCK: Final = O.WRITE_LOCK
_WRITE_UNLOCK: Final = O.WRITE_UNLOCK
_GRANT: Final = O.GRANT
_RCU_READ_LOCK: Final = O.RCU_READ_LOCK
_RCU_READ_UNLOCK: Final = O.RCU_READ_UNLOCK
_SYNC_RCU: Final = O.SYNC_RCU
_GP_WAIT: Final = O.GP_WAIT
_CALL_RCU: Final = O.CALL_RCU
_MIGHT_SLEEP: Final = O.MIGHT_SLEEP
_SPAWN: Final = O.SPAWN
_NOP: Final = O.NOP
_LOCK_CYCLES: Final = O.LOCK_CYCLES
_VLOAD: Final = O.VLOAD
#: vector atomic kind -> ``vec.rmw``'s
_VRMW = {O.VXCHG: vec.XCHG, O.VFETCH_AND: vec.AND, O.VFETCH_OR: vec.OR}

ThreadFn = Callable[..., Generator[Op, Any, Any]]
Invariant = Callable[["Machine"], "str | None"]


class Violation(Exception):
    """A safety property failed. ``kind`` names the property (stable across runs)."""

    def __init__(self, kind: str, message: str, tid: int | None = None) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message
        self.tid = tid


def BUG_ON(cond: Any, message: str = "BUG_ON") -> None:
    """Model assertion: raise a violation of kind ``bug`` if ``cond`` holds."""
    if cond:
        raise Violation("bug", message)


def WARN_ON(cond: Any, message: str = "WARN_ON", kind: str = "warn") -> bool:
    """A kernel WARN is a bug report too: the checker treats it as a violation."""
    if cond:
        raise Violation(kind, message)
    return False


#: the pending operation of a thread that has none (not started, or finished): an Op,
#: so drivers' hot loops need no None checks; they test ``Thread.done`` first
NO_OP = O.nop("no operation")


class Thread:
    __slots__ = ("tid", "name", "gen", "send", "pending", "done", "result", "locks",
                 "atomic", "steps", "loc", "daemon", "readers", "nalloc", "cyc",
                 "cyc_left", "cyc_j", "cyc_i", "cyc_fail", "cyc_prog")

    def __init__(self, tid: int, name: str, gen: Generator[Op, Any, Any]) -> None:
        self.tid = tid
        self.name = name
        self.gen = gen
        #: ``gen.send``, bound once (the executor resumes the thread with it every step);
        #: typed ``object``, not ``Op``: compiled, a yield of anything else would be
        #: mypyc's TypeError instead of ``_advance``'s model-error
        self.send: Callable[[Any], object] = gen.send
        #: the next operation; ``NO_OP`` before the first yield and once done
        self.pending: Op = NO_OP
        self.done = False
        self.result: Any = None
        self.locks: list[tuple[Lock, int]] = []  # held locks with their mode
        self.atomic = 0  # spinning locks held + non-sleepable RCU read sections
        self.readers = 0  # open RCU and SRCU read sections
        self.nalloc = 0  # objects this thread allocated (for deterministic addresses)
        self.steps = 0
        self.loc: str = ""
        self.daemon = False
        #: a ``lock_cycles`` in progress: its operations, the cycles left (this one
        #: included) and the index of the pending one (``Machine._next_cycle_op``)
        self.cyc: tuple[Op, ...] | None = None
        self.cyc_left = 0
        self.cyc_j = 0
        #: cycles completed, and whether this cycle's cmpxchg (``lock_cycles(body=)``)
        #: failed: the run then ends at this cycle's release
        self.cyc_i = 0
        self.cyc_fail = False
        #: a ``lock_program`` in progress (``cyc`` is its ``seq``)
        self.cyc_prog: O.CycleProgram | None = None

    def __repr__(self) -> str:
        return f"<Thread {self.tid} {self.name}>"


class Step:
    """One executed step, recorded when the machine traces."""

    __slots__ = ("index", "tid", "op", "result", "loc")

    def __init__(self, index: int, tid: int, op: Op, result: Any, loc: str) -> None:
        self.index = index
        self.tid = tid
        self.op = op
        self.result = result
        self.loc = loc


# not this module's __file__: compiled by mypyc with its shared library inside the
# package, that is wrong while the module body runs
_SRC_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(_callbacks_file)))


def _location(gen: Generator[Any, Any, Any]) -> str:
    """file:line of the innermost ``yield`` of a (possibly ``yield from``-nested) generator."""
    g: Any = gen
    while getattr(g, "gi_yieldfrom", None) is not None and hasattr(g.gi_yieldfrom, "gi_frame"):
        g = g.gi_yieldfrom
    f = getattr(g, "gi_frame", None)  # None: finished, or a compiled generator
    if f is None:
        return "?"
    path = f.f_code.co_filename
    if path.startswith(_SRC_ROOT):
        path = path[len(_SRC_ROOT) + 1:]
    else:
        path = os.path.basename(path)
    return f"{path}:{f.f_lineno}"


class Machine:
    """Threads plus shared state, stepped one operation at a time."""

    def __init__(self, trace: bool = False) -> None:
        self.threads: list[Thread] = []
        self.invariants: list[tuple[str, Invariant]] = []
        self.watches: list[frozenset[str] | None] = []
        self.final_checks: list[tuple[str, Invariant]] = []
        self.counters: dict[str, int] = {}
        self.violation: Violation | None = None
        self.nsteps = 0
        self.tracing = trace
        self.trace: list[Step] = []
        self._next_oid = 0
        self.live = 0  # threads not done
        self.objects: dict[int, Words] = {}  # address -> object, for pointers in words
        self.seed = 0
        self.current: Thread | None = None  # the thread whose step is executing
        #: virtual time (ns) at which the executing step started: set by the timed
        #: driver; always 0 under the checker. Model code may read it to record latencies
        #: (never to decide anything, or checked and timed runs would diverge).
        self.now = 0
        #: RCU flavour consolidation (Linux >= 4.20): a region with a spinning lock held
        #: (preemption disabled) is an RCU read-side critical section of this domain.
        self.rcu_sched: RcuDomain | None = None
        #: what the last ``vupdate`` wrote: (atomic selection, count, stored selection,
        #: count), for the timed driver's costs (``ops.vupdate``)
        self.vwrites: tuple[Any, int, Any, int] = (None, 0, None, 0)

    # -- shared objects --------------------------------------------------------------
    ADDR_BASE = 0x1000

    def new_words(self, name: str, n: int, init: int = 0, tag: str | None = None,
                  data: np.ndarray | None = None) -> Words:
        """Create and register a shared array; its ``addr`` can be stored in a word.
        ``data``: back it with this existing ``uint64`` view (of an arena) instead."""
        w = Words(name, n, init, tag, data)
        w.addr = self.ADDR_BASE * (len(self.objects) + 1)
        self.objects[w.addr] = w
        return w

    def _alloc(self, t: Thread, name: str, n: int, init: int, tag: str | None) -> Words:
        """A run-time allocation. Its address depends only on the allocating thread and
        how many objects that thread allocated before, never on the interleaving, so
        allocations by different threads really commute (as ``alloc``'s empty
        footprint claims)."""
        t.nalloc += 1
        w = Words(name, n, init, tag)
        w.addr = ((t.tid + 1) << 40) | (t.nalloc * self.ADDR_BASE)
        self.objects[w.addr] = w
        return w

    def deref(self, addr: int) -> Words:
        """The object a stored pointer names (pointer arithmetic, not a memory access:
        the access is the operation on the returned object, which may be freed)."""
        w = self.objects.get(addr)
        if w is None:
            raise Violation("bad-pointer", f"dereference of unknown address {addr:#x}")
        return w

    # -- set-up ----------------------------------------------------------------------
    def spawn(self, fn: ThreadFn, *args: Any, name: str | None = None,
              daemon: bool = False) -> int:
        """Create a thread running the generator function ``fn(*args)``.

        A ``daemon`` thread (a background worker that loops forever) does not keep the
        run alive: the run ends when every non-daemon thread has finished.
        """
        tid = len(self.threads)
        gen = fn(*args)
        t = Thread(tid, name or str(getattr(fn, "__name__", "thread")), gen)
        t.daemon = daemon
        self.threads.append(t)
        if not daemon:
            self.live += 1
        self._advance(t, None)
        return tid

    def use_rcu_sched(self, domain: RcuDomain) -> None:
        """Make spinning-lock holders readers of ``domain`` (see ``rcu_sched``)."""
        self.rcu_sched = domain
        if domain.oid is None:
            domain.oid = self._next_oid
            self._next_oid += 1

    def invariant(self, name: str, fn: Invariant, watch: Iterable[str] | None = None) -> None:
        """Add a predicate checked after every step: return None if it holds, else why not.

        With ``watch`` (a set of ``Words.tag`` values) it is checked only after steps that
        write memory with one of those tags: the predicate must read nothing else that
        other steps change (ghost state counts as part of the write it accompanies)."""
        self.invariants.append((name, fn))
        self.watches.append(frozenset(watch) if watch is not None else None)

    def final_check(self, name: str, fn: Invariant) -> None:
        """Add a predicate checked once, when every thread has finished."""
        self.final_checks.append((name, fn))

    def count(self, key: str, n: int = 1) -> None:
        """Count a measured (tolerated) event, e.g. a false-old page."""
        self.counters[key] = self.counters.get(key, 0) + n

    # -- queries ---------------------------------------------------------------------
    def enabled(self, tid: int) -> bool:
        t = self.threads[tid]
        if t.done:
            return False
        op = t.pending
        k = op.kind
        if k == _WAIT:
            w = op.obj
            return w.freed or (w.data.item(op.lo) & op.a) == op.b
        if k == _GRANT:
            return op.obj.grantable(tid)
        if k == _GP_WAIT:
            return op.obj.gp_done(op.a)
        return True

    def runnable(self) -> list[int]:
        # [t.tid for t in self.threads if not t.done and self.enabled(t.tid)], with
        # ``enabled`` inlined (both drivers call this, or the deadlock check, every step)
        out = []
        for t in self.threads:
            if t.done:
                continue
            op = t.pending
            k = op.kind
            if k == _WAIT:
                w = op.obj
                if not (w.freed or (w.data.item(op.lo) & op.a) == op.b):
                    continue
            elif k == _GRANT:
                if not op.obj.grantable(t.tid):
                    continue
            elif k == _GP_WAIT:
                if not op.obj.gp_done(op.a):
                    continue
            out.append(t.tid)
        return out

    def finished(self) -> bool:
        return self.live == 0 or self.violation is not None

    # -- execution -------------------------------------------------------------------
    # ``step`` is the hot path of both drivers. It is written for CPython's speed, with the
    # semantics of the straightforward version: execute the pending operation (nothing to
    # do for a ``nop``/``might_sleep``), record it, resume the generator to its next
    # operation (``_advance``), then check invariants and final checks.
    def step(self, tid: int) -> None:
        """Execute thread ``tid``'s pending operation, then advance it to its next one."""
        t = self.threads[tid]
        op = t.pending
        assert not t.done
        self.nsteps += 1
        t.steps += 1
        live_before = self.live
        self.current = t
        k = op.kind
        if k == _NOP or k == _MIGHT_SLEEP:
            res = None  # no shared effect
        else:
            try:
                res = self._execute(t, op)
            except Violation as v:
                v.tid = tid
                self._record(t, op, None)
                self.violation = v
                return
            except Exception as e:  # bad operation arguments from model code: an oops
                self._record(t, op, None)
                self.violation = Violation(
                    "exception", f"{op.describe()}: {type(e).__name__}: {e}", tid)
                return
        if t.pending is not op:  # blocked: the op was replaced by its wait phase
            if self.tracing:
                self.trace.append(Step(self.nsteps, tid, op, None, t.loc))
        else:
            if self.tracing:
                self.trace.append(Step(self.nsteps, tid, op, res, t.loc))
            if t.cyc is None:
                self._advance(t, res)
            else:
                self._next_cycle_op(t, res)
        if self.violation is None:
            if self.invariants and self._check_invariants(op):
                return
            if self.live == 0 and live_before:
                self._check_final()  # once, when the last non-daemon thread finished

    def run_to_deadlock_check(self) -> bool:
        """True (and a deadlock violation is set) if nothing can run but work remains."""
        if self.violation is not None or self.live == 0:
            return False
        for t in self.threads:  # any thread enabled? (``enabled`` inlined)
            if t.done:
                continue
            op = t.pending
            k = op.kind
            if k == _WAIT:
                w = op.obj
                if w.freed or (w.data.item(op.lo) & op.a) == op.b:
                    return False
            elif k == _GRANT:
                if op.obj.grantable(t.tid):
                    return False
            elif k == _GP_WAIT:
                if op.obj.gp_done(op.a):
                    return False
            else:
                return False
        waits = "; ".join(
            f"{t.name} waits in {t.pending.describe()}"
            for t in self.threads if not t.done and not t.daemon)
        self.violation = Violation("deadlock", f"no thread can run: {waits}")
        return True

    def _record(self, t: Thread, op: Op, res: Any) -> None:
        if self.tracing:
            self.trace.append(Step(self.nsteps, t.tid, op, res, t.loc))

    def _advance(self, t: Thread, value: Any) -> None:
        """Resume ``t`` with ``value`` and make its next yielded operation pending. Sets
        the running thread first: a spawn or call_rcu in the step just executed may have
        advanced another thread. A ``lock_cycles`` of zero cycles resumes the thread
        again at once (a loop, not a recursion: a walker may yield thousands in a row)."""
        self.current = t
        while True:
            try:
                nxt = t.send(value)
            except Exception as e:
                self._advance_failed(t, e)
                return
            if type(nxt) is not Op:
                self._bad_yield(t, nxt)
                return
            op = nxt
            obj = op.obj
            if obj is not None and obj.oid is None:
                obj.oid = self._next_oid
                self._next_oid += 1
            if self.tracing:
                t.loc = _location(t.gen)
            if op.kind == _LOCK_CYCLES:
                if self._start_cycles(t, op):
                    a = op.a  # no cycles ran
                    value = ((0, -1, None) if type(a) is O.CycleProgram
                             else 0 if _has_body(a) else None)
                    continue
                return
            if op.sleeps and t.atomic:
                self._sleep_in_atomic(t, op)
            t.pending = op
            return

    # -- lock_cycles: run as its operations, without resuming the generator between ------
    def _start_cycles(self, t: Thread, op: Op) -> bool:
        """Make the first operation of a ``lock_cycles`` pending; True if it has no
        cycles (the caller resumes the generator)."""
        n = op.b
        seq = op.a
        prog: O.CycleProgram | None = None
        if type(seq) is O.CycleProgram:
            prog = seq
            seq = prog.seq
            if type(n) is int and n > 0 and not _program_ok(prog, n):
                self.violation = Violation(
                    "model-error", f"thread {t.name}: {op.describe()}: an operation of "
                    "each cycle runs past its words or lacks a value for every cycle",
                    t.tid)
                t.pending = NO_OP
                t.done = True
                return False
        if (type(n) is not int or n < 0
                or not (isinstance(op.obj, Lock) or (prog is not None and op.obj is None))
                or type(seq) is not tuple or not seq
                or any(type(x) is not Op for x in seq)
                or (prog is None
                    and any(x.kind == _CAS and not _cas_template_ok(x, n) for x in seq))):
            self.violation = Violation(
                "model-error", f"thread {t.name}: {op.describe()}: needs a lock, its"
                " operations, a cycle count >= 0 and, with a body, words and old and"
                " new values for every cycle", t.tid)
            t.pending = NO_OP
            t.done = True
            return False
        if n == 0:
            return True
        if prog is not None:  # as for yielded operations (``_advance``)
            for x in seq:
                if x.obj is not None and x.obj.oid is None:
                    x.obj.oid = self._next_oid
                    self._next_oid += 1
        t.cyc = seq
        t.cyc_prog = prog
        t.cyc_left = n
        t.cyc_j = 0
        t.cyc_i = 0
        t.cyc_fail = False
        self._set_cycle_op(t, seq[0])
        return False

    def _next_cycle_op(self, t: Thread, res: Any) -> None:
        """The pending operation of a ``lock_cycles`` has run (with result ``res``):
        make the next one pending or, after the last cycle (or the release of a cycle
        whose cmpxchg failed), resume the generator: with None, or with a body, the
        number of cycles whose cmpxchg succeeded."""
        seq = t.cyc
        assert seq is not None
        if t.cyc_prog is not None:
            self._next_program_op(t, t.cyc_prog, res)
            return
        op = t.pending
        k = op.kind
        j = t.cyc_j + 1
        if k == _CAS:
            if res != op.a:  # failed: straight to this cycle's release (no hold)
                t.cyc_fail = True
                while seq[j].kind == _NOP:
                    j += 1
        elif t.cyc_fail and (k == _UNLOCK or k == _WRITE_UNLOCK or k == _READ_UNLOCK):
            t.cyc = None
            self._advance(t, t.cyc_i)
            return
        if j == len(seq):
            j = 0
            t.cyc_i += 1
            t.cyc_left -= 1
            if t.cyc_left == 0:
                t.cyc = None
                self._advance(t, t.cyc_i if _has_body(seq) else None)
                return
        t.cyc_j = j
        self._set_cycle_op(t, seq[j])

    def _next_program_op(self, t: Thread, prog: O.CycleProgram, res: Any) -> None:
        """``_next_cycle_op`` for a ``lock_program``: checks, notes, and the end of the
        run at a failed check (see ``ops.lock_program``)."""
        seq = prog.seq
        pos = t.cyc_j
        i = t.cyc_i
        e = prog.each[pos]
        if e is not None and e.expect is not None:
            try:
                ok = (res & e.mask) == O.each_expected(e, i)
            except Exception as x:  # a bad expected value: as if model code had failed
                self._end_program(t)
                self._advance_failed(t, _raised(x))
                return
            if not ok:  # the run ends here (in the locked part, holding the lock)
                self._end_program(t)
                self._advance(t, (i, pos, res))
                return
        note = prog.notes[pos]
        if note is not None:
            try:
                note(i)
            except Exception as x:
                self._end_program(t)
                self._advance_failed(t, _raised(x))
                return
        j = pos + 1
        if j == len(seq):
            j = 0
            t.cyc_i = i + 1
            t.cyc_left -= 1
            if t.cyc_left == 0:
                self._end_program(t)
                self._advance(t, (i + 1, -1, None))
                return
        t.cyc_j = j
        self._set_cycle_op(t, seq[j])

    def _end_program(self, t: Thread) -> None:
        t.cyc = None
        t.cyc_prog = None

    def _set_cycle_op(self, t: Thread, op: Op) -> None:
        prog = t.cyc_prog
        if prog is not None:
            ev = prog.each[t.cyc_j]
            if ev is not None:
                try:
                    op = O.each_op(op, ev, t.cyc_i)
                except Exception as x:  # a bad value: as if the model code had failed
                    self._end_program(t)
                    self._advance_failed(t, _raised(x))
                    return
            elif op.sleeps and t.atomic:
                self._sleep_in_atomic(t, op)
            t.pending = op
            return
        if op.kind == _CAS:  # the body's template: this cycle's cmpxchg
            w = op.obj
            if w.oid is None:  # as for a yielded operation (``_advance``)
                w.oid = self._next_oid
                self._next_oid += 1
            try:
                op = O.cycle_cas(op, t.cyc_i)
            except Exception as e:  # a bad value: as if the model code had failed
                t.cyc = None
                self._advance_failed(t, e)
                return
        elif op.sleeps and t.atomic:
            self._sleep_in_atomic(t, op)
        t.pending = op

    def _advance_failed(self, t: Thread, e: Exception) -> None:
        """The generator of ``t`` returned or raised instead of yielding."""
        if isinstance(e, StopIteration):
            t.done = True
            t.pending = NO_OP
            t.result = e.value
            if not t.daemon:
                self.live -= 1
            self._thread_exit(t)
        elif isinstance(e, Violation):
            e.tid = t.tid
            self.violation = e
            t.pending = NO_OP
            t.done = True
        else:  # a model bug or a crash of seeded-buggy code: an "oops"
            self.violation = Violation("exception", f"{type(e).__name__}: {e}", t.tid)
            t.pending = NO_OP
            t.done = True

    def _bad_yield(self, t: Thread, op: Any) -> None:
        self.violation = Violation(
            "model-error", f"thread {t.name} yielded {op!r}, not an operation", t.tid)
        t.done = True

    def _sleep_in_atomic(self, t: Thread, op: Op) -> None:
        self.violation = Violation(
            "sleep-in-atomic",
            f"{t.name}: {op.describe()} may sleep inside an RCU read section or with a"
            " spinning lock held", t.tid)

    def _thread_exit(self, t: Thread) -> None:
        if self.violation is not None:
            return
        if t.locks:
            names = ", ".join(lk.name for lk, _ in t.locks)
            self.violation = Violation("lock-leak", f"{t.name} exited holding {names}", t.tid)
        elif t.readers:
            self.violation = Violation(
                "rcu-leak", f"{t.name} exited inside an RCU or SRCU read section", t.tid)

    def _check_invariants(self, op: Op) -> bool:
        """True if an invariant failed (``violation`` is then set)."""
        tag = op.obj.tag if (op.write and type(op.obj) is Words) else None
        for (name, fn), watch in zip(self.invariants, self.watches):
            if watch is not None and tag not in watch:
                continue
            msg = fn(self)
            if msg:
                self.violation = Violation(name, msg)
                return True
        return False

    def _check_final(self) -> None:
        for name, fn in self.final_checks:
            msg = fn(self)
            if msg:
                self.violation = Violation(name, msg)
                return

    def _uaf(self, t: Thread, op: Op) -> Violation:
        w = op.obj
        by = f" (freed by {self.threads[w.freed_by].name})" if w.freed_by is not None else ""
        return Violation("use-after-free", f"{t.name}: {op.describe()} on freed {w.name}{by}")

    def _execute(self, t: Thread, op: Op) -> Any:
        # Dispatch by ranges of kinds, most frequent first: scalar memory operations
        # (kinds 0-8), then allocation and locks (9-16), vector operations, RCU and the rest.
        k = op.kind
        tid = t.tid
        if k <= _FREE:  # scalar memory operations
            w: Words = op.obj
            if w.freed:
                raise self._uaf(t, op)
            d = w.data
            i = op.lo
            if not 0 <= i < len(d):
                raise Violation("exception", f"{op.describe()}: index out of range")
            if k == _LOAD or k == _WAIT:
                return d.item(i)
            if k == _STORE:
                d[i] = op.a & MASK64
                return None
            old = d.item(i)
            if k == _CAS:
                if old == op.a:
                    d[i] = op.b & MASK64
            elif k == _FETCH_AND:
                d[i] = old & op.a
            elif k == _FETCH_OR:
                d[i] = (old | op.a) & MASK64
            elif k == _XCHG:
                d[i] = op.a & MASK64
            elif k == _FETCH_ADD:
                d[i] = (old + op.a) & MASK64
            else:  # FREE
                w.freed = True
                w.freed_by = tid
                return None
            return old
        if k <= _GRANT:  # allocation and lock operations
            if k == _LOCK or k == _WRITE_LOCK or k == _READ_LOCK:
                lock: Lock = op.obj
                if k == _READ_LOCK:
                    if not lock.shared_ok:
                        raise Violation("lock-misuse", f"read_lock on {lock.kind} {lock.name}")
                    mode = READ
                else:
                    mode = EXCL
                # lock.held_by(tid) and (mode == EXCL or lock.owner == tid)
                owner = lock.owner
                if ((owner is not None and owner == tid)
                        or (mode == EXCL and tid in lock.readers)):
                    raise Violation("deadlock", f"{t.name} re-acquires {lock.name} it holds")
                if lock.request(tid, mode):
                    # self._took(t, lock, mode), inlined
                    t.locks.append((lock, mode))
                    if not lock.sleeping:
                        t.atomic += 1
                        if self.rcu_sched is not None:
                            self.rcu_sched.read_lock(tid)
                else:
                    t.pending = O.grant(lock, mode, op.cost)
                return None
            if k == _UNLOCK or k == _WRITE_UNLOCK or k == _READ_UNLOCK:
                lock = op.obj
                mode = READ if k == _READ_UNLOCK else EXCL
                err = lock.release(tid, mode)
                if err:
                    raise Violation("lock-misuse", f"{t.name}: {err}")
                held = t.locks
                for j, (lk, m) in enumerate(held):
                    if lk is lock and m == mode:
                        del held[j]
                        break
                if not lock.sleeping:
                    t.atomic -= 1
                    if self.rcu_sched is not None:
                        self.rcu_sched.read_unlock(tid)
                return None
            if k == _GRANT:
                lock = op.obj
                lock.grant(tid)
                # self._took(t, lock, op.a), inlined
                t.locks.append((lock, op.a))
                if not lock.sleeping:
                    t.atomic += 1
                    if self.rcu_sched is not None:
                        self.rcu_sched.read_lock(tid)
                t.pending = op  # so step() advances the thread
                return None
            # ALLOC
            n, init, tag = op.b
            return self._alloc(t, op.a, n, init, tag)
        if k >= _VLOAD:
            return self._execute_vector(t, op)
        if k == _RCU_READ_LOCK:
            dom: RcuDomain = op.obj
            dom.read_lock(tid)
            t.readers += 1
            if not dom.sleepable:
                t.atomic += 1
            return None
        if k == _RCU_READ_UNLOCK:
            dom = op.obj
            err = dom.read_unlock(tid)
            if err:
                raise Violation("rcu-misuse", f"{t.name}: {err}")
            t.readers -= 1
            if not dom.sleepable:
                t.atomic -= 1
            return None
        if k == _SYNC_RCU:
            dom = op.obj
            if dom.in_reader(tid):
                raise Violation("deadlock", f"{t.name}: synchronize on {dom.name} inside its"
                                " own read section")
            snap = dom.start_gp()
            if snap:
                t.pending = Op(O.GP_WAIT, dom, a=snap, cost=op.cost)
            return None
        if k == _GP_WAIT:
            t.pending = op
            return None
        if k == _CALL_RCU:
            dom = op.obj
            snap = dom.start_gp()
            self.spawn(_rcu_callback, dom, snap, op.a, op.b,
                       name=f"rcu:{getattr(op.a, '__name__', 'cb')}")
            return None
        if k == _SPAWN:
            args, name = op.b
            return self.spawn(op.a, *args, name=name)
        if k == _MIGHT_SLEEP or k == _NOP:
            return None
        raise Violation("model-error", f"unknown operation kind {k}")

    def _took(self, t: Thread, lock: Lock, mode: int) -> None:
        t.locks.append((lock, mode))
        if not lock.sleeping:
            t.atomic += 1
            if self.rcu_sched is not None:
                self.rcu_sched.read_lock(t.tid)

    def _execute_vector(self, t: Thread, op: Op) -> Any:
        w: Words = op.obj
        if w.freed:
            raise self._uaf(t, op)
        if not 0 <= op.lo <= op.hi <= len(w.data):
            raise Violation("exception", f"{op.describe()}: range out of bounds")
        view = w.data[op.lo:op.hi]
        k = op.kind
        if k == O.VLOAD:
            return view.copy()
        if k == O.VUPDATE:
            self.vwrites = _NO_WRITES  # (until fn has run and its report is checked)
            res, asel, na, ssel, ns = op.a(view)
            asel, ssel = _selection(asel, na, view), _selection(ssel, ns, view)
            if na + ns > len(view) or (asel is not None and ssel is not None
                                       and bool((asel & ssel).any())):
                raise Violation("model-error", "vupdate: a word reported written both "
                                "atomically and with a plain store")
            self.vwrites = (asel, int(na), ssel, int(ns))
            return res
        sel = op.b
        if k == O.VCAS:
            expected, new = op.a
            return vec.cas(view, np.asarray(expected, dtype=np.uint64),
                           np.asarray(new, dtype=np.uint64),
                           vec.NO_SEL if sel is None else sel, sel is None)
        if k == O.VSTORE:
            if sel is None:
                view[:] = op.a
            elif (type(sel) is np.ndarray and sel.dtype == np.bool_
                  and sel.shape == view.shape and type(op.a) is np.ndarray
                  and op.a.dtype == np.uint64 and op.a.shape == view.shape
                  and not np.may_share_memory(op.a, view)):
                vec.store_selected(view, op.a, sel)  # one pass
            else:
                view[sel] = np.asarray(op.a, dtype=np.uint64)[sel]
            return None
        mask = np.uint64(op.a & MASK64)
        how = _VRMW[k]
        if sel is None:
            return vec.rmw(view, mask, how)  # one pass: the old words, then the new
        if type(sel) is np.ndarray and sel.dtype == np.bool_ and sel.shape == view.shape:
            return vec.rmw_selected(view, sel, mask, how)  # one pass too
        old = view.copy()  # (any other selection: numpy's indexing rules, and errors)
        if how == vec.XCHG:
            view[sel] = mask
        elif how == vec.AND:
            view[sel] &= mask
        else:
            view[sel] |= mask
        return old

    # -- lockdep ---------------------------------------------------------------------
    def holds(self, lock: Lock, write: bool | None = None) -> bool:
        """Does the running thread hold ``lock`` (for write, for read, or either)?"""
        t = self.current
        if t is None:
            return False
        if write is None:
            return lock.held_by(t.tid)
        return lock.owner == t.tid if write else t.tid in lock.readers

    def lockdep_assert_held(self, lock: Lock, write: bool | None = None) -> None:
        """``lockdep_assert_held{,_write,_read}``: a violation if the running thread
        does not hold ``lock`` as required."""
        if not self.holds(lock, write):
            how = {None: "", True: " for write", False: " for read"}[write]
            name = self.current.name if self.current else "?"
            raise Violation("lockdep", f"{name} must hold {lock.name}{how} here")

    def in_rcu_reader(self, domain: RcuDomain) -> bool:
        t = self.current
        return t is not None and domain.in_reader(t.tid)

    # -- convenience -----------------------------------------------------------------
    def thread_names(self) -> dict[int, str]:
        return {t.tid: t.name for t in self.threads}


_NO_WRITES: tuple[Any, int, Any, int] = (None, 0, None, 0)


def _has_body(seq: tuple[Op, ...]) -> bool:
    """Does a ``lock_cycles``'s cycle carry a cmpxchg (its template follows the
    acquire)?"""
    return len(seq) > 1 and seq[1].kind == _CAS


def _raised(e: Exception) -> Exception:
    """What model code that raised ``e`` between two yields would report: a
    StopIteration raised inside a generator becomes a RuntimeError (PEP 479), not the
    generator's return."""
    if isinstance(e, StopIteration):
        return RuntimeError("generator raised StopIteration")
    return e


def _program_ok(prog: O.CycleProgram, n: int) -> bool:
    """A ``lock_program``'s operations that vary with the cycle stay in their words and
    have values for n cycles."""
    try:
        for e in prog.each:
            if e is None:
                continue
            w = e.op.obj
            last = e.op.lo + e.stride * (n - 1)
            if type(w) is not Words or not (0 <= e.op.lo < len(w.data)
                                             and 0 <= last < len(w.data)):
                return False
            if e.values is not None and len(e.values) < n:
                return False
            if e.expect is not None and type(e.expect) is not int and len(e.expect) < n:
                return False
        return True
    except TypeError:
        return False


def _cas_template_ok(op: Op, n: int) -> bool:
    """A ``lock_cycles`` body's template: words, and old and new values for n cycles."""
    try:
        return type(op.obj) is Words and len(op.a) >= n and len(op.b) >= n
    except TypeError:
        return False


def _selection(sel: Any, n: int, view: np.ndarray) -> Any:
    """Check one of the selections a ``vupdate`` function reports writing, so that a
    malformed one is a model error, not a wrong cost: ``None`` (every word, or with a
    count of 0 none), else a boolean array over the chunk with ``n`` words set."""
    if sel is None:
        if n and n != len(view):
            raise Violation("model-error", f"vupdate: a selection of None with a count "
                            f"of {n} (every word is {len(view)})")
        return None
    if not (type(sel) is np.ndarray and sel.dtype == np.bool_ and sel.shape == view.shape):
        raise Violation("model-error", "vupdate: a write selection must be a boolean "
                        "array over the chunk, or None")
    if int(np.count_nonzero(sel)) != n:
        raise Violation("model-error", f"vupdate: a write selection of "
                        f"{int(np.count_nonzero(sel))} words reported as {n}")
    return sel
