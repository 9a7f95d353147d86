"""``youngsim check --all``: every design on every MMU variant, each on every scenario.

A cell's verdict is the weakest of its scenarios'. Each scenario is searched by DPOR
with an *execution* budget (never a time budget, so the verdict is the same on every
machine): first without a bound; if the budget runs out, with at most 2 preemptions;
then with at most 1. The verdict says which of these completed: "verified complete", or
"clean within bound: <= K preemptions", or, if even that ran out, the number of
executions searched. Cells run in parallel worker processes.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

from ..designs import DESIGNS, MMU_VARIANTS
from ..sim.explore import systematic
from .model import MODELLED_MMUS, NotModelled
from .runner import IMPRECISION, SearchOptions, check
from .scenarios import SCENARIOS, program

#: executions for the first, unbounded attempt; each bounded attempt (<= 2, then <= 1
#: preemptions) gets four times as many, since bounded spaces are where most cells end
DEFAULT_BUDGET = 2000
BOUNDS = (None, 2, 1)
BOUNDED_FACTOR = 4


@dataclass
class ScenarioVerdict:
    scenario: str
    status: str  # complete | bounded | violation | incomplete
    bound: int | None
    executions: int
    guarantee: str
    counters: dict[str, int] = field(default_factory=dict)
    violation: str | None = None
    replay: str | None = None
    table: str | None = None


@dataclass
class Cell:
    design: str
    mmu: str
    status: str  # complete | bounded | violation | incomplete | n/a | not modelled
    detail: str
    scenarios: list[ScenarioVerdict] = field(default_factory=list)

    def counters(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.scenarios:
            for k, v in s.counters.items():
                out[k] = out.get(k, 0) + v
        return out


def check_scenario(design: str, mmu: str, scenario: str, budget: int = DEFAULT_BUDGET,
                   mutant: str | None = None) -> ScenarioVerdict:
    prog = program(design, mmu, scenario, mutant=mutant)
    executions = 0
    for bound in BOUNDS:
        limit = budget if bound is None else budget * BOUNDED_FACTOR
        res = systematic(prog, preemption_bound=bound, max_executions=limit)
        executions += res.executions
        if res.violation is not None:
            out = check(prog, SearchOptions(bound=bound, max_executions=limit))
            return ScenarioVerdict(scenario, "violation", bound, executions,
                                   out.result.guarantee, res.counter_total,
                                   str(out.result.violation), out.replay, out.table)
        if not res.exhausted:
            return ScenarioVerdict(scenario, res.status, bound, executions, res.guarantee,
                                   res.counter_total)
    return ScenarioVerdict(scenario, "incomplete", BOUNDS[-1], executions,
                           res.guarantee, res.counter_total)


def _cell_job(args: tuple[str, str, int]) -> Cell:
    design, mmu, budget = args
    d = DESIGNS[design]
    reason = d.applies(mmu)
    if reason:
        return Cell(design, mmu, "n/a", reason)
    if mmu not in MODELLED_MMUS:
        return Cell(design, mmu, "not modelled", f"{mmu} is not modelled yet")
    cell = Cell(design, mmu, "complete", "")
    for sc in SCENARIOS:
        try:
            cell.scenarios.append(check_scenario(design, mmu, sc, budget))
        except NotModelled as e:
            cell.scenarios.append(ScenarioVerdict(sc, "n/a", None, 0, str(e)))
    order = ["violation", "incomplete", "bounded", "complete"]
    ran = [s for s in cell.scenarios if s.status != "n/a"]
    if not ran:
        return Cell(design, mmu, "not modelled", "no scenario applies")
    worst = min(ran, key=lambda s: order.index(s.status))
    cell.status = worst.status
    if worst.status == "violation":
        cell.detail = f"{worst.scenario}: {worst.violation}"
    elif worst.status == "complete":
        cell.detail = "every scenario verified complete"
    elif worst.status == "bounded":
        b = min(s.bound for s in cell.scenarios if s.status == "bounded" and s.bound)
        cell.detail = (f"clean; {sum(s.status == 'complete' for s in ran)}/"
                       f"{len(ran)} scenarios complete, the rest within "
                       f"<= {b} preemptions")
    else:
        cell.detail = f"{worst.scenario}: search budget exhausted even with 1 preemption"
    return cell


def run_matrix(designs: list[str] | None = None, mmus: list[str] | None = None,
               budget: int = DEFAULT_BUDGET, jobs: int | None = None) -> list[Cell]:
    designs = designs or list(DESIGNS)
    mmus = mmus or list(MMU_VARIANTS)
    tasks = [(d, m, budget) for d in designs for m in mmus]
    jobs = jobs or min(len(tasks), os.cpu_count() or 1)
    if jobs <= 1:
        return [_cell_job(t) for t in tasks]
    with ProcessPoolExecutor(max_workers=jobs) as ex:
        return list(ex.map(_cell_job, tasks))


SYMBOL = {"complete": "complete", "bounded": "bounded", "violation": "VIOLATION",
          "incomplete": "incomplete", "n/a": "n/a", "not modelled": "not modelled"}


def render_matrix(cells: list[Cell]) -> str:
    designs = list(dict.fromkeys(c.design for c in cells))
    mmus = list(dict.fromkeys(c.mmu for c in cells))
    by = {(c.design, c.mmu): c for c in cells}
    w0 = max(len(d) for d in designs)
    ws = [max(len(m), 12) for m in mmus]
    lines = ["design".ljust(w0) + "  " + "  ".join(m.ljust(w) for m, w in zip(mmus, ws))]
    for d in designs:
        row = d.ljust(w0) + "  "
        row += "  ".join(SYMBOL[by[(d, m)].status].ljust(w) for m, w in zip(mmus, ws))
        lines.append(row.rstrip())
    lines.append("")
    for c in cells:
        lines.append(f"{c.design} on {c.mmu}: {c.status}: {c.detail}")
        for s in c.scenarios:
            if s.status == "n/a":
                lines.append(f"    {s.scenario}: n/a: {s.guarantee}")
                continue
            b = "" if s.bound is None else f" (<= {s.bound} preemptions)"
            lines.append(f"    {s.scenario}: {s.status}{b}, {s.executions} executions")
            if s.violation:
                lines.append(f"      {s.violation}")
                lines.append(f"      replay: youngsim replay {s.replay}")
        counted = c.counters()
        tolerated = {k: counted[k] for k in IMPRECISION if k in counted}
        if tolerated:
            lines.append("    measured imprecision (summed over explored executions): "
                         + ", ".join(f"{k} {v}" for k, v in tolerated.items()))
    return "\n".join(lines)
