"""``max_guest_memory_test`` on the timed driver, under host memory pressure.

The kernel selftest (``tools/testing/selftests/kvm/max_guest_memory_test``) as the 2023
series ran it (spec section 5): ``-c`` vCPUs split ``-m`` of guest memory, mapped in
memslots of ``-s`` each; every vCPU writes one word per 4 KiB page of its share
("run1"), each vCPU's MMU context is reset ("reset"), and the vCPUs write again
("run2"); the tool prints ``run1 = ..s, reset = ..s, run2 = ..s``. The figures the
series published come from a host with less free memory than the guest touches, so the
runs happen under reclaim; here the host's memory is ``--host-mem`` (default 3/4 of the
guest), nothing is prefaulted, and:

- the vCPUs run ``hw.vcpu.guest_access`` (an EPT violation -> ``kvm_faultin_pfn`` ->
  ``handle_mm_fault``, which takes a frame from the zone, waking kswapd below the low
  watermark and, at the min watermark, reclaiming a batch itself (direct reclaim, the
  same ``shrink_node`` as kswapd's; ``--no-direct-reclaim`` turns it off), and reads the
  page back from swap if it was evicted);
- kswapd (``kernel/mm/reclaim.py``) ages with the design's callers (``walk_mm`` ->
  ``walk_pte_range``; ``folio_referenced`` with look-around during eviction), unmaps the
  pages it evicts (the mmu_notifier invalidation zaps the secondary MMU's entry) and
  writes them to a swap device with the cost model's latency and bandwidth;
- ``lru="classic"`` (``--lru classic``) runs with MGLRU off: the core bit of
  ``lru_gen/enabled`` is cleared before reclaim is enabled, so reclaim uses the classic
  active/inactive lists (``kernel/mm/lru_classic.py``) and every design's rmap path is
  ``folio_referenced_one``'s classic branch (no look-around, no page-table walk);
- "reset" is ``kvm_mmu_reset_context`` per vCPU: a fixed cost and an empty TLB (the TDP
  root is kept, so the secondary MMU's entries survive; what run2 refaults is what
  reclaim evicted).

Synchronisation, time stamps and the harness's zero-cost labels are as in
``access_tracking.py``; the SPTE invariants are evaluated at each step boundary.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Generator, Sequence

import numpy as np

from ..check.model import build_system
from ..kernel.hw.vcpu import guest_access
from ..kernel.mm.page_alloc import KSWAPD, KSWAPD_STOP, KSWAPD_WAKE, SWAP_CLUSTER_MAX
from ..kernel.mm.lru_classic import LRU_ACTIVE_ANON, LRU_INACTIVE_ANON, ClassicLruvec
from ..kernel.mm.reclaim import enable_reclaim, kswapd
from ..kernel.mm.vmscan import LRU_GEN_CORE
from ..kernel.system import PAGE_SIZE
from ..sim import Machine, Op, fetch_add, fetch_or, store, vstore, wait_until
from ..sim.costmodel import CostModel
from ..sim.timed import TimedResult
from .harness import (Check, ConfigError, ScenarioResult, common_figures, drive, fmt_s, fmt_size,
                      invariant_checks, prepare_run, render_common, run_checks, seconds,
                      spawn_vcpus, stamp, stamps, validate_design_mmu)

Gen = Generator[Op, Any, Any]

SCENARIO = "max_guest_memory_test"
#: refuse runs with more guest pages than this (every page is simulated)
MAX_TOTAL_PAGES = 65536
DEFAULT_GUEST_BYTES = 32 << 20
DEFAULT_VCPUS = 4
#: default host memory as a fraction of the guest's (youngsim's knob: the kernel tool
#: runs on whatever the host has)
DEFAULT_HOST_FRACTION = 0.75
_ALL = (1 << 64) - 1

STEPS: tuple[str, ...] = ("run1", "reset", "run2")
#: ``--lru``: the multi-gen LRU (the kernel's default where built) or the classic
#: active/inactive LRU ("MGLRU off": lru_gen/enabled without its core bit)
LRUS: tuple[str, ...] = ("mglru", "classic")


@dataclass(frozen=True)
class Config:
    design: str
    mmu: str
    vcpus: int = DEFAULT_VCPUS  # -c
    guest_bytes: int = DEFAULT_GUEST_BYTES  # -m
    slot_bytes: int | None = None  # -s (default: one slot)
    host_bytes: int | None = None  # --host-mem (default: 3/4 of the guest)
    seed: int = 0
    profile_period_ns: int = 0
    #: allocations at the min watermark reclaim by themselves (the kernel's behaviour;
    #: off: only kswapd reclaims and such allocations sleep until it frees frames)
    direct_reclaim: bool = True
    #: which LRU reclaim uses: ``"mglru"`` or ``"classic"`` (MGLRU off)
    lru: str = "mglru"

    @property
    def total_pages(self) -> int:
        return self.guest_bytes // PAGE_SIZE

    @property
    def slot_pages(self) -> int:
        return (self.slot_bytes or self.guest_bytes) // PAGE_SIZE

    @property
    def host_pages(self) -> int:
        if self.host_bytes is not None:
            return self.host_bytes // PAGE_SIZE
        return int(self.total_pages * DEFAULT_HOST_FRACTION)

    def validate(self) -> None:
        """Raise ``ConfigError`` with a one-line reason."""
        validate_design_mmu(self.design, self.mmu)
        if self.lru not in LRUS:
            raise ConfigError(f"unknown LRU {self.lru!r} for --lru (known: {', '.join(LRUS)})")
        if self.vcpus < 1:
            raise ConfigError(f"-c must be at least 1, got {self.vcpus}")
        for opt, v in (("-m", self.guest_bytes), ("-s", self.slot_bytes),
                       ("--host-mem", self.host_bytes)):
            if v is not None and (v < PAGE_SIZE or v % PAGE_SIZE):
                raise ConfigError(f"{opt} must be a positive multiple of the 4 KiB page "
                                  f"size, got {v} bytes")
        if self.total_pages < self.vcpus:
            raise ConfigError(f"-m gives {self.total_pages} pages for {self.vcpus} vCPUs: "
                              "at least one page per vCPU")
        if self.total_pages > MAX_TOTAL_PAGES:
            raise ConfigError(
                f"-m {self.guest_bytes} bytes is {self.total_pages} pages, above this "
                f"build's cap of {MAX_TOTAL_PAGES} pages ({MAX_TOTAL_PAGES * PAGE_SIZE >> 20}"
                " MiB): every page is simulated one operation at a time")
        if self.slot_bytes is not None and self.slot_bytes > self.guest_bytes:
            raise ConfigError(f"-s {self.slot_bytes} bytes is larger than -m "
                              f"{self.guest_bytes} bytes")
        if self.host_pages < 8 * SWAP_CLUSTER_MAX:
            given = "--host-mem" if self.host_bytes is not None else \
                "the default host memory (3/4 of -m)"
            raise ConfigError(f"{given} gives {self.host_pages} frames; the model needs "
                              f"at least {8 * SWAP_CLUSTER_MAX} (watermarks and batches)")


class _Harness:
    """The selftest's threads for one run: vCPUs, its main thread, and kswapd."""

    def __init__(self, m: Machine, cfg: Config) -> None:
        self.m = m
        self.cfg = cfg
        self.sys = build_system(m, cfg.design, cfg.mmu, npages=cfg.total_pages,
                                nvcpus=cfg.vcpus, prefault_primary=False,
                                slot_pages=cfg.slot_pages)
        if cfg.lru == "classic":  # echo 0 > /sys/kernel/mm/lru_gen/enabled (core bit off)
            self.sys.lru_gen_enabled &= ~LRU_GEN_CORE
        enable_reclaim(self.sys, cfg.host_pages, direct_reclaim=cfg.direct_reclaim)
        self.invariants = list(m.invariants)
        m.invariants.clear()
        m.watches.clear()
        self.ctl = m.new_words("perf.ctl", 1 + len(STEPS))  # [0] go, [1 + k] done
        self.checks: list[Check] = []

    def share(self, i: int) -> tuple[int, int]:
        """vCPU ``i``'s pages: the guest memory split evenly, the rest to the last."""
        n, c = self.cfg.total_pages, self.cfg.vcpus
        per = n // c
        return i * per, (n if i == c - 1 else (i + 1) * per)

    def check_invariants(self, where: str) -> None:
        self.checks += invariant_checks(self.m, self.invariants, where)

    def vcpu(self, i: int) -> Gen:
        sys = self.sys
        vcpu = sys.kvms[0].vcpus[i]
        lo, hi = self.share(i)
        for k, step in enumerate(STEPS):
            yield wait_until(self.ctl, 0, _ALL, k + 1, cost="perf_wait_kick")
            if step == "reset":
                yield vstore(vcpu.tlb, 0, np.zeros(len(vcpu.tlb), dtype=np.uint64),
                             cost="kvm_mmu_reset_context")
            else:
                for g in range(lo, hi):
                    yield from guest_access(sys, vcpu, g, True)
            yield from stamp(f"end:{k}:{i}")
            yield fetch_add(self.ctl, 1 + k, 1, cost="perf_vcpu_done")

    def main(self) -> Gen:
        for k, step in enumerate(STEPS):
            yield from stamp(f"kick:{k}")
            yield store(self.ctl, 0, k + 1, cost="perf_kick")
            yield wait_until(self.ctl, 1 + k, _ALL, self.cfg.vcpus, cost="perf_wait_vcpus")
            self.check_invariants(f"after {step}")
        zone = self.sys.mm.zone
        yield fetch_or(zone.ctl, KSWAPD, KSWAPD_WAKE | KSWAPD_STOP, cost="perf_stop")


