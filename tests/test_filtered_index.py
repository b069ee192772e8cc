"""Searching an index among some of its ids (a payload filter's matches), for every index kind
vecmigrate builds: only those ids come back, as well found as the index finds anything.

Labels below zero are included: records with UUID or text ids are labelled by a 64-bit hash,
which hnswlib keeps as an unsigned number.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.index_kinds import every_artifact_kind, write_built
from vecmigrate.data.datasets import clustered
from vecmigrate.indexes.artifacts import LoadedIndex, ShardedIndex, build_key
from vecmigrate.model.spec import FaissFlat, FaissHnsw, IndexSpec, Metric
from vecmigrate.records.vectors import ExactKnn

SPECS: list[IndexSpec] = [
    *every_artifact_kind(nlist=16, nprobe=8, pq_m=8, pq_nbits=6),
    FaissFlat(encoding="int8"),
]
FLOORS = {"faiss_flat": 0.95, "faiss_ivf_flat": 0.9, "faiss_ivf_pq": 0.6}


def loaded(
    spec: IndexSpec, metric: Metric, ids: np.ndarray, x: np.ndarray, at: Path
) -> LoadedIndex:
    key = build_key(spec, metric, x.shape[1], f"{at.name}")
    return LoadedIndex(write_built(spec, metric, ids, x, at, "shard", key).manifest)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.kind}-{getattr(s, 'encoding', '')}")
@pytest.mark.parametrize("metric", [Metric.L2, Metric.COSINE])
def test_a_search_among_some_ids_answers_from_those_only(
    spec: IndexSpec, metric: Metric, tmp_path: Path
) -> None:
    rng = np.random.default_rng(3)
    x = clustered(4000, 16, clusters=16, seed=3)
    ids = rng.choice(np.arange(-(2**62), 2**62, 2**44), 4000, replace=False).astype(np.int64)
    allowed = np.sort(ids[rng.random(4000) < 0.3])
    queries = x[rng.choice(4000, 40, replace=False)] + 0.01
    index = loaded(spec, metric, ids, x, tmp_path)
    _, found = index.search(queries, 10, allowed)
    assert np.isin(found, allowed).all()  # ten answers each, all among the allowed
    knn = ExactKnn(queries, 10, metric)
    kept = np.isin(ids, allowed)
    knn.add(ids[kept], x[kept])
    truth = knn.result()[1]
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth, strict=True)])
    assert recall >= FLOORS.get(spec.kind, 0.9), recall
    if spec == FaissFlat():
        assert (np.sort(found, axis=1) == np.sort(truth, axis=1)).all()
    # Nothing allowed: nothing found; without a list, the index as before.
    _, none = index.search(queries, 10, np.empty(0, np.int64))
    assert (none == -1).all()
    assert not np.isin(index.search(queries, 10)[1], allowed).all()


def test_shards_each_search_among_the_same_ids(tmp_path: Path) -> None:
    x = clustered(3000, 8, clusters=8, seed=4)
    ids = np.arange(3000, dtype=np.int64) - 1500
    parts = [
        loaded(FaissHnsw(m=8), Metric.L2, ids[s::3], x[s::3], tmp_path / str(s)) for s in range(3)
    ]
    allowed = np.sort(ids[ids % 5 == 0])
    _, found = ShardedIndex(parts).search(x[:20], 5, allowed)
    assert np.isin(found, allowed).all()
    # A query at an allowed record finds that record first, whichever shard holds it.
    at_allowed = np.flatnonzero(ids[:20] % 5 == 0)
    assert found[at_allowed, 0].tolist() == ids[at_allowed].tolist()
