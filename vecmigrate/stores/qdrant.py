"""Qdrant as a source or target, through qdrant-client.

One adapter for both of qdrant-client's backends: a Qdrant server (``url``, with an API key
given as a secret reference, over https in production) and the client's local mode (``path``),
which runs the same API in-process and is what the tests use. (The earlier adapter drove
qdrant-edge-py, Qdrant's engine in-process; it could not reach a server, so it is gone.)

Each version vecmigrate makes is a collection (named by the store reference, or one of its own
per scope) whose metadata holds the record schema and the scope, so a handle never opens
another version's collection. Its points carry the record's payload fields, the keys of the
extra object at the top level, and the shard key ``_vecmigrate_h`` (with an integer payload
index), so a hash shard is a filtered scroll. An existing collection named as a source is read
as it is: its payload fields typed from a sample of points (or its payload indexes), its hash
shards read in point-id order and the shard's points kept, and nothing written to it.

Point ids are unsigned integers or UUIDs: other ids are quarantined (see ``limits``). Qdrant
normalises what it stores in a cosine collection, so the bytes would not match the source's:
a target uses ``ip`` on normalised vectors instead (the same ranking).
"""

from __future__ import annotations

import hashlib
import re
import threading
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pyarrow as pa

from vecmigrate.errors import DataError, NotFoundError, PreconditionError
from vecmigrate.model.records import (
    FieldCondition,
    FieldKind,
    Filter,
    IdKind,
    PayloadField,
    RecordSchema,
    VectorField,
    fold_filter,
)
from vecmigrate.model.spec import IndexSpec, Metric, QdrantHnsw, QdrantStoreRef
from vecmigrate.model.tasks import Cursor, ShardRef
from vecmigrate.records.batch import Faults, Records, assemble_rows
from vecmigrate.records.filters import normalize
from vecmigrate.records.ids import id_array
from vecmigrate.records.payload import infer_kind, python_values
from vecmigrate.records.screening import Limits
from vecmigrate.records.sharding import HASH_SPACE, hash_key
from vecmigrate.records.vectors import Ids
from vecmigrate.security.secrets import resolve_optional
from vecmigrate.stores.base import (
    Aliases,
    Batch,
    Clients,
    CollectionStore,
    EngineSearch,
    Inventory,
    NativeHits,
    NativeQuery,
    Scope,
    Turns,
    check_dimension,
    check_schema,
    check_scope,
    in_shard,
    schema_to_create,
)

KEY = "_vecmigrate_h"
MARK = "vecmigrate"
# Points per request: Qdrant answers a scroll a page at a time, and a server caps a request's
# size (32 MB by default: 512 points of 1,536 floats written as JSON are about 8 MB).
PAGE = 512
# Points read to type the payload of a collection that keeps no schema of it.
SAMPLE = 1_000
_UNNAMED = "vector"  # the field name of a collection's single unnamed vector
_clients = Clients()
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _models() -> Any:
    from qdrant_client import models

    return models


def client_for(ref: QdrantStoreRef) -> Any:
    """One client per server URL or local directory per process (a local-mode directory
    allows one owner)."""

    def connect() -> Any:
        from qdrant_client import QdrantClient

        if ref.url is not None:
            return QdrantClient(url=ref.url, api_key=resolve_optional(ref.api_key))
        return OneAtATime(QdrantClient(path=ref.path))

    return _clients.get(ref.url or f"path:{ref.path}", connect)


