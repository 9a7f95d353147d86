"""The concurrency substrate: model threads as generators, shared words, locks and RCU.

Knows nothing about kernels. Model code imports the operation constructors and the object
types from here; drivers use ``Machine`` (the executor), ``explore`` (the checker) and,
later, the timed driver.
"""

from ._native import select as _select

_select()  # compiled (mypyc) core, or the .py sources: see _native.py

from .machine import BUG_ON, WARN_ON, Machine, Violation
from .memory import MASK64, Words
from .ops import (CycleCas, Op, alloc, call_rcu, cas, fetch_add, fetch_and, fetch_or, free,
                  lock_cycles, might_sleep, mutex_lock, mutex_unlock, nop, rcu_read_lock,
                  rcu_read_unlock, read_lock, read_unlock, spawn, spin_lock, spin_unlock,
                  store, load, synchronize_rcu, vcas, vfetch_and, vfetch_or, vload, vstore,
                  vupdate, vxchg, wait_until, write_lock, write_unlock, xchg)
from .program import Program
from .sync import Mutex, RcuDomain, RWLock, SpinLock

__all__ = [
    "BUG_ON", "WARN_ON", "CycleCas", "MASK64", "Machine", "Mutex", "Op", "Program",
    "RWLock", "RcuDomain", "SpinLock", "Violation", "Words", "alloc", "call_rcu", "cas",
    "fetch_add", "fetch_and", "fetch_or", "free", "load", "lock_cycles", "might_sleep",
    "mutex_lock", "mutex_unlock", "nop", "rcu_read_lock", "rcu_read_unlock",
    "read_lock", "read_unlock", "spawn", "spin_lock", "spin_unlock", "store",
    "synchronize_rcu", "vcas", "vfetch_and", "vfetch_or", "vload", "vstore", "vupdate",
    "vxchg", "wait_until", "write_lock", "write_unlock", "xchg",
]
