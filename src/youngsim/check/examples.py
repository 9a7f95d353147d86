"""Built-in examples: small programs with a known answer that show what the checker does.

Each one is the smallest program that exercises one guarantee of the substrate, and each
has the expected verdict next to it, which the tests assert:

=================  =========================================================  ==========
name               what it is                                                 expected
=================  =========================================================  ==========
lost-update        3 threads increment a counter with load + store            violation
cas-increment      the same with a cmpxchg retry loop                         complete
rcu-free           2 RCU readers, an updater that unlinks, synchronize_rcu(),  complete
                   then frees
rcu-call           the same, freeing from a call_rcu() callback               complete
rcu-free-early     the updater frees at once, without a grace period          violation
rwlock             2 writers and 1 reader on a queued rwlock: occupancy       complete
                   counters prove writers exclude readers and writers
abba-deadlock      reader-then-spinlock against spinlock-then-writer          violation
=================  =========================================================  ==========
"""

from __future__ import annotations

from typing import Any, Generator

from ..sim import (BUG_ON, Machine, Op, Program, RcuDomain, RWLock, SpinLock, Words, cas,
                   call_rcu, fetch_add, free, load, rcu_read_lock, rcu_read_unlock, read_lock,
                   read_unlock, spin_lock, spin_unlock, store, synchronize_rcu, write_lock,
                   write_unlock, xchg)

Gen = Generator[Op, Any, Any]
NTHREADS = 3


# --- lost-update / cas-increment ------------------------------------------------------

def racy_inc(counter: Words) -> Gen:
    """counter++ as two accesses: another increment can land in between and be lost."""
    v = yield load(counter, 0)
    yield store(counter, 0, v + 1)


def cas_inc(counter: Words) -> Gen:
    """atomic increment by a cmpxchg loop: retry if someone changed the value under us."""
    v = yield load(counter, 0)
    while True:
        old = yield cas(counter, 0, v, v + 1)
        if old == v:
            return
        v = old


def _counter_program(m: Machine, inc: Any) -> None:
    counter = m.new_words("counter", 1)
    for i in range(NTHREADS):
        m.spawn(inc, counter, name=f"inc{i}")
    m.final_check("lost-update", lambda m: None if counter[0] == NTHREADS else
                  f"counter is {counter[0]} after {NTHREADS} increments")


# --- RCU ------------------------------------------------------------------------------

OBJ_MAGIC = 42


def rcu_reader(m: Machine, rcu: RcuDomain, head: Words) -> Gen:
    """rcu_read_lock(); p = rcu_dereference(head); if (p) use p->val; rcu_read_unlock()."""
    yield rcu_read_lock(rcu)
    p = yield load(head, 0)
    if p:
        val = yield load(m.deref(p), 0)
        BUG_ON(val != OBJ_MAGIC, f"reader saw {val}")
    yield rcu_read_unlock(rcu)


def updater_sync(m: Machine, rcu: RcuDomain, head: Words) -> Gen:
    """Unlink, wait for pre-existing readers, then free."""
    old = yield xchg(head, 0, 0)
    yield synchronize_rcu(rcu)
    yield free(m.deref(old))


def _free_obj(obj: Words) -> Gen:
    yield free(obj)


def updater_call_rcu(m: Machine, rcu: RcuDomain, head: Words) -> Gen:
    """Unlink, and free from an RCU callback after a grace period."""
    old = yield xchg(head, 0, 0)
    yield call_rcu(rcu, _free_obj, m.deref(old))


def updater_early(m: Machine, rcu: RcuDomain, head: Words) -> Gen:
    """The bug: free right after unlinking; a reader that loaded the pointer still uses it."""
    old = yield xchg(head, 0, 0)
    yield free(m.deref(old))


def _rcu_program(m: Machine, updater: Any) -> None:
    rcu = RcuDomain("rcu")
    obj = m.new_words("obj", 1, OBJ_MAGIC)
    head = m.new_words("head", 1, obj.addr)
    m.spawn(rcu_reader, m, rcu, head, name="reader0")
    m.spawn(rcu_reader, m, rcu, head, name="reader1")
    m.spawn(updater, m, rcu, head, name="updater")


# --- rwlock ---------------------------------------------------------------------------

def rw_writer(lock: RWLock, occ: Words, data: Words) -> Gen:
    yield write_lock(lock)
    yield fetch_add(occ, 1, 1)  # writers inside
    v = yield load(data, 0)
    yield store(data, 0, v + 1)
    yield fetch_add(occ, 1, -1)
    yield write_unlock(lock)


def rw_reader(lock: RWLock, occ: Words, data: Words) -> Gen:
    yield read_lock(lock)
    yield fetch_add(occ, 0, 1)  # readers inside
    yield load(data, 0)
    yield fetch_add(occ, 0, -1)
    yield read_unlock(lock)


def _rwlock_program(m: Machine) -> None:
    lock = RWLock("rw")
    occ = m.new_words("occupancy", 2)  # [readers inside, writers inside]
    data = m.new_words("data", 1)
    m.spawn(rw_writer, lock, occ, data, name="writer0")
    m.spawn(rw_writer, lock, occ, data, name="writer1")
    m.spawn(rw_reader, lock, occ, data, name="reader")

    def exclusion(m: Machine) -> str | None:
        readers, writers = occ[0], occ[1]
        if writers > 1:
            return f"{writers} writers inside together"
        if writers and readers:
            return "a writer and a reader inside together"
        return None

    m.invariant("rwlock-exclusion", exclusion)
    m.final_check("lost-update", lambda m: None if data[0] == 2 else f"data is {data[0]}")


# --- ABBA -----------------------------------------------------------------------------

def reader_then_spin(rw: RWLock, s: SpinLock) -> Gen:
    yield read_lock(rw)
    yield spin_lock(s)
    yield spin_unlock(s)
    yield read_unlock(rw)


def spin_then_writer(rw: RWLock, s: SpinLock) -> Gen:
    yield spin_lock(s)
    yield write_lock(rw)
    yield write_unlock(rw)
    yield spin_unlock(s)


def _abba_program(m: Machine) -> None:
    rw, s = RWLock("rw"), SpinLock("s")
    m.spawn(reader_then_spin, rw, s, name="A")
    m.spawn(spin_then_writer, rw, s, name="B")


EXAMPLES: dict[str, Program] = {
    p.key.split("/", 1)[1]: p for p in [
        Program("example/lost-update", lambda m: _counter_program(m, racy_inc),
                "3 threads: counter++ as load then store", expect_violation=True),
        Program("example/cas-increment", lambda m: _counter_program(m, cas_inc),
                "3 threads: counter++ as a cmpxchg loop"),
        Program("example/rcu-free", lambda m: _rcu_program(m, updater_sync),
                "2 RCU readers; updater unlinks, synchronize_rcu(), frees"),
        Program("example/rcu-call", lambda m: _rcu_program(m, updater_call_rcu),
                "2 RCU readers; updater unlinks, frees from call_rcu()"),
        Program("example/rcu-free-early", lambda m: _rcu_program(m, updater_early),
                "2 RCU readers; updater frees without a grace period",
                expect_violation=True),
        Program("example/rwlock", _rwlock_program,
                "queued rwlock: 2 writers, 1 reader, occupancy checked every step"),
        Program("example/abba-deadlock", _abba_program,
                "read_lock(rw)+spin_lock(s) against spin_lock(s)+write_lock(rw)",
                expect_violation=True),
    ]
}
