"""The ``youngsim`` command.

Exit codes: 0 no violation (the output says whether the result is complete or bounded),
1 a violation (or, for ``check --examples``, an example whose verdict differs from the
expected one; for ``run``, a failed scenario check), 2 bad usage or input. Errors are one line, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, NoReturn, Sequence

from .check.examples import EXAMPLES
from .check.registry import UnknownProgram, resolve
from .check.runner import SearchOptions, check, render, render_counters
from .sim.schedule import ReplayError, parse_replay, step_table
from .sim.explore import run_schedule


class UsageError(Exception):
    """Bad usage or input: reported in one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2
        raise UsageError(message)


def _nonneg_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return v


def _pos_int(text: str) -> int:
    v = _nonneg_int(text)
    if v == 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def _pos_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    if not v > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="youngsim", description=__doc__.splitlines()[0] if __doc__ else None)
    sub = p.add_subparsers(dest="command", parser_class=_Parser)

    c = sub.add_parser("check", help="explore interleavings and check safety invariants")
    what = c.add_mutually_exclusive_group()
    what.add_argument("--example", metavar="NAME", help="check one built-in example")
    what.add_argument("--examples", action="store_true",
                      help="check every built-in example against its expected verdict"
                           " (the default)")
    what.add_argument("--list-examples", action="store_true", help="list built-in examples")
    what.add_argument("--design", metavar="D",
                      help="check the kernel model of design D (needs --mmu)")
    what.add_argument("--all", action="store_true",
                      help="every design on every MMU variant: the verdict matrix")
    what.add_argument("--list-models", action="store_true",
                      help="list designs, MMU variants and scenarios")
    c.add_argument("--mmu", metavar="M", help="secondary MMU variant (with --design)")
    c.add_argument("--scenario", metavar="S",
                   help="one built-in scenario (default: all of them)")
    c.add_argument("--budget", type=_pos_int, default=None, metavar="N",
                   help="executions for the first (unbounded) search attempt of model checks"
                        " without an explicit search option; bounded attempts get 4x"
                        " (default 2000; see docs/checker.md)")
    c.add_argument("--jobs", type=_pos_int, default=None, metavar="N",
                   help="worker processes for --all (default: one per CPU)")
    how = c.add_mutually_exclusive_group()
    how.add_argument("--bound", type=_nonneg_int, metavar="N",
                     help="DPOR bounded to at most N preemptions")
    how.add_argument("--pct", type=_pos_int, metavar="RUNS",
                     help="PCT randomised search with RUNS runs")
    how.add_argument("--random", type=_pos_int, metavar="RUNS",
                     help="uniform random walk with RUNS runs")
    how.add_argument("--naive", action="store_true",
                     help="enumerate every schedule without partial-order reduction")
    c.add_argument("--depth", type=_pos_int, default=3, help="PCT bug depth (default 3)")
    c.add_argument("--seed", type=_nonneg_int, default=0, help="seed for randomised search")
    c.add_argument("--max-executions", type=_pos_int, metavar="N",
                   help="stop a systematic search after N executions (verdict: bounded)")
    c.add_argument("--time-limit", type=_pos_float, metavar="SECONDS",
                   help="stop a search after this long (verdict: bounded)")

    mu = sub.add_parser("mutants", help="run every seeded bug; fail if one survives")
    mu.add_argument("--only", metavar="NAME", action="append",
                    help="run only this mutant (repeatable)")
    mu.add_argument("--list", action="store_true", help="list the mutants")

    r = sub.add_parser("replay", help="re-run a counterexample from its replay string")
    r.add_argument("string", help="the replay string a violation printed (ys1:...)")

    t = sub.add_parser("run", help="run a timed scenario (virtual time, from the cost model)")
    t.add_argument("scenario",
                   help="the scenario: access_tracking_perf_test or max_guest_memory_test")
    t.add_argument("-v", "--vcpus", type=_pos_int, default=None, metavar="VCPUS",
                   help="access_tracking_perf_test: vCPUs (default 1)")
    t.add_argument("-b", "--bytes-per-vcpu", type=_size, default=None, metavar="BYTES",
                   help="guest memory per vCPU, e.g. 64K, 2M (default 256K; the selftest's"
                        " 1G is above this build's scale cap)")
    t.add_argument("-p", "--benchmark", action="store_true",
                   help="aging passes back to back while the vCPUs populate memory")
    t.add_argument("-c", "--nr-vcpus", type=_pos_int, default=None, metavar="VCPUS",
                   help="max_guest_memory_test: vCPUs (default 4)")
    t.add_argument("-m", "--max-mem", type=_gib_size, default=None, metavar="SIZE",
                   help="max_guest_memory_test: guest memory; a bare number is GiB as in the "
                        "selftest, or give units, e.g. 32M (default 32M)")
    t.add_argument("-s", "--slot-size", type=_gib_size, default=None, metavar="SIZE",
                   help="max_guest_memory_test: memslot size (default: one slot)")
    t.add_argument("--host-mem", type=_size, default=None, metavar="SIZE",
                   help="max_guest_memory_test: host memory, e.g. 24M (default 3/4 of -m)")
    t.add_argument("--no-direct-reclaim", action="store_true",
                   help="max_guest_memory_test: only kswapd reclaims (an allocation at the "
                        "min watermark sleeps until kswapd frees frames)")
    t.add_argument("--lru", metavar="LRU", default=None,
                   help="max_guest_memory_test: the LRU reclaim uses, mglru (default) or "
                        "classic (MGLRU off: the active/inactive lists)")
    t.add_argument("--design", metavar="D", help="design (see youngsim check --list-models)")
    t.add_argument("--mmu", metavar="M", help="secondary MMU variant")
    t.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    t.add_argument("--cost-model", metavar="FILE",
                   help="cost model TOML (default: the packaged data/costs.toml)")
    t.add_argument("--seed", type=_nonneg_int, default=0,
                   help="recorded in the results (the scenario makes no random choices)")
    t.add_argument("--profile", metavar="DIR",
                   help="sample simulated call stacks; write DIR/profile.folded (flamegraph"
                        " input) and DIR/profile.txt (perf report --children style)")
    t.add_argument("--profile-period", type=_pos_int, default=100, metavar="NS",
                   help="virtual ns of on-CPU time per stack sample (default 100)")
    t.add_argument("--page-idle", action="store_true",
                   help="access_tracking_perf_test: mark memory idle through "
                        "/sys/kernel/mm/page_idle (each vCPU's thread, per page), the "
                        "selftest's way without MGLRU, instead of one lru_gen aging pass")
    t.add_argument("--keep-tlb", action="store_true",
                   help="do not empty each vCPU's TLB between steps (the selftest's"
                        " nested-VM case: the TLB keeps what fits in its 1536 entries)")
    t.add_argument("--per-page-faults", action="store_true",
                   help="access_tracking_perf_test: run every vCPU fault through the "
                        "per-page code instead of fault streams (the same results, "
                        "slower: a check of the streams)")

    c2 = sub.add_parser("compare", help="designs side by side on the timed driver: a table "
                                         "and a report folder")
    c2.add_argument("--preset", default="default",
                    help="default: locked vs lockless x per-page vs batched; calibration: "
                         "the model beside the 2023 series' published figures")
    c2.add_argument("--out", metavar="DIR", default=None,
                    help="report folder (default: reports/compare-PRESET)")
    c2.add_argument("--cost-model", metavar="FILE",
                    help="cost model TOML (default: the packaged data/costs.toml)")
    return p


