"""``access_tracking_perf_test`` on the timed driver, at small scale.

The kernel selftest (``tools/testing/selftests/kvm/access_tracking_perf_test``, spec
section 6): a VM with ``-v`` vCPUs, each owning ``-b`` bytes of guest memory in 4 KiB
pages. Default mode times these steps, each from kicking all vCPUs until all finish::

    Populating memory             first touch: every page faults in (writes)
    Writing to populated memory
    Reading from populated memory
    Mark memory idle (lru_gen)    one MGLRU aging pass over all guest memory
    Writing to idle memory
    Mark memory idle (lru_gen)
    Reading from idle memory

and checks, against the model's own state, that after marking idle at most 10% of the
pages are still young in the secondary MMU, and that at least 90% are young again after
the vCPUs accessed them. ``--page-idle`` marks memory idle the selftest's other way
(without MGLRU): each vCPU's thread marks its own pages through
``/sys/kernel/mm/page_idle/bitmap`` (``kernel/mm/page_idle.py``), the steps are printed
``Mark memory idle``, and the selftest's check applies: when a vCPU marks its pages
again, fewer than 10% may still be idle. ``-p`` (benchmark mode) runs aging passes
back to back in an aging thread while the vCPUs populate memory, and reports the
slowest vCPU's wall time and the average pass duration.

How it is built
---------------
- The host is ``check.model.build_system`` with the primary MMU prefaulted (the
  selftest's memslot is host-prefaulted); the vCPU threads run ``hw.vcpu.guest_access``
  (through ``guest_access_range``: first touches of a leaf table's pages run as fault
  streams, the same operations in one ``lock_program``, ``kernel/x86/fault_stream.py``;
  ``--per-page-faults`` turns them off, with the same results)
  and the aging pass is ``reclaim.walk_mm`` (``vmscan.walk_pte_range`` once per leaf page
  table), as the selftest's ``lru_gen`` debugfs write runs it (``run_aging`` ->
  ``try_to_inc_max_seq`` -> ``walk_mm``; the scenario has no LRU lists, so only the walk
  runs): the same kernel code the checker explores, nothing re-implemented.
- Phases are synchronised *inside the model*, with operations on a harness control word
  array (``perf.ctl``): a main thread (the selftest's main thread) kicks a phase by
  storing its number in a "go" word, every vCPU waits for it with ``wait_until``, runs
  its accesses, and increments the phase's "done" counter with ``fetch_add``; the main
  thread waits with ``wait_until`` for the counter to reach the vCPU count. So the
  barrier costs what a barrier costs on the virtual clock (a spinning waiter wakes one
  ``wakeup.spin_handoff`` after the store it waits for) and the run is one uninterrupted
  timed run. The main thread also runs the "Mark memory idle" passes (as the selftest's
  main thread does). In ``-p`` mode a separate aging thread loops over passes and checks
  a stop flag (``perf.ctl[1]``) between passes; the main thread sets it when the vCPUs
  are done, and the aging thread finishes the pass it is in, then exits.
- Time stamps use only the driver's public results: at each instant to measure, the
  thread spawns an empty *probe* thread (``spawn`` costs 0 ns); a thread starts at the
  end of the step that spawned it, so the probe's ``ThreadTime.start_ns`` is that
  instant. Phase time = last vCPU end probe - kick probe.
- Harness operations (kick, barrier waits, done counters, stop flag, probes) have labels
  of their own (``perf_*``) costing 0 ns in CPU-time category ``harness``, added to the
  cost model when it lacks them: they do not perturb the phases, and the time vCPUs
  spend waiting for the next kick is reported as ``harness``, never as kernel ``spin``.
- TLB reach: the model's TLB holds ``TLB_ENTRIES`` (1536) translations per vCPU
  (``hw/vcpu.py``), so a share larger than that misses on every sweep, as the real
  test's 1 GiB per vCPU (262144 pages) does: nearly every access after an aging pass
  misses the TLB and sets the accessed bit again. To keep that property for the small
  shares youngsim runs, which would fit, each vCPU empties its own TLB (a zero-cost
  harness ``vstore`` on its own ``vcpu.tlb``) before each step after the first.
  ``keep_tlb=True`` (``--keep-tlb``) turns this off: that is the selftest's nested-VM
  case ("the TLB size is effectively unlimited"), where the selftest only warns when
  pages are not seen young again, and so does this scenario.
- The checker's per-step SPTE invariants (``check/model.py``) cost O(pages) after every
  page-table write; at this scale they are evaluated at every phase boundary instead
  (a violation there is a failed check). Violations the machine detects itself
  (use-after-free, lock misuse, deadlock) still stop the run and are reported.

Scale
-----
Every guest access and every PTE the walk visits is simulated one operation at a time
(about 30-40 steps per faulting access, 5-10 per page per aging pass, ~80k steps/s on
this project's machine). Sizes above ``MAX_TOTAL_PAGES`` pages in total are refused:
chunked timing (one vector operation per table chunk, ``build_system(chunk=...)``) is
not built yet for this scenario. Figures come from the cost model at the size
simulated: they compare designs, they are not predictions for a 1 GiB-per-vCPU run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Generator, Sequence

import numpy as np

from ..check.model import build_system
from ..kernel.arm64 import pgtable as P
from ..kernel.arm64.mmu import Arm64Stage2Mmu
from ..kernel.hw.vcpu import guest_access_range
from ..kernel.mm.mm import pte_pfn, pte_present
from ..kernel.mm.page_idle import (BITMAP_CHUNK_BITS, page_idle_bitmap_read,
                                   page_idle_bitmap_write)
from ..kernel.mm.reclaim import walk_mm
from ..kernel.system import PAGE_SIZE
from ..kernel.x86 import spte as S
from ..sim import Machine, Op, fetch_add, load, store, vstore, wait_until
from ..sim.costmodel import CostModel
from ..sim.timed import TimedResult
from .harness import (Check, ConfigError, ScenarioResult, common_figures, drive, fmt_s,
                      invariant_checks, prepare_run, render_common, run_checks, seconds,
                      spawn_vcpus, stamp, stamps, validate_design_mmu)

Gen = Generator[Op, Any, Any]

SCENARIO = "access_tracking_perf_test"
#: refuse runs with more guest pages than this in total (every page is simulated)
MAX_TOTAL_PAGES = 65536
DEFAULT_BYTES_PER_VCPU = 256 * 1024
IDLE_MAX_YOUNG = 0.10  # "at most 10% of pages still young after marking idle"
YOUNG_AGAIN_MIN = 0.90  # "at least 90% seen young again" (the selftest's still_idle < 10%)
_ALL = (1 << 64) - 1

#: (printed name, what the vCPUs do: "write", "read", or "idle" = an aging pass)
PHASES: tuple[tuple[str, str], ...] = (
    ("Populating memory", "write"),
    ("Writing to populated memory", "write"),
    ("Reading from populated memory", "read"),
    ("Mark memory idle (lru_gen)", "idle"),
    ("Writing to idle memory", "write"),
    ("Mark memory idle (lru_gen)", "idle"),
    ("Reading from idle memory", "read"),
)
BENCH_PHASES: tuple[tuple[str, str], ...] = (("Populating memory", "write"),)
#: ``--page-idle``: the selftest's fallback without MGLRU, each vCPU's thread marking its
#: own memory idle through /sys/kernel/mm/page_idle/bitmap
PAGE_IDLE_PHASES: tuple[tuple[str, str], ...] = tuple(
    ("Mark memory idle", "page_idle") if kind == "idle" else (name, kind)
    for name, kind in PHASES)
STILL_IDLE_MAX = 0.10  # mark_vcpu_memory_idle: "at least 90% of memory marked idle"

@dataclass(frozen=True)
class Config:
    design: str
    mmu: str
    vcpus: int = 1
    bytes_per_vcpu: int = DEFAULT_BYTES_PER_VCPU
    benchmark: bool = False  # -p
    seed: int = 0
    keep_tlb: bool = False
    #: mark memory idle with page_idle (per vCPU) instead of an MGLRU aging pass
    page_idle: bool = False
    #: stack-sample every this many ns of a thread's on-CPU virtual time (0: off)
    profile_period_ns: int = 0
    #: vCPU faults as fault streams where they apply (same results; False: per page)
    fault_streams: bool = True

    @property
    def pages_per_vcpu(self) -> int:
        return self.bytes_per_vcpu // PAGE_SIZE

    @property
    def total_pages(self) -> int:
        return self.vcpus * self.pages_per_vcpu

    def validate(self) -> None:
        """Raise ``ConfigError`` (or ``NotModelled``) with a one-line reason."""
        validate_design_mmu(self.design, self.mmu)
        if self.vcpus < 1:
            raise ConfigError(f"-v must be at least 1, got {self.vcpus}")
        if self.bytes_per_vcpu < PAGE_SIZE or self.bytes_per_vcpu % PAGE_SIZE:
            raise ConfigError(f"-b must be a positive multiple of the 4 KiB page size, got "
                              f"{self.bytes_per_vcpu} bytes")
        if self.page_idle and self.benchmark:
            raise ConfigError("-p runs MGLRU aging passes back to back; it cannot be "
                              "combined with --page-idle")
        if self.total_pages > MAX_TOTAL_PAGES:
            raise ConfigError(
                f"{self.vcpus} vCPUs x {self.bytes_per_vcpu} bytes is {self.total_pages} "
                f"pages, above this build's cap of {MAX_TOTAL_PAGES} pages "
                f"({MAX_TOTAL_PAGES * PAGE_SIZE >> 20} MiB) in total: every page is "
                f"simulated one operation at a time; chunked timing is not built yet")


def secondary_young(arch: Any) -> np.ndarray:
    """Per gfn: is the secondary MMU's leaf entry young (would aging see it accessed)?
    x86 (TDP with or without A/D bits, shadow MMU): ``is_accessed_spte`` (the A bit, or
    "not access-tracked" without A/D bits); arm64 stage 2: valid with ``AF`` set."""
    raw = arch.leaf_view()[0]
    pred = P.kvm_pte_young if isinstance(arch, Arm64Stage2Mmu) else S.is_accessed_spte
    return np.fromiter((pred(int(x)) for x in raw), dtype=bool, count=len(raw))


class _Harness:
    """The selftest's threads and bookkeeping for one run."""

    def __init__(self, m: Machine, cfg: Config) -> None:
        self.m = m
        self.cfg = cfg
        self.phases = (BENCH_PHASES if cfg.benchmark else
                       PAGE_IDLE_PHASES if cfg.page_idle else PHASES)
        self.sys = build_system(m, cfg.design, cfg.mmu, npages=cfg.total_pages,
                                nvcpus=cfg.vcpus, prefault_primary=True)
        self.sys.fault_streams = cfg.fault_streams
        # the per-step invariants, evaluated at phase boundaries instead (see above)
        self.invariants = list(m.invariants)
        m.invariants.clear()
        m.watches.clear()
        # [0] go: number of the phase kicked (k + 1); [1] stop flag for the aging
        # thread; [2 + k] vCPUs done with phase k
        self.ctl = m.new_words("perf.ctl", 2 + len(self.phases))
        self.checks: list[Check] = []
        self.passes = 0
        #: ``--page-idle``: per phase, per vCPU, pages found still idle while marking
        self.still_idle: dict[int, list[int]] = {}

    # -- checks (thread-local code of the main thread: evaluated at that instant) ----
    def check_invariants(self, where: str) -> None:
        self.checks += invariant_checks(self.m, self.invariants, where)

    def check_idle(self, k: int) -> None:
        young = secondary_young(self.sys.kvms[0].arch)
        frac = float(young.mean()) if len(young) else 0.0
        ok = frac <= IDLE_MAX_YOUNG
        detail = (f"after step {k + 1} ({self.phases[k][0]}): {int(young.sum())}/{len(young)}"
                  f" pages still young in the secondary MMU")
        if not ok and self.sys.design.mglru == "primary-only" and self.phases[k][1] == "idle":
            detail += (" (this design's MGLRU walk clears only the primary PTEs: it never "
                       "consults the secondary MMU)")
        bailed = self.m.counters.get("aging_bitmap_bailouts", 0)
        if not ok and bailed:
            detail += (f" ({bailed} aging call(s) so far passed a bitmap to a secondary"
                       " MMU without the lockless fast path and returned 0 without aging"
                       " it, as the design specifies)")
        self.checks.append(Check("idle: at most 10% still young", "pass" if ok else "fail",
                                 detail, round(frac, 6), IDLE_MAX_YOUNG))

    def check_young_again(self, k: int) -> None:
        young = secondary_young(self.sys.kvms[0].arch)
        frac = float(young.mean()) if len(young) else 1.0
        ok = frac >= YOUNG_AGAIN_MIN
        detail = (f"after step {k + 1} ({self.phases[k][0]}): {int(young.sum())}/{len(young)}"
                  f" pages young again in the secondary MMU")
        status = "pass" if ok else "fail"
        if not ok and self.cfg.keep_tlb:
            status = "warn"
            detail += (" (--keep-tlb: cached translations set no accessed bit; the selftest"
                       " only warns in this case, its nested-VM case)")
        self.checks.append(Check("accessed again: at least 90% young", status, detail,
                                 round(frac, 6), YOUNG_AGAIN_MIN))

    def check_still_idle(self, k: int) -> None:
        """``mark_vcpu_memory_idle``'s check, per vCPU: fewer than 10% of its pages may
        still be idle when it marks them again (a page the guest accessed since the
        last mark is found young by the bitmap read, unless a cached translation
        hid the access)."""
        ppv = self.cfg.pages_per_vcpu
        counts = self.still_idle.get(k, [])
        worst = max(counts) if counts else 0
        ok = worst < ppv * STILL_IDLE_MAX
        detail = (f"step {k + 1} ({self.phases[k][0]}): still idle per vCPU "
                  f"{counts} of {ppv} pages")
        status = "pass" if ok else "fail"
        if not ok and self.cfg.keep_tlb:
            status = "warn"
            detail += " (--keep-tlb: the selftest only warns, its nested-VM case)"
        self.checks.append(Check("page_idle: fewer than 10% still idle", status, detail,
                                 round(worst / ppv, 6) if ppv else 0.0, STILL_IDLE_MAX))

    # -- threads ----------------------------------------------------------------------
    def vcpu(self, i: int) -> Gen:
        sys = self.sys
        vcpu = sys.kvms[0].vcpus[i]
        ppv = self.cfg.pages_per_vcpu
        lo, hi = i * ppv, (i + 1) * ppv
        ctl = self.ctl
        for k, (_, kind) in enumerate(self.phases):
            if kind in ("idle", "page_idle"):
                continue
            yield wait_until(ctl, 0, _ALL, k + 1, cost="perf_wait_kick")
            if k > 0 and not self.cfg.keep_tlb:
                yield vstore(vcpu.tlb, 0, np.zeros(len(vcpu.tlb), dtype=np.uint64),
                             cost="perf_tlb_reach")
            yield from guest_access_range(sys, vcpu, lo, hi, kind == "write")
            yield from stamp(f"end:{k}:{i}")
            yield fetch_add(ctl, 2 + k, 1, cost="perf_vcpu_done")

    def idle_marker(self, i: int) -> Gen:
        """``--page-idle``: vCPU ``i``'s thread out of the guest, in each "Mark memory
        idle" step: ``mark_vcpu_memory_idle`` over its pages, each ``lookup_pfn``
        (pagemap), ``is_page_idle`` (a bitmap word read: a still-idle page is counted
        and skipped) and ``mark_page_idle`` (a bitmap word write)."""
        sys, mm = self.sys, self.sys.mm
        ppv = self.cfg.pages_per_vcpu
        ctl = self.ctl
        for k, (_, kind) in enumerate(self.phases):
            if kind != "page_idle":
                continue
            yield wait_until(ctl, 0, _ALL, k + 1, cost="perf_wait_kick")
            still = 0
            for g in range(i * ppv, (i + 1) * ppv):
                t, j = mm.pte_slot(mm.start + g * PAGE_SIZE)
                pte = yield load(t, j, cost="pagemap_read")  # lookup_pfn
                if not pte_present(pte):
                    continue
                pfn = pte_pfn(pte)
                word, bit = divmod(pfn, BITMAP_CHUNK_BITS)
                bits = yield from page_idle_bitmap_read(sys, mm, word)
                if bits >> bit & 1:  # is_page_idle
                    still += 1
                    continue
                yield from page_idle_bitmap_write(sys, mm, word, 1 << bit)
            self.still_idle.setdefault(k, [0] * self.cfg.vcpus)[i] = still
            yield from stamp(f"end:{k}:{i}")
            yield fetch_add(ctl, 2 + k, 1, cost="perf_vcpu_done")

    def main(self) -> Gen:
        """The selftest's main thread: kick each step, wait for the vCPUs, mark idle."""
        ctl = self.ctl
        nv = self.cfg.vcpus
        prev = None
        for k, (name, kind) in enumerate(self.phases):
            yield from stamp(f"kick:{k}")
            if kind == "idle":
                yield from walk_mm(self.sys, self.sys.mm)
                yield from stamp(f"end:{k}:main")
                self.check_idle(k)
            else:
                yield store(ctl, 0, k + 1, cost="perf_kick")
                yield wait_until(ctl, 2 + k, _ALL, nv, cost="perf_wait_vcpus")
                if kind == "page_idle":
                    self.check_idle(k)
                    if any(p == "page_idle" for _, p in self.phases[:k]):
                        self.check_still_idle(k)
                elif prev in ("idle", "page_idle"):
                    self.check_young_again(k)
            self.check_invariants(f"after step {k + 1} ({name})")
            prev = kind
        if self.cfg.benchmark:
            yield store(ctl, 1, 1, cost="perf_stop")

    def ager(self) -> Gen:
        """``-p``: aging passes back to back until the main thread sets the stop flag."""
        ctl = self.ctl
        while True:
            stop = yield load(ctl, 1, cost="perf_stop_check")
            if stop:
                return
            n = self.passes
            yield from stamp(f"pass:{n}:start")
            yield from walk_mm(self.sys, self.sys.mm)
            yield from stamp(f"pass:{n}:end")
            self.passes += 1


