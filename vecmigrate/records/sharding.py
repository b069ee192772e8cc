"""Shard keys and shard boundaries."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from vecmigrate.model.spec import ShardLayout
from vecmigrate.model.tasks import ShardRef
from vecmigrate.model.tasks import hash_shards as hash_shards

_MASK = np.uint64(0xFFFFFFFFFFFFFFFF)


def hash_key(ids: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """A 32-bit key per id (splitmix64 finaliser, high half): stable, evenly spread."""
    with np.errstate(over="ignore"):
        z = ids.astype(np.int64).view(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(32)).astype(np.int64)


def range_shards(count: int, boundaries: list[int]) -> list[ShardRef]:
    """Shards over ids split at ``boundaries`` (``count - 1`` increasing ids)."""
    if len(boundaries) != count - 1:
        raise ValueError(f"{count} range shards need {count - 1} boundaries, got {len(boundaries)}")
    lo = -(1 << 63)
    hi_end = (1 << 63) - 1
    edges = [lo, *boundaries, hi_end]
    return [ShardRef(index=i, by="range", lo=edges[i], hi=edges[i + 1]) for i in range(count)]


def plan_shards(layout: ShardLayout, id_quantiles: list[int] | None = None) -> list[ShardRef]:
    """The shards a migration copies, in order, restricted to ``layout.only``.

    Range layouts need the id quantiles of the source (see ``VectorStore.id_quantiles``).
    """
    if layout.by == "hash":
        shards = hash_shards(layout.count)
    else:
        shards = range_shards(layout.count, id_quantiles or [])
    wanted = set(layout.selected())
    return [s for s in shards if s.index in wanted]
