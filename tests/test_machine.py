"""Memory operations, footprints and the executor's bookkeeping.

The commutativity property at the end is the soundness basis of the partial-order
reduction: operations whose footprints do not conflict must commute.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from youngsim.sim import (MASK64, Machine, RcuDomain, SpinLock, Words, alloc, cas,
                          fetch_add, fetch_and, fetch_or, free, load, nop, rcu_read_lock,
                          rcu_read_unlock, spawn, spin_lock, store, synchronize_rcu,
                          vcas, vfetch_and, vfetch_or, vload, vstore, vupdate, vxchg,
                          wait_until, xchg)
from youngsim.sim import ops as O
from youngsim.sim.explore import conflict, footprint, run_schedule, systematic

from conftest import kind, program, run_default


def run_ops(init, make_ops):
    """Run one thread that yields ``make_ops(w)`` in order on a fresh ``Words`` with
    contents ``init``; return (final contents, results)."""
    results: list = []

    def build(m: Machine) -> None:
        w = m.new_words("w", len(init))
        w.data[:] = np.array(init, dtype=np.uint64)

        def t():
            for op in make_ops(w):
                r = yield op
                results.append(r.tolist() if isinstance(r, np.ndarray) else r)
        m.spawn(t)
        m.final_check("snapshot", lambda m: results.append(w.data.tolist()) or None)
    m = run_default(build)
    assert m.violation is None, m.violation
    return results[-1], results[:-1]


# --- scalar operations --------------------------------------------------------------------


def test_load_store():
    mem, res = run_ops([3, 4], lambda w: [load(w, 1), store(w, 0, 9), load(w, 0)])
    assert res == [4, None, 9] and mem == [9, 4]


def test_store_truncates_to_64_bits():
    mem, res = run_ops([0], lambda w: [store(w, 0, -1), load(w, 0), store(w, 0, 1 << 64 | 5)])
    assert res[1] == MASK64 and mem == [5]


def test_cas_success_and_failure_return_old_value():
    mem, res = run_ops([5], lambda w: [cas(w, 0, 5, 6), cas(w, 0, 5, 7), cas(w, 0, 6, 8)])
    assert res == [5, 6, 6]  # success returns the expected value; failure the current one
    assert mem == [8]


def test_xchg_returns_old():
    mem, res = run_ops([1, 2], lambda w: [xchg(w, 1, 10), xchg(w, 1, 11)])
    assert res == [2, 10] and mem == [1, 11]


def test_fetch_and_or():
    mem, res = run_ops([0b1100], lambda w: [fetch_and(w, 0, 0b0110), fetch_or(w, 0, 0b0001),
                                            fetch_and(w, 0, ~0b0100)])
    assert res == [0b1100, 0b0100, 0b0101]
    assert mem == [0b0001]


def test_fetch_add_wraps_at_64_bits():
    mem, res = run_ops([MASK64, 0], lambda w: [fetch_add(w, 0, 1), fetch_add(w, 1, -1),
                                               fetch_add(w, 1, 3), fetch_add(w, 0, 1 << 64)])
    assert res == [MASK64, 0, MASK64, 0]
    assert mem == [0, 2]


def test_wait_until_blocks_until_condition_then_returns_word():
    m = Machine()
    w = m.new_words("w", 1)
    seen = []

    def waiter():
        v = yield wait_until(w, 0, 0b10, 0b10)
        seen.append(v)

    def setter():
        yield store(w, 0, 0b01)
        yield store(w, 0, 0b11)
    a = m.spawn(waiter)
    b = m.spawn(setter)
    assert not m.enabled(a) and m.runnable() == [b]
    m.step(b)
    assert not m.enabled(a)  # 0b01 & 0b10 != 0b10
    m.step(b)
    assert m.enabled(a)
    m.step(a)
    assert seen == [0b11] and m.live == 0


def test_wait_until_on_zero_condition_is_immediately_enabled():
    mem, res = run_ops([4], lambda w: [wait_until(w, 0, 1, 0)])
    assert res == [4]


# --- vector operations ----------------------------------------------------------------------


def test_vload_returns_a_copy():
    seen = []

    def build(m: Machine) -> None:
        w = m.new_words("w", 4)
        w.data[:] = [1, 2, 3, 4]

        def t():
            v = yield vload(w, 1, 3)
            seen.append(v.tolist())
            v[:] = 0  # scribbling on the copy must not touch memory
            v2 = yield vload(w, 0, 4)
            seen.append(v2.tolist())
        m.spawn(t)
    assert run_default(build).violation is None
    assert seen == [[2, 3], [1, 2, 3, 4]]


def test_vstore():
    mem, res = run_ops([0, 0, 0, 0], lambda w: [vstore(w, 1, np.array([7, 8], dtype=np.uint64))])
    assert mem == [0, 7, 8, 0] and res == [None]


def test_vfetch_and_without_select():
    mem, res = run_ops([0b111, 0b101, 0b011, 0b110],
                       lambda w: [vfetch_and(w, 1, 3, 0b110)])
    assert res == [[0b101, 0b011]]
    assert mem == [0b111, 0b100, 0b010, 0b110]


def test_vfetch_and_with_select():
    sel = np.array([True, False, True])
    mem, res = run_ops([0b111, 0b111, 0b111, 0b111],
                       lambda w: [vfetch_and(w, 0, 3, 0b001, select=sel)])
    assert res == [[0b111, 0b111, 0b111]]  # old values of the whole range
    assert mem == [0b001, 0b111, 0b001, 0b111]


def test_vfetch_or_with_and_without_select():
    sel = np.array([False, True])
    mem, res = run_ops([1, 2, 4], lambda w: [vfetch_or(w, 0, 2, 8, select=sel),
                                             vfetch_or(w, 1, 3, 16)])
    assert res == [[1, 2], [10, 4]]
    assert mem == [1, 26, 20]


def test_vstore_with_select():
    sel = np.array([True, False, True])
    mem, res = run_ops([1, 2, 3, 4], lambda w: [
        vstore(w, 1, np.array([7, 8, 9], dtype=np.uint64), select=sel)])
    assert mem == [1, 7, 3, 9] and res == [None]


def test_vxchg_with_and_without_select():
    sel = np.array([False, True, True])
    mem, res = run_ops([1, 2, 3, 4], lambda w: [vxchg(w, 0, 3, 9, select=sel),
                                                vxchg(w, 2, 4, 5)])
    assert res == [[1, 2, 3], [9, 4]]
    assert mem == [1, 9, 5, 5]


def test_vcas_swaps_each_selected_word_that_matches():
    u = lambda *xs: np.array(xs, dtype=np.uint64)  # noqa: E731
    sel = np.array([True, True, False, True])
    mem, res = run_ops([5, 6, 7, 8, 9], lambda w: [
        vcas(w, 1, 5, u(6, 0, 8, 9), u(60, 70, 80, 90), select=sel),
        vcas(w, 0, 2, u(5, 6), u(50, 66))])
    # word 1 matched (swapped), word 2 did not, word 3 matched but is not selected,
    # word 4 matched; the second vcas finds word 1 changed, so only word 0 swaps
    assert res == [[6, 7, 8, 9], [5, 60]]
    assert mem == [50, 60, 7, 8, 90]


def _clear_odd(view):
    """A ``vupdate`` function: clear bit 0 of each odd word (atomically)."""
    sel = (view & np.uint64(1)).astype(bool)
    view[sel] -= np.uint64(1)
    return view.tolist(), sel, int(sel.sum()), None, 0


def test_vupdate_applies_its_function_to_the_live_words_and_returns_its_result():
    mem, res = run_ops([1, 2, 3, 4, 5], lambda w: [store(w, 2, 7),
                                                   vupdate(w, 1, 4, _clear_odd)])
    assert res == [None, [2, 6, 4]]  # the store before it is seen
    assert mem == [1, 2, 6, 4, 5]


@pytest.mark.parametrize("report,why", [
    (lambda v: (None, None, 1, None, 0), "None with a count"),
    (lambda v: (None, [True] * len(v), len(v), None, 0), "boolean array"),
    (lambda v: (None, np.ones(len(v) + 1, bool), len(v), None, 0), "boolean array"),
    (lambda v: (None, None, 0, np.ones(len(v), bool), 1), "reported as 1"),
    (lambda v: (None, None, len(v), np.eye(1, len(v), dtype=bool)[0], 1), "both"),
])
def test_vupdate_refuses_a_malformed_write_report(report, why):
    def build(m: Machine) -> None:
        w = m.new_words("w", 4)

        def t():
            yield vupdate(w, 0, 3, report)
        m.spawn(t)
    m = run_default(build)
    assert kind(m) == "model-error" and why in m.violation.message


def test_vfetch_and_accepts_negative_mask():
    mem, res = run_ops([3, 3], lambda w: [vfetch_and(w, 0, 2, ~1)])
    assert mem == [2, 2]


# --- footprints and Op.conflicts -------------------------------------------------------------


def _reg(*objs):
    """Give objects distinct oids, as the machine does on first use."""
    for i, o in enumerate(objs):
        o.oid = i
    return objs


def test_conflict_rules():
    x, y = _reg(Words("x", 8), Words("y", 8))
    assert not load(x, 0).conflicts(store(y, 0, 1)), "different objects"
    assert not vstore(x, 0, [1, 2]).conflicts(vfetch_or(x, 2, 4, 1)), "disjoint ranges"
    assert vstore(x, 0, [1, 2, 3]).conflicts(vfetch_or(x, 2, 4, 1)), "overlap at 2"
    assert not load(x, 3).conflicts(vload(x, 0, 8)), "read-read commutes"
    assert not wait_until(x, 3, 1, 1).conflicts(load(x, 3))
    assert wait_until(x, 3, 1, 1).conflicts(store(x, 3, 1))
    assert load(x, 3).conflicts(fetch_add(x, 3, 1))
    assert store(x, 3, 1).conflicts(store(x, 3, 2))
    assert cas(x, 5, 0, 1).conflicts(vload(x, 4, 6))
    assert free(x).conflicts(load(x, 7)) and free(x).conflicts(vload(x, 0, 1))
    assert not free(x).conflicts(load(y, 0))
    assert not nop().conflicts(store(x, 0, 1)) and not store(x, 0, 1).conflicts(nop())
    assert not alloc("z", 4).conflicts(store(x, 0, 1))


def test_lock_and_rcu_footprints():
    s, d = _reg(SpinLock("s"), RcuDomain("rcu"))
    assert spin_lock(s).conflicts(spin_lock(s))
    assert not rcu_read_lock(d).conflicts(rcu_read_unlock(d)), "readers commute"
    assert synchronize_rcu(d).conflicts(rcu_read_lock(d))
    assert synchronize_rcu(d).conflicts(rcu_read_unlock(d))
    assert not spin_lock(s).conflicts(synchronize_rcu(d))


def test_explore_conflict_agrees_with_op_conflicts():
    """The explorer's footprint test gives the same answer as ``Op.conflicts``."""
    m = Machine()
    x, y = m.new_words("x", 4), m.new_words("y", 4)
    s = SpinLock("s")
    ops = [load(x, 0), store(x, 1, 0), vload(x, 0, 4), vstore(y, 2, [0]), load(y, 3),
           free(y), nop(), spin_lock(s), wait_until(x, 1, 1, 1)]

    def one(op):
        yield op
    for op in ops:
        m.spawn(one, op)
    fps = [footprint(m, t) for t in range(len(ops))]
    pend = [m.threads[t].pending for t in range(len(ops))]
    assert pend == ops
    for i, a in enumerate(ops):
        for j, b in enumerate(ops):
            assert a.conflicts(b) == conflict(fps[i], fps[j]), (a.describe(), b.describe())