@dataclass
class PerfResult(ScenarioResult):
    config: Config
    cost_model: str
    phases: list[dict[str, Any]]
    checks: list[Check]
    timed: TimedResult
    bench: dict[str, Any] | None = None
    data: dict[str, Any] = field(default_factory=dict)
    #: measured values the model recorded (``System.sample``): fault latencies, ...
    samples: dict[str, Sequence[int]] = field(default_factory=dict)

    def render(self) -> str:
        return render(self)


def run_access_tracking(cfg: Config, cost_model: CostModel | None = None) -> PerfResult:
    """Build and run the scenario; ``cost_model`` defaults to ``perf_cost_model()``."""
    cm, m = prepare_run(cfg, cost_model)
    h = _Harness(m, cfg)
    roles = spawn_vcpus(m, h.vcpu, cfg.vcpus)
    if cfg.page_idle:
        for i in range(cfg.vcpus):
            roles[m.spawn(h.idle_marker, i, name=f"page_idle{i}")] = "aging"
    roles[m.spawn(h.main, name="main")] = "aging"
    if cfg.benchmark:
        roles[m.spawn(h.ager, name="lru_gen")] = "aging"
    r = drive(m, cm, roles, cfg)

    at = stamps(r)
    phases: list[dict[str, Any]] = []
    for k, (name, kind) in enumerate(h.phases):
        kick = at.get(f"kick:{k}")
        if kind == "idle":
            ends = {"main": at.get(f"end:{k}:main")}
        else:
            ends = {str(i): at.get(f"end:{k}:{i}") for i in range(cfg.vcpus)}
        if kick is None or any(v is None for v in ends.values()):
            break  # the run stopped early (a violation): report the steps completed
        per = [v - kick for v in ends.values() if v is not None]
        phases.append({"name": name, "kind": kind, "ns": max(per),
                       "s": seconds(max(per)), "per_thread_ns": per})
    checks = list(h.checks) + run_checks(r, len(phases), len(h.phases))

    bench = None
    if cfg.benchmark:
        passes = []
        n = 0
        while f"pass:{n}:end" in at:
            passes.append(at[f"pass:{n}:end"] - at[f"pass:{n}:start"])
            n += 1
        total = sum(passes)
        wall = phases[0]["ns"] if phases else 0
        bench = {"vcpu_wall_time_ns": wall, "vcpu_wall_time_s": seconds(wall),
                 "lru_gen_passes": len(passes), "lru_gen_total_ns": total,
                 "lru_gen_total_s": seconds(total),
                 "lru_gen_avg_pass_ns": total // len(passes) if passes else 0,
                 "lru_gen_avg_pass_s": seconds(total / len(passes)) if passes else 0.0,
                 "lru_gen_pass_ns": passes}

    res = PerfResult(cfg, r.cost_model, phases, checks, r, bench,
                     samples=dict(h.sys.samples))
    res.data = _to_dict(res)
    return res