class OneAtATime:
    """A local-mode client whose calls run one at a time.

    The local mode keeps a directory's points in one SQLite connection shared by every thread:
    two shards copied at once into one directory failed inside its writes (``SystemError``)
    before this.
    """

    def __init__(self, client: Any) -> None:
        self._client = client
        self._lock = threading.RLock()

    def __getattr__(self, name: str) -> Any:
        found = getattr(self._client, name)
        if not callable(found):
            return found

        def call(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                return found(*args, **kwargs)

        return call


def limits_of(schema: RecordSchema) -> Limits:
    """What a collection of ``schema`` cannot hold: point ids are unsigned integers or UUIDs."""
    return Limits(ids="point")


def close_clients() -> None:
    """Close every cached client (a local-mode directory is free for another process)."""
    _clients.close()


def collection_name(scope: Scope) -> str:
    """A collection name for a scope: readable, unique."""
    raw = f"{scope.tenant}/{scope.collection}@{scope.version}"
    readable = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{scope.tenant}_{scope.collection}_{scope.version}")
    return f"vm_{readable[:180]}_{hashlib.sha256(raw.encode()).hexdigest()[:12]}"


def _distance(metric: str) -> Any:
    # No cosine: Qdrant normalises vectors written to a cosine collection, so their bytes would
    # no longer match the source's. Normalise on copy and use "ip" instead (same ranking).
    if metric not in ("l2", "ip"):
        raise PreconditionError(
            "Qdrant stores rewrite vectors for cosine; set the target's metric to ip with "
            "normalized: true (the same ranking, and the bytes stay checkable)"
        )
    models = _models()
    return {"l2": models.Distance.EUCLID, "ip": models.Distance.DOT}[metric]


_METRIC_OF = {"Euclid": "l2", "Dot": "ip", "Cosine": "cosine"}
_INDEX_KIND = {
    FieldKind.INT: "INTEGER",
    FieldKind.FLOAT: "FLOAT",
    FieldKind.BOOL: "BOOL",
    FieldKind.TEXT: "KEYWORD",
    FieldKind.TIMESTAMP: "DATETIME",
}
_KIND_OF_INDEX = {
    "integer": FieldKind.INT,
    "float": FieldKind.FLOAT,
    "bool": FieldKind.BOOL,
    "keyword": FieldKind.TEXT,
    "text": FieldKind.TEXT,
    "uuid": FieldKind.TEXT,
    "datetime": FieldKind.TIMESTAMP,
    "geo": FieldKind.JSON,
}


def _point_id(value: Any, kind: IdKind) -> Any:
    """An id as a Qdrant point id (a string of digits as an integer)."""
    if kind == IdKind.STRING and isinstance(value, str) and value.isdigit():
        return int(value)
    return value


def _record_id(value: Any, kind: IdKind) -> Any:
    """A point id as the record's id."""
    return str(value) if kind == IdKind.STRING else value


def _micros_datetime(v: Any) -> str:
    return (_EPOCH + timedelta(microseconds=int(v))).isoformat().replace("+00:00", "Z")


def qdrant_filter(flt: Filter, schema: RecordSchema) -> Any:
    """A normalised filter as a Qdrant ``Filter`` (equality on floats and timestamps as
    two-sided ranges; ``not`` as ``must_not``, which holds where a field is null or absent)."""
    models = _models()
    return fold_filter(
        flt,
        lambda cond: _qdrant_condition(cond, schema),
        lambda inner: models.Filter(must_not=[inner]),
        lambda parts: models.Filter(must=list(parts)),
        lambda parts: models.Filter(should=list(parts)),
    )


def _qdrant_condition(flt: FieldCondition, schema: RecordSchema) -> Any:
    models = _models()
    kind = schema.field(flt.field).kind
    key = flt.field
    if flt.is_null is not None:
        empty = models.IsEmptyCondition(is_empty=models.PayloadField(key=key))
        return models.Filter(must=[empty]) if flt.is_null else models.Filter(must_not=[empty])

    def exactly(v: Any) -> Any:
        if kind == FieldKind.FLOAT:
            return models.FieldCondition(key=key, range=models.Range(gte=v, lte=v))
        if kind == FieldKind.TIMESTAMP:
            at = _micros_datetime(v)
            return models.FieldCondition(key=key, range=models.DatetimeRange(gte=at, lte=at))
        return models.FieldCondition(key=key, match=models.MatchValue(value=v))

    if flt.eq is not None:
        return models.Filter(must=[exactly(flt.eq)])
    if flt.in_ is not None:
        if kind in (FieldKind.INT, FieldKind.TEXT):
            match = models.MatchAny(any=list(flt.in_))
            return models.Filter(must=[models.FieldCondition(key=key, match=match)])
        return models.Filter(should=[exactly(v) for v in flt.in_])
    bounds = flt.bounds
    if kind == FieldKind.TIMESTAMP:
        rng = models.DatetimeRange(**{k: _micros_datetime(v) for k, v in bounds.items()})
    else:
        rng = models.Range(**bounds)
    return models.Filter(must=[models.FieldCondition(key=key, range=rng)])


def drop_version(ref: QdrantStoreRef, scope: Scope) -> bool:
    """Drop the collection vecmigrate made for ``scope`` (a pruned version); whether there was
    one. An adopted collection has a name of its own and is never dropped here."""
    client = client_for(ref)
    name = collection_name(scope)
    if not client.collection_exists(name):
        return False
    client.delete_collection(name)
    return True


class QdrantAliases(Aliases):
    """Qdrant aliases: one ``update_collection_aliases`` request deletes the old alias and
    creates the new one together, so a reader finds one or the other."""

    engine = "Qdrant"

    def _find(self, name: str) -> str | None:
        for alias in self.client.get_aliases().aliases:
            if alias.alias_name == name:
                return str(alias.collection_name)
        return None

    def _is_collection(self, name: str) -> bool:
        return bool(self.client.collection_exists(name))

    def _move(self, name: str, collection: str, before: str | None) -> None:
        models = _models()
        ops: list[Any] = [] if before is None else [_delete_alias(name)]
        ops.append(
            models.CreateAliasOperation(
                create_alias=models.CreateAlias(collection_name=collection, alias_name=name)
            )
        )
        self.client.update_collection_aliases(change_aliases_operations=ops)

    def _drop(self, name: str) -> None:
        self.client.update_collection_aliases(change_aliases_operations=[_delete_alias(name)])


def _delete_alias(name: str) -> Any:
    models = _models()
    return models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=name))


