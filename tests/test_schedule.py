"""Replay strings, counterexample shrinking, replay determinism and the step table."""

from __future__ import annotations

import os
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from youngsim.check import examples as examples_mod
from youngsim.check.examples import EXAMPLES
from youngsim.sim import Machine, Program, load, store
from youngsim.sim.explore import pct, random_walk, run_schedule, systematic
from youngsim.sim.schedule import (VERSION, ReplayError, decode_schedule, encode_schedule,
                                   parse_replay, replay, replay_string, shrink, step_table)

BUGGY = sorted(k for k, p in EXAMPLES.items() if p.expect_violation)
EXAMPLES_SRC = os.path.abspath(examples_mod.__file__)
with open(EXAMPLES_SRC) as _f:
    EXAMPLES_LINES = _f.read().splitlines()

# --- encoding -------------------------------------------------------------------------------

schedules = st.lists(st.integers(0, 40), max_size=60) | st.lists(st.integers(0, 2), max_size=200)


@given(schedules)
def test_encode_decode_round_trip(s):
    text = encode_schedule(s)
    assert decode_schedule(text) == s
    assert ":" not in text and " " not in text


@given(schedules)
def test_encoding_is_run_length(s):
    text = encode_schedule(s)
    if not s:
        assert text == "-"
        return
    parts = text.split(".")
    for part in parts:  # ID, or ID*N with N >= 2
        assert re.fullmatch(r"(0|[1-9]\d*)(\*([2-9]|[1-9]\d+))?", part), part
    # runs are maximal: adjacent parts never name the same thread
    tids = [int(p.partition("*")[0]) for p in parts]
    assert all(a != b for a, b in zip(tids, tids[1:]))
    assert len(parts) == 1 + sum(1 for a, b in zip(s, s[1:]) if a != b)


def test_encode_examples():
    assert encode_schedule([]) == "-"
    assert encode_schedule([0]) == "0"
    assert encode_schedule([0, 1, 1, 2, 2, 2, 1]) == "0.1*2.2*3.1"
    assert encode_schedule([12, 12]) == "12*2"
    assert decode_schedule("1*2.2*2.1") == [1, 1, 2, 2, 1]


keys = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789/=,._-", min_size=1, max_size=30)


@given(keys, schedules, st.integers(0, 2**32))
def test_replay_string_round_trip(key, s, seed):
    text = replay_string(key, s, seed)
    assert text.startswith(f"{VERSION}:{key}:s{seed}:")
    assert parse_replay(text) == (key, s, seed)
    assert parse_replay(f"  {text}\n") == (key, s, seed)


def test_replay_string_example():
    assert replay_string("example/lost-update", [0, 1, 1, 2, 2], 0) == \
        "ys1:example/lost-update:s0:0.1*2.2*2"


@pytest.mark.parametrize("text", [
    "",
    "garbage",
    "ys1:example/x:s0",  # missing schedule
    "ys1:example/x:s0:1:2",  # too many fields
    "ys2:example/x:s0:1",  # unknown version
    "YS1:example/x:s0:1",
    "ys1:example/x:0:1",  # seed without s
    "ys1:example/x:s:1",
    "ys1:example/x:s-1:1",
    "ys1:example/x:sx:1",
    "ys1:example/x:s0:",  # empty schedule
    "ys1:example/x:s0:0..1",
    "ys1:example/x:s0:.0",
    "ys1:example/x:s0:0.",
    "ys1:example/x:s0:-1",
    "ys1:example/x:s0:a",
    "ys1:example/x:s0:1*x",
    "ys1:example/x:s0:1*-2",
    "ys1:example/x:s0:*3",
    "ys1:example/x:s0:1*2*3",
    "ys1:example/x:s0:1 2",
    "ys1:example/x:s0:0x1",
])
def test_parse_replay_rejects_malformed(text):
    with pytest.raises(ReplayError):
        parse_replay(text)


@pytest.mark.parametrize("text", ["ys1:example/x:s0:\u00b2", "ys1:example/x:s\u00b2:0"])
def test_parse_replay_rejects_non_ascii_digits(text):
    with pytest.raises(ReplayError):
        parse_replay(text)


@pytest.mark.parametrize("text", ["ys1:example/x:s0:1*", "ys1:example/x:s0:0*0"])
def test_parse_replay_rejects_empty_or_zero_repeat(text):
    with pytest.raises(ReplayError):
        parse_replay(text)


# --- shrinking ------------------------------------------------------------------------------


def _found_schedules(p: Program):
    """Failing schedules from several searches (random ones are long and preempt a lot)."""
    out = []
    for res in (systematic(p), systematic(p, reduction=False), random_walk(p, 300, seed=2),
                pct(p, 300, seed=2)):
        assert res.violation is not None, res.method
        out.append((res.method, res.schedule, res.violation.kind))
    return out


