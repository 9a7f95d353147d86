"""arm64 stage 2 (``kernel/arm64``): both MMU variants under every correct design, the
two ways the access flag gets set, and seeded bugs that the checker must catch."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from youngsim.check.model import build_system, prepopulate
from youngsim.check.scenarios import SCENARIOS, program, vcpu_thread
from youngsim.kernel.arm64 import pgtable as P
from youngsim.sim import Machine, Program, vstore
from youngsim.sim.explore import run_schedule, systematic

ARM64 = ("arm64", "arm64-swaf")
CORRECT = ("legacy", "upstream-6.12", "upstream", "yu-v2", "reviewed")
#: the invariants a stale write-back of a stage-2 descriptor breaks
STALE_WRITEBACK = {"spte-lost-update", "spte-dirty-lost", "spte-coherence"}


def _kind(r: Any) -> str | None:
    return r.violation.kind if r.violation is not None else None


# -- correct designs are clean ----------------------------------------------------------

#: every scenario but those modelled for the TDP MMU only
ARM64_SCENARIOS = [sc for sc in SCENARIOS if sc != "age-wrprot"]


def test_tdp_only_scenario_says_not_modelled():
    from youngsim.check.model import NotModelled

    with pytest.raises(NotModelled, match="TDP MMU only"):
        program("upstream", "arm64", "age-wrprot").build()

@pytest.mark.parametrize("mmu", ARM64)
@pytest.mark.parametrize("design", CORRECT)
def test_correct_designs_clean_bound1(design, mmu):
    for sc in ARM64_SCENARIOS:
        r = systematic(program(design, mmu, sc), preemption_bound=1, time_limit=20)
        assert r.ok, f"{design}/{mmu}/{sc}: {r.violation}"
        assert r.executions > 0


@pytest.mark.slow
@pytest.mark.parametrize("mmu", ARM64)
@pytest.mark.parametrize("design", CORRECT)
def test_correct_designs_clean_bound2_full(design, mmu):
    """The whole matrix at bound 2 (about a minute on two cores): ``-m slow``."""
    for sc in ARM64_SCENARIOS:
        r = systematic(program(design, mmu, sc), preemption_bound=2, time_limit=120)
        assert r.ok, f"{design}/{mmu}/{sc}: {r.violation}"


@pytest.mark.parametrize("design,mmu,sc", [
    ("yu-v2", "arm64", "fault-age"), ("yu-v2", "arm64", "two-vms"),
    ("reviewed", "arm64", "fault-age"), ("reviewed", "arm64", "two-vms"),
    ("upstream", "arm64", "two-vms"), ("yu-v2", "arm64", "fault-unmap"),
    ("yu-v2", "arm64-swaf", "two-vms"), ("upstream", "arm64-swaf", "fault-age"),
])
def test_selected_cells_clean_bound2(design, mmu, sc):
    if sc not in SCENARIOS:
        pytest.skip(f"scenario {sc} not present")
    r = systematic(program(design, mmu, sc), preemption_bound=2, time_limit=20)
    assert r.ok, f"{design}/{mmu}/{sc}: {r.violation}"


def test_paths_taken():
    """yu-v2 and reviewed age locklessly (cmpxchg, no mmu_lock) only with hardware AF;
    upstream takes the write lock on both variants."""
    def steps(design: str, mmu: str, sc: str) -> list[str]:
        m, _, _ = run_schedule(program(design, mmu, sc), [], trace=True)
        assert m.violation is None
        return [f"{s.loc.split(':')[0]}:{s.op.describe()}" for s in m.trace]

    for design in ("yu-v2", "reviewed"):
        hw = steps(design, "arm64", "two-vms")
        assert not any("write_lock(kvm" in s for s in hw), design
        assert any("pgtable.py:cas" in s for s in hw), design
    # swaf: reviewed takes the lock once per call; yu-v2 bails out of bitmap calls and
    # falls back to the locked slow path for clear_young (no bitmap) from look-around
    assert any("write_lock(kvm" in s for s in steps("reviewed", "arm64-swaf", "two-vms"))
    assert not any("mmu_lock" in s for s in steps("yu-v2", "arm64-swaf", "bitmap"))
    assert any("write_lock(kvm" in s for s in steps("yu-v2", "arm64-swaf", "rmap"))
    for mmu in ARM64:
        assert any("write_lock(kvm" in s for s in steps("upstream", mmu, "two-vms"))


# -- how the access flag gets set -----------------------------------------------------

def _run_single(mmu: str, body: Any, young: bool, write: bool = False,
                clear_bits: int = 0) -> tuple[Machine, Any, list[Any]]:
    """One VM, one page prepopulated (after a read fault unless ``write``; young or
    not; minus ``clear_bits``), one thread running ``body(sys, out)``; returns the
    finished machine, the arch and ``out``."""
    out: list[Any] = []
    holder: dict[str, Any] = {}

    def build(m: Machine) -> None:
        sys = build_system(m, "upstream", mmu, npages=1, nvcpus=1)
        prepopulate(sys, 0, write=write, young=young)
        pgt = sys.kvms[0].arch.pgt
        pgt.child(pgt.root[0])[0] = pgt.child(pgt.root[0])[0] & ~clear_bits
        holder["sys"] = sys
        m.spawn(body, sys, out, name="probe")

    m, _, _ = run_schedule(Program(f"test/arm64/{mmu}", build), [], trace=True)
    assert m.violation is None, m.violation
    return m, holder["sys"].kvms[0].arch, out


def test_swaf_access_flag_fault_sets_af():
    def body(sys: Any, out: list[Any]) -> Any:
        arch = sys.kvms[0].arch
        vcpu = sys.kvms[0].vcpus[0]
        out.append((yield from arch.pgt.hw_walk(0, False)))  # what the hardware reports
        ok = yield from arch.hw_walk(vcpu, 0, False)  # records ESR for the handler
        out.append(ok)
        yield from arch.kvm_mmu_page_fault(vcpu, 0, False)
        out.append((yield from arch.pgt.hw_walk(0, False)))

    m, arch, out = _run_single("arm64-swaf", body, young=False)
    before = out[0]
    assert before == (False, P.ESR_ELx_FSC_ACCESS)
    assert out[1] is False
    assert out[2] == (True, 0)
    d = arch.leaf_spte(0)
    assert d & P.AF and d & P.KVM_PTE_VALID and not d & P.DBM
    assert d & P.S2AP_W  # without HD KVM maps a host-writable page writable at once
    assert P.kvm_pte_to_pfn(d) == arch.tables.installed_pfn(0)
    # fixed by handle_access_fault: read lock and a cmpxchg, not user_mem_abort
    ops = [s.op.describe() for s in m.trace]
    assert "read_lock(kvm->mmu_lock)" in ops and "write_lock(kvm->mmu_lock)" not in ops
    assert any(o.startswith("cas(s2pt0[0]") for o in ops)
    assert not any("mmu_invalidate" in o for o in ops)


def test_swaf_guest_access_takes_one_af_fault():
    def body(sys: Any, out: list[Any]) -> Any:
        yield from vcpu_thread(sys, 0, 0, [(0, False), (0, False)])

    m, arch, _ = _run_single("arm64-swaf", body, young=False)
    assert m.counters.get("vcpu_faults") == 1  # the second access hits the TLB
    assert arch.leaf_spte(0) & P.AF


def test_swaf_write_protected_takes_permission_fault_and_dirties():
    """A write-protected descriptor (as dirty logging leaves it; built directly here):
    a write takes a permission fault, fixed by relax_perms under the read lock."""
    def body(sys: Any, out: list[Any]) -> Any:
        arch = sys.kvms[0].arch
        out.append((yield from arch.pgt.hw_walk(0, True)))
        sys.kvms[0].arch.tables.ghost_dirty[0] = False  # the set-up removed the write permission
        yield from vcpu_thread(sys, 0, 0, [(0, True)])

    m, arch, out = _run_single("arm64-swaf", body, young=True, clear_bits=P.S2AP_W)
    assert out[0] == (False, P.ESR_ELx_FSC_PERM)
    assert m.counters.get("vcpu_faults") == 1
    assert arch.leaf_spte(0) & P.S2AP_W and arch.tables.ghost_dirty[0]
    ops = [s.op.describe() for s in m.trace]
    assert "read_lock(kvm->mmu_lock)" in ops and "write_lock(kvm->mmu_lock)" not in ops


def test_read_fault_install_per_variant():
    """A read fault installs writable-clean (DBM) with HAFDBS, writable (dirty) without."""
    def body(sys: Any, out: list[Any]) -> Any:
        yield from vcpu_thread(sys, 0, 0, [(0, False)])

    def build_for(mmu: str) -> tuple[Machine, Any]:
        holder: dict[str, Any] = {}

        def build(m: Machine) -> None:
            sys = build_system(m, "upstream", mmu, npages=1, nvcpus=1)
            holder["sys"] = sys
            m.spawn(body, sys, [], name="probe")

        m, _, _ = run_schedule(Program(f"test/arm64/fault/{mmu}", build), [])
        assert m.violation is None, m.violation
        return m, holder["sys"].kvms[0].arch

    m, arch = build_for("arm64")
    d = arch.leaf_spte(0)
    assert m.counters.get("vcpu_faults") == 1
    assert d & P.DBM and d & P.AF and not d & P.S2AP_W and not arch.tables.ghost_dirty[0]
    m, arch = build_for("arm64-swaf")
    d = arch.leaf_spte(0)
    assert m.counters.get("vcpu_faults") == 1
    assert not d & P.DBM and d & P.AF and d & P.S2AP_W and arch.tables.ghost_dirty[0]


def test_hw_af_set_on_tlb_miss_without_fault():
    def body(sys: Any, out: list[Any]) -> Any:
        arch = sys.kvms[0].arch
        out.append(arch.leaf_spte(0))
        yield from vcpu_thread(sys, 0, 0, [(0, False)])
        out.append(arch.leaf_spte(0))
        yield from vcpu_thread(sys, 0, 0, [(0, True)])  # TLB holds a read translation
        out.append(arch.leaf_spte(0))

    m, arch, out = _run_single("arm64", body, young=False)
    assert "vcpu_faults" not in m.counters
    assert not out[0] & P.AF and out[0] & P.DBM and not out[0] & P.S2AP_W
    assert out[1] == out[0] | P.AF  # the walker set AF, nothing else
    assert out[2] == out[1] | P.S2AP_W  # DBM: writable-clean -> writable-dirty
    assert arch.tables.ghost_dirty[0]
    assert any(s.op.describe().startswith("cas(s2pt0[0]") and s.loc.startswith(
        "kernel/arm64/pgtable.py") for s in m.trace)


def test_hw_af_tlb_hit_sets_nothing():
    def body(sys: Any, out: list[Any]) -> Any:
        arch = sys.kvms[0].arch
        yield from vcpu_thread(sys, 0, 0, [(0, False)])
        sys.kvms[0].arch.pgt.child(arch.pgt.root[0])[0] = arch.leaf_spte(0) & ~P.AF
        yield from vcpu_thread(sys, 0, 0, [(0, False)])
        out.append(arch.leaf_spte(0))

    m, arch, out = _run_single("arm64", body, young=True)
    assert not out[0] & P.AF and m.counters.get("tlb_hits") == 1


# -- seeded bugs ----------------------------------------------------------------------

def _plain_store_clear(self: Any, table: Any, lo: int, vals: np.ndarray,
                       sel: np.ndarray, first: int) -> Any:
    """The bug: write back the descriptor read earlier, minus AF (no cmpxchg)."""
    yield vstore(table, lo, vals & np.uint64(~P.AF & P.MASK), select=sel,
                 cost="spte_write")


@pytest.mark.parametrize("design", ["yu-v2", "reviewed"])
def test_lockless_plain_store_clear_is_caught(design, monkeypatch):
    monkeypatch.setattr(P.Stage2Pgtable, "_lockless_clear", _plain_store_clear)
    # a vCPU writes while the walk ages and a zapper unmaps and unlinks
    r = systematic(program(design, "arm64", "age-zap"), preemption_bound=2, time_limit=20)
    assert _kind(r) in STALE_WRITEBACK, r.violation
    m, _, _ = run_schedule(program(design, "arm64", "age-zap"), r.schedule)
    assert m.violation is not None and m.violation.kind == r.violation.kind
    # a vCPU write racing the lockless clear: the hardware's dirty update is lost
    r = systematic(program(design, "arm64", "two-vms"), preemption_bound=2, time_limit=20)
    assert _kind(r) == "spte-dirty-lost", r.violation


def test_lockless_plain_store_needs_a_preemption(monkeypatch):
    """The bug is a race: without preemptions the plain store looks fine."""
    monkeypatch.setattr(P.Stage2Pgtable, "_lockless_clear", _plain_store_clear)
    m, _, _ = run_schedule(program("yu-v2", "arm64", "age-zap"), [])
    assert m.violation is None


def test_kernel_literal_locked_write_once_loses_dbm_dirty(monkeypatch):
    """The kernel's write-locked ``stage2_age_walker`` clears AF with ``WRITE_ONCE`` (a
    non-shared ``stage2_try_set_pte``). Safe with HA alone; with DBM (HD) modelled, a
    hardware dirty update between its read and its store is lost. The model therefore
    uses a cmpxchg there when the hardware manages bits."""
    monkeypatch.setattr(P.Stage2Pgtable, "_locked_clear", _plain_store_clear)
    r = systematic(program("upstream", "arm64", "two-vms"), preemption_bound=2,
                   time_limit=20)
    assert _kind(r) == "spte-dirty-lost", r.violation
    # without hardware-managed bits the same store is what the model (and kernel) does
    r = systematic(program("upstream", "arm64-swaf", "two-vms"), preemption_bound=2,
                   time_limit=20)
    assert r.ok, r.violation


@pytest.mark.parametrize("mutant,mmu,expect", [
    ("free-without-grace-period", "arm64", "use-after-free"),
    ("rcu-unlock-early", "arm64", "use-after-free"),
    ("fast-path-ignores-ad-off", "arm64-swaf", "api-contract"),
])
def test_shared_mutants_apply_to_arm64(mutant, mmu, expect):
    r = systematic(program("yu-v2", mmu, "age-zap", mutant=mutant), preemption_bound=2,
                   time_limit=20)
    assert _kind(r) == expect, r.violation
