"""``youngsim compare``: designs side by side on the timed driver, one table, a report.

The default preset asks the question nobody measured: of the gain the 2023 series
promised, how much comes from dropping ``kvm->mmu_lock`` and how much from batching the
notifier calls? It crosses the two axes with four designs, plus the 2023 baseline:

==================  =========  =========  ==========================================
design              locking    calls      stands for
==================  =========  =========  ==========================================
upstream-6.12       locked     per page   Linux 6.12-6.14
upstream            lockless   per page   Linux 6.15 (what shipped)
reviewed-locked     locked     batched    the reviewer's "locked, batched" hypothesis
yu-v2               lockless   batched    the series as posted
legacy-noflush      locked     rmap only  the "before" kernel of the v2 numbers
==================  =========  =========  ==========================================

on ``access_tracking_perf_test -p`` over a vCPU sweep, and decomposes the effect of each
axis at the largest vCPU count. Every figure is computed by the model under the cost
model, at the small scale the per-operation simulation allows
(``perf/access_tracking.py``): read them as a comparison of designs, not as predictions
for a 1 GiB-per-vCPU run.

Outputs: a table on stdout, and a report folder with ``report.md``, ``results.json`` and
PNG plots (aging pass time, vCPU wall time and fault latency against the vCPU count).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Callable

from ..sim.costmodel import CostModel
from ..sim.profile import Profile
from .access_tracking import Config, run_access_tracking

AXES: dict[str, tuple[str, str]] = {
    "upstream-6.12": ("locked", "per-page"),
    "upstream": ("lockless", "per-page"),
    "reviewed-locked": ("locked", "batched"),
    "yu-v2": ("lockless", "batched"),
    "legacy-noflush": ("locked", "rmap-only"),
}


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    designs: tuple[str, ...]
    vcpus: tuple[int, ...]
    bytes_per_vcpu: int
    mmu: str = "x86-tdp"


PRESETS: dict[str, Preset] = {
    "default": Preset(
        "default",
        "locked vs lockless x per-page vs batched, access_tracking_perf_test -p, "
        "vCPU sweep",
        ("upstream-6.12", "upstream", "reviewed-locked", "yu-v2", "legacy-noflush"),
        (1, 2, 4, 8, 16), 256 << 10),
}

#: presets run by another module (``calibration.py``), not by ``run_compare``
OTHER_PRESETS = {"calibration": "the model beside the 2023 series' published figures "
                                "(max_guest_memory_test run2, kswapd profile shares)"}
NOT_BUILT: dict[str, str] = {}


class PresetError(ValueError):
    pass


def get_preset(name: str) -> Preset:
    if name in NOT_BUILT:
        raise PresetError(f"preset {name!r} {NOT_BUILT[name]}")
    if name not in PRESETS:
        raise PresetError(f"unknown preset {name!r} (known: "
                          f"{', '.join(list(PRESETS) + list(OTHER_PRESETS))})")
    return PRESETS[name]


#: virtual ns of on-CPU time per stack sample in the profiled runs
PROFILE_PERIOD_NS = 100


def run_compare(preset: Preset, cost_model: CostModel | None = None,
                progress: Callable[[str], None] | None = None,
                profiles: dict[str, Profile] | None = None) -> list[dict[str, Any]]:
    """Run every (design, vCPU count) of the preset; one row of figures each.
    ``progress(label)`` is called after each run. With ``profiles``, each design's run
    at the largest vCPU count is stack-sampled and its profile stored there."""
    rows = []
    vmax = max(preset.vcpus)
    for design in preset.designs:
        for v in preset.vcpus:
            period = PROFILE_PERIOD_NS if (profiles is not None and v == vmax) else 0
            cfg = Config(design, preset.mmu, vcpus=v, bytes_per_vcpu=preset.bytes_per_vcpu,
                         benchmark=True, profile_period_ns=period)
            res = run_access_tracking(cfg, cost_model)
            if period and profiles is not None and res.timed.profile is not None:
                profiles[design] = res.timed.profile
            d = res.data
            lock: dict[str, Any] = next(
                (lk for name, lk in d["locks"].items() if "mmu_lock" in name), {})
            acq = lock.get("acquisitions", 0)
            locking, calls = AXES.get(design, ("?", "?"))
            rows.append({
                "design": design, "locking": locking, "calls": calls, "vcpus": v,
                "ok": res.ok,
                "vcpu_wall_time_s": d["vcpu_wall_time_s"],
                "lru_gen_avg_pass_s": d["lru_gen_avg_pass_s"],
                "lru_gen_passes": d["lru_gen_passes"],
                "fault_latency_p50_ns": d["faults"]["fault_latency_p50_ns"],
                "fault_latency_p99_ns": d["faults"]["fault_latency_p99_ns"],
                "fault_latency_p999_ns": d["faults"]["fault_latency_p999_ns"],
                "mmu_lock_acquisitions": acq,
                "mmu_lock_contended": lock.get("contended", 0),
                "false_old": d["counters"].get("false_old", 0),
                "aged_pages": d["aging"]["aged_pages"],
                "notifier_calls_per_aged_page": d["aging"]["notifier_calls_per_aged_page"],
                "aging_mmu_lock_per_aged_page":
                    d["aging"]["mmu_lock_acquisitions_per_aged_page"],
                "cost_model": d.get("cost_model", ""),
            })
            if progress is not None:
                progress(f"{design} -v {v}")
    return rows


def decompose(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """At the largest vCPU count: the factor each axis changes pass time and vCPU wall
    time by, holding the other axis fixed (ratios of the model's own figures)."""
    vmax = max(r["vcpus"] for r in rows)
    at = {r["design"]: r for r in rows if r["vcpus"] == vmax}
    pairs = [
        ("drop the lock, per-page calls", "upstream-6.12", "upstream"),
        ("drop the lock, batched calls", "reviewed-locked", "yu-v2"),
        ("batch the calls, locked", "upstream-6.12", "reviewed-locked"),
        ("batch the calls, lockless", "upstream", "yu-v2"),
        ("both (6.12 -> yu-v2)", "upstream-6.12", "yu-v2"),
    ]
    out = []
    for what, a, b in pairs:
        if a not in at or b not in at:
            continue
        ra, rb = at[a], at[b]
        out.append({
            "change": what, "from": a, "to": b, "vcpus": vmax,
            "pass_time_factor": _ratio(ra["lru_gen_avg_pass_s"], rb["lru_gen_avg_pass_s"]),
            "vcpu_wall_factor": _ratio(ra["vcpu_wall_time_s"], rb["vcpu_wall_time_s"]),
        })
    return out


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


def render_table(rows: list[dict[str, Any]]) -> str:
    head = ("design", "locking", "calls", "vCPUs", "vCPU wall us", "pass us", "passes",
            "fault p50 ns", "fault p99 ns", "mmu_lock cont/acq", "calls/page",
            "locks/page", "false old")
    body = []
    for r in rows:
        body.append((r["design"], r["locking"], r["calls"], str(r["vcpus"]),
                     f"{r['vcpu_wall_time_s'] * 1e6:.1f}",
                     f"{r['lru_gen_avg_pass_s'] * 1e6:.2f}", str(r["lru_gen_passes"]),
                     str(r["fault_latency_p50_ns"]), str(r["fault_latency_p99_ns"]),
                     f"{r['mmu_lock_contended']}/{r['mmu_lock_acquisitions']}",
                     _per_page(r["notifier_calls_per_aged_page"]),
                     _per_page(r["aging_mmu_lock_per_aged_page"]), str(r["false_old"])))
    widths = [max(len(x[i]) for x in [head] + body) for i in range(len(head))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in body]
    return "\n".join(lines)


def _per_page(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def render_decomposition(dec: list[dict[str, Any]]) -> str:
    if not dec:
        return ""
    lines = [f"at {dec[0]['vcpus']} vCPUs: factor by which each change shortens "
             "(>1) or lengthens (<1) the figure"]
    for d in dec:
        lines.append(f"  {d['change']:<32} ({d['from']} -> {d['to']}): aging pass "
                     f"x{d['pass_time_factor']}, vCPU wall time x{d['vcpu_wall_factor']}")
    return "\n".join(lines)


def write_report(out_dir: str, preset: Preset, rows: list[dict[str, Any]],
                 dec: list[dict[str, Any]], command: str,
                 profiles: dict[str, Profile] | None = None) -> list[str]:
    """Write report.md, results.json, the plots and the profiles (folded stacks and a
    perf-report table per profiled design); return the paths written."""
    os.makedirs(out_dir, exist_ok=True)
    written = []
    data = {"preset": preset.name, "description": preset.description,
            "mmu": preset.mmu, "bytes_per_vcpu": preset.bytes_per_vcpu,
            "command": command, "rows": rows, "decomposition": dec}
    path = os.path.join(out_dir, "results.json")
    with open(path, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
    written.append(path)
    plots = _plots(out_dir, rows)
    written += plots
    tables = {}
    for design, prof in (profiles or {}).items():
        base = os.path.join(out_dir, f"profile-{design}")
        prof.write_folded(base + ".folded")
        tables[design] = prof.format_table(limit=None)
        with open(base + ".txt", "w", encoding="utf-8") as f:
            f.write(tables[design] + "\n")
        written += [base + ".folded", base + ".txt"]
    md = [f"# youngsim compare: preset `{preset.name}`", "",
          f"{preset.description}; MMU `{preset.mmu}`, {preset.bytes_per_vcpu >> 10} KiB per "
          f"vCPU. Command: `{command}`.", "",
          "Every figure below was computed by the model on virtual time "
          f"({rows[0]['cost_model'] if rows else 'no runs'}; see docs/cost-model.md), at "
          "a small scale: it compares designs; it does not predict a full-size run.", "",
          "## Results", "", "```", render_table(rows), "```", "",
          "`calls/page` and `locks/page`: aging notifier calls into KVM, and the "
          "`mmu_lock` acquisitions their walks took, per page the aging decided young or "
          "old (the two axes of the question: per-page vs batched calls, locked vs "
          "lockless); `mmu_lock cont/acq`: contended / all acquisitions of `mmu_lock` by "
          "any thread; `false old`: pages decided old although the guest had accessed "
          "them.", "",
          "## What each axis is worth", "", "```", render_decomposition(dec), "```", ""]
    for p in plots:
        md += [f"![{os.path.basename(p)}]({os.path.basename(p)})", ""]
    if profiles:
        vmax = max(r["vcpus"] for r in rows)
        md += ["## Profiles", "",
               f"Simulated call stacks of each design's run at {vmax} vCPUs, one sample per "
               f"{PROFILE_PERIOD_NS} ns of a thread's on-CPU virtual time (folded stacks for "
               "flamegraph tools in `profile-DESIGN.folded`). Top of each table:", ""]
        for design, prof in profiles.items():
            md += [f"### {design}", "", "```", prof.format_table(limit=15), "```", ""]
    path = os.path.join(out_dir, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(md))
    written.append(path)
    return written


def _plots(out_dir: str, rows: list[dict[str, Any]]) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    specs = [("lru_gen_avg_pass_s", 1e6, "aging pass (virtual us)", "pass_time.png"),
             ("vcpu_wall_time_s", 1e6, "slowest vCPU wall time (virtual us)",
              "vcpu_wall.png"),
             ("fault_latency_p99_ns", 1.0, "fault latency p99 (virtual ns)",
              "fault_p99.png")]
    designs = list(dict.fromkeys(r["design"] for r in rows))
    out = []
    for key, scale, label, name in specs:
        fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
        for d in designs:
            pts = [(r["vcpus"], (r[key] or 0) * scale) for r in rows if r["design"] == d]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o",
                    label=f"{d} ({AXES.get(d, ('?', '?'))[0]}, {AXES.get(d, ('?', '?'))[1]})")
        ax.set_xlabel("vCPUs")
        ax.set_ylabel(label)
        ax.set_xscale("log", base=2)
        ticks = sorted({r["vcpus"] for r in rows})
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = os.path.join(out_dir, name)
        fig.savefig(path, metadata={"Software": None})
        plt.close(fig)
        out.append(path)
    return out