# --- commutativity: the soundness basis of the partial-order reduction -----------------------

NWORDS = 4
small = st.integers(0, 7)
big = st.sampled_from([0, 1, 2, 3, MASK64, MASK64 - 1, 1 << 63])
value = st.one_of(small, big)


@st.composite
def op_specs(draw):
    """A memory operation as (constructor, object index, args); built per run."""
    obj = draw(st.integers(0, 1))
    k = draw(st.sampled_from(["load", "store", "cas", "xchg", "fetch_and", "fetch_or",
                              "fetch_add", "wait", "vload", "vstore", "vxchg",
                              "vfetch_and", "vfetch_or", "free"]))
    i = draw(st.integers(0, NWORDS - 1))
    if k.startswith("v"):
        lo = draw(st.integers(0, NWORDS - 1))
        hi = draw(st.integers(lo + 1, NWORDS))
        if k == "vload":
            return (k, obj, lo, hi)
        sel = draw(st.one_of(st.none(), st.lists(st.booleans(), min_size=hi - lo,
                                                  max_size=hi - lo).map(tuple)))
        if k == "vstore":
            vals = tuple(draw(st.lists(value, min_size=hi - lo, max_size=hi - lo)))
            return (k, obj, lo, vals, sel)
        return (k, obj, lo, hi, draw(value), sel)
    if k in ("load", "free"):
        return (k, obj, i)
    if k == "cas":
        return (k, obj, i, draw(value), draw(value))
    if k == "wait":
        return (k, obj, i, draw(value), draw(value))
    return (k, obj, i, draw(st.integers(-3, 3) | value))


