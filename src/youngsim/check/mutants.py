"""Seeded bugs ("mutants"): plausible mistakes a patch author could make.

Each mutant is a named switch the model code tests with ``sys.bug(NAME)`` at the exact
place the mistake would be made, plus the design, MMU variant and scenario on which the
checker must catch it. ``youngsim mutants`` runs each and fails if any survives; a
surviving mutant means the checker (or a scenario) has a blind spot.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from ..sim import Program
from .runner import Outcome, SearchOptions, check
from .scenarios import program


@dataclass(frozen=True)
class Mutant:
    name: str
    description: str
    design: str
    mmu: str
    scenario: str
    where: str  # the model function that carries the bug
    bug: str = ""  # the sys.bug() switch, if it differs from the name (same bug, other MMU)

    @property
    def switch(self) -> str:
        return self.bug or self.name

    def program(self) -> Program:
        return program(self.design, self.mmu, self.scenario, mutant=self.switch)


MUTANTS: dict[str, Mutant] = {m.name: m for m in (
    Mutant("plain-store-clear",
           "lockless aging writes back the SPTE it read, minus A, with a plain store "
           "instead of an atomic AND", "upstream", "x86-tdp", "age-zap",
           "kernel/x86/tdp_mmu.py: TdpMmu._age_chunk"),
    Mutant("free-without-grace-period",
           "a zapped leaf table is freed at once instead of by call_rcu()",
           "upstream", "x86-tdp", "rmap", "kernel/x86/tdp_mmu.py: TdpMmu.zap_leaf_table"),
    Mutant("rcu-unlock-early",
           "the lockless walker leaves the RCU read section once it has found the leaf "
           "table, before its last SPTE access", "upstream", "x86-tdp", "rmap",
           "kernel/x86/tdp_mmu.py: TdpMmu.age_gfn_range"),
    Mutant("bitmap-offset-from-start",
           "yu-v2's kvm_should_clear_young counts the bitmap offset from the start of the "
           "range instead of the end", "yu-v2", "x86-tdp", "bitmap",
           "designs/yu_v2.py: kvm_should_clear_young"),
    Mutant("clear-ignores-predicate",
           "yu-v2's clear mode clears every young page, ignoring the bitmap predicate",
           "yu-v2", "x86-tdp", "bitmap", "designs/yu_v2.py: kvm_should_clear_young"),
    Mutant("fast-path-ignores-ad-off",
           "yu-v2's arch fast path runs although A/D bits are off at run time, instead of "
           "reporting failure", "yu-v2", "x86-tdp-noad", "fault-age",
           "designs/yu_v2.py: kvm_arch_test_clear_young"),
    Mutant("locked-fallback-forgets-lock",
           "the locked (batched) fallback runs the locked handlers without taking "
           "mmu_lock", "reviewed-locked", "x86-tdp", "age-zap",
           "kernel/kvm/kvm_main.py: __kvm_handle_hva_range"),
    Mutant("slow-path-returns-lockless",
           "yu-v2's slow path returns MMU_NOTIFIER_RANGE_LOCKLESS instead of _YOUNG",
           "yu-v2", "x86-tdp-noad", "rmap",
           "designs/yu_v2.py: kvm_mmu_notifier_test_clear_young"),
    Mutant("early-break-in-clear",
           "yu-v2's subscriber loop stops at the first young subscriber in clear mode too",
           "yu-v2", "x86-tdp", "two-vms",
           "designs/yu_v2.py: __mmu_notifier_test_clear_young"),
    Mutant("fault-skips-retry-check",
           "the fault path installs the SPTE without checking mmu_invalidate_retry()",
           "upstream", "x86-tdp", "fault-unmap",
           "kernel/x86/mmu.py: X86TdpMmu.kvm_mmu_page_fault"),
    Mutant("rmap-lockless-no-bitlock",
           "6.15's lockless rmap walk of the shadow MMU does not take the rmap bit lock",
           "upstream", "x86-shadow", "age-zap",
           "kernel/x86/shadow_mmu.py: X86ShadowMmu.age_gfn_range"),
    Mutant("age-forgets-young",
           "the TDP MMU's aging clears young SPTEs but reports young only when testing: "
           "the accessed information is dropped silently", "upstream", "x86-tdp",
           "fault-age", "kernel/x86/tdp_mmu.py: TdpMmu.age_gfn_range"),
    Mutant("arm64-free-without-grace-period",
           "arm64: an unlinked stage-2 table is freed at once instead of by call_rcu()",
           "yu-v2", "arm64", "rmap", "kernel/arm64/pgtable.py: table unlink",
           bug="free-without-grace-period"),
    Mutant("arm64-rcu-unlock-early",
           "arm64: the lockless AF walker leaves RCU before its last descriptor access",
           "yu-v2", "arm64", "rmap", "kernel/arm64/pgtable.py: lockless test_clear_young",
           bug="rcu-unlock-early"),
    Mutant("arm64-plain-store-clear",
           "arm64: the lockless AF clear writes back the descriptor it read with a plain "
           "store instead of a cmpxchg", "yu-v2", "arm64", "two-vms",
           "kernel/arm64/pgtable.py: lockless test_clear_young", bug="plain-store-clear"),
    Mutant("arm64-fast-path-ignores-swaf",
           "yu-v2's arm64 fast path runs without hardware AF instead of reporting failure",
           "yu-v2", "arm64-swaf", "fault-age", "designs/yu_v2.py: kvm_arch_test_clear_young",
           bug="fast-path-ignores-ad-off"),
)}

#: every sys.bug() switch (what a replay key may name)
SWITCHES = frozenset(m.switch for m in MUTANTS.values())


@dataclass
class MutantResult:
    mutant: Mutant
    caught: bool
    seconds: float
    outcome: Outcome | None
    error: str | None = None


def run_mutant(mut: Mutant, opts: SearchOptions | None = None) -> MutantResult:
    """Search for a violation with the mutant on; caught if one is found."""
    from .model import NotModelled

    t0 = time.perf_counter()
    try:
        out = check(mut.program(), opts or SearchOptions(), shrink_budget_s=10.0)
    except NotModelled as e:
        return MutantResult(mut, False, time.perf_counter() - t0, None, str(e))
    return MutantResult(mut, not out.ok, time.perf_counter() - t0, out)
