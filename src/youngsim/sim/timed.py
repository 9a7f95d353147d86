"""The timed driver: a discrete-event simulation of a program on virtual time.

The same model threads the checker explores run here on a virtual clock. Nothing is
re-implemented: every operation is executed by ``Machine.step``, and this driver only
decides *when* (by virtual time) and *what it costs* (by the cost model,
``sim/costmodel.py``). The environment, never the wall clock, is the time source: with
the same program and cost model a run is identical bit for bit (all times are integer
nanoseconds, ties are broken by a sequence number, nothing depends on dict order of
unordered keys, ids or the wall clock).

Model of execution
------------------
- Each thread is one simulated CPU with its own clock ``clk[tid]``: the virtual time at
  which its pending operation can start.
- A ready queue (``_ReadyQueue``) holds the threads that can run, by ready time; the
  driver repeatedly takes the earliest, executes its operation (the operation takes effect
  at its start time) and advances the thread's clock by the operation's cost: the thread
  is busy for that long. Threads ready at the same time go in the order they were queued:
  first come, first served, deterministically. A thread whose next operation is again the
  earliest event continues without a queue round trip (same order, less work).
- A thread whose pending operation is not enabled (a queued lock ``acquire``, a
  grace-period wait, a ``wait_until`` whose condition is false) is *parked*. A step that
  changes what it waits on (the lock, the RCU domain, the word) re-checks it; once enabled
  it becomes ready at ``max(its clock, completion time of the enabling step) + handoff``,
  where the handoff is the cost model's ``wakeup.spin_handoff`` for spinning waiters (the
  lock word's cache line moves to the waiter) or ``wakeup.sleep`` for sleepers (mutex,
  synchronize_rcu). Only the head of a lock's FIFO queue can be granted, so a lock step
  checks just that waiter.
- The parked interval is accounted when the thread wakes: a waiter on a spinning lock
  (``SpinLock``, ``RWLock``: the kernel's spinlock and qrwlock spin) burns its CPU, in
  category ``spin`` and in that lock's spin time ("spinning on kvm->mmu_lock"); a
  ``wait_until`` spin loop burns CPU in its label's category (``tlb_flush`` for a flush
  waiting for IPI acknowledgement, ``fault`` for a vCPU re-faulting until an invalidation
  ends) or ``spin``; a mutex or grace-period waiter is off-CPU, category ``sleep``, and
  so is a ``wait_until`` whose label's category is ``sleep`` (``wait_event``: kswapd on
  its wait queue, an allocation throttled until reclaim frees pages), woken with
  ``wakeup.sleep``.

Costs and contention
--------------------
An operation costs its label's entry in the cost model (else its kind's), vector
operations per element, plus:

- a contended-line surcharge for an atomic read-modify-write (and a lock operation, an
  atomic on the lock word) on a cache line that another thread wrote within the
  contention window, per such line;
- the flush base for the first operation of a remote TLB flush batch (consecutive
  operations with a ``tlb_flush.batch_labels`` label), so a flush of n CPUs costs
  ``base + n * per-CPU``;
- nothing else: queueing delay is not a cost but the result of lock queues and clocks.

CPU-time categories
-------------------
Every nanosecond of a thread's clock is accounted in exactly one category: an operation's
cost goes to its label's category (``guest``, ``spin``, ``rcu``, ``tlb_flush``...), else
the default category of the thread's *role*; a parked interval as described above. So
per thread the categories sum to its clock minus its start time (tested). Roles (``vcpu``,
``aging``, ``zapper``, ``rcu``, or anything the cost model maps) are given per thread id
(``roles=``, ``set_role``); threads spawned at run time inherit their spawner's role, and
``call_rcu`` callbacks get ``rcu``.

Also measured: lock wait and hold time distributions per lock, holder role and mode;
per-label counts and time; cmpxchg attempts and failures; contended atomics; TLB flush
batches; and, with ``sample_period_ns``, stack samples on virtual time (``sim/profile.py``).

Violations found by the machine (use-after-free, lock misuse, deadlock...) stop the run
and are reported in the result, as with the checker.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields
from typing import Any, Final, Sequence

import numpy as np

from . import ops as O
from . import cycles, vec
from .costmodel import SLEEP, SPIN, CostModel, load_cost_model
from .machine import Machine, Violation
from .profile import SPIN_LEAF, WAIT_LEAF, Profile, generator_stack

#: categories of waits that are not the modelled system's work (a scenario harness's
#: barriers): their time is accounted in the category but never stack-sampled
NOT_WORK = frozenset({"harness"})
from .program import Program
from .sync import READ, Lock

_M32 = (1 << 32) - 1
_UNSEEN: Any = object()
_BLOCKING = frozenset({O.GRANT, O.GP_WAIT, O.WAIT})
_VATOMIC = frozenset({O.VXCHG, O.VFETCH_AND, O.VFETCH_OR, O.VCAS})
#: objects of at least this many words keep their cache-line stamps in numpy arrays
#: (``_LineTable``) instead of the driver's dict: a vector operation over a large table
#: then updates its lines with a few array operations, not one dict entry per line
_BIG_WORDS = 4096


class _LineTable:
    """Per cache line of one large object: the last writer's time and tid + 1 (0: never
    written). The same rule as the dict of small objects' lines, held in arrays."""

    __slots__ = ("time", "tid1")

    def __init__(self, nlines: int) -> None:
        self.time = np.zeros(nlines, dtype=np.int64)  # lazily backed by the OS
        self.tid1 = np.zeros(nlines, dtype=np.int32)

    def touch(self, lo: int, hi: int, tid: int, now: int, window: int,
              atomic: bool) -> int:
        """Record a write by ``tid`` at ``now`` to lines ``[lo, hi)``; return how many
        an atomic found written by another CPU within ``window`` (0 for a plain
        write). One compiled pass (``vec.touch_lines``)."""
        return int(vec.touch_lines(self.time, self.tid1, lo, hi, tid, now, window,
                                   atomic))

    def touch_selected(self, sel: Any, lo: int, shift: int, tid: int, now: int,
                       window: int, atomic: bool) -> int:
        """``touch`` for the lines holding word ``lo + k`` wherever ``sel[k]`` (lines of
        ``1 << shift`` words), each line once."""
        return int(vec.touch_selected(self.time, self.tid1, sel, lo, shift, tid, now,
                                      window, atomic))


_NKINDS = max(O.KIND_NAMES) + 1
_WAIT: Final = O.WAIT
#: per kind: may it block (a list index is cheaper than a set lookup in the hot loop)
_BLOCKING_BY_KIND = tuple(k in _BLOCKING for k in range(_NKINDS))
# what the hot loop does per kind, one small int per kind: 0 no driver bookkeeping;
# scalar writes (store, atomic read-modify-write, cmpxchg: cache lines); vector ops;
# spawns (new threads); lock requests, releases and grants (lock statistics)
_KC_PLAIN: Final = 0
_KC_STORE: Final = 1
_KC_RMW: Final = 2
_KC_CAS: Final = 3
_KC_VEC: Final = 4
_KC_SPAWN: Final = 5
_KC_ACQ: Final = 6
_KC_REL: Final = 7
_KC_GRANT: Final = 8
_KCLASS: tuple[int, ...] = tuple(
    _KC_STORE if k == O.STORE else
    _KC_CAS if k == O.CAS else
    _KC_RMW if k in (O.XCHG, O.FETCH_AND, O.FETCH_OR, O.FETCH_ADD) else
    _KC_VEC if k >= O.VLOAD else
    _KC_SPAWN if k in (O.SPAWN, O.CALL_RCU) else
    _KC_ACQ if k in (O.LOCK, O.READ_LOCK, O.WRITE_LOCK) else
    _KC_REL if k in (O.UNLOCK, O.READ_UNLOCK, O.WRITE_UNLOCK) else
    _KC_GRANT if k == O.GRANT else
    _KC_PLAIN
    for k in range(_NKINDS))

