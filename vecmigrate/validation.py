"""Checks that decide whether a new version may serve: figures, thresholds, verdicts.

Pure numpy/FAISS over the stores and index artifacts; no Temporal. Queries are sampled from the
source data; each query's own record is removed from every result list, so recall measures how
well an index finds a record's neighbours, not how well it finds the record itself.
"""

from __future__ import annotations

import time

import numpy as np
import numpy.typing as npt

from vecmigrate.build import load_index_version
from vecmigrate.catalog import Catalog
from vecmigrate.indexes import Ids, ShardedIndex, Vectors
from vecmigrate.lifecycle import GateReport, GateVerdict
from vecmigrate.spec import MigrationSpec
from vecmigrate.stores import BuiltinStore
from vecmigrate.tasks import ShardRef
from vecmigrate.transforms import make_transform


def exclude_self(i: Ids, query_ids: Ids, k: int) -> Ids:
    """Each row's first k ids other than the query's own id."""
    out = np.full((i.shape[0], k), -1, np.int64)
    for row in range(i.shape[0]):
        kept = [x for x in i[row].tolist() if x != query_ids[row] and x >= 0][:k]
        out[row, : len(kept)] = kept
    return out


def recall_at_k(approx: Ids, exact: Ids) -> float:
    """Mean over queries of |approx ∩ exact| / |exact| (ignoring -1 padding)."""
    scores = []
    for a, e in zip(approx, exact, strict=True):
        truth = {x for x in e.tolist() if x >= 0}
        if truth:
            scores.append(len(truth & set(a.tolist())) / len(truth))
    return float(np.mean(scores)) if scores else 0.0


def timed_search(
    index: ShardedIndex, queries: Vectors, k: int
) -> tuple[Ids, npt.NDArray[np.float64]]:
    """Search one query at a time (as traffic arrives) and time each in milliseconds."""
    ids = np.full((queries.shape[0], k), -1, np.int64)
    millis = np.zeros(queries.shape[0])
    for row in range(queries.shape[0]):
        t = time.perf_counter()
        _, found = index.search(queries[row : row + 1], k)
        millis[row] = (time.perf_counter() - t) * 1000
        ids[row] = found[0]
    return ids, millis


def count_parity(source: dict[int, int], target: dict[int, int]) -> GateVerdict:
    """Every shard holds as many records in the target as in the source."""
    diff = {s: (source.get(s, 0), target.get(s, 0)) for s in source if source[s] != target.get(s)}
    detail = ", ".join(f"shard {s}: {a} vs {b}" for s, (a, b) in sorted(diff.items()))
    return GateVerdict(
        name="count_parity",
        value=float(len(diff)),
        threshold=0.0,
        comparison="==",
        passed=not diff,
        detail=f"shards differing: {detail}" if diff else f"{sum(target.values())} records",
    )


def validate_migration(
    catalog: Catalog,
    spec: MigrationSpec,
    source: BuiltinStore,
    target: BuiltinStore,
    shards: list[ShardRef],
    source_index: str | None,
    target_index: str,
) -> GateReport:
    """Run every gate of ``spec.gates`` and return the report (it never raises on a failure)."""
    g = spec.gates
    verdicts: list[GateVerdict] = []
    src_counts = {s.index: source.count(s) for s in shards}
    dst_counts = {s.index: target.count(s) for s in shards}
    if g.require_count_parity:
        verdicts.append(count_parity(src_counts, dst_counts))
    transform_name, transform = make_transform(spec.source.embedding, spec.target.embedding)
    if transform_name == "identity":
        bad = [s.index for s in shards if source.checksum(s) != target.checksum(s)]
        verdicts.append(
            GateVerdict(
                name="checksum_parity",
                value=float(len(bad)),
                threshold=0.0,
                comparison="==",
                passed=not bad,
                detail=f"shards with differing ids or vectors: {bad}" if bad else "ids and bytes",
            )
        )

    qids, queries = source.sample(g.sample_queries, seed=g.seed)
    k = g.k
    report = GateReport(
        passed=False,
        verdicts=[],
        k=k,
        queries=int(qids.shape[0]),
        source_counts=src_counts,
        target_counts=dst_counts,
    )
    if qids.shape[0] == 0:
        verdicts.append(
            GateVerdict(name="recall", passed=False, detail="the source holds no records")
        )
        return report.model_copy(update={"verdicts": verdicts})

    src_metric = str(spec.source.embedding.metric)
    dst_metric = str(spec.target.embedding.metric)
    target_queries = transform(queries)
    _, i = source.search(queries, k + 1, metric=src_metric)
    src_truth = exclude_self(i, qids, k)
    _, i = target.search(target_queries, k + 1, metric=dst_metric)
    dst_truth = exclude_self(i, qids, k)

    new_index = load_index_version(catalog.get_index(target_index))
    found, new_ms = timed_search(new_index, target_queries, k + 1)
    target_recall = recall_at_k(exclude_self(found, qids, k), dst_truth)
    source_recall: float | None = None
    old_ms: npt.NDArray[np.float64] | None = None
    if source_index is not None:
        old_index = load_index_version(catalog.get_index(source_index))
        found, old_ms = timed_search(old_index, queries, k + 1)
        source_recall = recall_at_k(exclude_self(found, qids, k), src_truth)

    verdicts.append(
        GateVerdict(
            name=f"recall@{k}",
            value=round(target_recall, 4),
            threshold=g.min_recall,
            passed=target_recall >= g.min_recall,
            detail=f"new index vs exact search on {qids.shape[0]} sampled queries",
        )
    )
    if g.max_recall_drop is not None and source_recall is not None:
        floor = round(source_recall - g.max_recall_drop, 4)
        verdicts.append(
            GateVerdict(
                name=f"recall@{k}_vs_old",
                value=round(target_recall, 4),
                threshold=floor,
                passed=target_recall >= floor,
                detail=f"old index recall@{k} is {source_recall:.4f}",
            )
        )
    latency = [
        GateVerdict(
            name="p50_ms_new",
            value=round(float(np.percentile(new_ms, 50)), 3),
            comparison="info",
            passed=True,
            detail="latency is reported, not gated, in this release",
        ),
        GateVerdict(
            name="p99_ms_new",
            value=round(float(np.percentile(new_ms, 99)), 3),
            comparison="info",
            passed=True,
        ),
    ]
    if old_ms is not None:
        latency += [
            GateVerdict(
                name="p50_ms_old",
                value=round(float(np.percentile(old_ms, 50)), 3),
                comparison="info",
                passed=True,
            ),
            GateVerdict(
                name="p99_ms_old",
                value=round(float(np.percentile(old_ms, 99)), 3),
                comparison="info",
                passed=True,
            ),
        ]
    verdicts += latency
    return report.model_copy(
        update={
            "verdicts": verdicts,
            "passed": all(v.passed for v in verdicts),
            "source_recall": None if source_recall is None else round(source_recall, 4),
            "target_recall": round(target_recall, 4),
        }
    )
