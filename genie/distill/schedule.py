"""When to snapshot the images being distilled: the iterations passed as ``snapshot_at`` to
:func:`genie.distill.distill` (the live image grids of :mod:`genie.viz` show these snapshots)."""
from __future__ import annotations


def snapshot_schedule(iters: int, count: int = 6) -> list:
    """``count`` iterations spread over ``[0, iters - 1]`` (first and last included)."""
    if iters <= 0:
        return []
    count = max(1, min(count, iters))
    if count == 1:
        return [iters - 1]
    return sorted({round(i * (iters - 1) / (count - 1)) for i in range(count)})
