"""``lock_program``: n cycles of (acquire, locked operations, release, gap operations),
operations that vary with the cycle (``each_load``/``each_store``/``each_cas``),
checks that end the run, notes and profile frames.

The contract is ``lock_cycles``'s: it *is* the loop that yields those operations and
branches on the checks (written out here as ``_expanded``), so both drivers see the
same steps: the same timeline, costs, waits and statistics, the same words written, the
same notes at the same virtual times.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from youngsim.sim import (Machine, RcuDomain, RWLock, SpinLock, cas, fetch_add, load,
                          nop, read_lock, read_unlock, spin_lock, spin_unlock, store,
                          synchronize_rcu, write_lock, write_unlock)
from youngsim.sim.explore import systematic
from youngsim.sim.ops import Each, each_cas, each_load, each_store, lock_program
from youngsim.sim.program import Program
from youngsim.sim.timed import TimedDriver
from test_lock_cycles import CM, CM_EDGE, _sample_count

_ALL = (1 << 64) - 1
NW = 24  # words of the shared table


def _ops(table: Any, spec: list[tuple[Any, ...]], n: int, k: int) -> list[Any]:
    """Operations of a cycle from their spec: ("nop", label), ("load", lo, stride,
    expect or None, masked), ("store", lo, stride), ("cas", lo, old), ("fixed", lo)."""
    out: list[Any] = []
    for s in spec:
        if s[0] == "nop":
            out.append(nop(cost=s[1]))
        elif s[0] == "load":
            _, lo, stride, expect, masked = s
            out.append(each_load(table, lo, stride, expect=expect,
                                 mask=0xF if masked else _ALL, cost="h1"))
        elif s[0] == "store":
            _, lo, stride = s
            out.append(each_store(table, lo, np.arange(n, dtype=np.uint64) + 16 * k + 0x100,
                                  stride, cost="g1"))
        elif s[0] == "cas":
            _, lo, old = s
            out.append(each_cas(table, lo, np.full(n, old, np.uint64),
                                np.full(n, k + 1, np.uint64), cost="a1"))
        else:
            out.append(store(table, s[1], k, cost="r1"))  # the same word every cycle
    return out


def _fits(spec: list[tuple[Any, ...]], n: int) -> bool:
    for s in spec:
        if s[0] in ("load", "store") and s[1] + s[2] * (n - 1) >= NW:
            return False
        if s[0] == "cas" and s[1] + n - 1 >= NW:
            return False
    return True


def _expanded(lock: Any, n: int, read: bool, locked: list[Any], gap: list[Any],
              notes: dict[int, Any]) -> Any:
    """The loop ``lock_program`` stands for, written out."""
    if lock is None:  # the gap's operations alone: every failed check ends the run
        for i in range(n):
            for j, x in enumerate(gap):
                if type(x) is not Each:
                    yield x
                else:
                    v = yield from _each(x, i)
                    if v is not None:
                        return (i, j, v)
                if j in notes:
                    notes[j](i)
        return (n, -1, None)
    if read:
        take, drop = read_lock, read_unlock
    elif lock.shared_ok:
        take, drop = write_lock, write_unlock
    else:
        take, drop = spin_lock, spin_unlock
    rel = len(locked) + 1
    seq = [None] + list(locked) + [None] + list(gap)
    for i in range(n):
        for j, x in enumerate(seq):
            if j == 0:
                yield take(lock)
            elif j == rel:
                yield drop(lock)
            elif type(x) is Each:
                v = yield from _each(x, i)
                if v is not None:  # the run ends (in the locked part, holding it)
                    return (i, j, v)
            else:
                yield x
            if j in notes:
                notes[j](i)
    return (n, -1, None)


def _each(e: Each, i: int) -> Any:
    """Cycle ``i``'s operation of ``e``; the value found if it is a check that failed."""
    lo = e.op.lo + e.stride * i
    if e.op.kind == 0:  # load
        v = yield load(e.op.obj, lo, cost=e.op.cost)
        exp = e.expect if type(e.expect) is int or e.expect is None else int(e.expect[i])
        return v if exp is not None and (v & e.mask) != exp else None
    if e.op.kind == 1:  # store
        yield store(e.op.obj, lo, int(e.values[i]), cost=e.op.cost)
        return None
    old = int(e.expect[i])
    v = yield cas(e.op.obj, lo, old, int(e.values[i]), cost=e.op.cost)
    return v if v != old else None


