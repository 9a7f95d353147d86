"""Generator bodies the simulator core spawns as threads, kept out of the compiled core.

A mypyc-compiled generator has no ``gi_frame``, ``gi_code`` or ``gi_yieldfrom``: the step
table (``machine._location``) and the profiler (``profile.generator_stack``) could not
see through it to the model code it runs. So this module is not compiled.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Generator, Iterable

from . import ops as O
from .ops import Op

if TYPE_CHECKING:
    from .sync import RcuDomain


def rcu_callback(dom: "RcuDomain", snap: tuple[tuple[int, int], ...],
                 fn: Callable[..., Generator[Op, Any, Any]],
                 args: Iterable[Any]) -> Generator[Op, Any, Any]:
    """Body of a ``call_rcu`` callback: wait for the grace period, then run ``fn``."""
    if snap:
        yield Op(O.GP_WAIT, dom, a=snap)
    yield from fn(*args)
