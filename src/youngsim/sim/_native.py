"""Use the mypyc-compiled simulator core only if it is complete and current.

setup.py records the sha256 of each compiled source in ``_build.py``. If an extension
file is missing, a source no longer matches (edited after ``pip install -e .``), or
YOUNGSIM_PURE=1 is set, a finder placed first on ``sys.meta_path`` loads the ``.py``
files, which the extensions would otherwise shadow. All or nothing: compiled code does not
accept the interpreted classes' instances. Stale or incomplete builds print one line.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import os
import sys
from typing import Any

#: the compiled modules, and their shared library (setup.py reads both from here)
CORE = ("ops", "memory", "sync", "machine", "timed")
LIB = "_core"  # youngsim/sim/_core__mypyc.*.so
_PKG = __name__.rpartition(".")[0]
_DIR = os.path.dirname(os.path.abspath(__file__))
MODE = "?"  #: "compiled" or "pure: <why>"


class _PureFinder:
    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        pkg, _, leaf = name.rpartition(".")
        if pkg == _PKG and leaf in CORE:
            return importlib.util.spec_from_file_location(name, os.path.join(_DIR, leaf + ".py"))
        return None


def source_digest(name: str) -> str:
    """The sha256 of core module ``name``'s source (setup.py records it, we compare)."""
    with open(os.path.join(_DIR, name + ".py"), "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _why_pure() -> tuple[str, bool]:
    """(why, say it) for the pure core; ("", False) for the compiled one."""
    ext = [n for n in CORE + (LIB + "__mypyc",) if any(
        os.path.exists(os.path.join(_DIR, n + s)) for s in importlib.machinery.EXTENSION_SUFFIXES)]
    if not ext:
        return "not compiled", False
    if os.environ.get("YOUNGSIM_PURE", "") not in ("", "0"):
        return "YOUNGSIM_PURE is set", False
    if len(ext) <= len(CORE):
        return f"incomplete build ({len(ext)} of {len(CORE) + 1} extensions)", True
    try:
        from ._build import SOURCES
    except ImportError:
        SOURCES = {}
    stale = [n + ".py" for n in CORE if source_digest(n) != SOURCES.get(n)]
    return (f"{', '.join(stale)} changed since the build", True) if stale else ("", False)


def select() -> str:
    """Decide once, before the core is imported; install the finder if pure."""
    global MODE
    if MODE != "?":
        return MODE
    why, say = _why_pure()
    MODE = f"pure: {why}" if why else "compiled"
    if why and why != "not compiled":
        sys.meta_path.insert(0, _PureFinder())
    if say:
        print(f"youngsim: compiled sim core not used: {why} (rebuild: pip install -e . ;"
              " silence: YOUNGSIM_PURE=1)", file=sys.stderr)
    return MODE
