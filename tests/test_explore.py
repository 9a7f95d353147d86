"""The checker: verdicts on the built-in examples, agreement of DPOR with naive
enumeration (also on random programs), randomised searches, determinism.

The random-program properties compare DPOR against naive enumeration, which is correct by
construction: same verdict, and the same *set of reachable final states* (memory plus
the values every thread observed). The 3-thread and the preemption-bounded properties
currently fail: they are kept as strict xfails with the minimal counterexamples as
explicit examples, next to plain regression tests (see the BUG_* reasons below).
"""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from youngsim.check.examples import EXAMPLES
from youngsim.sim import (MASK64, Machine, Program, SpinLock, cas, fetch_add, fetch_and,
                          load, nop, spin_lock, spin_unlock, store)
from youngsim.sim.explore import pct, random_walk, run_schedule, systematic

from conftest import program

EXAMPLE_NAMES = sorted(EXAMPLES)
BUGGY = [k for k in EXAMPLE_NAMES if EXAMPLES[k].expect_violation]
CLEAN = [k for k in EXAMPLE_NAMES if not EXAMPLES[k].expect_violation]

BUG_SLEEP_SET_RACE = (
    "BUG explore.py _detect_races/_add_backtrack: for a race between transition j and "
    "thread p's next step, p itself is added to backtrack(nodes[j]) whenever p is enabled "
    "there; when p is in that node's sleep set, _next_choice skips it and the reversed "
    "race is never explored, so DPOR misses final states and violations (needs >= 3 "
    "threads; minimal cases in test_dpor_sleep_set_race_regression_*). Adding instead the "
    "first thread of the race's non-happens-after suffix (source-DPOR initials), or all "
    "enabled threads when p is asleep, fixes every case here")
BUG_SLEEP_SET_BOUND = (
    "BUG explore.py systematic: sleep sets combined with a preemption bound are unsound: "
    "a thread is put to sleep because an equivalent schedule was explored, but that "
    "schedule had more preemptions and was pruned by the bound, so bounded DPOR misses "
    "violations naive bounded enumeration finds; minimal case in "
    "test_bounded_dpor_sleep_set_regression")


def _kind(res):
    return res.violation.kind if res.violation is not None else None


# --- the built-in examples ------------------------------------------------------------


def test_examples_cover_both_verdicts():
    assert len(EXAMPLES) >= 7
    assert BUGGY and CLEAN
    for name, p in EXAMPLES.items():
        assert p.key == f"example/{name}"


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_dpor_verdict_on_examples(name):
    p = EXAMPLES[name]
    res = systematic(p)
    if p.expect_violation:
        assert res.status == "violation", res.guarantee
        assert res.violation is not None and res.schedule is not None
        m, _, _ = run_schedule(p, res.schedule)
        assert m.violation is not None and m.violation.kind == res.violation.kind
    else:
        assert res.status == "complete", res.violation
        assert res.ok and res.guarantee.startswith("verified complete")


EXPECTED_KIND = {"lost-update": "lost-update", "rcu-free-early": "use-after-free",
                 "abba-deadlock": "deadlock"}


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_naive_agrees_with_dpor_on_examples(name):
    p = EXAMPLES[name]
    dpor = systematic(p, stop_on_violation=False)
    naive = systematic(p, reduction=False, stop_on_violation=False)
    assert dpor.status == naive.status
    assert _kind(dpor) == _kind(naive) == EXPECTED_KIND.get(name)
    assert dpor.executions <= naive.executions
    assert dpor.method == "dpor" and naive.method == "naive"


def _state_recorder(p: Program, sink: set) -> Program:
    """``p`` with a final check that records the final contents of every object."""
    def build(m: Machine) -> None:
        p.build_fn(m)

        def record(m: Machine) -> None:
            sink.add(tuple((w.name, tuple(int(x) for x in w.data), w.freed)
                           for _, w in sorted(m.objects.items())))
            return None
        m.final_checks.insert(0, ("record", record))  # before the example's own checks
    return Program(p.key, build, max_steps=p.max_steps)


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_dpor_reaches_same_final_states_as_naive_on_examples(name):
    a: set = set()
    b: set = set()
    systematic(_state_recorder(EXAMPLES[name], a), stop_on_violation=False)
    systematic(_state_recorder(EXAMPLES[name], b), reduction=False, stop_on_violation=False)
    assert a == b
    if name != "abba-deadlock":  # its only non-deadlocking runs leave no memory
        assert a


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
@pytest.mark.parametrize("bound", [0, 1, 2])
def test_bounded_dpor_agrees_with_bounded_naive_on_examples(name, bound):
    p = EXAMPLES[name]
    d = systematic(p, preemption_bound=bound)
    n = systematic(p, reduction=False, preemption_bound=bound)
    assert _kind(d) == _kind(n)
    assert d.status in ("violation", "bounded", "complete")
    if d.violation is None:
        assert d.executions <= n.executions


