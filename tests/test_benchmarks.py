"""The scale benchmark still runs end to end (tiny sizes: this checks the script and
the model state it verifies, not its speed, which is printed, never asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_aging_scale.py"


def run(*args: str, script: Path = BENCH) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(script), *args], capture_output=True,
                          text=True, timeout=600)


def assert_one_line_error(r: subprocess.CompletedProcess[str], text: str) -> None:
    """Bad input: exit 2 and one stderr line that says ``text``."""
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0, r.stderr
    assert text in r.stderr


@pytest.mark.parametrize("mmu", ["x86-tdp", "arm64", "arm64-swaf"])
def test_aging_scale_benchmark_runs_and_checks_the_model_state(mmu):
    r = run("--size", "256M", "--chunk", "2048", "--designs", "upstream,yu-v2", "--mmu", mmu)
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stdout.splitlines() if " all young " in ln]
    assert len(lines) == 2, r.stdout
    assert "MODEL STATE WRONG" not in r.stdout
    assert "target <= 2x" in r.stdout


def test_aging_scale_benchmark_rejects_bad_input_in_one_line():
    r = run("--designs", "nope")
    assert_one_line_error(r, "unknown design 'nope'")
    r = run("--mmu", "x86-shadow")  # not one the benchmark ages in runs
    assert_one_line_error(r, "unknown --mmu 'x86-shadow'")


LOCK_BENCH = BENCH.parent / "bench_lock_cycles.py"


@pytest.mark.parametrize("writer", [[], ["--no-writer"], ["--body"],
                                    ["--body", "--stagger"]])
def test_lock_cycle_benchmark_runs_both_ways_with_the_same_result(writer):
    r = run("--vcpus", "6", "--faults", "600", "--repeat", "1", "--no-pin", *writer,
            script=LOCK_BENCH)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "timed result of the two runs: identical" in r.stdout
    assert "lock_cycles / loop" in r.stdout


def test_lock_cycle_benchmark_rejects_bad_input_in_one_line():
    r = run("--faults", "0", script=LOCK_BENCH)
    assert_one_line_error(r, "counts must be >= 1 and times >= 0")


STREAM_BENCH = BENCH.parent / "bench_fault_stream.py"


def test_fault_stream_benchmark_runs_both_ways_with_the_same_result():
    r = run("-v", "4", "-b", "256K", "--rounds", "1", script=STREAM_BENCH)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("results identical") == 2
    assert "per page / streams" in r.stdout


def test_fault_stream_benchmark_rejects_bad_input_in_one_line():
    r = run("-b", "3K", script=STREAM_BENCH)
    assert_one_line_error(r, "multiple of the 4 KiB page size")


FULL_BENCH = BENCH.parent / "bench_full_scale.py"


def test_full_scale_benchmark_prints_its_extrapolation_as_such():
    r = run("--designs", "upstream,yu-v2", "-v", "2", "-b", "64K", "--memory-bytes",
            "128K", script=FULL_BENCH)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "(vCPUs alone)" in out and " upstream " in out and " yu-v2 " in out
    # the floor and each design: a wall-time extrapolation each
    assert len([ln for ln in out.splitlines() if "-> full size ~" in ln
                and ln.endswith(" min")]) == 3
    assert "memory (upstream): 64 pages (-b 128K, under the cap)" in out
    # at this size nothing reaches the full-size target: the verdict says FAIL, and says
    # it is an extrapolation, not a measurement
    assert "FAIL (by extrapolation" in out


def test_full_scale_benchmark_rejects_bad_input_in_one_line():
    r = run("--designs", "nope", script=FULL_BENCH)
    assert_one_line_error(r, "unknown design 'nope'")
    for b, mem in (("2M", "1M"), ("4K", "6K")):  # not larger than -b; not whole pages
        r = run("-v", "1", "-b", b, "--memory-bytes", mem, script=FULL_BENCH)
        assert_one_line_error(r, f"--memory-bytes {mem} must be a multiple of")
    r = run("--memory-bytes", "1G", script=FULL_BENCH)  # would be the full size itself
    assert_one_line_error(r, "above the memory run's limit")
