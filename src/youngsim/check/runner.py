"""Run one search on one program and turn a violation into a counterexample.

This is the glue between the explorers (``sim.explore``) and what a user sees: pick the
search the options ask for, shrink any violation, replay the shrunk schedule with tracing,
and render the verdict, the step table and the replay string.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..sim import Program
from ..sim.explore import Result, pct, random_walk, systematic
from ..sim.schedule import replay, replay_string, shrink, step_table


@dataclass(frozen=True)
class SearchOptions:
    """Which search to run. Default: DPOR, exhaustive."""

    method: str = "dpor"  # dpor | naive | pct | random
    bound: int | None = None  # preemption bound for dpor/naive
    runs: int = 1000  # for pct/random
    depth: int = 3  # PCT bug depth
    seed: int = 0
    max_executions: int | None = None
    time_limit: float | None = None

    def describe(self) -> str:
        if self.method in ("dpor", "naive"):
            b = f", preemption bound {self.bound}" if self.bound is not None else ""
            return f"{self.method}{b}"
        if self.method == "pct":
            return f"pct depth {self.depth}, {self.runs} runs, seed {self.seed}"
        return f"random walk, {self.runs} runs, seed {self.seed}"


@dataclass
class Outcome:
    program: Program
    result: Result
    replay: str | None = None
    table: str | None = None
    preemptions: int | None = None
    steps: int | None = None

    @property
    def ok(self) -> bool:
        return self.result.violation is None


def search(program: Program, opts: SearchOptions) -> Result:
    if opts.method in ("dpor", "naive"):
        return systematic(program, reduction=opts.method == "dpor",
                          preemption_bound=opts.bound, max_executions=opts.max_executions,
                          time_limit=opts.time_limit)
    if opts.method == "pct":
        return pct(program, opts.runs, depth=opts.depth, seed=opts.seed,
                   time_limit=opts.time_limit)
    if opts.method == "random":
        return random_walk(program, opts.runs, seed=opts.seed, time_limit=opts.time_limit)
    raise ValueError(f"unknown search method {opts.method!r}")


def check(program: Program, opts: SearchOptions, shrink_budget_s: float = 20.0) -> Outcome:
    """Search; on a violation shrink it and produce the step table and replay string."""
    res = search(program, opts)
    out = Outcome(program, res)
    if res.violation is not None and res.schedule is not None:
        s = shrink(program, res.schedule, res.violation.kind, budget_s=shrink_budget_s)
        m, executed, pre = replay(program, s.schedule)
        if m.violation is not None:
            res.violation = m.violation  # the shrunk run's message
        out.replay = replay_string(program.key, s.schedule, opts.seed)
        out.table = step_table(m)
        out.preemptions = pre
        out.steps = len(executed)
    return out


#: tolerated imprecision (section 4 of the spec): measured and shown, never a violation
IMPRECISION = ("false_old", "false_young", "young_dropped_at_zap", "clears_clobbered")


def render_counters(total: dict[str, int], execs: dict[str, int] | None = None
                    ) -> list[str]:
    """Two lines: the tolerated imprecision, then the other counted events."""
    def fmt(keys: list[str]) -> str:
        return ", ".join(f"{k} {total[k]}" + (f" (in {execs[k]} executions)" if execs else "")
                         for k in keys)

    imp = [k for k in IMPRECISION if k in total]
    other = sorted(k for k in total if k not in IMPRECISION)
    lines = []
    if imp:
        lines.append(f"  tolerated imprecision, counted: {fmt(imp)}")
    if other:
        lines.append(f"  events: {fmt(other)}")
    return lines


def render(out: Outcome) -> str:
    """The text the CLI prints for one checked program."""
    r = out.result
    lines = [f"{out.program.key}: {r.status.upper()}"]
    if r.violation is not None:
        lines[0] += f" {r.violation}"
    lines.append(f"  {r.guarantee}; {r.steps} steps in {r.elapsed:.2f} s")
    lines.extend(render_counters(r.counter_total, r.counter_execs))
    if out.table is not None:
        lines.append(f"  counterexample: {out.steps} steps, {out.preemptions} preemptions")
        lines.extend("  " + ln for ln in out.table.splitlines())
        lines.append(f"  replay: youngsim replay {out.replay}")
    return "\n".join(lines)