@dataclass
class MgmResult(ScenarioResult):
    config: Config
    cost_model: str
    steps: dict[str, int]
    checks: list[Check]
    timed: TimedResult
    data: dict[str, Any] = field(default_factory=dict)
    samples: dict[str, Sequence[int]] = field(default_factory=dict)

    def render(self) -> str:
        return render(self)


def run_max_guest_memory(cfg: Config, cost_model: CostModel | None = None) -> MgmResult:
    """Build and run the scenario; ``cost_model`` defaults to ``perf_cost_model()``."""
    cm, m = prepare_run(cfg, cost_model)
    h = _Harness(m, cfg)
    roles = spawn_vcpus(m, h.vcpu, cfg.vcpus)
    roles[m.spawn(h.main, name="main")] = "harness"
    roles[m.spawn(kswapd, h.sys, name="kswapd0")] = "kswapd"
    r = drive(m, cm, roles, cfg)
    at = stamps(r)
    steps: dict[str, int] = {}
    for k, step in enumerate(STEPS):
        kick = at.get(f"kick:{k}")
        ends = [at.get(f"end:{k}:{i}") for i in range(cfg.vcpus)]
        if kick is None or any(e is None for e in ends):
            break
        steps[step] = max(e for e in ends if e is not None) - kick
    checks = list(h.checks) + run_checks(r, len(steps), len(STEPS))
    res = MgmResult(cfg, r.cost_model, steps, checks, r,
                    samples=dict(h.sys.samples))
    res.data = _to_dict(res, h)
    return res


