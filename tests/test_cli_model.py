"""``youngsim`` command line, kernel-model side: exit codes (0 clean, 1 violation,
2 bad usage) and one-line errors without tracebacks. Only x86 TDP variants are used."""

from __future__ import annotations

import pytest

from youngsim.check.mutants import MUTANTS
from youngsim.cli import main


def one_line_error(capsys, *fragments: str) -> str:
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("youngsim: error: ")
    assert "Traceback" not in err and "Traceback" not in out
    for f in fragments:
        assert f in lines[0], lines[0]
    return lines[0]


def test_check_one_clean_scenario(capsys):
    assert main(["check", "--design", "upstream", "--mmu", "x86-tdp",
                 "--scenario", "fault-unmap"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert "model/upstream/x86-tdp/fault-unmap: COMPLETE" in out
    assert "verified complete" in out


def test_check_one_scenario_with_an_explicit_bound(capsys):
    assert main(["check", "--design", "yu-v2", "--mmu", "x86-tdp-noad",
                 "--scenario", "two-vms", "--bound", "1"]) == 0
    out, _ = capsys.readouterr()
    assert out.startswith("model/yu-v2/x86-tdp-noad/two-vms: ")
    assert "VIOLATION" not in out


@pytest.mark.parametrize("argv,fragments", [
    (["check", "--design", "nosuch", "--mmu", "x86-tdp"], ["unknown design 'nosuch'"]),
    (["check", "--design", "upstream", "--mmu", "riscv"], ["unknown MMU variant 'riscv'"]),
    (["check", "--design", "upstream", "--mmu", "x86-tdp", "--scenario", "nosuch"],
     ["unknown scenario 'nosuch'"]),
    (["check", "--design", "upstream"], ["--design and --mmu go together"]),
    (["check", "--mmu", "x86-tdp"], ["--design and --mmu go together"]),
    (["check", "--scenario", "bitmap"], ["--design and --mmu go together"]),
    (["mutants", "--only", "nosuch"], ["unknown mutant 'nosuch'"]),
])
def test_bad_model_arguments_exit_2(argv, fragments, capsys):
    assert main(argv) == 2
    one_line_error(capsys, *fragments)


@pytest.mark.parametrize("string,fragment", [
    ("ys1:model/upstream/x86-tdp:s0:-", "bad model key"),
    ("ys1:model/upstream/x86-tdp/fault-unmap/extra/more:s0:-", "bad model key"),
    ("ys1:model/nosuch/x86-tdp/fault-unmap:s0:-", "unknown design 'nosuch'"),
    ("ys1:model/upstream/mips/fault-unmap:s0:-", "unknown MMU variant 'mips'"),
    ("ys1:model/upstream/x86-tdp/nosuch:s0:-", "unknown scenario 'nosuch'"),
    ("ys1:model/upstream/x86-tdp/fault-unmap/nosuch:s0:-", "unknown mutant 'nosuch'"),
    ("ys1:nosuch/upstream:s0:-", "unknown program key"),
    ("ys1:model/upstream/x86-tdp/fault-unmap:s0:1*0", "bad schedule element"),
    ("ys1:model/upstream/x86-tdp/fault-unmap:x0:-", "bad seed field"),
])
def test_replay_of_a_malformed_model_key_exits_2(string, fragment, capsys):
    assert main(["replay", string]) == 2
    one_line_error(capsys, fragment)


def test_replay_of_a_clean_model_schedule_exits_0(capsys):
    assert main(["replay", "ys1:model/upstream/x86-tdp/fault-unmap:s0:-"]) == 0
    out, _ = capsys.readouterr()
    assert "no violation on this schedule" in out


def test_mutants_only_one_caught_exits_0(capsys):
    name = "bitmap-offset-from-start"
    assert MUTANTS[name].mmu == "x86-tdp"
    assert main(["mutants", "--only", name]) == 0
    out, _ = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0].startswith(f"CAUGHT   {name} in ")
    assert "api-contract" in lines[0]
    assert lines[1].strip().startswith("replay: youngsim replay ys1:model/yu-v2/x86-tdp/"
                                       f"bitmap/{name}:")
    assert lines[-1].startswith("1/1 mutants caught")


def test_mutants_list_exits_0(capsys):
    assert main(["mutants", "--list"]) == 0
    out, _ = capsys.readouterr()
    for name, mu in MUTANTS.items():
        assert f"{name.ljust(28)} {mu.design} on {mu.mmu}, scenario {mu.scenario}" in out


def test_list_models(capsys):
    from youngsim.check.scenarios import SCENARIOS
    from youngsim.designs import DESIGNS

    assert main(["check", "--list-models"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert out.startswith("designs:\n")
    for name in DESIGNS:
        assert f"  {name.ljust(16)} " in out
    assert "\n  x86-tdp\n" in out and "\n  x86-tdp-noad\n" in out
    for name in SCENARIOS:
        assert f"  {name.ljust(12)} " in out


def test_matrix_renders_every_cell_kind():
    """check --all's rendering: verdicts, n/a scenarios, not-modelled cells, imprecision."""
    from youngsim.check.matrix import Cell, ScenarioVerdict, render_matrix

    cells = [
        Cell("upstream", "x86-tdp", "bounded", "clean", [
            ScenarioVerdict("age-zap", "bounded", 2, 10, "g", {"false_old": 3}),
            ScenarioVerdict("age-wrprot", "complete", None, 4, "g",
                            {"clears_clobbered": 1}),
        ]),
        Cell("upstream", "arm64", "bounded", "clean", [
            ScenarioVerdict("age-wrprot", "n/a", None, 0, "TDP MMU only")]),
        Cell("legacy", "x86-tdp", "violation", "age-zap: bad", [
            ScenarioVerdict("age-zap", "violation", None, 1, "g", {}, "spte-x: bad",
                            "ys1:model/legacy/x86-tdp/age-zap:s0:0")]),
        Cell("legacy", "arm64", "not modelled", "no scenario applies"),
    ]
    out = render_matrix(cells)
    assert "VIOLATION" in out and "not modelled" in out
    assert "age-wrprot: n/a: TDP MMU only" in out
    assert "false_old 3" in out and "clears_clobbered 1" in out
    assert "youngsim replay ys1:model/legacy/x86-tdp/age-zap:s0:0" in out
