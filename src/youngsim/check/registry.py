"""Find a program by the key a replay string carries.

Keys are ``KIND/NAME``: ``example/lost-update`` for the built-in examples. Every family of
checkable programs registers a resolver here, so ``youngsim replay`` can re-run any
counterexample the tool ever printed.
"""

from __future__ import annotations

from typing import Callable

from ..sim import Program
from .examples import EXAMPLES


class UnknownProgram(ValueError):
    pass


def _example(name: str) -> Program:
    try:
        return EXAMPLES[name]
    except KeyError:
        raise UnknownProgram(
            f"unknown example {name!r} (known: {', '.join(EXAMPLES)})") from None


def _model(rest: str) -> Program:
    """``DESIGN/MMU/SCENARIO[/MUTANT]``."""
    from ..designs import DESIGNS, MMU_VARIANTS
    from .mutants import SWITCHES
    from .scenarios import SCENARIOS, program

    parts = rest.split("/")
    if len(parts) not in (3, 4):
        raise UnknownProgram(f"bad model key {rest!r} (expected DESIGN/MMU/SCENARIO[/MUTANT])")
    design, mmu, scenario = parts[:3]
    mutant = parts[3] if len(parts) == 4 else None
    if design not in DESIGNS:
        raise UnknownProgram(f"unknown design {design!r} (known: {', '.join(DESIGNS)})")
    if mmu not in MMU_VARIANTS:
        raise UnknownProgram(f"unknown MMU variant {mmu!r} (known: {', '.join(MMU_VARIANTS)})")
    if scenario not in SCENARIOS:
        raise UnknownProgram(f"unknown scenario {scenario!r} (known: {', '.join(SCENARIOS)})")
    if mutant is not None and mutant not in SWITCHES:
        raise UnknownProgram(f"unknown mutant {mutant!r} (known: {', '.join(sorted(SWITCHES))})")
    return program(design, mmu, scenario, mutant=mutant)


RESOLVERS: dict[str, Callable[[str], Program]] = {"example": _example, "model": _model}


def resolve(key: str) -> Program:
    kind, sep, rest = key.partition("/")
    if not sep or kind not in RESOLVERS:
        raise UnknownProgram(
            f"unknown program key {key!r} (expected one of: "
            f"{', '.join(k + '/NAME' for k in RESOLVERS)})")
    return RESOLVERS[kind](rest)
