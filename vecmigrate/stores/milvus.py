"""Milvus as a source or target, through pymilvus against any Milvus URI.

Each (tenant, collection, version) is its own Milvus collection with fields (id, h, embedding),
so a handle cannot reach outside its scope and a native index belongs to one version. Milvus
needs an index to load a collection at all: a new collection gets a FLAT index (exact search);
a native IVF_FLAT replaces it when the spec asks for one. Scans are keyset-paginated on the
primary key inside a shard's key range (Milvus returns query results in primary-key order), so
the scan order is (id) within a shard rather than (shard key, id).

A local file URI (``./milvus.db``) runs the embedded milvus-lite engine in-process; it serves
one process at a time and builds FLAT and IVF_FLAT indexes only.
"""

from __future__ import annotations

import hashlib
import re
import threading
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import numpy.typing as npt

from vecmigrate.errors import NotFoundError, PreconditionError
from vecmigrate.model.spec import (
    IndexSpec,
    Metric,
    MilvusFlat,
    MilvusIvfFlat,
    MilvusIvfPq,
    MilvusIvfSq8,
    MilvusTls,
)
from vecmigrate.model.tasks import Cursor, ShardRef
from vecmigrate.records.sharding import hash_key
from vecmigrate.records.vectors import Ids, Vectors, check_vectors
from vecmigrate.security.secrets import resolve_optional
from vecmigrate.stores.base import (
    Batch,
    ScanningStore,
    Scope,
    check_dimension,
    collect_pages,
    paged_ids,
)

_METRIC = {"l2": "L2", "ip": "IP", "cosine": "COSINE"}
# Milvus answers at most this many rows per query; longer scans page by primary key.
MAX_QUERY = 16384
# Rows per call that reads or writes vectors. milvus-lite's time for such a call grows with the
# square of its rows (a query of 40,000 records: 500 rows 6 ms, 2,000 rows 56 ms, 8,000 rows 880
# ms at 64 dimensions; 500 rows 32 ms, 4,000 rows 1.3 s at 384): 500-row pages read 79,000
# records/s at 64 dimensions and 16,000 at 384. A scan of 50,000 x 384 in 10,000-row batches
# takes 4.1 s in 512-row pages; in pages of a whole batch it had not ended after six minutes.
# Queries of ids alone page at ``MAX_QUERY`` (10,000 in 9 ms).
VECTOR_PAGE = 512
_clients: dict[tuple[str, str | None, MilvusTls | None], Any] = {}
_lock = threading.Lock()


def _row_id(row: dict[str, Any]) -> int:
    return int(row["id"])


def client_for(uri: str, token: str | None = None, tls: MilvusTls | None = None) -> Any:
    """One pymilvus client per URI (and credentials) per process (a milvus-lite file allows one
    owner). ``token`` is a secret reference, resolved here; ``tls`` adds a CA, the server's
    name or a client certificate (mutual TLS)."""
    key = (uri, token, tls)
    with _lock:
        client = _clients.get(key)
        if client is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # milvus-lite imports pkg_resources
                from pymilvus import MilvusClient

            client = MilvusClient(uri, token=resolve_optional(token) or "", **tls_options(tls))
            _clients[key] = client
        return client


def tls_options(tls: MilvusTls | None) -> dict[str, Any]:
    """pymilvus's connection arguments for ``tls`` (one-way with a CA, or mutual)."""
    if tls is None:
        return {}
    options: dict[str, Any] = {"secure": True}
    if tls.server_name is not None:
        options["server_name"] = tls.server_name
    if tls.client_cert is not None:
        options.update(
            client_pem_path=tls.client_cert,
            client_key_path=tls.client_key,
            ca_pem_path=tls.ca_cert,
        )
    elif tls.ca_cert is not None:
        options["server_pem_path"] = tls.ca_cert
    return options


def close_clients() -> None:
    """Close every cached client (stops embedded milvus-lite engines)."""
    with _lock:
        for client in _clients.values():
            try:
                client.close()
            except Exception:  # a client whose engine is already gone
                continue
        _clients.clear()


def collection_name(scope: Scope) -> str:
    """A Milvus collection name for a scope: readable, within Milvus's character set, unique."""
    raw = f"{scope.tenant}/{scope.collection}@{scope.version}"
    readable = re.sub(r"[^A-Za-z0-9_]", "_", f"{scope.collection}_{scope.version}")[:160]
    return f"vm_{readable}_{hashlib.sha256(raw.encode()).hexdigest()[:12]}"


