"""Building a version's index shard by shard, and registering the result as an index version."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from vecmigrate.catalog import Catalog, IndexVersionRecord
from vecmigrate.config import resolve_store
from vecmigrate.indexes import (
    LoadedIndex,
    ShardedIndex,
    build_index,
    build_key,
    find_artifact,
    write_artifact,
)
from vecmigrate.spec import BuiltinStoreRef, IndexSpec, Metric, VersionSpec
from vecmigrate.stores import BuiltinStore
from vecmigrate.stores.base import RecordChecksum
from vecmigrate.tasks import ArtifactRef, ShardRef

# Called while building with (vectors added, vectors in the shard).
BuildProgress = Callable[[int, int], None]


def artifact_dir(store: BuiltinStoreRef, tenant: str, collection: str, version: str) -> Path:
    """Where a version's index artifacts live."""
    resolved = resolve_store(store)
    assert resolved.artifacts is not None
    return Path(resolved.artifacts) / tenant / collection / version


def build_shard(
    store: BuiltinStore,
    version: VersionSpec,
    shard: ShardRef,
    directory: Path,
    *,
    read_batch: int = 50_000,
    threads: int = 0,
    on_progress: BuildProgress | None = None,
) -> ArtifactRef:
    """Build (or reuse) the index of one shard of ``store``.

    The artifact is keyed by the index parameters and the checksum of the shard's data, so a
    retry after a crash finds a finished artifact and reuses it, and a half-written one (no
    manifest, or a file that fails its checksum) is rebuilt.
    """
    began = time.monotonic()
    id_parts, vec_parts = [], []
    acc = RecordChecksum()
    for batch in store.iter_shard(shard, read_batch):
        id_parts.append(batch.ids)
        vec_parts.append(batch.vectors)
        acc.add(batch.ids, batch.vectors)
    dim = store.dimension
    ids = np.concatenate(id_parts) if id_parts else np.empty(0, np.int64)
    vecs = np.concatenate(vec_parts) if vec_parts else np.empty((0, dim), np.float32)
    metric = Metric(version.embedding.metric)
    key = build_key(version.index, metric, dim, acc.hexdigest())
    stem = f"shard-{shard.index:04d}"
    found = find_artifact(directory, stem, key)
    if found is None:
        index = build_index(
            version.index, metric, ids, vecs, threads=threads, on_progress=on_progress
        )
        found = write_artifact(index, version.index, metric, dim, directory, stem, key, len(ids))
    return ArtifactRef(
        shard=shard.index,
        uri=str(found.manifest),
        sha256=found.sha256,
        count=found.count,
        kind=found.kind,
        reused=found.reused,
        seconds=time.monotonic() - began,
    )


def index_version_id(
    tenant: str, collection: str, version: str, spec: IndexSpec, artifacts: list[ArtifactRef]
) -> str:
    """A stable id for the set of artifacts that make one index version."""
    digest = hashlib.sha256(
        "|".join(f"{a.shard}:{a.sha256}" for a in sorted(artifacts, key=lambda a: a.shard)).encode()
    ).hexdigest()
    return f"{tenant}/{collection}@{version}/{spec.kind}-{digest[:12]}"


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


def load_index_version(record: IndexVersionRecord) -> ShardedIndex:
    """Load every shard artifact of an index version, verifying checksums."""
    return ShardedIndex(
        [LoadedIndex(Path(a["uri"]), expected_sha256=a["sha256"]) for a in record.artifacts]
    )
