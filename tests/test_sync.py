"""Locks and RCU: the state machines in ``sim.sync`` and their use through ``Machine``.

Direct tests drive a ``Machine`` one step at a time (``m.step(tid)``) so the order of
events is exactly the one described in the test; exploration tests then check the same
property over every schedule.
"""

from __future__ import annotations

import pytest

from youngsim.sim import (BUG_ON, Machine, Mutex, RcuDomain, RWLock, SpinLock, Words,
                          call_rcu, load, might_sleep, mutex_lock, mutex_unlock, nop,
                          rcu_read_lock, rcu_read_unlock, read_lock, read_unlock,
                          spin_lock, spin_unlock, store, synchronize_rcu, wait_until,
                          write_lock, write_unlock)
from youngsim.sim import ops as O
from youngsim.sim.explore import systematic
from youngsim.sim.sync import EXCL, READ, Lock

from conftest import kind, program, run_default

# --- helpers ----------------------------------------------------------------------------


def holder(lock_op, unlock_op, log: list, name: str, hold: int = 1):
    """Thread body: take a lock, log it, hold it for ``hold`` nops, release, log it."""
    def body():
        yield lock_op
        log.append((name, "in"))
        for _ in range(hold):
            yield nop()
        yield unlock_op
        log.append((name, "out"))
    body.__name__ = name
    return body


def fifo_invariant(lock: Lock, m: Machine):
    """An invariant (checked after every step) that no thread acquires ``lock`` while a
    thread that requested it earlier is still waiting: FIFO hand-over.

    The invariant keeps the previous step's queue; a new holder must not leave behind
    any waiter that was ahead of it in that queue (or, if it did not wait at all, any
    waiter whatsoever). It also counts executions where a reader queued behind a writer,
    so the tests can check that situation was actually exercised.
    """
    prev = {"queue": [], "holders": set()}

    def check(m: Machine) -> str | None:
        holders = set(lock.readers) | ({lock.owner} if lock.owner is not None else set())
        waiting = [t for t, _ in lock.queue]
        for h in holders - prev["holders"]:
            pq = [t for t, _ in prev["queue"]]
            ahead = pq[:pq.index(h)] if h in pq else pq
            overtaken = [t for t in ahead if t in waiting]
            if overtaken:
                return f"T{h} acquired {lock.name} ahead of waiting {overtaken}"
        q = lock.queue
        for i, (t, mode) in enumerate(q):
            if mode == READ and any(md == EXCL for _, md in q[:i]):
                m.count("reader-queued-behind-writer")
        prev["queue"] = list(q)
        prev["holders"] = holders
        return None

    return check


# --- the Lock state machine on its own --------------------------------------------------


def test_lock_request_grant_release_state_machine():
    lk = RWLock("rw")
    assert lk.is_free()
    assert lk.request(1, READ) is True
    assert lk.request(2, READ) is True  # readers share
    assert lk.readers == {1: 1, 2: 1}
    assert lk.request(3, EXCL) is False  # writer queues
    assert lk.request(4, READ) is False  # reader queues behind the writer
    assert lk.queue == [(3, EXCL), (4, READ)]
    assert not lk.grantable(3) and not lk.grantable(4)
    assert lk.release(1, READ) is None
    assert not lk.grantable(3)  # reader 2 still inside
    assert lk.release(2, READ) is None
    assert lk.grantable(3) and not lk.grantable(4)
    lk.grant(3)
    assert lk.owner == 3 and lk.queue == [(4, READ)]
    assert not lk.grantable(4)
    assert lk.release(3, EXCL) is None
    assert lk.grantable(4)
    lk.grant(4)
    assert lk.readers == {4: 1} and lk.queue == []
    assert lk.acquisitions == 4 and lk.contended == 2


def test_lock_release_errors():
    lk = SpinLock("s")
    assert lk.release(0, EXCL) is not None  # not held at all
    lk.request(0, EXCL)
    assert "does not hold" in lk.release(1, EXCL)  # held by someone else
    assert lk.owner == 0
    rw = RWLock("rw")
    rw.request(0, READ)
    assert rw.release(1, READ) is not None
    assert rw.release(0, EXCL) is not None  # a reader is not the writer
    assert rw.release(0, READ) is None
    assert rw.is_free()


