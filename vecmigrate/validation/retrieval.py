"""Retrieval quality and speed: recall against exact search, old-vs-new agreement, latency."""

from __future__ import annotations

import time

import numpy as np
import numpy.typing as npt

from vecmigrate.indexes.build import Searcher
from vecmigrate.records.vectors import Ids, Vectors


def exclude_self(i: Ids, query_ids: Ids | None, k: int) -> Ids:
    """Each row's first k ids other than the query's own id (none excluded without ids)."""
    out = np.full((i.shape[0], k), -1, np.int64)
    for row in range(i.shape[0]):
        own = None if query_ids is None else int(query_ids[row])
        kept = [x for x in i[row].tolist() if x != own and x != -1][:k]
        out[row, : len(kept)] = kept
    return out


def recall_scores(approx: Ids, exact: Ids) -> npt.NDArray[np.float64]:
    """Each query's |approx ∩ exact| / |exact| (ignoring -1 padding); NaN for a query whose
    exact answer is empty (it measures nothing)."""
    out = np.full(approx.shape[0], np.nan)
    for row, (a, e) in enumerate(zip(approx, exact, strict=True)):
        truth = {x for x in e.tolist() if x != -1}
        if truth:
            out[row] = len(truth & set(a.tolist())) / len(truth)
    return out


def recall_at_k(approx: Ids, exact: Ids) -> float:
    """Mean over queries of |approx ∩ exact| / |exact| (ignoring -1 padding)."""
    scores = recall_scores(approx, exact)
    scores = scores[~np.isnan(scores)]
    return float(scores.mean()) if len(scores) else 0.0


def overlap_at_k(old: Ids, new: Ids) -> float:
    """Mean share of the old top-k that the new top-k also returns."""
    return recall_at_k(new, old)


def rank_correlation(old: Ids, new: Ids) -> float | None:
    """Mean Spearman correlation of the ranks of the ids both lists share (>= 2 of them)."""
    rhos = []
    for a, b in zip(old, new, strict=True):
        pos_b = {x: r for r, x in enumerate(b.tolist()) if x != -1}
        common = [(r, pos_b[x]) for r, x in enumerate(a.tolist()) if x != -1 and x in pos_b]
        if len(common) < 2:
            continue
        ra = np.argsort(np.argsort([c[0] for c in common]))
        rb = np.argsort(np.argsort([c[1] for c in common]))
        n = len(common)
        rhos.append(1.0 - 6.0 * float(((ra - rb) ** 2).sum()) / (n * (n * n - 1)))
    return float(np.mean(rhos)) if rhos else None


def timed_search(
    index: Searcher, queries: Vectors, k: int, timed: int | None = None
) -> tuple[Ids, npt.NDArray[np.float64]]:
    """Every query's k nearest ids from one batch search, and the milliseconds of ``timed``
    of them (evenly spaced; all when None) searched again one at a time, as traffic arrives.

    Recall wants many queries and latency a fair sample: timing each of 1,000 queries singly
    through both indexes took 0.8 s of a 200,000-vector gate suite of 4.2 s; the batch gives
    the same answers.
    """
    n = queries.shape[0]
    _, ids = index.search(queries, k)
    count = n if timed is None else min(n, timed)
    rows = np.unique(np.linspace(0, n - 1, count).round().astype(np.int64))
    millis = np.zeros(len(rows))
    for j, row in enumerate(rows):
        t = time.perf_counter()
        index.search(queries[row : row + 1], k)
        millis[j] = (time.perf_counter() - t) * 1000
    return ids, millis


# Times each query is searched on each side for the latency figures; the fastest is kept.
LATENCY_REPEATS = 2


def paired_latency(
    sides: list[tuple[Searcher, Vectors]],
    k: int,
    timed: int | None = None,
    repeats: int = LATENCY_REPEATS,
) -> list[npt.NDArray[np.float64]]:
    """The milliseconds of ``timed`` queries (evenly spaced; all when None) searched one at a
    time on each side, row ``j`` of every side the same query.

    Each side first answers one query untimed (a first search pays for loading and
    allocating, not for the index). The sides then take turns query by query (and turns at
    going first), so a burst of load on the machine falls on both alike, and the whole pass
    runs ``repeats`` times, each query keeping its fastest time: a preemption by the
    scheduler rarely strikes the same query twice, while a query the index finds hard is slow
    every time, so the tail still measures the index. (On a busy 2-core machine one stalled
    query of 50 made a p99 of 6 ms against 0.16 ms.)
    """
    n = sides[0][1].shape[0] if sides else 0
    count = n if timed is None else min(n, timed)
    rows = np.unique(np.linspace(0, max(n - 1, 0), count).round().astype(np.int64))
    millis = [np.full(len(rows), np.inf) for _ in sides]
    if not len(rows):
        return [m[:0] for m in millis]
    for index, queries in sides:
        index.search(queries[rows[0] : rows[0] + 1], k)
    for _ in range(max(1, repeats)):
        for j, row in enumerate(rows):
            order = range(len(sides)) if j % 2 == 0 else reversed(range(len(sides)))
            for side in order:
                index, queries = sides[side]
                t = time.perf_counter()
                index.search(queries[row : row + 1], k)
                millis[side][j] = min(millis[side][j], (time.perf_counter() - t) * 1000)
    return millis
