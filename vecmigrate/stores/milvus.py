"""Milvus as a source or target, through pymilvus against any Milvus URI.

Each version vecmigrate makes is its own collection (named by the store reference, or one of its
own per scope): the id (``INT64``, or ``VARCHAR`` for string and UUID ids), the shard key, one
field per vector, one per payload field and, for the extra object, Milvus's dynamic field; the
collection's description holds the record schema and the scope, so a handle never opens
another version's collection. Milvus needs an index to load a collection at all: a new
collection gets a FLAT index (exact search) on every vector, replaced by the native index the
spec asks for; payload fields the source indexed get an INVERTED index.

Nulls: milvus-lite has no nullable fields, so a nullable payload field keeps a companion
``<field>__null`` flag beside it, and filters test the flag. Timestamps are ``INT64``
microseconds (the field's description says so).

Scans are keyset-paginated on the primary key inside a shard's key range (Milvus returns query
results in primary-key order), so the scan order is (id) within a shard rather than (shard key,
id). An existing collection named as a source is read as it is (its hash shards in id order,
the shard's rows kept), and nothing is written to it.

A local file URI (``./milvus.db``) runs the embedded milvus-lite engine in-process; it serves
one process at a time and builds FLAT and IVF_FLAT indexes only.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from collections.abc import Callable, Iterator
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
from vecmigrate.model.spec import (
    IndexSpec,
    Metric,
    MilvusFlat,
    MilvusIvfFlat,
    MilvusIvfPq,
    MilvusIvfSq8,
    MilvusStoreRef,
    MilvusTls,
)
from vecmigrate.model.tasks import Cursor, ShardRef
from vecmigrate.records.batch import Faults, Records, assemble_rows
from vecmigrate.records.filters import normalize
from vecmigrate.records.ids import id_array
from vecmigrate.records.payload import python_values
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
    collect_pages,
    in_shard,
    paged_ids,
    schema_to_create,
)

_METRIC = {"l2": "L2", "ip": "IP", "cosine": "COSINE"}
_METRIC_OF = {v: k for k, v in _METRIC.items()}
# Milvus answers at most this many rows per query; longer scans page by primary key.
MAX_QUERY = 16384
# Rows per call that reads or writes vectors. milvus-lite's time for such a call grows with the
# square of its rows (a query of 40,000 records: 500 rows 6 ms, 2,000 rows 56 ms, 8,000 rows 880
# ms at 64 dimensions; 500 rows 32 ms, 4,000 rows 1.3 s at 384): 500-row pages read 79,000
# records/s at 64 dimensions and 16,000 at 384. A scan of 50,000 x 384 in 10,000-row batches
# takes 4.1 s in 512-row pages; in pages of a whole batch it had not ended after six minutes.
# Queries of ids alone page at ``MAX_QUERY`` (10,000 in 9 ms).
VECTOR_PAGE = 512
KEY = "_vm_h"
LEGACY_KEY = "h"
NULL_FLAG = "__null"
MARKER = "vecmigrate:"
TIMESTAMP_NOTE = "vecmigrate:timestamp"
# Milvus's VARCHAR holds at most 65,535 bytes; a JSON value (the dynamic field included) 65,536.
MAX_VARCHAR = 65_535
MAX_JSON = 65_536
ID_LENGTH = {IdKind.UUID: 36, IdKind.STRING: 1_024}
_clients = Clients()


def client_for(uri: str, token: str | None = None, tls: MilvusTls | None = None) -> Any:
    """One pymilvus client per URI (and credentials) per process (a milvus-lite file allows one
    owner). ``token`` is a secret reference, resolved here; ``tls`` adds a CA, the server's
    name or a client certificate (mutual TLS)."""

    def connect() -> Any:
        with warnings.catch_warnings():
            # milvus-lite imports pkg_resources, which setuptools deprecates, when the first
            # client of a local file starts it.
            warnings.filterwarnings("ignore", "pkg_resources is deprecated", UserWarning)
            from pymilvus import MilvusClient

            return MilvusClient(uri, token=resolve_optional(token) or "", **tls_options(tls))

    return _clients.get((uri, token, tls), connect)


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


def limits_of(schema: RecordSchema) -> Limits:
    """What a collection of ``schema`` cannot hold: VARCHAR holds 65,535 bytes, a JSON value
    (the dynamic field too) 65,536, a VARCHAR id its declared length."""
    caps = {
        f.name: MAX_VARCHAR if f.kind == FieldKind.TEXT else MAX_JSON
        for f in schema.payload
        if f.kind in (FieldKind.TEXT, FieldKind.JSON)
    }
    return Limits(
        max_id_bytes=ID_LENGTH.get(schema.id_kind), max_value_bytes=caps, max_extra_bytes=MAX_JSON
    )


def close_clients() -> None:
    """Close every cached client (stops embedded milvus-lite engines)."""
    _clients.close()


def collection_name(scope: Scope) -> str:
    """A Milvus collection name for a scope: readable, within Milvus's character set, unique."""
    raw = f"{scope.tenant}/{scope.collection}@{scope.version}"
    readable = re.sub(r"[^A-Za-z0-9_]", "_", f"{scope.collection}_{scope.version}")[:160]
    return f"vm_{readable}_{hashlib.sha256(raw.encode()).hexdigest()[:12]}"


