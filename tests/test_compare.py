"""youngsim compare: the runs, the decomposition, the report folder, the CLI."""

from __future__ import annotations

import json
import os

import pytest

from youngsim.cli import main
from youngsim.perf.compare import Preset, decompose, run_compare, write_report

MINI = Preset("mini", "test preset",
              ("upstream-6.12", "upstream", "reviewed-locked", "yu-v2"), (1, 2), 16 << 10)


@pytest.fixture(scope="module")
def rows():
    return run_compare(MINI)


def test_one_row_per_design_and_vcpu_count(rows):
    assert [(r["design"], r["vcpus"]) for r in rows] == [
        (d, v) for d in MINI.designs for v in MINI.vcpus]
    for r in rows:
        assert r["ok"] and r["vcpu_wall_time_s"] > 0 and r["lru_gen_passes"] >= 1
        assert r["fault_latency_p50_ns"] <= r["fault_latency_p99_ns"]


def test_locking_axis_shows_in_lock_traffic(rows):
    """Lockless designs never take mmu_lock for write while aging; locked ones do, so
    they take it more often than the vCPUs' faults alone would."""
    by = {(r["design"], r["vcpus"]): r for r in rows}
    for v in MINI.vcpus:
        assert by[("upstream", v)]["mmu_lock_acquisitions"] < \
            by[("upstream-6.12", v)]["mmu_lock_acquisitions"]
        assert by[("yu-v2", v)]["mmu_lock_acquisitions"] < \
            by[("reviewed-locked", v)]["mmu_lock_acquisitions"]


def test_decomposition_is_ratios_of_the_rows(rows):
    dec = {d["change"]: d for d in decompose(rows)}
    top = {r["design"]: r for r in rows if r["vcpus"] == 2}
    d = dec["batch the calls, locked"]
    assert d["vcpus"] == 2
    assert d["pass_time_factor"] == round(top["upstream-6.12"]["lru_gen_avg_pass_s"]
                                          / top["reviewed-locked"]["lru_gen_avg_pass_s"], 3)


def test_same_inputs_same_rows(rows):
    assert run_compare(MINI) == rows


def test_report_folder(rows, tmp_path):
    paths = write_report(str(tmp_path), MINI, rows, decompose(rows), "youngsim compare")
    names = sorted(os.path.basename(p) for p in paths)
    assert names == ["fault_p99.png", "pass_time.png", "report.md", "results.json",
                     "vcpu_wall.png"]
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["rows"] == json.loads(json.dumps(rows))
    md = (tmp_path / "report.md").read_text()
    assert "small scale" in md and "pass_time.png" in md
    assert (tmp_path / "pass_time.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("preset,needle", [("nope", "unknown preset"),
                                            ("nope", "calibration")])
def test_bad_presets_are_one_line_errors(preset, needle, capsys):
    assert main(["compare", "--preset", preset]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0]


def test_profiles_of_the_largest_runs_go_into_the_report(tmp_path):
    profiles: dict = {}
    rows = run_compare(Preset("p", "t", ("upstream-6.12", "yu-v2"), (1, 2), 16 << 10),
                       profiles=profiles)
    assert sorted(profiles) == ["upstream-6.12", "yu-v2"]
    # sampling does not change what is measured
    assert rows == run_compare(Preset("p", "t", ("upstream-6.12", "yu-v2"), (1, 2),
                                      16 << 10))
    # the locked per-page design's aging runs through kvm_handle_hva_range under the lock
    assert "queued_write_lock_slowpath" in profiles["upstream-6.12"].folded() or \
        "kvm_handle_hva_range" in profiles["upstream-6.12"].folded()
    paths = write_report(str(tmp_path), MINI, rows, decompose(rows), "c", profiles)
    names = {os.path.basename(p) for p in paths}
    assert {"profile-yu-v2.folded", "profile-yu-v2.txt"} <= names
    folded = (tmp_path / "profile-yu-v2.folded").read_text().splitlines()
    assert folded and all(ln.rsplit(" ", 1)[1].isdigit() for ln in folded)
    assert "## Profiles" in (tmp_path / "report.md").read_text()


def test_run_writes_a_profile(tmp_path, capsys):
    out = tmp_path / "prof"
    rc = main(["run", "access_tracking_perf_test", "-p", "-v", "2", "-b", "16K",
               "--design", "upstream", "--mmu", "x86-tdp", "--profile", str(out)])
    assert rc == 0
    table = (out / "profile.txt").read_text()
    assert "Children" in table and "guest_access" in table
    assert (out / "profile.folded").read_text().strip()