def _gib_size(text: str) -> int:
    from .perf.harness import parse_size
    try:
        return parse_size(text, default_unit="g")
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _size(text: str) -> int:
    from .perf.harness import parse_size
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e))


def _options(a: argparse.Namespace) -> SearchOptions:
    if a.pct is not None:
        return SearchOptions("pct", runs=a.pct, depth=a.depth, seed=a.seed,
                             time_limit=a.time_limit)
    if a.random is not None:
        return SearchOptions("random", runs=a.random, seed=a.seed, time_limit=a.time_limit)
    return SearchOptions("naive" if a.naive else "dpor", bound=a.bound, seed=a.seed,
                         max_executions=a.max_executions, time_limit=a.time_limit)


def cmd_check(a: argparse.Namespace) -> int:
    if a.list_examples:
        width = max(map(len, EXAMPLES))
        for name, prog in EXAMPLES.items():
            exp = "violation" if prog.expect_violation else "clean"
            print(f"{name.ljust(width)}  expect {exp.ljust(9)}  {prog.description}")
        return 0
    if a.list_models:
        return _list_models()
    if a.all:
        return _check_all(a)
    if a.design is not None or a.mmu is not None or a.scenario is not None:
        return _check_model(a)
    opts = _options(a)
    if a.example is not None:
        if a.example not in EXAMPLES:
            raise UsageError(f"unknown example {a.example!r} "
                             f"(see youngsim check --list-examples)")
        out = check(EXAMPLES[a.example], opts)
        print(render(out))
        return 0 if out.ok else 1
    # every example, each against its expected verdict
    mismatches = 0
    for name, prog in EXAMPLES.items():
        out = check(prog, opts)
        print(render(out))
        expected = "violation" if prog.expect_violation else "no violation"
        if out.ok == prog.expect_violation:
            mismatches += 1
            print(f"  UNEXPECTED: expected {expected}")
        else:
            print(f"  as expected ({expected})")
        print()
    total = len(EXAMPLES)
    print(f"{total - mismatches}/{total} examples gave their expected verdict")
    return 1 if mismatches else 0