# Milvus's index type and build parameters of each native kind vecmigrate builds.
MilvusIndex = MilvusFlat | MilvusIvfFlat | MilvusIvfSq8 | MilvusIvfPq


def index_type(spec: MilvusIndex) -> tuple[str, dict[str, int]]:
    """The Milvus index type of ``spec`` and its build parameters."""
    if isinstance(spec, MilvusIvfPq):
        return "IVF_PQ", {"nlist": spec.nlist, "m": spec.m, "nbits": spec.nbits}
    if isinstance(spec, MilvusIvfSq8):
        return "IVF_SQ8", {"nlist": spec.nlist}
    if isinstance(spec, MilvusIvfFlat):
        return "IVF_FLAT", {"nlist": spec.nlist}
    return "FLAT", {}


def _index_params(client: Any, spec: IndexSpec | None, metric: Metric) -> Any:
    params = client.prepare_index_params()
    if isinstance(spec, MilvusIvfFlat | MilvusIvfSq8 | MilvusIvfPq):
        kind, build = index_type(spec)
        params.add_index(
            field_name="embedding",
            index_type=kind,
            metric_type=_METRIC[str(metric)],
            params=build,
        )
    else:
        params.add_index(
            field_name="embedding", index_type="FLAT", metric_type=_METRIC[str(metric)]
        )
    return params


