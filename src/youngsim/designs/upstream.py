"""``upstream``: Linux 6.15, lockless aging without batching (what shipped).

The 6.12 MGLRU callers (one ``clear_young`` per page), no TLB flush when aging, and
``CONFIG_KVM_MMU_LOCKLESS_AGING`` (selected by x86): the generic hva-range walker runs the
aging handlers with ``lockless=true``. The TDP MMU ages under RCU (fetch-AND for A/D,
cmpxchg for access tracking, failure ignored); the shadow MMU takes the per-rmap bit lock.
The accessed bit is no longer volatile for locked writers: a locked write may clobber a
lockless clear (tolerated, counted). arm64 still ages under the write lock.
"""

from typing import TYPE_CHECKING

from .upstream_6_12 import Upstream612

if TYPE_CHECKING:
    from ..kernel.kvm.kvm_main import Kvm


class Upstream(Upstream612):
    """6.12-6.14's callers and flush rule; lockless aging on x86."""

    name = "upstream"
    summary = "6.15: clear_young per page, lockless on x86"
    kernel = "Linux 6.15"
    accessed_volatile = False
    lockless_access_tracking = True

    def kvm_lockless(self, kvm: "Kvm") -> bool:
        return kvm.arch.name.startswith("x86")


DESIGN = Upstream()
