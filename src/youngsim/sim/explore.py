"""The checker driver: explore schedules of a program and judge them.

Four searches, one contract (each returns a ``Result`` whose ``guarantee`` says exactly
what was covered):

- ``dpor``: stateless dynamic partial-order reduction with sleep sets (Flanagan and
  Godefroid, POPL 2005). Two operations are dependent iff their footprints conflict (same
  object, overlapping words, at least one write; see ``ops.Op``). With no bound, a clean
  result means *every* schedule was covered up to that equivalence: verified complete.
  With a preemption bound it adds the conservative backtrack points of bounded POR (Coons,
  Musuvathi and McKinley, OOPSLA 2013), so the guarantee is "every schedule with at most
  K preemptions, up to equivalence".
- ``naive``: plain depth-first enumeration of every schedule (optionally
  preemption-bounded). Exists to measure the reduction and to cross-check DPOR in tests.
- ``pct``: probabilistic concurrency testing (Burckhardt, Kothari, Musuvathi and
  Nagarakatte, ASPLOS 2010); prints its probability bound.
- ``random_walk``: a uniformly random runnable thread at every step.

A schedule is the list of thread ids that stepped. Running a schedule (``run_schedule``)
follows it and, once it is exhausted, continues without preemption (the thread that ran
last keeps running while it can, else the lowest runnable id). Every violation therefore
replays from its schedule alone, and the shrinker (``shrink``) can drop suffixes.

The memory model is sequential consistency: operations take effect in the order the
schedule gives. Weak-memory reorderings are not explored (see docs/checker.md).
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from typing import Callable

from . import ops as O
from .machine import Machine, Violation
from .program import Program

Access = tuple[int, int, int, bool]  # (object id, first word, end word, writes?)
Footprint = tuple[Access, ...]


def footprint(m: Machine, tid: int) -> Footprint:
    """What thread ``tid``'s pending operation touches: usually one access, none for
    operations on no shared object. Acquiring or releasing a spinning lock also reads the
    consolidated RCU domain when the machine has one (``Machine.rcu_sched``): it opens or
    closes an implicit read section, which grace periods must be ordered against."""
    op = m.threads[tid].pending
    if op.obj is None:
        return ()
    acc: Access = (op.obj.oid, op.lo, op.hi, op.write)
    rs = m.rcu_sched
    if rs is not None and op.kind in _SPIN_KINDS and not getattr(op.obj, "sleeping", True):
        assert rs.oid is not None  # assigned by Machine.use_rcu_sched
        return (acc, (rs.oid, 0, 1, False))
    return (acc,)


_SPIN_KINDS = frozenset({O.LOCK, O.UNLOCK, O.READ_LOCK, O.READ_UNLOCK, O.WRITE_LOCK,
                         O.WRITE_UNLOCK, O.GRANT})


def conflict(a: Footprint, b: Footprint) -> bool:
    for x in a:
        for y in b:
            if (x[0] == y[0] and (x[3] or y[3]) and x[1] < y[2] and y[1] < x[2]):
                return True
    return False


@dataclass
class Result:
    program: str
    method: str
    status: str  # "violation", "complete" or "bounded"
    guarantee: str
    executions: int = 0
    steps: int = 0
    elapsed: float = 0.0
    sleep_blocked: int = 0
    violation: Violation | None = None
    schedule: list[int] | None = None
    seed: int = 0
    #: the search stopped on its execution or time limit before covering its space
    exhausted: bool = False
    #: executions in which each measured (tolerated) event occurred, and its total count
    counter_execs: dict[str, int] = field(default_factory=dict)
    counter_total: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.violation is None

    def absorb(self, m: Machine) -> None:
        self.executions += 1
        self.steps += m.nsteps
        for k, v in m.counters.items():
            if v:
                self.counter_execs[k] = self.counter_execs.get(k, 0) + 1
                self.counter_total[k] = self.counter_total.get(k, 0) + v


def default_next(m: Machine, last: int | None) -> int | None:
    """The non-preemptive continuation: keep running ``last`` while it can, else the
    lowest runnable thread id. None if nothing can run."""
    if last is not None and not m.threads[last].done and m.enabled(last):
        return last
    for t in m.threads:
        if not t.done and m.enabled(t.tid):
            return t.tid
    return None


def _finish_step(m: Machine, max_steps: int) -> bool:
    """After a step: True if the execution is over (violation, done, deadlock, cut off)."""
    if m.violation is not None or m.live == 0:
        return True
    if m.run_to_deadlock_check():
        return True
    return m.nsteps >= max_steps


def run_schedule(program: Program, schedule: list[int], trace: bool = False,
                 max_steps: int | None = None) -> tuple[Machine, list[int], int]:
    """Run ``schedule`` then the non-preemptive continuation.

    Returns the machine, the schedule actually executed and its number of preemptions
    (switches away from a thread that could still have run). A scheduled thread that
    cannot run at its turn is skipped, so any list of ids is a valid schedule: that is
    what lets the shrinker delete and rewrite entries freely.
    """
    limit = max_steps or program.max_steps
    m = program.build(trace=trace)
    executed: list[int] = []
    preemptions = 0
    last: int | None = None
    pos = 0
    if m.violation is not None or m.run_to_deadlock_check():
        return m, executed, preemptions
    while m.live and m.violation is None:
        tid: int | None = None
        while pos < len(schedule):
            cand = schedule[pos]
            pos += 1
            if cand < len(m.threads) and not m.threads[cand].done and m.enabled(cand):
                tid = cand
                break
        if tid is None:
            tid = default_next(m, last)
            if tid is None:
                break
        if last is not None and tid != last and not m.threads[last].done and m.enabled(last):
            preemptions += 1
        m.step(tid)
        executed.append(tid)
        last = tid
        if _finish_step(m, limit):
            break
    return m, executed, preemptions


# --- systematic search ----------------------------------------------------------------

class _Node:
    __slots__ = ("enabled", "fps", "backtrack", "done", "sleep", "tid", "fp", "preempt",
                 "prev", "spawned")

    def __init__(self, enabled: list[int], fps: dict[int, Footprint],
                 sleep: dict[int, Footprint], preempt: int,
                 prev: int | None) -> None:
        self.enabled = enabled
        self.fps = fps
        self.backtrack: set[int] = set()
        self.done: set[int] = set()
        self.sleep = sleep
        self.tid = -1
        self.fp: Footprint = ()
        self.preempt = preempt  # preemptions on the path before this state
        self.prev = prev  # thread that made the previous step
        self.spawned: range = range(0)  # threads created by this node's transition

    def cost(self, tid: int) -> int:
        """1 if choosing ``tid`` here preempts the thread that ran last."""
        p = self.prev
        return 1 if (p is not None and tid != p and p in self.enabled) else 0


def systematic(program: Program, reduction: bool = True, preemption_bound: int | None = None,
               max_executions: int | None = None, time_limit: float | None = None,
               stop_on_violation: bool = True,
               progress: Callable[[Result], None] | None = None) -> Result:
    """Depth-first exploration of schedules, with DPOR + sleep sets when ``reduction``."""
    method = "dpor" if reduction else "naive"
    res = Result(program.key, method, "complete", "")
    t0 = time.perf_counter()
    nodes: list[_Node] = []
    pruned_by_bound = False
    truncated = False
    cut_short = False
    bound = preemption_bound
    # Happens-before bookkeeping, kept across executions: transitions below the branch
    # point are the same in the next execution, so only their suffix is recomputed.
    clocks: list[list[int]] = []  # vector clock of each transition on the path
    by_oid: dict[int, list[int]] = {}  # object id -> transitions that accessed it
    while True:
        m = program.build()
        if m.violation is not None:
            res.violation = m.violation
            res.schedule = []
            break
        replay_len = len(nodes)  # nodes[:replay_len-1] replay; the last takes a new branch
        keep = max(replay_len - 1, 0)
        del clocks[keep:]
        for lst in by_oid.values():
            while lst and lst[-1] >= keep:
                lst.pop()
        tclock: dict[int, list[int]] = {}  # clock of each thread's last transition
        for j in range(keep if reduction else 0):
            nj = nodes[j]
            tclock[nj.tid] = clocks[j]
            for child in nj.spawned:
                tclock[child] = clocks[j]
        depth = 0
        while True:
            if depth < replay_len:
                node = nodes[depth]
                tid = node.tid
                if not m.enabled(tid):
                    raise RuntimeError(f"{program.key}: re-execution diverged at step "
                                       f"{depth}: the program is not deterministic")
                if depth < keep:  # a replayed prefix step: its clock is already known
                    m.step(tid)
                    depth += 1
                    if m.violation is not None:
                        break
                    continue
            else:
                # a fresh state
                if m.live == 0 or m.violation is not None:
                    break
                runnable = m.runnable()
                if not runnable:
                    m.run_to_deadlock_check()
                    break
                if depth >= program.max_steps:
                    truncated = True
                    break
                live = [t.tid for t in m.threads if not t.done]
                fps = {p: footprint(m, p) for p in live}
                parent = nodes[depth - 1] if depth else None
                if parent is None:
                    sleep: dict[int, Footprint] = {}
                    pre, prev = 0, None
                else:
                    # sleep sets are unsound with a preemption bound (an equivalent
                    # schedule may need more preemptions and be pruned), so off then
                    use_sleep = reduction and bound is None
                    sleep = _child_sleep(parent) if use_sleep else {}
                    prev = parent.tid
                    pre = parent.preempt + parent.cost(parent.tid)
                node = _Node(runnable, fps, sleep, pre, prev)
                nodes.append(node)
                if reduction:
                    _detect_races(nodes, clocks, tclock, by_oid, fps, m, depth,
                                  bound is not None)
                choice = _choose(node, bound, reduction)
                if choice is None:
                    if any(p not in node.sleep for p in runnable):
                        pruned_by_bound = True
                    else:
                        res.sleep_blocked += 1
                    nodes.pop()
                    break
                tid = choice
                node.tid = tid
                node.done.add(tid)
                node.backtrack.add(tid)
            fp = node.fps[tid]
            node.fp = fp
            nthreads_before = len(m.threads)
            m.step(tid)
            node.spawned = range(nthreads_before, len(m.threads))
            if reduction:
                # happens-before clock of this transition
                c = list(tclock.get(tid, ()))
                if fp:
                    seen: set[int] = set()
                    for acc in fp:
                        for j in by_oid.get(acc[0], ()):
                            if j not in seen and conflict(nodes[j].fp, fp):
                                seen.add(j)
                                _join(c, clocks[j])
                    for acc in fp:
                        by_oid.setdefault(acc[0], []).append(depth)
                while len(c) <= tid:
                    c.append(-1)
                c[tid] = depth
                clocks.append(c)
                tclock[tid] = c
                for child in node.spawned:
                    tclock[child] = c  # a spawned thread happens after its creation
            depth += 1
            if m.violation is None and m.live and not m.runnable():
                m.run_to_deadlock_check()
            if m.violation is not None:
                break
        res.absorb(m)
        if m.violation is not None:
            res.violation = m.violation
            res.schedule = [n.tid for n in nodes[:depth]]
            if stop_on_violation:
                break
        if progress is not None and res.executions % 256 == 0:
            progress(res)
        # backtrack: deepest node with an unexplored, admissible choice
        while nodes:
            node = nodes[-1]
            cand = _next_choice(node, bound, reduction)
            if cand is not None:
                if bound is not None and node.preempt + node.cost(cand) > bound:
                    pruned_by_bound = True
                    node.done.add(cand)
                    continue
                node.tid = cand
                node.done.add(cand)
                break
            if bound is not None and any(
                    p not in node.done and p not in node.sleep for p in node.enabled):
                pruned_by_bound = True
            nodes.pop()
        if not nodes:
            break
        if max_executions is not None and res.executions >= max_executions:
            cut_short = True
            break
        if time_limit is not None and time.perf_counter() - t0 > time_limit:
            cut_short = True
            break
    res.elapsed = time.perf_counter() - t0
    res.exhausted = cut_short
    if not reduction:
        what = "naive enumeration"
    elif bound is None:
        what = "DPOR with sleep sets"
    else:
        what = "DPOR, no sleep sets under a bound"
    if res.violation is not None:
        res.status = "violation"
        res.guarantee = f"violation found by {what} after {res.executions} executions"
    else:
        limits = []
        if bound is not None and (pruned_by_bound or not reduction):
            limits.append(f"at most {bound} preemptions"
                          + (" (bounded POR, Coons et al. 2013)" if reduction else ""))
        if truncated:
            limits.append(f"executions cut at {program.max_steps} steps")
        if cut_short:
            limits.append(f"search stopped after {res.executions} executions"
                          " (execution or time limit): incomplete")
        if limits:
            res.status = "bounded"
            res.guarantee = (f"clean within bound: every schedule with {'; '.join(limits)}"
                             f" ({what}, {res.executions} executions)")
        else:
            res.status = "complete"
            res.guarantee = (f"verified complete: every schedule up to equivalence "
                             f"({what}, {res.executions} executions, "
                             f"{res.sleep_blocked} sleep-set-blocked)")
    return res


def _join(c: list[int], d: list[int]) -> None:
    if len(c) < len(d):
        c.extend([-1] * (len(d) - len(c)))
    for i, v in enumerate(d):
        if v > c[i]:
            c[i] = v


def _child_sleep(parent: _Node) -> dict[int, Footprint]:
    """Sleep set after ``parent`` stepped ``parent.tid``: threads explored before it (and
    those already asleep) stay asleep if their next operation commutes with the step."""
    fp = parent.fp
    out = {}
    for q, qfp in parent.sleep.items():
        if q != parent.tid and not conflict(qfp, fp):
            out[q] = qfp
    for q in parent.done:
        if q != parent.tid and q not in out:
            qfp = parent.fps.get(q, ())
            if not conflict(qfp, fp):
                out[q] = qfp
    return out


def _detect_races(nodes: list[_Node], clocks: list[list[int]], tclock: dict[int, list[int]],
                  by_oid: dict[int, list[int]], fps: dict[int, Footprint],
                  m: Machine, depth: int, bounded: bool) -> None:
    """For each thread's next operation, find the last conflicting transition that does
    not happen before it, and schedule the thread (or, if it was not enabled there, every
    enabled thread) to run before that transition."""
    for p, fp in fps.items():
        if not fp:
            continue
        pc = tclock.get(p)
        cands = by_oid.get(fp[0][0], ()) if len(fp) == 1 else sorted(
            {j for acc in fp for j in by_oid.get(acc[0], ())})
        for j in reversed(cands):
            nj = nodes[j]
            if nj.tid == p or not conflict(nj.fp, fp):
                continue
            if pc is not None and len(pc) > nj.tid and pc[nj.tid] >= j:
                continue  # j happens before p's next step: not a race
            _add_backtrack(nodes, j, p)
            if bounded:
                # bounded POR: also at the start of the run of steps containing j
                k = j
                while k > 0 and nodes[k - 1].tid == nj.tid:
                    k -= 1
                if k != j:
                    _add_backtrack(nodes, k, p)
            break


def _add_backtrack(nodes: list[_Node], j: int, p: int) -> None:
    """Schedule ``p`` before transition ``j``. If ``p`` cannot run there, or is in the
    sleep set there (so choosing it would be skipped), every enabled thread is added:
    the race must then be reversed by starting the reordered suffix with some other
    thread, and this conservative choice covers every candidate. (The plain
    Flanagan-Godefroid rule missed executions with sleep sets on 3-thread programs; the
    tests cross-check DPOR against naive enumeration on random programs.)"""
    pre = nodes[j]
    if p in pre.enabled and p not in pre.sleep:
        pre.backtrack.add(p)
    else:
        pre.backtrack.update(pre.enabled)


def _choose(node: _Node, bound: int | None, reduction: bool) -> int | None:
    """First choice at a fresh state: prefer continuing the previous thread (no
    preemption), else the lowest admissible id."""
    cands = [p for p in node.enabled if p not in node.sleep]
    if not cands:
        return None
    if node.prev in cands:
        return node.prev
    for p in cands:
        if bound is None or node.preempt + node.cost(p) <= bound:
            return p
    return None


def _next_choice(node: _Node, bound: int | None, reduction: bool) -> int | None:
    pool = node.backtrack if reduction else set(node.enabled)
    for p in sorted(pool):
        if p not in node.done and p not in node.sleep and p in node.enabled:
            return p
    return None


# --- randomised search ----------------------------------------------------------------

def random_walk(program: Program, runs: int, seed: int = 0,
                time_limit: float | None = None) -> Result:
    """Uniformly random runnable thread at each step, ``runs`` times."""
    res = Result(program.key, "random", "bounded", "", seed=seed)
    t0 = time.perf_counter()
    for r in range(runs):
        rng = random.Random(f"{seed}:{r}")
        m, executed = _run_policy(program, lambda m, run: rng.choice(run))
        res.absorb(m)
        if m.violation is not None:
            res.violation, res.schedule, res.status = m.violation, executed, "violation"
            break
        if time_limit is not None and time.perf_counter() - t0 > time_limit:
            break
    res.elapsed = time.perf_counter() - t0
    if res.violation is None:
        res.guarantee = (f"clean within bound: {res.executions} uniformly random schedules "
                         f"(seed {seed}); no coverage guarantee")
    else:
        res.guarantee = f"violation found by random walk (seed {seed}, run {res.executions})"
    return res


def _run_policy(program: Program, pick: Callable[[Machine, list[int]], int]
                ) -> tuple[Machine, list[int]]:
    m = program.build()
    executed: list[int] = []
    if m.violation is not None or m.run_to_deadlock_check():
        return m, executed
    while True:
        run = m.runnable()
        if not run:
            m.run_to_deadlock_check()
            break
        tid = pick(m, run)
        m.step(tid)
        executed.append(tid)
        if _finish_step(m, program.max_steps):
            break
    return m, executed


def pct(program: Program, runs: int, depth: int = 3, seed: int = 0,
        time_limit: float | None = None) -> Result:
    """PCT: random thread priorities, ``depth - 1`` random priority change points.

    For a program with at most n threads and k steps, one run finds a given bug of depth d
    with probability at least 1 / (n * k^(d-1)) (Burckhardt et al. 2010, Theorem 1).
    """
    res = Result(program.key, "pct", "bounded", "", seed=seed)
    t0 = time.perf_counter()
    probe, _, _ = run_schedule(program, [])
    k = max(probe.nsteps, 1)
    n = max(len(probe.threads), 1)
    for r in range(runs):
        rng = random.Random(f"pct:{seed}:{r}")
        prio: dict[int, float] = {}
        changes = sorted(rng.sample(range(1, k + 1), min(depth - 1, k)))
        change_at = {s: depth - 1 - i for i, s in enumerate(changes)}

        def pick(m: Machine, run: list[int]) -> int:
            for t in m.threads:
                if t.tid not in prio:
                    prio[t.tid] = depth + rng.random()
            best = max(run, key=lambda t: prio[t])
            lowered = change_at.get(m.nsteps + 1)
            if lowered is not None:
                prio[best] = lowered - rng.random() * 1e-3
                best = max(run, key=lambda t: prio[t])
            return best

        m, executed = _run_policy(program, pick)
        res.absorb(m)
        k = max(k, m.nsteps)
        n = max(n, len(m.threads))
        if m.violation is not None:
            res.violation, res.schedule, res.status = m.violation, executed, "violation"
            break
        if time_limit is not None and time.perf_counter() - t0 > time_limit:
            break
    res.elapsed = time.perf_counter() - t0
    p = 1.0 / (n * float(k) ** (depth - 1))
    miss = math.exp(res.executions * math.log1p(-p)) if p < 1 else 0.0
    if res.violation is None:
        res.guarantee = (
            f"clean within bound: PCT depth {depth}, {res.executions} runs (seed {seed}); "
            f"n={n} threads, k={k} steps: each run finds a given depth-{depth} bug with "
            f"p >= 1/(n*k^{depth - 1}) = {p:.3g}; chance such a bug survived all runs "
            f"<= {miss:.3g}")
    else:
        res.guarantee = f"violation found by PCT depth {depth} (seed {seed}, run {res.executions})"
    return res