def test_consecutive_queued_readers_are_all_granted_after_writer():
    lk = RWLock("rw")
    lk.request(0, EXCL)
    lk.request(1, READ)
    lk.request(2, READ)
    lk.request(3, EXCL)
    lk.release(0, EXCL)
    assert lk.grantable(1)
    lk.grant(1)
    assert lk.grantable(2)  # the next reader joins the first one
    lk.grant(2)
    assert not lk.grantable(3)  # the writer behind them waits for both
    lk.release(1, READ)
    assert not lk.grantable(3)
    lk.release(2, READ)
    assert lk.grantable(3)


# --- queued rwlock fairness through the machine -----------------------------------------


def test_waiting_writer_blocks_new_readers():
    """Reader R1 holds; writer W queues; a new reader R2 must queue behind W (even though
    the lock is only read-held) and gets the lock only after W has had it."""
    m = Machine()
    rw = RWLock("rw")
    log: list = []
    r1 = m.spawn(holder(read_lock(rw), read_unlock(rw), log, "R1"))
    w = m.spawn(holder(write_lock(rw), write_unlock(rw), log, "W"))
    r2 = m.spawn(holder(read_lock(rw), read_unlock(rw), log, "R2"))

    m.step(r1)
    assert rw.readers == {r1: 1}
    m.step(w)
    assert not m.enabled(w)
    assert rw.queue == [(w, EXCL)]
    m.step(r2)
    assert not m.enabled(r2), "a new reader overtook a waiting writer"
    assert r2 not in rw.readers
    assert rw.queue == [(w, EXCL), (r2, READ)]
    assert m.runnable() == [r1]

    m.step(r1)  # nop
    m.step(r1)  # read_unlock
    assert m.enabled(w) and not m.enabled(r2)
    assert m.threads[w].pending.kind == O.GRANT
    m.step(w)  # W is granted the lock
    assert rw.owner == w and not m.enabled(r2)
    m.step(w)  # nop
    m.step(w)  # write_unlock
    assert m.enabled(r2)
    m.step(r2)
    assert rw.readers == {r2: 1}
    m.step(r2)
    m.step(r2)
    assert m.live == 0 and m.violation is None
    assert log == [("R1", "in"), ("R1", "out"), ("W", "in"), ("W", "out"),
                   ("R2", "in"), ("R2", "out")]


def test_writer_excludes_readers_and_writers():
    m = Machine()
    rw = RWLock("rw")
    log: list = []
    w1 = m.spawn(holder(write_lock(rw), write_unlock(rw), log, "W1"))
    r = m.spawn(holder(read_lock(rw), read_unlock(rw), log, "R"))
    w2 = m.spawn(holder(write_lock(rw), write_unlock(rw), log, "W2"))
    m.step(w1)
    m.step(r)
    m.step(w2)
    assert rw.owner == w1 and rw.readers == {}
    assert not m.enabled(r) and not m.enabled(w2)
    m.step(w1)
    m.step(w1)  # unlock: R is at the head
    assert m.enabled(r) and not m.enabled(w2)
    m.step(r)
    assert rw.readers == {r: 1} and rw.owner is None
    assert not m.enabled(w2)  # a writer waits for the reader
    m.step(r)
    m.step(r)
    assert m.enabled(w2)
    m.step(w2)
    assert rw.owner == w2


def test_rwlock_fifo_over_every_schedule():
    """Exhaustively: no thread ever overtakes an earlier waiter of the rwlock, and the
    reader-queued-behind-writer situation does occur in some schedule."""
    def build(m: Machine) -> None:
        rw = RWLock("rw")
        log: list = []
        m.spawn(holder(read_lock(rw), read_unlock(rw), log, "R1"))
        m.spawn(holder(write_lock(rw), write_unlock(rw), log, "W"))
        m.spawn(holder(read_lock(rw), read_unlock(rw), log, "R2"))
        m.invariant("fifo", fifo_invariant(rw, m))
    res = systematic(program(build), reduction=False, stop_on_violation=False)
    assert res.status == "complete", res.violation
    assert res.counter_execs.get("reader-queued-behind-writer", 0) > 0