# a thread's segments: ("prog", lock (2: none), n, read, locked, gap, note position) or ("touch",
# word, value): a store to the table between programs (so checks fail)
_op = st.one_of(
    st.tuples(st.just("nop"), st.sampled_from(["h1", "g2", None])),
    st.tuples(st.just("load"), st.integers(0, NW - 1), st.integers(0, 1),
              st.sampled_from([None, 0, 1, 2]), st.booleans()),
    st.tuples(st.just("store"), st.integers(0, NW - 1), st.integers(0, 1)),
    st.tuples(st.just("cas"), st.integers(0, NW - 1), st.integers(0, 2)),
    st.tuples(st.just("fixed"), st.integers(0, NW - 1)))
_prog = st.tuples(st.just("prog"), st.integers(0, 2), st.integers(0, 5), st.booleans(),
                  st.lists(_op, max_size=3), st.lists(_op, max_size=3),
                  st.integers(0, 8))
_touch = st.tuples(st.just("touch"), st.integers(0, NW - 1), st.integers(0, 2))
_spec = st.lists(st.lists(st.one_of(_prog, _touch), min_size=1, max_size=3),
                 min_size=1, max_size=4)


def _build(m: Machine, spec: Any, fused: bool, log: list[Any], sched: bool = False
           ) -> list[Any]:
    locks: list[Any] = [RWLock("rw"), SpinLock("spin"), None]  # None: no lock
    table = m.new_words("table", NW)
    returned = m.new_words("returned", 64)
    if sched:
        dom = RcuDomain("rcu")
        m.use_rcu_sched(dom)

    def thread(k: int, segments: Any) -> Any:
        for si, seg in enumerate(segments):
            if seg[0] == "touch":
                yield store(table, seg[1], seg[2], cost="g1")
                continue
            _, li, n, read, lspec, gspec, at = seg
            if not (_fits(lspec, max(n, 1)) and _fits(gspec, max(n, 1))):
                continue
            lock = locks[li]
            read = read and lock is not None and lock.shared_ok
            locked, gap = _ops(table, lspec, n, k), _ops(table, gspec, n, k)
            if lock is None:
                locked, gap = [], locked + gap
                if not gap:
                    continue
            notes = {}
            if at <= len(locked) + len(gap) + 1:
                notes[at] = lambda i, k=k, si=si, at=at: log.append((k, si, at, i, m.now))
            if fused:
                got = yield lock_program(lock, n, locked, gap, read=read, notes=notes)
            else:
                got = yield from _expanded(lock, n, read, locked, gap, notes)
            i, j, v = got
            if lock is not None and 0 < j <= len(locked):  # ended holding the lock
                yield (read_unlock(lock) if read else write_unlock(lock)
                       if lock.shared_ok else spin_unlock(lock))
            yield store(returned, 3 * k + si, (i + 1) * 100 + j + 1)
        yield fetch_add(table, 0, 1)

    for k, segs in enumerate(spec):
        m.spawn(thread, k, segs, name=f"t{k}")
    if sched:
        def gp() -> Any:
            yield nop(cost="g2")
            yield synchronize_rcu(dom)
        m.spawn(gp, name="gp")
    return [table, returned]


def _timed(spec: Any, fused: bool, cm: Any = CM, period: int | None = None,
           sched: bool = False, engine: bool = True) -> dict[str, Any]:
    m = Machine()
    log: list[Any] = []
    words = _build(m, spec, fused, log, sched)
    roles = {i: ("vcpu" if i % 2 else "aging") for i in range(len(spec))}
    d = TimedDriver(m, cm, roles=roles, sample_period_ns=period, cycle_engine=engine)
    d.engine_min_stretch = 0  # hand over whenever the engine may
    d.engine_min_ops = 0
    r = d.run()
    out = r.to_dict()
    out.pop("wall_s", None)
    out["words"] = [x.data.tolist() for x in words]
    out["notes"] = log
    out["steps_per_thread"] = [t.steps for t in m.threads]
    if fused and engine:
        _ENGINE[0] += d.engine_steps
        _ENGINE[1] += r.steps
    return out


