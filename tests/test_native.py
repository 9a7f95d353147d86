"""The compiled (mypyc) and the pure-Python simulator core: the same sources, the same
results. ``sim/_native.py`` picks one at import; these tests pin how."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import youngsim.sim  # noqa: F401 - selects the core
from youngsim.sim import _native

RUN = [sys.executable, "-c", "import sys; from youngsim.cli import main; sys.exit(main())"]


def _env(pure: bool) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("YOUNGSIM_PURE", None)
    if pure:
        env["YOUNGSIM_PURE"] = "1"
    return env


def test_youngsim_pure_loads_the_sources() -> None:
    code = ("import youngsim.sim, youngsim.sim._native as n, youngsim.sim.machine as m,"
            " youngsim.sim.timed as t; print(n.MODE); print(m.__file__); print(t.__file__)")
    out = subprocess.run([sys.executable, "-c", code], env=_env(True), check=True,
                         capture_output=True, text=True).stdout.split("\n")
    assert out[0].startswith("pure")
    assert out[1].endswith("machine.py") and out[2].endswith("timed.py")


@pytest.mark.skipif(_native.MODE != "compiled", reason=f"sim core: {_native.MODE}")
def test_compiled_and_pure_cores_give_the_same_figures(tmp_path: Path) -> None:
    args = ["run", "access_tracking_perf_test", "-p", "-v", "2", "-b", "256K",
            "--design", "upstream-6.12", "--mmu", "x86-tdp"]
    got = []
    for pure in (False, True):
        out = tmp_path / f"{pure}.json"
        subprocess.run(RUN + args + ["--json", str(out)], env=_env(pure), check=True,
                       capture_output=True)
        got.append(json.loads(out.read_text()))
    assert got[0] == got[1]