def test_fifo_invariant_catches_an_unfair_lock():
    """The fairness checker above can fail: a reader-preferring lock violates it."""
    class ReaderPreferring(RWLock):
        __slots__ = ()

        def request(self, tid: int, mode: int) -> bool:
            if self.compatible(mode):  # ignores the queue: readers barge in
                self._take(tid, mode)
                return True
            self.queue.append((tid, mode))
            return False

    def build(m: Machine) -> None:
        rw = ReaderPreferring("rw")
        log: list = []
        m.spawn(holder(read_lock(rw), read_unlock(rw), log, "R1"))
        m.spawn(holder(write_lock(rw), write_unlock(rw), log, "W"))
        m.spawn(holder(read_lock(rw), read_unlock(rw), log, "R2"))
        m.invariant("fifo", fifo_invariant(rw, m))
    res = systematic(program(build), reduction=False)
    assert res.status == "violation" and res.violation.kind == "fifo"


def test_spinlock_fifo_handover():
    """A, B, C contend; B and C queue in that order; D asks after A released but before
    B was handed the lock, and still queues behind B and C."""
    m = Machine()
    s = SpinLock("s")
    log: list = []
    a = m.spawn(holder(spin_lock(s), spin_unlock(s), log, "A"))
    b = m.spawn(holder(spin_lock(s), spin_unlock(s), log, "B"))
    c = m.spawn(holder(spin_lock(s), spin_unlock(s), log, "C"))
    d = m.spawn(holder(spin_lock(s), spin_unlock(s), log, "D"))
    m.step(a)
    m.step(b)
    m.step(c)
    assert s.owner == a and s.queue == [(b, EXCL), (c, EXCL)]
    m.step(a)
    m.step(a)  # release: lock is free but B has not taken it yet
    assert s.owner is None
    assert m.enabled(b) and not m.enabled(c)
    m.step(d)  # D asks now: the queue is not empty, so D waits
    assert s.owner is None and s.queue[-1] == (d, EXCL)
    assert not m.enabled(d)
    order = []
    while m.live:
        run = m.runnable()
        assert len(run) == 1, f"more than one thread runnable: {run}"
        t = run[0]
        if m.threads[t].pending.kind == O.GRANT:
            order.append(t)
        m.step(t)
    assert order == [b, c, d]
    assert [n for n, e in log if e == "in"] == ["A", "B", "C", "D"]
    assert m.violation is None


def test_spinlock_fifo_over_every_schedule():
    def build(m: Machine) -> None:
        s = SpinLock("s")
        log: list = []
        for name in "ABC":
            m.spawn(holder(spin_lock(s), spin_unlock(s), log, name))
        m.invariant("fifo", fifo_invariant(s, m))
    res = systematic(program(build), reduction=False, stop_on_violation=False)
    assert res.status == "complete", res.violation


def test_mutual_exclusion_counts_over_every_schedule():
    """Occupancy counters show that a spinlock and a mutex admit one thread at a time."""
    for cls, acq, rel in ((SpinLock, spin_lock, spin_unlock), (Mutex, mutex_lock, mutex_unlock)):
        def build(m: Machine, cls=cls, acq=acq, rel=rel) -> None:
            lk = cls("l")
            occ = m.new_words("occ", 1)

            def body():
                yield acq(lk)
                v = yield load(occ, 0)
                yield store(occ, 0, v + 1)
                v = yield load(occ, 0)
                yield store(occ, 0, v - 1)
                yield rel(lk)
            for i in range(2):
                m.spawn(body, name=f"t{i}")
            m.invariant("exclusion", lambda m: None if occ[0] <= 1 else "two inside")
        res = systematic(program(build), reduction=False, stop_on_violation=False)
        assert res.status == "complete", (cls, res.violation)
        assert res.executions >= 2


# --- lock misuse, leaks, deadlock --------------------------------------------------------


@pytest.mark.parametrize("case", ["spin-not-held", "spin-other-holder", "read-not-held",
                                  "write-unlock-by-reader", "read-lock-on-spinlock",
                                  "mutex-other-holder"])
