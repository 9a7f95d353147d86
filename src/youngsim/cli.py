"""The ``youngsim`` command.

Exit codes: 0 no violation (the output says whether the result is complete or bounded),
1 a violation (or, for ``check --examples``, an example whose verdict differs from the
expected one), 2 bad usage or input. Errors are one line, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn, Sequence

from .check.examples import EXAMPLES
from .check.registry import UnknownProgram, resolve
from .check.runner import SearchOptions, check, render
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

    r = sub.add_parser("replay", help="re-run a counterexample from its replay string")
    r.add_argument("string", help="the replay string a violation printed (ys1:...)")
    return p


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


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        a = parser.parse_args(argv)
        if a.command is None:
            raise UsageError("missing command (try: youngsim check)")
        if a.command == "check":
            return cmd_check(a)
        return cmd_replay(a)
    except UsageError as e:
        print(f"youngsim: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("youngsim: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