def _to_dict(res: PerfResult) -> dict[str, Any]:
    cfg, r = res.config, res.timed
    out: dict[str, Any] = {
        "scenario": SCENARIO,
        "mode": "benchmark" if cfg.benchmark else "default",
        "config": {"design": cfg.design, "mmu": cfg.mmu, "vcpus": cfg.vcpus,
                   "bytes_per_vcpu": cfg.bytes_per_vcpu,
                   "pages_per_vcpu": cfg.pages_per_vcpu, "total_pages": cfg.total_pages,
                   "benchmark": cfg.benchmark, "seed": cfg.seed, "keep_tlb": cfg.keep_tlb,
                   "page_idle": cfg.page_idle, "fault_streams": cfg.fault_streams},
        "scale_note": (f"small scale: {cfg.total_pages} pages simulated one operation at a "
                       f"time (cap {MAX_TOTAL_PAGES}); figures come from the cost model, "
                       "not from hardware"),
        "cost_model": res.cost_model,
        "ok": res.ok,
        "stopped": r.stopped,
        "violation": (None if r.violation is None
                      else {"kind": r.violation.kind, "message": r.violation.message}),
        "phases": res.phases,
        "checks": [c.to_dict() for c in res.checks],
    }
    if res.bench is not None:
        out.update(res.bench)
    out.update(common_figures(r, res.samples))
    return out


