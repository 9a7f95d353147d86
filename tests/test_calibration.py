"""The calibration preset: published figures beside the model's (perf/calibration.py)."""

import json

import pytest

from youngsim.cli import main
from youngsim.designs import DESIGNS
from youngsim.perf import calibration as cal
from youngsim.sim.profile import Profile


def _profile(stacks: dict) -> Profile:
    p = Profile(1000)
    for st, n in stacks.items():
        p.add(st, n)
    return p


def test_share_counts_only_kswapd_samples_and_maps_kernel_symbols():
    p = _profile({
        ("[kswapd]", "kswapd", "shrink_folio_list", "folio_referenced"): 30,
        ("[kswapd]", "kswapd", "shrink_folio_list", "try_to_unmap_one",
         "__kvm_handle_hva_range", "queued_write_lock_slowpath"): 10,
        ("[kswapd]", "kswapd", "shrink_folio_list", "folio_referenced",
         "should_look_around", "lru_gen_batch"): 10,
        ("[kswapd]", "kswapd", "walk_mm", "walk_pte_range"): 50,
        ("[vcpu]", "vcpu", "folio_referenced"): 1000,  # not kswapd: ignored
    })
    assert cal.kswapd_share(p, "folio_referenced") == pytest.approx(40.0)
    assert cal.kswapd_share(p, "shrink_folio_list") == pytest.approx(50.0)
    assert cal.kswapd_share(p, "_raw_write_lock") == pytest.approx(10.0)
    assert cal.kswapd_share(p, "lru_gen_look_around") == pytest.approx(10.0)
    assert cal.kswapd_share(p, "nothing_like_this") == 0.0
    assert cal.kswapd_share(_profile({}), "folio_referenced") == 0.0


def test_published_figures_name_modelled_runs():
    runs = {r.key: r for r in cal.RUNS}
    assert len(runs) == len(cal.RUNS)
    for r in cal.RUNS:
        assert r.design in DESIGNS and r.lru in ("mglru", "classic")
    for p in cal.PUBLISHED:
        assert p.before_run in runs
        assert p.after_run is None or p.after_run in runs
        assert p.before is not None or p.after is not None
        if p.after_run is None:  # a figure of one run
            assert p.after is None and p.kind == "share"
    # "MGLRU off" is the v1 base kernel (legacy) with the classic LRU
    off = runs[cal.MGLRU_OFF]
    assert (off.design, off.lru) == ("legacy", "classic")


@pytest.fixture(scope="module")
def small(monkeypatch_module):
    monkeypatch_module.setattr(cal, "VCPUS", 2)
    monkeypatch_module.setattr(cal, "GUEST_BYTES", 2 << 20)
    return cal.run_calibration()


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def test_rows_are_the_models_own_ratios(small):
    rows, runs, profiles = small
    assert all(r["ok"] for r in runs.values())
    by = {r["what"]: r for r in rows}
    v2 = by["max_guest_memory_test run2 (s), v2 before/after"]
    want = runs["legacy-noflush"]["run2_s"] / runs["yu-v2"]["run2_s"]
    assert v2["model"] == pytest.approx(want, rel=1e-3)
    assert v2["published"] == pytest.approx(64 / 51, rel=1e-3)
    assert v2["ratio"] == pytest.approx(v2["model"] / v2["published"], rel=1e-3)
    for r in rows:
        if "kswapd %" in r["what"]:
            assert 0.0 <= r["model"] <= 100.0
            assert (r["ratio"] is None) == (r["published"] is None)


def test_locked_clear_young_shows_in_the_before_profile_only(small):
    rows, _, profiles = small
    before = cal.kswapd_share(profiles["legacy-noflush"], "__mmu_notifier_clear_young")
    after = cal.kswapd_share(profiles["yu-v2"], "__mmu_notifier_clear_young")
    assert before > 0.0 and after == 0.0
    assert cal.kswapd_share(profiles["yu-v2"], "__mmu_notifier_test_clear_young") > 0.0
    assert cal.kswapd_share(profiles["legacy-noflush"],
                            "__mmu_notifier_test_clear_young") == 0.0
    text = cal.render(*small[:2])
    assert "not compared" in text and "MGLRU off" in text


def test_cli_writes_the_calibration_report(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(cal, "VCPUS", 2)
    monkeypatch.setattr(cal, "GUEST_BYTES", 2 << 20)
    assert main(["compare", "--preset", "calibration", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "model/published" in out
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["preset"] == "calibration" and data["rows"]
    assert (tmp_path / "profile-yu-v2.folded").read_text().count("[kswapd]") > 0
    assert "Model beside the published figures" in (tmp_path / "report.md").read_text()


def test_cli_refuses_a_preset_too_small_in_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(cal, "GUEST_BYTES", 1 << 20)  # 192 host frames: below the floor
    assert main(["compare", "--preset", "calibration", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "default host memory" in err[0]
    assert not (tmp_path / "results.json").exists()
