"""The designs youngsim models, by name. See ``base.py`` for what a design decides and
``docs/adding-a-design.md`` for how to add one."""

from __future__ import annotations

from .base import MMU_VARIANTS, Design
from .legacy import DESIGN as LEGACY
from .legacy_noflush import DESIGN as LEGACY_NOFLUSH
from .reviewed import DESIGN as REVIEWED
from .reviewed import DESIGN_LOCKED as REVIEWED_LOCKED
from .upstream import DESIGN as UPSTREAM
from .upstream_6_12 import DESIGN as UPSTREAM_612
from .yu_v2 import DESIGN as YU_V2

DESIGNS: dict[str, Design] = {d.name: d for d in (
    LEGACY, LEGACY_NOFLUSH, YU_V2, REVIEWED, REVIEWED_LOCKED, UPSTREAM_612, UPSTREAM)}

__all__ = ["DESIGNS", "MMU_VARIANTS", "Design"]
