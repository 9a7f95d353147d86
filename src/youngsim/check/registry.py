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


RESOLVERS: dict[str, Callable[[str], Program]] = {"example": _example}


def resolve(key: str) -> Program:
    kind, sep, rest = key.partition("/")
    if not sep or kind not in RESOLVERS:
        raise UnknownProgram(
            f"unknown program key {key!r} (expected one of: "
            f"{', '.join(k + '/NAME' for k in RESOLVERS)})")
    return RESOLVERS[kind](rest)
