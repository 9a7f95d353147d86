"""``legacy-noflush``: ``legacy`` plus the 2022 rmap change that skips the TLB flush after a
young test, so the rmap path asks secondary MMUs ``clear_young`` instead of
``clear_flush_young``. This was the "before" kernel of the v2 numbers.
"""

from .legacy import Legacy


class LegacyNoflush(Legacy):
    name = "legacy-noflush"
    summary = "legacy without the TLB flush on the rmap path"
    rmap_flush = False


DESIGN = LegacyNoflush()