def _explicit_search(a: argparse.Namespace) -> bool:
    return (a.bound is not None or a.pct is not None or a.random is not None or a.naive
            or a.max_executions is not None or a.time_limit is not None)


def _list_models() -> int:
    from .check.model import MODELLED_MMUS
    from .check.scenarios import SCENARIOS
    from .designs import DESIGNS, MMU_VARIANTS

    print("designs:")
    for d in DESIGNS.values():
        print(f"  {d.name.ljust(16)} {d.summary}")
    print("MMU variants:")
    for mmu in MMU_VARIANTS:
        state = "" if mmu in MODELLED_MMUS else "  (not modelled yet)"
        print(f"  {mmu}{state}")
    print("scenarios:")
    for sc in SCENARIOS.values():
        print(f"  {sc.name.ljust(12)} {sc.description}")
    return 0


def _check_model(a: argparse.Namespace) -> int:
    from .check.matrix import DEFAULT_BUDGET, check_scenario
    from .check.model import NotModelled
    from .check.scenarios import SCENARIOS, program
    from .designs import DESIGNS, MMU_VARIANTS

    if a.design is None or a.mmu is None:
        raise UsageError("--design and --mmu go together (see youngsim check --list-models)")
    if a.design not in DESIGNS:
        raise UsageError(f"unknown design {a.design!r} (known: {', '.join(DESIGNS)})")
    if a.mmu not in MMU_VARIANTS:
        raise UsageError(f"unknown MMU variant {a.mmu!r} (known: {', '.join(MMU_VARIANTS)})")
    if a.scenario is not None and a.scenario not in SCENARIOS:
        raise UsageError(f"unknown scenario {a.scenario!r} (known: {', '.join(SCENARIOS)})")
    reason = DESIGNS[a.design].applies(a.mmu)
    if reason:
        print(f"{a.design} on {a.mmu}: not applicable: {reason}")
        return 0
    names = [a.scenario] if a.scenario else list(SCENARIOS)
    violations = 0
    try:
        for name in names:
            if _explicit_search(a):
                out = check(program(a.design, a.mmu, name), _options(a))
                print(render(out))
                violations += not out.ok
                continue
            try:
                v = check_scenario(a.design, a.mmu, name, a.budget or DEFAULT_BUDGET)
            except NotModelled as e:
                if a.scenario is not None:
                    raise
                print(f"model/{a.design}/{a.mmu}/{name}: n/a: {e}")
                continue
            print(f"model/{a.design}/{a.mmu}/{name}: {v.status.upper()}"
                  + (f" {v.violation}" if v.violation else ""))
            print(f"  {v.guarantee}")
            for line in render_counters(v.counters):
                print(line + " (summed over explored executions)")
            if v.table:
                print("\n".join("  " + ln for ln in v.table.splitlines()))
                print(f"  replay: youngsim replay {v.replay}")
            violations += v.status == "violation"
    except NotModelled as e:
        raise UsageError(str(e)) from None
    return 1 if violations else 0


