"""Schedules as text, counterexample shrinking, and the step table.

A replay string names the program and the schedule, and nothing else is needed to re-run
a violation exactly::

    ys1:example/lost-update:s0:0.1*2.2

``ys1`` is the format version, then the program key, the seed of the search that found it
(informational: programs are deterministic), and the thread ids that stepped, with
``ID*N`` for N consecutive steps of one thread. After the listed steps the run continues
without preemption (see ``explore.run_schedule``).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from .explore import run_schedule
from .machine import Machine
from .program import Program

VERSION = "ys1"


class ReplayError(ValueError):
    """A replay string that cannot be parsed."""


def encode_schedule(schedule: list[int]) -> str:
    if not schedule:
        return "-"
    parts: list[str] = []
    i = 0
    while i < len(schedule):
        j = i
        while j < len(schedule) and schedule[j] == schedule[i]:
            j += 1
        n = j - i
        parts.append(f"{schedule[i]}*{n}" if n > 1 else str(schedule[i]))
        i = j
    return ".".join(parts)


def decode_schedule(text: str) -> list[int]:
    if text == "-":
        return []
    out: list[int] = []
    for part in text.split("."):
        mt = _ELEMENT.fullmatch(part)
        if mt is None:
            raise ReplayError(f"bad schedule element {part!r} (expected ID or ID*N, N >= 1)")
        out.extend([int(mt.group(1))] * (int(mt.group(2)) if mt.group(2) else 1))
    return out


_ELEMENT = re.compile(r"([0-9]+)(?:\*([1-9][0-9]*))?", re.ASCII)


def replay_string(key: str, schedule: list[int], seed: int = 0) -> str:
    return f"{VERSION}:{key}:s{seed}:{encode_schedule(schedule)}"


def parse_replay(text: str) -> tuple[str, list[int], int]:
    """Split a replay string into (program key, schedule, seed)."""
    parts = text.strip().split(":")
    if len(parts) != 4 or parts[0] != VERSION:
        raise ReplayError(
            f"not a replay string: {text!r} (expected {VERSION}:PROGRAM:sSEED:SCHEDULE)")
    key, seed_s, sched = parts[1], parts[2], parts[3]
    if re.fullmatch(r"s[0-9]+", seed_s, re.ASCII) is None:
        raise ReplayError(f"bad seed field {seed_s!r} in replay string (expected sN)")
    return key, decode_schedule(sched), int(seed_s[1:])


# --- shrinking ------------------------------------------------------------------------

@dataclass
class Shrunk:
    schedule: list[int]  # the minimal choice prefix (continuation is implied)
    executed: list[int]  # every step the replay takes
    preemptions: int
    runs: int


def shrink(program: Program, schedule: list[int], kind: str, budget_s: float = 20.0,
           max_runs: int = 5000) -> Shrunk:
    """Make a failing schedule minimal: fewest preemptions, then fewest steps.

    Works on the executed schedule (every step, not just the choices) and tries
    candidates greedily until none improves, a local minimum as with Hypothesis'
    shrinker: delete a whole run of one thread's steps, let the running thread continue
    instead of switching (removes a preemption), delete one step. A candidate is kept
    only if it still ends in a violation of the same kind and scores strictly lower.
    Finally the schedule is cut to the shortest prefix whose non-preemptive continuation
    replays exactly the same steps.
    """
    t0 = time.perf_counter()
    runs = 0

    def attempt(cand: list[int]) -> tuple[list[int], int] | None:
        nonlocal runs
        runs += 1
        m, executed, pre = run_schedule(program, cand)
        if m.violation is not None and m.violation.kind == kind:
            return executed, pre
        return None

    first = attempt(schedule)
    if first is None:  # the schedule does not reproduce: nothing to shrink
        return Shrunk(schedule, schedule, -1, runs)
    best, best_pre = first

    def better(r: tuple[list[int], int] | None) -> bool:
        return r is not None and (r[1], len(r[0])) < (best_pre, len(best))

    def out_of_budget() -> bool:
        return runs >= max_runs or time.perf_counter() - t0 > budget_s

    def candidates() -> list[list[int]]:
        blocks = [i for i in range(len(best)) if i == 0 or best[i] != best[i - 1]]
        ends = blocks[1:] + [len(best)]
        out = [best[:a] + best[b:] for a, b in zip(blocks, ends)]
        out += [best[:i] + [best[i - 1]] + best[i + 1:] for i in blocks[1:]]
        out += [best[:i] + best[i + 1:] for i in range(len(best))]
        return out

    improved = True
    while improved and not out_of_budget():
        improved = False
        for cand in candidates():
            r = attempt(cand)
            if better(r):
                assert r is not None
                best, best_pre = r
                improved = True
                break
            if out_of_budget():
                break
    # the shortest listing that replays the same steps
    listing = best
    for i in range(len(best) + 1):
        if i and i < len(best) and best[i] == best[i - 1]:
            continue
        runs += 1
        _, executed, _ = run_schedule(program, best[:i])
        if executed == best:
            listing = best[:i]
            break
    return Shrunk(listing, best, best_pre, runs)


# --- the step table -------------------------------------------------------------------

def _fmt(v: object) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return hex(v)
    return type(v).__name__ if not isinstance(v, str) else v


def step_table(m: Machine) -> str:
    """Format a traced run: step, thread, operation, result, model source line."""
    names = m.thread_names()
    rows = [("step", "thread", "operation", "result", "source")]
    for s in m.trace:
        rows.append((str(s.index), f"T{s.tid} {names[s.tid]}", s.op.describe(),
                     _fmt(s.result), s.loc))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = []
    for r in rows:
        lines.append("  ".join(r[i].ljust(widths[i]) if i < 4 else r[i] for i in range(5))
                     .rstrip())
    return "\n".join(lines)


def replay(program: Program, schedule: list[int]) -> tuple[Machine, list[int], int]:
    """Re-run a schedule with tracing on."""
    return run_schedule(program, schedule, trace=True)