class _ReadyQueue:
    """Threads ready to run, earliest ready time first and, at equal times, in the order
    they were queued: two parallel lists kept sorted, the earliest entry *last* so that
    taking it is a ``pop()`` from the end (no memmove of the rest).

    ``keys`` holds the negated ready times in ascending order; a thread is inserted
    before those already queued at its time (``bisect_left`` on the negated time), so
    at equal times the first queued is nearest the end and runs first. The same order
    as a heap of ``(time, sequence number, tid)``, with no tuple or dict entry per
    thread: the queue is short (the threads that can run now, not the parked ones), so
    an insertion's memmove costs less than a heap's comparisons."""

    __slots__ = ("keys", "tids")

    def __init__(self) -> None:
        self.keys: list[int] = []  # -time, ascending: the earliest ready time is -keys[-1]
        self.tids: list[int] = []  # the thread of each entry of ``keys``

    def push(self, time: int, tid: int) -> None:
        # ``bisect_left(keys, -time)`` written out: compiled, this loop over a short
        # list of machine ints costs a tenth of a call into the bisect module
        keys = self.keys
        k = -time
        lo = 0
        hi = len(keys)
        while lo < hi:
            mid = (lo + hi) >> 1
            if keys[mid] < k:
                lo = mid + 1
            else:
                hi = mid
        keys.insert(lo, k)
        self.tids.insert(lo, tid)

    def pop(self) -> int:
        """The first thread queued at the earliest time (at ``-keys[-1]``)."""
        self.keys.pop()
        return self.tids.pop()

    def ordered(self) -> list[tuple[int, int]]:
        """(ready time, tid) of every entry, in the order they would be taken."""
        return [(-k, x) for k, x in zip(reversed(self.keys), reversed(self.tids))]

    def assign(self, ents: list[tuple[int, int]]) -> None:
        """Replace the entries by ``ents``, (ready time, tid) in the order to take them."""
        self.keys[:] = [-e[0] for e in reversed(ents)]
        self.tids[:] = [e[1] for e in reversed(ents)]


class _Cost:
    """What the hot loop needs to know of a label or kind (cost, category, whether it
    starts a TLB-flush batch), and its running totals."""

    __slots__ = ("ns", "per", "vbase", "cid", "batch", "count", "total", "unknown")

    def __init__(self, ns: int, per: float, vbase: float, cid: int, batch: bool,
                 unknown: bool) -> None:
        self.ns = ns
        self.per = per
        self.vbase = vbase
        self.cid = cid
        self.batch = batch
        self.count = 0
        self.total = 0
        self.unknown = unknown


# --- distributions --------------------------------------------------------------------

def _bucket_keys(xs: np.ndarray) -> np.ndarray:
    """Each duration's histogram bucket (``Dist.add``'s key), for an int64 array."""
    bl = np.zeros(len(xs), dtype=np.int64)
    pos = xs > 0
    # bit_length, exact for the int64 range via frexp of the float (values < 2^53
    # are exact; above, the float may round up to the next power: corrected below)
    _, e = np.frexp(xs[pos].astype(np.float64))
    bl[pos] = e
    over = pos.copy()
    over[pos] = (np.left_shift(np.int64(1), (bl[pos] - 1).clip(0, 62)) > xs[pos])
    bl[over] -= 1
    shift = (bl - 4).clip(0, None)
    return np.where(bl <= 4, xs, np.left_shift(np.right_shift(xs, shift), shift))


class Dist:
    """A distribution of non-negative integer durations (ns): count, sum, min, max, and
    a log-linear histogram (8 buckets per power of two, so percentiles are within
    ~12.5%)."""

    __slots__ = ("n", "total", "min", "max", "buckets")

    def __init__(self) -> None:
        self.n = 0
        self.total = 0
        self.min = 0
        self.max = 0
        self.buckets: dict[int, int] = {}

    def add(self, x: int) -> None:
        if self.n == 0 or x < self.min:
            self.min = x
        if x > self.max:
            self.max = x
        self.n += 1
        self.total += x
        b = x.bit_length()
        key = x if b <= 4 else (x >> (b - 4)) << (b - 4)
        bk = self.buckets
        bk[key] = bk.get(key, 0) + 1

    def add_many(self, xs: np.ndarray) -> None:
        """Add an array of non-negative durations (vectorised ``add``)."""
        if len(xs) == 0:
            return
        xs = np.asarray(xs, dtype=np.int64)
        uk, cnt = np.unique(_bucket_keys(xs), return_counts=True)
        self.add_counted(len(xs), int(xs.sum()), int(xs.min()), int(xs.max()),
                         uk.tolist(), cnt.tolist())

    def add_counted(self, n: int, total: int, lo: int, hi: int, keys: list[int],
                    counts: list[int]) -> None:
        """Add ``n`` durations given by their sum, extremes and bucket counts (what
        ``add_many`` computes; ``_fold_into`` computes it for many holders at once)."""
        if self.n == 0 or lo < self.min:
            self.min = lo
        if hi > self.max:
            self.max = hi
        self.n += n
        self.total += total
        bk = self.buckets
        for key, c in zip(keys, counts):
            bk[key] = bk.get(key, 0) + c

    def merge(self, other: "Dist") -> None:
        if not other.n:
            return
        if self.n == 0 or other.min < self.min:
            self.min = other.min
        if other.max > self.max:
            self.max = other.max
        self.n += other.n
        self.total += other.total
        for key, n in other.buckets.items():
            self.buckets[key] = self.buckets.get(key, 0) + n

    @property
    def mean(self) -> float:
        return self.total / self.n if self.n else 0.0

    def percentile(self, q: float) -> int:
        """Upper edge of the bucket holding the q-th percentile (clamped to the max)."""
        if not self.n:
            return 0
        rank = max(1, int(np.ceil(q / 100.0 * self.n)))
        seen = 0
        for key in sorted(self.buckets):
            seen += self.buckets[key]
            if seen >= rank:
                b = key.bit_length()
                hi = key if b <= 4 else key + (1 << (b - 4)) - 1
                return min(hi, self.max)
        return self.max

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "total": self.total, "min": self.min, "max": self.max,
                "buckets": sorted(self.buckets.items())}


_MODES = ("excl", "read", "write")
_FOLD: Final = 1 << 16  # lock events buffered before they are folded into histograms
#: after the cycle engine refused to take over, or took fewer steps than this, driver
#: steps before it is asked again, doubling each time in a row (a hand-over costs
#: about as much as a thousand driver steps; the results do not depend on when it is
#: asked)
_ENGINE_BACKOFF: Final = 1024
_ENGINE_MAX_WAIT: Final = 1 << 16