def test_bounded_search_guarantee_names_the_bound():
    res = systematic(EXAMPLES["lost-update"], preemption_bound=0)
    assert res.status == "bounded" and "at most 0 preemptions" in res.guarantee
    res = systematic(EXAMPLES["lost-update"], preemption_bound=1)
    assert res.status == "violation"


@pytest.mark.parametrize("name", BUGGY)
@pytest.mark.parametrize("search", ["pct", "random"])
def test_randomised_searches_find_buggy_examples(name, search):
    p = EXAMPLES[name]
    res = pct(p, runs=300, seed=0) if search == "pct" else random_walk(p, runs=300, seed=0)
    assert res.status == "violation", res.guarantee
    assert res.violation.kind == EXPECTED_KIND[name]
    assert res.executions <= 300
    m, executed, _ = run_schedule(p, res.schedule)
    assert m.violation is not None and m.violation.kind == res.violation.kind
    assert executed == res.schedule


@pytest.mark.parametrize("name", CLEAN)
def test_randomised_searches_are_clean_on_correct_examples(name):
    p = EXAMPLES[name]
    for res in (pct(p, runs=60, seed=1), random_walk(p, runs=60, seed=1)):
        assert res.ok and res.status == "bounded" and res.executions == 60
        assert "clean within bound" in res.guarantee


def test_pct_guarantee_states_probability_bound():
    res = pct(EXAMPLES["cas-increment"], runs=20, depth=2, seed=3)
    assert "p >= 1/(n*k^1)" in res.guarantee and "n=3 threads" in res.guarantee


# --- determinism ------------------------------------------------------------------------


@pytest.mark.parametrize("name", BUGGY)
def test_searches_are_deterministic(name):
    p = EXAMPLES[name]
    for search in (lambda: pct(p, 300, seed=7), lambda: random_walk(p, 300, seed=7),
                   lambda: systematic(p), lambda: systematic(p, reduction=False)):
        a, b = search(), search()
        assert (a.schedule, a.executions, a.steps, _kind(a)) == \
            (b.schedule, b.executions, b.steps, _kind(b))


def test_different_seeds_explore_differently():
    p = EXAMPLES["rcu-free-early"]
    runs = {tuple(random_walk(p, 300, seed=s).schedule) for s in range(6)}
    assert len(runs) > 1


@pytest.mark.parametrize("name", CLEAN)
def test_full_exploration_is_deterministic(name):
    p = EXAMPLES[name]
    a, b = systematic(p), systematic(p)
    assert (a.executions, a.steps, a.sleep_blocked) == (b.executions, b.steps, b.sleep_blocked)


# --- limits and statuses ------------------------------------------------------------------


def test_max_executions_makes_the_verdict_incomplete():
    res = systematic(EXAMPLES["rcu-free"], reduction=False, max_executions=10)
    assert res.status == "bounded" and res.executions == 10
    assert "incomplete" in res.guarantee


def test_time_limit_makes_the_verdict_incomplete():
    res = systematic(EXAMPLES["rcu-free"], reduction=False, time_limit=0.0)
    assert res.status == "bounded" and "incomplete" in res.guarantee


def test_max_steps_cuts_executions():
    def build(m: Machine) -> None:
        w = m.new_words("w", 1)

        def spinner():
            while True:
                yield load(w, 0)

        def other():
            yield store(w, 0, 1)
        m.spawn(spinner)
        m.spawn(other)
    res = systematic(Program("test/spin", build, max_steps=12))
    assert res.status == "bounded" and "cut at 12 steps" in res.guarantee
    m, executed, _ = run_schedule(Program("test/spin", build, max_steps=12), [])
    assert len(executed) == 12 and m.violation is None


def test_violation_at_build_time():
    def build(m: Machine) -> None:
        def t():
            yield 1
        m.spawn(t)
    res = systematic(program(build))
    assert res.status == "violation" and res.violation.kind == "model-error"
    assert res.schedule == []