def _check_all(a: argparse.Namespace) -> int:
    from .check.matrix import DEFAULT_BUDGET, render_matrix, run_matrix

    cells = run_matrix(budget=a.budget or DEFAULT_BUDGET, jobs=a.jobs)
    print(render_matrix(cells))
    return 1 if any(c.status == "violation" for c in cells) else 0


def cmd_mutants(a: argparse.Namespace) -> int:
    from .check.mutants import MUTANTS, run_mutant

    if a.list:
        for m in MUTANTS.values():
            print(f"{m.name.ljust(28)} {m.design} on {m.mmu}, scenario {m.scenario}")
            print(f"{'':28} {m.description} ({m.where})")
        return 0
    names = a.only or list(MUTANTS)
    for n in names:
        if n not in MUTANTS:
            raise UsageError(f"unknown mutant {n!r} (see youngsim mutants --list)")
    survived = 0
    times = []
    for n in names:
        r = run_mutant(MUTANTS[n])
        times.append(r.seconds)
        if r.caught and r.outcome is not None:
            v = r.outcome.result.violation
            print(f"CAUGHT   {n} in {r.seconds:.2f} s: {v}")
            print(f"         replay: youngsim replay {r.outcome.replay}")
        else:
            survived += 1
            why = r.error or (r.outcome.result.guarantee if r.outcome else "")
            print(f"SURVIVED {n} ({r.seconds:.2f} s): {why}")
    times.sort()
    median = times[len(times) // 2] if times else 0.0
    print(f"{len(names) - survived}/{len(names)} mutants caught; median time to catch "
          f"{median:.2f} s, slowest {max(times, default=0.0):.2f} s")
    return 1 if survived else 0


def cmd_replay(a: argparse.Namespace) -> int:
    try:
        key, schedule, _seed = parse_replay(a.string)
        program = resolve(key)
    except (ReplayError, UnknownProgram) as e:
        raise UsageError(str(e)) from None
    m, executed, pre = run_schedule(program, schedule, trace=True)
    print(f"{program.key}: {len(executed)} steps, {pre} preemptions")
    print(step_table(m))
    if m.violation is not None:
        print(f"VIOLATION {m.violation}")
        return 1
    print("no violation on this schedule")
    return 0


_SCENARIO_OPTIONS = {
    "access_tracking_perf_test": ("vcpus", "bytes_per_vcpu", "benchmark", "keep_tlb",
                                  "page_idle", "per_page_faults"),
    "max_guest_memory_test": ("nr_vcpus", "max_mem", "slot_size", "host_mem",
                              "no_direct_reclaim", "lru"),
}
_OPTION_NAMES = {"vcpus": "-v", "bytes_per_vcpu": "-b", "benchmark": "-p",
                 "keep_tlb": "--keep-tlb", "page_idle": "--page-idle",
                 "per_page_faults": "--per-page-faults", "nr_vcpus": "-c", "max_mem": "-m",
                 "slot_size": "-s", "host_mem": "--host-mem",
                 "no_direct_reclaim": "--no-direct-reclaim", "lru": "--lru"}


def _scenario_result(a: argparse.Namespace) -> Any:
    """Validate the scenario's options, run it, return its result object."""
    from .check.model import NotModelled
    from .perf import SCENARIOS
    from .perf.harness import perf_cost_model

    if a.scenario not in SCENARIOS:
        raise UsageError(f"unknown scenario {a.scenario!r} (known: {', '.join(SCENARIOS)})")
    for other, opts in _SCENARIO_OPTIONS.items():
        if other == a.scenario:
            continue
        for o in opts:
            if getattr(a, o) not in (None, False):
                raise UsageError(f"option {_OPTION_NAMES[o]} is not an option of "
                                 f"{a.scenario} (it belongs to {other})")
    if a.design is None or a.mmu is None:
        raise UsageError("run needs --design and --mmu (see youngsim check --list-models)")
    period = a.profile_period if a.profile else 0
    try:
        if a.scenario == "access_tracking_perf_test":
            from .perf.access_tracking import (DEFAULT_BYTES_PER_VCPU, Config,
                                               run_access_tracking)
            cfg = Config(design=a.design, mmu=a.mmu, vcpus=a.vcpus or 1,
                         bytes_per_vcpu=(a.bytes_per_vcpu if a.bytes_per_vcpu is not None
                                         else DEFAULT_BYTES_PER_VCPU),
                         benchmark=a.benchmark, seed=a.seed, keep_tlb=a.keep_tlb,
                         page_idle=a.page_idle, fault_streams=not a.per_page_faults,
                         profile_period_ns=period)
            cfg.validate()
            cm = perf_cost_model(a.cost_model)  # ValueError: a file that does not validate
            return run_access_tracking(cfg, cm)
        from .perf import max_guest_memory as mgm
        mcfg = mgm.Config(design=a.design, mmu=a.mmu, vcpus=a.nr_vcpus or mgm.DEFAULT_VCPUS,
                          guest_bytes=(a.max_mem if a.max_mem is not None
                                       else mgm.DEFAULT_GUEST_BYTES),
                          slot_bytes=a.slot_size, host_bytes=a.host_mem, seed=a.seed,
                          profile_period_ns=period,
                          direct_reclaim=not a.no_direct_reclaim,
                          lru=a.lru if a.lru is not None else "mglru")
        mcfg.validate()
        cm = perf_cost_model(a.cost_model)
        return mgm.run_max_guest_memory(mcfg, cm)
    except (ValueError, NotModelled) as e:
        raise UsageError(str(e)) from None


def cmd_run(a: argparse.Namespace) -> int:
    import json

    res = _scenario_result(a)
    print(res.render())
    profile = res.timed.profile
    if a.profile is not None and profile is not None:
        try:
            os.makedirs(a.profile, exist_ok=True)
            profile.write_folded(os.path.join(a.profile, "profile.folded"))
            with open(os.path.join(a.profile, "profile.txt"), "w", encoding="utf-8") as f:
                f.write(profile.format_table(limit=None) + "\n")
        except OSError as e:
            raise UsageError(f"cannot write the profile to {a.profile}: "
                             f"{e.strerror or e}") from None
        print()
        print(profile.format_table(limit=15))
        print(f"profile: {a.profile}/profile.folded, {a.profile}/profile.txt")
    if a.json is not None:
        try:
            with open(a.json, "w", encoding="utf-8") as f:
                json.dump(res.to_dict(), f, indent=2)
                f.write("\n")
        except OSError as e:
            raise UsageError(f"cannot write {a.json}: {e.strerror or e}") from None
    return 0 if res.ok else 1


def cmd_compare(a: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .check.model import NotModelled
    from .perf.harness import perf_cost_model
    from .perf.compare import (PresetError, decompose, get_preset, render_decomposition,
                               render_table, run_compare, write_report)

    if a.preset == "calibration":
        return _compare_calibration(a)
    try:
        preset = get_preset(a.preset)
        cm = perf_cost_model(a.cost_model)
    except (PresetError, ValueError) as e:
        raise UsageError(str(e)) from None
    out_dir = a.out or os.path.join("reports", f"compare-{preset.name}")
    total = len(preset.designs) * len(preset.vcpus)
    print(f"youngsim compare, preset {preset.name}: {preset.description}; "
          f"{preset.mmu}, {preset.bytes_per_vcpu >> 10} KiB per vCPU; figures are "
          "virtual time from the cost model at small scale")
    with tqdm(total=total, desc="compare", unit="run", file=sys.stderr,
              disable=None) as bar:
        def progress(done: str) -> None:
            bar.set_postfix_str(done)
            bar.update(1)

        profiles: dict[str, Any] = {}
        try:
            rows = run_compare(preset, cm, progress=progress, profiles=profiles)
        except (ValueError, NotModelled) as e:
            raise UsageError(str(e)) from None
    dec = decompose(rows)
    print(render_table(rows))
    print()
    print(render_decomposition(dec))
    command = "youngsim compare" + (f" --preset {preset.name}" if a.preset != "default" else "")
    try:
        paths = write_report(out_dir, preset, rows, dec, command, profiles)
    except OSError as e:
        raise UsageError(f"cannot write the report to {out_dir}: {e.strerror or e}") from None
    print(f"\nreport: {', '.join(paths)}")
    return 0 if all(r["ok"] for r in rows) else 1


def _compare_calibration(a: argparse.Namespace) -> int:
    import json

    from tqdm import tqdm

    from .check.model import NotModelled
    from .perf import calibration as cal
    from .perf.harness import perf_cost_model

    try:
        cm = perf_cost_model(a.cost_model)
    except ValueError as e:
        raise UsageError(str(e)) from None
    out_dir = a.out or os.path.join("reports", "compare-calibration")
    runs_desc = ", ".join(f"{r.design} ({r.lru})" for r in cal.RUNS)
    print(f"youngsim compare, preset calibration: max_guest_memory_test for "
          f"{runs_desc} on {cal.MMU}, -c {cal.VCPUS} "
          f"-m {cal.GUEST_BYTES >> 20}M, host 3/4 of the guest; beside the published "
          "2023 figures (spec section 5)")
    with tqdm(total=len(cal.RUNS), desc="calibration", unit="run", file=sys.stderr,
              disable=None) as bar:
        def progress(done: str) -> None:
            bar.set_postfix_str(done)
            bar.update(1)

        try:
            rows, runs, profiles = cal.run_calibration(cm, progress=progress)
        except (ValueError, NotModelled) as e:
            raise UsageError(str(e)) from None
    text = cal.render(rows, runs)
    print(text)
    try:
        os.makedirs(out_dir, exist_ok=True)
        paths = []
        path = os.path.join(out_dir, "results.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump({"preset": "calibration", "vcpus": cal.VCPUS,
                       "guest_bytes": cal.GUEST_BYTES, "mmu": cal.MMU, "rows": rows,
                       "runs": runs, "not_modelled": list(cal.NOT_MODELLED)}, f,
                      indent=2, sort_keys=True)
            f.write("\n")
        paths.append(path)
        md = ["# youngsim compare: preset `calibration`", "", cal.__doc__ or "", "",
              "## Model beside the published figures", "", "```", text, "```", ""]
        for key, prof in profiles.items():
            base = os.path.join(out_dir, f"profile-{key}")
            prof.write_folded(base + ".folded")
            with open(base + ".txt", "w", encoding="utf-8") as f:
                f.write(prof.format_table(limit=None) + "\n")
            paths += [base + ".folded", base + ".txt"]
            md += [f"### Profile: {key}", "", "```", prof.format_table(limit=20), "```", ""]
        path = os.path.join(out_dir, "report.md")
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join(md))
        paths.append(path)
    except OSError as e:
        raise UsageError(f"cannot write the report to {out_dir}: {e.strerror or e}") from None
    print(f"\nreport: {', '.join(paths)}")
    return 0 if all(r["ok"] for r in runs.values()) else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        a = parser.parse_args(argv)
        if a.command is None:
            raise UsageError("missing command (try: youngsim check)")
        if a.command == "check":
            return cmd_check(a)
        if a.command == "mutants":
            return cmd_mutants(a)
        if a.command == "run":
            return cmd_run(a)
        if a.command == "compare":
            return cmd_compare(a)
        return cmd_replay(a)
    except UsageError as e:
        print(f"youngsim: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("youngsim: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