class QdrantStore(EngineSearch, CollectionStore):
    """A :class:`~vecmigrate.stores.base.VectorStore` on a Qdrant collection."""

    kind = "qdrant"
    aliases = QdrantAliases

    def __init__(
        self,
        client: Any,
        scope: Scope,
        name: str,
        schema: RecordSchema,
        names: dict[str, str],
        *,
        keyed: bool,
        writable: bool,
        notes: list[str] | None = None,
    ) -> None:
        super().__init__(client, scope, name, schema)
        self.keyed = keyed
        self.writable = writable
        # Schema vector name -> Qdrant's ("" for a collection's single unnamed vector).
        self.names = names
        self.notes = notes or []

    @classmethod
    def open(
        cls,
        ref: QdrantStoreRef,
        scope: Scope,
        dimension: int | None = None,
        *,
        metric: str = "l2",
        schema: RecordSchema | None = None,
    ) -> QdrantStore:
        """Open the collection of ``scope``; create it when ``dimension`` or ``schema`` is given.

        Raises:
            NotFoundError: no such collection and nothing to create it from.
            PreconditionError: a named collection exists and was not made by vecmigrate (a
                target), or was made for another scope.
            DataError: it exists with another dimension or schema.
        """
        client = client_for(ref)
        name = ref.collection or collection_name(scope)
        schema = schema_to_create(schema, dimension, metric)
        if not client.collection_exists(name):
            if schema is None:
                raise NotFoundError(f"{scope} does not exist in the Qdrant store ({name})")
            _create(client, name, scope, schema)
        info = client.get_collection(name)
        made = (info.config.metadata or {}).get(MARK)
        if made is not None:
            check_scope(made.get("scope"), scope, f"collection {name}")
            found = RecordSchema.model_validate(made["schema"])
            check_dimension(scope, found.primary.dimension, dimension)
            check_schema(scope, found, schema, dimension)
            names = {v.name: v.name for v in found.vectors}
            return cls(client, scope, name, found, names, keyed=True, writable=True)
        if schema is not None:
            raise PreconditionError(
                f"collection {name} already exists and was not made by vecmigrate; name a new "
                "collection for the target (an existing one can only be a source)"
            )
        adopted, names, notes = _adopted_schema(client, name, info, ref)
        return cls(
            client,
            scope,
            name,
            adopted,
            names,
            keyed=False,
            writable=ref.writable,
            notes=notes,
        )

    # -- reading ------------------------------------------------------------------------------

    def _scroll(
        self, flt: Any, offset: Any, limit: int, *, vectors: bool = True
    ) -> tuple[list[Any], Any]:
        with_vectors: Any = [self.names[v.name] for v in self.schema.vectors] if vectors else False
        if with_vectors and self.names.get(self.schema.primary.name) == "":
            with_vectors = True
        points, nxt = self.client.scroll(
            self.name,
            scroll_filter=flt,
            limit=limit,
            offset=offset,
            with_payload=vectors,
            with_vectors=with_vectors,
        )
        return list(points), nxt

    def _records(self, points: list[Any]) -> tuple[Records, Faults]:
        kind = self.schema.id_kind
        ids = [_record_id(p.id, kind) for p in points]
        vectors: dict[str, list[Any]] = {}
        for v in self.schema.vectors:
            qname = self.names[v.name]
            rows = []
            for p in points:
                found = p.vector
                rows.append(found.get(qname) if isinstance(found, dict) else found)
            vectors[v.name] = rows
        return assemble_rows(
            self.schema, ids, vectors, [p.payload for p in points], hidden=frozenset({KEY})
        )

    def _shard_filter(self, shard: ShardRef) -> Any:
        models = _models()
        if self.keyed and shard.by == "hash" and (shard.lo, shard.hi) != (0, HASH_SPACE):
            return models.Filter(
                must=[models.FieldCondition(key=KEY, range=models.Range(gte=shard.lo, lt=shard.hi))]
            )
        return None

    def scan(self, shard: ShardRef, cursor: Cursor | None, limit: int) -> Batch:
        """Up to ``limit`` points of the shard after the cursor's point, in point-id order (a
        collection without shard keys is read in full and the shard's points kept)."""
        flt = self._shard_filter(shard)
        last: Any = None
        if cursor is not None and cursor.token is not None:
            last = int(cursor.token) if cursor.token.isdigit() else cursor.token
        offset: Any = last
        if shard.by == "range" and (offset is None or offset < shard.lo):
            offset, last = max(shard.lo, 0), None
        kept: list[Records] = []
        faults = Faults()
        count = 0
        while count < limit:
            points, nxt = self._scroll(flt, offset, min(PAGE, limit - count) + 1)
            if last is not None:
                points = [p for p in points if p.id != last]
            if shard.by == "range":
                points = [p for p in points if isinstance(p.id, int) and p.id < shard.hi]
            if not points:
                break
            points = points[: limit - count]
            records, bad = self._records(points)
            last = offset = points[-1].id
            if not self.keyed and shard.by == "hash":
                mine = in_shard(records.labels, shard)
                records = records.filter(mine)
                self.add_shard_faults(faults, bad, shard)
            else:
                faults.extend(bad)
            kept.append(records)
            count += len(records)
            if nxt is None:
                break
        if last is None:
            return Batch(Records.empty(self.schema), cursor, faults)
        records = Records.concat(kept, self.schema)
        label = int(records.labels[-1]) if len(records) else 0
        key = int(hash_key(np.array([label]))[0]) if len(records) else 0
        return Batch(records, Cursor(key=key, id=label, token=str(last)), faults)

    def iter_ids(self, shard: ShardRef, batch_size: int) -> Iterator[Ids]:
        """Every label of a shard, scrolled without vectors or payloads where the collection
        keeps shard keys."""
        if not self.keyed or shard.by == "range":
            yield from super().iter_ids(shard, batch_size)
            return
        flt = self._shard_filter(shard)
        offset: Any = None
        while True:
            points, nxt = self._scroll(flt, offset, min(batch_size, 10_000), vectors=False)
            if points:
                yield self.labels_of([_record_id(p.id, self.schema.id_kind) for p in points])
            if nxt is None:
                return
            offset = nxt

    def count(self, shard: ShardRef | None = None) -> int:
        if shard is None or (shard.by == "hash" and (shard.lo, shard.hi) == (0, HASH_SPACE)):
            return int(self.client.count(self.name, exact=True).count)
        if self.keyed and shard.by == "hash":
            return int(
                self.client.count(
                    self.name, count_filter=self._shard_filter(shard), exact=True
                ).count
            )
        return sum(len(b) for b in self.iter_shard(shard, 10_000))

    def fetch_records(self, ids: pa.Array | Any) -> Records:
        """The records with these ids that exist."""
        arr = id_array(ids, self.schema.id_kind)
        wanted = [_point_id(v, self.schema.id_kind) for v in arr.to_pylist()]
        if self.schema.id_kind == IdKind.INT:
            wanted = [v for v in wanted if v >= 0]
        parts = []
        for at in range(0, len(wanted), PAGE):
            with_vectors: Any = [self.names[v.name] for v in self.schema.vectors]
            if self.names.get(self.schema.primary.name) == "":
                with_vectors = True
            points = self.client.retrieve(
                self.name, ids=wanted[at : at + PAGE], with_payload=True, with_vectors=with_vectors
            )
            parts.append(self._records(list(points))[0])
        return Records.concat(parts, self.schema)

    def limits(self) -> Limits:
        """What the collection cannot hold (see :func:`limits_of`)."""
        return limits_of(self.schema)

    def matching(self, flt: Filter) -> Ids:
        """Labels of the points whose payload matches ``flt`` (Qdrant evaluates it)."""
        qf = qdrant_filter(normalize(flt, self.schema), self.schema)
        found: list[Any] = []
        offset: Any = None
        while True:
            points, offset = self.client.scroll(
                self.name,
                scroll_filter=qf,
                limit=10_000,
                offset=offset,
                with_payload=False,
                with_vectors=False,
            )
            found += [_record_id(p.id, self.schema.id_kind) for p in points]
            if offset is None:
                break
        if not found:
            return np.empty(0, np.int64)
        return self.labels_of(found)

    # -- writing ------------------------------------------------------------------------------

    def write(self, records: Records, *, between_turns: Turns | None = None) -> int:
        """Insert or replace points by id, a page at a time.

        Raises:
            DataError: records of another schema, NaN, an id twice, an id that is not an
                unsigned integer or a UUID.
        """
        self._writes()
        if not len(records):
            return 0
        records = records.conform(self.schema)
        models = _models()
        kind = self.schema.id_kind
        ids = [_point_id(v, kind) for v in records.id_values()]
        if any(isinstance(i, int) and i < 0 for i in ids):
            raise DataError(
                f"{self.scope}: Qdrant point ids are unsigned; negative ids cannot move"
            )
        if len(set(ids)) != len(ids):
            raise DataError(f"{self.scope}: a batch repeats an id; send each id once per batch")
        vectors: dict[str, list[Any]] = {}
        for v in self.schema.vectors:
            raw = records.raw_vectors(v.name)
            if not np.isfinite(raw).all():
                raise DataError(f"{self.scope}: a vector holds NaN or infinity; nothing written")
            vectors[self.names[v.name]] = raw.astype(np.float32).tolist()
        payloads = self._payloads(records)
        for at in range(0, len(ids), PAGE):
            part = slice(at, at + PAGE)
            batch_vectors: Any = {k: rows[part] for k, rows in vectors.items()}
            if list(batch_vectors) == [""]:
                batch_vectors = batch_vectors[""]
            self.client.upsert(
                self.name,
                points=models.Batch(ids=ids[part], vectors=batch_vectors, payloads=payloads[part]),
                wait=True,
            )
        return len(ids)

    def _payloads(self, records: Records) -> list[dict[str, Any]]:
        """Each record's payload object: its fields (null ones as null), the extra object's
        keys, and the shard key where the collection keeps one."""
        import orjson

        n = len(records)
        out: list[dict[str, Any]] = [{} for _ in range(n)]
        for f in self.schema.payload:
            for row, value in zip(out, python_values(records.payload(f.name), f.kind), strict=True):
                row[f.name] = value
        if records.extra is not None:
            for row, value in zip(out, records.extra.to_pylist(), strict=True):
                if value is not None:
                    row.update(orjson.loads(value))
        if self.keyed:
            for row, key in zip(out, hash_key(records.labels).tolist(), strict=True):
                row[KEY] = key
        return out

    def delete(self, ids: Ids | pa.Array) -> int:
        self._writes()
        arr = id_array(ids, self.schema.id_kind)
        values = [_point_id(v, self.schema.id_kind) for v in arr.to_pylist()]
        values = [v for v in values if not (isinstance(v, int) and v < 0)]
        if not values:
            return 0
        present = len(
            self.client.retrieve(self.name, ids=values, with_payload=False, with_vectors=False)
        )
        models = _models()
        self.client.delete(self.name, points_selector=models.PointIdsList(points=values), wait=True)
        return present

    # -- native index -------------------------------------------------------------------------

    def create_index(self, spec: IndexSpec, metric: Metric) -> str:
        """Set the collection's HNSW graph to the spec's parameters and index every segment
        (a server rebuilds the graph; the local mode searches exactly)."""
        self._writes()
        if not isinstance(spec, QdrantHnsw):
            raise PreconditionError(f"Qdrant cannot build {spec.kind} natively")
        models = _models()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the local mode warns that it keeps no graph
            made = dict(self.client.get_collection(self.name).config.metadata or {})
            made[MARK] = {**made.get(MARK, {}), "index": spec.model_dump(mode="json")}
            self.client.update_collection(
                self.name,
                hnsw_config=models.HnswConfigDiff(m=spec.m, ef_construct=spec.ef_construct),
                optimizers_config=models.OptimizersConfigDiff(indexing_threshold=1),
                quantization_config=_quantization(spec),
                metadata=made,
            )
        quantized = "" if spec.quantization == "none" else f"-{spec.quantization}"
        return f"{self.name}/hnsw-m{spec.m}-ef{spec.ef_construct}{quantized}"

    def _native_hits(self, query: NativeQuery) -> Iterator[NativeHits]:
        """Qdrant's own search (see :meth:`EngineSearch.native_search`)."""
        models = _models()
        spec, k = query.spec, query.k
        ef = spec.ef if isinstance(spec, QdrantHnsw) else None
        qf = None if query.flt is None else qdrant_filter(query.flt, self.schema)
        quantized = None
        if isinstance(spec, QdrantHnsw) and spec.quantization != "none":
            quantized = models.QuantizationSearchParams(
                rescore=spec.rescore, oversampling=spec.oversampling
            )
        using = self.names[self.schema.primary.name] or None
        l2 = str(query.metric) == "l2"
        for vector in query.vectors:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the local mode searches exactly
                hits = self.client.query_points(
                    self.name,
                    query=vector.tolist(),
                    using=using,
                    limit=k,
                    query_filter=qf,
                    search_params=models.SearchParams(
                        hnsw_ef=max(ef or k, k), quantization=quantized
                    ),
                    with_payload=False,
                ).points
            ids = [_record_id(h.id, self.schema.id_kind) for h in hits[:k]]
            scores = [float(hit.score) for hit in hits[:k]]
            yield ids, self.labels_of(ids), [s * s if l2 else 1.0 - s for s in scores]

    # -- inventory ------------------------------------------------------------------------------

    def vector_indexes(self) -> dict[str, dict[str, Any]]:
        """Qdrant's HNSW graph of each vector (its parameters and metric)."""
        info = self.client.get_collection(self.name)
        params = info.config.params.vectors
        hnsw = info.config.hnsw_config
        out: dict[str, dict[str, Any]] = {}
        for v in self.schema.vectors:
            qname = self.names[v.name]
            vp = params.get(qname) if isinstance(params, dict) else params
            own = getattr(vp, "hnsw_config", None)
            m = getattr(own, "m", None) or hnsw.m
            ef = getattr(own, "ef_construct", None) or hnsw.ef_construct
            out[v.name] = {
                "index": {"kind": "qdrant_hnsw", "m": m, "ef_construct": ef},
                "metric": v.metric,
            }
        return out

    def inventory(self, samples: int = 3) -> Inventory:
        """Points, schema, vector and payload indexes, and a few points of the collection."""
        info = self.client.get_collection(self.name)
        payload_indexes = {
            k: _index_type(s) for k, s in (info.payload_schema or {}).items() if k != KEY
        }
        return self._inventory(
            self.name,
            samples,
            indexes=self.vector_indexes(),
            payload_indexes=payload_indexes,
            notes=list(self.notes),
            sampled=not self.keyed,
        )