def _to_dict(res: MgmResult, h: _Harness) -> dict[str, Any]:
    cfg, r = res.config, res.timed
    mm = h.sys.mm
    out: dict[str, Any] = {
        "scenario": SCENARIO,
        "config": {"design": cfg.design, "mmu": cfg.mmu, "vcpus": cfg.vcpus,
                   "guest_bytes": cfg.guest_bytes, "slot_bytes": cfg.slot_pages * PAGE_SIZE,
                   "host_bytes": cfg.host_pages * PAGE_SIZE, "total_pages": cfg.total_pages,
                   "host_pages": cfg.host_pages, "direct_reclaim": cfg.direct_reclaim,
                   "lru": cfg.lru, "seed": cfg.seed},
        "scale_note": (f"small scale: {cfg.total_pages} guest pages on {cfg.host_pages} host "
                       f"frames, simulated one operation at a time (cap {MAX_TOTAL_PAGES}); "
                       "figures come from the cost model, not from hardware"),
        "cost_model": res.cost_model,
        "ok": res.ok,
        "stopped": r.stopped,
        "violation": (None if r.violation is None
                      else {"kind": r.violation.kind, "message": r.violation.message}),
        "checks": [c.to_dict() for c in res.checks],
    }
    for step in STEPS:
        ns = res.steps.get(step)
        out[f"{step}_ns"] = ns
        out[f"{step}_s"] = None if ns is None else seconds(ns)
    out["reclaim"] = {
        "watermarks": {"min": mm.zone.wmark_min, "low": mm.zone.wmark_low,
                       "high": mm.zone.wmark_high},
        "free_at_end": mm.zone.nr_free_now(),
        "direct_reclaims": r.counters.get("direct_reclaim", 0),
        "swap_writes": mm.swap.writes, "swap_reads": mm.swap.reads,
        "swap_slots_in_use_at_end": mm.swap.in_use,
    }
    if isinstance(mm.lru, ClassicLruvec):
        out["reclaim"]["lru_classic"] = dict(mm.lru.stats)
        out["reclaim"]["lru_lists_at_end"] = {
            lru: mm.lru.lruvec_lru_size(lru) for lru in (LRU_INACTIVE_ANON, LRU_ACTIVE_ANON)}
    else:
        out["reclaim"]["lru_gen"] = dict(mm.lru.stats)
        out["reclaim"]["lru_gen_seq"] = {"min": mm.lru.min_seq, "max": mm.lru.max_seq}
    out.update(common_figures(r, res.samples))
    return out