def test_release_by_non_holder_is_lock_misuse(case):
    def build(m: Machine) -> None:
        s, rw, mx = SpinLock("s"), RWLock("rw"), Mutex("mx")
        go = m.new_words("go", 1)

        def owner(acq, rel):
            def body():
                yield acq
                yield wait_until(go, 0, 1, 1)
                yield rel
            return body

        def culprit():
            if case == "spin-not-held":
                yield spin_unlock(s)
            elif case == "spin-other-holder":
                yield spin_unlock(s)
            elif case == "read-not-held":
                yield read_unlock(rw)
            elif case == "write-unlock-by-reader":
                yield read_lock(rw)
                yield write_unlock(rw)
            elif case == "read-lock-on-spinlock":
                yield read_lock(s)
            elif case == "mutex-other-holder":
                yield mutex_unlock(mx)
            yield store(go, 0, 1)

        if case == "spin-other-holder":
            m.spawn(owner(spin_lock(s), spin_unlock(s)), name="owner")
        if case == "mutex-other-holder":
            m.spawn(owner(mutex_lock(mx), mutex_unlock(mx)), name="owner")
        m.spawn(culprit, name="culprit")
    m = run_default(build)
    assert kind(m) == "lock-misuse", m.violation
    assert m.threads[m.violation.tid].name == "culprit"


@pytest.mark.parametrize("acq", ["spin", "mutex", "read", "write"])
def test_thread_exit_holding_a_lock_is_lock_leak(acq):
    def build(m: Machine) -> None:
        s, rw, mx = SpinLock("s"), RWLock("rw"), Mutex("mx")
        op = {"spin": spin_lock(s), "mutex": mutex_lock(mx), "read": read_lock(rw),
              "write": write_lock(rw)}[acq]

        def leaker():
            yield op
            yield nop()
        m.spawn(leaker)
    m = run_default(build)
    assert kind(m) == "lock-leak"
    assert "leaker" in m.violation.message


def test_balanced_locking_is_clean():
    def build(m: Machine) -> None:
        s, rw, mx = SpinLock("s"), RWLock("rw"), Mutex("mx")

        def t():
            yield mutex_lock(mx)
            yield might_sleep()  # fine under a mutex
            yield read_lock(rw)
            yield spin_lock(s)
            yield spin_unlock(s)
            yield read_unlock(rw)
            yield write_lock(rw)
            yield write_unlock(rw)
            yield mutex_unlock(mx)
            yield might_sleep()
        m.spawn(t)
    m = run_default(build)
    assert m.violation is None and m.live == 0
    assert m.threads[0].atomic == 0 and m.threads[0].locks == []


def test_exit_inside_rcu_read_section_is_rcu_leak():
    def build(m: Machine) -> None:
        rcu = RcuDomain()

        def t():
            yield rcu_read_lock(rcu)
        m.spawn(t)
    assert kind(run_default(build)) == "rcu-leak"


def test_exit_inside_srcu_read_section_is_rcu_leak():
    def build(m: Machine) -> None:
        srcu = RcuDomain("srcu", sleepable=True)

        def t():
            yield rcu_read_lock(srcu)
        m.spawn(t)
    assert kind(run_default(build)) == "rcu-leak"


def test_rcu_unlock_without_lock_is_rcu_misuse():
    def build(m: Machine) -> None:
        rcu = RcuDomain()

        def t():
            yield rcu_read_unlock(rcu)
        m.spawn(t)
    assert kind(run_default(build)) == "rcu-misuse"


def test_abba_deadlock_is_found():
    def build(m: Machine) -> None:
        a, b = SpinLock("a"), SpinLock("b")

        def t(x, y):
            yield spin_lock(x)
            yield spin_lock(y)
            yield spin_unlock(y)
            yield spin_unlock(x)
        m.spawn(t, a, b, name="ab")
        m.spawn(t, b, a, name="ba")
    p = program(build)
    res = systematic(p)
    assert res.status == "violation" and res.violation.kind == "deadlock"
    assert "no thread can run" in res.violation.message
    # the non-preemptive schedule does not deadlock
    assert run_default(build).violation is None


def test_reacquire_own_lock_is_deadlock():
    for acq in (spin_lock, write_lock):
        def build(m: Machine, acq=acq) -> None:
            lk = RWLock("l") if acq is write_lock else SpinLock("l")

            def t():
                yield acq(lk)
                yield acq(lk)
            m.spawn(t)
        m = run_default(build)
        assert kind(m) == "deadlock" and "re-acquires" in m.violation.message