class MilvusAliases(Aliases):
    """Milvus aliases: ``alter_alias`` moves one in one step, ``create_alias`` makes a new one."""

    engine = "Milvus"

    def _find(self, name: str) -> str | None:
        try:
            aliases = self.client.list_aliases().get("aliases", [])
        except Exception as exc:
            if "UNIMPLEMENTED" not in str(exc):
                raise
            raise PreconditionError(
                "this Milvus engine has no aliases (milvus-lite answers UNIMPLEMENTED): a stable "
                "name needs a Milvus server"
            ) from None
        if name in aliases:
            return str(self.client.describe_alias(alias=name)["collection_name"])
        return None

    def _is_collection(self, name: str) -> bool:
        return bool(self.client.has_collection(name))

    def _move(self, name: str, collection: str, before: str | None) -> None:
        if before is None:
            self.client.create_alias(collection_name=collection, alias=name)
        else:
            self.client.alter_alias(collection_name=collection, alias=name)

    def _drop(self, name: str) -> None:
        self.client.drop_alias(alias=name)


def _literal(value: Any) -> str:
    """A value in a Milvus boolean expression."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


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


def _vector_index(client: Any, field: str, spec: IndexSpec | None, metric: str) -> Any:
    params = client.prepare_index_params()
    if isinstance(spec, MilvusIvfFlat | MilvusIvfSq8 | MilvusIvfPq):
        kind, build = index_type(spec)
        params.add_index(
            field_name=field,
            index_type=kind,
            metric_type=_METRIC[metric],
            params=build,
        )
    else:
        params.add_index(field_name=field, index_type="FLAT", metric_type=_METRIC[metric])
    return params


def milvus_filter(flt: Filter, schema: RecordSchema, nulls: dict[str, str]) -> str:
    """A normalised filter as a Milvus boolean expression. ``nulls`` says how each nullable
    field keeps its nulls (``flag``: a companion flag; ``native``: a nullable field)."""
    return fold_filter(
        flt,
        lambda cond: _milvus_condition(cond, nulls),
        lambda inner: f"not ({inner})",
        lambda parts: " and ".join(f"({p})" for p in parts),
        lambda parts: " or ".join(f"({p})" for p in parts),
    )


def _milvus_condition(flt: FieldCondition, nulls: dict[str, str]) -> str:
    name = flt.field
    held = nulls.get(name)
    if flt.is_null is not None:
        if held == "flag":
            return f"{name}{NULL_FLAG} == {_literal(flt.is_null)}"
        if held == "native":
            return f"{name} is {'' if flt.is_null else 'not '}null"
        return "false" if flt.is_null else "true"
    if flt.eq is not None:
        cond = f"{name} == {_literal(flt.eq)}"
    elif flt.in_ is not None:
        cond = f"{name} in [{', '.join(_literal(v) for v in flt.in_)}]"
    else:
        ops = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
        cond = " and ".join(f"{name} {ops[k]} {_literal(v)}" for k, v in flt.bounds.items())
    if held == "flag":
        # A null field holds a stand-in value: the flag keeps it from matching.
        return f"{name}{NULL_FLAG} == false and ({cond})"
    if held == "native":
        return f"{name} is not null and ({cond})"
    return cond


class MilvusStore(EngineSearch, CollectionStore):
    """A :class:`~vecmigrate.stores.base.VectorStore` on Milvus."""

    kind = "milvus"
    aliases = MilvusAliases

    def __init__(
        self,
        client: Any,
        scope: Scope,
        name: str,
        schema: RecordSchema,
        *,
        key: str | None,
        nulls: dict[str, str],
        id_field: str = "id",
        writable: bool = True,
        notes: list[str] | None = None,
    ) -> None:
        super().__init__(client, scope, name, schema)
        self.key = key
        self.keyed = key is not None
        self.nulls = nulls
        self.id_field = id_field
        self.writable = writable
        self.notes = notes or []
        self.legacy = key == LEGACY_KEY

    @classmethod
    def open(
        cls,
        ref: MilvusStoreRef | str,
        scope: Scope,
        dimension: int | None = None,
        *,
        token: str | None = None,
        tls: MilvusTls | None = None,
        metric: str = "l2",
        schema: RecordSchema | None = None,
    ) -> MilvusStore:
        """Open the collection of ``scope``; create it when ``dimension`` or ``schema`` is given.

        Raises:
            NotFoundError: no such collection and nothing to create it from.
            PreconditionError: a named collection exists and was not made by vecmigrate (a
                target), or was made for another scope.
            DataError: it exists with another dimension.
        """
        if isinstance(ref, str):
            ref = MilvusStoreRef(uri=ref, token=token, tls=tls)
        client = client_for(ref.uri, ref.token, ref.tls)
        name = ref.collection or collection_name(scope)
        schema = schema_to_create(schema, dimension, metric)
        if not client.has_collection(name):
            if schema is None:
                raise NotFoundError(f"{scope} does not exist in Milvus at {ref.uri} ({name})")
            _create(client, name, scope, schema, legacy=ref.collection is None and schema.is_plain)
        described = client.describe_collection(name)
        description = str(described.get("description") or "")
        fields = {f["name"]: f for f in described["fields"]}
        if description.startswith(MARKER) or (ref.collection is None and LEGACY_KEY in fields):
            if description.startswith(MARKER):
                made = json.loads(description[len(MARKER) :])
                check_scope(made.get("scope"), scope, f"collection {name}")
                found = RecordSchema.model_validate(made["schema"])
                key = KEY
            else:  # made before collections described themselves
                dim = int(fields["embedding"]["params"]["dim"])
                found = RecordSchema.plain(dim).model_copy(
                    update={
                        "vectors": (VectorField(name="embedding", dimension=dim, metric=metric),)
                    }
                )
                key = LEGACY_KEY
            check_dimension(scope, found.primary.dimension, dimension)
            check_schema(scope, found, schema, dimension)
            nulls = {f.name: "flag" for f in found.payload if f.nullable}
            client.load_collection(name)
            return cls(client, scope, name, found, key=key, nulls=nulls)
        if schema is not None:
            raise PreconditionError(
                f"collection {name} already exists and was not made by vecmigrate; name a new "
                "collection for the target (an existing one can only be a source)"
            )
        adopted, id_field, nulls, notes = _adopted_schema(client, name, described, ref)
        client.load_collection(name)
        return cls(
            client,
            scope,
            name,
            adopted,
            key=None,
            nulls=nulls,
            id_field=id_field,
            writable=ref.writable,
            notes=notes,
        )

    # -- reading ------------------------------------------------------------------------------

    def _row_id(self, row: dict[str, Any]) -> Any:
        return row[self.id_field]

    def _output(self) -> list[str]:
        if self.legacy:
            return ["id", "h", "embedding"]
        return ["*"]

    def _records(self, rows: list[dict[str, Any]]) -> tuple[Records, Faults]:
        schema = self.schema
        rows = sorted(rows, key=lambda r: r[self.id_field])
        ids = [r[self.id_field] for r in rows]
        vectors: dict[str, Any] = {}
        for v in schema.vectors:
            values = [r.get(v.name) for r in rows]
            if v.dtype == "float16":
                values = [
                    None if x is None else np.frombuffer(x[0] if isinstance(x, list) else x, "<f2")
                    for x in values
                ]
            vectors[v.name] = values
        hidden = {self.id_field, *(v.name for v in schema.vectors)}
        if self.key:
            hidden.add(self.key)
        payloads = []
        timestamps = [f.name for f in schema.payload if f.kind == FieldKind.TIMESTAMP]
        for r in rows:
            obj = {k: val for k, val in r.items() if k not in hidden}
            for f in schema.payload:
                flagged = self.nulls.get(f.name) == "flag"
                if flagged and obj.pop(f"{f.name}{NULL_FLAG}", False):
                    obj[f.name] = None
            for name in timestamps:
                if isinstance(obj.get(name), int):
                    obj[name] = int(obj[name])
            payloads.append(obj)
        return assemble_rows(schema, ids, vectors, payloads)

    def _fetch(
        self, shard: ShardRef | None, fields: list[str]
    ) -> Callable[[Any, int], list[dict[str, Any]]]:
        """A page of a shard's rows: at most ``n`` after id ``start``, in id order (for
        :func:`collect_pages`)."""
        conds = []
        if shard is not None and self.keyed:
            col = self.key if shard.by == "hash" else self.id_field
            conds.append(f"{col} >= {int(shard.lo)} and {col} < {int(shard.hi)}")
        elif shard is not None and shard.by == "range":
            conds.append(
                f"{self.id_field} >= {int(shard.lo)} and {self.id_field} < {int(shard.hi)}"
            )

        def fetch(start: Any, n: int) -> list[dict[str, Any]]:
            parts = list(conds)
            if start is not None:
                parts.append(f"{self.id_field} > {_literal(start)}")
            expr = " and ".join(parts) or self._everything()
            rows: list[dict[str, Any]] = self.client.query(
                self.name, filter=expr, output_fields=fields, limit=n
            )
            return rows

        return fetch

    def _everything(self) -> str:
        if self.schema.id_kind == IdKind.INT:
            return f"{self.id_field} >= -9223372036854775807"
        return f'{self.id_field} >= ""'

    def scan(self, shard: ShardRef, cursor: Cursor | None, limit: int) -> Batch:
        after: Any = None
        if cursor is not None:
            if cursor.token is not None:
                after = int(cursor.token) if self.schema.id_kind == IdKind.INT else cursor.token
            elif self.schema.id_kind == IdKind.INT:
                after = int(cursor.id)
        fetch = self._fetch(shard, self._output())
        kept: list[Records] = []
        faults = Faults()
        count = 0
        last: Any = None
        while count < limit:
            want = int(limit) - count
            rows = collect_pages(fetch, self._row_id, after, want, VECTOR_PAGE)
            if not rows:
                break
            records, bad = self._records(rows)
            last = after = max(r[self.id_field] for r in rows)
            if not self.keyed and shard.by == "hash":
                records = records.filter(in_shard(records.labels, shard))
                self.add_shard_faults(faults, bad, shard)
            else:
                faults.extend(bad)
            kept.append(records)
            count += len(records)
            if len(rows) < want:
                break
        records = Records.concat(kept, self.schema)
        if last is None:
            return Batch(records, cursor, faults)
        label = int(records.labels[-1]) if len(records) else 0
        key = int(hash_key(np.array([label]))[0]) if len(records) else 0
        token = str(last)
        return Batch(records, Cursor(key=key, id=label, token=token), faults)

    def iter_ids(self, shard: ShardRef, batch_size: int) -> Iterator[Ids]:
        """Every label of a shard in id order, queried without the vectors."""
        if not self.keyed or self.schema.id_kind != IdKind.INT:
            yield from super().iter_ids(shard, batch_size)
            return
        fetch = self._fetch(shard, [self.id_field])
        yield from paged_ids(fetch, self._row_id, batch_size, MAX_QUERY)

    def count(self, shard: ShardRef | None = None) -> int:
        if shard is None or (shard.by == "hash" and (shard.lo, shard.hi) == (0, HASH_SPACE)):
            expr = self._everything()
        elif self.keyed:
            col = self.key if shard.by == "hash" else self.id_field
            expr = f"{col} >= {int(shard.lo)} and {col} < {int(shard.hi)}"
        else:
            return sum(len(b) for b in self.iter_shard(shard, 10_000))
        res = self.client.query(self.name, filter=expr, output_fields=["count(*)"])
        return int(res[0]["count(*)"])

    def fetch_records(self, ids: pa.Array | Any) -> Records:
        """The records with these ids that exist."""
        values = sorted(set(id_array(ids, self.schema.id_kind).to_pylist()))
        rows = [
            row
            for at in range(0, len(values), VECTOR_PAGE)
            for row in self.client.get(
                self.name, ids=values[at : at + VECTOR_PAGE], output_fields=self._output()
            )
        ]
        return self._records(rows)[0]

    def limits(self) -> Limits:
        """What the collection cannot hold (see :func:`limits_of`)."""
        return limits_of(self.schema)

    def matching(self, flt: Filter) -> Ids:
        """Labels of the records whose payload matches ``flt`` (Milvus evaluates it)."""
        expr = milvus_filter(normalize(flt, self.schema), self.schema, self.nulls)
        found: list[Any] = []
        after: Any = None
        while True:
            cond = expr if after is None else f"({expr}) and {self.id_field} > {_literal(after)}"
            rows = self.client.query(
                self.name, filter=cond, output_fields=[self.id_field], limit=MAX_QUERY
            )
            if not rows:
                break
            found += [r[self.id_field] for r in rows]
            after = max(r[self.id_field] for r in rows)
        if not found:
            return np.empty(0, np.int64)
        return self.labels_of(found)

    # -- writing ------------------------------------------------------------------------------

    def write(self, records: Records, *, between_turns: Turns | None = None) -> int:
        """Insert or replace records by id, a page at a time, in order (a later write of an id
        still wins).

        Raises:
            DataError: records of another schema, NaN, an id twice.
        """
        self._writes()
        n = len(records)
        if not n:
            return 0
        records = records.conform(self.schema)
        labels = records.labels
        if np.unique(labels).size != labels.size:
            raise DataError(f"{self.scope}: a batch repeats an id; send each id once per batch")
        rows: list[dict[str, Any]] = [{} for _ in range(n)]
        for row, value in zip(rows, records.id_values(), strict=True):
            row[self.id_field] = value
        if self.key:
            for row, h in zip(rows, hash_key(labels).tolist(), strict=True):
                row[self.key] = h
        for v in self.schema.vectors:
            raw = records.raw_vectors(v.name)
            if not np.isfinite(raw).all():
                raise DataError(f"{self.scope}: a vector holds NaN or infinity; nothing written")
            if v.dtype == "float16":
                for row, vec in zip(rows, raw.astype("<f2"), strict=True):
                    row[v.name] = vec
            else:
                for row, vec in zip(rows, raw.astype(np.float32), strict=True):
                    row[v.name] = vec
        for f in self.schema.payload:
            values = python_values(records.payload(f.name), f.kind, timestamps="micros")
            flag = self.nulls.get(f.name) == "flag"
            stand_in = _STAND_IN[f.kind]
            for row, value in zip(rows, values, strict=True):
                if flag:
                    row[f"{f.name}{NULL_FLAG}"] = value is None
                    row[f.name] = stand_in if value is None else value
                else:
                    row[f.name] = value
        if records.extra is not None:
            import orjson

            for row, value in zip(rows, records.extra.to_pylist(), strict=True):
                if value is not None:
                    row.update(orjson.loads(value))
        # In pages, in order (a later write of an id still wins): milvus-lite took 185 s to
        # upsert 20,000 x 384 in pages of 10,000 rows, 2.2 s in pages of 2,000, 1.6 s of 500.
        for at in range(0, n, VECTOR_PAGE):
            self.client.upsert(self.name, data=rows[at : at + VECTOR_PAGE])
        return n

    def delete(self, ids: Ids | pa.Array) -> int:
        self._writes()
        values = id_array(ids, self.schema.id_kind).to_pylist()
        if not values:
            return 0
        before = len(self.client.get(self.name, ids=values, output_fields=[self.id_field]))
        self.client.delete(self.name, ids=values)
        return before

    # -- native indexes ----------------------------------------------------------------------

    def create_index(self, spec: IndexSpec, metric: Metric) -> str:
        """Replace each vector's index with the native one the spec names (idempotent; the
        other vectors by the metric their source indexed them with)."""
        self._writes()
        if not isinstance(spec, MilvusFlat | MilvusIvfFlat | MilvusIvfSq8 | MilvusIvfPq):
            raise PreconditionError(f"Milvus cannot build {spec.kind} natively here")
        wanted, build = index_type(spec)
        for v in self.schema.vectors:
            m = str(metric) if v is self.schema.primary else (v.metric or str(metric))
            current = self.client.describe_index(self.name, v.name) or {}
            same = (
                current.get("index_type") == wanted
                and current.get("metric_type") == _METRIC[m]
                and all(str(current.get(k)) == str(val) for k, val in build.items())
            )
            if not same:
                self.client.release_collection(self.name)
                self.client.drop_index(self.name, v.name)
                self.client.create_index(self.name, _vector_index(self.client, v.name, spec, m))
        self.client.load_collection(self.name)
        return f"{self.name}/{wanted}"

    def _native_hits(self, query: NativeQuery) -> Iterator[NativeHits]:
        """Milvus's own search (see :meth:`EngineSearch.native_search`)."""
        metric, spec, k = str(query.metric), query.spec, query.k
        params: dict[str, Any] = {"metric_type": _METRIC[metric]}
        if isinstance(spec, MilvusIvfFlat | MilvusIvfSq8 | MilvusIvfPq):
            params["params"] = {"nprobe": spec.nprobe}
        expr = "" if query.flt is None else milvus_filter(query.flt, self.schema, self.nulls)
        results = self.client.search(
            self.name,
            data=list(query.vectors),
            limit=k,
            filter=expr,
            anns_field=self.schema.primary.name,
            search_params=params,
            output_fields=[self.id_field],
        )
        for hits in results:
            ids = [hit["id"] for hit in hits[:k]]
            values = [float(hit["distance"]) for hit in hits[:k]]
            yield ids, self.labels_of(ids), values if metric == "l2" else [1.0 - v for v in values]

    # -- inventory ------------------------------------------------------------------------------

    def _indexes(self) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
        vectors: dict[str, dict[str, Any]] = {}
        payload: dict[str, str] = {}
        for index_name in self.client.list_indexes(self.name):
            found = self.client.describe_index(self.name, index_name) or {}
            field = str(found.get("field_name", index_name))
            kind = str(found.get("index_type", ""))
            if field in {v.name for v in self.schema.vectors}:
                spec: dict[str, Any] = {"kind": "milvus_flat"}
                if kind == "IVF_FLAT":
                    spec = {"kind": "milvus_ivf_flat", "nlist": int(found.get("nlist", 128))}
                elif kind != "FLAT":
                    spec = {"kind": kind.lower()}
                vectors[field] = {
                    "index": spec,
                    "metric": _METRIC_OF.get(str(found.get("metric_type"))),
                }
            elif field != self.key:
                payload[field] = kind.lower()
        return vectors, payload

    def vector_indexes(self) -> dict[str, dict[str, Any]]:
        """Milvus's index on each vector field (kind, parameters and metric)."""
        return self._indexes()[0]

    def inventory(self, samples: int = 3) -> Inventory:
        """Rows, schema, vector and scalar indexes, and a few rows of the collection."""
        indexes, payload_indexes = self._indexes()
        return self._inventory(
            self.name,
            samples,
            indexes=indexes,
            payload_indexes=payload_indexes,
            notes=list(self.notes),
        )


