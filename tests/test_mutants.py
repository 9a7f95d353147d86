"""Every seeded bug on the x86 TDP MMU is caught by the checker, with the kind of
violation its mistake should produce; its replay string reproduces the violation through
the CLI; and the correct design on the same scenario is clean.

The expected kind is written down per mutant here, independently of the mutant table,
so a mutant caught "for the wrong reason" (say an exception instead of the invariant it
was meant to break) fails.
"""

from __future__ import annotations

import pytest

from youngsim.check.mutants import MUTANTS, run_mutant
from youngsim.check.scenarios import SCENARIOS, program
from youngsim.cli import main
from youngsim.sim.explore import run_schedule, systematic
from youngsim.sim.schedule import parse_replay

X86 = ("x86-tdp", "x86-tdp-noad")

#: mutant -> violation kinds that mean "caught for the right reason"
SPTE_INVARIANTS = {"spte-lost-update", "spte-dirty-lost", "spte-coherence"}
EXPECTED: dict[str, set[str]] = {
    "plain-store-clear": SPTE_INVARIANTS,
    "free-without-grace-period": {"use-after-free"},
    "rcu-unlock-early": {"use-after-free"},
    "bitmap-offset-from-start": {"api-contract"},
    "clear-ignores-predicate": {"api-contract"},
    "fast-path-ignores-ad-off": {"api-contract"},
    "slow-path-returns-lockless": {"api-contract"},
    "early-break-in-clear": {"api-contract"},
    "locked-fallback-forgets-lock": {"lockdep"},
    "fault-skips-retry-check": {"spte-coherence"},
    "age-forgets-young": {"api-contract"},
}

X86_MUTANTS = sorted(n for n, mu in MUTANTS.items() if mu.mmu in X86)


def test_every_x86_mutant_has_an_expected_kind():
    assert X86_MUTANTS, "no x86 TDP mutants left"
    assert set(X86_MUTANTS) == set(EXPECTED)


@pytest.mark.parametrize("name", X86_MUTANTS)
def test_mutant_table_entry_is_well_formed(name):
    mu = MUTANTS[name]
    assert mu.name == name and mu.description and mu.where
    assert mu.scenario in SCENARIOS
    p = mu.program()
    assert p.key == f"model/{mu.design}/{mu.mmu}/{mu.scenario}/{name}"
    assert program(mu.design, mu.mmu, mu.scenario).key == p.key.rsplit("/", 1)[0]


@pytest.mark.parametrize("name", X86_MUTANTS)
def test_mutant_is_caught_with_the_expected_kind_and_replays(name, capsys):
    mu = MUTANTS[name]
    r = run_mutant(mu)
    assert r.error is None
    assert r.caught, f"{name} survived: {r.outcome.result.guarantee if r.outcome else ''}"
    v = r.outcome.result.violation
    assert v.kind in EXPECTED[name], f"{name} caught as {v}"
    s = r.outcome.replay
    key, schedule, _ = parse_replay(s)
    assert key == mu.program().key
    # the replay string alone reproduces it, in-process ...
    m, _, _ = run_schedule(mu.program(), schedule)
    assert m.violation is not None and m.violation.kind == v.kind
    # ... and through the CLI: exit 1, the violation printed
    capsys.readouterr()
    assert main(["replay", s]) == 1
    out = capsys.readouterr().out
    assert f"VIOLATION {v.kind}:" in out
    assert out.startswith(f"{key}: ")
    # the same schedule on the correct design is clean: the violation is the seeded
    # bug's, not the scenario's
    m, _, _ = run_schedule(program(mu.design, mu.mmu, mu.scenario), schedule)
    assert m.violation is None, m.violation


def _correct_cases() -> list[tuple[str, str, str]]:
    return sorted({(MUTANTS[n].design, MUTANTS[n].mmu, MUTANTS[n].scenario)
                   for n in X86_MUTANTS})


@pytest.mark.parametrize("design,mmu,scenario", _correct_cases())
def test_correct_design_is_clean_within_one_preemption(design, mmu, scenario):
    res = systematic(program(design, mmu, scenario), preemption_bound=1)
    assert res.violation is None, f"{res.violation} ({res.guarantee})"
    assert res.executions >= 1 and not res.exhausted
