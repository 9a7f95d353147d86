"""A program: something the drivers can build afresh and run many times.

Stateless model checking re-executes the program from its initial state for every
schedule, so a program is a *factory*: ``build()`` returns a new ``Machine`` with its
shared state, threads and invariants. Nothing may leak between builds (no module-level
mutable state), or re-executions would diverge and replays would lie.

``key`` is what a replay string names to find the program again (for example
``example=lost-update`` or ``design=upstream,mmu=x86-tdp,scenario=age-vs-zap``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from .machine import Machine


@dataclass(frozen=True)
class Program:
    key: str
    build_fn: Callable[[Machine], None]
    description: str = ""
    #: Steps after which one execution is cut off (and the verdict says it was bounded).
    max_steps: int = 10_000
    expect_violation: bool = field(default=False, compare=False)

    def build(self, trace: bool = False) -> Machine:
        m = Machine(trace=trace)
        self.build_fn(m)
        return m