def make_op(spec, objs):
    k, obj = spec[0], objs[spec[1]]
    a = spec[2:]
    if k == "load":
        return load(obj, a[0])
    if k == "free":
        return free(obj)
    if k == "store":
        return store(obj, a[0], a[1])
    if k == "cas":
        return cas(obj, a[0], a[1], a[2])
    if k == "xchg":
        return xchg(obj, a[0], a[1])
    if k == "fetch_and":
        return fetch_and(obj, a[0], a[1])
    if k == "fetch_or":
        return fetch_or(obj, a[0], a[1])
    if k == "fetch_add":
        return fetch_add(obj, a[0], a[1])
    if k == "wait":
        return wait_until(obj, a[0], a[1], a[2])
    if k == "vload":
        return vload(obj, a[0], a[1])
    if k == "vstore":
        sel = None if a[2] is None else np.array(a[2], dtype=bool)
        return vstore(obj, a[0], np.array(a[1], dtype=np.uint64), select=sel)
    sel = None if a[3] is None else np.array(a[3], dtype=bool)
    if k == "vxchg":
        return vxchg(obj, a[0], a[1], a[2], select=sel)
    if k == "vfetch_and":
        return vfetch_and(obj, a[0], a[1], a[2], select=sel)
    return vfetch_or(obj, a[0], a[1], a[2], select=sel)