def render(res: MgmResult) -> str:
    """The tool's result line, then checks and a short summary."""
    cfg, r, d = res.config, res.timed, res.data
    out = [(f"{SCENARIO} (youngsim, timed model): design {cfg.design}, mmu {cfg.mmu}, "
            f"lru {cfg.lru}{' (MGLRU off)' if cfg.lru == 'classic' else ''}, "
            f"-c {cfg.vcpus} -m {fmt_size(cfg.guest_bytes)} -s "
            f"{fmt_size(cfg.slot_pages * PAGE_SIZE)}, host memory "
            f"{fmt_size(cfg.host_pages * PAGE_SIZE)} ({cfg.total_pages} guest pages, "
            f"{cfg.host_pages} host frames"
            f"{'' if cfg.direct_reclaim else ', no direct reclaim'})"),
           (f"virtual times from {res.cost_model} at this small scale (cap "
            f"{MAX_TOTAL_PAGES} pages); not hardware measurements")]
    if len(res.steps) == len(STEPS):
        out.append(f"run1 = {fmt_s(res.steps['run1'])}, reset = {fmt_s(res.steps['reset'])}"
                   f", run2 = {fmt_s(res.steps['run2'])}")
    else:
        out.append("run1/reset/run2: n/a (the run stopped early)")
    rc = d["reclaim"]
    if "lru_classic" in rc:
        lc, ls = rc["lru_classic"], rc["lru_lists_at_end"]
        out.append(f"reclaim: {lc['evicted']} pages evicted, {rc['swap_reads']} swapped back "
                   f"in, {lc['activated']} activated and {lc['kept']} kept on the inactive "
                   f"list as referenced, {lc['deactivated']} deactivated from the active "
                   f"list, {lc['refault_activated']} of {lc['refaults']} refaults activated "
                   f"(refault distance), {rc['direct_reclaims']} direct reclaims by faulting "
                   f"vCPUs; at the "
                   f"end {ls[LRU_INACTIVE_ANON]} inactive, {ls[LRU_ACTIVE_ANON]} active")
    else:
        lg = rc["lru_gen"]
        out.append(f"reclaim: {lg['evicted']} pages evicted, {rc['swap_reads']} swapped back "
                   f"in, {lg['activated']} kept as referenced, {lg['aging_passes']} aging "
                   f"passes ({lg['promoted']} folios promoted by walks and look-around), "
                   f"{rc['direct_reclaims']} direct reclaims by faulting vCPUs")
    out.append("")
    out += render_common(d, res.checks, ("false_old", "false_young", "vcpu_faults",
                                         "walk_pages", "walk_young", "rmap_pages",
                                         "rmap_young", "look_around_young", "tlb_flushes"))
    out.append(f"{'PASS' if res.ok else 'FAIL'}: {r.steps} steps simulated in "
               f"{r.wall_s:.2f} s wall")
    return "\n".join(out)