class MilvusStore(ScanningStore):
    """A :class:`~vecmigrate.stores.base.VectorStore` on Milvus."""

    kind = "milvus"

    def __init__(self, client: Any, scope: Scope, name: str, dimension: int, metric: str) -> None:
        self.client = client
        self.scope = scope
        self.name = name
        self.dimension = dimension
        self.metric = metric

    @classmethod
    def open(
        cls,
        uri: str,
        scope: Scope,
        dimension: int | None = None,
        *,
        token: str | None = None,
        tls: MilvusTls | None = None,
        metric: str = "l2",
    ) -> MilvusStore:
        """Open the collection of ``scope``; create it when ``dimension`` is given.

        Raises:
            NotFoundError: no such collection and no dimension given.
            DataError: it exists with another dimension.
        """
        client = client_for(uri, token, tls)
        name = collection_name(scope)
        if not client.has_collection(name):
            if dimension is None:
                raise NotFoundError(f"{scope} does not exist in Milvus at {uri}")
            from pymilvus import DataType, MilvusClient

            schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
            schema.add_field("id", DataType.INT64, is_primary=True)
            schema.add_field("h", DataType.INT64)
            schema.add_field("embedding", DataType.FLOAT_VECTOR, dim=dimension)
            client.create_collection(
                name,
                schema=schema,
                index_params=_index_params(client, None, Metric(metric)),
                consistency_level="Strong",
            )
        fields = client.describe_collection(name)["fields"]
        dim = int(next(f for f in fields if f["name"] == "embedding")["params"]["dim"])
        check_dimension(scope, dim, dimension)
        client.load_collection(name)
        return cls(client, scope, name, dim, metric)

    def _rows(self, rows: list[dict[str, Any]]) -> tuple[Ids, Ids, Vectors]:
        rows = sorted(rows, key=lambda r: int(r["id"]))
        ids = np.array([int(r["id"]) for r in rows], dtype=np.int64)
        keys = np.array([int(r["h"]) for r in rows], dtype=np.int64)
        vecs = np.array([r["embedding"] for r in rows], dtype=np.float32).reshape(
            len(rows), self.dimension
        )
        return ids, keys, vecs

    def _fetch(
        self, shard: ShardRef, fields: list[str]
    ) -> Callable[[int | None, int], list[dict[str, Any]]]:
        """A page of a shard's rows with ``fields``: at most ``n`` after id ``start``, in id
        order (for :func:`collect_pages`)."""
        col = "h" if shard.by == "hash" else "id"
        base = f"{col} >= {int(shard.lo)} and {col} < {int(shard.hi)}"

        def fetch(start: int | None, n: int) -> list[dict[str, Any]]:
            expr = base if start is None else f"{base} and id > {start}"
            rows: list[dict[str, Any]] = self.client.query(
                self.name, filter=expr, output_fields=fields, limit=n
            )
            return rows

        return fetch

    def scan(self, shard: ShardRef, cursor: Cursor | None, limit: int) -> Batch:
        after = None if cursor is None else int(cursor.id)
        fetch = self._fetch(shard, ["id", "h", "embedding"])
        pages = collect_pages(fetch, _row_id, after, int(limit), VECTOR_PAGE)
        ids, keys, vecs = self._rows(pages)
        if ids.size == 0:
            return Batch(ids, vecs, cursor)
        return Batch(ids, vecs, Cursor(key=int(keys[-1]), id=int(ids[-1])))

    def iter_ids(self, shard: ShardRef, batch_size: int) -> Iterator[Ids]:
        """Every id of a shard in id order, queried without the vectors."""
        return paged_ids(self._fetch(shard, ["id"]), _row_id, batch_size, MAX_QUERY)

    def upsert(self, ids: Ids, vectors: Vectors) -> int:
        ids64, vec32 = check_vectors(ids, vectors, self.dimension, self.scope)
        if ids64.size == 0:
            return 0
        keys = hash_key(ids64)
        rows = [
            {"id": int(i), "h": int(h), "embedding": v}
            for i, h, v in zip(ids64.tolist(), keys.tolist(), vec32, strict=True)
        ]
        # In pages, in order (a later write of an id still wins): milvus-lite took 185 s to
        # upsert 20,000 x 384 in pages of 10,000 rows, 2.2 s in pages of 2,000, 1.6 s of 500.
        for at in range(0, len(rows), VECTOR_PAGE):
            self.client.upsert(self.name, data=rows[at : at + VECTOR_PAGE])
        return len(rows)

    def delete(self, ids: Ids) -> int:
        values = [int(i) for i in np.asarray(ids, dtype=np.int64)]
        if not values:
            return 0
        before = len(self.client.get(self.name, ids=values, output_fields=["id"]))
        self.client.delete(self.name, ids=values)
        return before

    def count(self, shard: ShardRef | None = None) -> int:
        expr = "id >= -9223372036854775807"
        if shard is not None:
            col = "h" if shard.by == "hash" else "id"
            expr = f"{col} >= {int(shard.lo)} and {col} < {int(shard.hi)}"
        res = self.client.query(self.name, filter=expr, output_fields=["count(*)"])
        return int(res[0]["count(*)"])

    def fetch(self, ids: Ids) -> tuple[Ids, Vectors]:
        values = sorted({int(i) for i in np.asarray(ids, dtype=np.int64)})
        if not values:
            return np.empty(0, np.int64), np.empty((0, self.dimension), np.float32)
        rows = [
            row
            for at in range(0, len(values), VECTOR_PAGE)
            for row in self.client.get(
                self.name,
                ids=values[at : at + VECTOR_PAGE],
                output_fields=["id", "h", "embedding"],
            )
        ]
        found, _, vecs = self._rows(rows)
        return found, vecs

    # -- native indexes ----------------------------------------------------------------------

    def create_index(self, spec: IndexSpec, metric: Metric) -> str:
        """Replace the collection's index with the native one the spec names (idempotent)."""
        if not isinstance(spec, MilvusFlat | MilvusIvfFlat | MilvusIvfSq8 | MilvusIvfPq):
            raise PreconditionError(f"Milvus cannot build {spec.kind} natively here")
        wanted, build = index_type(spec)
        current = self.client.describe_index(self.name, "embedding") or {}
        same = (
            current.get("index_type") == wanted
            and current.get("metric_type") == _METRIC[str(metric)]
            and all(str(current.get(k)) == str(v) for k, v in build.items())
        )
        if not same:
            self.client.release_collection(self.name)
            self.client.drop_index(self.name, "embedding")
            self.client.create_index(self.name, _index_params(self.client, spec, metric))
        self.client.load_collection(self.name)
        return f"{self.name}/{wanted}"

    def search_native(
        self, queries: Vectors, k: int, spec: IndexSpec, metric: Metric
    ) -> tuple[npt.NDArray[np.float32], Ids]:
        """k nearest neighbours through Milvus; distances follow our convention."""
        params: dict[str, Any] = {"metric_type": _METRIC[str(metric)]}
        if isinstance(spec, MilvusIvfFlat | MilvusIvfSq8 | MilvusIvfPq):
            params["params"] = {"nprobe": spec.nprobe}
        q = np.asarray(queries, np.float32)
        results = self.client.search(self.name, data=list(q), limit=k, search_params=params)
        d = np.full((q.shape[0], k), np.inf, np.float32)
        i = np.full((q.shape[0], k), -1, np.int64)
        for row, hits in enumerate(results):
            for col, hit in enumerate(hits[:k]):
                i[row, col] = int(hit["id"])
                value = float(hit["distance"])
                d[row, col] = value if str(metric) == "l2" else 1.0 - value
        return d, i
