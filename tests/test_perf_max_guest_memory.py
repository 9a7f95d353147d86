"""The timed ``max_guest_memory_test`` scenario (``youngsim run``), at tiny sizes.

Every run here is 512 guest pages (2 MiB) on 2 vCPUs unless said otherwise; with the
default host memory (3/4 of the guest: 384 frames) the vCPUs fault the guest in under
reclaim, so kswapd ages, evicts to swap and run2 refaults. Runs of the same config are
shared through ``run()`` (the scenario is deterministic, and tests only read results).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re

import numpy as np
import pytest

from youngsim.cli import main
from youngsim.designs import DESIGNS, MMU_VARIANTS
from youngsim.kernel.mm.mm import pte_pfn
from youngsim.kernel.mm.page_alloc import watermarks
from youngsim.kernel.mm.reclaim import MAX_NR_GENS, MIN_NR_GENS, kswapd
from youngsim.kernel.mm.swap import is_swap_pte, swp_offset
from youngsim.kernel.system import PAGE_SIZE
from youngsim.perf.harness import perf_cost_model
from youngsim.perf.max_guest_memory import (MAX_TOTAL_PAGES, STEPS, Config, _Harness,
                                            run_max_guest_memory)
from youngsim.sim import Machine
from youngsim.sim.timed import TimedDriver

NPAGES = 512
SMALL = dict(vcpus=2, guest_bytes=NPAGES * PAGE_SIZE)
HOST_DEFAULT = NPAGES * 3 // 4  # 384 frames
WMIN, WLOW, WHIGH = watermarks(HOST_DEFAULT)
RESULT_RE = re.compile(r"^run1 = (\d+)\.(\d{9})s, reset = (\d+)\.(\d{9})s, "
                       r"run2 = (\d+)\.(\d{9})s$", re.MULTILINE)
JSON_KEYS = {"scenario", "config", "scale_note", "cost_model", "ok", "stopped", "violation",
             "checks", "run1_ns", "run1_s", "reset_ns", "reset_s", "run2_ns", "run2_s",
             "reclaim", "virtual_end_ns", "steps", "cpu_time_ns", "cpu_time_by_role_ns",
             "faults", "locks", "counters", "cas_attempts", "cas_failures",
             "atomic_contended", "tlb_flushes", "unknown_labels"}
RECLAIM_KEYS = {"watermarks", "free_at_end", "swap_writes", "swap_reads",
                "swap_slots_in_use_at_end", "lru_gen", "lru_gen_seq", "direct_reclaims"}
LRU_STATS = {"aging_passes", "isolated", "activated", "promoted", "evicted",
             "aging_skipped"}


def run(design: str, mmu: str = "x86-tdp", **kw):
    """One (shared, read-only) run of the scenario at the small size."""
    return _run(design, mmu, tuple(sorted(kw.items())))


@functools.lru_cache(maxsize=None)
def _run(design: str, mmu: str, kw: tuple):
    return run_max_guest_memory(Config(design=design, mmu=mmu, **{**SMALL, **dict(kw)}))


def applicable(design: str) -> list[str]:
    return [m for m in MMU_VARIANTS if DESIGNS[design].applies(m) is None]


def assert_completed_under_pressure(res) -> None:
    d = res.data
    assert res.ok and d["ok"] is True, res.render()
    assert d["stopped"] == "done" and d["violation"] is None
    assert res.checks == [] and d["checks"] == []
    assert set(res.steps) == set(STEPS)
    for step in STEPS:
        assert isinstance(d[f"{step}_s"], float) and d[f"{step}_s"] > 0
        assert d[f"{step}_ns"] == res.steps[step] > 0
        assert d[f"{step}_s"] == pytest.approx(d[f"{step}_ns"] / 1e9)
    assert not d["unknown_labels"]  # the cost model prices every reclaim operation
    rc = d["reclaim"]
    assert RECLAIM_KEYS <= set(rc) and set(rc["lru_gen"]) == LRU_STATS
    # pressure really happens: eviction in run1, refaults from swap in run2
    assert rc["lru_gen"]["evicted"] > 0 and rc["swap_writes"] > 0
    assert rc["swap_reads"] > 0 and rc["lru_gen"]["aging_passes"] > 0
    assert d["cpu_time_by_role_ns"]["kswapd"]["reclaim"] > 0
    assert d["faults"]["vcpu_faults"] >= NPAGES + rc["swap_reads"]
    # under pressure, run2 (refaults through swap) is far slower than the reset
    assert d["run2_ns"] > 100 * d["reset_ns"]


@pytest.mark.parametrize("design", list(DESIGNS))
def test_every_design_completes_under_pressure_on_x86_tdp(design):
    res = run(design)
    assert_completed_under_pressure(res)
    cfg = res.data["config"]
    assert cfg == {"design": design, "mmu": "x86-tdp", "vcpus": 2,
                   "guest_bytes": 2 << 20, "slot_bytes": 2 << 20,
                   "host_bytes": HOST_DEFAULT * PAGE_SIZE, "total_pages": NPAGES,
                   "host_pages": HOST_DEFAULT, "direct_reclaim": True, "lru": "mglru",
                   "seed": 0}
    assert res.data["reclaim"]["watermarks"] == {"min": WMIN, "low": WLOW, "high": WHIGH}


@pytest.mark.parametrize("mmu", [m for m in MMU_VARIANTS if m != "x86-tdp"])
def test_yu_v2_completes_under_pressure_on_every_mmu(mmu):
    if DESIGNS["yu-v2"].applies(mmu):
        pytest.skip(DESIGNS["yu-v2"].applies(mmu))
    assert_completed_under_pressure(run("yu-v2", mmu))


@pytest.mark.parametrize("design,mmu", [(d, "x86-tdp") for d in DESIGNS]
                         + [("yu-v2", m) for m in applicable("yu-v2") if m != "x86-tdp"])
def test_reclaim_accounting_relations(design, mmu):
    d = run(design, mmu).data
    rc, lg, cn = d["reclaim"], d["reclaim"]["lru_gen"], d["counters"]
    # every evicted folio was written to swap once, and counted as reclaimed
    assert rc["swap_writes"] == lg["evicted"] == cn["pages_reclaimed"]
    # one vCPU per page: no swap-in loses its PTE race, so each read is a swap-in
    assert rc["swap_reads"] == cn["swap_ins"] <= rc["swap_writes"]
    assert rc["swap_slots_in_use_at_end"] == rc["swap_writes"] - rc["swap_reads"]
    # an isolated folio is either kept (activated) or evicted, after one rmap decision
    assert lg["isolated"] == lg["activated"] + lg["evicted"] == cn["rmap_pages"]
    assert lg["activated"] == cn.get("rmap_young", 0)
    # each aging pass makes one generation; the window stays within the kernel's bounds
    seq = rc["lru_gen_seq"]
    assert seq["max"] == MIN_NR_GENS + 1 + lg["aging_passes"]
    assert MIN_NR_GENS <= seq["max"] - seq["min"] + 1 <= MAX_NR_GENS
    # frames: never more free than the host has; resident pages fit in what is not free
    assert 0 <= rc["free_at_end"] <= HOST_DEFAULT
    resident = NPAGES - rc["swap_slots_in_use_at_end"]
    assert resident + rc["free_at_end"] == HOST_DEFAULT
    assert d["tlb_flushes"] >= lg["evicted"]  # each unmap flushes the secondary MMU


def test_same_config_gives_identical_json():
    a = run("legacy-noflush")
    b = run_max_guest_memory(Config(design="legacy-noflush", mmu="x86-tdp", **SMALL))
    assert json.dumps(a.data, sort_keys=True) == json.dumps(b.data, sort_keys=True)
    assert a.steps == b.steps and a.samples == b.samples
    strip = re.compile(r"in \d+\.\d+ s wall")  # the only wall-clock figure
    assert strip.sub("", a.render()) == strip.sub("", b.render())


def test_seed_is_only_recorded():
    # the scenario makes no random choice: the seed changes nothing but its own field
    a = run("reviewed")
    b = run_max_guest_memory(Config(design="reviewed", mmu="x86-tdp", seed=3, **SMALL))
    assert b.data["config"]["seed"] == 3
    da = dict(a.data, config=dict(a.data["config"], seed=3))
    assert json.dumps(da, sort_keys=True) == json.dumps(b.data, sort_keys=True)


# -- no pressure: the host holds the whole guest above the low watermark ----------------

def test_no_eviction_when_the_guest_fits_above_the_low_watermark():
    host = NPAGES + 64  # the last fault leaves 64 free: not below the low watermark
    assert watermarks(host)[1] == 64
    res = run("yu-v2", host_bytes=host * PAGE_SIZE)
    d = res.data
    rc = d["reclaim"]
    assert res.ok and rc["watermarks"]["low"] == host - NPAGES
    assert rc["lru_gen"] == dict.fromkeys(LRU_STATS, 0)  # kswapd never woke
    assert rc["swap_writes"] == rc["swap_reads"] == rc["swap_slots_in_use_at_end"] == 0
    assert rc["free_at_end"] == host - NPAGES
    assert rc["lru_gen_seq"] == {"min": 0, "max": MIN_NR_GENS + 1}
    # one fault per page in run1, plus one retry per lost SPTE cmpxchg; none in run2
    assert d["faults"]["vcpu_faults"] == NPAGES + d["cas_failures"].get("spte_cmpxchg", 0)
    assert "swap_ins" not in d["counters"] and "pages_reclaimed" not in d["counters"]
    assert not any("swap" in name for name in d["locks"])
    mmu_lock = next(v for n, v in d["locks"].items() if "mmu_lock" in n)
    assert not any(k.startswith("kswapd") for k in mmu_lock["hold"])
    # run2 only walks the surviving SPTEs: much shorter than run1 and than under pressure
    pressured = run("yu-v2").data
    assert d["run2_ns"] * 10 < d["run1_ns"]
    assert d["run2_ns"] * 100 < pressured["run2_ns"]
    assert d["run1_ns"] < pressured["run1_ns"]


def test_one_frame_less_wakes_kswapd():
    host = NPAGES + 63  # the last fault leaves 63 free: below the low watermark
    assert watermarks(host)[1] == 64
    d = run("yu-v2", host_bytes=host * PAGE_SIZE).data
    lg = d["reclaim"]["lru_gen"]
    assert d["ok"] and lg["aging_passes"] >= 1 and lg["evicted"] > 0
    assert d["reclaim"]["free_at_end"] >= d["reclaim"]["watermarks"]["low"]


# -- design comparisons (robust directions only) --------------------------------------

@pytest.mark.parametrize("before", ["legacy", "legacy-noflush"])
@pytest.mark.parametrize("after", ["yu-v2", "reviewed", "upstream"])
def test_primary_only_designs_keep_far_more_folios_via_the_rmap_path(before, after):
    # the primary-only walk clears only the primary's accessed bit: the secondary's stays
    # set, and the rmap path then finds nearly every isolated folio "referenced"
    b, a = run(before).data, run(after).data
    lb, la = b["reclaim"]["lru_gen"], a["reclaim"]["lru_gen"]
    assert lb["activated"] > 10 * max(1, la["activated"])
    assert lb["activated"] > lb["isolated"] // 3
    assert lb["isolated"] > la["isolated"]  # more batches to find the same victims
    assert b["counters"]["false_young"] > 10 * max(1, a["counters"].get("false_young", 0))


def test_legacy_flushes_on_the_rmap_path():
    # legacy (v1 "before") clears young with a TLB flush; legacy-noflush does not
    fl, nf = run("legacy").data, run("legacy-noflush").data
    assert fl["tlb_flushes"] > nf["tlb_flushes"]
    assert nf["tlb_flushes"] == nf["reclaim"]["lru_gen"]["evicted"]  # the unmaps only
    assert fl["run1_ns"] > nf["run1_ns"]


# -- the end state of the host, checked on the System itself --------------------------

def run_with_harness(cfg: Config):
    """``run_max_guest_memory``'s run, keeping the harness (and so the System)."""
    cfg.validate()
    m = Machine()
    m.seed = cfg.seed
    h = _Harness(m, cfg)
    roles = {m.spawn(h.vcpu, i, name=f"vcpu{i}"): "vcpu" for i in range(cfg.vcpus)}
    roles[m.spawn(h.main, name="main")] = "harness"
    roles[m.spawn(kswapd, h.sys, name="kswapd0")] = "kswapd"
    return h, TimedDriver(m, perf_cost_model(), roles=roles).run()