@pytest.mark.parametrize("name", BUGGY)
def test_shrink_keeps_violation_and_does_not_add_preemptions(name):
    p = EXAMPLES[name]
    improved = False
    for method, sched, kind in _found_schedules(p):
        m0, executed0, pre0 = run_schedule(p, sched)
        assert m0.violation is not None and m0.violation.kind == kind
        sh = shrink(p, sched, kind)
        assert sh.preemptions >= 0 and sh.runs >= 1
        assert sh.preemptions <= pre0, method
        assert len(sh.executed) <= len(executed0)
        improved |= (sh.preemptions, len(sh.executed)) < (pre0, len(executed0))
        m, executed, pre = run_schedule(p, sh.schedule)
        assert m.violation is not None and m.violation.kind == kind, method
        assert executed == sh.executed and pre == sh.preemptions
        # the listed choices are a prefix of the executed steps
        assert sh.executed[:len(sh.schedule)] == sh.schedule
        # shrinking is a fixpoint: shrinking again changes nothing
        again = shrink(p, sh.schedule, kind)
        assert (again.executed, again.preemptions) == (sh.executed, sh.preemptions)
    assert improved, "no search produced a schedule the shrinker could improve"


def test_shrunk_lost_update_is_minimal():
    """Losing an update among three increments needs exactly one preemption."""
    p = EXAMPLES["lost-update"]
    res = random_walk(p, 300, seed=2)
    sh = shrink(p, res.schedule, "lost-update")
    assert sh.preemptions == 1
    assert len(sh.executed) == 6  # every thread runs its load and store once


def test_shrink_of_non_reproducing_schedule_is_identity():
    p = EXAMPLES["lost-update"]
    sh = shrink(p, [0, 0, 1, 1, 2, 2], "lost-update")
    assert sh.preemptions == -1 and sh.schedule == [0, 0, 1, 1, 2, 2]


def test_shrink_respects_kind():
    p = EXAMPLES["lost-update"]
    sched = systematic(p).schedule
    assert shrink(p, sched, "deadlock").preemptions == -1


def test_shrink_budget_limits_runs():
    p = EXAMPLES["rcu-free-early"]
    sched = random_walk(p, 300, seed=2).schedule
    sh = shrink(p, sched, "use-after-free", max_runs=3)
    assert sh.runs <= 3 + len(sh.executed) + 1  # + the final prefix search
    m, _, _ = run_schedule(p, sh.schedule)
    assert m.violation is not None and m.violation.kind == "use-after-free"


# --- replay determinism and the step table --------------------------------------------------


def _trace_rows(m: Machine):
    return [(s.index, s.tid, s.op.describe(), repr(s.result), s.loc) for s in m.trace]


@pytest.mark.parametrize("name", BUGGY)
def test_replay_of_shrunk_schedule_is_deterministic(name):
    p = EXAMPLES[name]
    res = systematic(p)
    sh = shrink(p, res.schedule, res.violation.kind)
    m1, ex1, pre1 = replay(p, sh.schedule)
    m2, ex2, pre2 = replay(p, sh.schedule)
    assert m1.trace and _trace_rows(m1) == _trace_rows(m2)
    assert (ex1, pre1) == (ex2, pre2) == (sh.executed, sh.preemptions)
    assert str(m1.violation) == str(m2.violation)
    assert step_table(m1) == step_table(m2)
    # via the replay string
    key, sched, seed = parse_replay(replay_string(p.key, sh.schedule, 5))
    assert EXAMPLES[key.split("/", 1)[1]] is p and seed == 5
    m3, _, _ = replay(p, sched)
    assert _trace_rows(m3) == _trace_rows(m1)


def _check_table(m: Machine):
    table = step_table(m).splitlines()
    assert table[0].split() == ["step", "thread", "operation", "result", "source"]
    assert len(table) == len(m.trace) + 1
    names = m.thread_names()
    for row, s in zip(table[1:], m.trace):
        assert row.startswith(str(s.index))
        assert f"T{s.tid} {names[s.tid]}" in row and s.op.describe() in row
        src = re.search(r"(\S+):(\d+)$", row)
        assert src is not None, row
        path, line = src.group(1), int(src.group(2))
        yield path, line, s


@pytest.mark.parametrize("name", BUGGY)
def test_step_table_names_model_source_line_of_every_step(name):
    p = EXAMPLES[name]
    res = systematic(p)
    sh = shrink(p, res.schedule, res.violation.kind)
    m, _, _ = replay(p, sh.schedule)
    assert len(m.trace) == len(sh.executed)
    for path, line, s in _check_table(m):
        assert path == "check/examples.py", path
        assert "yield" in EXAMPLES_LINES[line - 1], (line, EXAMPLES_LINES[line - 1])


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_step_table_on_default_runs(name):
    """Every step of the default schedule points at a ``yield`` of examples.py, except
    the internal grace-period wait of a call_rcu callback."""
    m, _, _ = replay(EXAMPLES[name], [])
    assert m.trace
    for path, line, s in _check_table(m):
        if path == "check/examples.py":
            assert "yield" in EXAMPLES_LINES[line - 1]
        else:
            assert s.op.describe().startswith("gp_wait"), (path, line)


def test_step_table_formats_results():
    def build(m: Machine) -> None:
        w = m.new_words("w", 1, 255)

        def t():
            yield load(w, 0)
            yield store(w, 0, 1)
        m.spawn(t)
    m, _, _ = replay(Program("test/fmt", build), [])
    rows = step_table(m).splitlines()
    assert "load(w[0])" in rows[1] and "0xff" in rows[1]
    assert "store(w[0], 0x1)" in rows[2] and "0x" not in rows[2].split("store")[0]
    assert re.search(r"test_schedule\.py:\d+$", rows[1])