def test_wait_that_never_holds_is_deadlock():
    def build(m: Machine) -> None:
        w = m.new_words("w", 1)

        def t():
            yield wait_until(w, 0, 1, 1)
        m.spawn(t)
    m = run_default(build)
    assert kind(m) == "deadlock" and "wait_until" in m.violation.message


def test_synchronize_srcu_inside_own_srcu_section_is_deadlock():
    def build(m: Machine) -> None:
        srcu = RcuDomain("srcu", sleepable=True)

        def t():
            yield rcu_read_lock(srcu)
            yield synchronize_rcu(srcu)
            yield rcu_read_unlock(srcu)
        m.spawn(t)
    assert kind(run_default(build)) == "deadlock"


# --- RCU ----------------------------------------------------------------------------------


def test_rcu_domain_grace_period_snapshot():
    d = RcuDomain()
    d.read_lock(1)
    snap = d.start_gp()
    assert snap == ((1, 1),) and not d.gp_done(snap)
    d.read_lock(2)  # enters after the GP started: not waited for
    assert not d.gp_done(snap)
    d.read_lock(1)  # nested
    d.read_unlock(1)
    assert not d.gp_done(snap)
    d.read_unlock(1)
    assert d.gp_done(snap)
    d.read_lock(1)  # a new section of the same thread
    assert d.gp_done(snap)
    assert d.read_unlock(3) is not None
    assert d.grace_periods == 1
    assert d.start_gp() == ((1, 2), (2, 1))


def _reader(rcu, name, log, hold=1, reenter=False):
    def body():
        yield rcu_read_lock(rcu)
        log.append((name, "in"))
        for _ in range(hold):
            yield nop()
        yield rcu_read_unlock(rcu)
        log.append((name, "out"))
        if reenter:
            yield rcu_read_lock(rcu)
            log.append((name, "in"))
            yield nop()
            yield rcu_read_unlock(rcu)
            log.append((name, "out"))
    body.__name__ = name
    return body


def _syncer(rcu, log, name="U"):
    def body():
        yield synchronize_rcu(rcu)
        log.append((name, "gp-done"))
    body.__name__ = name
    return body


def test_synchronize_rcu_waits_for_pre_existing_reader_only():
    m = Machine()
    rcu = RcuDomain()
    log: list = []
    r1 = m.spawn(_reader(rcu, "R1", log, hold=2))
    u = m.spawn(_syncer(rcu, log))
    r2 = m.spawn(_reader(rcu, "R2", log, hold=3))
    m.step(r1)  # R1 inside
    m.step(u)  # GP starts: waits for R1
    assert m.threads[u].pending.kind == O.GP_WAIT and not m.enabled(u)
    m.step(r2)  # R2 enters after the GP started
    m.step(r1)
    assert not m.enabled(u)
    m.step(r1)
    m.step(r1)  # R1 leaves
    assert rcu.in_reader(r2)
    assert m.enabled(u), "a reader that entered after the GP started holds it up"
    m.step(u)
    assert ("U", "gp-done") in log and log[-1] == ("U", "gp-done")
    assert ("R2", "out") not in log


def test_synchronize_rcu_without_readers_does_not_wait():
    m = Machine()
    rcu = RcuDomain()
    log: list = []
    m.spawn(_syncer(rcu, log))
    m.step(0)
    assert log == [("U", "gp-done")] and m.live == 0


def test_reader_that_leaves_and_reenters_does_not_hold_up_gp():
    m = Machine()
    rcu = RcuDomain()
    log: list = []
    r = m.spawn(_reader(rcu, "R", log, hold=1, reenter=True))
    u = m.spawn(_syncer(rcu, log))
    m.step(r)  # in
    m.step(u)  # GP starts
    assert not m.enabled(u)
    m.step(r)  # nop
    m.step(r)  # out
    m.step(r)  # in again
    assert rcu.in_reader(r)
    assert m.enabled(u)


