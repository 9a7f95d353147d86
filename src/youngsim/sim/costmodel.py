"""The cost model: what each operation costs on the timed driver's virtual clock.

The figures live in a data file (``youngsim/data/costs.toml``, or one given with
``--cost-model FILE``), never in code, and every figure carries its ``source`` (a vendor
manual, a paper, a kernel file or commit) or its ``rationale`` (why this estimate). The
loader refuses a file with an unknown key, a missing source, a negative or non-numeric
cost, with a ``ValueError`` that names the offending key, so a typo cannot silently fall
back to a default.

What the file describes (all times in nanoseconds):

- ``[kinds.<kind>]``: the cost of an operation that has no ``cost=`` label, per operation
  kind (``load``, ``cas``, ``write_lock``, ``vfetch_and``... see ``ops.KIND_NAMES``);
- ``[labels.<label>]``: the cost of operations labelled ``cost="<label>"`` by the model
  code, with an optional CPU-time ``category``;
- vector operations (``vload``, ``vfetch_and``...) cost ``vector_base_ns + N *
  per_element_ns``, where N is the number of words touched (or selected, for a selective
  update); ``per_element_ns`` defaults to ``ns`` (a vector of N atomics costs N atomics);
- ``[contention]``: an atomic read-modify-write on a cache line (``line.words`` words of one
  ``Words`` object) that another thread wrote within ``window.ns`` pays
  ``atomic_surcharge.ns`` per such line (the line has to be pulled from the other core);
- ``[wakeup]``: a parked thread becomes ready ``spin_handoff.ns`` (spinning waiters: the
  lock word's cache line moves to the waiter) or ``sleep.ns`` (mutex and grace-period
  sleepers: a scheduler wakeup) after the step that enabled it completes;
- ``[tlb_flush]``: a run of consecutive operations of one thread labelled with one of
  ``batch_labels`` is one remote flush; its first operation also pays ``base.ns``, so a
  flush of n CPUs costs ``base + n * (per-CPU label costs)`` (``tlb_flush_ns``);
- ``[categories]`` and ``[roles]``: which CPU-time category an operation's cost goes to:
  the label's own ``category``, else the first matching label prefix, else the default
  category of the thread's role (``vcpu``, ``aging``, ``zapper``, ``rcu``...).

A file that begins with ``extends = "default"`` is applied on top of the packaged default:
each table it defines (a label, a kind, ``[contention.window]``...) replaces the default's
table of that name. Otherwise the file is the whole model.
"""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from . import ops as O
from .ops import KIND_NAMES  # a from-import: mypyc's type check then orders ops first

#: operation kinds by the names the cost file uses (``ops.KIND_NAMES``)
KIND_BY_NAME = {name: k for k, name in KIND_NAMES.items()}
VECTOR_KINDS = frozenset({O.VLOAD, O.VSTORE, O.VXCHG, O.VFETCH_AND, O.VFETCH_OR,
                          O.VCAS, O.VUPDATE})
#: read-modify-write atomics: the ones the contended-line surcharge applies to
ATOMIC_KINDS = frozenset({O.CAS, O.XCHG, O.FETCH_AND, O.FETCH_OR, O.FETCH_ADD,
                          O.VXCHG, O.VFETCH_AND, O.VFETCH_OR, O.VCAS})

#: categories the driver itself uses: waiting on a spinning lock or spin-wait loop, and
#: sleeping (mutex, grace period)
SPIN = "spin"
SLEEP = "sleep"

_SOURCE_KEYS = ("source", "rationale")
_CATEGORY_RE = re.compile(r"[a-z][a-z0-9_]*\Z")
_DEFAULT_NAME = "default"


@dataclass(frozen=True)
class OpCost:
    """The cost of one kind or label of operation."""

    ns: float
    per_element_ns: float
    vector_base_ns: float = 0.0
    category: str | None = None
    source: str = ""

    def cost(self, n: int | None = None) -> float:
        """Scalar cost, or the cost of a vector operation over ``n`` words."""
        if n is None:
            return self.ns
        return self.vector_base_ns + n * self.per_element_ns