def _index_type(info: Any) -> str:
    """A payload index's type as Qdrant names it ("keyword", "integer", ...)."""
    return str(getattr(info, "data_type", info)).split(".")[-1].lower()


def _create(client: Any, name: str, scope: Scope, schema: RecordSchema) -> None:
    """Create a collection for records of ``schema``: its vectors with their metrics, payload
    indexes on the indexed fields and the shard key, the schema and scope in its metadata."""
    models = _models()
    vectors = {
        v.name: models.VectorParams(
            size=v.dimension,
            distance=_distance(v.metric or "l2"),
            datatype=models.Datatype.FLOAT16 if v.dtype == "float16" else None,
        )
        for v in schema.vectors
    }
    client.create_collection(
        name,
        vectors_config=vectors,
        metadata={MARK: {"scope": str(scope), "schema": schema.model_dump(mode="json")}},
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the local mode warns that indexes change nothing
        client.create_payload_index(name, KEY, field_schema=models.PayloadSchemaType.INTEGER)
        for f in schema.payload:
            if f.indexed and f.kind in _INDEX_KIND:
                client.create_payload_index(
                    name,
                    f.name,
                    field_schema=getattr(models.PayloadSchemaType, _INDEX_KIND[f.kind]),
                )


def _adopted_schema(
    client: Any, name: str, info: Any, ref: QdrantStoreRef
) -> tuple[RecordSchema, dict[str, str], list[str]]:
    """The record schema of an existing collection: its dense vectors from its configuration,
    its payload fields from its payload indexes and a sample of points.

    Raises:
        PreconditionError: no dense vector to carry, a vector ``ref.vectors`` names that it lacks,
            or a distance vecmigrate does not support.
    """
    notes: list[str] = []
    params = info.config.params.vectors
    configured = {"": params} if not isinstance(params, dict) else dict(params or {})
    sparse = list((info.config.params.sparse_vectors or {}).keys())
    if ref.vectors is not None:
        wanted = [("" if n == _UNNAMED and "" in configured else n) for n in ref.vectors]
        missing = [n for n in wanted if n not in configured]
        if missing:
            raise PreconditionError(
                f"collection {name} has no vectors {missing}; it has {sorted(configured)}"
            )
    else:
        if sparse:
            raise PreconditionError(
                f"collection {name} has sparse vectors {sparse}, which vecmigrate does not carry: "
                "list the dense vectors to carry in vectors"
            )
        wanted = list(configured)
    vectors: list[VectorField] = []
    names: dict[str, str] = {}
    for qname in wanted:
        vp = configured[qname]
        if getattr(vp, "multivector_config", None) is not None:
            raise PreconditionError(f"vector {qname!r} of {name} is a multivector; not carried")
        distance = str(getattr(vp.distance, "value", vp.distance))
        if distance not in _METRIC_OF:
            raise PreconditionError(
                f"vector {qname!r} of {name} uses {distance} distance, which vecmigrate does not "
                "support"
            )
        field_name = qname or _UNNAMED
        names[field_name] = qname
        datatype = str(getattr(vp.datatype, "value", vp.datatype) or "float32")
        vectors.append(
            VectorField(
                name=field_name,
                dimension=int(vp.size),
                dtype="float16" if datatype == "float16" else "float32",
                metric=_METRIC_OF[distance],
            )
        )
    indexed = {
        k: _KIND_OF_INDEX.get(
            str(getattr(s, "data_type", s)).split(".")[-1].lower(), FieldKind.JSON
        )
        for k, s in (info.payload_schema or {}).items()
    }
    points, _ = client.scroll(name, limit=SAMPLE, with_payload=True, with_vectors=False)
    values: dict[str, list[Any]] = {}
    id_types: set[str] = set()
    for p in points:
        id_types.add("int" if isinstance(p.id, int) else "uuid")
        for key, value in (p.payload or {}).items():
            values.setdefault(key, []).append(value)
    id_kind = (
        IdKind.INT
        if id_types <= {"int"}
        else IdKind.UUID
        if id_types == {"uuid"}
        else IdKind.STRING
    )
    fields = []
    for key in sorted(set(values) | set(indexed)):
        if key == KEY or not re.match(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$", key):
            if key != KEY:
                notes.append(f"payload key {key!r} is kept in the extra object (not a field name)")
            continue
        kind = ref.payload_kinds.get(key) or indexed.get(key) or infer_kind(values.get(key, []))
        fields.append(PayloadField(name=key, kind=kind, indexed=key in indexed))
    taken = {"id", *names, *(f.name for f in fields)}
    extra = "_extra"
    while extra in taken:
        extra = "_" + extra
    notes.append(
        f"payload fields typed from {len(points)} points; keys no sampled point had are kept in "
        f"the extra object {extra!r}"
    )
    schema = RecordSchema(
        id_kind=id_kind, vectors=tuple(vectors), payload=tuple(fields), extra=extra
    )
    return schema, names, notes


def _quantization(spec: QdrantHnsw) -> Any:
    """Qdrant's quantization config of ``spec`` (None: full vectors only). A server keeps the
    codes beside the full vectors and rescores with them; the local mode searches exactly."""
    models = _models()
    if spec.quantization == "scalar":
        return models.ScalarQuantization(
            scalar=models.ScalarQuantizationConfig(
                type=models.ScalarType.INT8, quantile=0.99, always_ram=True
            )
        )
    if spec.quantization == "product":
        ratio = getattr(models.CompressionRatio, f"X{spec.product_compression}")
        return models.ProductQuantization(
            product=models.ProductQuantizationConfig(compression=ratio, always_ram=True)
        )
    return None