def _norm(r):
    return tuple(r.tolist()) if isinstance(r, np.ndarray) else r


def execute_pair(spec_a, spec_b, init, same_object: bool, order):
    """Two threads, each yielding one op; offer them the CPU in ``order`` (a thread whose
    op is disabled at its turn is skipped). Returns the two ops as the machine saw them
    and the outcome: final memory, freed flags, per-thread results, violation kind, and
    whether each thread was enabled at its turn."""
    m = Machine()
    objs = [m.new_words("x", NWORDS), m.new_words("y", NWORDS)]
    for o, vals in zip(objs, init):
        o.data[:] = np.array(vals, dtype=np.uint64)
    if same_object:
        objs = [objs[0], objs[0]]
    results: dict[int, object] = {}

    def t(idx, spec):
        r = yield make_op(spec, objs)
        results[idx] = _norm(r)
    m.spawn(t, 0, spec_a)
    m.spawn(t, 1, spec_b)
    ops = (m.threads[0].pending, m.threads[1].pending)
    fps = (footprint(m, 0), footprint(m, 1))
    enabled_at_turn = {}
    for tid in order:
        if m.violation is not None:
            break
        enabled_at_turn[tid] = m.enabled(tid)
        if enabled_at_turn[tid]:
            m.step(tid)
    mem = tuple(tuple(int(v) for v in o.data) for o in {id(o): o for o in objs}.values())
    freed = tuple(o.freed for o in objs)
    return ops, fps, (mem, freed, results, kind(m), enabled_at_turn)


