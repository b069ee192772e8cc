"""Creating a collection's first version: load records, build its index, route reads to it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from vecmigrate.catalog.catalog import Catalog
from vecmigrate.catalog.documents import Documents
from vecmigrate.config import resolve_store
from vecmigrate.errors import DataError, PreconditionError
from vecmigrate.indexes.build import (
    artifact_dir,
    build_native,
    build_shard,
    register_index,
    register_version,
)
from vecmigrate.model.routing import RoutingView
from vecmigrate.model.spec import VersionSpec, is_native
from vecmigrate.records.sharding import hash_key, hash_shards
from vecmigrate.records.vectors import Ids, Vectors, check_texts, check_vectors
from vecmigrate.stores import Scope, open_store

# Called with (records done, records in all) during loading and building.
SeedProgress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class SeedResult:
    """What seeding made."""

    count: int
    index_id: str
    routing: RoutingView


def seed_collection(
    catalog: Catalog,
    tenant: str,
    collection: str,
    version: VersionSpec,
    ids: Ids,
    vectors: Vectors,
    *,
    shards: int = 4,
    batch_size: int = 10_000,
    actor: str = "seed",
    on_progress: SeedProgress | None = None,
    texts: Sequence[str] | None = None,
) -> SeedResult:
    """Load ``vectors`` as ``version`` of a new collection, index it and route reads to it.

    ``texts`` (one per record) are kept as the records' source texts, which a later migration
    to another embedding model re-embeds.

    Raises:
        PreconditionError: the collection already serves another version.
        DataError: a vector has the wrong dimension or is not finite (nothing is written).
    """
    routing = catalog.get_routing(tenant, collection)
    if routing is not None and routing.read_version != version.name:
        raise PreconditionError(
            f"{tenant}/{collection} already serves {routing.read_version!r}; "
            "seed a new collection name or migrate it instead"
        )
    # The version as it is recorded: its store reference's locations made absolute.
    version = version.model_copy(update={"store": resolve_store(version.store)})
    store = open_store(
        version.store, Scope(tenant, collection, version.name), version.embedding.dimension
    )
    # Validate everything before the first write, so bad input leaves nothing behind.
    ids, vectors = check_vectors(ids, vectors, version.embedding.dimension, store.scope)
    if texts is not None:
        texts = check_texts(texts)
        if len(texts) != len(ids):
            raise DataError(f"{len(ids)} records but {len(texts)} texts; pass one text per record")
    register_version(catalog, tenant, collection, version, "serving")
    n = int(ids.shape[0])
    documents = Documents(catalog)
    # Loaded in shard-key order: stores keep records clustered by it, and inserts in that order
    # append instead of splitting pages all over the table (4x faster at 200,000 x 128).
    order = np.argsort(hash_key(ids), kind="stable")
    for start in range(0, n, batch_size):
        stop = min(n, start + batch_size)
        rows = order[start:stop]
        store.upsert(ids[rows], vectors[rows])
        if texts is not None:
            documents.put(tenant, collection, ids[rows], [texts[i] for i in rows])
        if on_progress:
            on_progress("load", stop, n)
    directory = artifact_dir(version.store, tenant, collection, version.name)
    artifacts = []
    if is_native(version.index):
        artifacts.append(build_native(store, version))
        if on_progress:
            on_progress("index", n, n)
    else:
        done = 0
        for shard in hash_shards(shards):
            ref = build_shard(store, version, shard, directory)
            artifacts.append(ref)
            done += ref.count
            if on_progress:
                on_progress("index", done, n)
    record = register_index(catalog, tenant, collection, version, artifacts, None)
    view = catalog.init_routing(tenant, collection, version.name, record.id, actor)
    catalog.append(
        tenant=tenant,
        collection=collection,
        kind="collection.seeded",
        actor=actor,
        data={
            "version": version.name,
            "records": n,
            "embedding": version.embedding.model_dump(mode="json"),
            "index": record.id,
            "index_checksum": record.checksum,
        },
        event_key=f"seed:{tenant}/{collection}@{version.name}",
    )
    return SeedResult(count=n, index_id=record.id, routing=view)


def sequential_ids(n: int, start: int = 1) -> Ids:
    """Ids ``start .. start + n - 1``."""
    return np.arange(start, start + n, dtype=np.int64)