def test_progress_callback():
    seen = []
    systematic(EXAMPLES["rcu-free"], reduction=False, progress=lambda r: seen.append(r.executions))
    assert seen and all(n % 256 == 0 for n in seen)


def test_counters_are_aggregated_over_executions():
    def build(m: Machine) -> None:
        w = m.new_words("w", 1)

        def t(i):
            v = yield load(w, 0)
            if v:
                m.count("saw-other")
            yield store(w, 0, 1)
        m.spawn(t, 0)
        m.spawn(t, 1)
    res = systematic(program(build), reduction=False)
    assert res.executions == 6
    # only 0.0.1.1 and 1.1.0.0 let a load see the other thread's store
    assert res.counter_execs["saw-other"] == 2 and res.counter_total["saw-other"] == 2


# --- random programs: DPOR against naive enumeration ----------------------------------------

VALUES = [0, 1, 2, 3, MASK64, MASK64 - 1]


@st.composite
def mem_ops(draw, nwords: int):
    k = draw(st.sampled_from(["load", "store", "cas", "fetch_add", "fetch_and"]))
    w = draw(st.integers(0, nwords - 1))
    if k == "load":
        return (k, w)
    if k == "store":  # a constant, or the last value this thread saw plus one
        return (k, w, draw(st.integers(0, 3)), draw(st.sampled_from([None, 1])))
    if k == "cas":
        return (k, w, draw(st.integers(0, 2)), draw(st.integers(0, 3)))
    if k == "fetch_add":
        return (k, w, draw(st.sampled_from([1, 2, -1])))
    return (k, w, draw(st.integers(0, 3)))


@st.composite
def rand_programs(draw, nthreads: int, budget: int):
    """(nwords, separate objects?, threads, predicate). ``budget`` caps the total number
    of steps, so naive enumeration stays cheap."""
    nwords = draw(st.integers(1, 3))
    separate = draw(st.booleans())
    threads = []
    remaining = budget
    for t in range(nthreads):
        reserve = nthreads - t - 1  # at least one step for each later thread
        n = draw(st.integers(1, max(1, min(4, remaining - reserve))))
        ops = [draw(mem_ops(nwords)) for _ in range(n)]
        remaining -= n
        if remaining - reserve >= 2 and draw(st.booleans()):
            a = draw(st.integers(0, len(ops) - 1))
            b = draw(st.integers(a + 1, len(ops)))
            lk = draw(st.integers(0, 1))
            ops = ops[:a] + [("lock", lk)] + ops[a:b] + [("unlock", lk)] + ops[b:]
            remaining -= 2
        threads.append(tuple(ops))
    pred = (draw(st.integers(0, nwords - 1)), draw(st.sampled_from(VALUES)))
    return (nwords, separate, tuple(threads), pred)


def build_random(spec, sink: set | None = None, use_pred: bool = True) -> Program:
    """Turn a spec into a program. The final check records (memory, observations) into
    ``sink`` and, with ``use_pred``, fails if word ``pred[0]`` ends equal to ``pred[1]``."""
    nwords, separate, threads, pred = spec

    def build(m: Machine) -> None:
        if separate:
            words = [(m.new_words(f"w{j}", 1), 0) for j in range(nwords)]
        else:
            arr = m.new_words("w", nwords)
            words = [(arr, j) for j in range(nwords)]
        locks = [SpinLock("L0"), SpinLock("L1")]
        obs: list[list] = [[] for _ in threads]

        def body(ops, seen):
            last = 0
            for op in ops:
                k = op[0]
                if k == "lock":
                    yield spin_lock(locks[op[1]])
                    continue
                if k == "unlock":
                    yield spin_unlock(locks[op[1]])
                    continue
                w, i = words[op[1]]
                if k == "load":
                    r = yield load(w, i)
                elif k == "store":
                    r = yield store(w, i, op[2] if op[3] is None else last + op[3])
                elif k == "cas":
                    r = yield cas(w, i, op[2], op[3])
                elif k == "fetch_add":
                    r = yield fetch_add(w, i, op[2])
                else:
                    r = yield fetch_and(w, i, op[2])
                if r is not None:
                    last = r
                seen.append(r)

        for t, ops in enumerate(threads):
            m.spawn(body, ops, obs[t], name=f"T{t}")

        def final(m: Machine) -> str | None:
            mem = tuple(w[i] for w, i in words)
            if sink is not None:
                sink.add((mem, tuple(tuple(o) for o in obs)))
            if use_pred and mem[pred[0]] == pred[1]:
                return f"word {pred[0]} ended as {pred[1]:#x}"
            return None
        m.final_check("predicate", final)
    return Program("test/random", build)


