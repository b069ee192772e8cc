"""Building a version's index shard by shard, and registering the result as an index version."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np
from pydantic import TypeAdapter

from vecmigrate.catalog.catalog import Catalog, IndexVersionRecord, VersionRecord
from vecmigrate.config import resolve_store
from vecmigrate.errors import NotFoundError, PreconditionError
from vecmigrate.indexes.artifacts import (
    LoadedIndex,
    ShardedIndex,
    build_index,
    build_key,
    find_artifact,
    write_artifact,
)
from vecmigrate.model.records import Filter
from vecmigrate.model.spec import (
    AnyStoreRef,
    IndexSpec,
    Metric,
    VersionSpec,
    is_native,
    store_ref,
)
from vecmigrate.model.status import IndexBuildProgress
from vecmigrate.model.tasks import ArtifactRef, ShardRef
from vecmigrate.records.checksums import RecordChecksum
from vecmigrate.records.vectors import Distances, Ids, Vectors, grown_rows, normalize_rows
from vecmigrate.security.keyring import environment_keyring
from vecmigrate.stores import (
    MilvusStore,
    PgvectorStore,
    QdrantStore,
    Scope,
    VectorStore,
    open_store,
)
from vecmigrate.telemetry.resources import PeakMemory

# Called while building with (vectors added, vectors in the shard).
BuildProgress = Callable[[int, int], None]


def artifact_dir(store: AnyStoreRef, tenant: str, collection: str, version: str) -> Path:
    """Where a version's index artifacts live."""
    resolved = resolve_store(store)
    assert resolved.artifacts is not None
    return Path(resolved.artifacts) / tenant / collection / version


# What the build's read of a shard keeps in flight per batch: the driver's rows (a tuple, two ints
# and a bytes object per record, ~170 bytes beside the vector's) and the batch's arrays, twice
# over (the read ahead fetches the next batch while this one is copied). In batches of 50,000 a
# shard of 250,000 x 128 (1M vectors in 4 shards) peaked at 1.79 times its vectors' bytes in
# resident memory, and each batch's freed rows stayed in the heap, so the process grew by about
# a batch's rows with every shard it built; in batches of 8 MiB (12,300 records at 128 dimensions)
# it peaks at about 1.15 times for the same CPU (0.46 s against 0.51; batches of 2,048 took
# 0.72 s).
READ_BATCH_BYTES = 8 << 20
_ROW_OVERHEAD = 170


