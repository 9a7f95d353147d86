"""The built-in examples themselves: documented verdicts, isolation between builds, the
content of their reports, and mutants showing their checks are able to fail."""

from __future__ import annotations

import re

import pytest

from youngsim.check import examples as ex
from youngsim.check.examples import EXAMPLES
from youngsim.sim import Machine, Program, RcuDomain, RWLock
from youngsim.sim.explore import run_schedule, systematic


def _doc_table() -> dict[str, str]:
    rows = {}
    for line in ex.__doc__.splitlines():
        m = re.match(r"^([a-z][a-z-]+)\s{2,}.*\s(violation|complete)\s*$", line)
        if m:
            rows[m.group(1)] = m.group(2)
    return rows


def test_documented_verdicts_match_programs():
    table = _doc_table()
    assert set(table) == set(EXAMPLES)
    for name, verdict in table.items():
        assert EXAMPLES[name].expect_violation == (verdict == "violation"), name
        assert EXAMPLES[name].description


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_default_schedule_is_clean(name):
    """Every bug in the examples needs a preemption: the non-preemptive run is clean."""
    m, executed, pre = run_schedule(EXAMPLES[name], [])
    assert m.violation is None and m.live == 0 and pre == 0
    assert executed == sorted(executed) or name in ("rcu-call",)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_builds_are_isolated(name):
    p = EXAMPLES[name]
    m1 = p.build()
    snap = {a: (w.name, w.data.tolist()) for a, w in m1.objects.items()}
    run_schedule(p, [])  # a full run on another build
    m2 = p.build()
    assert {a: (w.name, w.data.tolist()) for a, w in m2.objects.items()} == snap
    assert all(m1.objects[a] is not m2.objects[a] for a in m1.objects)
    assert [t.name for t in m1.threads] == [t.name for t in m2.threads]
    assert all(t.steps == 0 for t in m2.threads)


def _final_counters(name: str, reduction: bool) -> set[int]:
    p = EXAMPLES[name]
    seen: set[int] = set()

    def build(m: Machine) -> None:
        p.build_fn(m)
        counter = next(w for w in m.objects.values() if w.name == "counter")
        # record before the example's own check, which stops at the first failure
        m.final_checks.insert(0, ("record", lambda m: seen.add(counter[0])))
    systematic(Program(p.key, build), reduction=reduction, stop_on_violation=False)
    return seen


@pytest.mark.parametrize("reduction", [True, False])
def test_counter_outcomes(reduction):
    assert _final_counters("lost-update", reduction) == {1, 2, 3}
    assert _final_counters("cas-increment", reduction) == {3}


def test_lost_update_report():
    res = systematic(EXAMPLES["lost-update"])
    assert res.violation.kind == "lost-update"
    assert re.fullmatch(r"counter is [12] after 3 increments", res.violation.message)


def test_rcu_free_early_report():
    res = systematic(EXAMPLES["rcu-free-early"])
    v = res.violation
    assert v.kind == "use-after-free"
    assert "freed by updater" in v.message and "obj" in v.message
    m, _, _ = run_schedule(EXAMPLES["rcu-free-early"], res.schedule)
    assert m.threads[v.tid].name.startswith("reader")


def test_abba_report_names_both_threads():
    res = systematic(EXAMPLES["abba-deadlock"])
    assert res.violation.kind == "deadlock"
    assert "A waits in" in res.violation.message and "B waits in" in res.violation.message


def test_rcu_call_runs_callback_thread():
    p = EXAMPLES["rcu-call"]
    m, _, _ = run_schedule(p, [])
    assert any(t.name == "rcu:_free_obj" for t in m.threads)
    obj = next(w for w in m.objects.values() if w.name == "obj")
    assert obj.freed


# --- mutants: each example's check can fail ---------------------------------------------


class _NoExclusionRWLock(RWLock):
    """A broken rwlock that never makes anyone wait."""
    __slots__ = ()

    def compatible(self, mode: int) -> bool:
        return True

    def request(self, tid: int, mode: int) -> bool:
        self._take(tid, mode)
        return True

    def release(self, tid: int, mode: int):
        if self.owner == tid:
            self.owner = None
        elif tid in self.readers:
            del self.readers[tid]
        return None


def test_rwlock_example_catches_broken_lock(monkeypatch):
    monkeypatch.setattr(ex, "RWLock", _NoExclusionRWLock)
    res = systematic(EXAMPLES["rwlock"])
    assert res.status == "violation"
    assert res.violation.kind in ("rwlock-exclusion", "lost-update")


class _NoGraceRcu(RcuDomain):
    """A broken RCU whose grace periods wait for nobody."""
    __slots__ = ()

    def start_gp(self):
        self.grace_periods += 1
        return ()


@pytest.mark.parametrize("name", ["rcu-free", "rcu-call"])
def test_rcu_examples_catch_broken_grace_period(monkeypatch, name):
    monkeypatch.setattr(ex, "RcuDomain", _NoGraceRcu)
    res = systematic(EXAMPLES[name])
    assert res.status == "violation" and res.violation.kind == "use-after-free"


def test_cas_increment_catches_broken_cas(monkeypatch):
    """If cmpxchg's result were ignored, the cas loop would lose updates too."""
    def blind_inc(counter):
        v = yield ex.load(counter, 0)
        yield ex.cas(counter, 0, v, v + 1)
    p = Program("test/blind-cas", lambda m: ex._counter_program(m, blind_inc))
    res = systematic(p)
    assert res.status == "violation" and res.violation.kind == "lost-update"