def _fold_into(dur: np.ndarray, who: np.ndarray, into: dict[int, Dist]) -> None:
    """Add each duration to the distribution of its holder (``tid * 4 + mode``): one
    sort by holder and bucket, then per holder its count, sum, extremes and bucket
    counts (``Dist.add_counted``), as ``add_many`` of its samples would."""
    if not len(dur):
        return
    dur = np.asarray(dur, dtype=np.int64)
    who = np.asarray(who, dtype=np.int64)
    keys = _bucket_keys(dur)
    order = np.lexsort((keys, who))  # by holder, then bucket
    ws, ks, ds = who[order], keys[order], dur[order]
    # runs of one holder, and within them runs of one bucket
    hcut = np.flatnonzero(ws[1:] != ws[:-1]) + 1
    hstart = np.concatenate(([0], hcut))
    bcut = np.flatnonzero((ws[1:] != ws[:-1]) | (ks[1:] != ks[:-1])) + 1
    bstart = np.concatenate(([0], bcut))
    bcount = np.diff(np.concatenate((bstart, [len(ds)])))
    n_h = np.diff(np.concatenate((hstart, [len(ds)]))).tolist()
    tot_h = np.add.reduceat(ds, hstart).tolist()
    min_h = np.minimum.reduceat(ds, hstart).tolist()
    max_h = np.maximum.reduceat(ds, hstart).tolist()
    # the buckets of holder i are bucket runs [bsplit[i], bsplit[i + 1])
    bsplit = np.searchsorted(bstart, hstart).tolist() + [len(bstart)]
    bkeys = ks[bstart].tolist()
    bcounts = bcount.tolist()
    for i, x in enumerate(ws[hstart].tolist()):
        dist = into.get(x)
        if dist is None:
            dist = into[x] = Dist()
        a, b = bsplit[i], bsplit[i + 1]
        dist.add_counted(n_h[i], tot_h[i], min_h[i], max_h[i], bkeys[a:b], bcounts[a:b])


class _LockStats:
    """Per-lock measurements. The hot loop appends raw events to flat lists
    (duration, and ``tid * 4 + mode``); they are folded into per-(thread, mode)
    histograms every ``_FOLD`` events and at the end, so memory stays bounded."""

    __slots__ = ("name", "kind", "acquisitions", "contended", "spin_ns", "sleep_ns",
                 "wait_d", "wait_w", "hold_d", "hold_w", "wait", "hold", "req", "held",
                 "park_rec", "lw_tid", "lw_time")

    def __init__(self, name: str, kind: str) -> None:
        self.name = name
        self.kind = kind
        self.acquisitions = 0
        self.contended = 0
        self.spin_ns = 0
        self.sleep_ns = 0
        self.wait_d: list[int] = []
        self.wait_w: list[int] = []
        self.hold_d: list[int] = []
        self.hold_w: list[int] = []
        self.wait: dict[int, Dist] = {}  # tid * 4 + mode -> distribution
        self.hold: dict[int, Dist] = {}
        self.req: dict[int, int] = {}  # tid -> time of its refused request
        self.held: dict[int, list[int]] = {}  # tid * 4 + mode -> acquisition times
        #: how a writer / a reader waiting for this lock parks: (category, handoff,
        #: spinning, leaf frame, self)
        self.park_rec: list[tuple[int, int, bool, str | None, "_LockStats"] | None] = \
            [None, None]
        #: last thread to write the lock word, and when (the contended-line surcharge)
        self.lw_tid = -1
        self.lw_time = 0

    def fold(self) -> None:
        for d, w, into in ((self.wait_d, self.wait_w, self.wait),
                           (self.hold_d, self.hold_w, self.hold)):
            if not d:
                continue
            _fold_into(np.array(d, dtype=np.int64), np.array(w, dtype=np.int64), into)
            del d[:]
            del w[:]

    def fold_arrays(self, wait_d: np.ndarray, wait_w: np.ndarray, hold_d: np.ndarray,
                    hold_w: np.ndarray) -> None:
        """Fold events recorded in arrays (the cycle engine's) straight into the
        histograms: a distribution does not depend on the order of its samples."""
        _fold_into(wait_d, wait_w, self.wait)
        _fold_into(hold_d, hold_w, self.hold)

    def by_role(self, which: dict[int, Dist], roles: list[str]) -> dict[str, Dist]:
        out: dict[str, Dist] = {}
        for who in sorted(which):
            key = f"{roles[who >> 2]}:{_MODES[who & 3]}"
            d = out.get(key)
            if d is None:
                d = out[key] = Dist()
            d.merge(which[who])
        return dict(sorted(out.items()))


# --- results --------------------------------------------------------------------------

@dataclass
class ThreadTime:
    """One simulated CPU's virtual time, split into categories."""

    tid: int
    name: str
    role: str
    start_ns: int
    end_ns: int
    done: bool
    steps: int
    categories: dict[str, int]

    @property
    def elapsed_ns(self) -> int:
        return self.end_ns - self.start_ns

    @property
    def on_cpu_ns(self) -> int:
        return self.elapsed_ns - self.categories.get(SLEEP, 0)


@dataclass
class LockReport:
    """Contention on one lock: waits (request to acquisition, 0 when uncontended) and
    holds (acquisition to release), per (holder role, mode); time waiters spent spinning
    or sleeping on it."""

    name: str
    kind: str
    acquisitions: int
    contended: int
    spin_ns: int
    sleep_ns: int
    wait: dict[str, Dist]
    hold: dict[str, Dist]