_STAND_IN: dict[FieldKind, Any] = {
    FieldKind.BOOL: False,
    FieldKind.INT: 0,
    FieldKind.FLOAT: 0.0,
    FieldKind.TEXT: "",
    FieldKind.TIMESTAMP: 0,
    FieldKind.JSON: {},
}


def _create(client: Any, name: str, scope: Scope, schema: RecordSchema, *, legacy: bool) -> None:
    """Create a collection for records of ``schema``.

    Records of integer ids and one float32 vector in a collection of vecmigrate's own keep the
    layout of earlier releases, (id, h, embedding); others get the fields the module describes.
    """
    from pymilvus import DataType, MilvusClient

    if legacy:
        s = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        s.add_field("id", DataType.INT64, is_primary=True)
        s.add_field(LEGACY_KEY, DataType.INT64)
        s.add_field("embedding", DataType.FLOAT_VECTOR, dim=schema.primary.dimension)
        client.create_collection(
            name,
            schema=s,
            index_params=_vector_index(client, "embedding", None, schema.primary.metric or "l2"),
            consistency_level="Strong",
        )
        return
    description = MARKER + json.dumps(
        {"scope": str(scope), "schema": schema.model_dump(mode="json")}, sort_keys=True
    )
    s = MilvusClient.create_schema(
        auto_id=False, enable_dynamic_field=schema.extra is not None, description=description
    )
    if schema.id_kind == IdKind.INT:
        s.add_field("id", DataType.INT64, is_primary=True)
    else:
        s.add_field("id", DataType.VARCHAR, is_primary=True, max_length=ID_LENGTH[schema.id_kind])
    s.add_field(KEY, DataType.INT64)
    for v in schema.vectors:
        vtype = DataType.FLOAT16_VECTOR if v.dtype == "float16" else DataType.FLOAT_VECTOR
        s.add_field(v.name, vtype, dim=v.dimension)
    kinds = {
        FieldKind.BOOL: DataType.BOOL,
        FieldKind.INT: DataType.INT64,
        FieldKind.FLOAT: DataType.DOUBLE,
        FieldKind.TIMESTAMP: DataType.INT64,
        FieldKind.JSON: DataType.JSON,
    }
    for f in schema.payload:
        if f.kind == FieldKind.TEXT:
            s.add_field(f.name, DataType.VARCHAR, max_length=MAX_VARCHAR)
        else:
            note = TIMESTAMP_NOTE if f.kind == FieldKind.TIMESTAMP else ""
            s.add_field(f.name, kinds[f.kind], description=note)
        if f.nullable:
            s.add_field(f"{f.name}{NULL_FLAG}", DataType.BOOL)
    params = client.prepare_index_params()
    for v in schema.vectors:
        params.add_index(
            field_name=v.name, index_type="FLAT", metric_type=_METRIC[v.metric or "l2"]
        )
    for f in schema.payload:
        if f.indexed and f.kind != FieldKind.JSON:
            params.add_index(field_name=f.name, index_type="INVERTED")
    client.create_collection(name, schema=s, index_params=params, consistency_level="Strong")


