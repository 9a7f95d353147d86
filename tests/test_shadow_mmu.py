"""The x86 shadow MMU (``kernel/x86/shadow_mmu.py``): rmap + bit-lock semantics, the
correct designs clean on every scenario, and the seeded rmap-lock bug caught."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from youngsim.check.model import NotModelled, build_system, prepopulate
from youngsim.check.scenarios import SCENARIOS, program
from youngsim.kernel.hw.vcpu import guest_access
from youngsim.kernel.kvm.kvm_main import KvmGfnRange
from youngsim.kernel.x86 import spte as S
from youngsim.kernel.x86.mmu import X86TdpMmu
from youngsim.kernel.x86.shadow_mmu import KVM_RMAP_LOCKED, X86ShadowMmu
from youngsim.sim import Machine, nop, write_lock, write_unlock
from youngsim.sim import ops as O
from youngsim.sim.explore import systematic

MMU = "x86-shadow"
DESIGNS = ("legacy", "legacy-noflush", "upstream-6.12", "upstream", "yu-v2", "reviewed",
           "reviewed-locked")
MUTANT = "rmap-lockless-no-bitlock"


# -- interface -------------------------------------------------------------------------

def test_same_interface_as_tdp_mmu() -> None:
    for name, member in inspect.getmembers(X86TdpMmu):
        if name.startswith("_"):
            continue
        assert hasattr(X86ShadowMmu, name), name
        if inspect.isfunction(member):
            want = list(inspect.signature(member).parameters)
            got = list(inspect.signature(getattr(X86ShadowMmu, name)).parameters)
            assert got == want, name
    assert X86ShadowMmu.name == "x86-shadow"


# -- rmap add/remove and the bit lock, driven step by step -----------------------------

def _host(m: Machine, design: str, npages: int = 2) -> Any:
    sys = build_system(m, design, MMU, npages=npages, nvcpus=1)
    return sys, sys.kvms[0], sys.kvms[0].arch


def _run(m: Machine, tid: int, until: Any = None, limit: int = 200) -> None:
    """Step ``tid`` while it can run (and, with ``until``, until that holds)."""
    for _ in range(limit):
        if m.violation is not None or m.threads[tid].done or not m.enabled(tid):
            return
        if until is not None and until():
            return
        m.step(tid)
    raise AssertionError("thread did not stop")


def test_fault_adds_to_rmap_and_unmap_removes() -> None:
    m = Machine()
    sys, kvm, arch = _host(m, "upstream")
    seen: dict[str, Any] = {}

    def vcpu_then_unmap() -> Any:
        yield from guest_access(sys, kvm.vcpus[0], 0, True)
        seen["fault"] = (arch.rmap[0], arch.leaf_spte(0))
        yield write_lock(kvm.mmu_lock)
        r = KvmGfnRange(slot=kvm.memslots[0], start=0, end=2)
        flush = yield from arch.kvm_unmap_gfn_range(kvm, r)
        yield write_unlock(kvm.mmu_lock)
        seen["unmap"] = (flush, arch.rmap[0], arch.leaf_spte(0))

    t = m.spawn(vcpu_then_unmap, name="t")
    _run(m, t)
    assert m.violation is None, m.violation
    head, spte = seen["fault"]
    assert head and not head & KVM_RMAP_LOCKED
    sp, li = arch.sptep_deref(head)
    assert li == 0 and sp.name == "sp0" and not sp.freed
    assert S.is_shadow_present_pte(spte) and spte & S.shadow_accessed_mask
    assert spte & S.shadow_dirty_mask  # a write fault installs it dirty
    assert seen["unmap"] == (True, 0, 0)
    assert (arch.tables.installed_pfns() < 0).all()


def test_bitlock_makes_the_zapper_wait_for_a_lockless_ager() -> None:
    m = Machine()
    sys, kvm, arch = _host(m, "upstream")
    prepopulate(sys, 0)
    prepopulate(sys, 1)
    sptep0 = arch.rmap[0]
    held: dict[str, int] = {}

    def ager() -> Any:
        val = yield from arch.kvm_rmap_lock_readonly(0)
        held["val"] = val
        yield nop("ager holds the rmap")
        yield from arch.kvm_rmap_unlock_readonly(0, val)

    def zapper() -> Any:
        yield write_lock(kvm.mmu_lock)
        yield from arch.zap_leaf_table(kvm, 0)
        yield write_unlock(kvm.mmu_lock)

    a = m.spawn(ager, name="ager")
    z = m.spawn(zapper, name="zapper")
    _run(m, a, until=lambda: "val" in held)
    assert held["val"] == sptep0 and arch.rmap[0] == sptep0 | KVM_RMAP_LOCKED
    sp = arch.sptep_deref(sptep0)[0]
    _run(m, z)  # runs until it blocks on the rmap bit lock
    assert m.violation is None, m.violation
    op = m.threads[z].pending
    assert op is not None and op.kind == O.WAIT and op.obj is arch.rmap and op.lo == 0
    assert not sp.freed
    assert sp[0] == 0  # drop_spte: the SPTE is cleared before rmap_remove
    _run(m, a)
    assert m.threads[a].done and arch.rmap[0] == sptep0
    _run(m, z)
    assert m.violation is None, m.violation
    assert m.threads[z].done and sp.freed
    assert arch.rmap[0] == 0 and arch.rmap[1] == 0
    assert (arch.tables.installed_pfns() < 0).all()


def test_readonly_lock_of_empty_rmap_is_elided() -> None:
    m = Machine(trace=True)
    sys, kvm, arch = _host(m, "upstream")

    def ager() -> Any:
        val = yield from arch.kvm_rmap_lock_readonly(0)
        assert val == 0
        yield from arch.kvm_rmap_unlock_readonly(0, val)

    t = m.spawn(ager, name="ager")
    _run(m, t)
    assert m.threads[t].done and m.violation is None
    assert [s.op.kind for s in m.trace] == [O.LOAD]  # one read, no cmpxchg, no store


@pytest.mark.parametrize("design,locks", [("upstream", True), ("legacy", False)])
def test_writers_take_the_bitlock_only_in_6_15(design: str, locks: bool) -> None:
    m = Machine(trace=True)
    sys, kvm, arch = _host(m, design)
    prepopulate(sys, 0)
    sptep0 = arch.rmap[0]

    def writer() -> Any:
        yield write_lock(kvm.mmu_lock)
        yield from arch.pte_list_remove(kvm, 0, sptep0)
        yield from arch.pte_list_add(kvm, 0, sptep0)  # empty rmap: lock elided
        yield write_unlock(kvm.mmu_lock)

    t = m.spawn(writer, name="w")
    _run(m, t)
    assert m.violation is None, m.violation
    kinds = [s.op.kind for s in m.trace if s.op.obj is arch.rmap]
    if locks:
        assert kinds == [O.LOAD, O.CAS, O.STORE, O.LOAD, O.STORE]
        assert any(s.result == sptep0 and s.op.kind == O.CAS for s in m.trace)
    else:
        assert kinds == [O.LOAD, O.STORE, O.LOAD, O.STORE]
    assert arch.rmap[0] == sptep0


def test_pte_list_remove_of_wrong_sptep_is_a_bug() -> None:
    m = Machine()
    sys, kvm, arch = _host(m, "upstream")
    prepopulate(sys, 0)
    sptep0 = arch.rmap[0]

    def writer() -> Any:
        yield write_lock(kvm.mmu_lock)
        yield from arch.pte_list_remove(kvm, 0, sptep0 + 8)
        yield write_unlock(kvm.mmu_lock)

    t = m.spawn(writer, name="w")
    _run(m, t)
    assert m.violation is not None and m.violation.kind == "bug"
    assert not arch.rmap[0] & KVM_RMAP_LOCKED  # the bit lock was released first


def test_writer_without_mmu_lock_is_a_lockdep_violation() -> None:
    m = Machine()
    sys, kvm, arch = _host(m, "upstream")
    prepopulate(sys, 0)

    def writer() -> Any:
        yield from arch.pte_list_remove(kvm, 0, arch.rmap[0])

    t = m.spawn(writer, name="w")
    _run(m, t)
    assert m.violation is not None and m.violation.kind == "lockdep"


def test_lockless_aging_clears_a_and_keeps_d() -> None:
    m = Machine()
    sys, kvm, arch = _host(m, "upstream")
    prepopulate(sys, 0, write=True, young=True)
    prepopulate(sys, 1, write=False, young=False)
    out: dict[str, Any] = {}

    def ager() -> Any:
        r = KvmGfnRange(slot=kvm.memslots[0], start=0, end=2, lockless=True)
        out["test"] = yield from arch.kvm_test_age_gfn(kvm, r)
        out["age"] = yield from arch.kvm_age_gfn(kvm, r)
        out["again"] = yield from arch.kvm_age_gfn(kvm, r)

    t = m.spawn(ager, name="ager")
    _run(m, t)
    assert m.violation is None, m.violation
    assert out == {"test": True, "age": True, "again": False}
    s0 = arch.leaf_spte(0)
    assert s0 is not None and not s0 & S.shadow_accessed_mask and s0 & S.shadow_dirty_mask
    assert arch.rmap[0] and not arch.rmap[0] & KVM_RMAP_LOCKED


def test_lockless_fast_path_is_never_ok() -> None:
    m = Machine()
    _, _, arch = _host(m, "yu-v2")
    assert arch.lockless_fast_path_ok() is False


# -- the checker over the scenarios ----------------------------------------------------

def _check(design: str, scenario: str, bound: int, mutant: str | None = None) -> Any:
    try:
        return systematic(program(design, MMU, scenario, mutant=mutant),
                          preemption_bound=bound, time_limit=30)
    except NotModelled as e:  # pragma: no cover  (a design that does not apply)
        pytest.skip(str(e))


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
@pytest.mark.parametrize("design", DESIGNS)
def test_correct_designs_are_clean(design: str, scenario: str) -> None:
    r = _check(design, scenario, bound=1)
    assert r.violation is None, (r.violation, r.schedule)
    assert r.executions >= 1


@pytest.mark.parametrize("scenario", [
    "fault-age", "fault-unmap", "two-vms",
    pytest.param("age-zap", marks=pytest.mark.slow),  # ~5 s
    pytest.param("rmap", marks=pytest.mark.slow),  # ~7 s
])
def test_upstream_lockless_rmap_clean_with_two_preemptions(scenario: str) -> None:
    r = _check("upstream", scenario, bound=2)
    assert r.violation is None, (r.violation, r.schedule)


@pytest.mark.parametrize("scenario", ["age-zap", "rmap"])
def test_mutant_no_bitlock_is_caught(scenario: str) -> None:
    r = _check("upstream", scenario, bound=1, mutant=MUTANT)
    assert r.violation is not None
    assert r.violation.kind in ("use-after-free", "spte-lost-update"), r.violation


def test_rmap_coherence_final_check_has_teeth(monkeypatch: pytest.MonkeyPatch) -> None:
    """A zap that forgets ``rmap_remove`` leaves an rmap naming a freed shadow page."""
    def forgetful_remove(self: X86ShadowMmu, kvm: Any, gfn: int, sptep: int) -> Any:
        return
        yield  # pragma: no cover

    monkeypatch.setattr(X86ShadowMmu, "pte_list_remove", forgetful_remove)
    m = Machine()
    sys, kvm, arch = _host(m, "legacy")
    prepopulate(sys, 0)

    def zapper() -> Any:
        yield write_lock(kvm.mmu_lock)
        yield from arch.zap_leaf_table(kvm, 0)
        yield write_unlock(kvm.mmu_lock)

    t = m.spawn(zapper, name="zapper")
    _run(m, t)
    assert m.violation is not None and "rmap-coherence" in m.violation.kind
    assert "freed sp0" in m.violation.message
