"""Shared test configuration: Hypothesis profiles and small helpers for model programs.

Profiles (select with ``HYPOTHESIS_PROFILE=...``):

- ``default``: no per-example deadline (exhaustive exploration of one generated program
  can take tens of milliseconds on a loaded machine), modest example counts so the fast
  suite stays well under a minute on two cores;
- ``thorough``: ten times more examples, for a local soak run.
"""

from __future__ import annotations

import os
from typing import Any, Callable

from hypothesis import HealthCheck, settings

from youngsim.sim import Machine, Program
from youngsim.sim.explore import run_schedule

settings.register_profile(
    "default", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile(
    "thorough", deadline=None, max_examples=1000,
    suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def program(build: Callable[[Machine], Any], key: str = "test/program",
            max_steps: int = 10_000) -> Program:
    """Wrap a build function into a Program."""
    return Program(key, build, max_steps=max_steps)


def run_default(build: Callable[[Machine], Any], schedule: list[int] | None = None
                ) -> Machine:
    """Build and run a program along ``schedule`` then the non-preemptive continuation."""
    m, _, _ = run_schedule(program(build), schedule or [])
    return m


def kind(m: Machine) -> str | None:
    """The violation kind of a finished machine (None if clean)."""
    return m.violation.kind if m.violation is not None else None
