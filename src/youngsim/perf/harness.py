"""What every timed scenario shares: sizes, the harness's zero-cost labels, time-stamp
probes, checks, and the figures and summary lines every run reports (CPU time by
category and role, fault latencies, mmu_lock waits and holds, the model's counters).

Scenario modules (``access_tracking.py``, ``max_guest_memory.py``) build their threads
from the kernel model and call these; nothing here knows a scenario's steps.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Generator, Protocol, Sequence

import numpy as np

from ..designs import DESIGNS, MMU_VARIANTS
from ..sim import Machine, Op, spawn
from ..sim.costmodel import CostModel, load_cost_model
from ..sim.timed import Dist, TimedDriver, TimedResult

Gen = Generator[Op, Any, Any]

_HARNESS = ("selftest harness bookkeeping (barrier words, stop flag, time-stamp probes), "
            "not modelled kernel work: 0 ns so the harness does not perturb the measured "
            "steps; the time a thread waits at a barrier is accounted as 'harness'")
#: labels of the harness's own operations, added to a cost model that lacks them
HARNESS_LABELS: dict[str, dict[str, Any]] = {
    name: {"ns": 0, "per_element_ns": 0, "category": "harness", "rationale": _HARNESS}
    for name in ("perf_kick", "perf_wait_kick", "perf_vcpu_done", "perf_wait_vcpus",
                 "perf_stop", "perf_stop_check", "perf_tlb_reach")
}


class ConfigError(ValueError):
    """A configuration a scenario refuses (one line)."""


_SIZE_RE = re.compile(r"\s*(\d+)\s*([kmgt]?)(i?b)?\s*\Z", re.IGNORECASE)
_SHIFT = {"": 0, "k": 10, "m": 20, "g": 30, "t": 40}


def parse_size(text: str, default_unit: str = "") -> int:
    """Bytes from ``4096``, ``64K``, ``2M``, ``1G`` (binary units, as the selftests'
    ``parse_size``); ``KB``/``KiB`` spellings are accepted too. A bare number is in
    ``default_unit`` (``"g"`` for options the kernel tool takes in GiB)."""
    mt = _SIZE_RE.match(text)
    if not mt:
        raise ValueError(f"expected a size like 4096, 64K, 2M or 1G, got {text!r}")
    unit = mt.group(2).lower()
    if not unit and not mt.group(3):  # a bare number; "4096B" is bytes
        unit = default_unit
    return int(mt.group(1)) << _SHIFT[unit]


def fmt_size(nbytes: int) -> str:
    """A size the way ``parse_size`` reads it back: the largest exact unit (``32M``,
    ``512K``, ``4096B``), so a header never rounds a size away."""
    for unit, shift in (("T", 40), ("G", 30), ("M", 20), ("K", 10)):
        if nbytes and nbytes % (1 << shift) == 0:
            return f"{nbytes >> shift}{unit}"
    return f"{nbytes}B"


def validate_design_mmu(design: str, mmu: str) -> None:
    """Raise ``ConfigError`` unless ``design`` is known, ``mmu`` is known, and the design
    applies to that MMU variant."""
    if design not in DESIGNS:
        raise ConfigError(f"unknown design {design!r} (known: {', '.join(DESIGNS)})")
    if mmu not in MMU_VARIANTS:
        raise ConfigError(f"unknown MMU variant {mmu!r} (known: {', '.join(MMU_VARIANTS)})")
    reason = DESIGNS[design].applies(mmu)
    if reason:
        raise ConfigError(f"{design} does not apply to {mmu}: {reason}")


def with_harness_labels(cm: CostModel) -> CostModel:
    missing = {k: v for k, v in HARNESS_LABELS.items() if k not in cm.labels}
    return cm.with_labels(missing) if missing else cm


def perf_cost_model(path: str | None = None) -> CostModel:
    """The cost model (packaged default or ``path``) plus the harness labels it lacks."""
    return with_harness_labels(load_cost_model(path))


class ScenarioConfig(Protocol):
    """What the helpers below read of a scenario's (frozen) config."""

    @property
    def seed(self) -> int: ...

    @property
    def profile_period_ns(self) -> int: ...

    def validate(self) -> None: ...


def prepare_run(cfg: ScenarioConfig, cost_model: CostModel | None
                ) -> tuple[CostModel, Machine]:
    """Validate ``cfg``; the cost model (``perf_cost_model()`` by default) with the
    harness labels; a fresh machine with the run's seed."""
    cfg.validate()
    cm = with_harness_labels(cost_model if cost_model is not None else perf_cost_model())
    m = Machine()
    m.seed = cfg.seed
    return cm, m


def spawn_vcpus(m: Machine, vcpu: Callable[[int], Gen], n: int) -> dict[int, str]:
    """Threads ``vcpu0..`` running ``vcpu(i)``; returns their roles for the driver."""
    return {m.spawn(vcpu, i, name=f"vcpu{i}"): "vcpu" for i in range(n)}