_ENGINE = [0, 0]  # steps the cycle engine took, all steps (fused runs with the engine)


@settings(max_examples=150, deadline=None)
@given(_spec, st.sampled_from([CM, CM_EDGE]), st.sampled_from([None, 37]), st.booleans())
def test_timed_driver_sees_the_loop_it_stands_for(spec, cm, period, sched):
    """Same timeline, statistics, words, returned values and notes (with their virtual
    times) as the loop written out, with the cycle engine stepping the programs where
    it may and without it."""
    fused = _timed(spec, True, cm, period, sched)
    plain = _timed(spec, True, cm, period, sched, engine=False)
    split = _timed(spec, False, cm, period, sched)
    if period is not None:  # the stacks differ by the loop's frame; the samples do not
        assert _sample_count(fused.pop("profile", None)) == \
            _sample_count(split.pop("profile", None))
        plain.pop("profile", None)
    assert fused == plain
    assert fused == split


def test_the_property_test_exercised_the_cycle_engine():
    """Fixed programs with long runs, where the engine must do most of the steps: the
    same result with it (eager, and with the default policy) and without it, and as
    the loop written out."""
    before = _ENGINE[:]
    progs = [
        # checks that hold, stores with stride, a cmpxchg per cycle, notes
        [[("prog", 0, 16, True, [("load", 0, 0, 0, False)] + ([("cas", 2, 0)] if k == 0
                                                             else []),
           [("store", 20 + k, 0), ("nop", "g2")], 1)] for k in range(4)],
        # the write side and a spinlock, a fixed store, masked checks
        [[("prog", li, 30, False, [("nop", "h1"), ("fixed", 20 + k)],
           [("load", 23, 0, 0, True), ("nop", "g2")], 3)] for k in range(3)
         for li in (0, 1)],
        # a check fails part way: another thread stores the word it checks
        [[("prog", 0, 40, True, [("load", 10, 0, 0, False)], [("nop", "g2")], 0)],
         [("prog", 0, 20, True, [("nop", "h2")], [("nop", "g2")], 0), ("touch", 10, 1)],
         [("prog", 0, 40, True, [("nop", "h2")], [("nop", "g2")], 0)]],
    ]
    for spec in progs:
        for cm in (CM, CM_EDGE):
            with_engine = _timed(spec, True, cm)
            assert with_engine == _timed(spec, True, cm, engine=False)
            assert with_engine == _timed(spec, False, cm)
    engine, total = (a - b for a, b in zip(_ENGINE, before))
    assert engine > total // 2, (engine, total)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(_prog, min_size=1, max_size=1), min_size=2, max_size=2))
def test_checker_explores_the_same_executions(spec):
    """DPOR over a program and over the loop written out: the same executions and
    steps, and the same verdict."""
    spec = [[(s[0], s[1], min(s[2], 2)) + s[3:] for s in segs] for segs in spec]
    found = [systematic(Program(f"prog-{f}", lambda m, f=f: _build(m, spec, f, []),
                                max_steps=400), max_executions=2000)
             for f in (False, True)]
    a, b = found
    assert (b.status, b.executions, b.steps) == (a.status, a.executions, a.steps)
    assert (b.violation and b.violation.kind) == (a.violation and a.violation.kind)


def _run(thread: Any, *args: Any) -> tuple[Machine, Any]:
    m = Machine()
    box: list[Any] = []
    m.spawn(thread, m, box, *args)
    r = TimedDriver(m, CM).run()
    return m, (box, r)