@settings(max_examples=400)
@given(op_specs(), op_specs(), st.lists(st.lists(value, min_size=NWORDS, max_size=NWORDS),
                                        min_size=2, max_size=2), st.booleans())
def test_non_conflicting_ops_commute(spec_a, spec_b, init, same_object):
    """For random pairs of memory operations: ``conflicts`` is symmetric (and agrees with
    the explorer's footprint test), and non-conflicting operations commute: in either
    order each is enabled or not alike, and memory, results and verdict are the same."""
    ops, (fa, fb), ab = execute_pair(spec_a, spec_b, init, same_object, (0, 1))
    _, _, ba = execute_pair(spec_a, spec_b, init, same_object, (1, 0))
    a, b = ops
    assert a.conflicts(b) == b.conflicts(a), "conflicts() is not symmetric"
    assert conflict(fa, fb) == conflict(fb, fa) == a.conflicts(b)
    if not a.conflicts(b):
        assert ab == ba, f"{a.describe()} and {b.describe()} do not commute"


def test_commutativity_check_detects_a_real_conflict():
    """The commutation oracle above can fail: two stores to one word do not commute."""
    spec = ("store", 0, 1, 5), ("store", 0, 1, 6)
    init = [[0] * NWORDS, [0] * NWORDS]
    ops, _, ab = execute_pair(*spec, init, False, (0, 1))
    _, _, ba = execute_pair(*spec, init, False, (1, 0))
    assert ops[0].conflicts(ops[1]) and ab != ba


# --- the executor ---------------------------------------------------------------------------


def test_objects_get_oids_in_order_of_first_use():
    m = Machine()
    a, b, c = m.new_words("a", 1), m.new_words("b", 1), m.new_words("c", 1)

    def t():
        yield load(c, 0)
        yield load(a, 0)
        yield load(c, 0)
    m.spawn(t)
    assert c.oid == 0 and a.oid is None
    m.step(0)
    assert a.oid == 1 and b.oid is None


def test_trace_records_results_and_source_lines():
    def build(m: Machine) -> None:
        w = m.new_words("w", 1, 3)

        def t():
            yield load(w, 0)
            yield fetch_add(w, 0, 2)
        m.spawn(t)
    m, _, _ = run_schedule(program(build), [], trace=True)
    assert [(s.index, s.tid, s.op.kind, s.result) for s in m.trace] == [
        (1, 0, O.LOAD, 3), (2, 0, O.FETCH_ADD, 3)]
    assert all(s.loc.startswith("test_machine.py:") for s in m.trace)
    assert m.trace[0].loc != m.trace[1].loc


def test_spawn_op_alloc_and_deref():
    seen = []

    def build(m: Machine) -> None:
        head = m.new_words("head", 1)

        def child(x):
            p = yield load(head, 0)
            v = yield load(m.deref(p), 0)
            seen.append((x, v))

        def parent():
            obj = yield alloc("obj", 2, 9)
            assert isinstance(obj, Words) and m.deref(obj.addr) is obj
            yield store(head, 0, obj.addr)
            tid = yield spawn(child, "hi", name="kid")
            seen.append(("tid", tid))
        m.spawn(parent)
    m = run_default(build)
    assert m.violation is None and m.live == 0
    assert seen == [("tid", 1), ("hi", 9)]
    assert m.threads[1].name == "kid"