def test_nested_read_section_holds_gp_until_outermost_unlock():
    m = Machine()
    rcu = RcuDomain()
    log: list = []

    def nested():
        yield rcu_read_lock(rcu)
        yield rcu_read_lock(rcu)
        yield rcu_read_unlock(rcu)
        yield nop()
        yield rcu_read_unlock(rcu)
    r = m.spawn(nested)
    u = m.spawn(_syncer(rcu, log))
    m.step(r)
    m.step(r)
    m.step(u)
    m.step(r)  # inner unlock
    assert not m.enabled(u)
    m.step(r)
    m.step(r)  # outer unlock
    assert m.enabled(u)


def test_call_rcu_callback_runs_only_after_grace_period():
    m = Machine()
    rcu = RcuDomain()
    flag = m.new_words("flag", 1)
    log: list = []

    def cb(w):
        yield store(w, 0, 1)
        log.append("cb")

    def updater():
        yield call_rcu(rcu, cb, flag)
        log.append("queued")
    r1 = m.spawn(_reader(rcu, "R1", log, hold=2))
    u = m.spawn(updater)
    m.step(r1)
    m.step(u)
    assert log[-1] == "queued" and m.threads[u].done
    cbt = len(m.threads) - 1
    assert m.threads[cbt].name == "rcu:cb"
    assert not m.enabled(cbt)
    r2 = m.spawn(_reader(rcu, "R2", log, hold=5))
    m.step(r2)  # a reader after call_rcu
    m.step(r1)
    assert not m.enabled(cbt)
    m.step(r1)
    m.step(r1)  # R1 out
    assert m.enabled(cbt) and rcu.in_reader(r2)
    m.step(cbt)  # gp wait
    m.step(cbt)  # the callback body
    assert flag[0] == 1 and "cb" in log


def _rcu_guard_program(late: bool, use_call_rcu: bool):
    """A reader checks that ``flag`` does not change inside its read section; the updater
    waits for a grace period (synchronize_rcu or call_rcu) and then sets ``flag``.

    ``late=False``: the reader is inside before the updater starts the grace period (the
    updater waits for ``inside``): the flag can never change under it.
    ``late=True``: the reader enters only after the grace period started: it must not hold
    the grace period up, so some schedule changes the flag under it.
    """
    def build(m: Machine) -> None:
        rcu = RcuDomain()
        flag, inside, started = (m.new_words(n, 1) for n in ("flag", "inside", "started"))

        def reader():
            if late:
                yield wait_until(started, 0, 1, 1)
            yield rcu_read_lock(rcu)
            yield store(inside, 0, 1)
            v0 = yield load(flag, 0)
            v1 = yield load(flag, 0)
            BUG_ON(v0 != v1, "grace period ended inside a pre-existing read section")
            yield rcu_read_unlock(rcu)

        def set_flag(w):
            yield store(w, 0, 1)

        def updater():
            if not late:
                yield wait_until(inside, 0, 1, 1)
            if use_call_rcu:
                yield call_rcu(rcu, set_flag, flag)
                yield store(started, 0, 1)
            else:
                yield store(started, 0, 1)
                yield synchronize_rcu(rcu)
                yield store(flag, 0, 1)
        m.spawn(reader)
        m.spawn(updater)
    return program(build)


@pytest.mark.parametrize("use_call_rcu", [False, True])
def test_grace_period_protects_pre_existing_reader_in_every_schedule(use_call_rcu):
    res = systematic(_rcu_guard_program(late=False, use_call_rcu=use_call_rcu))
    assert res.status == "complete", res.violation
    assert res.executions > 1


@pytest.mark.parametrize("use_call_rcu", [False, True])
def test_reader_entering_after_gp_start_does_not_hold_it_up(use_call_rcu):
    res = systematic(_rcu_guard_program(late=True, use_call_rcu=use_call_rcu))
    assert res.status == "violation" and res.violation.kind == "bug"


