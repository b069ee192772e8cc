"""Retrieval quality and speed: recall against exact search, old-vs-new agreement, latency."""

from __future__ import annotations

import time

import numpy as np
import numpy.typing as npt

from vecmigrate.indexes.build import Searcher
from vecmigrate.records.vectors import Ids, Vectors


def exclude_self(i: Ids, query_ids: Ids | None, k: int) -> Ids:
    """Each row's first k ids other than the query's own id (none excluded without ids)."""
    i = np.asarray(i, np.int64)
    out = np.full((i.shape[0], k), -1, np.int64)
    keep = i != -1
    if query_ids is not None:
        keep &= i != np.asarray(query_ids, np.int64)[:, None]
    # Each kept id's place in its row: the kept ids move left, in their order.
    place = np.cumsum(keep, axis=1) - 1
    rows, cols = np.nonzero(keep & (place < k))
    out[rows, place[rows, cols]] = i[rows, cols]
    return out


# Cells compared at once by the vectorised scores (a chunk of rows holds rows x width x width
# booleans): bounded memory whatever the number of queries and k.
_CELLS = 1 << 22


def _row_chunks(rows: int, width: int) -> list[slice]:
    step = max(1, _CELLS // max(1, width * width))
    return [slice(lo, lo + step) for lo in range(0, rows, step)]


def _first_seen(ids: Ids) -> npt.NDArray[np.bool_]:
    """Where each row's ids appear for the first time in that row (and are not -1 padding)."""
    width = ids.shape[1]
    before = np.tri(width, width, -1, dtype=bool)  # [j, j2]: j2 comes before j
    again = ((ids[:, :, None] == ids[:, None, :]) & before[None]).any(axis=2)
    first: npt.NDArray[np.bool_] = (ids != -1) & ~again
    return first


def recall_scores(approx: Ids, exact: Ids) -> npt.NDArray[np.float64]:
    """Each query's |approx ∩ exact| / |exact| (ignoring -1 padding); NaN for a query whose
    exact answer is empty (it measures nothing)."""
    approx, exact = np.asarray(approx), np.asarray(exact)
    if approx.shape[0] != exact.shape[0]:
        raise ValueError(f"{approx.shape[0]} answers against {exact.shape[0]} exact answers")
    out = np.full(exact.shape[0], np.nan)
    if exact.ndim != 2 or approx.ndim != 2 or not exact.size:
        return out
    for part in _row_chunks(exact.shape[0], max(exact.shape[1], approx.shape[1])):
        e, a = exact[part], approx[part]
        truth = _first_seen(e)  # each exact id once, as the set of them counts it
        found = (e[:, :, None] == a[:, None, :]).any(axis=2) & truth
        size = truth.sum(axis=1)
        scores = np.full(e.shape[0], np.nan)
        np.divide(found.sum(axis=1), size, out=scores, where=size > 0)
        out[part] = scores
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
    old, new = np.asarray(old), np.asarray(new)
    if old.shape[0] != new.shape[0]:
        raise ValueError(f"{old.shape[0]} old answers against {new.shape[0]} new ones")
    rhos = np.full(old.shape[0], np.nan)
    if old.ndim == 2 and new.ndim == 2 and old.size and new.size:
        for part in _row_chunks(old.shape[0], max(old.shape[1], new.shape[1])):
            rhos[part] = _spearman_rows(old[part], new[part])
    kept = rhos[~np.isnan(rhos)]
    return float(np.mean(kept)) if len(kept) else None


def _spearman_rows(a: Ids, b: Ids) -> npt.NDArray[np.float64]:
    """Each row's Spearman correlation of the shared ids' ranks (NaN under two shared)."""
    out = np.full(a.shape[0], np.nan)
    # A row that repeats an id (no index answer does) is ranked one by one, as it always was.
    plain = _first_seen(a).sum(axis=1) == (a != -1).sum(axis=1)
    plain &= _first_seen(b).sum(axis=1) == (b != -1).sum(axis=1)
    for row in np.flatnonzero(~plain):
        out[row] = _spearman_row(a[row], b[row])
    a, b, rows = a[plain], b[plain], np.flatnonzero(plain)
    same = (a[:, :, None] == b[:, None, :]) & (a != -1)[:, :, None]
    shared = same.any(axis=2)  # a's ids that b returns too
    where_b = same.argmax(axis=2)  # their place in b
    count = shared.sum(axis=1)
    # Ranks among the shared ids: in a's order, and in b's (places in b are distinct).
    rank_a = np.cumsum(shared, axis=1) - 1
    rank_b = ((where_b[:, None, :] < where_b[:, :, None]) & shared[:, None, :]).sum(axis=2)
    d2 = np.where(shared, (rank_a - rank_b) ** 2, 0).sum(axis=1)
    enough = count >= 2
    n = count[enough]
    out[rows[enough]] = 1.0 - 6.0 * d2[enough].astype(np.float64) / (n * (n * n - 1))
    return out


def _spearman_row(a: Ids, b: Ids) -> float:
    pos_b = {x: r for r, x in enumerate(b.tolist()) if x != -1}
    common = [(r, pos_b[x]) for r, x in enumerate(a.tolist()) if x != -1 and x in pos_b]
    if len(common) < 2:
        return float("nan")
    ra = np.argsort(np.argsort([c[0] for c in common]))
    rb = np.argsort(np.argsort([c[1] for c in common]))
    n = len(common)
    return 1.0 - 6.0 * float(((ra - rb) ** 2).sum()) / (n * (n * n - 1))


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


# Times each query in a side's tail is searched on each side for the latency figures; the
# fastest is kept.
LATENCY_REPEATS = 2

# The tail a later pass times again: each side's queries at or above this quantile of its
# times so far, and at least its slowest ``TAIL_MIN`` (with few timed queries the p99's
# interval and its bootstrap reach further down than the slowest tenth).
TAIL_FROM = 0.9
TAIL_MIN = 20


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
    going first), so a burst of load on the machine falls on both alike. The queries in the
    tail of some side's times are then timed again, up to ``repeats`` times in all, each
    keeping its fastest time: a preemption by the scheduler rarely strikes the same query
    twice, while a query the index finds hard is slow every time, so the tail still measures
    the index. (On a busy 2-core machine one stalled query of 50 made a p99 of 6 ms against
    0.16 ms.)

    Only the tail is timed again, until every query in it has been (a query a stall pushed into
    it is timed again; one that drops out of it lets the next in, which is timed again in
    turn): every other query's time is below every tail time, so the tail's order statistics
    (the p99, its interval, the bootstrap of the p99 ratio) are those timing every query again
    would give, for about a tenth of the searches. A stall does not move the median by more
    than a rank, so the p50 keeps a query's first time unless it was in the tail.
    """
    n = sides[0][1].shape[0] if sides else 0
    count = n if timed is None else min(n, timed)
    rows = np.unique(np.linspace(0, max(n - 1, 0), count).round().astype(np.int64))
    millis = [np.full(len(rows), np.inf) for _ in sides]
    if not len(rows):
        return [m[:0] for m in millis]
    for index, queries in sides:
        index.search(queries[rows[0] : rows[0] + 1], k)

    def time_rows(which: Ids) -> None:
        for j in which.tolist():
            row = rows[j]
            order = range(len(sides)) if j % 2 == 0 else reversed(range(len(sides)))
            for side in order:
                index, queries = sides[side]
                t = time.perf_counter()
                index.search(queries[row : row + 1], k)
                millis[side][j] = min(millis[side][j], (time.perf_counter() - t) * 1000)

    time_rows(np.arange(len(rows)))
    passes = np.ones(len(rows), np.int64)
    for attempt in range(2, max(1, repeats) + 1):
        while len(todo := np.flatnonzero(tail(millis) & (passes < attempt))):
            time_rows(todo)
            passes[todo] += 1
    return millis


def tail(millis: list[npt.NDArray[np.float64]]) -> npt.NDArray[np.bool_]:
    """The rows in the tail of some side's times: at or above its ``TAIL_FROM`` quantile, or
    among its ``TAIL_MIN`` slowest."""
    if not millis or not len(millis[0]):
        return np.zeros(0, bool)
    out = np.zeros(len(millis[0]), bool)
    for m in millis:
        nth = np.sort(m)[-min(len(m), TAIL_MIN)]
        out |= m >= min(float(np.quantile(m, TAIL_FROM)), float(nth))
    return out