@dataclass
class TimedResult:
    program: str
    cost_model: str
    #: why the run stopped: "done", "until", "max_steps", "violation" or "deadlock"
    stopped: str
    end_ns: int
    steps: int
    threads: list[ThreadTime]
    categories: dict[str, int]
    locks: dict[str, LockReport]
    label_counts: dict[str, int]
    label_ns: dict[str, int]
    cas_attempts: dict[str, int]
    cas_failures: dict[str, int]
    atomic_contended: int
    tlb_flushes: int
    unknown_labels: dict[str, int]
    counters: dict[str, int]
    violation: Violation | None
    profile: Profile | None
    #: wall-clock seconds the driver ran (the only non-deterministic field)
    wall_s: float = field(default=0.0, compare=False)

    @property
    def ok(self) -> bool:
        return self.violation is None

    @property
    def lock_spin_ns(self) -> dict[str, int]:
        return {n: lk.spin_ns for n, lk in self.locks.items()}

    def to_dict(self) -> dict[str, Any]:
        """Everything deterministic, as plain data (for comparisons and JSON)."""
        return {
            "program": self.program, "cost_model": self.cost_model,
            "stopped": self.stopped, "end_ns": self.end_ns, "steps": self.steps,
            "threads": [{f.name: getattr(t, f.name) for f in fields(t)} for t in self.threads],
            "categories": self.categories,
            "locks": {n: {"kind": lk.kind, "acquisitions": lk.acquisitions,
                          "contended": lk.contended, "spin_ns": lk.spin_ns,
                          "sleep_ns": lk.sleep_ns,
                          "wait": {k: d.to_dict() for k, d in lk.wait.items()},
                          "hold": {k: d.to_dict() for k, d in lk.hold.items()}}
                      for n, lk in self.locks.items()},
            "label_counts": self.label_counts, "label_ns": self.label_ns,
            "cas_attempts": self.cas_attempts, "cas_failures": self.cas_failures,
            "atomic_contended": self.atomic_contended, "tlb_flushes": self.tlb_flushes,
            "unknown_labels": self.unknown_labels, "counters": self.counters,
            "violation": (None if self.violation is None else
                          [self.violation.kind, self.violation.message, self.violation.tid]),
            "profile": None if self.profile is None else sorted(self.profile.samples.items()),
        }

    def summary(self, top_labels: int = 12) -> str:
        """A plain-text report: CPU time per thread and category, locks, operations."""
        out = [f"timed run of {self.program} with {self.cost_model}: stopped ({self.stopped})"
               f" at {_fmt_ns(self.end_ns)} virtual, {self.steps} steps"]
        if self.violation is not None:
            out.append(f"VIOLATION {self.violation.kind}: {self.violation.message}")
        cats = [c for c in sorted(self.categories) if self.categories[c]]
        head = f"{'thread':<18}{'role':<8}{'time':>10}" + "".join(f"{c:>10}" for c in cats)
        out += ["", "CPU time by category (% of each thread's time):", head]
        for t in self.threads:
            tot = t.elapsed_ns or 1
            out.append(f"{t.name[:17]:<18}{t.role[:7]:<8}{_fmt_ns(t.elapsed_ns):>10}" + "".join(
                f"{100.0 * t.categories.get(c, 0) / tot:>9.1f}%" for c in cats))
        total = sum(self.categories.values()) or 1
        out.append(f"{'all':<18}{'':<8}{_fmt_ns(total):>10}" + "".join(
            f"{100.0 * self.categories[c] / total:>9.1f}%" for c in cats))
        if self.locks:
            out += ["", "locks (wait = request to acquisition; p99 from a log-linear "
                    "histogram):",
                    f"{'lock':<24}{'holder':<14}{'acq':>8}{'wait avg':>10}{'p99':>10}"
                    f"{'max':>10}{'hold avg':>10}{'p99':>10}{'max':>10}"]
            for name, lk in sorted(self.locks.items()):
                out.append(f"{name[:23]:<24}{'(all)':<14}{lk.acquisitions:>8}  contended "
                           f"{lk.contended}, spinning {_fmt_ns(lk.spin_ns)}, sleeping "
                           f"{_fmt_ns(lk.sleep_ns)}")
                for key in sorted(set(lk.wait) | set(lk.hold)):
                    w = lk.wait.get(key, Dist())
                    h = lk.hold.get(key, Dist())
                    out.append(f"{'':<24}{key[:13]:<14}{w.n:>8}{_fmt_ns(w.mean):>10}"
                               f"{_fmt_ns(w.percentile(99)):>10}{_fmt_ns(w.max):>10}"
                               f"{_fmt_ns(h.mean):>10}{_fmt_ns(h.percentile(99)):>10}"
                               f"{_fmt_ns(h.max):>10}")
        if self.label_counts:
            out += ["", f"operations by label (top {top_labels} by time):"]
            for lb, ns in sorted(self.label_ns.items(), key=lambda x: (-x[1], x[0]))[
                    :top_labels]:
                out.append(f"  {lb:<28}{self.label_counts[lb]:>10} ops {_fmt_ns(ns):>10}")
        if self.cas_attempts:
            att = sum(self.cas_attempts.values())
            fail = sum(self.cas_failures.values())
            out.append(f"cmpxchg: {att} attempts, {fail} failed"
                       f" ({100.0 * fail / max(att, 1):.2f}%)")
        out.append(f"contended atomics (cache-line transfers charged): {self.atomic_contended}")
        out.append(f"remote TLB flushes: {self.tlb_flushes}")
        if self.unknown_labels:
            out.append("WARNING: labels missing from the cost model (kind default used): "
                       + ", ".join(f"{k} x{v}" for k, v in sorted(self.unknown_labels.items())))
        return "\n".join(out)


def _fmt_ns(ns: float) -> str:
    ns = float(ns)
    if ns >= 1e9:
        return f"{ns / 1e9:.3f}s"
    if ns >= 1e6:
        return f"{ns / 1e6:.3f}ms"
    if ns >= 1e3:
        return f"{ns / 1e3:.2f}us"
    return f"{ns:.0f}ns"


# --- the driver -----------------------------------------------------------------------