def test_srcu_is_separate_from_rcu_and_may_sleep():
    m = Machine()
    rcu = RcuDomain("rcu")
    srcu = RcuDomain("srcu", sleepable=True)
    mx = Mutex("mx")
    log: list = []

    def srcu_reader():
        yield rcu_read_lock(srcu)
        log.append("S in")
        yield might_sleep()
        yield mutex_lock(mx)
        yield mutex_unlock(mx)
        yield synchronize_rcu(rcu)  # sleeping inside SRCU is fine
        yield nop()
        yield rcu_read_unlock(srcu)
        log.append("S out")

    def rcu_reader():
        yield rcu_read_lock(rcu)
        yield nop()
        yield rcu_read_unlock(rcu)

    s = m.spawn(srcu_reader)
    u_rcu = m.spawn(_syncer(rcu, log, "U-rcu"))
    u_srcu = m.spawn(_syncer(srcu, log, "U-srcu"))
    r = m.spawn(rcu_reader)
    m.step(s)  # SRCU reader inside
    m.step(u_rcu)  # an RCU grace period does not wait for an SRCU reader
    assert m.threads[u_rcu].done
    m.step(r)  # RCU reader inside
    m.step(u_srcu)  # SRCU GP: waits for the SRCU reader, not for the RCU one
    assert not m.enabled(u_srcu)
    for _ in range(4):  # might_sleep, mutex_lock, mutex_unlock, synchronize_rcu(rcu)
        m.step(s)
    assert m.violation is None
    assert not m.enabled(s), "synchronize_rcu(rcu) should wait for the RCU reader"
    m.step(r)
    m.step(r)  # RCU reader out
    assert m.enabled(s) and not m.enabled(u_srcu)
    m.step(s)  # gp done
    m.step(s)  # nop
    m.step(s)  # srcu unlock
    assert m.enabled(u_srcu)
    m.step(u_srcu)
    assert m.live == 0 and m.violation is None


# --- sleeping in atomic context -----------------------------------------------------------


def _sleeper_in(ctx: str, sleeper: str):
    def build(m: Machine) -> None:
        rcu, other = RcuDomain("rcu"), RcuDomain("rcu2")
        s, rw, mx = SpinLock("s"), RWLock("rw"), Mutex("mx")
        enter, leave = {
            "rcu": (rcu_read_lock(rcu), rcu_read_unlock(rcu)),
            "spin": (spin_lock(s), spin_unlock(s)),
            "read": (read_lock(rw), read_unlock(rw)),
            "write": (write_lock(rw), write_unlock(rw)),
        }[ctx]

        def t():
            yield enter
            if sleeper == "synchronize_rcu":
                yield synchronize_rcu(other)
            elif sleeper == "mutex_lock":
                yield mutex_lock(mx)
                yield mutex_unlock(mx)
            else:
                yield might_sleep()
            yield leave
        m.spawn(t, name="sleeper")
    return build


@pytest.mark.parametrize("ctx", ["rcu", "spin", "read", "write"])
@pytest.mark.parametrize("sleeper", ["synchronize_rcu", "mutex_lock", "might_sleep"])
def test_sleeping_in_atomic_context(ctx, sleeper):
    m = run_default(_sleeper_in(ctx, sleeper))
    assert kind(m) == "sleep-in-atomic", m.violation
    assert m.violation.tid == 0


def test_synchronize_rcu_inside_own_rcu_section_is_reported():
    def build(m: Machine) -> None:
        rcu = RcuDomain()

        def t():
            yield rcu_read_lock(rcu)
            yield synchronize_rcu(rcu)
            yield rcu_read_unlock(rcu)
        m.spawn(t)
    assert kind(run_default(build)) in ("sleep-in-atomic", "deadlock")


def test_sleeping_after_leaving_atomic_context_is_fine():
    def build(m: Machine) -> None:
        rcu, s, mx = RcuDomain(), SpinLock("s"), Mutex("mx")

        def t():
            yield rcu_read_lock(rcu)
            yield rcu_read_unlock(rcu)
            yield spin_lock(s)
            yield spin_unlock(s)
            yield synchronize_rcu(rcu)
            yield mutex_lock(mx)
            yield might_sleep()
            yield mutex_unlock(mx)
        m.spawn(t)
    m = run_default(build)
    assert m.violation is None and m.live == 0


# --- model-code failures ------------------------------------------------------------------