def drive(m: Machine, cm: CostModel, roles: dict[int, str], cfg: ScenarioConfig
          ) -> TimedResult:
    """Run the scenario's threads to the end on the timed driver (stack-sampled when
    the config asks for a profile)."""
    return TimedDriver(m, cm, roles=roles,
                       sample_period_ns=cfg.profile_period_ns or None).run()


class ScenarioResult:
    """What every scenario's result has: the timed run, its checks, and the JSON object
    (``data``); a run is ok when the machine found no violation and no check failed."""

    timed: TimedResult
    checks: list[Check]
    data: dict[str, Any]

    @property
    def ok(self) -> bool:
        return result_ok(self.timed, self.checks)

    def to_dict(self) -> dict[str, Any]:
        return self.data


def _probe() -> Gen:
    """An empty thread: its start time is the instant its spawner wanted stamped."""
    return
    yield  # pragma: no cover  (makes this a generator)


def stamp(name: str) -> Gen:
    """Time-stamp this instant as probe ``name`` (the probe thread starts at the end of
    the step that spawns it)."""
    yield spawn(_probe, name=f"probe:{name}")


def stamps(r: TimedResult) -> dict[str, int]:
    """Every probe's instant, by name."""
    return {t.name[len("probe:"):]: t.start_ns for t in r.threads
            if t.name.startswith("probe:")}


@dataclass
class Check:
    name: str
    status: str  # "pass", "fail" or "warn"
    detail: str
    value: float | None = None
    limit: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "detail": self.detail,
                "value": self.value, "limit": self.limit}


def invariant_checks(m: Machine, invariants: list[Any], where: str) -> list[Check]:
    """The checker's SPTE invariants, evaluated now (at a step boundary): one failed
    check per violated invariant."""
    out = []
    for name, fn in invariants:
        msg = fn(m)
        if msg:
            out.append(Check(f"invariant {name}", "fail", f"{where}: {msg}"))
    return out


def result_ok(r: TimedResult, checks: list[Check]) -> bool:
    """A scenario run is ok: no violation, ran to the end, no failed check."""
    return r.ok and r.stopped == "done" and all(c.status != "fail" for c in checks)


def run_checks(r: TimedResult, steps_done: int, steps: int) -> list[Check]:
    """The checks every scenario makes of the run itself."""
    if r.violation is not None:
        return [Check("no violation", "fail", f"{r.violation.kind}: {r.violation.message}")]
    if r.stopped != "done":
        return [Check("run completed", "fail", f"the timed run stopped: {r.stopped}")]
    if steps_done != steps:
        return [Check("run completed", "fail", "not every step completed")]
    return []


def dist_summary(d: Dist) -> dict[str, Any]:
    return {"n": d.n, "mean_ns": round(d.mean, 3), "p50_ns": d.percentile(50),
            "p99_ns": d.percentile(99), "p99_9_ns": d.percentile(99.9), "max_ns": d.max}


def seconds(ns: float) -> float:
    return ns / 1e9


def fmt_s(ns: int) -> str:
    """``%ld.%09lds``, as the selftests print a timespec."""
    return f"{ns // 1_000_000_000}.{ns % 1_000_000_000:09d}s"


def fault_latency_percentiles(lat: Sequence[int]) -> dict[str, Any]:
    """p50, p99 and p99.9 of the fault latencies (nearest rank), in virtual ns."""
    if not len(lat):
        return {"fault_latency_p50_ns": None, "fault_latency_p99_ns": None,
                "fault_latency_p999_ns": None}
    xs = np.sort(np.asarray(lat, dtype=np.int64))

    def rank(q: float) -> int:
        return int(xs[min(len(xs) - 1, max(0, int(np.ceil(q * len(xs))) - 1))])

    return {"fault_latency_p50_ns": rank(0.50), "fault_latency_p99_ns": rank(0.99),
            "fault_latency_p999_ns": rank(0.999)}


#: the counters of pages an aging caller decided young or old (``vmscan.decide``)
AGED_PAGE_COUNTERS = ("walk_pages", "look_around_pages", "rmap_pages", "page_idle_pages")


def aging_figures(counters: dict[str, int]) -> dict[str, Any]:
    """What the aging cost per page it decided, and how accurate the decisions were."""
    aged = sum(counters.get(k, 0) for k in AGED_PAGE_COUNTERS)
    calls = counters.get("aging_notifier_calls", 0)
    locks = counters.get("aging_mmu_lock", 0)
    return {
        "aged_pages": aged,
        "notifier_calls": calls,
        "mmu_lock_acquisitions": locks,
        "notifier_calls_per_aged_page": round(calls / aged, 6) if aged else None,
        "mmu_lock_acquisitions_per_aged_page": round(locks / aged, 6) if aged else None,
        "false_old": counters.get("false_old", 0),
        "false_young": counters.get("false_young", 0),
        "lost_to_concurrent_writers": counters.get("clears_clobbered", 0),
        "young_dropped_at_zap": counters.get("young_dropped_at_zap", 0),
        "note": ("aged pages: pages an aging caller (MGLRU walk, look-around, rmap, "
                 "page_idle) decided"
                 " young or old; notifier calls: aging callbacks into KVM "
                 "(clear_young, clear_flush_young, test_young, test_clear_young); "
                 "mmu_lock acquisitions: by those calls' walks; false old / false young: "
                 "decisions against the guest's real accesses since the page's last "
                 "decision; lost to concurrent writers: lockless clears a locked SPTE "
                 "write undid"),
    }