def test_a_failed_check_in_the_locked_part_ends_the_run_holding_the_lock():
    lk = RWLock("l")

    def t(m: Machine, box: list[Any]) -> Any:
        w = m.new_words("w", 8)
        w.data[2] = 5
        seen: list[int] = []
        got = yield lock_program(lk, 6, locked=[each_load(w, 0, expect=0),
                                                each_store(w, 4, np.arange(6) + 1, 0)],
                                 gap=[nop(cost="g1")], notes={2: seen.append})
        box += [got, seen, w.data.tolist(), lk.owner]
        yield write_unlock(lk)  # the model code goes on under the lock, then drops it
    m, (box, r) = _run(t)
    got, seen, words, owner = box
    assert got == (2, 1, 5)  # cycle 2's load (position 1) found 5
    assert seen == [0, 1]  # the store after the failed check did not run in cycle 2
    assert words[4] == 2 and owner == 0  # still held when the model code resumed
    assert m.violation is None


def test_a_failed_check_in_the_gap_ends_the_run_after_it():
    lk = SpinLock("l")

    def t(m: Machine, box: list[Any]) -> Any:
        w = m.new_words("w", 8)
        w.data[:4] = [0x17, 0x27, 0x7, 0x18]
        got = yield lock_program(lk, 6, locked=[nop(cost="h1")],
                                 gap=[each_load(w, 0, expect=0x7, mask=0xF),
                                      store(w, 7, 1)])
        box += [got, int(w.data[7]), lk.owner]
    m, (box, r) = _run(t)
    # the mask keeps the low nibble: cycles 0-2 pass, cycle 3's load (position 3: after
    # the acquire, the nop and the release) finds 0x18 and the run ends before its store
    assert box == [(3, 3, 0x18), 1, None]


def test_notes_run_at_their_operations_virtual_time():
    lk = SpinLock("l")

    def t(m: Machine, box: list[Any]) -> Any:
        stamps: list[tuple[int, int]] = []
        got = yield lock_program(lk, 3, locked=[nop(cost="h1")], gap=[nop(cost="g1")],
                                 notes={3: lambda i: stamps.append((i, m.now))})
        box += [got, stamps]
    m, (box, r) = _run(t)
    got, stamps = box
    assert got == (3, -1, None)
    # each cycle: acquire, hold 40, release, then the gap nop starts
    t0 = stamps[0][1]
    period = stamps[1][1] - t0
    assert [s[0] for s in stamps] == [0, 1, 2]
    assert stamps[2][1] - stamps[1][1] == period and period >= 40 + 25


def test_profile_frames_are_added_below_the_threads_stack():
    lk = SpinLock("l")

    def t(m: Machine, box: list[Any]) -> Any:
        yield lock_program(lk, 50, locked=[nop(cost="h2")], gap=[nop(cost="g2")],
                           frames={1: ("kvm_mmu_page_fault", "kvm_tdp_mmu_map")})
    m = Machine()
    m.spawn(t, m, [])
    r = TimedDriver(m, CM, sample_period_ns=37).run()
    stacks = r.profile.samples if hasattr(r.profile, "samples") else r.to_dict()["profile"]
    text = repr(stacks)
    assert "kvm_tdp_mmu_map" in text


def test_bad_programs_are_the_models_errors():
    lk = SpinLock("l")

    def past(m: Machine, box: list[Any]) -> Any:
        w = m.new_words("w", 4)
        yield lock_program(lk, 5, locked=[each_load(w, 0, expect=0)])
    m, _ = _run(past)
    assert m.violation is not None and m.violation.kind == "model-error"

    def short(m: Machine, box: list[Any]) -> Any:
        w = m.new_words("w", 8)
        yield lock_program(lk, 5, locked=[each_store(w, 0, [1, 2])])
    m, _ = _run(short)
    assert m.violation is not None and m.violation.kind == "model-error"

    def raising(m: Machine, box: list[Any]) -> Any:
        yield lock_program(lk, 2, locked=[nop()], notes={1: lambda i: 1 // 0})
    m, _ = _run(raising)
    assert m.violation is not None and m.violation.kind == "exception"
    assert "ZeroDivisionError" in m.violation.message

    with pytest.raises(ValueError):
        lock_program(None, 3)  # no lock and no operations: not a cycle

    def empty(m: Machine, box: list[Any]) -> Any:
        box.append((yield lock_program(lk, 0, locked=[nop()])))
        yield nop()
    m, (box, _) = _run(empty)
    assert box == [(0, -1, None)] and m.violation is None