def _adopted_schema(
    client: Any, name: str, described: dict[str, Any], ref: MilvusStoreRef
) -> tuple[RecordSchema, str, dict[str, str], list[str]]:
    """The record schema of an existing collection, from its fields and indexes.

    Raises:
        PreconditionError: no dense float vector field, a vector ``ref.vector_fields`` names that
            it lacks, or a field type vecmigrate does not carry.
    """
    from pymilvus import DataType

    notes: list[str] = []
    fields = described["fields"]
    primary = next(f for f in fields if f.get("is_primary"))
    id_field = str(primary["name"])
    if primary["type"] == DataType.INT64:
        id_kind = IdKind.INT
    elif primary["type"] == DataType.VARCHAR:
        id_kind = IdKind.STRING
    else:
        raise PreconditionError(f"collection {name}'s primary key is {primary['type']}")
    dense = {
        f["name"]: f
        for f in fields
        if f["type"] in (DataType.FLOAT_VECTOR, DataType.FLOAT16_VECTOR)
    }
    others = [
        f["name"]
        for f in fields
        if f["type"]
        in (DataType.BINARY_VECTOR, DataType.SPARSE_FLOAT_VECTOR, DataType.BFLOAT16_VECTOR)
    ]
    if ref.vector_fields is not None:
        missing = [n for n in ref.vector_fields if n not in dense]
        if missing:
            raise PreconditionError(
                f"collection {name} has no dense vector fields {missing}; it has {sorted(dense)}"
            )
        wanted = list(ref.vector_fields)
    else:
        if others:
            raise PreconditionError(
                f"collection {name} has vector fields {others} vecmigrate does not carry: list "
                "the dense ones to carry in vector_fields"
            )
        wanted = list(dense)
    if not wanted:
        raise PreconditionError(f"collection {name} has no dense float vector field")
    metrics: dict[str, str] = {}
    scalar_indexed: set[str] = set()
    for index_name in client.list_indexes(name):
        found = client.describe_index(name, index_name) or {}
        field = str(found.get("field_name", index_name))
        if field in dense:
            metrics[field] = _METRIC_OF.get(str(found.get("metric_type")), "l2")
        else:
            scalar_indexed.add(field)
    vectors = tuple(
        VectorField(
            name=n,
            dimension=int(dense[n]["params"]["dim"]),
            dtype="float16" if dense[n]["type"] == DataType.FLOAT16_VECTOR else "float32",
            metric=metrics.get(n),
        )
        for n in wanted
    )
    kinds = {
        DataType.BOOL: FieldKind.BOOL,
        DataType.INT8: FieldKind.INT,
        DataType.INT16: FieldKind.INT,
        DataType.INT32: FieldKind.INT,
        DataType.INT64: FieldKind.INT,
        DataType.FLOAT: FieldKind.FLOAT,
        DataType.DOUBLE: FieldKind.FLOAT,
        DataType.VARCHAR: FieldKind.TEXT,
        DataType.JSON: FieldKind.JSON,
        DataType.ARRAY: FieldKind.JSON,
    }
    payload = []
    nulls: dict[str, str] = {}
    for f in fields:
        if f["name"] == id_field or f["name"] in dense or f["name"] in others:
            continue
        if f["type"] not in kinds:
            raise PreconditionError(
                f"field {f['name']} of {name} is {f['type']}, which vecmigrate does not carry"
            )
        kind = kinds[f["type"]]
        if kind == FieldKind.INT and f.get("description") == TIMESTAMP_NOTE:
            kind = FieldKind.TIMESTAMP
        nullable = bool(f.get("nullable", False))
        if nullable:
            nulls[f["name"]] = "native"
        native = str(f["type"]).split(".")[-1]
        if f["type"] == DataType.VARCHAR:
            native += f"({f['params'].get('max_length')})"
        payload.append(
            PayloadField(
                name=f["name"],
                kind=kind,
                native=native,
                nullable=nullable,
                indexed=f["name"] in scalar_indexed,
            )
        )
    extra = None
    if described.get("enable_dynamic_field"):
        taken = {id_field, *wanted, *(p.name for p in payload)}
        extra = "_extra"
        while extra in taken:
            extra = "_" + extra
        notes.append(f"the dynamic field's keys are kept in the extra object {extra!r}")
    schema = RecordSchema(
        id_kind=id_kind,
        id_name=id_field,
        vectors=vectors,
        payload=tuple(payload),
        extra=extra,
    )
    return schema, id_field, nulls, notes