@dataclass
class CostModel:
    """A validated cost model. Build it with ``load_cost_model`` or ``from_dict``."""

    name: str
    origin: str
    kinds: dict[int, OpCost]
    labels: dict[str, OpCost]
    prefixes: list[tuple[str, str]]
    roles: dict[str, str]
    default_role_category: str
    line_words: int
    contention_window_ns: float
    atomic_surcharge_ns: float
    spin_handoff_ns: float
    sleep_wakeup_ns: float
    tlb_flush_base_ns: float
    tlb_batch_labels: tuple[str, ...]
    #: the merged, validated TOML document (for ``dump`` and reports)
    raw: dict[str, Any] = field(repr=False, default_factory=dict)

    # -- construction ----------------------------------------------------------------
    @classmethod
    def from_dict(cls, doc: dict[str, Any], origin: str = "<dict>") -> "CostModel":
        """Validate a parsed cost document (with ``extends = "default"`` resolved
        against the packaged default) and build the model."""
        doc = _resolve_extends(doc, origin)
        return _build(doc, origin)

    def with_labels(self, labels: dict[str, dict[str, Any]]) -> "CostModel":
        """A copy with extra or replaced label tables (each needs ``ns`` and a
        ``source``/``rationale``, as in the file)."""
        doc = _deep_copy(self.raw)
        doc.setdefault("labels", {}).update(_deep_copy(labels))
        return _build(doc, self.origin)

    def with_tables(self, tables: dict[str, Any]) -> "CostModel":
        """A copy with leaf tables replaced, e.g. ``{"wakeup": {"spin_handoff":
        {"ns": 0, "rationale": "..."}}}`` (the ``extends`` merge rule)."""
        doc = _merge(_deep_copy(self.raw), _deep_copy(tables))
        return _build(doc, self.origin)

    # -- queries -----------------------------------------------------------------------
    def entry(self, kind: int, label: str | None) -> OpCost:
        """The cost entry for an operation: its label's, else its kind's."""
        if label is not None:
            e = self.labels.get(label)
            if e is not None:
                return e
        return self.kinds[kind]

    def op_cost(self, op: O.Op) -> float:
        """Base cost of an operation in ns, without contention, handoff or flush-batch
        charges (those depend on the run; the timed driver adds them). For a
        ``vupdate``, its read only: what it writes is known once it has run."""
        e = self.entry(op.kind, op.cost)
        if op.kind in VECTOR_KINDS:
            return e.cost(vector_elements(op))
        return e.ns

    def category_of(self, label: str | None, role: str | None = None,
                    kind: int | None = None) -> str:
        """The CPU-time category an operation's cost is accounted in."""
        cat = self.label_category(label) if label is not None else None
        if cat is None and label is None and kind is not None:
            cat = self.kinds[kind].category
        if cat is not None:
            return cat
        return self.role_category(role)

    def label_category(self, label: str) -> str | None:
        """A label's own category, else its first matching prefix rule, else None
        (the thread's role decides)."""
        e = self.labels.get(label)
        if e is not None and e.category is not None:
            return e.category
        for prefix, cat in self.prefixes:
            if label.startswith(prefix):
                return cat
        return None

    def role_category(self, role: str | None) -> str:
        if role is None:
            return self.default_role_category
        return self.roles.get(role, self.default_role_category)

    def atomic_ns(self, kind: int, label: str | None, contended: bool) -> float:
        """An atomic's cost, plus the cache-line transfer if another CPU wrote its line
        within the contention window."""
        base = self.entry(kind, label).ns
        return base + (self.atomic_surcharge_ns if contended else 0.0)

    def tlb_flush_ns(self, ncpus: int) -> float:
        """A remote TLB flush interrupting ``ncpus`` CPUs: the batch base plus, per CPU,
        every batch label's cost (IPI send and acknowledgement, the target's flush)."""
        if ncpus <= 0:
            return 0.0
        per_cpu = sum(self.labels[lb].ns for lb in self.tlb_batch_labels
                      if lb in self.labels)
        return self.tlb_flush_base_ns + ncpus * per_cpu

    def categories(self) -> list[str]:
        """Every category this model can account time in (sorted, with spin/sleep)."""
        cats = {SPIN, SLEEP, self.default_role_category}
        cats.update(self.roles.values())
        cats.update(c for _, c in self.prefixes)
        cats.update(e.category for e in self.labels.values() if e.category)
        cats.update(e.category for e in self.kinds.values() if e.category)
        return sorted(cats)

    def describe(self) -> str:
        return f"cost model {self.name!r} ({self.origin})"


def vector_elements(op: O.Op) -> int:
    """N for a vector operation: the words it updates (the selected ones, if any); for
    a ``vupdate``, the words it reads (its writes are charged by their own labels)."""
    sel = op.b if op.kind != O.VLOAD and op.kind != O.VUPDATE else None
    if sel is not None:
        return int(np.count_nonzero(sel))
    return op.hi - op.lo


# --- loading --------------------------------------------------------------------------

def default_cost_path() -> Any:
    """The packaged default cost file (a ``Traversable``)."""
    return resources.files("youngsim").joinpath("data/costs.toml")


