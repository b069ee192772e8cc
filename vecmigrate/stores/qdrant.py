"""Qdrant as a source or target, through the real engine in-process (qdrant-edge-py).

Each (tenant, collection, version) is its own Qdrant shard directory under ``path``, so a
handle cannot reach outside its scope. Points carry the shard key ``h`` as payload; scans page
by point id (Qdrant scrolls in id order) inside a shard's key range. Qdrant builds its own HNSW
graph: ``qdrant_hnsw`` runs its optimizers with the spec's parameters. Point ids are unsigned, so
this store refuses negative ids.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from vecmigrate.errors import DataError, NotFoundError, PreconditionError
from vecmigrate.model.spec import IndexSpec, Metric, QdrantHnsw
from vecmigrate.model.tasks import Cursor, ShardRef
from vecmigrate.records.sharding import hash_key
from vecmigrate.records.vectors import Ids, Vectors, check_vectors
from vecmigrate.stores.base import (
    Batch,
    ScanningStore,
    Scope,
    check_dimension,
    collect_pages,
    paged_ids,
)

_shards: dict[str, Any] = {}
_lock = threading.Lock()
# Qdrant answers a scroll page at a time; longer scans page by point id.
MAX_PAGE = 10_000


def _distance(metric: str) -> Any:
    from qdrant_edge import Distance

    # No cosine: Qdrant normalises vectors written to a cosine shard, so their bytes would no
    # longer match the source's. Normalise on copy and use "ip" instead (same ranking).
    if metric not in ("l2", "ip"):
        raise PreconditionError(
            "Qdrant stores rewrite vectors for cosine; set the target's metric to ip with "
            "normalized: true (the same ranking, and the bytes stay checkable)"
        )
    return {"l2": Distance.Euclid, "ip": Distance.Dot}[metric]


def shard_path(root: str, scope: Scope) -> Path:
    """The directory of a scope's shard: readable, filesystem-safe, unique."""
    raw = f"{scope.tenant}/{scope.collection}@{scope.version}"
    readable = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{scope.tenant}_{scope.collection}_{scope.version}")
    return Path(root) / f"{readable}-{hashlib.sha256(raw.encode()).hexdigest()[:12]}"


def close_shards() -> None:
    """Flush and close every open shard (one process owns a shard directory at a time)."""
    with _lock:
        for shard in _shards.values():
            try:
                shard.flush()
                shard.close()
            except Exception:  # already closed
                continue
        _shards.clear()


def release_shard(root: str, scope: Scope) -> Path:
    """Close ``scope``'s shard if this process holds it open; returns its directory (to remove
    a pruned version)."""
    path = shard_path(root, scope)
    with _lock:
        shard = _shards.pop(str(path), None)
    if shard is not None:
        shard.close()
    return path


