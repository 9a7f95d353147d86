"""The timed driver, the cost model and profiles.

Small programs with costs chosen so the expected virtual times can be worked out by hand,
plus every kernel model scenario run once on the timed driver (determinism, accounting,
no missed wakeups, no label missing from the default cost model).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import youngsim.sim.timed as timed_mod
from youngsim.sim import (Machine, Mutex, RcuDomain, RWLock, SpinLock, Words, call_rcu,
                          cas, fetch_add, free, load, mutex_lock, mutex_unlock, nop,
                          rcu_read_lock, rcu_read_unlock, read_lock, read_unlock,
                          spin_lock, spin_unlock, store, vcas, vfetch_and, vfetch_or, vload,
                          vstore, vupdate, vxchg, wait_until, write_lock, write_unlock)
from youngsim.sim.costmodel import (CostModel, load_cost_model, parse_cost_text)
from youngsim.sim.program import Program
from youngsim.sim.timed import Dist, TimedDriver, run_timed

SRC = Path(__file__).resolve().parents[1] / "src" / "youngsim"


def model(**labels: int) -> CostModel:
    """The default model plus labels ``name=ns``, with free lock operations, no handoff
    and no contention surcharge unless a test turns them on."""
    zero = "test: zero"
    cm = load_cost_model().with_labels(
        {k: {"ns": v, "rationale": "test"} for k, v in labels.items()})
    return cm.with_tables({
        "kinds": {k: {"ns": 0, "rationale": zero}
                  for k in ("lock", "unlock", "acquire", "read_lock", "read_unlock",
                            "write_lock", "write_unlock", "nop", "store", "load", "cas",
                            "fetch_add")},
        "wakeup": {"spin_handoff": {"ns": 0, "rationale": zero},
                   "sleep": {"ns": 0, "rationale": zero}},
        "contention": {"atomic_surcharge": {"ns": 0, "rationale": zero}},
    })


def thread_named(r, name):
    return next(t for t in r.threads if t.name == name)


# -- the ready queue: the order of a heap of (time, sequence, tid) ----------------------

@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.tuples(st.integers(0, 6), st.integers(0, 40)),
                          st.none()), max_size=80))
def test_ready_queue_takes_threads_in_time_then_fifo_order(script):
    """Pushes (time, tid) and pops (None) in any order: the queue gives what a heap of
    (time, push sequence, tid) gives, its ``ordered()`` is that heap's sorted contents,
    and ``assign`` of that order gives the same queue back."""
    import heapq
    q = timed_mod._ReadyQueue()
    heap: list[tuple[int, int, int]] = []
    for seq, step in enumerate(script):
        if step is None:
            if heap:
                assert q.pop() == heapq.heappop(heap)[2]
            continue
        t, tid = step
        q.push(t, tid)
        heapq.heappush(heap, (t, seq, tid))
        assert -q.keys[-1] == heap[0][0]  # the earliest ready time
        assert q.ordered() == [(e[0], e[2]) for e in sorted(heap)]
    copy = timed_mod._ReadyQueue()
    copy.assign(q.ordered())
    assert (copy.keys, copy.tids) == (q.keys, q.tids)


# --- virtual time and locks ---------------------------------------------------------------

def test_ops_advance_the_thread_clock_by_their_cost():
    m = Machine()

    def t():
        yield nop(cost="a")
        yield nop(cost="b")
        yield nop(cost="a")
    m.spawn(t, name="t")
    r = run_timed(m, model(a=10, b=25))
    assert r.stopped == "done"
    assert thread_named(r, "t").end_ns == 45 and r.end_ns == 45
    assert r.label_counts == {"a": 2, "b": 1} and r.label_ns == {"a": 20, "b": 25}


def test_lock_held_for_h_delays_the_waiter_by_at_least_h():
    H = 1000
    m = Machine()
    lk = SpinLock("lk")

    def holder():
        yield spin_lock(lk)
        yield nop(cost="hold")
        yield spin_unlock(lk)

    def waiter():
        yield nop(cost="delay")  # arrive after the holder took the lock
        yield spin_lock(lk)
        yield nop(cost="after")
        yield spin_unlock(lk)
    m.spawn(holder, name="holder")
    m.spawn(waiter, name="waiter")
    r = run_timed(m, model(hold=H, delay=10, after=5))
    w = thread_named(r, "waiter")
    assert w.end_ns >= H + 5
    lock = r.locks["lk"]
    assert lock.acquisitions == 2 and lock.contended == 1
    wait = lock.wait["other:excl"]
    assert wait.max >= H - 10  # requested at 10, granted when the holder released at H
    assert lock.hold["other:excl"].max >= H


def _holder_and_waiter(lock_kind: type) -> Machine:
    """A holder takes lock "L" for ``hold``; a waiter asks for it after ``delay``."""
    m = Machine()
    lk = lock_kind("L")
    acq = mutex_lock if lock_kind is Mutex else spin_lock
    rel = mutex_unlock if lock_kind is Mutex else spin_unlock

    def holder():
        yield acq(lk)
        yield nop(cost="hold")
        yield rel(lk)

    def waiter():
        yield nop(cost="delay")
        yield acq(lk)
        yield rel(lk)
    m.spawn(holder, name="holder")
    m.spawn(waiter, name="waiter")
    return m


def test_handoff_cost_is_added_to_the_waiters_ready_time():
    m = _holder_and_waiter(SpinLock)
    cm = model(hold=1000, delay=10).with_tables(
        {"wakeup": {"spin_handoff": {"ns": 77, "rationale": "test"}}})
    r = run_timed(m, cm)
    assert thread_named(r, "waiter").end_ns == 1000 + 77


def _rw_program(with_writer: bool) -> Machine:
    m = Machine()
    rw = RWLock("mmu_lock")

    def reader(delay_label):
        yield nop(cost=delay_label)
        yield read_lock(rw)
        yield nop(cost="rhold")
        yield read_unlock(rw)

    def writer():
        yield nop(cost="d10")
        yield write_lock(rw)
        yield nop(cost="whold")
        yield write_unlock(rw)
    m.spawn(reader, "d0", name="r1")
    if with_writer:
        m.spawn(writer, name="w")
    m.spawn(reader, "d20", name="r2")
    return m


def test_queued_rwlock_fairness_a_waiting_writer_delays_a_later_reader():
    cm = model(d0=0, d10=10, d20=20, rhold=1000, whold=500)
    alone = run_timed(_rw_program(False), cm)
    # without a writer the second reader shares the lock at once
    assert alone.locks["mmu_lock"].wait["other:read"].max == 0
    assert thread_named(alone, "r2").end_ns == 20 + 1000
    r = run_timed(_rw_program(True), cm)
    # with a writer queued at 10, the reader arriving at 20 waits behind it: until r1
    # releases (1000) and the writer has held the lock (500)
    assert thread_named(r, "r2").end_ns >= 1000 + 500 + 1000
    assert r.locks["mmu_lock"].wait["other:read"].max >= 1000 + 500 - 20
    assert r.locks["mmu_lock"].wait["other:write"].max >= 1000 - 10


def test_spinning_waiters_burn_cpu_as_spin_and_mutex_waiters_sleep():
    cm = model(hold=1000, delay=100)
    r = run_timed(_holder_and_waiter(SpinLock), cm)
    w = thread_named(r, "waiter")
    assert w.categories.get("spin") == 900
    assert r.lock_spin_ns["L"] == 900 and r.locks["L"].sleep_ns == 0
    r = run_timed(_holder_and_waiter(Mutex), cm)
    w = thread_named(r, "waiter")
    assert w.categories.get("sleep") == 900 and "spin" not in w.categories
    assert r.locks["L"].sleep_ns == 900 and r.locks["L"].spin_ns == 0


def test_wait_until_spins_in_its_labels_category():
    m = Machine()
    flag = m.new_words("flag", 1)

    def setter():
        yield nop(cost="work")
        yield store(flag, 0, 1)

    def flusher():
        yield wait_until(flag, 0, 1, 1, cost="tlb_flush_ipi")
    m.spawn(setter, name="setter")
    m.spawn(flusher, name="flusher")
    r = run_timed(m, model(work=500))
    f = thread_named(r, "flusher")
    assert f.categories.get("tlb_flush", 0) >= 500  # spinning for the acknowledgement


def test_categories_add_up_to_each_threads_clock():
    m = Machine()
    rcu = RcuDomain("rcu")
    lk = SpinLock("lk")
    mx = Mutex("mx")
    w = m.new_words("w", 16)

    def cb():
        yield store(w, 3, 1, cost="spte_write")

    def worker(i):
        yield rcu_read_lock(rcu, cost="rcu_read_lock")
        yield spin_lock(lk, cost="mmu_lock_write")
        yield vfetch_and(w, 0, 16, 0, cost="spte_clear_young")
        yield spin_unlock(lk, cost="mmu_lock_write_release")
        yield rcu_read_unlock(rcu, cost="rcu_read_unlock")
        yield mutex_lock(mx)
        yield nop(cost="hw_walk")
        yield mutex_unlock(mx)
        yield call_rcu(rcu, cb)
    for i in range(4):
        m.spawn(worker, i, name=f"w{i}")
    d = TimedDriver(m, load_cost_model(), roles={0: "vcpu", 1: "aging", 2: "zapper"})
    r = d.run()
    assert r.ok and r.stopped == "done" and d.missed_wakeups == 0
    assert len(r.threads) == 8  # four rcu callbacks
    for t in r.threads:
        assert sum(t.categories.values()) == t.end_ns - t.start_ns, t
    for t in r.threads[:4]:
        assert t.start_ns == 0 and sum(t.categories.values()) == t.end_ns
    assert {t.role for t in r.threads[4:]} == {"rcu"}
    assert sum(r.categories.values()) == sum(t.elapsed_ns for t in r.threads)
    assert r.threads[0].categories.get("guest")  # hw_* labels are guest time
    assert r.threads[1].categories.get("aging")  # role default for spte_* work


def test_deterministic_bit_for_bit():
    def build(m: Machine) -> None:
        lk = RWLock("mmu_lock")
        w = m.new_words("spt", 64)

        def vcpu(i):
            for j in range(30):
                yield read_lock(lk, cost="mmu_lock_read")
                old = yield load(w, (i * 7 + j) % 64, cost="spte_read")
                yield cas(w, (i * 7 + j) % 64, old, old | 1, cost="spte_cmpxchg")
                yield read_unlock(lk, cost="mmu_lock_read_release")
                yield nop(cost="hw_walk")

        def ager():
            for j in range(10):
                yield write_lock(lk, cost="mmu_lock_write")
                yield vfetch_and(w, 0, 64, ~1, cost="spte_clear_young")
                yield write_unlock(lk, cost="mmu_lock_write_release")
        for i in range(4):
            m.spawn(vcpu, i, name=f"vcpu{i}")
        m.spawn(ager, name="ager")
    prog = Program("test/det", build)
    roles = {0: "vcpu", 1: "vcpu", 2: "vcpu", 3: "vcpu", 4: "aging"}
    a = TimedDriver(prog, sample_period_ns=7, roles=roles).run()
    b = TimedDriver(prog, sample_period_ns=7, roles=roles).run()
    assert a.to_dict() == b.to_dict()
    assert a.profile.folded() == b.profile.folded()
    assert a.summary() == b.summary()
    assert a.locks["mmu_lock"].contended > 0 and sum(a.cas_attempts.values()) == 120


def test_until_stops_and_resumes():
    m = Machine()
    lk = SpinLock("lk")

    def proc():
        while True:
            yield spin_lock(lk)
            yield nop(cost="hold")
            yield spin_unlock(lk)
            yield nop(cost="think")
    for i in range(3):
        m.spawn(proc, name=f"p{i}", daemon=True)
    d = TimedDriver(m, model(hold=100, think=100))
    with pytest.raises(ValueError, match="daemon"):
        d.run()
    r = d.run(until_ns=10_000)
    assert r.stopped == "until" and r.end_ns == 10_000
    for t in r.threads:
        assert sum(t.categories.values()) == t.end_ns  # parked ones closed at 10 us
    assert r.categories["spin"] > 0
    r2 = d.run(until_ns=20_000)
    assert r2.end_ns == 20_000 and r2.steps > r.steps
    # one run to 20 us is the same as two runs
    m2 = Machine()
    lk2 = SpinLock("lk")

    def proc2():
        while True:
            yield spin_lock(lk2)
            yield nop(cost="hold")
            yield spin_unlock(lk2)
            yield nop(cost="think")
    for i in range(3):
        m2.spawn(proc2, name=f"p{i}", daemon=True)
    one = TimedDriver(m2, model(hold=100, think=100)).run(until_ns=20_000)
    assert one.steps == r2.steps and one.categories == r2.categories


def test_violations_stop_the_run():
    m = Machine()
    a, b = SpinLock("a"), SpinLock("b")

    def t1():
        yield spin_lock(a)
        yield nop(cost="x")
        yield spin_lock(b)

    def t2():
        yield spin_lock(b)
        yield nop(cost="x")
        yield spin_lock(a)
    m.spawn(t1)
    m.spawn(t2)
    r = run_timed(m, model(x=10))
    assert r.stopped == "deadlock" and r.violation.kind == "deadlock"

    m = Machine()
    w = m.new_words("w", 1)

    def freer():
        yield free(w)

    def user():
        yield nop(cost="x")
        yield load(w, 0)
    m.spawn(freer)
    m.spawn(user)
    r = run_timed(m, model(x=10))
    assert r.stopped == "violation" and r.violation.kind == "use-after-free"


# --- contention, vectors, TLB flushes ---------------------------------------------------------

def _atomic_after_store(delay: int, index: int, same_thread: bool = False):
    m = Machine()
    w = m.new_words("w", 16)

    def writer():
        yield store(w, 0, 1)
        if same_thread:
            yield fetch_add(w, index, 1, cost="atomic")

    def other():
        yield nop(cost=f"d{delay}")
        yield fetch_add(w, index, 1, cost="atomic")
    m.spawn(writer, name="writer")
    if not same_thread:
        m.spawn(other, name="other")
    cm = load_cost_model().with_labels({
        "atomic": {"ns": 7, "rationale": "test"},
        f"d{delay}": {"ns": delay, "rationale": "test"}})
    return run_timed(m, cm), cm


def test_contended_atomic_surcharge_only_for_a_line_another_thread_wrote_recently():
    r, cm = _atomic_after_store(100, 1)  # same line (words 0-7), 100 ns later
    assert r.atomic_contended == 1
    assert r.label_ns["atomic"] == 7 + int(cm.atomic_surcharge_ns + 0.5)
    r, _ = _atomic_after_store(100, 8)  # next cache line
    assert r.atomic_contended == 0 and r.label_ns["atomic"] == 7
    window = int(cm.contention_window_ns)
    r, _ = _atomic_after_store(window + 10, 1)  # too long ago
    assert r.atomic_contended == 0 and r.label_ns["atomic"] == 7
    r, _ = _atomic_after_store(0, 1, same_thread=True)  # its own write
    assert r.atomic_contended == 0
    assert cm.atomic_ns(0, "atomic", True) - cm.atomic_ns(0, "atomic", False) \
        == cm.atomic_surcharge_ns


def test_vector_ops_cost_per_element_and_count_contended_lines():
    m = Machine()
    w = m.new_words("w", 64)

    def vcpu():
        yield store(w, 3, 1)
        yield store(w, 40, 1)

    def ager():
        yield nop(cost="d")
        yield vload(w, 0, 64, cost="walk")
        yield vfetch_and(w, 0, 64, ~1, cost="clear")
    m.spawn(vcpu, name="vcpu")
    m.spawn(ager, name="ager")
    cm = load_cost_model().with_labels({
        "d": {"ns": 50, "rationale": "test"},
        "walk": {"ns": 5, "per_element_ns": 2, "rationale": "test"},
        "clear": {"ns": 7, "per_element_ns": 7, "vector_base_ns": 10, "rationale": "t"}})
    r = run_timed(m, cm)
    assert r.label_ns["walk"] == 64 * 2
    # 64 atomics plus two lines (words 3 and 40) the vCPU wrote 50 ns ago
    assert r.label_ns["clear"] == 10 + 64 * 7 + 2 * int(cm.atomic_surcharge_ns + 0.5)
    assert r.atomic_contended == 2


def test_vupdate_costs_what_the_load_atomic_and_store_it_replaces_cost():
    """A ``vupdate`` is charged its read per word, then its atomic words as a vector
    atomic (contended lines included) and its stored words as a vector store, in that
    order in time: the same timeline, label totals and contention as the three ops."""
    results = []
    for fused in (False, True):
        m = Machine()
        w = m.new_words("w", 64)
        w.data[::3] = 1  # words 0, 3, ..., 63 have bit 0 set

        def vcpu():
            yield store(w, 3, 1)
            yield store(w, 40, 0)

        def ager():
            yield nop(cost="d")
            if fused:
                yield vupdate(w, 0, 64, _flip_low_bit, cost="walk", atomic_cost="clear",
                              store_cost="set")
            else:
                v = yield vload(w, 0, 64, cost="walk")
                was = (v & np.uint64(1)).astype(bool)
                yield vfetch_and(w, 0, 64, ~1, select=was, cost="clear")
                yield vstore(w, 0, v | np.uint64(1), select=~was, cost="set")
            yield nop(cost="d")
        m.spawn(vcpu, name="vcpu")
        m.spawn(ager, name="ager")
        cm = load_cost_model().with_labels({
            "d": {"ns": 50, "rationale": "test"},
            "walk": {"ns": 5, "per_element_ns": 2, "rationale": "test"},
            "clear": {"ns": 7, "per_element_ns": 7, "vector_base_ns": 10, "rationale": "t"},
            "set": {"ns": 1, "per_element_ns": 1, "rationale": "test"}})
        r = run_timed(m, cm)
        assert w.data.tolist() == [(0 if k % 3 == 0 else 1) for k in range(64)]
        results.append(r)
    split, fused_r = results
    # 22 atomics, two of them on lines the vCPU wrote 50 ns before (words 3 and 40:
    # atomics on words 3 and 42), and 42 stores
    surcharge = int(load_cost_model().atomic_surcharge_ns + 0.5)
    assert fused_r.label_ns["clear"] == 10 + 22 * 7 + 2 * surcharge
    assert fused_r.label_ns["set"] == 42 and fused_r.atomic_contended == 2
    a, b = split.to_dict(), fused_r.to_dict()
    assert b["steps"] == a["steps"] - 2
    for d in (a, b):
        d.pop("steps")
        for t in d["threads"]:
            t.pop("steps")
    assert a == b


def test_the_driver_charges_a_vector_op_what_the_cost_model_says_it_costs():
    """``CostModel.op_cost`` (``vector_elements``) and the driver's own count of a
    vector operation's words (``TimedDriver._vector``, kept apart for the compiled
    core's hot loop) agree: all words, a selection, a ``vupdate``'s read."""
    cm = load_cost_model().with_labels({
        "rd": {"ns": 3, "per_element_ns": 2, "vector_base_ns": 5, "rationale": "test"},
        "at": {"ns": 7, "per_element_ns": 7, "vector_base_ns": 10, "rationale": "test"},
        "st": {"ns": 1, "per_element_ns": 1, "vector_base_ns": 4, "rationale": "test"},
        "up": {"ns": 2, "per_element_ns": 3, "vector_base_ns": 6, "rationale": "test"},
        "at2": {"ns": 5, "per_element_ns": 5, "rationale": "test"},
        "st2": {"ns": 1, "per_element_ns": 1, "rationale": "test"}})
    m = Machine()
    w = m.new_words("w", 64)
    sel = np.zeros(64, dtype=bool)
    sel[::5] = True
    ops = [vload(w, 0, 64, cost="rd"), vfetch_and(w, 8, 40, ~1, cost="at"),
           vstore(w, 0, np.arange(64, dtype=np.uint64), select=sel, cost="st"),
           vupdate(w, 0, 64, _flip_low_bit, cost="up", atomic_cost="at2",
                   store_cost="st2")]

    def t():
        for op in ops:
            yield op
    m.spawn(t, name="t")
    r = run_timed(m, cm)
    assert r.violation is None and not r.unknown_labels
    for op in ops:
        assert r.label_ns[op.cost] == int(cm.op_cost(op) + 0.5), op.cost
    assert r.label_ns["st"] == 4 + 13  # 13 selected words: the selection is counted


def test_vupdate_writes_are_charged_even_when_the_code_after_it_fails():
    """The words are written when the operation runs: a failure of the model code that
    follows it in the same step (a contract, say) does not make them free."""
    m = Machine()
    w = m.new_words("w", 8)
    w.data[:] = 1

    def ager():
        yield vupdate(w, 0, 8, _flip_low_bit, cost="walk", atomic_cost="clear")
        raise RuntimeError("a contract after the clear")
    m.spawn(ager, name="ager")
    cm = load_cost_model().with_labels({
        "walk": {"ns": 5, "per_element_ns": 2, "rationale": "test"},
        "clear": {"ns": 7, "per_element_ns": 7, "rationale": "test"}})
    r = run_timed(m, cm)
    assert r.stopped == "violation" and not w.data.any()
    assert r.label_ns == {"walk": 16, "clear": 56} and r.end_ns == 16 + 56


def test_tlb_flush_cost_grows_with_the_cpus_to_interrupt():
    cm = load_cost_model()
    costs = [cm.tlb_flush_ns(n) for n in (1, 2, 4, 16, 64)]
    assert costs == sorted(costs) and len(set(costs)) == 5
    per_cpu = cm.tlb_flush_ns(2) - cm.tlb_flush_ns(1)
    assert per_cpu > 0 and cm.tlb_flush_ns(64) == pytest.approx(
        cm.tlb_flush_base_ns + 64 * per_cpu)
    assert cm.tlb_flush_ns(0) == 0

    def flush_prog(ncpus: int, batches: int) -> Machine:
        m = Machine()
        words = [m.new_words(f"tlb{i}", 8) for i in range(ncpus)]

        def flusher():  # shaped like kvm_flush_remote_tlbs
            for _ in range(batches):
                for w in words:
                    yield fetch_add(w, 0, 1, cost="tlb_flush_request")
                for w in words:
                    yield wait_until(w, 0, 2, 0, cost="tlb_flush_ipi")
                    yield store(w, 0, 0, cost="tlb_flush_local")
                    yield fetch_add(w, 0, -1, cost="tlb_flush_done")
                yield nop(cost="between")
        m.spawn(flusher, name="flusher")
        return m
    cm2 = cm.with_labels({"between": {"ns": 0, "rationale": "test"}})
    times = {}
    for n in (1, 4, 16):
        r = run_timed(flush_prog(n, 1), cm2)
        assert r.tlb_flushes == 1
        times[n] = r.end_ns
        # (each operation's cost is rounded to whole ns: at most 0.5 ns per op)
        assert abs(r.end_ns - cm.tlb_flush_ns(n)) <= 0.5 * 4 * n
    assert times[1] < times[4] < times[16]
    r = run_timed(flush_prog(4, 3), cm2)
    assert r.tlb_flushes == 3 and r.end_ns == 3 * times[4]


def test_cas_failures_are_counted():
    m = Machine()
    w = m.new_words("w", 1)

    def t():
        yield cas(w, 0, 0, 5, cost="spte_cmpxchg")  # succeeds
        yield cas(w, 0, 0, 6, cost="spte_cmpxchg")  # fails: 5 != 0
    m.spawn(t)
    r = run_timed(m)
    assert r.cas_attempts == {"spte_cmpxchg": 2} and r.cas_failures == {"spte_cmpxchg": 1}


def test_vector_cas_counts_each_selected_word():
    m = Machine()
    w = m.new_words("w", 4)
    u = lambda *xs: np.array(xs, dtype=np.uint64)  # noqa: E731

    def t():
        # words 0 and 1 match, 2 does not, 3 is not selected: 3 attempts, 1 failure
        yield vcas(w, 0, 4, u(0, 0, 7, 0), u(1, 1, 1, 1),
                   select=np.array([True, True, True, False]), cost="spte_cmpxchg")
    m.spawn(t)
    r = run_timed(m)
    assert r.cas_attempts == {"spte_cmpxchg": 3} and r.cas_failures == {"spte_cmpxchg": 1}
    assert w.data.tolist() == [1, 1, 0, 0]


# --- profiles ---------------------------------------------------------------------------------

def _profiled():
    m = Machine()
    lk = SpinLock("lk")

    def inner():
        yield nop(cost="work")

    def middle():
        yield from inner()
        yield nop(cost="work")

    def outer():
        yield spin_lock(lk)
        yield from middle()
        yield spin_unlock(lk)
    m.spawn(outer, name="a")
    m.spawn(outer, name="b")
    return TimedDriver(m, model(work=100), sample_period_ns=10, roles={0: "vcpu", 1: "aging"})


def test_folded_stacks_format_and_counts():
    d = _profiled()
    r = d.run()
    text = r.profile.folded()
    lines = text.splitlines()
    assert text.endswith("\n") and lines == sorted(lines)
    line_re = re.compile(r"^[^ ;]+(;[^;]+)* [0-9]+$")
    assert all(line_re.match(ln) for ln in lines), lines
    assert sum(int(ln.rsplit(" ", 1)[1]) for ln in lines) == r.profile.total
    assert "[vcpu];outer;middle;inner 10" in lines
    assert "[vcpu];outer;middle 10" in lines
    # b spins 200 ns while a holds the lock: sampled with the slow-path leaf
    assert "[aging];outer;native_queued_spin_lock_slowpath 20" in lines
    # on-CPU time / period: a 200 ns of work, b 200 ns spinning + 200 ns of work
    assert r.profile.total == 20 + 40


def test_children_table():
    r = _profiled().run()
    rows = r.profile.children_table()
    names = [row[0] for row in rows]
    assert names[0] == "outer" and rows[0][1] == pytest.approx(100.0)
    assert not any(n.startswith("[") and n != "[spin-wait]" for n in names)  # roots out
    for f, ch, sf, nch, nsf in rows:
        assert ch >= sf and nch >= nsf
    assert [row[3] for row in rows] == sorted((row[3] for row in rows), reverse=True)
    by = {row[0]: row for row in rows}
    assert by["middle"][1] == pytest.approx(100.0 * 40 / 60)
    assert by["inner"][2] == pytest.approx(100.0 * 20 / 60)
    table = r.profile.format_table()
    assert "Children" in table and "Self" in table and "outer" in table


def test_dist_percentiles():
    d = Dist()
    for x in range(1, 1001):
        d.add(x)
    assert d.n == 1000 and d.min == 1 and d.max == 1000 and d.mean == pytest.approx(500.5)
    assert 990 <= d.percentile(99) <= 1000 * 1.125
    assert 500 <= d.percentile(50) <= 500 * 1.125
    e = Dist()
    import numpy as np
    e.add_many(np.arange(1, 1001))
    assert e.to_dict() == d.to_dict()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1 << 40), st.integers(0, 40)), min_size=1,
                max_size=400), st.integers(0, 400))
def test_lock_samples_fold_into_the_distributions_each_sample_makes(events, cut):
    """``_fold_into`` (every holder's samples at once: one sort, then per-holder sums,
    extremes and bucket counts) gives each holder the distribution that adding its
    samples one by one gives, in two batches as in one."""
    dur = np.array([d for d, _ in events], dtype=np.int64)
    who = np.array([w for _, w in events], dtype=np.int64)
    folded: dict[int, Dist] = {}
    timed_mod._fold_into(dur[:cut], who[:cut], folded)
    timed_mod._fold_into(dur[cut:], who[cut:], folded)
    one: dict[int, Dist] = {}
    for d, w in events:
        one.setdefault(w, Dist()).add(d)
    assert {w: x.to_dict() for w, x in folded.items()} == {
        w: x.to_dict() for w, x in one.items()}


# --- the cost model -------------------------------------------------------------------------

def test_default_cost_model_is_complete_and_sourced():
    cm = load_cost_model()
    assert cm.name == "default"
    for e in list(cm.kinds.values()) + list(cm.labels.values()):
        assert e.source and e.ns >= 0
    # every label the kernel model uses has a cost
    used = set()
    for part in ("kernel", "designs", "check"):
        for p in (SRC / part).rglob("*.py"):
            used |= set(re.findall(r'cost="([a-z0-9_]+)"', p.read_text()))
    assert used, "no labels found"
    missing = sorted(used - set(cm.labels))
    assert not missing, f"labels used by the model but missing from costs.toml: {missing}"


def _write(tmp_path, text):
    p = tmp_path / "costs.toml"
    p.write_text(text)
    return p


def test_cost_model_bad_toml(tmp_path):
    with pytest.raises(ValueError, match="invalid TOML"):
        load_cost_model(_write(tmp_path, "[labels.x\nns = 1"))


def test_cost_model_missing_source(tmp_path):
    p = _write(tmp_path, 'extends = "default"\n[labels.spte_read]\nns = 3\n')
    with pytest.raises(ValueError, match=r"labels\.spte_read: missing 'source' or 'rationale'"):
        load_cost_model(p)


def test_cost_model_negative_cost(tmp_path):
    p = _write(tmp_path, 'extends = "default"\n[labels.spte_read]\nns = -1\n'
                         'source = "x"\n')
    with pytest.raises(ValueError, match=r"labels\.spte_read\.ns: negative cost"):
        load_cost_model(p)


def test_cost_model_unknown_key_and_kind(tmp_path):
    p = _write(tmp_path, 'extends = "default"\n[labels.spte_read]\nnss = 1\nns = 1\n'
                         'source = "x"\n')
    with pytest.raises(ValueError, match=r"labels\.spte_read\.nss: unknown key"):
        load_cost_model(p)
    p = _write(tmp_path, 'extends = "default"\n[kinds.lod]\nns = 1\nsource = "x"\n')
    with pytest.raises(ValueError, match=r"kinds\.lod: unknown operation kind"):
        load_cost_model(p)
    p = _write(tmp_path, 'extends = "default"\n[wakeup.spin_handof]\nns = 1\n'
                         'source = "x"\n')
    with pytest.raises(ValueError, match=r"wakeup\.spin_handof: unknown key"):
        load_cost_model(p)
    p = _write(tmp_path, 'bogus = 1\n')
    with pytest.raises(ValueError, match=r"bogus: unknown key"):
        load_cost_model(p)


def test_cost_model_non_numeric_and_missing_kind(tmp_path):
    p = _write(tmp_path, 'extends = "default"\n[labels.x]\nns = "fast"\nsource = "x"\n')
    with pytest.raises(ValueError, match=r"labels\.x\.ns: must be a number"):
        load_cost_model(p)
    doc = parse_cost_text(load_cost_model_text())
    del doc["kinds"]["vxchg"]
    with pytest.raises(ValueError, match=r"kinds\.vxchg: missing"):
        CostModel.from_dict(doc)
    with pytest.raises(ValueError, match="cannot read"):
        load_cost_model(tmp_path / "nope.toml")


def load_cost_model_text() -> str:
    return (SRC / "data" / "costs.toml").read_text()


def test_cost_model_extends_and_full_file(tmp_path):
    p = _write(tmp_path, 'extends = "default"\n[model]\nname = "fast-ipi"\n'
                         '[tlb_flush.base]\nns = 100\nrationale = "what if"\n')
    cm = load_cost_model(p)
    assert cm.name == "fast-ipi" and cm.tlb_flush_base_ns == 100
    assert cm.labels["spte_read"] == load_cost_model().labels["spte_read"]
    full = _write(tmp_path, load_cost_model_text())
    assert load_cost_model(full).labels == load_cost_model().labels
    assert cm.op_cost(vload(Words("w", 8), 0, 8, cost="spte_read")) == \
        8 * cm.labels["spte_read"].per_element_ns
    assert cm.category_of("hw_walk", "vcpu") == "guest"
    assert cm.category_of("spte_read", "vcpu") == "fault"
    assert cm.category_of("spte_read", "aging") == "aging"
    assert cm.category_of("mmu_lock_write_anything_new", "aging") == "spin"  # prefix rule


# --- the kernel model on the timed driver ------------------------------------------------------

def _kernel_programs():
    from youngsim.check.registry import resolve
    from youngsim.check.scenarios import SCENARIOS
    from youngsim.designs import DESIGNS
    for design in DESIGNS:
        for mmu in ("x86-tdp", "x86-tdp-noad"):
            for scenario in SCENARIOS:
                try:
                    yield resolve(f"model/{design}/{mmu}/{scenario}")
                except Exception:
                    continue


def test_kernel_scenarios_run_timed():
    cm = load_cost_model()
    n = 0
    for prog in _kernel_programs():
        roles = {t.tid: ("vcpu" if "vcpu" in t.name else "aging")
                 for t in prog.build().threads}
        d = TimedDriver(prog, cm, sample_period_ns=50, roles=roles)
        r = d.run()
        assert d.missed_wakeups == 0, prog.key
        assert not r.unknown_labels, (prog.key, r.unknown_labels)
        assert r.stopped in ("done", "violation", "deadlock"), prog.key
        for t in r.threads:
            assert sum(t.categories.values()) == t.end_ns - t.start_ns, (prog.key, t)
        again = TimedDriver(prog, cm, sample_period_ns=50, roles=roles).run()
        assert again.to_dict() == r.to_dict(), prog.key
        n += 1
    assert n >= 10


# -- large objects keep their cache-line stamps in arrays, with the dict's rule ----------

_LINE_OP = st.tuples(st.sampled_from(["store", "fetch_add", "cas", "vfetch_and", "vstore",
                                      "vxchg", "vfetch_or", "vupdate", "nop"]),
                     st.integers(0, 63), st.integers(1, 24), st.booleans())


def _flip_low_bit(view: np.ndarray) -> tuple:
    """A ``vupdate`` function: flip bit 0 of each word, atomically where it was set,
    with a plain store where it was clear."""
    was = (view & np.uint64(1)).astype(bool)
    view ^= np.uint64(1)
    return None, was, int(was.sum()), ~was, int((~was).sum())


def _line_program(progs: list[list[tuple[str, int, int, bool]]]) -> Machine:
    m = Machine()
    w = m.new_words("w", 64)

    def thread(prog):
        for kind, i, n, sel in prog:
            hi = min(64, i + n)
            mask = np.arange(hi - i) % 2 == 0 if sel else None
            if kind == "store":
                yield store(w, i, n)
            elif kind == "fetch_add":
                yield fetch_add(w, i, 1, cost="atomic")
            elif kind == "cas":
                yield cas(w, i, 0, n, cost="atomic")
            elif kind == "vfetch_and":
                yield vfetch_and(w, i, hi, ~1, select=mask, cost="vatomic")
            elif kind == "vfetch_or":
                yield vfetch_or(w, i, hi, 2, select=mask, cost="vatomic")
            elif kind == "vxchg":
                yield vxchg(w, i, hi, n, select=mask, cost="vatomic")
            elif kind == "vstore":
                yield vstore(w, i, np.full(hi - i, n, dtype=np.uint64), select=mask)
            elif kind == "vupdate":
                yield vupdate(w, i, hi, _flip_low_bit, cost="gap", atomic_cost="vatomic")
            else:
                yield nop(cost="gap")
    for k, prog in enumerate(progs):
        m.spawn(thread, prog, name=f"t{k}")
    return m


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(_LINE_OP, min_size=1, max_size=12), min_size=2, max_size=3))
def test_line_stamps_in_arrays_follow_the_dicts_rule(progs):
    """The driver keeps the cache-line stamps of objects of ``_BIG_WORDS`` words or more
    in arrays (``_LineTable``): the same program gives the same costs, contended
    atomics and timeline whichever way a 64-word object's lines are kept."""
    cm = load_cost_model().with_labels({
        "atomic": {"ns": 7, "rationale": "test"},
        "vatomic": {"ns": 7, "per_element_ns": 7, "rationale": "test"},
        "gap": {"ns": 40, "rationale": "test"}})
    results = []
    for big in (1 << 30, 1):  # the dict, then arrays for every object
        old = timed_mod._BIG_WORDS
        timed_mod._BIG_WORDS = big
        try:
            r = run_timed(_line_program(progs), cm)
        finally:
            timed_mod._BIG_WORDS = old
        results.append((r.end_ns, r.atomic_contended, r.label_ns, r.categories,
                        [(t.name, t.end_ns) for t in r.threads]))
    assert results[0] == results[1]