def common_figures(r: TimedResult, samples: dict[str, Sequence[int]]) -> dict[str, Any]:
    """The figures every timed run reports, for its JSON."""
    by_role: dict[str, dict[str, int]] = {}
    for t in r.threads:
        d = by_role.setdefault(t.role, {})
        for c, v in t.categories.items():
            d[c] = d.get(c, 0) + v
    faults = r.counters.get("vcpu_faults", 0)
    vcpu_cats = by_role.get("vcpu", {})
    fault_ns = sum(v for c, v in vcpu_cats.items() if c not in ("guest", "harness"))
    locks = {}
    for name, lk in sorted(r.locks.items()):
        locks[name] = {"kind": lk.kind, "acquisitions": lk.acquisitions,
                       "contended": lk.contended, "spin_ns": lk.spin_ns,
                       "sleep_ns": lk.sleep_ns,
                       "wait": {k: dist_summary(d) for k, d in sorted(lk.wait.items())},
                       "hold": {k: dist_summary(d) for k, d in sorted(lk.hold.items())}}
    return {
        "virtual_end_ns": r.end_ns,
        "steps": r.steps,
        "cpu_time_ns": dict(sorted(r.categories.items())),
        "cpu_time_by_role_ns": {k: dict(sorted(v.items())) for k, v in sorted(by_role.items())},
        "faults": {"vcpu_faults": faults,
                   "vcpu_host_ns_per_fault": round(fault_ns / faults, 3) if faults else None,
                   "note": "host ns per fault: vCPU time outside guest and harness (exits, "
                           "fault handling, lock spinning, flush waits, sleeping for memory "
                           "or swap) per EPT violation; latency: virtual ns from the "
                           "violation to the translation that worked",
                   **fault_latency_percentiles(samples.get("fault_latency_ns", []))},
        "locks": locks,
        "aging": aging_figures(r.counters),
        "counters": dict(sorted(r.counters.items())),
        "cas_attempts": r.cas_attempts, "cas_failures": r.cas_failures,
        "atomic_contended": r.atomic_contended, "tlb_flushes": r.tlb_flushes,
        "unknown_labels": r.unknown_labels,
    }


def render_common(d: dict[str, Any], checks: list[Check], counter_keys: tuple[str, ...],
                  no_checks: str = "checks: none") -> list[str]:
    """Checks, CPU time, faults, mmu_lock and counter lines of a run's summary."""
    out = []
    for c in checks:
        out.append(f"check {c.status.upper():<4} {c.name}: {c.detail}")
    if not checks:
        out.append(no_checks)
    cats = d["cpu_time_ns"]
    total = sum(cats.values()) or 1
    out.append("")
    out.append("CPU time by category: " + ", ".join(
        f"{c} {v / 1e3:.1f}us ({100.0 * v / total:.1f}%)" for c, v in cats.items()))
    f = d["faults"]
    if f["vcpu_faults"]:
        out.append(f"vCPU faults: {f['vcpu_faults']}, host time per fault "
                   f"{f['vcpu_host_ns_per_fault']:.0f} ns, latency p50/p99/p99.9 "
                   f"{f['fault_latency_p50_ns']}/{f['fault_latency_p99_ns']}/"
                   f"{f['fault_latency_p999_ns']} ns")
    for name, lk in d["locks"].items():
        if "mmu_lock" not in name:
            continue
        parts = []
        for role, w in lk["wait"].items():
            hd = lk["hold"].get(role)
            parts.append(f"{role} n={w['n']} wait p50/p99/max {w['p50_ns']}/{w['p99_ns']}/"
                         f"{w['max_ns']} ns" + (f", hold mean {hd['mean_ns']:.0f} ns"
                                                 if hd else ""))
        out.append(f"{name}: {lk['acquisitions']} acquisitions, {lk['contended']} contended,"
                   f" spinning {lk['spin_ns']} ns; " + "; ".join(parts))
    ag = d["aging"]
    if ag["aged_pages"]:
        out.append(f"aging: {ag['aged_pages']} page decisions, "
                   f"{ag['notifier_calls_per_aged_page']} notifier calls and "
                   f"{ag['mmu_lock_acquisitions_per_aged_page']} mmu_lock acquisitions per "
                   f"page; false old {ag['false_old']}, false young {ag['false_young']}, "
                   f"lost to concurrent writers {ag['lost_to_concurrent_writers']}, young "
                   f"dropped at zap {ag['young_dropped_at_zap']}")
    cn = d["counters"]
    keys = [k for k in counter_keys if k in cn]
    out.append("counters: " + (", ".join(f"{k} {cn[k]}" for k in keys) or "none"))
    if d["unknown_labels"]:
        out.append("WARNING: labels missing from the cost model (kind default used): "
                   + ", ".join(sorted(d["unknown_labels"])))
    return out
