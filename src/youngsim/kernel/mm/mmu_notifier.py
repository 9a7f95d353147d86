"""``mm/mmu_notifier.c`` and ``include/linux/mmu_notifier.h``: the callbacks every design
shares.

A subscriber is a ``MmuNotifier`` whose ``ops`` (``struct mmu_notifier_ops``) may leave
any callback out (None). The subscription list is walked under SRCU, so a callback may
sleep. Designs that add an operation (``test_clear_young`` in yu-v2,
``test_clear_young_range`` in reviewed) define its ``__mmu_notifier_*`` walker in their
own file, next to the rest of that design.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Generator

from ...sim import Op, rcu_read_lock, rcu_read_unlock
from ..system import PAGE_SIZE

if TYPE_CHECKING:
    from .mm import MM

Gen = Generator[Op, Any, Any]
Callback = Callable[..., Gen]


@dataclass
class MmuNotifierOps:
    """``struct mmu_notifier_ops``: only the callbacks youngsim models."""

    clear_flush_young: Callback | None = None
    clear_young: Callback | None = None
    test_young: Callback | None = None
    invalidate_range_start: Callback | None = None
    invalidate_range_end: Callback | None = None
    #: yu-v2: test_clear_young(mn, mm, start, end, clear, bitmap)
    test_clear_young: Callback | None = None
    #: reviewed: test_clear_young_range(mn, mm, start, end, young_bitmap, predicate_bitmap)
    test_clear_young_range: Callback | None = None


@dataclass
class MmuNotifier:
    """``struct mmu_notifier``: a subscription of one secondary MMU to one mm."""

    ops: MmuNotifierOps
    owner: Any  # the subscriber (a struct kvm)
    name: str = "mn"


def mmu_notifier_register(mm: "MM", mn: MmuNotifier) -> None:
    mm.subscriptions.append(mn)


def _walk(mm: "MM", op_name: str, *args: Any) -> Gen:
    """Call ``op_name`` on every subscriber that has it, under SRCU; OR the results.

    For the clearing callbacks the spec's "no silent drop" contract is checked around
    each subscriber: if its secondary MMU cleared a young entry, it must say young."""
    ret = 0
    monitor = op_name in _CLEARING
    yield rcu_read_lock(mm.srcu, cost="srcu_read_lock")
    for mn in mm.subscriptions:
        fn = getattr(mn.ops, op_name)
        if fn is not None:
            rec = mm.sys.begin_call() if monitor else None
            r = yield from fn(mn, mm, *args)
            if rec is not None:
                mm.sys.end_call()
                if rec["cleared"] and not r:  # (the message lists them: only then)
                    mm.sys.contract(False, f"{op_name}: cleared young pages "
                                    f"{sorted(rec['cleared'])} of a secondary MMU but "
                                    "returned 0")
            ret |= r
    yield rcu_read_unlock(mm.srcu, cost="srcu_read_unlock")
    return ret


_CLEARING = frozenset({"clear_flush_young", "clear_young"})


def __mmu_notifier_clear_flush_young(mm: "MM", start: int, end: int) -> Gen:
    return (yield from _walk(mm, "clear_flush_young", start, end))


def __mmu_notifier_clear_young(mm: "MM", start: int, end: int) -> Gen:
    return (yield from _walk(mm, "clear_young", start, end))


def __mmu_notifier_test_young(mm: "MM", address: int) -> Gen:
    """Stops at the first subscriber that says young, as the kernel does."""
    yield rcu_read_lock(mm.srcu, cost="srcu_read_lock")
    young = 0
    for mn in mm.subscriptions:
        if mn.ops.test_young is not None:
            young = yield from mn.ops.test_young(mn, mm, address)
            if young:
                break
    yield rcu_read_unlock(mm.srcu, cost="srcu_read_unlock")
    return young


def __mmu_notifier_invalidate_range_start(mm: "MM", start: int, end: int) -> Gen:
    yield from _walk(mm, "invalidate_range_start", start, end)


def __mmu_notifier_invalidate_range_end(mm: "MM", start: int, end: int) -> Gen:
    yield from _walk(mm, "invalidate_range_end", start, end)


# -- the inline wrappers: no cost when nothing subscribed -------------------------------

def mmu_notifier_clear_flush_young(mm: "MM", start: int, end: int) -> Gen:
    if mm.mm_has_notifiers():
        return (yield from __mmu_notifier_clear_flush_young(mm, start, end))
    return 0


def mmu_notifier_clear_young(mm: "MM", start: int, end: int) -> Gen:
    if mm.mm_has_notifiers():
        return (yield from __mmu_notifier_clear_young(mm, start, end))
    return 0


def mmu_notifier_test_young(mm: "MM", address: int) -> Gen:
    if mm.mm_has_notifiers():
        return (yield from __mmu_notifier_test_young(mm, address))
    return 0


def mmu_notifier_invalidate_range_start(mm: "MM", start: int, end: int) -> Gen:
    if mm.mm_has_notifiers():
        yield from __mmu_notifier_invalidate_range_start(mm, start, end)


def mmu_notifier_invalidate_range_end(mm: "MM", start: int, end: int) -> Gen:
    if mm.mm_has_notifiers():
        yield from __mmu_notifier_invalidate_range_end(mm, start, end)


def ptep_clear_flush_young_notify(mm: "MM", addr: int) -> Gen:
    """``ptep_clear_flush_young_notify``: the primary PTE, then every secondary MMU."""
    young = yield from mm.ptep_clear_flush_young(addr)
    young |= bool((yield from mmu_notifier_clear_flush_young(mm, addr, addr + PAGE_SIZE)))
    return young


def ptep_clear_young_notify(mm: "MM", addr: int) -> Gen:
    """``ptep_clear_young_notify``: as above without asking for a flush."""
    young = yield from mm.ptep_test_and_clear_young(addr)
    young |= bool((yield from mmu_notifier_clear_young(mm, addr, addr + PAGE_SIZE)))
    return young
