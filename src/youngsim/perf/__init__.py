"""Timed scenarios: the kernel's own benchmarks replayed on the timed driver.

Each scenario builds the same kernel model the checker explores (``check/model.py``),
runs it on ``sim/timed.py``'s virtual clock, and reports figures that come from the cost
model (``data/costs.toml`` or ``--cost-model FILE``) at the scale simulated. See
``docs/timed.md``.

- ``access_tracking``: ``tools/testing/selftests/kvm/access_tracking_perf_test``.
- ``max_guest_memory``: ``tools/testing/selftests/kvm/max_guest_memory_test``, under
  host memory pressure (kswapd, swap).
"""

from .access_tracking import MAX_TOTAL_PAGES, Config, PerfResult, run_access_tracking
from .harness import parse_size

SCENARIOS = ("access_tracking_perf_test", "max_guest_memory_test")

__all__ = ["MAX_TOTAL_PAGES", "SCENARIOS", "Config", "PerfResult", "parse_size",
           "run_access_tracking"]
