"""The index kinds vecmigrate builds into artifact files, for the tests that go over every one:
one spec of each kind sized for a few thousand test vectors, and an artifact built and written
in one call."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vecmigrate.indexes.artifacts import Artifact, build_index, write_artifact
from vecmigrate.model.spec import (
    ARTIFACT_INDEX_KINDS,
    FaissFlat,
    FaissHnsw,
    FaissIvfFlat,
    FaissIvfPq,
    HnswlibHnsw,
    IndexSpec,
    Metric,
)


def every_artifact_kind(
    *, nlist: int, nprobe: int, pq_m: int, pq_nbits: int, ef_construction: int = 200
) -> list[IndexSpec]:
    """One spec of each artifact kind, in ``ARTIFACT_INDEX_KINDS``'s order: the IVF lists (and
    the PQ codes) as given, the HNSW graphs with 16 links and ``ef_search`` 64, hnswlib's built
    with ``ef_construction`` (200, its default, unless given)."""
    specs: list[IndexSpec] = [
        FaissFlat(),
        FaissIvfFlat(nlist=nlist, nprobe=nprobe),
        FaissIvfPq(nlist=nlist, nprobe=nprobe, m=pq_m, nbits=pq_nbits),
        FaissHnsw(m=16, ef_search=64),
        HnswlibHnsw(m=16, ef_search=64, ef_construction=ef_construction),
    ]
    # A kind added to vecmigrate is added here, and so to every test that goes over them all.
    assert tuple(spec.kind for spec in specs) == ARTIFACT_INDEX_KINDS
    return specs


def write_built(
    spec: IndexSpec,
    metric: Metric,
    ids: np.ndarray,
    x: np.ndarray,
    directory: Path,
    stem: str,
    key: str,
    *,
    threads: int = 0,
) -> Artifact:
    """Build ``spec``'s index over ``x`` labelled by ``ids`` and write it as an artifact."""
    index = build_index(spec, metric, ids, x, threads=threads)
    return write_artifact(index, spec, metric, x.shape[1], directory, stem, key, len(ids))
