"""Profiles of a timed run: simulated call stacks sampled on virtual time.

The timed driver samples each thread's *simulated* call stack (the chain of model
generator functions, outermost first, e.g. ``mglru_walk;kvm_handle_hva_range;
age_gfn_range``) every ``period_ns`` of that thread's on-CPU virtual time, as ``perf
record -F`` samples a real CPU: an operation whose busy interval crosses k sample ticks
adds k samples of the stack that issued it, and a thread spinning on a lock adds samples
whose leaf is the kernel's slow-path function (``queued_write_lock_slowpath``...). Time
spent sleeping (mutex, grace period) is off-CPU and not sampled.

Two outputs:

- ``folded()``: Brendan Gregg's folded-stack format, one ``frame;frame;frame count`` line
  per distinct stack, read by ``flamegraph.pl``, speedscope and inferno;
- ``children_table()``: a ``perf report --children``-style table: per function, the share
  of samples whose stack contains it (children, inclusive) and the share where it is the
  leaf (self), sorted by children share.

The first frame of every stack is the thread's role in brackets (``[vcpu]``, ``[aging]``),
as ``perf`` shows the command name; the table leaves these root frames out.
"""

from __future__ import annotations

from typing import Any, Iterable

#: synthetic leaf frames for time spent spinning, by lock class and mode
SPIN_LEAF = {
    ("spinlock", "excl"): "native_queued_spin_lock_slowpath",
    ("rwlock", "read"): "queued_read_lock_slowpath",
    ("rwlock", "write"): "queued_write_lock_slowpath",
    ("rwlock", "excl"): "queued_write_lock_slowpath",
}
WAIT_LEAF = "[spin-wait]"


#: code objects of generator functions that are not the kernel's: ways of running its
#: code (a fault stream's), left out of the stacks so that they read as the kernel's
TRANSPARENT: set[Any] = set()


def generator_stack(gen: Any) -> tuple[str, ...]:
    """Function names of a (``yield from``-nested) generator chain, outermost first
    (those in ``TRANSPARENT`` left out)."""
    names = []
    g = gen
    while g is not None:
        code = getattr(g, "gi_code", None)
        if code is None:
            break
        if code not in TRANSPARENT:
            names.append(code.co_name)
        g = g.gi_yieldfrom
    return tuple(names)


class Profile:
    """Stack samples of one run."""

    def __init__(self, period_ns: int) -> None:
        if period_ns <= 0:
            raise ValueError(f"sample period must be > 0 ns, got {period_ns}")
        self.period_ns = period_ns
        self.samples: dict[tuple[str, ...], int] = {}

    def add(self, stack: tuple[str, ...], n: int = 1) -> None:
        s = self.samples
        s[stack] = s.get(stack, 0) + n

    @property
    def total(self) -> int:
        return sum(self.samples.values())

    # -- folded stacks -----------------------------------------------------------------
    def folded(self) -> str:
        """``a;b;c count`` lines, sorted by stack (deterministic), newline-terminated."""
        lines = [f"{';'.join(_clean(f) for f in st)} {n}"
                 for st, n in sorted(self.samples.items())]
        return "\n".join(lines) + ("\n" if lines else "")

    def write_folded(self, path: str) -> None:
        with open(path, "w", encoding="utf-8") as f:
            f.write(self.folded())

    # -- perf report --children ----------------------------------------------------------
    def children_table(self, include_roots: bool = False
                       ) -> list[tuple[str, float, float, int, int]]:
        """Rows ``(function, children %, self %, children samples, self samples)``,
        sorted by children share (then self share, then name)."""
        total = self.total
        if total == 0:
            return []
        inclusive: dict[str, int] = {}
        leaf: dict[str, int] = {}
        for st, n in self.samples.items():
            frames = st if include_roots else st[1:]
            if not frames:
                continue
            for f in set(frames):
                inclusive[f] = inclusive.get(f, 0) + n
            lf = frames[-1]
            leaf[lf] = leaf.get(lf, 0) + n
        rows = [(f, 100.0 * c / total, 100.0 * leaf.get(f, 0) / total, c, leaf.get(f, 0))
                for f, c in inclusive.items()]
        rows.sort(key=lambda r: (-r[3], -r[4], r[0]))
        return rows

    def format_table(self, limit: int | None = 40) -> str:
        """The table as ``perf report --children`` prints it."""
        rows = self.children_table()
        out = [f"# Samples: {self.total} (one per {self.period_ns} ns of on-CPU virtual"
               " time per thread)",
               "#",
               "# Children      Self  Symbol",
               "# ........  ........  ......"]
        for f, c, s, _, _ in rows[:limit] if limit else rows:
            out.append(f"  {c:7.2f}%  {s:7.2f}%  {f}")
        if limit and len(rows) > limit:
            out.append(f"  ... {len(rows) - limit} more")
        return "\n".join(out)

    def merge(self, others: Iterable["Profile"]) -> "Profile":
        for o in others:
            for st, n in o.samples.items():
                self.add(st, n)
        return self


def _clean(frame: str) -> str:
    """Frames may not contain the separator; a trailing space would confuse the count."""
    return frame.replace(";", ":").replace(" ", "_")