def final_states(spec, reduction: bool, bound: int | None = None) -> set:
    sink: set = set()
    systematic(build_random(spec, sink, use_pred=False), reduction=reduction,
               preemption_bound=bound, stop_on_violation=False)
    return sink


def check_dpor_matches_naive(spec):
    dpor_states = final_states(spec, True)
    naive_states = final_states(spec, False)
    assert dpor_states == naive_states, (
        f"missed by DPOR: {naive_states - dpor_states}; "
        f"not reachable: {dpor_states - naive_states}")
    d = systematic(build_random(spec), reduction=True)
    n = systematic(build_random(spec), reduction=False)
    assert (d.violation is None) == (n.violation is None), (_kind(d), _kind(n))
    assert _kind(d) == _kind(n)
    if d.violation is not None:
        m, _, _ = run_schedule(build_random(spec), d.schedule)
        assert m.violation is not None and m.violation.kind == d.violation.kind


# Minimal counterexample for the sleep-set/race bug, in spec form: separate words
# x=w0, y=w1, z=w2; T0: x=2; z+=1   T1: y=1; x+=1   T2: y+=1; z=1.
# The final state x,y,z = 2,1,1 needs T2:y+=1 < T1:y=1 < T1:x+=1 < T0:x=2 < T0:z+=1 <
# T2:z=1 (schedule 2.1.1.0.0.2); DPOR never runs it.
CYCLE_SPEC = (3, True, ((("store", 0, 2, None), ("fetch_add", 2, 1)),
                        (("store", 1, 1, None), ("fetch_add", 0, 1)),
                        (("fetch_add", 1, 1), ("store", 2, 1, None))), (0, 2))
# Smaller, with a single write (message passing): T0: y+=1   T1: x; r1=y   T2: r2=y.
# DPOR never reaches r1=1, r2=0 (schedule 2.0.1.1).
OBS_SPEC = (2, True, ((("fetch_add", 1, 1),),
                      (("load", 0), ("load", 1)),
                      (("load", 1),)), (0, 5))


@settings(max_examples=150)
@given(rand_programs(nthreads=2, budget=10))
def test_dpor_matches_naive_on_random_two_thread_programs(spec):
    check_dpor_matches_naive(spec)


@settings(max_examples=40)
@example(CYCLE_SPEC)
@example(OBS_SPEC)
@given(rand_programs(nthreads=3, budget=8))
def test_dpor_matches_naive_on_random_three_thread_programs(spec):
    check_dpor_matches_naive(spec)


@pytest.mark.slow
@settings(max_examples=1500)
@given(rand_programs(nthreads=3, budget=9))
def test_dpor_matches_naive_on_random_three_thread_programs_soak(spec):
    """Slow soak: many more generated 3-thread programs, no explicit example (finds the
    sleep-set bug on its own in most runs; non-strict xfail until it is fixed)."""
    check_dpor_matches_naive(spec)


def _cycle_program(with_predicate: bool = True) -> Program:
    def build(m: Machine) -> None:
        x, y, z = m.new_words("x", 1), m.new_words("y", 1), m.new_words("z", 1)

        def t0():
            yield store(x, 0, 2)
            yield fetch_add(z, 0, 1)

        def t1():
            yield store(y, 0, 1)
            yield fetch_add(x, 0, 1)

        def t2():
            yield fetch_add(y, 0, 1)
            yield store(z, 0, 1)
        m.spawn(t0)
        m.spawn(t1)
        m.spawn(t2)
        m.final_check("cycle", lambda m: "x,y,z = 2,1,1" if (x[0], y[0], z[0]) == (2, 1, 1)
                      else None)
    return Program("test/cycle", build)


def test_cycle_program_violation_is_reachable():
    """The regression's premise: the state is reachable (naive finds it, and the
    schedule replays)."""
    p = _cycle_program()
    m, _, _ = run_schedule(p, [2, 1, 1, 0, 0, 2])
    assert m.violation is not None and m.violation.kind == "cycle"
    assert systematic(p, reduction=False).status == "violation"


def test_dpor_sleep_set_race_regression_cycle():
    res = systematic(_cycle_program())
    assert res.status == "violation", res.guarantee