@pytest.mark.parametrize("design,mmu,kw", [
    ("yu-v2", "x86-tdp", {}),
    ("legacy", "arm64", dict(vcpus=3, slot_bytes=1 << 20, host_bytes=300 * PAGE_SIZE)),
    ("upstream", "x86-shadow", dict(host_bytes=256 * PAGE_SIZE)),
])
def test_zone_swap_and_lru_agree_with_the_page_tables_at_the_end(design, mmu, kw):
    cfg = Config(design=design, mmu=mmu, **{**SMALL, **kw})
    h, r = run_with_harness(cfg)
    assert r.stopped == "done" and r.violation is None and h.checks == []
    if not kw:  # the helper replays the scenario exactly
        assert r.end_ns == run(design, mmu).data["virtual_end_ns"]
    sys, mm = h.sys, h.sys.mm
    for name, fn in h.invariants:  # coherence of primary and secondary MMUs
        assert fn(h.m) is None, name
    ptes = [int(p) for p in mm.ptes()]
    present = [i for i, p in enumerate(ptes) if p & 1]
    swapped = [p for p in ptes if is_swap_pte(p)]
    # every page was touched: it is resident or in swap
    assert len(present) + len(swapped) == cfg.total_pages
    # the zone: free frames + frames backing present PTEs == the host's frames
    assert mm.zone.nr_free_now() + len(present) == cfg.host_pages
    # swap: one distinct slot per swapped-out page, and nothing else in use
    slots = [swp_offset(p) for p in swapped]
    assert len(set(slots)) == len(slots) == mm.swap.in_use
    assert mm.swap.in_use == mm.swap.writes - mm.swap.reads
    # rmap and LRU: exactly the resident folios, each mapped where its PTE points
    assert set(mm.rmap) == set(mm.lru.folio_seq)
    assert sorted((a - mm.start) // PAGE_SIZE for a in mm.rmap.values()) == present
    for pfn, addr in mm.rmap.items():
        assert pte_pfn(ptes[(addr - mm.start) // PAGE_SIZE]) == pfn
    lru = mm.lru
    for seq, gen in lru.gens.items():
        assert lru.min_seq <= seq <= lru.max_seq
        assert all(lru.folio_seq[p] == seq for p in gen)
    assert sum(len(g) for g in lru.gens.values()) == lru.nr_folios()
    # the counters the JSON reports come from these same objects
    assert r.counters["swap_ins"] == mm.swap.reads
    assert r.counters["pages_reclaimed"] == lru.stats["evicted"] == mm.swap.writes
    # no secondary MMU maps a page the primary swapped out
    for kvm in sys.kvms:
        _, spresent, _, _ = kvm.arch.leaf_view()
        assert not np.any(np.asarray(spresent)[[i for i, p in enumerate(ptes)
                                                if not p & 1]])


# -- the kswapd profile ---------------------------------------------------------------

def kswapd_stacks(res):
    return [st for st in res.timed.profile.samples if st and st[0] == "[kswapd]"]


def frames(stacks, within=None):
    return {f for st in stacks if within is None or within in st for f in st}


@pytest.mark.parametrize("design", ["legacy-noflush", "yu-v2", "upstream"])
def test_kswapd_profile(design):
    res = run(design, profile_period_ns=1000)
    assert res.ok
    # sampling changes no figure
    plain = dict(run(design).data)
    assert json.dumps(plain, sort_keys=True) == json.dumps(res.data, sort_keys=True)
    ks = kswapd_stacks(res)
    samples = res.timed.profile.samples

    def children(f):  # kswapd's samples with ``f`` on the stack
        return sum(samples[st] for st in ks if f in st)
    for f in ("kswapd", "balance_pgdat", "shrink_folio_list", "folio_referenced",
              "try_to_unmap_one", "walk_mm"):
        assert children(f) > 0, f
    assert children("kswapd") >= children("shrink_folio_list") >= children("folio_referenced")
    rmap, walk = frames(ks, "folio_referenced"), frames(ks, "walk_mm")
    kvm_frames = {f for f in frames(ks)
                  if "kvm" in f or ("mmu_notifier" in f and "invalidate" not in f)}
    if design == "legacy-noflush":
        # rmap path: clear_young through the notifier; walk: the primary's PTEs only
        assert {"__mmu_notifier_clear_young", "kvm_mmu_notifier_clear_young",
                "lru_gen_look_around"} <= rmap
        assert not walk & kvm_frames
        assert "__mmu_notifier_test_clear_young" not in frames(ks)
    elif design == "yu-v2":
        # both callers go through test_clear_young, batched
        for callers in (rmap, walk):
            assert {"__mmu_notifier_test_clear_young", "kvm_mmu_notifier_test_clear_young",
                    "lru_gen_batch"} <= callers
        assert "should_look_around" in rmap
        assert "__mmu_notifier_clear_young" not in frames(ks)
    else:  # per-page: the walk calls clear_young for every PTE
        assert "__mmu_notifier_clear_young" in walk and "__mmu_notifier_clear_young" in rmap
        assert "__mmu_notifier_test_clear_young" not in frames(ks)


# -- the command line -----------------------------------------------------------------

def run_cli(capsys, *args):
    rc = main(["run", "max_guest_memory_test", *args])
    out, err = capsys.readouterr()
    return rc, out, err


D = ["--design", "yu-v2", "--mmu", "x86-tdp"]


def test_cli_prints_the_tools_line_and_writes_json(capsys, tmp_path):
    path = tmp_path / "out.json"
    rc, out, err = run_cli(capsys, *D, "-c", "2", "-m", "2M", "--json", str(path))
    assert rc == 0, out + err
    assert err == ""
    assert "small scale" in out and "costs.toml" in out  # honest header
    assert "-c 2 -m 2M -s 2M" in out and "512 guest pages, 384 host frames" in out
    mt = RESULT_RE.findall(out)
    assert len(mt) == 1
    ns = [int(mt[0][k]) * 10**9 + int(mt[0][k + 1]) for k in (0, 2, 4)]
    d = json.loads(path.read_text())
    assert JSON_KEYS <= set(d)
    assert d["scenario"] == "max_guest_memory_test" and d["ok"] is True
    assert ns == [d["run1_ns"], d["reset_ns"], d["run2_ns"]] and all(x > 0 for x in ns)
    assert [d["run1_s"], d["reset_s"], d["run2_s"]] == [x / 1e9 for x in ns]
    lg = d["reclaim"]["lru_gen"]
    assert (f"reclaim: {lg['evicted']} pages evicted, {d['reclaim']['swap_reads']} "
            f"swapped back in, {lg['activated']} kept as referenced") in out
    assert "checks: none" in out and out.rstrip().splitlines()[-1].startswith("PASS: ")
    # the CLI's run is the library's run
    assert json.dumps(d, sort_keys=True) == json.dumps(run("yu-v2").data, sort_keys=True)


def test_direct_reclaim_by_faulting_vcpus_and_the_switch_that_turns_it_off(capsys):
    on = run("legacy").data
    off_res = run("legacy", direct_reclaim=False)
    off = off_res.data
    assert on["config"]["direct_reclaim"] is True and off["config"]["direct_reclaim"] is False
    assert on["reclaim"]["direct_reclaims"] > 0 and off["reclaim"]["direct_reclaims"] == 0
    assert_completed_under_pressure(off_res)
    # direct reclaim in legacy: vCPUs clear young bits under mmu_lock for write
    lock = next(v for n, v in on["locks"].items() if "mmu_lock" in n)
    lock_off = next(v for n, v in off["locks"].items() if "mmu_lock" in n)
    assert "vcpu:write" in lock["hold"] and "vcpu:write" not in lock_off["hold"]
    assert "no direct reclaim" in off_res.render() and "no direct reclaim" not in \
        run("legacy").render()
    rc, out, err = run_cli(capsys, *D, "-c", "2", "-m", "2M", "--no-direct-reclaim")
    assert rc == 0 and "0 direct reclaims by faulting vCPUs" in out
    rc, out, err = run_cli(capsys, *D, "-c", "1", "-m", "1040K", "--host-mem", "1M")
    assert rc == 0 and "-m 1040K -s 1040K, host memory 1M" in out  # sizes not rounded
    rc = main(["run", "access_tracking_perf_test", *D, "--no-direct-reclaim"])
    out, err = capsys.readouterr()
    assert rc == 2 and out == "" and err.count("\n") == 1
    assert "--no-direct-reclaim is not an option of access_tracking_perf_test" in err


@pytest.mark.parametrize("args,needle", [
    (["-v", "2"], "option -v is not an option of max_guest_memory_test"),
    (["-b", "32K"], "option -b is not an option of max_guest_memory_test"),
    (["-p"], "option -p is not an option of max_guest_memory_test"),
    (["--keep-tlb"], "option --keep-tlb is not an option of max_guest_memory_test"),
    (["--per-page-faults"],
     "option --per-page-faults is not an option of max_guest_memory_test"),
    # a bare -m is GiB, as in the selftest: 1 GiB is above the cap
    (["-m", "1"], f"-m {1 << 30} bytes is {(1 << 30) // PAGE_SIZE} pages, above"),
    (["-m", f"{(MAX_TOTAL_PAGES + 1) * PAGE_SIZE >> 10}K"], "above this build's cap"),
    (["-m", "2M", "--host-mem", "512K"], "--host-mem gives 128 frames"),
    (["-m", "1M"], "192 frames"),  # the default host (3/4 of the guest) is too small
    (["-m", "2M", "--host-mem", "1000"], "multiple of the 4 KiB page size"),
    (["-m", "2M", "-s", "3K"], "-s must be a positive multiple"),
    (["-m", "2M", "-c", "0"], "expected a positive integer"),
    (["-m", "2M", "-c", "513"], "at least one page per vCPU"),
    (["-m", "lots"], "expected a size"),
    (["-m", "4096B"], "-m gives 1 pages for 4 vCPUs"),  # bytes, not GiB
])
def test_cli_refusals(capsys, args, needle):
    rc, out, err = run_cli(capsys, *D, *args)
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("youngsim: error: ")
    assert needle in err, err
    assert "Traceback" not in err


@pytest.mark.parametrize("args,needle", [
    (["--design", "nope", "--mmu", "x86-tdp"], "unknown design 'nope'"),
    (["--design", "yu-v2", "--mmu", "riscv"], "unknown MMU variant 'riscv'"),
    (["--design", "yu-v2"], "run needs --design and --mmu"),
])
def test_cli_refuses_bad_models(capsys, args, needle):
    rc, out, err = run_cli(capsys, "-m", "2M", *args)
    assert rc == 2 and out == "" and err.count("\n") == 1 and needle in err


def test_config_caps_and_defaults():
    assert Config("yu-v2", "x86-tdp").total_pages == (32 << 20) // PAGE_SIZE
    assert Config("yu-v2", "x86-tdp", **SMALL).host_pages == HOST_DEFAULT
    assert Config("yu-v2", "x86-tdp", **SMALL).slot_pages == NPAGES
    Config("yu-v2", "x86-tdp", vcpus=1,
           guest_bytes=MAX_TOTAL_PAGES * PAGE_SIZE).validate()  # exactly the cap is fine
    big = dataclasses.replace(Config("yu-v2", "x86-tdp"),
                              guest_bytes=(MAX_TOTAL_PAGES + 1) * PAGE_SIZE)
    with pytest.raises(ValueError, match="above this build's cap"):
        big.validate()
    with pytest.raises(ValueError, match="at least 256"):
        Config("yu-v2", "x86-tdp", guest_bytes=1 << 20, host_bytes=255 * PAGE_SIZE).validate()
    Config("yu-v2", "x86-tdp", guest_bytes=1 << 20, host_bytes=256 * PAGE_SIZE).validate()