def read_batch_rows(dimension: int) -> int:
    """Records per batch of a shard's read for an index build: about :data:`READ_BATCH_BYTES`
    of rows (float32 vectors of ``dimension`` and the driver's objects), 1,024 at least."""
    return max(1_024, READ_BATCH_BYTES // (4 * dimension + _ROW_OVERHEAD))


def build_shard(
    store: VectorStore,
    version: VersionSpec,
    shard: ShardRef,
    directory: Path,
    *,
    read_batch: int | None = None,
    threads: int = 0,
    on_progress: BuildProgress | None = None,
    chunk: int = 20_000,
) -> ArtifactRef:
    """Build (or reuse) the index of one shard of ``store``, adding ``chunk`` vectors at a
    time (``on_progress`` is called after each). The shard is read ``read_batch`` records at a
    time (by default :func:`read_batch_rows` of the store's dimension).

    The artifact is keyed by the index parameters and the checksum of the shard's data, so a
    retry after a crash finds a finished artifact and reuses it, and a half-written one (no
    manifest, or a file that fails its checksum) is rebuilt.
    """
    began = time.monotonic()
    with PeakMemory() as memory:
        acc = RecordChecksum()
        dim = store.dimension
        ids, vecs = read_shard(store, shard, read_batch or read_batch_rows(dim), acc)
        metric = Metric(version.embedding.metric)
        key = build_key(version.index, metric, dim, acc.hexdigest())
        bytes_read = int(ids.nbytes + vecs.nbytes)
        stem = f"shard-{shard.index:04d}"
        ring = environment_keyring()
        found = find_artifact(directory, stem, key, encrypted=ring is not None)
        written = 0
        if found is None:
            if metric == Metric.COSINE:
                # The buffer is this function's own: unit-norm it where it is (the checksum
                # above was taken on the stored vectors) instead of making a normed copy.
                normalize_rows(vecs, out=vecs)
            index = build_index(
                version.index,
                metric,
                ids,
                vecs,
                threads=threads,
                on_progress=on_progress,
                chunk=chunk,
                prepared=True,
            )
            del vecs  # the index holds them now
            found = write_artifact(
                index, version.index, metric, dim, directory, stem, key, len(ids), ring
            )
            written = found.data_file.stat().st_size + found.manifest.stat().st_size
    return ArtifactRef(
        shard=shard.index,
        uri=str(found.manifest),
        sha256=found.sha256,
        count=found.count,
        kind=found.kind,
        reused=found.reused,
        seconds=time.monotonic() - began,
        bytes_read=bytes_read,
        bytes_written=written,
        peak_memory=memory.peak,
        protected_by=found.protected_by,
    )


def read_shard(
    store: VectorStore, shard: ShardRef, batch_size: int, checksum: RecordChecksum
) -> tuple[Ids, Vectors]:
    """Every record of ``shard`` in one pair of arrays, each batch's checksum folded into
    ``checksum`` as it is read.

    The arrays are allocated once, from the shard's count, and each batch is copied into them
    as it arrives: the shard's vectors are held once (and two batches beside them, this one and
    the one read ahead), not once in the batches and again in their concatenation. Records
    written while the shard is read (an online migration writes during its build) grow the
    arrays by a quarter at a time, in place; the result is a view of the rows filled.
    """
    dim = store.dimension
    size = max(store.count(shard), 0)
    ids = np.empty(size, np.int64)
    vecs = np.empty((size, dim), np.float32)
    n = 0
    for batch in store.iter_shard(shard, batch_size, read_ahead=True):
        b_ids, b_vecs = batch.ids, batch.vectors
        m = len(b_ids)
        if n + m > len(ids):
            grown = max(n + m, len(ids) + len(ids) // 4 + batch_size)
            ids, vecs = grown_rows(ids, grown), grown_rows(vecs, grown)
        ids[n : n + m] = b_ids
        vecs[n : n + m] = b_vecs
        checksum.add(b_ids, b_vecs)
        n += m
    return ids[:n], vecs[:n]


def index_version_id(
    tenant: str, collection: str, version: str, spec: IndexSpec, artifacts: list[ArtifactRef]
) -> str:
    """A stable id for the set of artifacts that make one index version."""
    digest = hashlib.sha256(
        "|".join(f"{a.shard}:{a.sha256}" for a in sorted(artifacts, key=lambda a: a.shard)).encode()
    ).hexdigest()
    return f"{tenant}/{collection}@{version}/{spec.kind}-{digest[:12]}"


def register_version(
    catalog: Catalog,
    tenant: str,
    collection: str,
    version: VersionSpec,
    state: str,
    migration_id: str | None = None,
) -> VersionRecord:
    """Record ``version`` in the catalog in ``state``, with its embedding schema and its store
    reference; an existing version is returned unchanged."""
    return catalog.register_version(
        tenant,
        collection,
        version.name,
        version.embedding,
        version.store.model_dump(mode="json"),
        state=state,
        migration_id=migration_id,
    )


def register_index(
    catalog: Catalog,
    tenant: str,
    collection: str,
    version: VersionSpec,
    artifacts: list[ArtifactRef],
    migration_id: str | None,
) -> IndexVersionRecord:
    """Record the artifacts as one index version of ``version`` (idempotent)."""
    index_id = index_version_id(tenant, collection, version.name, version.index, artifacts)
    return catalog.register_index(
        index_id,
        tenant,
        collection,
        version.name,
        version.index,
        [a.model_dump(mode="json") for a in sorted(artifacts, key=lambda a: a.shard)],
        migration_id,
    )


class Searcher(Protocol):
    """Anything that answers k-NN queries for one index version."""

    def search(self, queries: Vectors, k: int) -> tuple[Distances, Ids]:
        """k nearest neighbours: distances (smaller is closer) and ids, -1 padded."""
        ...


NativeStore = PgvectorStore | MilvusStore | QdrantStore


class NativeIndex:
    """An index the database built and searches itself."""

    def __init__(self, store: NativeStore, spec: IndexSpec, metric: Metric) -> None:
        self.store, self.spec, self.metric = store, spec, metric

    def search(self, queries: Vectors, k: int, flt: Filter | None = None) -> tuple[Distances, Ids]:
        """k nearest neighbours through the database's index (with its own filter)."""
        return self.store.search_native(queries, k, self.spec, self.metric, flt)


def build_native(
    store: VectorStore,
    version: VersionSpec,
    on_progress: Callable[[IndexBuildProgress], None] | None = None,
) -> ArtifactRef:
    """Have the target database build its own index over the whole version (idempotent).

    PostgreSQL builds without blocking writes to the table, and reports where it stands to
    ``on_progress`` every few seconds (see :meth:`PgvectorStore.create_index`).

    Raises:
        PreconditionError: the store cannot build this index kind.
    """
    began = time.monotonic()
    if not isinstance(store, NativeStore):
        raise PreconditionError(f"{store.kind} stores cannot build {version.index.kind}")
    metric = Metric(version.embedding.metric)
    if isinstance(store, PgvectorStore):
        name = store.create_index(version.index, metric, on_progress=on_progress)
    else:
        name = store.create_index(version.index, metric)
    uri = f"{store.kind}:{name}"
    return ArtifactRef(
        shard=-1,
        uri=uri,
        sha256=hashlib.sha256(uri.encode()).hexdigest(),
        count=store.count(),
        kind=version.index.kind,
        seconds=time.monotonic() - began,
    )


def load_index_version(catalog: Catalog, record: IndexVersionRecord) -> Searcher:
    """A searcher for an index version: artifacts loaded and verified, or the native index."""
    spec: IndexSpec = TypeAdapter(IndexSpec).validate_python(record.spec)
    if is_native(spec):
        version = catalog.find_version(record.tenant, record.collection, record.version)
        if version is None:
            raise NotFoundError(f"version {record.version} of index {record.id} is not registered")
        scope = Scope(record.tenant, record.collection, record.version)
        store = open_store(store_ref(version.store), scope)
        assert isinstance(store, NativeStore)
        return NativeIndex(store, spec, Metric(version.embedding.metric))
    return ShardedIndex(
        [LoadedIndex(Path(a["uri"]), expected_sha256=a["sha256"]) for a in record.artifacts]
    )
