"""The timed ``access_tracking_perf_test`` scenario (``youngsim run``), at tiny sizes."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from youngsim.cli import main
from youngsim.perf import MAX_TOTAL_PAGES, Config, parse_size, run_access_tracking
from youngsim.perf.harness import fmt_size

SMALL = ["-v", "2", "-b", "32K"]
STEP_RE = re.compile(r"^(.{30}): (\d+)\.(\d{9})s$")
STEPS = ["Populating memory", "Writing to populated memory", "Reading from populated memory",
         "Mark memory idle (lru_gen)", "Writing to idle memory", "Mark memory idle (lru_gen)",
         "Reading from idle memory"]
JSON_KEYS = {"scenario", "mode", "config", "cost_model", "scale_note", "ok", "phases",
             "checks", "cpu_time_ns", "cpu_time_by_role_ns", "faults", "locks", "counters",
             "steps", "virtual_end_ns"}
BENCH_KEYS = {"vcpu_wall_time_s", "lru_gen_avg_pass_s", "lru_gen_passes", "lru_gen_total_s"}


def run_cli(capsys, *args):
    rc = main(["run", "access_tracking_perf_test", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def step_lines(out):
    rows = []
    for line in out.splitlines():
        mt = STEP_RE.match(line)
        if mt:
            rows.append((mt.group(1).rstrip(), int(mt.group(2)) * 10**9 + int(mt.group(3))))
    return rows


# one locked (write-locked, per page) and one lockless design
@pytest.mark.parametrize("design", ["upstream-6.12", "upstream"])
def test_default_mode_steps_checks_and_json(capsys, tmp_path, design):
    path = tmp_path / "out.json"
    rc, out, err = run_cli(capsys, *SMALL, "--design", design, "--mmu", "x86-tdp",
                           "--json", str(path))
    assert rc == 0, out + err
    assert "costs.toml" in out and "small scale" in out  # honest header
    rows = step_lines(out)
    assert [n for n, _ in rows] == STEPS
    assert all(ns > 0 for _, ns in rows)
    assert out.count("check PASS") == 4 and "check FAIL" not in out
    d = json.loads(path.read_text())
    assert JSON_KEYS <= set(d)
    assert d["ok"] is True and d["mode"] == "default"
    assert [p["name"] for p in d["phases"]] == STEPS
    assert all(p["ns"] > 0 and p["s"] > 0 for p in d["phases"])
    idle = [c for c in d["checks"] if c["name"].startswith("idle")]
    again = [c for c in d["checks"] if c["name"].startswith("accessed again")]
    assert len(idle) == 2 and all(c["status"] == "pass" and c["value"] <= 0.1 for c in idle)
    assert len(again) == 2 and all(c["status"] == "pass" and c["value"] >= 0.9 for c in again)
    assert d["faults"]["vcpu_faults"] >= 16  # every page (2 x 8) faults in once
    assert d["cpu_time_ns"]["fault"] > 0 and d["cpu_time_ns"]["guest"] > 0
    assert any("mmu_lock" in n for n in d["locks"])
    assert not d["unknown_labels"]
    if design == "upstream-6.12":  # aging takes mmu_lock for write
        lk = next(v for n, v in d["locks"].items() if "mmu_lock" in n)
        assert "aging:write" in lk["hold"]


@pytest.mark.parametrize("design", ["reviewed-locked", "yu-v2"])
def test_benchmark_mode(capsys, tmp_path, design):
    path = tmp_path / "bench.json"
    rc, out, err = run_cli(capsys, *SMALL, "-p", "--design", design, "--mmu", "x86-tdp",
                           "--json", str(path))
    assert rc == 0, out + err
    assert re.search(r"^vcpu wall time {16}: \d+\.\d{9}s$", out, re.MULTILINE)
    assert re.search(r"^lru_gen avg pass duration : \d+\.\d{9}s, \(passes:\d+, "
                     r"total:\d+\.\d{9}s\)$", out, re.MULTILINE)
    d = json.loads(path.read_text())
    assert BENCH_KEYS <= set(d) and JSON_KEYS <= set(d)
    assert d["vcpu_wall_time_s"] > 0 and d["lru_gen_passes"] >= 1
    assert d["lru_gen_avg_pass_s"] > 0
    assert d["lru_gen_total_s"] == pytest.approx(d["lru_gen_avg_pass_s"] * d["lru_gen_passes"])
    # the aging thread stopped (the run ended) and did its passes as the aging role
    assert d["stopped"] == "done" and d["cpu_time_by_role_ns"]["aging"]["aging"] > 0


def test_deterministic_json_bit_for_bit(capsys, tmp_path):
    texts = []
    for i in range(2):
        p = tmp_path / f"r{i}.json"
        rc, _, _ = run_cli(capsys, *SMALL, "-p", "--design", "upstream-6.12",
                           "--mmu", "x86-tdp", "--seed", "7", "--json", str(p))
        assert rc == 0
        texts.append(p.read_bytes())
    assert texts[0] == texts[1]
    a = run_access_tracking(Config("upstream", "x86-tdp", vcpus=2, bytes_per_vcpu=32768))
    b = run_access_tracking(Config("upstream", "x86-tdp", vcpus=2, bytes_per_vcpu=32768))
    assert json.dumps(a.to_dict()) == json.dumps(b.to_dict())


def test_primary_only_design_fails_the_idle_check_as_a_report(capsys):
    # legacy MGLRU never ages the secondary MMU: a reported failure, exit 1, no traceback
    rc, out, err = run_cli(capsys, "-v", "1", "-b", "16K", "--design", "legacy-noflush",
                           "--mmu", "x86-tdp")
    assert rc == 1 and "Traceback" not in out + err
    assert "check FAIL idle" in out and "never consults the secondary MMU" in out


def test_a_bitmap_call_without_the_fast_path_is_explained_when_idle_fails(capsys):
    # yu-v2's batched MGLRU calls pass a bitmap; on a stage 2 without hardware AF there
    # is no lockless path and such a call returns 0 without aging (the design's rule)
    rc, out, err = run_cli(capsys, "-v", "1", "-b", "16K", "--design", "yu-v2",
                           "--mmu", "arm64-swaf")
    assert rc == 1 and "Traceback" not in out + err
    assert "check FAIL idle" in out and "without the lockless fast path" in out
    rc, out, _ = run_cli(capsys, "-v", "1", "-b", "16K", "--design", "yu-v2",
                         "--mmu", "arm64")
    assert rc == 0 and "without the lockless fast path" not in out


def test_keep_tlb_turns_the_young_again_check_into_a_warning(capsys):
    rc, out, _ = run_cli(capsys, "-v", "1", "-b", "16K", "--keep-tlb", "--design",
                         "upstream", "--mmu", "x86-tdp")
    assert rc == 0 and "check WARN" in out


def test_a_livelocked_access_is_reported_not_run_forever(capsys):
    """-p on a few pages with A/D bits off: each aging pass (shorter than a fault's
    round trip) access-tracks the page again before the vCPU's walk, so an access
    never retires. The run stops with a ``livelock`` violation instead of hanging
    (found by a review: before, this ran until killed)."""
    rc, out, _ = run_cli(capsys, "-v", "3", "-b", "12K", "-p", "--seed", "1",
                         "--design", "reviewed", "--mmu", "x86-tdp-noad")
    assert rc == 1
    assert "livelock: vcpu" in out and "faulted 1001 times" in out


def test_per_page_faults_gives_the_same_json(capsys, tmp_path):
    """``--per-page-faults`` runs every fault through the per-page code: the JSON is the
    same as with fault streams, apart from the config echo."""
    import json
    outs = []
    for extra in ([], ["--per-page-faults"]):
        path = tmp_path / f"r{len(outs)}.json"
        rc, _, _ = run_cli(capsys, "-v", "2", "-b", "256K", "-p", "--design", "upstream",
                           "--mmu", "x86-tdp", "--json", str(path), *extra)
        assert rc == 0
        d = json.loads(path.read_text())
        d.pop("wall_s", None)
        outs.append(d)
    a, b = outs
    assert a["config"].pop("fault_streams") is True
    assert b["config"].pop("fault_streams") is False
    assert a == b


D = ["--design", "upstream", "--mmu", "x86-tdp"]


@pytest.mark.parametrize("args, msg", [
    (["-b", "3K", *D], "multiple of the 4 KiB page size"),
    (["-b", "12Q", *D], "expected a size"),
    (["-v", "0", *D], "positive integer"),
    (["-v", "64", "-b", "8M", *D], f"cap of {MAX_TOTAL_PAGES} pages"),
    (["--design", "nope", "--mmu", "x86-tdp"], "unknown design"),
    (["--design", "upstream", "--mmu", "nope"], "unknown MMU variant"),
    (["--cost-model", "/nonexistent/costs.toml", *D], "cannot read cost model"),
    (["--seed", "-1", *D], "non-negative integer"),
])
def test_bad_options_exit_2_with_one_line(capsys, args, msg):
    rc, out, err = run_cli(capsys, *args)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("youngsim: error:") and msg in lines[0]
    assert "Traceback" not in out + err


def test_cap_message_says_chunked_timing_is_not_built(capsys):
    rc, _, err = run_cli(capsys, "-v", "64", "-b", "8M", "--design", "upstream",
                         "--mmu", "x86-tdp")
    assert rc == 2 and "chunked timing is not built yet" in err


def test_missing_design_and_unknown_scenario(capsys):
    rc, _, err = run_cli(capsys, "--design", "upstream")
    assert rc == 2 and len(err.strip().splitlines()) == 1
    rc = main(["run", "nope", "--design", "upstream", "--mmu", "x86-tdp"])
    _, err = capsys.readouterr()
    assert rc == 2 and "unknown scenario" in err


def test_parse_size():
    assert parse_size("4096") == 4096
    assert parse_size("64K") == 65536 and parse_size("64k") == 65536
    assert parse_size("2M") == 2 << 20 and parse_size("1G") == 1 << 30
    assert parse_size("32KiB") == 32768
    with pytest.raises(ValueError):
        parse_size("1.5M")
    # a bare number takes the default unit; a "B" suffix always means bytes
    assert parse_size("2", "g") == 2 << 30 and parse_size("2M", "g") == 2 << 20
    assert parse_size("4096B", "g") == 4096 and parse_size("4096b", "g") == 4096


@given(st.integers(min_value=1, max_value=1 << 50))
def test_fmt_size_round_trips_through_parse_size(n):
    text = fmt_size(n)
    assert parse_size(text, "g") == n
    assert text[-1] in "TGMKB"


@pytest.mark.parametrize("design, calls, locks", [
    ("upstream-6.12", (1.0, 1.0), (1.0, 1.0)),  # a locked call per page
    ("upstream", (1.0, 1.0), (0.0, 0.0)),  # a lockless call per page
    ("reviewed-locked", (1 / 64, 1 / 64), (1 / 64, 1 / 64)),  # one locked call per batch
    ("yu-v2", (1 / 64, 3 / 64), (0.0, 0.0)),  # test + clear calls per batch, lockless
    ("legacy-noflush", (0.0, 0.0), (0.0, 0.0)),  # the walk never calls the notifier
])
def test_aging_cost_per_page_separates_the_two_axes(design, calls, locks):
    """The `aging` figures: notifier calls and mmu_lock acquisitions per page the aging
    decided, and the accuracy counters beside them."""
    res = run_access_tracking(Config(design, "x86-tdp", vcpus=2, bytes_per_vcpu=128 * 1024,
                                     benchmark=True))
    ag = res.data["aging"]
    assert ag["aged_pages"] == res.data["counters"]["walk_pages"] > 0
    eps = 1e-6  # the figures are rounded to 6 decimals
    assert calls[0] - eps <= ag["notifier_calls_per_aged_page"] <= calls[1] + eps
    assert locks[0] - eps <= ag["mmu_lock_acquisitions_per_aged_page"] <= locks[1] + eps
    assert ag["false_old"] == res.data["counters"].get("false_old", 0)
    assert ag["lost_to_concurrent_writers"] == 0 and ag["young_dropped_at_zap"] == 0


# -- --page-idle: idle marking through /sys/kernel/mm/page_idle/bitmap --------------------

@pytest.mark.parametrize("design", ["legacy", "upstream-6.12", "upstream", "yu-v2",
                                    "reviewed"])
def test_page_idle_mode_marks_and_checks_like_the_selftest(design):
    cfg = Config(design, "x86-tdp", vcpus=2, bytes_per_vcpu=256 * 1024, page_idle=True)
    res = run_access_tracking(cfg)
    d = res.data
    assert res.ok and d["config"]["page_idle"]
    names = [p["name"] for p in d["phases"]]
    assert names.count("Mark memory idle") == 2 and "Mark memory idle (lru_gen)" not in names
    checks = {c["name"]: c["status"] for c in d["checks"]}
    # page_idle reaches the secondary MMU through ptep_clear_young_notify in every
    # design, the primary-only MGLRU walk of legacy included
    assert checks["idle: at most 10% still young"] == "pass"
    assert checks["page_idle: fewer than 10% still idle"] == "pass"
    assert checks["accessed again: at least 90% young"] == "pass"
    # reading a bitmap word walks every idle folio of the word: each vCPU's 64 pages
    # fill one word, so a mark walks sum(k, k < 64) folios for the reads (2016), plus
    # one per write (64), plus, the second time, the 64 folios the first read finds
    # referenced: 2080 + 2144 per vCPU
    assert d["counters"]["page_idle_pages"] == 2 * (2080 + 2144)
    assert d["aging"]["aged_pages"] == d["counters"]["page_idle_pages"]
    assert d["aging"]["notifier_calls_per_aged_page"] == 1.0
    # the idle marking runs in each vCPU's own thread, as aging work
    assert d["cpu_time_by_role_ns"]["aging"]["aging"] > 0


def test_page_idle_keep_tlb_warns_for_pages_still_idle(capsys):
    code, out, _ = run_cli(capsys, "-v", "1", "-b", "64K", "--page-idle", "--keep-tlb",
                           "--design", "upstream", "--mmu", "x86-tdp")
    assert code == 0
    assert re.search(r"check WARN page_idle: fewer than 10% still idle: .*\[16\] of 16", out)


def test_page_idle_refuses_benchmark_mode(capsys):
    code, _, err = run_cli(capsys, "-p", "--page-idle", "--design", "upstream", "--mmu",
                           "x86-tdp")
    assert code == 2 and "cannot be combined with --page-idle" in err
    assert len(err.strip().splitlines()) == 1
