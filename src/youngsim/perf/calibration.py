"""``youngsim compare --preset calibration``: the model beside the 2023 series' figures.

Spec section 5 lists what the series published, "before -> after", from its cover letters:
``max_guest_memory_test -c 64 -m 250 -s 250`` run2 times (v1: ~600 s -> ~50 s, the
"before" kernel flushing TLBs per young page, i.e. ``legacy``; v2: ~64 s -> ~51 s with
``legacy-noflush`` as "before"; v1 "MGLRU off": ~250 s) and the share of kswapd's perf
samples in a few functions. This preset runs the same scenario (``max_guest_memory.py``)
for those three designs with MGLRU, and for ``legacy`` with the classic LRU, on x86 TDP
with A/D bits, profiles kswapd, and prints each figure beside the published one with the
ratio model/published.

"MGLRU off" is ``legacy`` with ``--lru classic``: the v1 cover letter's three run2
figures come from one base kernel (before the series, whose "before" flushed TLBs per
young page: spec section 5) with ``lru_gen/enabled`` on or off, and the series only
changed MGLRU's callers, so with MGLRU off the rmap path is the base kernel's
(``folio_referenced_one`` -> ``ptep_clear_flush_young_notify`` -> KVM's
``clear_flush_young`` under ``mmu_lock``, flushing if young) with or without it. The
seed review (``shared/seed``, of v2 patch 1) does not mention the figure.

What can be compared, and how:

- **Times** only as before/after ratios: the model runs a small guest (``GUEST_BYTES``)
  on a host with 3/4 of its memory, at ``VCPUS`` vCPUs, not 250 GiB on 64; absolute
  seconds are not comparable, the factor a change buys may be.
- **Profile shares** as shares of kswapd's samples: a function's share is the fraction
  of samples of the kswapd thread whose simulated stack contains it (``perf report
  --children``). The kernel symbol ``_raw_write_lock`` is the lock's slow path here
  (``queued_write_lock_slowpath``: spinning for ``mmu_lock``; the fast path is one
  atomic); ``lru_gen_look_around`` in yu-v2 is its batched look-around
  (``should_look_around`` -> ``lru_gen_batch``).
- **The classic-LRU profile** ("MGLRU off": ``_raw_write_lock`` 9.93% + 18.98% (active
  list)): two entries of one call graph, ``_raw_write_lock`` under
  ``shrink_inactive_list`` (9.93%) and under ``shrink_active_list`` (18.98%); a stack
  holds at most one of the two, so the shares add up (28.91%). The model's are computed
  the same way: kswapd's samples spinning for ``mmu_lock`` whose stack also contains
  that function (``kswapd_share(..., within=...)``).
- Not modelled: the memcached, Spark and multichase figures (application workloads, spec
  section 5, not replayed).

The constants are the cost model's, unchanged for this preset (``docs/cost-model.md``);
nothing is fitted to these figures.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ..sim.costmodel import CostModel
from ..sim.profile import Profile
from .max_guest_memory import Config, run_max_guest_memory

VCPUS = 16
GUEST_BYTES = 32 << 20
PROFILE_PERIOD_NS = 1000
MMU = "x86-tdp"
#: the run of the classic LRU ("MGLRU off")
MGLRU_OFF = "legacy-classic"


@dataclass(frozen=True)
class Run:
    """One run of the preset: its key in the results, the design, the LRU."""

    key: str
    design: str
    lru: str
    stands_for: str


RUNS: tuple[Run, ...] = (
    Run("legacy", "legacy", "mglru",
        "v1 'before': MGLRU, rmap path flushes TLBs per young page"),
    Run("legacy-noflush", "legacy-noflush", "mglru",
        "v2 'before': MGLRU, locked clear_young without a flush"),
    Run("yu-v2", "yu-v2", "mglru", "'after': the series (lockless, batched)"),
    Run(MGLRU_OFF, "legacy", "classic",
        "v1 'MGLRU off': classic LRU, rmap path flushes TLBs per young page"),
)


@dataclass(frozen=True)
class Published:
    """One published figure: ``before`` -> ``after`` (None: the symbol is gone), each
    measured on a run of ``RUNS`` (by key). A figure of one run only (the classic-LRU
    profile) has ``after_run`` None."""

    what: str
    before_run: str
    after_run: str | None
    before: float | None
    after: float | None
    kind: str  # "run2_s" or "share"
    symbol: str = ""
    #: shares: count only stacks that also contain this function
    within: str | None = None
    #: run2_s: what the ratio is called in the row
    ratio_name: str = "before/after"


PUBLISHED: tuple[Published, ...] = (
    Published("max_guest_memory_test run2 (s), v1", "legacy", "yu-v2", 600.0, 50.0,
              "run2_s"),
    Published("max_guest_memory_test run2 (s), v1", MGLRU_OFF, "yu-v2", 250.0, 50.0,
              "run2_s", ratio_name="MGLRU off/after"),
    Published("max_guest_memory_test run2 (s), v1", "legacy", MGLRU_OFF, 600.0, 250.0,
              "run2_s", ratio_name="before/MGLRU off"),
    Published("max_guest_memory_test run2 (s), v2", "legacy-noflush", "yu-v2", 64.0, 51.0,
              "run2_s"),
    Published("kswapd % folio_referenced, v2", "legacy-noflush", "yu-v2", 13.05, 3.74,
              "share", "folio_referenced"),
    Published("kswapd % _raw_write_lock, v2", "legacy-noflush", "yu-v2", 7.34, None,
              "share", "_raw_write_lock"),
    Published("kswapd % __mmu_notifier_clear_young, v2", "legacy-noflush", "yu-v2", 7.90,
              None, "share", "__mmu_notifier_clear_young"),
    Published("kswapd % lru_gen_look_around, v2", "legacy-noflush", "yu-v2", None, 2.53,
              "share", "lru_gen_look_around"),
    Published("kswapd % __mmu_notifier_test_clear_young, v2", "legacy-noflush", "yu-v2",
              None, 1.06, "share", "__mmu_notifier_test_clear_young"),
    Published("kswapd % shrink_folio_list, v2", "legacy-noflush", "yu-v2", 97.29, 80.37,
              "share", "shrink_folio_list"),
    Published("kswapd % folio_referenced, v1", "legacy", "yu-v2", 31.33, 7.08, "share",
              "folio_referenced"),
    Published("kswapd % _raw_write_lock, v1", "legacy", "yu-v2", 19.34, None, "share",
              "_raw_write_lock"),
    Published("kswapd % __mmu_notifier_test_clear_young, v1", "legacy", "yu-v2", None,
              1.53, "share", "__mmu_notifier_test_clear_young"),
    Published("kswapd % _raw_write_lock in shrink_inactive_list, v1 MGLRU off", MGLRU_OFF,
              None, 9.93, None, "share", "_raw_write_lock", within="shrink_inactive_list"),
    Published("kswapd % _raw_write_lock in shrink_active_list, v1 MGLRU off", MGLRU_OFF,
              None, 18.98, None, "share", "_raw_write_lock", within="shrink_active_list"),
    Published("kswapd % _raw_write_lock, v1 MGLRU off (sum of the two)", MGLRU_OFF, None,
              28.91, None, "share", "_raw_write_lock"),
)

#: a published symbol -> alternatives, each a set of model frames a stack must all contain
SYMBOL_FRAMES: dict[str, tuple[frozenset[str], ...]] = {
    "_raw_write_lock": (frozenset({"queued_write_lock_slowpath"}),),
    "lru_gen_look_around": (frozenset({"lru_gen_look_around"}),
                            frozenset({"should_look_around", "lru_gen_batch"})),
}

NOT_MODELLED = (
    "memcached/memtier, Spark, multichase figures: application workloads, not replayed",
)


def kswapd_share(profile: Profile, symbol: str, within: str | None = None) -> float:
    """Percent of kswapd's samples whose stack contains ``symbol`` (or its model frames)
    and, if given, the function ``within`` (the symbol's entry under that caller in a
    ``perf report --children`` call graph)."""
    alts = SYMBOL_FRAMES.get(symbol, (frozenset({symbol}),))
    if within is not None:
        alts = tuple(a | {within} for a in alts)
    total = hit = 0
    for stack, n in profile.samples.items():
        if not stack or stack[0] != "[kswapd]":
            continue
        total += n
        frames = set(stack)
        if any(a <= frames for a in alts):
            hit += n
    return 100.0 * hit / total if total else 0.0


def run_calibration(cost_model: CostModel | None = None,
                    progress: Callable[[str], None] | None = None
                    ) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]],
                               dict[str, Profile]]:
    """Run ``RUNS``; return (comparison rows, per-run figures, profiles), keyed by run."""
    runs: dict[str, dict[str, Any]] = {}
    profiles: dict[str, Profile] = {}
    for run in RUNS:
        cfg = Config(design=run.design, mmu=MMU, vcpus=VCPUS, guest_bytes=GUEST_BYTES,
                     profile_period_ns=PROFILE_PERIOD_NS, lru=run.lru)
        res = run_max_guest_memory(cfg, cost_model)
        d = res.data
        assert res.timed.profile is not None
        profiles[run.key] = res.timed.profile
        runs[run.key] = {"run": run.key, "design": run.design, "lru": run.lru,
                         "stands_for": run.stands_for, "ok": res.ok,
                         "run1_s": d["run1_s"], "reset_s": d["reset_s"],
                         "run2_s": d["run2_s"], "reclaim": d["reclaim"],
                         "cost_model": d["cost_model"], "aging": d["aging"],
                         "fault_latency_p99_ns": d["faults"]["fault_latency_p99_ns"]}
        if progress is not None:
            progress(run.key)
    rows = []
    for p in PUBLISHED:
        if p.kind == "run2_s":
            assert p.after_run is not None
            b, a = runs[p.before_run]["run2_s"], runs[p.after_run]["run2_s"]
            model_ratio = b / a if a and b is not None else None
            pub_ratio = (p.before / p.after) if p.before and p.after else None
            rows.append({"what": f"{p.what} {p.ratio_name}", "designs":
                         f"{p.before_run} / {p.after_run}",
                         "published": round(pub_ratio, 3) if pub_ratio else None,
                         "model": round(model_ratio, 3) if model_ratio else None,
                         "ratio": (round(model_ratio / pub_ratio, 3)
                                   if model_ratio and pub_ratio else None),
                         "note": f"published {p.before:g} s -> {p.after:g} s; model "
                                 f"{b:.6f} s -> {a:.6f} s"})
            continue
        if p.after_run is None:
            figures = [(p.what, p.before_run, p.before)]
        else:
            figures = [(f"{p.what} before", p.before_run, p.before),
                       (f"{p.what} after", p.after_run, p.after)]
        for what, key, pub in figures:
            model = kswapd_share(profiles[key], p.symbol, p.within)
            rows.append({"what": what, "designs": key,
                         "published": pub, "model": round(model, 2),
                         "ratio": round(model / pub, 3) if pub else None,
                         "note": "" if pub is not None else "not in the published profile"})
    return rows, runs, profiles


def render(rows: list[dict[str, Any]], runs: dict[str, dict[str, Any]]) -> str:
    head = ("figure", "design(s)", "published", "model", "model/published")
    body = [(r["what"], r["designs"], "gone" if r["published"] is None else
             f"{r['published']:g}", "n/a" if r["model"] is None else f"{r['model']:g}",
             "n/a" if r["ratio"] is None else f"{r['ratio']:.3f}") for r in rows]
    widths = [max(len(x[i]) for x in [head] + body) for i in range(len(head))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in body]
    lines.append("")
    for d in runs.values():
        rc = d["reclaim"]
        if "lru_classic" in rc:
            lc = rc["lru_classic"]
            kept = (f"{lc['activated']} activated, {lc['kept']} kept inactive, "
                    f"{lc['deactivated']} deactivated, {lc['refault_activated']} refaults "
                    "activated")
        else:
            lc = rc["lru_gen"]
            kept = f"{lc['activated']} kept referenced"
        ag = d["aging"]
        per = ("" if not ag["aged_pages"] else
               f"; aging: {ag['aged_pages']} page decisions, "
               f"{ag['notifier_calls_per_aged_page']:.3f} notifier calls and "
               f"{ag['mmu_lock_acquisitions_per_aged_page']:.3f} mmu_lock acquisitions "
               "per page")
        lines.append(f"{d['run']:<15} run1 {d['run1_s']:.6f} s, run2 {d['run2_s']:.6f} s; "
                     f"{lc['evicted']} evicted, {rc['swap_reads']} swapped in, {kept}, "
                     f"{rc['direct_reclaims']} direct reclaims{per} ({d['stands_for']})")
    lines.append("")
    lines += [f"not compared: {x}" for x in NOT_MODELLED]
    return "\n".join(lines)