def render(res: PerfResult) -> str:
    """The selftest's output lines, then checks and a short summary."""
    cfg, r, d = res.config, res.timed, res.data
    head = (f"{SCENARIO} (youngsim, timed model): design {cfg.design}, mmu {cfg.mmu}, "
            f"{cfg.vcpus} vCPU(s) x {cfg.bytes_per_vcpu} bytes "
            f"({cfg.pages_per_vcpu} pages each, {cfg.total_pages} total)"
            + (", benchmark mode (-p)" if cfg.benchmark else "")
            + (", idle marking via page_idle" if cfg.page_idle else ""))
    out = [head, (f"virtual times from {res.cost_model} at this small scale (cap "
                  f"{MAX_TOTAL_PAGES} pages); not hardware measurements")]
    for p in res.phases:
        out.append(f"{p['name']:<30}: {fmt_s(p['ns'])}")
    if res.bench is not None and not res.phases:
        out.append("vcpu wall time and lru_gen passes: n/a (the run stopped early)")
    elif res.bench is not None:
        b = res.bench
        out.append(f"{'vcpu wall time':<30}: {fmt_s(b['vcpu_wall_time_ns'])}")
        out.append(f"lru_gen avg pass duration : {fmt_s(b['lru_gen_avg_pass_ns'])}, "
                   f"(passes:{b['lru_gen_passes']}, total:{fmt_s(b['lru_gen_total_ns'])})")
    out.append("")
    out += render_common(d, res.checks, ("false_old", "false_young", "vcpu_faults",
                                         "tlb_hits", "walk_pages", "walk_young",
                                         "page_idle_pages", "page_idle_young",
                                         "tlb_flushes"),
                         no_checks="checks: none in benchmark mode (as in the selftest's -p)")
    out.append(f"{'PASS' if res.ok else 'FAIL'}: {r.steps} steps simulated in "
               f"{r.wall_s:.2f} s wall")
    return "\n".join(out)