def test_bad_pointer():
    def build(m: Machine) -> None:
        def t():
            yield nop()
            yield load(m.deref(0xdead), 0)
        m.spawn(t)
    assert kind(run_default(build)) == "bad-pointer"


def test_daemon_does_not_keep_run_alive():
    """A blocked daemon (a worker waiting for work) neither keeps the run alive nor
    counts as a deadlock once every other thread has finished."""
    def build(m: Machine) -> None:
        kick = m.new_words("kick", 1)
        done = m.new_words("done", 1)

        def daemon():
            while True:
                yield wait_until(kick, 0, 1, 1)
                yield store(kick, 0, 0)
                yield fetch_add(done, 0, 1)

        def worker():
            yield store(kick, 0, 1)
            yield wait_until(done, 0, 1, 1)
        m.spawn(daemon, daemon=True)
        m.spawn(worker)
    m, executed, _ = run_schedule(program(build), [])
    assert m.violation is None and m.live == 0
    assert executed == [1, 0, 0, 0, 1]
    assert not m.threads[0].done and not m.enabled(0)
    res = systematic(program(build))
    assert res.status == "complete", res.violation


def test_invariant_and_final_check_violations_are_named():
    def build(m: Machine) -> None:
        w = m.new_words("w", 1)

        def t():
            yield store(w, 0, 2)
            yield store(w, 0, 1)
        m.spawn(t)
        m.invariant("not-two", lambda m: "w is 2" if w[0] == 2 else None)
    m = run_default(build)
    assert kind(m) == "not-two" and m.nsteps == 1

    def build2(m: Machine) -> None:
        w = m.new_words("w", 1)

        def t():
            yield store(w, 0, 2)
        m.spawn(t)
        m.final_check("ends-at-one", lambda m: None if w[0] == 1 else f"w={w[0]}")
    m = run_default(build2)
    assert kind(m) == "ends-at-one" and m.violation.message == "w=2"


def test_counters():
    def build(m: Machine) -> None:
        def t():
            yield nop()
            m.count("false-old")
            m.count("false-old", 2)
        m.spawn(t)
    m = run_default(build)
    assert m.counters == {"false-old": 3}


def test_step_counts():
    def build(m: Machine) -> None:
        def t(n):
            for _ in range(n):
                yield nop("x")
        m.spawn(t, 2)
        m.spawn(t, 3)
    m = run_default(build)
    assert m.nsteps == 5 and [t.steps for t in m.threads] == [2, 3]


def test_describe():
    x = Words("spt", 4)
    assert cas(x, 3, 1, 0).describe() == "cas(spt[3], 0x1, 0x0)"
    assert vfetch_and(x, 0, 4, 0xfe).describe() == "vfetch_and(spt[0:4], 0xfe)"
    assert nop("delay").describe() == "nop(delay)"
    assert spin_lock(SpinLock("mmu")).describe() == "lock(mmu)"


def test_bad_operation_argument_is_a_violation_not_a_crash():
    def build(m: Machine) -> None:
        w = m.new_words("w", 2)

        def t():
            yield load(w, 5)
        m.spawn(t)
    m = run_default(build)
    assert kind(m) in ("exception", "model-error")


def test_running_thread_is_the_spawner_again_after_a_spawn():
    """Ghost records key on Machine.current: after executing a spawn (which advances
    the new thread to its first yield) the spawner's code must see itself running."""
    from youngsim.sim import Machine, nop, spawn

    seen = []

    def child():
        yield nop()

    def parent(m):
        yield spawn(child, name="child")
        seen.append(m.current.name)
        yield nop()

    m = Machine()
    t = m.spawn(parent, m, name="parent")
    m.step(t)
    assert seen == ["parent"]
