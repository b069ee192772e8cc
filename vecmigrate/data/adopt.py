"""Adopting an existing table or collection as a migration's source, and shaping the target
after it.

A source store reference that names a table or collection vecmigrate did not make is read where
it is. ``prepare`` registers it in the catalog as the collection's serving version (with the
engine's own index on its primary vector, so the router can serve reads from it and the gates
can measure it) and routes reads to it; nothing is written to the table or collection itself.
The target is created with the source's record schema: the same ids, vectors (float16 kept
where nothing transforms them) and payload fields (the source's own column types where both are
the same engine), and payload indexes where the source had them.
"""

from __future__ import annotations

import hashlib
from typing import Any

from pydantic import TypeAdapter, ValidationError

from vecmigrate.catalog.catalog import Catalog
from vecmigrate.data.checks import Check
from vecmigrate.data.transforms import make_transform
from vecmigrate.indexes.build import register_index, register_version
from vecmigrate.model.records import IdKind, RecordSchema
from vecmigrate.model.spec import IndexSpec, MigrationSpec, is_native, named
from vecmigrate.model.tasks import ArtifactRef
from vecmigrate.stores import VectorStore, pgcapture
from vecmigrate.stores.pgvector import PgvectorStore


def target_schema(source: RecordSchema, spec: MigrationSpec) -> RecordSchema:
    """The record schema of the target: the source's, with the primary vector as the target's
    embedding makes it (its dimension, float32 unless it crosses unchanged) and the source's
    engine types kept only for a target of the same engine."""
    name, _ = make_transform(spec.source.embedding, spec.target.embedding)
    primary = source.primary
    unchanged = name == "identity" and not spec.model_change
    dtype = primary.dtype if unchanged else "float32"
    new_primary = primary.model_copy(
        update={
            "dimension": spec.target.embedding.dimension,
            "dtype": dtype,
            "metric": str(spec.target.embedding.metric),
        }
    )
    same_engine = spec.source.store.kind == spec.target.store.kind
    payload = tuple(
        f if same_engine else f.model_copy(update={"native": None}) for f in source.payload
    )
    return source.model_copy(
        update={"vectors": (new_primary, *source.vectors[1:]), "payload": payload}
    )


def existing_index(store: VectorStore) -> dict[str, Any] | None:
    """The engine's own index on the store's primary vector (``index`` as an index spec of ours,
    ``metric``), or None."""
    finder = getattr(store, "vector_indexes", None)
    if finder is None:
        return None
    found: dict[str, Any] | None = finder().get(store.schema.primary.name)
    return found


def adoption_checks(spec: MigrationSpec, store: VectorStore) -> list[Check]:
    """What adopting ``store`` as the source needs: the spec's source index and metric are the
    ones the engine keeps, range shards have integer ids to split, and the plan says where
    writes go."""
    checks = []
    found = existing_index(store)
    wanted = spec.source.index
    src = spec.source
    if is_native(wanted):
        ok = found is not None and _same_index(found["index"], wanted)
        checks.append(
            Check(
                "source index",
                ok,
                f"{named(src.store)} keeps {wanted.kind} on {store.schema.primary.name}"
                if ok
                else f"source.index is {wanted.model_dump(mode='json')}, but "
                f"{named(src.store)} keeps "
                f"{found['index'] if found else 'no index'} on {store.schema.primary.name}: "
                "copy the index from `vecmigrate inspect`",
            )
        )
    else:
        checks.append(
            Check(
                "source index",
                True,
                f"{named(src.store)} is searched exactly for the old side's figures "
                f"({wanted.kind} names no index of the engine's)",
            )
        )
    metric = (found or {}).get("metric") or store.schema.primary.metric
    checks.append(
        Check(
            "source metric",
            metric is None or metric == str(src.embedding.metric),
            f"{src.embedding.metric}"
            if metric is None or metric == str(src.embedding.metric)
            else f"source.embedding.metric is {src.embedding.metric} but the index of "
            f"{named(src.store)} ranks by {metric}; fix the spec",
        )
    )
    if spec.shards.by == "range" and store.schema.id_kind != IdKind.INT:
        checks.append(
            Check(
                "shard layout",
                False,
                f"range shards split integer ids; {named(src.store)} has {store.schema.id_kind} "
                "ids: use shards.by: hash",
            )
        )
    checks.append(
        Check(
            "adopted source",
            True,
            f"{named(src.store)} ({store.schema.id_kind} ids, vectors "
            f"{[v.name for v in store.schema.vectors]}, "
            f"{len(store.schema.payload)} payload fields) is read where it is, "
            + (
                "and writes through the router reach it"
                if src.store.writable
                else "never written: writes through the router to it are refused (writable: false)"
            ),
        )
    )
    if spec.captures_writes and isinstance(store, PgvectorStore):
        problem = pgcapture.install_problem(store)
        checks.append(
            Check(
                "change capture",
                problem is None,
                f"writes made to {named(src.store)} with plain SQL are captured by a trigger "
                "from before the snapshot and replayed onto the target"
                if problem is None
                else f"{problem}; or set online.capture: off (writes made with plain SQL during "
                "the migration would then not reach the target)",
            )
        )
    return checks


def _same_index(found: dict[str, Any], wanted: IndexSpec) -> bool:
    """Whether an engine's index is the one a spec describes (search-time settings aside)."""
    try:
        parsed = TypeAdapter(IndexSpec).validate_python(found)
    except ValidationError:
        return False
    build_time = {"ef_search", "probes", "nprobe", "ef"}
    mine = {k: v for k, v in wanted.model_dump().items() if k not in build_time}
    theirs = {k: v for k, v in parsed.model_dump().items() if k not in build_time}
    return mine == theirs


def adopt(catalog: Catalog, spec: MigrationSpec, store: VectorStore, operator: str) -> str | None:
    """Register an adopted source as the collection's serving version, its native index as the
    version's index, and route reads to it (each once: a retry finds them). Returns the index
    version id (None where the engine keeps no index the spec names)."""
    tenant, collection, version = spec.tenant, spec.collection, spec.source.name
    if catalog.find_version(tenant, collection, version) is None:
        register_version(catalog, tenant, collection, spec.source, "serving")
    index_id = None
    if is_native(spec.source.index):
        uri = f"{store.kind}:{named(spec.source.store)}:adopted"
        artifact = ArtifactRef(
            shard=-1,
            uri=uri,
            sha256=hashlib.sha256(uri.encode()).hexdigest(),
            count=store.count(),
            kind=spec.source.index.kind,
        )
        index_id = register_index(catalog, tenant, collection, spec.source, [artifact], None).id
    routing = catalog.get_routing(tenant, collection)
    if routing is None:
        catalog.init_routing(tenant, collection, version, index_id, operator)
        catalog.append(
            tenant=tenant,
            collection=collection,
            kind="collection.adopted",
            actor=operator,
            migration_id=spec.migration_id,
            data={
                "version": version,
                "store": {"kind": spec.source.store.kind, "name": named(spec.source.store)},
                "records": store.count(),
                "schema": store.schema.model_dump(mode="json"),
                "index": index_id,
            },
            event_key=f"adopt:{tenant}/{collection}@{version}",
        )
    return index_id
