"""``lock_cycles``: n cycles of (acquire, hold, release, gap) in one yielded operation.

The contract is that it *is* the loop that yields those operations: the executor runs
the same steps in the same order, so the timed driver computes the same timeline,
waits, fairness, costs and statistics, and the checker explores the same schedules and
finds the same violations. Both are checked here against the loop written out.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from youngsim.sim import (CycleCas, Machine, Mutex, RcuDomain, RWLock, SpinLock, cas,
                          fetch_add, load,
                          lock_cycles, mutex_lock, mutex_unlock, nop, rcu_read_lock,
                          rcu_read_unlock, read_lock, read_unlock, spin_lock, spin_unlock,
                          store, synchronize_rcu, wait_until, write_lock, write_unlock)
from youngsim.sim.costmodel import load_cost_model
from youngsim.sim.explore import systematic
from youngsim.sim.program import Program
from youngsim.sim.timed import TimedDriver

LABELS = {"h1": 40, "h2": 130, "g1": 25, "g2": 400, "a1": 9, "r1": 6}
CM = load_cost_model().with_labels(
    {lb: {"ns": ns, "rationale": "test"} for lb, ns in LABELS.items()})
#: edges: no handoff (a woken waiter and its waker ready at the same time) and a
#: contention window equal to a gap (a lock word written exactly that long ago)
CM_EDGE = CM.with_tables({
    "wakeup": {"spin_handoff": {"ns": 0, "rationale": "test"}},
    "contention": {"window": {"ns": 25, "rationale": "test"}}})


def _expanded(lock: Any, n: int, read: bool, hold: str | None, gap: str | None,
              acquire: str | None, release: str | None, body: CycleCas | None = None
              ) -> Any:
    """The loop ``lock_cycles`` stands for, written out."""
    if read:
        take, drop = read_lock, read_unlock
    elif lock.shared_ok:
        take, drop = write_lock, write_unlock
    elif lock.sleeping:
        take, drop = mutex_lock, mutex_unlock
    else:
        take, drop = spin_lock, spin_unlock
    for i in range(n):
        yield take(lock, acquire)
        if body is not None:
            old = int(body.old[i])
            got = yield cas(body.words, body.lo + i, old, int(body.new[i]), cost=body.cost)
            if got != old:  # RET_PF_RETRY: release, and the run ends here
                yield drop(lock, release)
                return i
        if hold is not None:
            yield nop(cost=hold)
        yield drop(lock, release)
        if gap is not None:
            yield nop(cost=gap)
    return n if body is not None else None


# a segment of a thread: ("cycles", lock, n, read, hold, gap, acquire, release) or
# ("touch", word index, label): a fetch_add on a shared word between cycle runs
_label = st.sampled_from([None, "h1", "h2", "g1", "g2"])
_cycles = st.tuples(st.just("cycles"), st.integers(0, 2), st.integers(0, 6), st.booleans(),
                    _label, _label, st.sampled_from([None, "a1"]),
                    st.sampled_from([None, "r1"]))
_touch = st.tuples(st.just("touch"), st.integers(0, 3), st.sampled_from([None, "g1"]))
# ("rcu", cycles): cycles inside an RCU read section of the domain spinning locks also
# hold up; ("body", cycles, first word): each cycle a cmpxchg of a shared table's word
# from 0 to the thread's mark, so overlapping runs of two threads fail and stop early;
# ("plain", cycles): the loop written out even in the fused run, so a thread that is
# not cycling waits in the lock's queue among those that are
_body = st.tuples(st.just("body"), _cycles, st.integers(0, 8), st.sampled_from([None, "a1"]),
                  st.integers(0, 2))
_thread = st.lists(st.one_of(_cycles, _touch, st.tuples(st.just("rcu"), _cycles), _body,
                             st.tuples(st.just("plain"), _cycles)),
                   min_size=1, max_size=4)
_program = st.lists(_thread, min_size=1, max_size=5)


def _build(m: Machine, spec: list[list[tuple[Any, ...]]], fused: bool,
           sched: bool = False) -> tuple[list[Any], list[Any]]:
    """``sched``: spinning locks hold up an RCU domain (``Machine.use_rcu_sched``, as
    the kernel model's ``System`` does), and one more thread waits for its grace
    periods while the others cycle."""
    locks: list[Any] = [RWLock("rw"), SpinLock("spin"), Mutex("mutex")]
    w = m.new_words("shared", 4)
    table = m.new_words("table", 16)
    returned = m.new_words("returned", 64)  # what each body run returned
    dom = RcuDomain("rcu")
    if sched:
        m.use_rcu_sched(dom)

    def cycles(seg: tuple[Any, ...], body: CycleCas | None = None,
               plain: bool = False) -> Any:
        _, li, n, read, hold, gap, acq, rel = seg
        lock = locks[li]
        read = read and lock.shared_ok
        if fused and not plain:
            got = yield lock_cycles(lock, n, read=read, hold=hold, gap=gap,
                                    acquire=acq, release=rel, body=body)
        else:
            got = yield from _expanded(lock, n, read, hold, gap, acq, rel, body)
        assert got is None if body is None else 0 <= got <= n
        return got

    def thread(k: int, segments: list[tuple[Any, ...]]) -> Any:
        for si, seg in enumerate(segments):
            if seg[0] == "touch":
                yield fetch_add(w, seg[1], 1, cost=seg[2])
            elif seg[0] == "body":  # old: 0 (a free word) or another thread's mark
                n = seg[1][2]
                old = seg[4] if len(seg) > 4 else 0
                body = CycleCas(table, seg[2], np.full(n, old, np.uint64),
                                np.full(n, k + 1, np.uint64), cost=seg[3])
                got = yield from cycles(seg[1], body)
                yield store(returned, 4 * k + si, got + 1)
            elif seg[0] == "plain":
                yield from cycles(seg[1], plain=True)
            elif seg[0] == "rcu":
                if locks[seg[1][1]].sleeping:
                    continue  # a mutex inside an RCU read section is a bug of its own
                yield rcu_read_lock(dom)
                yield from cycles(seg[1])
                yield rcu_read_unlock(dom)
            else:
                yield from cycles(seg)
        yield load(w, 0)

    def gp() -> Any:
        for _ in range(3):
            yield nop(cost="g2")
            yield synchronize_rcu(dom)

    for i, segments in enumerate(spec):
        m.spawn(thread, i, segments, name=f"t{i}")
    if sched:
        m.spawn(gp, name="gp")
    return locks, [w, table, returned]


def _machine_state(m: Machine, locks: list[Any]) -> dict[str, Any]:
    """What the executor keeps that a ``TimedResult`` does not show: step counts per
    thread, the locks' own counters and holders, the RCU-sched read sections."""
    rs = m.rcu_sched
    return {
        "nsteps": m.nsteps,
        "now": m.now,
        "threads": [(t.steps, t.done, t.atomic, t.readers, t.cyc_left, t.cyc_j,
                     [(lk.name, md) for lk, md in t.locks]) for t in m.threads],
        "locks": [(lk.acquisitions, lk.contended, lk.owner, dict(lk.readers),
                   list(lk.queue)) for lk in locks],
        "rcu_sched": None if rs is None else (dict(rs.depth), dict(rs.section),
                                              rs.grace_periods),
    }


def _timed(spec: list[list[tuple[Any, ...]]], fused: bool, period: int | None = None,
           engine: bool = True, sched: bool = False, state: bool = False,
           cm: Any = CM, eager: bool = True) -> dict[str, Any]:
    m = Machine()
    locks, words = _build(m, spec, fused, sched)
    roles = {i: ("vcpu" if i % 2 else "aging") for i in range(len(spec))}
    d = TimedDriver(m, cm, roles=roles, sample_period_ns=period, cycle_engine=engine)
    if eager:  # hand over whenever the engine may, however short the stretch
        d.engine_min_stretch = 0
        d.engine_min_ops = 0
    r = d.run()
    out = r.to_dict()
    out.pop("wall_s", None)
    out["words"] = [x.data.tolist() for x in words]  # the tables, what bodies returned
    if state:
        out["machine"] = _machine_state(m, locks)
        out["driver"] = (dict(d._lines), dict(d._cas_att), dict(d._cas_fail))
    if fused and engine:
        _ENGINE_STEPS[0] += d.engine_steps
        _ENGINE_STEPS[1] += r.steps
    return out


_ENGINE_STEPS = [0, 0]  # steps the cycle engine took, all steps (fused runs)


@settings(max_examples=150, deadline=None)
@given(_program, st.sampled_from([None, 37]), st.booleans(), st.sampled_from([CM, CM_EDGE]))
def test_timed_driver_sees_the_loop_it_stands_for(spec, period, sched, cm):
    """Same timeline, lock waits and holds by holder, spinning and sleeping, per-label
    counts and ns, CPU categories, contended atomics and profile samples; with the
    cycle engine (``sim/cycles.py``) stepping the cycles where it may, and without."""
    split = _timed(spec, False, period, sched=sched, cm=cm)
    plain = _timed(spec, True, period, engine=False, sched=sched, cm=cm)
    fused = _timed(spec, True, period, sched=sched, cm=cm)
    if period is not None:  # the stacks differ by the loop's frame; the samples do not
        ps, pf = split.pop("profile", None), fused.pop("profile", None)
        assert _sample_count(ps) == _sample_count(pf)
        plain.pop("profile", None)
    assert plain == fused
    assert fused == split


def test_the_property_test_exercised_the_cycle_engine():
    """The comparison above is only worth something if the engine takes over: the same
    comparison over fixed programs with longer runs of cycles, where the engine must
    do most of the steps (no sampling, so nothing keeps it out)."""
    before = _ENGINE_STEPS[:]
    progs = [
        [[("cycles", 0, 40, True, "h1", "g1", "a1", None)] * 3,
         [("cycles", 0, 40, False, "h2", "g2", None, "r1"), ("touch", 1, None)],
         [("rcu", ("cycles", 1, 30, False, "h1", "g1", None, None))],
         [("cycles", 0, 40, True, None, "g1", None, None)]],
        [[("cycles", 1, 40, False, "h1", None, None, None)] * 2] * 4,
        # cmpxchg bodies on a shared table: overlapping runs fail and end early
        [[("body", ("cycles", 0, 12, True, "h1", "g1", None, None), 0, "a1")],
         [("body", ("cycles", 0, 12, True, None, "g2", None, None), 4, None)],
         [("body", ("cycles", 1, 6, False, "h2", None, None, None), 10, "a1"),
          ("cycles", 0, 30, False, "h1", "g1", None, None)],
         [("cycles", 0, 40, True, None, "g1", None, None)]],
        # two threads outside the cycles ready at once (the engine's horizon is the
        # first), one of them queued for the lock among the cycling threads
        [[("cycles", 0, 60, True, "h1", "g1", None, None)]] * 3 + [
            [("touch", 0, "g1")] * 6 + [("plain", ("cycles", 0, 5, False, "h1", "g1",
                                                    None, None))],
            [("touch", 1, "g1")] * 6],
    ]
    for spec in progs:
        for sched in (False, True):
            for cm in (CM, CM_EDGE):
                with_engine = _timed(spec, True, sched=sched, state=True, cm=cm)
                assert with_engine == _timed(spec, True, sched=sched, state=True,
                                             engine=False, cm=cm)
                assert with_engine == _timed(spec, True, sched=sched, state=True, cm=cm,
                                             eager=False)  # when it is worth it only
                with_engine.pop("machine")
                with_engine.pop("driver")
                assert with_engine == _timed(spec, False, sched=sched, cm=cm)
    engine, total = (a - b for a, b in zip(_ENGINE_STEPS, before))
    assert engine > total // 2, (engine, total)


def _edge(name: str, m: Machine) -> list[Any]:
    """Programs at the edges of what the engine may take over (from a review)."""
    lk = SpinLock("l")

    def spawn(n: int, body: CycleCas, label: str = "t") -> None:
        def t() -> Any:
            got = yield lock_cycles(lk, n, hold="h1", gap="g1", body=body)
            yield store(body.words, 0, got)
        m.spawn(t, name=label)

    if name == "negative old":  # -1 as int64 is never a word (Python ints compare)
        tab = m.new_words("tab", 16, init=(1 << 64) - 1)
        for k in (1, 2):
            spawn(8, CycleCas(tab, 1, np.full(8, -1, np.int64), np.full(8, k, np.int64)))
        return [tab]
    if name == "aliasing":  # two tables over the same memory
        arena = m.new_words("arena", 64)
        leaf = m.new_words("leaf", 16, data=arena.data[16:32])
        spawn(16, CycleCas(arena, 8, np.zeros(16, np.uint64), np.full(16, 7, np.uint64)))
        spawn(15, CycleCas(leaf, 1, np.zeros(15, np.uint64), np.full(15, 9, np.uint64)))
        return [arena]
    if name == "big table":  # 4096 words: the driver keeps its lines in arrays
        tab = m.new_words("tab", 4096)
        for k in (1, 2):
            spawn(20, CycleCas(tab, 8 * k, np.zeros(20, np.uint64),
                               np.full(20, k, np.uint64)))
        return [tab]
    if name == "waiter on the table":
        tab = m.new_words("tab", 64)
        spawn(30, CycleCas(tab, 1, np.zeros(30, np.uint64), np.ones(30, np.uint64)))
        spawn(20, CycleCas(tab, 40, np.zeros(20, np.uint64), np.full(20, 2, np.uint64)))

        def waiter() -> Any:
            yield wait_until(tab, 12, (1 << 64) - 1, 1, cost="g1")
            yield store(tab, 63, 5)
        m.spawn(waiter, name="waiter")
        return [tab]
    if name == "past the end":  # the executor's error, at the cycle that commits it
        tab = m.new_words("tab", 16)
        spawn(20, CycleCas(tab, 1, np.zeros(20, np.uint64), np.ones(20, np.uint64)))
        return [tab]
    if name == "old changed while pending":  # a built cmpxchg keeps its values
        tab = m.new_words("tab", 64)
        old = np.zeros(40, np.uint64)
        spawn(40, CycleCas(tab, 1, old, np.ones(40, np.uint64)))

        def meddler() -> Any:
            yield nop(cost="a1")
            old[:] = 7
            yield nop(cost="g2")
        m.spawn(meddler, name="meddler")
        return [tab]
    if name == "distinct olds":  # each thread its own old values
        tabs = [m.new_words(f"tab{k}", 32, init=5 + k) for k in (0, 1)]
        for k in (0, 1):
            spawn(20, CycleCas(tabs[k], 1, np.full(20, 5 + k, np.uint64),
                               np.full(20, 9, np.uint64)))
        return tabs
    if name == "one line":  # two readers' cmpxchg on the words of one cache line
        rw = RWLock("rw")
        tab = m.new_words("tab", 16)
        for k in (0, 1):
            def r(k: int = k) -> Any:
                body = CycleCas(tab, 1 + 3 * k, np.zeros(3, np.uint64), np.ones(3, np.uint64))
                for _ in range(8):
                    yield lock_cycles(rw, 3, read=True, gap="g1", body=body)
                    yield store(tab, 1 + 3 * k, 0)
                    yield store(tab, 2 + 3 * k, 0)
                    yield store(tab, 3 + 3 * k, 0)
            m.spawn(r, name=f"r{k}")
        return [tab]
    if name == "relabelled":  # the same operation yielded again with another hold
        def t() -> Any:
            op = lock_cycles(lk, 40, hold="h1", gap="g1")
            yield op
            op.a[1].cost = "h2"
            yield op
        m.spawn(t, name="t")
        return []
    if name == "bad value":  # old[1] is not an int: an exception, as in the loop
        tab = m.new_words("tab", 8)
        spawn(3, CycleCas(tab, 1, [0, None, 0], [1, 1, 1]))
        return [tab]
    raise AssertionError(name)


def test_the_cycle_engine_at_the_edges_of_what_it_may_take():
    """Each edge program gives the same result, words, machine and driver state with
    the engine forced to take over wherever it may as with the driver alone."""
    names = ["negative old", "aliasing", "big table", "waiter on the table",
             "past the end", "old changed while pending", "distinct olds", "one line",
             "relabelled", "bad value"]
    for name, cm in ((n, c) for n in names for c in (CM, CM_EDGE)):
        outs = []
        for engine in (False, True):
            m = Machine()
            words = _edge(name, m)
            d = TimedDriver(m, cm, cycle_engine=engine)
            d.engine_min_stretch = d.engine_min_ops = 0
            r = d.run()
            x = r.to_dict()
            x.pop("wall_s", None)
            x["words"] = [w.data.tolist() for w in words]
            x["machine"] = _machine_state(m, [])
            x["driver"] = (dict(d._lines), dict(d._cas_att), dict(d._cas_fail))
            outs.append(x)
        assert outs[0] == outs[1], name
    # the two that must be errors are, with the engine on too
    assert outs[1]["violation"][0] == "exception"


def test_a_misused_lock_is_reported_with_the_cycle_engine_on():
    """``read=True`` on a spinlock is the executor's lock-misuse at the first cycle:
    the engine must leave it to the driver (which reports it) rather than run it."""
    def run(engine: bool) -> Any:
        m = Machine()
        lk = SpinLock("s")

        def t() -> Any:
            yield lock_cycles(lk, 40, read=True, hold="h1")
        m.spawn(t, name="t")
        return TimedDriver(m, CM, cycle_engine=engine).run()
    on, off = run(True), run(False)
    assert off.violation is not None and off.violation.kind == "lock-misuse"
    assert (on.violation.kind, on.violation.message, on.steps) == (
        off.violation.kind, off.violation.message, off.steps)


def test_the_cycle_engine_stops_where_a_run_is_cut():
    """``run(max_steps=...)`` and ``run(until_ns=...)`` stop inside the engine's stretch
    exactly where the driver alone stops: the same partial results at every cut."""
    spec = [[("cycles", 0, 30, True, "h1", "g1", None, None)]] * 3 + [
        [("cycles", 0, 30, False, "h2", "g1", None, None)]]

    def cuts(engine: bool, how: str) -> list[dict[str, Any]]:
        m = Machine()
        locks, _ = _build(m, spec, True)
        d = TimedDriver(m, CM, cycle_engine=engine)
        out = []
        for i in range(1, 200):
            r = d.run(max_steps=37) if how == "steps" else d.run(until_ns=i * 700)
            x = r.to_dict()
            x.pop("wall_s", None)
            x["machine"] = _machine_state(m, locks)
            out.append(x)
            if r.stopped == "done":
                break
        assert (d.engine_steps > 0) == engine
        return out

    for how in ("steps", "until"):
        assert cuts(True, how) == cuts(False, how)


def _sample_count(profile: Any) -> int:
    if not profile:
        return 0
    return sum(n for _, n in profile)


def _program_of(spec: list[list[tuple[Any, ...]]], fused: bool) -> Program:
    return Program(f"cycles-{fused}", lambda m: _build(m, spec, fused), max_steps=400)


_small_cycles = st.tuples(st.just("cycles"), st.integers(0, 2), st.integers(0, 2),
                         st.booleans(), _label, st.just(None), st.just(None), st.just(None))


@settings(max_examples=25, deadline=None)
@given(st.lists(st.lists(st.one_of(
    _small_cycles,
    st.tuples(st.just("touch"), st.integers(0, 1), st.just(None)),
    st.tuples(st.just("body"), _small_cycles, st.integers(0, 2), st.just(None))),
    min_size=1, max_size=2), min_size=2, max_size=3))
def test_checker_explores_the_same_schedules(spec):
    """DPOR over the expanded loop and over ``lock_cycles`` covers the same number of
    executions and steps, with the same verdict: the operations and their footprints
    are the same."""
    a = systematic(_program_of(spec, False), max_executions=3000)
    b = systematic(_program_of(spec, True), max_executions=3000)
    assert (b.status, b.executions, b.steps) == (a.status, a.executions, a.steps)
    va, vb = a.violation, b.violation
    assert (vb and (vb.kind, vb.message), b.schedule) == (va and (va.kind, va.message),
                                                          a.schedule)


def test_a_checked_deadlock_is_found_inside_the_cycles():
    """Two threads taking a spinlock and a mutex in opposite orders, the inner one by
    ``lock_cycles``: the checker finds the ABBA deadlock, with the same schedule as
    for the loop."""
    def build(fused: bool) -> Any:
        def b(m: Machine) -> None:
            a, c = SpinLock("a"), SpinLock("c")

            def t(first: Any, second: Any) -> Any:
                yield spin_lock(first)
                if fused:
                    yield lock_cycles(second, 2, hold="h1")
                else:
                    yield from _expanded(second, 2, False, "h1", None, None, None)
                yield spin_unlock(first)
            m.spawn(t, a, c, name="t0")
            m.spawn(t, c, a, name="t1")
        return Program(f"abba-{fused}", b)
    found = [systematic(build(f)) for f in (False, True)]
    assert [r.violation.kind if r.violation else None for r in found] == ["deadlock"] * 2
    assert found[0].schedule == found[1].schedule


def test_a_failed_cmpxchg_ends_the_run_at_that_cycles_release():
    """Two threads install marks in the same words under a spinlock, one cycle per
    word: the second finds the first's mark at its first overlapping word, releases
    without its hold or gap, and gets back how many of its cmpxchg succeeded."""
    def build(m: Machine) -> Any:
        lk = SpinLock("l")
        table = m.new_words("table", 8)
        got: list[tuple[int, int]] = []

        def t(k: int, lo: int, n: int) -> Any:
            body = CycleCas(table, lo, np.zeros(n, np.uint64), np.full(n, k, np.uint64),
                            cost="a1")
            got.append((k, (yield lock_cycles(lk, n, hold="h1", gap="g2", body=body))))
        m.spawn(t, 1, 0, 4, name="first")
        m.spawn(t, 2, 6, 2, name="second-alone")
        m.spawn(t, 3, 2, 4, name="overlapping")
        return table, got

    m = Machine(trace=True)
    table, got = build(m)
    TimedDriver(m, CM).run()
    assert m.violation is None
    words = table.data.tolist()
    runs = {1: (0, 4), 2: (6, 2), 3: (2, 4)}
    done = dict(got)
    assert sorted(done) == [1, 2, 3]
    failed = 0
    for k, (lo, n) in runs.items():
        c = done[k]
        assert words[lo:lo + c] == [k] * c  # its successful cmpxchg, in order
        kinds = [s.op.describe().split("(")[0] for s in m.trace if s.tid == k - 1]
        if c < n:  # the word it failed on was another's; it stopped at that release
            failed += 1
            assert words[lo + c] not in (0, k)
            # taken (at once, or granted after waiting), cmpxchg, release: no hold or gap
            assert kinds[-3] in ("lock", "acquire") and kinds[-2:] == ["cas", "unlock"]
            assert kinds.count("cas") == c + 1
        else:
            assert kinds[-2:] == ["unlock", "nop"] and kinds.count("cas") == n
    assert done[2] == 2 and failed == 1  # the overlapping pair: exactly one lost


def test_each_lock_kind_gets_its_own_operations():
    """The written-out loop above picks the operations as ``lock_cycles`` does; this
    pins the choice itself: read side, write side, spinlock, sleeping mutex."""
    from youngsim.sim import ops as O
    got = {}
    for name, lock, read in (("read", RWLock("rw"), True), ("write", RWLock("rw"), False),
                             ("spin", SpinLock("s"), False), ("mutex", Mutex("m"), False)):
        seq = lock_cycles(lock, 1, read=read, hold="h1", gap="g1").a
        got[name] = [(op.kind, op.sleeps) for op in seq]
    nop_k = (O.NOP, False)
    assert got == {
        "read": [(O.READ_LOCK, False), nop_k, (O.READ_UNLOCK, False), nop_k],
        "write": [(O.WRITE_LOCK, False), nop_k, (O.WRITE_UNLOCK, False), nop_k],
        "spin": [(O.LOCK, False), nop_k, (O.UNLOCK, False), nop_k],
        "mutex": [(O.LOCK, True), nop_k, (O.UNLOCK, False), nop_k]}
    assert [op.kind for op in lock_cycles(SpinLock("s"), 1).a] == [O.LOCK, O.UNLOCK]


def _run(build: Any) -> Machine:
    m = Machine(trace=True)
    build(m)
    TimedDriver(m, CM).run()
    return m


def test_zero_cycles_resume_at_once_and_a_bad_count_is_a_model_error():
    seen = []

    def zero(m: Machine) -> None:
        lk = RWLock("l")

        def t():
            seen.append((yield lock_cycles(lk, 0, hold="h1")))
            yield nop(cost="g1")
        m.spawn(t, name="t")
    m = _run(zero)
    assert m.violation is None and seen == [None]
    assert [s.op.cost for s in m.trace] == ["g1"]

    def negative(m: Machine) -> None:
        lk = RWLock("l")

        def t():
            yield lock_cycles(lk, -1)
        m.spawn(t, name="t")
    m = _run(negative)
    assert m.violation is not None and m.violation.kind == "model-error"
    assert "lock_cycles(l, -1)" in m.violation.message

    def fractional(m: Machine) -> None:
        def t():
            yield lock_cycles(RWLock("l"), 2.5)  # type: ignore[arg-type]
        m.spawn(t, name="t")
    m = _run(fractional)
    assert m.violation is not None and m.violation.kind == "exception"
    assert "TypeError" in m.violation.message

    def not_a_lock(m: Machine) -> None:
        w = m.new_words("w", 1)

        def t():
            yield _bad_cycles(w)
        m.spawn(t, name="t")
    m = _run(not_a_lock)
    assert m.violation is not None and m.violation.kind == "model-error"

    def no_operations(m: Machine) -> None:
        def t():
            op = lock_cycles(RWLock("l"), 3)
            op.a = ()  # hand-built and empty
            yield op
        m.spawn(t, name="t")
    m = _run(no_operations)
    assert m.violation is not None and m.violation.kind == "model-error"


def test_a_long_stream_of_empty_cycle_runs_does_not_recurse():
    """A chunked walker yields a count per chunk, often 0 for long stretches: each
    resumes the generator at once, in a loop (a recursion would overflow)."""
    n = 20_000

    def build(m: Machine) -> None:
        lk = RWLock("l")

        def t():
            for i in range(n):
                yield lock_cycles(lk, 1 if i == n - 1 else 0, read=True)
            yield nop(cost="g1")
        m.spawn(t, name="t")
    m = Machine()
    build(m)
    r = TimedDriver(m, CM).run()
    assert r.violation is None and r.steps == 3
    assert r.locks["l"].acquisitions == 1


def _bad_cycles(w: Any) -> Any:
    op = lock_cycles(RWLock("l"), 1)
    op.obj = w  # a malformed operation, as buggy model code could build by hand
    return op


def test_violations_inside_the_cycles_are_the_loops():
    """Lock misuse, a mutex in atomic context and re-acquisition are reported at the
    cycle operation that commits them, as they would be in the loop."""
    def read_on_spinlock(m: Machine) -> None:
        lk = SpinLock("s")

        def t():
            yield lock_cycles(lk, 2, read=True)
        m.spawn(t, name="t")

    def mutex_under_rcu(m: Machine) -> None:
        mx, rcu = Mutex("mx"), RcuDomain("rcu")

        def t():
            yield rcu_read_lock(rcu)
            yield lock_cycles(mx, 1)
            yield rcu_read_unlock(rcu)
        m.spawn(t, name="t")

    def reacquire(m: Machine) -> None:
        lk = RWLock("rw")

        def t():
            yield read_lock(lk)
            yield lock_cycles(lk, 1)
        m.spawn(t, name="t")

    kinds = [_run(b).violation for b in (read_on_spinlock, mutex_under_rcu, reacquire)]
    assert [v.kind if v else None for v in kinds] == ["lock-misuse", "sleep-in-atomic",
                                                     "deadlock"]


def test_the_trace_holds_the_loops_operations():
    """A traced run records each cycle's operations, each with its own step."""
    def build(fused: bool) -> Any:
        def b(m: Machine) -> None:
            lk = RWLock("rw")
            w = m.new_words("w", 1)

            def reader():
                if fused:
                    yield lock_cycles(lk, 3, read=True, hold="h1", gap="g1")
                else:
                    yield from _expanded(lk, 3, True, "h1", "g1", None, None)

            def writer():
                yield store(w, 0, 1)
                if fused:
                    yield lock_cycles(lk, 2, hold="h2", acquire="a1", release="r1")
                else:
                    yield from _expanded(lk, 2, False, "h2", None, "a1", "r1")
            m.spawn(reader, name="r")
            m.spawn(writer, name="w")
        return b
    traces = [[(s.tid, s.op.describe(), s.op.cost) for s in _run(build(f)).trace]
              for f in (False, True)]
    assert traces[0] == traces[1] and len(traces[0]) > 12