def test_use_after_free_variants():
    from youngsim.sim import free, vload
    for what in ("load", "store", "vload", "wait", "double-free"):
        def build(m: Machine, what=what) -> None:
            w = m.new_words("obj", 2, 7)

            def t():
                yield free(w)
                if what == "load":
                    yield load(w, 0)
                elif what == "store":
                    yield store(w, 1, 0)
                elif what == "vload":
                    yield vload(w, 0, 2)
                elif what == "wait":
                    yield wait_until(w, 0, 1, 0)
                else:
                    yield free(w)
            m.spawn(t, name="user")
        m = run_default(build)
        assert kind(m) == "use-after-free", (what, m.violation)
        assert "obj" in m.violation.message and "freed by user" in m.violation.message


def test_bug_on_exception_and_non_op():
    def mk(body):
        def build(m: Machine) -> None:
            w = m.new_words("w", 1)

            def t():
                v = yield load(w, 0)
                yield from body(v)
            m.spawn(t, name="model")
        return build

    def bug(v):
        BUG_ON(v == 0, "zero")
        yield nop()

    def crash(v):
        yield nop()
        _ = {}["missing"]

    def not_an_op(v):
        yield 42

    m = run_default(mk(bug))
    assert kind(m) == "bug" and m.violation.message == "zero" and m.violation.tid == 0
    m = run_default(mk(crash))
    assert kind(m) == "exception" and "KeyError" in m.violation.message
    m = run_default(mk(not_an_op))
    assert kind(m) == "model-error" and "42" in m.violation.message


def test_warn_on_is_a_violation():
    from youngsim.sim import WARN_ON

    def build(m: Machine) -> None:
        def t():
            yield nop()
            WARN_ON(True, "odd state", kind="false-young")
        m.spawn(t)
    m = run_default(build)
    assert kind(m) == "false-young"
    assert WARN_ON(False) is False


def test_bug_on_through_exploration_only_in_some_schedules():
    """BUG_ON that depends on the interleaving is found by the explorer, not by the
    default schedule."""
    def build(m: Machine) -> None:
        w = m.new_words("w", 1)

        def a():
            yield store(w, 0, 1)
            yield store(w, 0, 0)

        def b():
            v = yield load(w, 0)
            BUG_ON(v == 1, "saw the transient value")
        m.spawn(a)
        m.spawn(b)
    assert run_default(build).violation is None
    res = systematic(program(build))
    assert res.status == "violation" and res.violation.kind == "bug"
    assert res.schedule == [0, 1]


def test_words_basics():
    w = Words("x", 3, 5)
    assert len(w) == 3 and w[2] == 5
    w[1] = -1
    assert w[1] == (1 << 64) - 1
    with pytest.raises(ValueError):
        Words("empty", 0)


# --- consolidated RCU: spinning-lock holders are readers of rcu_sched ---------------------


def _sched_program(consolidated: bool):
    from youngsim.sim import free, xchg

    def build(m: Machine) -> None:
        rcu = RcuDomain("rcu")
        if consolidated:
            m.use_rcu_sched(rcu)
        s = SpinLock("s")
        obj = m.new_words("obj", 1, 42)
        head = m.new_words("head", 1, obj.addr)

        def reader():  # no rcu_read_lock: relies on the spinlock disabling preemption
            yield spin_lock(s)
            p = yield load(head, 0)
            if p:
                yield load(m.deref(p), 0)
            yield spin_unlock(s)

        def updater():
            old = yield xchg(head, 0, 0)
            yield synchronize_rcu(rcu)
            yield free(m.deref(old))
        m.spawn(reader)
        m.spawn(updater)
    return program(build)


def test_rcu_sched_grace_period_waits_for_spinlock_holder():
    m = _sched_program(True).build()
    m.step(0)  # reader takes the spinlock: now an rcu_sched reader
    m.step(0)  # and loads the pointer
    m.step(1)  # unlink
    m.step(1)  # synchronize_rcu
    assert not m.enabled(1)
    m.step(0)  # uses the object
    assert not m.enabled(1)
    m.step(0)  # spin_unlock
    assert m.enabled(1)
    m.step(1)
    m.step(1)  # free
    assert m.live == 0 and m.violation is None


@pytest.mark.parametrize("reduction", [True, False])
def test_rcu_sched_consolidation_verdicts(reduction):
    on = systematic(_sched_program(True), reduction=reduction)
    off = systematic(_sched_program(False), reduction=reduction)
    assert on.status == "complete", on.violation
    assert off.status == "violation" and off.violation.kind == "use-after-free"