class TimedDriver:
    """Run a program (or an already built machine) on virtual time.

    ``roles`` maps thread ids to roles (``"vcpu"``, ``"aging"``, ``"zapper"``,
    ``"rcu"``...); ``sample_period_ns`` turns on stack sampling. ``run`` may be called
    again to continue a run stopped by ``until_ns`` or ``max_steps``.
    """

    def __init__(self, target: Program | Machine, cost_model: CostModel | None = None,
                 sample_period_ns: int | None = None,
                 roles: dict[int, str] | None = None, cycle_engine: bool = True) -> None:
        if isinstance(target, Program):
            self.m = target.build()
            self.key = target.key
        elif isinstance(target, Machine):
            self.m = target
            self.key = "<machine>"
        else:
            raise TypeError(f"TimedDriver needs a Program or a Machine, got {target!r}")
        self.cm = cost_model if cost_model is not None else load_cost_model()
        self.roles: dict[int, str] = dict(roles or {})
        if sample_period_ns is not None and int(sample_period_ns) <= 0:
            raise ValueError(f"sample_period_ns must be > 0, got {sample_period_ns}")
        self.period = int(sample_period_ns) if sample_period_ns else 0
        self.profile = Profile(self.period) if self.period else None

        cm = self.cm
        self.cat_names = cm.categories()
        self.cat_id = {c: i for i, c in enumerate(self.cat_names)}
        self.SPIN = self.cat_id[SPIN]
        self.SLEEP = self.cat_id[SLEEP]
        batch = set(cm.tlb_batch_labels)
        self._labels: dict[str, _Cost] = {}
        for lb, e in sorted(cm.labels.items()):
            cat = cm.label_category(lb)
            self._labels[lb] = self._info(e.ns, e.per_element_ns, e.vector_base_ns,
                                          cat, lb in batch, False)
        self._kinds: list[_Cost] = []
        for k in range(max(O.KIND_NAMES) + 1):
            e = cm.kinds[k]
            self._kinds.append(self._info(e.ns, e.per_element_ns, e.vector_base_ns,
                                          e.category, False, False))
        self._kind_names = O.KIND_NAMES
        self._window = int(cm.contention_window_ns + 0.5)
        self._surcharge = int(cm.atomic_surcharge_ns + 0.5)
        self._lshift = cm.line_words.bit_length() - 1
        self._handoff = int(cm.spin_handoff_ns + 0.5)
        self._wakeup = int(cm.sleep_wakeup_ns + 0.5)
        self._flush_base = int(cm.tlb_flush_base_ns + 0.5)

        # per-thread state, indexed by tid
        self._clk: list[int] = []
        self._start: list[int] = []
        self._role: list[str] = []
        self._rolecat: list[int] = []
        self._cat: list[list[int]] = []
        self._busy: list[int] = []
        self._batch_last: dict[int, int] = {}  # tid -> its step count at its last batch op
        self._park: dict[int, tuple[int, int, bool, str | None, _LockStats | None]] = {}
        self._waiters: dict[int, list[int]] = {}  # oid -> parked tids (WAIT, GP_WAIT)
        self._rq = _ReadyQueue()
        self._lines: dict[int, int] = {}  # (oid << 32 | line) -> (time << 32 | tid)
        #: oid -> its ``_LineTable`` if the object is large, None if its lines are in
        #: ``_lines``
        self._big: dict[int, _LineTable | None] = {}
        self._locks: dict[int, _LockStats] = {}
        self._cas_att: dict[str, int] = {}
        self._cas_fail: dict[str, int] = {}
        self._contended = 0
        self._flushes = 0
        self._steps = 0
        self._end = 0
        self._stopped = "not started"
        self._missed_wakeups = 0
        self.wall_s = 0.0
        self._started = False
        self._all_daemon = False
        #: step ``lock_cycles`` traffic in the compiled cycle engine (``sim/cycles.py``)
        #: where it may; the results are the same either way
        self.cycle_engine = cycle_engine
        #: steps the cycle engine took (included in ``steps``)
        self.engine_steps = 0
        self._engine_retry = 0  # after a refusal, the driver's step count to retry at
        self._engine_wait = _ENGINE_BACKOFF  # steps to wait after the next refusal
        #: when to hand over is a matter of speed only (the results are the same):
        #: stretches shorter than this count as refusals (tests set 0 to hand over
        #: whenever the engine may), and runs with fewer operations left than
        #: ``engine_min_ops`` are stepped by the driver
        self.engine_min_stretch = _ENGINE_BACKOFF
        #: the steps the last hand-over had to take to pay for itself (its cost grows
        #: with the threads it copies: ``cycles._hand_over`` sets it)
        self._engine_worth = 0
        self.engine_min_ops = cycles.MIN_OPS
        #: the engine's sample buffers (``cycles._hand_over`` allocates them once), its
        #: per-``lock_cycles`` facts and its label counters' cost entries
        self._engine_buffers: Any = None
        self._engine_cache: dict[int, Any] = {}
        self._engine_infos: list[Any] = []
        self._engine_slots: dict[int, int] = {}

    def _info(self, ns: float, per: float, vbase: float, cat: str | None, batch: bool,
              unknown: bool) -> _Cost:
        cid = -1 if cat is None else self._cat_index(cat)
        # costs are whole nanoseconds: each operation's cost is rounded half up
        return _Cost(int(ns + 0.5), float(per), float(vbase), cid, batch, unknown)

    def _cat_index(self, cat: str) -> int:
        i = self.cat_id.get(cat)
        if i is None:
            i = self.cat_id[cat] = len(self.cat_names)
            self.cat_names.append(cat)
            for row in self._cat:
                row.append(0)
        return i

    def set_role(self, tid: int, role: str) -> None:
        """Give thread ``tid`` a role (before the run starts, or for a thread id that
        will be spawned)."""
        self.roles[tid] = role
        if tid < len(self._role):
            self._role[tid] = role
            self._rolecat[tid] = self._cat_index(self.cm.role_category(role))

    # -- thread bookkeeping --------------------------------------------------------------
    def _add_thread(self, tid: int, at: int, role: str) -> None:
        self._clk.append(at)
        self._start.append(at)
        self._role.append(role)
        self._rolecat.append(self._cat_index(self.cm.role_category(role)))
        self._cat.append([0] * len(self.cat_names))
        self._busy.append(0)

    def _ready(self, tid: int) -> None:
        """Queue thread ``tid`` at its clock, or park it if its op is not enabled."""
        t = self.m.threads[tid]
        if t.done:
            return
        if t.pending.kind in _BLOCKING and not self.m.enabled(tid):
            self._park_thread(tid, t.pending)
            return
        self._rq.push(self._clk[tid], tid)

    def _park_thread(self, tid: int, op: O.Op) -> None:
        k = op.kind
        ls = None
        leaf: str | None = None
        if k == O.GRANT:
            # lock waiters are found through lock.queue, not the waiter lists
            ls = self._lock_stats(op.obj)
            read = op.a == READ
            self._park[tid] = ls.park_rec[read] or self._lock_park_rec(op.obj, ls, read)
            return
        if k == O.GP_WAIT:
            cid, handoff, spinning = self.SLEEP, self._wakeup, False
            self._waiters.setdefault(op.obj.oid, []).append(tid)
        else:  # WAIT: a spin-wait loop burns the CPU (unless it is a harness's wait),
            # but a wait labelled with category ``sleep`` is ``wait_event``: off-CPU
            cat = self.cm.label_category(op.cost) if op.cost is not None else None
            cid = self.SPIN if cat is None else self._cat_index(cat)
            if cat == SLEEP:
                handoff, spinning, leaf = self._wakeup, False, None
            else:
                handoff, spinning, leaf = self._handoff, cat not in NOT_WORK, WAIT_LEAF
            self._waiters.setdefault(op.obj.oid, []).append(tid)
        self._park[tid] = (cid, handoff, spinning, leaf, ls)

    def _lock_park_rec(self, lock: Any, ls: _LockStats, read: bool) -> tuple[Any, ...]:
        rec: tuple[int, int, bool, str | None, _LockStats]
        if lock.sleeping:
            rec = (self.SLEEP, self._wakeup, False, None, ls)
        else:
            mode = "read" if read else ("write" if lock.shared_ok else "excl")
            leaf = SPIN_LEAF.get((lock.kind, mode), "native_queued_spin_lock_slowpath")
            rec = (self.SPIN, self._handoff, True, leaf, ls)
        ls.park_rec[read] = rec
        return rec

    def _sample_wait(self, tid: int, dt: int, leaf: str | None) -> None:
        """Stack samples for ``dt`` ns spent spinning (the leaf names the wait)."""
        n = self._samples(tid, dt)
        if n:
            st = self._stack(tid, self.m.threads[tid])
            assert self.profile is not None  # sampling is on only with a profile
            self.profile.add(st + (leaf,) if leaf else st, n)

    def _wake(self, tid: int, at: int) -> None:
        """Parked thread ``tid`` is enabled by a step completing at ``at``."""
        cid, handoff, spinning, leaf, ls = self._park.pop(tid)
        c0 = self._clk[tid]
        ready = (c0 if c0 > at else at) + handoff
        self._account_wait(tid, c0, ready, cid, spinning, leaf, ls)
        self._clk[tid] = ready
        self._rq.push(ready, tid)

    def _account_wait(self, tid: int, c0: int, c1: int, cid: int, spinning: bool,
                      leaf: str | None, ls: _LockStats | None) -> None:
        dt = c1 - c0
        if dt <= 0:
            return
        self._cat[tid][cid] += dt
        if ls is not None:
            if spinning:
                ls.spin_ns += dt
            else:
                ls.sleep_ns += dt
        if spinning and self.period:
            self._sample_wait(tid, dt, leaf)

    def _check_waiters(self, oid: int, at: int) -> None:
        ws = self._waiters.get(oid)
        if not ws:
            return
        enabled = self.m.enabled
        keep: list[int] = []
        woke: list[int] = []
        for w in ws:
            (woke if enabled(w) else keep).append(w)
        if woke:
            if keep:
                self._waiters[oid] = keep
            else:
                del self._waiters[oid]
            for w in woke:
                self._wake(w, at)

    def _lock_stats(self, lock: Any) -> _LockStats:
        ls = self._locks.get(lock.oid)
        if ls is None:
            ls = self._locks[lock.oid] = _LockStats(lock.name, lock.kind)
        return ls

    def _unknown(self, label: str, kind: int) -> _Cost:
        """A label the cost model does not know: the kind's cost, the prefix rule's
        category (else the role's), and a warning in the result."""
        e = self.cm.kinds[kind]
        cat = self.cm.label_category(label)
        info = self._info(e.ns, e.per_element_ns, e.vector_base_ns, cat,
                          label in self.cm.tlb_batch_labels, True)
        self._labels[label] = info
        return info

    def _start_run(self) -> None:
        m = self.m
        self._started = True
        self._all_daemon = m.live == 0
        for t in m.threads:
            self._add_thread(t.tid, 0, self.roles.get(t.tid, "other"))
        if m.violation is not None:
            return
        for t in m.threads:
            self._ready(t.tid)

    # -- the run ---------------------------------------------------------------------------
    def run(self, until_ns: int | None = None, max_steps: int | None = None) -> TimedResult:
        """Run until every non-daemon thread is done, virtual time ``until_ns`` is
        reached (operations starting before it run), ``max_steps`` more steps were
        taken, or a violation; return the result so far."""
        w0 = time.perf_counter()
        if not self._started:
            self._start_run()
        if self._all_daemon and until_ns is None and max_steps is None:
            raise ValueError("every thread is a daemon: give until_ns or max_steps")
        m = self.m
        steps0 = self._steps
        while True:
            if m.violation is not None:
                stopped = "violation"
                break
            left = None if max_steps is None else max_steps - (self._steps - steps0)
            stopped = self._loop(until_ns, left)
            if stopped != "empty":
                break
            # nothing is ready: done, a deadlock, or (a driver bug) a missed wakeup
            # (self.m, not m: mypy narrowed m.violation to None above, mypyc by it)
            if self.m.violation is not None:
                stopped = "violation"
                break
            if m.live == 0 and not self._all_daemon:
                stopped = "done"
                break
            missed = [tid for tid in sorted(self._park) if m.enabled(tid)]
            if not missed:
                stopped = "deadlock" if m.run_to_deadlock_check() else "done"
                break
            self._missed_wakeups += len(missed)  # safety net; the tests require zero
            for tid in missed:
                self._remove_waiter(tid)
                self._wake(tid, self._clk[tid])
        self._stopped = stopped
        if stopped == "until":
            end = int(until_ns)  # type: ignore[arg-type]
        else:
            end = max(self._clk) if self._clk else 0
        self._end = max(self._end, end)
        if stopped != "violation":
            self._close_parked(self._end)
        self.wall_s += time.perf_counter() - w0
        return self.result()

    def _remove_waiter(self, tid: int) -> None:
        for oid in list(self._waiters):
            ws = self._waiters[oid]
            if tid in ws:
                ws.remove(tid)
                if not ws:
                    del self._waiters[oid]

    def _close_parked(self, end: int) -> None:
        """Account parked threads' waiting up to ``end`` (they stay parked)."""
        for tid in sorted(self._park):
            c0 = self._clk[tid]
            if c0 < end:
                cid, _, spinning, leaf, ls = self._park[tid]
                self._account_wait(tid, c0, end, cid, spinning, leaf, ls)
                self._clk[tid] = end

    def _loop(self, until_ns: int | None, max_steps: int | None) -> str:
        """The event loop. Returns why it stopped: "until", "max_steps", "violation",
        "done", or "empty" (nothing ready; the caller decides what that means)."""
        m = self.m
        # methods are called through their objects, not bound to locals: compiled
        # (mypyc), such a call is a direct C call, a bound method a Python-level one
        threads = m.threads
        rq = self._rq
        rkeys = rq.keys  # the earliest ready time is -rkeys[-1]
        clk = self._clk
        cat = self._cat
        rolecat = self._rolecat
        labels = self._labels
        kinds = self._kinds
        lines = self._lines
        bigs = self._big
        locks = self._locks
        window = self._window
        surcharge = self._surcharge
        lshift = self._lshift
        waiters = self._waiters
        park = self._park
        period = self.period
        SLEEP_ID = self.SLEEP
        kclass = _KCLASS
        blocking = _BLOCKING_BY_KIND
        READ_LOCK, READ_UNLOCK, STORE, CAS = O.READ_LOCK, O.READ_UNLOCK, O.STORE, O.CAS
        KC_CAS, KC_VEC, KC_SPAWN, KC_ACQ, KC_REL, KC_GRANT = (
            _KC_CAS, _KC_VEC, _KC_SPAWN, _KC_ACQ, _KC_REL, _KC_GRANT)
        CALL_RCU = O.CALL_RCU
        VUPDATE = O.VUPDATE
        rcu_sched = m.rcu_sched
        rs_oid: int = -1
        if rcu_sched is not None and rcu_sched.oid is not None:
            rs_oid = rcu_sched.oid
        all_daemon = self._all_daemon
        engine = self.cycle_engine and not period and not m.tracing
        # an int either way (virtual time never reaches 2**62 ns, 146 years), so that
        # compiled, the loop's time comparisons are machine-integer ones
        limit = until_ns if until_ns is not None else 1 << 62
        budget = max_steps if max_steps is not None else -1
        steps = 0
        contended = 0
        carry = -1  # a thread to run next without a queue round trip
        stopped = "empty"
        try:
            while True:
                if steps == budget:
                    stopped = "max_steps"
                    break
                if carry >= 0:
                    tid = carry
                    now = clk[tid]
                    carry = -1
                else:
                    if not rkeys:
                        break
                    now = -rkeys[-1]
                    if now >= limit:
                        stopped = "until"
                        break
                    tid = rq.pop()
                t = threads[tid]
                if t.cyc is not None and engine and self._steps + steps >= self._engine_retry:
                    n = cycles.hand_over(self, tid, now, limit,
                                         budget - steps if budget >= 0 else -1)
                    if n >= self.engine_min_stretch and n >= self._engine_worth:
                        self._engine_wait = _ENGINE_BACKOFF
                    elif n >= 0:  # refused, or a short stretch: not for a while, and
                        # for twice as long each time in a row (up to _ENGINE_MAX_WAIT)
                        self._engine_retry = (self._steps + steps + n
                                              + max(self._engine_wait, self._engine_worth))
                        if self._engine_wait < _ENGINE_MAX_WAIT:
                            self._engine_wait *= 2
                    if n > 0:
                        steps += n
                        if m.violation is not None:  # a note the engine replayed
                            stopped = "violation"
                            break
                        continue
                op = t.pending
                k = op.kind
                # a woken lock or grace-period waiter stays enabled (only the queue head
                # can be granted and nothing takes the lock past a non-empty queue; a
                # grace period never un-ends), but a wait_until condition can turn false
                if k == _WAIT and not m.enabled(tid):
                    self._park_thread(tid, op)
                    continue
                lab = op.cost
                if lab is None:
                    info = kinds[k]
                else:
                    found = labels.get(lab)
                    info = found if found is not None else self._unknown(lab, k)
                obj = op.obj
                c = info.ns
                kc = kclass[k]
                if kc >= KC_ACQ:
                    # a lock operation: an atomic on the lock word, whose last writer
                    # the lock's statistics record (a grant's line transfer is the
                    # wakeup handoff, already charged)
                    lk: Lock = obj
                    ls = locks.get(lk.oid)  # type: ignore[arg-type]
                    if ls is None:
                        ls = self._lock_stats(lk)
                    if kc != KC_GRANT and ls.lw_tid != tid and ls.lw_tid >= 0 \
                            and now - ls.lw_time < window:
                        c += surcharge
                        contended += 1
                    ls.lw_tid = tid
                    ls.lw_time = now
                elif kc:
                    if kc <= KC_CAS:  # scalar writes: cache-line bookkeeping
                        big = bigs.get(obj.oid, _UNSEEN)
                        if big is _UNSEEN:
                            big = self._line_table(obj)
                        if big is not None:  # a large object's lines: in arrays
                            ln = op.lo >> lshift
                            nc = big.touch(ln, ln + 1, tid, now, window, k != STORE)
                            c += nc * surcharge
                            contended += nc
                        else:
                            key = (obj.oid << 32) | (op.lo >> lshift)
                            if k != STORE:  # an atomic read-modify-write
                                prev = lines.get(key)
                                if (prev is not None and (prev & 0xFFFFFFFF) != tid
                                        and now - (prev >> 32) < window):
                                    c += surcharge
                                    contended += 1
                            lines[key] = (now << 32) | tid
                        if k == CAS:
                            self._cas(op, lab)
                    elif kc == KC_VEC:
                        c, nc = self._vector(op, k, info, tid, now)
                        contended += nc
                        if k == O.VCAS:
                            self._vcas(op, lab)
                if info.batch:  # a remote TLB flush batch label
                    c += self._flush_batch(tid, t.steps)
                cid = info.cid
                if cid < 0:
                    cid = rolecat[tid]
                end = now + c
                row = cat[tid]
                row[cid] = row[cid] + c  # compiled, ``+=`` on an item is a generic add
                info.count += 1
                info.total += c
                if period:
                    if c and cid != SLEEP_ID:
                        self._sample(tid, t, c)
                m.now = now
                if kc == KC_VEC and k == VUPDATE:
                    # its writes' costs are known once it has run (and are owed even if
                    # the model code after it then fails: the words were written)
                    st = self._stack(tid, t) if period else None
                    m.step(tid)
                    wc, wn = self._vupdate_writes(op, tid, end, st)
                    end += wc
                    contended += wn
                else:
                    m.step(tid)
                steps += 1
                clk[tid] = end
                if m.violation is not None:
                    stopped = "violation"
                    break
                if kc >= KC_ACQ:
                    # -- lock statistics, parking a refused request, waking the head --
                    assert ls is not None  # looked up above for every lock operation
                    if kc == KC_REL:
                        who = tid * 4 + (1 if k == READ_UNLOCK else
                                         (2 if lk.shared_ok else 0))
                        times = ls.held.get(who)
                        if times:
                            ls.hold_d.append(now - times.pop())
                            ls.hold_w.append(who)
                            if len(ls.hold_d) >= _FOLD:
                                ls.fold()
                    else:
                        if kc == KC_GRANT:
                            who = tid * 4 + (1 if op.a == 1 else (2 if lk.shared_ok else 0))
                            req = ls.req
                            wait = 0
                            if tid in req:  # get and del: cheaper compiled than pop
                                wait = now - req[tid]
                                del req[tid]
                        elif ((lk.owner is not None and lk.owner == tid)
                              or tid in lk.readers):
                            who = tid * 4 + (1 if k == READ_LOCK else
                                             (2 if lk.shared_ok else 0))
                            wait = 0
                        else:
                            # refused and queued: park until the grant is possible (a
                            # request changes nothing a waiter or grace period waits on)
                            ls.req[tid] = now
                            ls.contended += 1
                            rec = ls.park_rec[k == READ_LOCK]
                            if rec is None:
                                rec = self._lock_park_rec(lk, ls, k == READ_LOCK)
                            park[tid] = rec
                            continue
                        ls.acquisitions += 1
                        ls.wait_d.append(wait)
                        ls.wait_w.append(who)
                        times = ls.held.get(who)
                        if times is None:
                            ls.held[who] = [now]
                        else:
                            times.append(now)
                        if len(ls.wait_d) >= _FOLD:
                            ls.fold()
                    # a release, or a grant (the next reader may follow), can make the
                    # queue head grantable; a request never does
                    if kc != KC_ACQ:
                        q = lk.queue
                        if q:
                            h, hmode = q[0]
                            # h parked and lk.compatible(hmode) (Lock.compatible, inlined)
                            if h in park and lk.owner is None and (
                                    hmode == READ or not lk.readers):
                                # wake the head (inline _wake for the common case)
                                hrec = park[h]
                                del park[h]
                                c0 = clk[h]
                                ready = (c0 if c0 > end else end) + hrec[1]
                                dt = ready - c0
                                if dt:
                                    hrow = cat[h]
                                    hrow[hrec[0]] = hrow[hrec[0]] + dt
                                    if hrec[2]:
                                        ls.spin_ns += dt
                                        if period:
                                            self._sample_wait(h, dt, hrec[3])
                                    else:
                                        ls.sleep_ns += dt
                                clk[h] = ready
                                rq.push(ready, h)
                    if rs_oid >= 0 and waiters and not lk.sleeping:
                        self._check_waiters(rs_oid, end)
                else:
                    if waiters and obj is not None and obj.oid in waiters:
                        self._check_waiters(obj.oid, end)
                    if kc == KC_SPAWN:
                        self._spawned(tid, end, k == CALL_RCU)
                if t.done:
                    if m.live == 0 and not all_daemon:
                        stopped = "done"
                        break
                    continue
                if blocking[t.pending.kind] and not m.enabled(tid):
                    self._park_thread(tid, t.pending)
                    continue
                if end < limit and (not rkeys or -end > rkeys[-1]):
                    carry = tid
                else:
                    rq.push(end, tid)
        finally:
            if carry >= 0:
                rq.push(clk[carry], carry)
            self._steps += steps
            self._contended += contended
        return stopped

    # -- slower paths, out of the loop ------------------------------------------------------
    def _flush_batch(self, tid: int, nsteps: int) -> int:
        """The first operation of a remote TLB flush batch (consecutive batch-labelled
        operations of one thread) also pays the flush base."""
        last = self._batch_last.get(tid)
        self._batch_last[tid] = nsteps
        if last is not None and last == nsteps - 1:
            return 0
        self._flushes += 1
        return self._flush_base

    def _samples(self, tid: int, c: int) -> int:
        """Advance ``tid``'s busy time by ``c``: how many sampling periods it crossed."""
        b0 = self._busy[tid]
        b1 = b0 + c
        self._busy[tid] = b1
        return b1 // self.period - b0 // self.period

    def _sample(self, tid: int, t: Any, c: int) -> None:
        n = self._samples(tid, c)
        if n:
            assert self.profile is not None  # sampling is on only with a profile
            self.profile.add(self._stack(tid, t), n)

    def _stack(self, tid: int, t: Any) -> tuple[str, ...]:
        stack = (f"[{self._role[tid]}]",) + generator_stack(t.gen)
        prog = t.cyc_prog
        if prog is not None:  # a ``lock_program``'s frames for this operation
            stack += prog.frames[t.cyc_j]
        return stack

    def _sample_stack(self, tid: int, stack: tuple[str, ...], c: int) -> None:
        """``_sample`` with a stack taken earlier (the thread has moved on since)."""
        n = self._samples(tid, c)
        if n:
            assert self.profile is not None
            self.profile.add(stack, n)

    def _line_table(self, obj: Any) -> "_LineTable | None":
        """Decide once per object where its cache-line stamps live."""
        n = len(obj.data)
        big = _LineTable((n >> self._lshift) + 1) if n >= _BIG_WORDS else None
        self._big[obj.oid] = big
        return big

    def _cas(self, op: O.Op, lab: str | None) -> None:
        key = lab if lab is not None else "<cas>"
        self._cas_att[key] = self._cas_att.get(key, 0) + 1
        w = op.obj
        d = w.data
        if not w.freed and 0 <= op.lo < len(d) and int(d[op.lo]) != op.a:
            self._cas_fail[key] = self._cas_fail.get(key, 0) + 1

    def _vcas(self, op: O.Op, lab: str | None) -> None:
        """A vector cmpxchg's attempts and failures, as ``_cas`` counts a scalar one's."""
        key = lab if lab is not None else "<cas>"
        w = op.obj
        if w.freed or not 0 <= op.lo <= op.hi <= len(w.data):
            return
        sel = op.b
        n, fails = vec.count_mismatches(w.data[op.lo:op.hi],
                                        np.asarray(op.a[0], dtype=np.uint64),
                                        vec.NO_SEL if sel is None else sel, sel is None)
        self._cas_att[key] = self._cas_att.get(key, 0) + n
        if fails:
            self._cas_fail[key] = self._cas_fail.get(key, 0) + fails

    def _vector(self, op: O.Op, k: int, info: _Cost, tid: int, now: int
                ) -> tuple[int, int]:
        """Cost of a vector op (per element) and its contended lines. A ``vupdate``'s
        is its read's (``_vupdate_writes`` charges its writes once it has run)."""
        sel = op.b if k != O.VLOAD and k != O.VUPDATE else None
        if sel is None:
            n = op.hi - op.lo
        else:
            n = int(np.count_nonzero(sel))
        c = int(info.vbase + n * info.per + 0.5)
        if k == O.VLOAD or k == O.VUPDATE or n == 0:
            return c, 0
        nc = self._touch(op.obj, op.lo, op.hi, sel, n, k in _VATOMIC, tid, now)
        return c + nc * self._surcharge, nc

    def _touch(self, obj: Any, lo: int, hi: int, sel: Any, n: int, atomic: bool,
               tid: int, now: int) -> int:
        """Stamp the cache lines of the words ``sel`` selects of ``obj[lo:hi]`` (``n``
        of them; ``None``: all) as written by ``tid`` at ``now``; return how many an
        atomic found written by another CPU within the window."""
        s = self._lshift
        big = self._big.get(obj.oid, _UNSEEN)
        if big is _UNSEEN:
            big = self._line_table(obj)
        if big is not None:
            if sel is None or n == hi - lo:  # every word: the lines of the range
                return big.touch(lo >> s, ((hi - 1) >> s) + 1, tid, now, self._window,
                                 atomic)
            return big.touch_selected(sel, lo, s, tid, now, self._window, atomic)
        base = obj.oid << 32
        ls: Sequence[int]  # declared: mypyc checks the type of each assignment
        if sel is None:
            ls = range(lo >> s, ((hi - 1) >> s) + 1)
        else:
            ls = np.unique((np.flatnonzero(sel) + lo) >> s).tolist()
        lines = self._lines
        stamp = (now << 32) | tid
        nc = 0
        if atomic:
            window = self._window
            for ln in ls:
                key = base | ln
                prev = lines.get(key)
                if prev is not None and (prev & _M32) != tid and now - (prev >> 32) < window:
                    nc += 1
                lines[key] = stamp
        else:
            for ln in ls:
                lines[base | ln] = stamp
        return nc

    def _vupdate_writes(self, op: O.Op, tid: int, at: int, stack: Any) -> tuple[int, int]:
        """Charge the writes a ``vupdate`` made (``Machine.vwrites``), from ``at`` (its
        read done) on, as the vector atomic and then the vector store it replaces would
        be charged: each by its label (else its kind), per word, with the atomic's
        contended lines. ``stack``: the thread's stack at the operation, for samples.
        Returns (ns, contended lines)."""
        asel, na, ssel, ns = self.m.vwrites
        labs = op.b
        total = 0
        ncont = 0
        atomic_kind = O.VCAS if labs[2] else O.VFETCH_AND  # (for an unlabelled one)
        for k, lab, sel, n in ((atomic_kind, labs[0], asel, na),
                               (O.VSTORE, labs[1], ssel, ns)):
            if not n:
                continue
            if lab is None:
                info = self._kinds[k]
            else:
                found = self._labels.get(lab)
                info = found if found is not None else self._unknown(lab, k)
            c = int(info.vbase + n * info.per + 0.5)
            nc = self._touch(op.obj, op.lo, op.hi, sel, n, k != O.VSTORE, tid,
                             at + total)
            if k == O.VCAS:  # cmpxchgs of the value just read: attempts, all succeed
                key = lab if lab is not None else "<cas>"
                self._cas_att[key] = self._cas_att.get(key, 0) + n
            c += nc * self._surcharge
            cid = info.cid
            if cid < 0:
                cid = self._rolecat[tid]
            self._cat[tid][cid] += c
            info.count += 1
            info.total += c
            if stack is not None and c and cid != self.SLEEP:
                self._sample_stack(tid, stack, c)
            total += c
            ncont += nc
        return total, ncont

    def _spawned(self, parent: int, at: int, rcu_cb: bool) -> None:
        """Threads the step of ``parent`` (completing at ``at``) created."""
        m = self.m
        first = len(self._clk)
        for t in m.threads[first:]:
            role = self.roles.get(t.tid) or ("rcu" if rcu_cb else self._role[parent])
            self._add_thread(t.tid, at, role)
        for t in m.threads[first:]:
            self._ready(t.tid)

    # -- results -----------------------------------------------------------------------------
    def result(self) -> TimedResult:
        m = self.m
        names = self.cat_names
        threads = []
        totals = {c: 0 for c in names}
        for t in m.threads:
            row = self._cat[t.tid]
            cats = {names[i]: v for i, v in enumerate(row) if v}
            for c, v in cats.items():
                totals[c] += v
            threads.append(ThreadTime(t.tid, t.name, self._role[t.tid], self._start[t.tid],
                                      self._clk[t.tid], t.done, t.steps, cats))
        locks = {}
        for oid in sorted(self._locks):
            ls = self._locks[oid]
            ls.fold()
            name = ls.name
            if name in locks:
                name = f"{name}#{oid}"
            locks[name] = LockReport(
                ls.name, ls.kind, ls.acquisitions, ls.contended, ls.spin_ns, ls.sleep_ns,
                ls.by_role(ls.wait, self._role), ls.by_role(ls.hold, self._role))
        label_counts: dict[str, int] = {}
        label_ns: dict[str, int] = {}
        unknown: dict[str, int] = {}
        for lb, info in sorted(self._labels.items()):
            if info.count:
                label_counts[lb] = info.count
                label_ns[lb] = info.total
                if info.unknown:
                    unknown[lb] = info.count
        for k, info in enumerate(self._kinds):
            if info.count:
                key = f"<{self._kind_names[k]}>"
                label_counts[key] = info.count
                label_ns[key] = info.total
        return TimedResult(
            program=self.key, cost_model=self.cm.describe(), stopped=self._stopped,
            end_ns=self._end, steps=self._steps, threads=threads,
            categories={c: v for c, v in totals.items() if v}, locks=locks,
            label_counts=label_counts, label_ns=label_ns,
            cas_attempts=dict(sorted(self._cas_att.items())),
            cas_failures=dict(sorted(self._cas_fail.items())),
            atomic_contended=self._contended, tlb_flushes=self._flushes,
            unknown_labels=unknown, counters=dict(sorted(m.counters.items())),
            violation=m.violation, profile=self.profile, wall_s=self.wall_s)

    @property
    def missed_wakeups(self) -> int:
        """Parked threads found enabled with no wakeup (a driver bug if ever nonzero)."""
        return self._missed_wakeups


def run_timed(target: Program | Machine, cost_model: CostModel | None = None,
              until_ns: int | None = None, sample_period_ns: int | None = None,
              roles: dict[int, str] | None = None, max_steps: int | None = None
              ) -> TimedResult:
    """Build (if needed) and run ``target`` on the timed driver."""
    return TimedDriver(target, cost_model, sample_period_ns, roles).run(until_ns, max_steps)