class QdrantStore(ScanningStore):
    """A :class:`~vecmigrate.stores.base.VectorStore` on a Qdrant edge shard."""

    kind = "qdrant"

    def __init__(self, shard: Any, scope: Scope, path: Path, dimension: int, metric: str) -> None:
        self.shard = shard
        self.scope = scope
        self.path = path
        self.dimension = dimension
        self.metric = metric

    @classmethod
    def open(
        cls, root: str, scope: Scope, dimension: int | None = None, *, metric: str = "l2"
    ) -> QdrantStore:
        """Open the shard of ``scope`` under ``root``; create it when ``dimension`` is given.

        Raises:
            NotFoundError: no such shard and no dimension given.
            DataError: it exists with another dimension.
        """
        from qdrant_edge import EdgeConfig, EdgeShard, EdgeVectorParams

        path = shard_path(root, scope)
        key = str(path)
        with _lock:
            shard = _shards.get(key)
            if shard is None:
                if (path / "edge_config.json").exists():
                    shard = EdgeShard.load(key)
                elif dimension is None:
                    raise NotFoundError(f"{scope} does not exist in the Qdrant store at {root}")
                else:
                    config = EdgeConfig(
                        vectors=EdgeVectorParams(size=dimension, distance=_distance(metric))
                    )
                    shard = EdgeShard.create(key, config)
                _shards[key] = shard
        dim, distance = _shard_config(path)
        check_dimension(scope, dim, dimension)
        found = {"Euclid": "l2", "Dot": "ip", "Cosine": "cosine"}.get(distance, "l2")
        return cls(shard, scope, path, dim, found)

    def _page(
        self, shard: ShardRef, after: int | None, limit: int, vectors: bool = True
    ) -> list[Any]:
        from qdrant_edge import FieldCondition, Filter, RangeFloat, ScrollRequest

        start = None if after is None else after + 1
        flt = None
        if shard.by == "hash":
            flt = Filter(
                must=[FieldCondition(key="h", range=RangeFloat(gte=shard.lo, lt=shard.hi))]
            )
        elif start is None or start < shard.lo:
            start = max(shard.lo, 0)
        records, _ = self.shard.scroll(
            ScrollRequest(
                offset=start, limit=limit, filter=flt, with_vector=vectors, with_payload=vectors
            )
        )
        if shard.by == "range":
            records = [r for r in records if shard.lo <= int(r.id) < shard.hi]
        return list(records)

    def scan(self, shard: ShardRef, cursor: Cursor | None, limit: int) -> Batch:
        after = None if cursor is None else int(cursor.id)
        rows = collect_pages(
            lambda start, n: self._page(shard, start, n),
            lambda r: int(r.id),
            after,
            int(limit),
            MAX_PAGE,
        )
        if not rows:
            return Batch(np.empty(0, np.int64), np.empty((0, self.dimension), np.float32), cursor)
        ids = np.array([int(r.id) for r in rows], dtype=np.int64)
        vecs = np.array([r.vector for r in rows], dtype=np.float32).reshape(
            len(rows), self.dimension
        )
        last = rows[-1]
        return Batch(ids, vecs, Cursor(key=int(last.payload["h"]), id=int(last.id)))

    def iter_ids(self, shard: ShardRef, batch_size: int) -> Iterator[Ids]:
        """Every id of a shard in id order, scrolled without vectors or payloads."""
        return paged_ids(
            lambda start, n: self._page(shard, start, n, vectors=False),
            lambda r: int(r.id),
            batch_size,
            MAX_PAGE,
        )

    def upsert(self, ids: Ids, vectors: Vectors) -> int:
        from qdrant_edge import Point, UpdateOperation

        ids64, vec32 = check_vectors(ids, vectors, self.dimension, self.scope)
        if ids64.size == 0:
            return 0
        if int(ids64.min()) < 0:
            raise DataError(
                f"{self.scope}: Qdrant point ids are unsigned; negative ids cannot move"
            )
        keys = hash_key(ids64)
        points = [
            Point(int(i), v.tolist(), {"h": int(h)})
            for i, h, v in zip(ids64.tolist(), keys.tolist(), vec32, strict=True)
        ]
        self.shard.update(UpdateOperation.upsert_points(points))
        self.shard.flush()
        return len(points)

    def delete(self, ids: Ids) -> int:
        from qdrant_edge import UpdateOperation

        values: list[Any] = [int(i) for i in np.asarray(ids, dtype=np.int64) if i >= 0]
        if not values:
            return 0
        present = len(self.shard.retrieve(values, with_payload=False, with_vector=False))
        self.shard.update(UpdateOperation.delete_points(values))
        self.shard.flush()
        return present

    def count(self, shard: ShardRef | None = None) -> int:
        from qdrant_edge import CountRequest, FieldCondition, Filter, RangeFloat

        if shard is None:
            return int(self.shard.count(CountRequest(exact=True)))
        if shard.by == "hash":
            flt = Filter(
                must=[FieldCondition(key="h", range=RangeFloat(gte=shard.lo, lt=shard.hi))]
            )
            return int(self.shard.count(CountRequest(exact=True, filter=flt)))
        return sum(len(b) for b in self.iter_shard(shard, MAX_PAGE))

    def fetch(self, ids: Ids) -> tuple[Ids, Vectors]:
        values = sorted({int(i) for i in np.asarray(ids, dtype=np.int64) if i >= 0})
        records = sorted(
            self.shard.retrieve(values, with_payload=False, with_vector=True),
            key=lambda r: int(r.id),
        )
        found = np.array([int(r.id) for r in records], dtype=np.int64)
        vecs = np.array([r.vector for r in records], dtype=np.float32).reshape(
            len(records), self.dimension
        )
        return found, vecs

    # -- native index ------------------------------------------------------------------------

    def create_index(self, spec: IndexSpec, metric: Metric) -> str:
        """Build Qdrant's HNSW graph with the spec's parameters (optimizers run to the end)."""
        from qdrant_edge import (
            EdgeConfig,
            EdgeOptimizersConfig,
            EdgeShard,
            EdgeVectorParams,
            HnswIndexConfig,
        )

        if not isinstance(spec, QdrantHnsw):
            raise PreconditionError(f"Qdrant cannot build {spec.kind} natively")
        key = str(self.path)
        with _lock:
            self.shard.flush()
            self.shard.close()
            hnsw = HnswIndexConfig(m=spec.m, ef_construct=spec.ef_construct, full_scan_threshold=1)
            quantization = _quantization(spec)
            config = EdgeConfig(
                vectors=EdgeVectorParams(
                    size=self.dimension,
                    distance=_distance(self.metric),
                    hnsw_config=hnsw,
                    quantization_config=quantization,
                ),
                hnsw_config=hnsw,
                quantization_config=quantization,
                # Index every segment whatever its size: the spec asked for a graph.
                optimizers=EdgeOptimizersConfig(indexing_threshold=1),
            )
            self.shard = EdgeShard.load(key, config)
            _shards[key] = self.shard
        self.shard.optimize()
        quantized = "" if spec.quantization == "none" else f"-{spec.quantization}"
        return f"{self.path.name}/hnsw-m{spec.m}-ef{spec.ef_construct}{quantized}"

    def search_native(
        self, queries: Vectors, k: int, spec: IndexSpec, metric: Metric
    ) -> tuple[npt.NDArray[np.float32], Ids]:
        """k nearest neighbours through Qdrant's index; distances follow our convention."""
        from qdrant_edge import Query, QueryRequest, SearchParams

        ef = spec.ef if isinstance(spec, QdrantHnsw) else None
        quantized = None
        if isinstance(spec, QdrantHnsw) and spec.quantization != "none":
            from qdrant_edge import QuantizationSearchParams

            quantized = QuantizationSearchParams(
                rescore=spec.rescore, oversampling=spec.oversampling
            )
        q = np.asarray(queries, np.float32)
        d = np.full((q.shape[0], k), np.inf, np.float32)
        i = np.full((q.shape[0], k), -1, np.int64)
        for row in range(q.shape[0]):
            hits = self.shard.query(
                QueryRequest(
                    limit=k,
                    query=Query.Nearest(q[row].tolist()),
                    params=SearchParams(hnsw_ef=max(ef or k, k), quantization=quantized),
                )
            )
            for col, hit in enumerate(hits[:k]):
                i[row, col] = int(hit.id)
                score = float(hit.score)
                d[row, col] = score * score if str(metric) == "l2" else 1.0 - score
        return d, i


def _quantization(spec: QdrantHnsw) -> Any:
    """Qdrant's quantization config of ``spec`` (None: full vectors only)."""
    from qdrant_edge import (
        CompressionRatio,
        ProductQuantizationConfig,
        ScalarQuantizationConfig,
        ScalarType,
    )

    if spec.quantization == "scalar":
        return ScalarQuantizationConfig(type=ScalarType.Int8, quantile=0.99, always_ram=True)
    if spec.quantization == "product":
        ratio = getattr(CompressionRatio, f"X{spec.product_compression}")
        return ProductQuantizationConfig(compression=ratio, always_ram=True)
    return None


def _shard_config(path: Path) -> tuple[int, str]:
    """Vector size and distance a shard was created with (from its edge_config.json)."""
    try:
        config = json.loads((path / "edge_config.json").read_text())
        vector = config["vectors"][""]
        return int(vector["size"]), str(vector["distance"])
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"cannot read the Qdrant shard config at {path}: {exc}") from None