def test_dpor_sleep_set_race_regression_message_passing():
    def build(m: Machine) -> None:
        x, y = m.new_words("x", 1), m.new_words("y", 1)
        seen: dict = {}

        def t0():
            yield fetch_add(y, 0, 1)

        def t1():
            yield load(x, 0)
            seen["r1"] = yield load(y, 0)

        def t2():
            seen["r2"] = yield load(y, 0)
        m.spawn(t0)
        m.spawn(t1)
        m.spawn(t2)
        m.final_check("mp", lambda m: "r1=1, r2=0"
                      if (seen["r1"], seen["r2"]) == (1, 0) else None)
    p = Program("test/mp", build)
    assert systematic(p, reduction=False).status == "violation"
    m, _, _ = run_schedule(p, [2, 0, 1, 1])
    assert m.violation is not None and m.violation.kind == "mp"
    res = systematic(p)
    assert res.status == "violation", res.guarantee


# --- bounded search -----------------------------------------------------------------------

# T0: a=1; w=1   T1: w=2   predicate: w ends as 1. With bound 0 the schedule 1.0.0 (T1
# runs to completion first, no preemption) reaches it; bounded DPOR does not.
BOUND_SPEC = (2, True, ((("store", 1, 1, None), ("store", 0, 1, None)),
                        (("store", 0, 2, None),)), (0, 1))


def check_bounded(spec, bound):
    d = systematic(build_random(spec), reduction=True, preemption_bound=bound)
    n = systematic(build_random(spec), reduction=False, preemption_bound=bound)
    assert (d.violation is None) == (n.violation is None), (bound, _kind(d), _kind(n))
    if d.violation is not None:
        _, _, pre = run_schedule(build_random(spec), d.schedule)
        assert pre <= bound


@settings(max_examples=60)
@example(BOUND_SPEC, 0)
@given(st.one_of(rand_programs(nthreads=2, budget=9), rand_programs(nthreads=3, budget=8)),
       st.integers(0, 2))
def test_bounded_dpor_matches_bounded_naive_on_random_programs(spec, bound):
    check_bounded(spec, bound)


def test_bounded_dpor_sleep_set_regression():
    def build(m: Machine) -> None:
        a, w = m.new_words("a", 1), m.new_words("w", 1)

        def t0():
            yield store(a, 0, 1)
            yield store(w, 0, 1)

        def t1():
            yield store(w, 0, 2)
        m.spawn(t0)
        m.spawn(t1)
        m.final_check("w-is-1", lambda m: "w ended as 1" if w[0] == 1 else None)
    p = Program("test/bound", build)
    m, _, pre = run_schedule(p, [1, 0, 0])
    assert m.violation is not None and pre == 0  # reachable without preemption
    assert systematic(p, reduction=False, preemption_bound=0).status == "violation"
    res = systematic(p, preemption_bound=0)
    assert res.status == "violation", res.guarantee


def test_sleep_set_reduction_is_real_on_random_program():
    """Sanity check of the oracle: the random-program builder yields programs where DPOR
    explores strictly fewer schedules than naive enumeration."""
    spec = (2, True, ((("store", 0, 1, None), ("load", 1), ("fetch_add", 0, 1)),
                      (("store", 1, 1, None), ("load", 0))), (0, 7))
    d = systematic(build_random(spec), stop_on_violation=False)
    n = systematic(build_random(spec), reduction=False, stop_on_violation=False)
    assert d.executions < n.executions == 10
    assert final_states(spec, True) == final_states(spec, False)
    assert len(final_states(spec, False)) > 1


def test_nop_spawn_is_independent():
    """Threads that only nop are explored once by DPOR, all ways by naive."""
    def build(m: Machine) -> None:
        def t():
            yield nop()
            yield nop()
        m.spawn(t)
        m.spawn(t)
    d = systematic(program(build))
    n = systematic(program(build), reduction=False)
    assert d.executions == 1 and n.executions == 6


def test_concurrent_allocations_commute():
    from youngsim.sim import alloc

    def build(m: Machine) -> None:
        w = m.new_words("w", 2)

        def t(i):
            o = yield alloc(f"o{i}", 1)
            yield store(w, i, o.addr)
        m.spawn(t, 0)
        m.spawn(t, 1)
        m.final_check("order", lambda m: "o1 allocated first" if w[1] < w[0] else None)
    p = Program("test/alloc", build)
    assert systematic(p).status == systematic(p, reduction=False).status
