"""Build youngsim with its simulator core (five modules of youngsim.sim) compiled by mypyc.

YOUNGSIM_NO_COMPILE=1: pure Python. YOUNGSIM_OPT_LEVEL=N: the C -O level (default 3).
A failed C build (no gcc) warns and leaves pure Python. The sha256 of each compiled
source goes to youngsim/sim/_build.py (generated), which sim/_native.py checks at import.
"""

import glob
import importlib.util
import os
import sys

from setuptools import setup
from setuptools.command.build_py import build_py

PKG = os.path.join("src", "youngsim", "sim")


def _native():
    """``sim/_native.py`` (standard library only), loaded by path: it names the modules
    to compile and their library, and checks at import what this build records."""
    spec = importlib.util.spec_from_file_location("_youngsim_native",
                                                  os.path.join(PKG, "_native.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


NATIVE = _native()
CORE = NATIVE.CORE
CMD = sys.argv[1] if len(sys.argv) > 1 else ""
COMPILE = (CMD not in ("egg_info", "dist_info", "sdist")  # metadata only: no mypyc run
           and os.environ.get("YOUNGSIM_NO_COMPILE", "") in ("", "0"))
INPLACE = CMD == "editable_wheel" or "--inplace" in sys.argv or "-i" in sys.argv


INFO = (f"SOURCES = {({m: NATIVE.source_digest(m) for m in CORE} if COMPILE else {})!r}"
        "  # by setup.py\n")


class BuildPy(build_py):
    """A wheel gets its own _build.py (src/ keeps the editable build's)."""

    def run(self):
        super().run()
        if not INPLACE:
            with open(os.path.join(self.build_lib, "youngsim", "sim", "_build.py"), "w") as f:
                f.write(INFO)


def extensions():
    if INPLACE:  # editable: no extension of an older build may outlive this one
        for so in glob.glob(os.path.join(PKG, "*.so")):
            os.remove(so)
        with open(os.path.join(PKG, "_build.py"), "w") as f:
            f.write(INFO)
    if not COMPILE:
        return []
    from mypyc.build import mypycify

    exts = mypycify([os.path.join(PKG, m + ".py") for m in CORE],
                    group_name="youngsim.sim." + NATIVE.LIB,  # sim/_core__mypyc.*.so
                    opt_level=os.environ.get("YOUNGSIM_OPT_LEVEL", "3"))
    for ext in exts:
        ext.optional = True  # no C compiler: setuptools warns, skips it, and goes on
    return exts


setup(ext_modules=extensions(), cmdclass={"build_py": BuildPy})