def load_cost_model(path: str | Path | None = None) -> CostModel:
    """Load and validate a cost model: the packaged default, or the TOML file ``path``.

    Raises ``ValueError`` (one line, naming the file and the key) on a file that cannot
    be read or parsed, or that does not validate.
    """
    if path is None:
        text = default_cost_path().read_text(encoding="utf-8")
        origin = "packaged default costs.toml"
    else:
        origin = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as e:
            raise ValueError(f"{origin}: cannot read cost model: {e.strerror or e}") from None
    doc = parse_cost_text(text, origin)
    return CostModel.from_dict(doc, origin)


def parse_cost_text(text: str, origin: str = "<string>") -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{origin}: invalid TOML: {e}") from None


def _default_doc() -> dict[str, Any]:
    text = default_cost_path().read_text(encoding="utf-8")
    return parse_cost_text(text, "packaged default costs.toml")


def _resolve_extends(doc: dict[str, Any], origin: str) -> dict[str, Any]:
    base = doc.get("extends")
    if base is None:
        return doc
    if base != _DEFAULT_NAME:
        raise ValueError(f"{origin}: extends: only \"default\" can be extended, got {base!r}")
    over = {k: v for k, v in doc.items() if k != "extends"}
    return _merge(_default_doc(), over)


def _is_leaf(d: Any) -> bool:
    """A table that defines values (not only sub-tables): it is replaced as a whole, so
    an override can never inherit the source of the figure it replaces."""
    return isinstance(d, dict) and any(not isinstance(v, dict) for v in d.values())


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Overlay ``over`` on ``base``: a table that defines values replaces the base's
    table of that name; a table holding only sub-tables (``[labels]``, ``[contention]``)
    merges them one by one."""
    for k, v in over.items():
        b = base.get(k)
        if isinstance(v, dict) and isinstance(b, dict) and not _is_leaf(v):
            base[k] = _merge(b, v)
        else:
            base[k] = v
    return base


def _deep_copy(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _deep_copy(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_deep_copy(v) for v in d]
    return d


# --- validation -----------------------------------------------------------------------

class _V:
    """Validation helpers that name the file and the dotted key in every error."""

    def __init__(self, origin: str) -> None:
        self.origin = origin

    def fail(self, key: str, msg: str) -> ValueError:
        return ValueError(f"{self.origin}: {key}: {msg}")

    def table(self, doc: dict[str, Any], key: str, path: str, required: bool = True
              ) -> dict[str, Any]:
        v = doc.get(key)
        if v is None:
            if required:
                raise self.fail(path, "missing table")
            return {}
        if not isinstance(v, dict):
            raise self.fail(path, f"must be a table, got {type(v).__name__}")
        return v

    def keys(self, d: dict[str, Any], path: str, allowed: set[str]) -> None:
        for k in d:
            if k not in allowed:
                raise self.fail(f"{path}.{k}" if path else k,
                                f"unknown key (allowed: {', '.join(sorted(allowed))})")

    def number(self, d: dict[str, Any], key: str, path: str, required: bool = True,
               default: float = 0.0) -> float:
        if key not in d:
            if required:
                raise self.fail(f"{path}.{key}", "missing")
            return default
        v = d[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise self.fail(f"{path}.{key}", f"must be a number, got {v!r}")
        if not math.isfinite(v):
            raise self.fail(f"{path}.{key}", f"must be finite, got {v!r}")
        if v < 0:
            raise self.fail(f"{path}.{key}", f"negative cost {v!r} (costs are >= 0)")
        return float(v)

    def source(self, d: dict[str, Any], path: str) -> str:
        texts = []
        for k in _SOURCE_KEYS:
            if k in d:
                v = d[k]
                if not isinstance(v, str) or not v.strip():
                    raise self.fail(f"{path}.{k}", "must be a non-empty string")
                texts.append(f"{k}: {v.strip()}")
        if not texts:
            raise self.fail(path, "missing 'source' or 'rationale' (every constant needs"
                                  " its origin or the reason for its value)")
        return "; ".join(texts)

    def category(self, v: Any, path: str) -> str:
        if not isinstance(v, str) or _CATEGORY_RE.match(v) is None:
            raise self.fail(path, f"category must be a lower-case identifier, got {v!r}")
        return v


_TOP_KEYS = {"model", "extends", "kinds", "labels", "tlb_flush", "contention", "wakeup",
             "categories", "roles"}
_COST_KEYS = {"ns", "per_element_ns", "vector_base_ns", "category", *_SOURCE_KEYS}


def _op_cost(v: _V, d: Any, path: str) -> OpCost:
    if not isinstance(d, dict):
        raise v.fail(path, f"must be a table, got {type(d).__name__}")
    v.keys(d, path, _COST_KEYS)
    ns = v.number(d, "ns", path)
    per = v.number(d, "per_element_ns", path, required=False, default=ns)
    base = v.number(d, "vector_base_ns", path, required=False, default=0.0)
    cat = v.category(d["category"], f"{path}.category") if "category" in d else None
    return OpCost(ns, per, base, cat, v.source(d, path))


def _single(v: _V, parent: dict[str, Any], key: str, path: str, field_: str = "ns"
            ) -> float:
    d = v.table(parent, key, f"{path}.{key}")
    v.keys(d, f"{path}.{key}", {field_, *_SOURCE_KEYS})
    x = v.number(d, field_, f"{path}.{key}")
    v.source(d, f"{path}.{key}")
    return x


def _build(doc: dict[str, Any], origin: str) -> CostModel:
    v = _V(origin)
    if not isinstance(doc, dict):
        raise v.fail("<top>", "a cost model is a TOML document")
    v.keys(doc, "", _TOP_KEYS)
    if "extends" in doc:
        doc = _resolve_extends(doc, origin)

    model = v.table(doc, "model", "model", required=False)
    v.keys(model, "model", {"name", "description"})
    name = model.get("name", Path(origin).stem if origin else "custom")
    if not isinstance(name, str):
        raise v.fail("model.name", "must be a string")

    kinds_t = v.table(doc, "kinds", "kinds")
    kinds: dict[int, OpCost] = {}
    for kname, d in kinds_t.items():
        k = KIND_BY_NAME.get(kname)
        if k is None:
            raise v.fail(f"kinds.{kname}", "unknown operation kind (known: "
                         f"{', '.join(sorted(KIND_BY_NAME))})")
        kinds[k] = _op_cost(v, d, f"kinds.{kname}")
    if O.VUPDATE not in kinds and O.VLOAD in kinds:
        # a vupdate's read is a vload's (files written before it existed stay valid)
        kinds[O.VUPDATE] = kinds[O.VLOAD]
    for k, kname in sorted(O.KIND_NAMES.items()):
        if k not in kinds:
            raise v.fail(f"kinds.{kname}", "missing (every operation kind needs a default"
                         " cost for unlabelled operations)")

    labels_t = v.table(doc, "labels", "labels", required=False)
    labels = {lb: _op_cost(v, d, f"labels.{lb}") for lb, d in labels_t.items()}

    tf = v.table(doc, "tlb_flush", "tlb_flush")
    v.keys(tf, "tlb_flush", {"batch_labels", "base", *_SOURCE_KEYS})
    v.source(tf, "tlb_flush")
    batch = tf.get("batch_labels", [])
    if not isinstance(batch, list) or not all(isinstance(x, str) for x in batch):
        raise v.fail("tlb_flush.batch_labels", "must be a list of label names")
    tlb_base = _single(v, tf, "base", "tlb_flush")

    ct = v.table(doc, "contention", "contention")
    v.keys(ct, "contention", {"line", "window", "atomic_surcharge"})
    words = _single(v, ct, "line", "contention", "words")
    if words < 1 or words != int(words) or int(words) & (int(words) - 1):
        raise v.fail("contention.line.words", f"must be a power of two >= 1, got {words!r}")
    window = _single(v, ct, "window", "contention")
    surcharge = _single(v, ct, "atomic_surcharge", "contention")

    wk = v.table(doc, "wakeup", "wakeup")
    v.keys(wk, "wakeup", {"spin_handoff", "sleep"})
    handoff = _single(v, wk, "spin_handoff", "wakeup")
    sleep = _single(v, wk, "sleep", "wakeup")

    cg = v.table(doc, "categories", "categories", required=False)
    prefixes: list[tuple[str, str]] = []
    if cg:
        v.keys(cg, "categories", {"prefixes", *_SOURCE_KEYS})
        v.source(cg, "categories")
        pt = v.table(cg, "prefixes", "categories.prefixes", required=False)
        for p, c in pt.items():
            prefixes.append((p, v.category(c, f"categories.prefixes.{p}")))

    rl = v.table(doc, "roles", "roles", required=False)
    roles: dict[str, str] = {}
    default_cat = "other"
    if rl:
        v.source(rl, "roles")
        for r, c in rl.items():
            if r in _SOURCE_KEYS:
                continue
            roles[r] = v.category(c, f"roles.{r}")
        default_cat = roles.pop("default", default_cat)

    return CostModel(
        name=name, origin=origin, kinds=kinds, labels=labels, prefixes=prefixes,
        roles=roles, default_role_category=default_cat, line_words=int(words),
        contention_window_ns=window, atomic_surcharge_ns=surcharge,
        spin_handoff_ns=handoff, sleep_wakeup_ns=sleep, tlb_flush_base_ns=tlb_base,
        tlb_batch_labels=tuple(batch), raw=doc)
