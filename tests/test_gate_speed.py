"""The gate suite's cheaper computations give the figures the plain ones gave: the vectorised
recall, overlap and rank correlation the row-by-row definitions' exact values, the spectrum the
SVD's, and the latency gate's second pass, timing only the slower queries again, the tail a
full second pass gives."""

from __future__ import annotations

import threading
import time

import faiss
import numpy as np
import numpy.typing as npt
import pytest

from vecmigrate.records.vectors import Distances, Ids, Vectors
from vecmigrate.validation.distribution import spectrum, spectrum_shift
from vecmigrate.validation.intervals import quantile_interval, ratio_interval
from vecmigrate.validation.retrieval import (
    TAIL_MIN,
    exclude_self,
    paired_latency,
    rank_correlation,
    recall_scores,
    tail,
)
from vecmigrate.validation.run import _Ahead

Scores = npt.NDArray[np.float64]

# The definitions, one row at a time, as the gates computed them before they were vectorised.


def plain_exclude_self(i: Ids, query_ids: Ids | None, k: int) -> Ids:
    out = np.full((i.shape[0], k), -1, np.int64)
    for row in range(i.shape[0]):
        own = None if query_ids is None else int(query_ids[row])
        kept = [x for x in i[row].tolist() if x != own and x != -1][:k]
        out[row, : len(kept)] = kept
    return out


def plain_recall_scores(approx: Ids, exact: Ids) -> npt.NDArray[np.float64]:
    out = np.full(approx.shape[0], np.nan)
    for row, (a, e) in enumerate(zip(approx, exact, strict=True)):
        truth = {x for x in e.tolist() if x != -1}
        if truth:
            out[row] = len(truth & set(a.tolist())) / len(truth)
    return out


def plain_rank_correlation(old: Ids, new: Ids) -> float | None:
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


def answers(rng: np.random.Generator, rows: int, width: int, ids: int, unique: bool) -> Ids:
    """Index-like answers (distinct ids a row, some padding) or any ids, repeats included."""
    if unique:
        out = np.array([rng.permutation(ids + width)[:width] for _ in range(rows)], np.int64)
        out = out.reshape(rows, width)
    else:
        out = rng.integers(-1, ids, size=(rows, width))
    out[rng.random(out.shape) < 0.1] = -1
    return out


def test_vectorised_scores_are_the_definitions_exactly() -> None:
    rng = np.random.default_rng(3)
    for trial in range(300):
        rows, k = int(rng.integers(0, 40)), int(rng.integers(1, 12))
        unique = trial % 3 != 0
        ids = int(rng.integers(2, 30))
        a = answers(rng, rows, int(rng.integers(1, 14)), ids, unique)
        b = answers(rng, rows, int(rng.integers(1, 14)), ids, unique)
        own = rng.integers(0, ids, rows) if trial % 2 else None
        assert np.array_equal(exclude_self(a, own, k), plain_exclude_self(a, own, k))
        fa, fb = plain_exclude_self(a, own, k), plain_exclude_self(b, own, k)
        for x, y in ((a, b), (fa, fb)):
            assert np.array_equal(recall_scores(x, y), plain_recall_scores(x, y), equal_nan=True)
            assert rank_correlation(x, y) == plain_rank_correlation(x, y)
    # The suite's shape: 1,000 queries, k = 10, the new answers mostly the old ones reordered.
    old = answers(rng, 1000, 11, 5000, unique=True)
    new = np.array([np.r_[r[:8][rng.permutation(8)], r[8:]] for r in old])
    own = old[:, 0].copy()
    fo, fn = exclude_self(old, own, 10), exclude_self(new, own, 10)
    assert np.array_equal(recall_scores(fn, fo), plain_recall_scores(fn, fo), equal_nan=True)
    assert rank_correlation(fo, fn) == plain_rank_correlation(fo, fn)


def svd_spectrum(x: Vectors, components: int) -> npt.NDArray[np.float64]:
    centred = x.astype(np.float64) - x.mean(axis=0)
    values = np.linalg.svd(centred, compute_uv=False) ** 2
    top = np.sort(values)[::-1][:components]
    return top / top.sum()


def test_spectrum_is_the_svds() -> None:
    rng = np.random.default_rng(5)
    plain = rng.normal(size=(5000, 128)).astype(np.float32)
    x = plain.copy()
    x[:, :4] *= 5  # four directions dominate
    for sample, components in ((x, 32), (x[:10], 32), (x[:300, :16], 4)):
        ours, svd = spectrum(sample, components), svd_spectrum(sample, components)
        assert ours.shape == svd.shape
        assert np.abs(ours - svd).max() < 1e-12
    # The same records in another order measure no shift; a stretched sample does.
    assert round(spectrum_shift(x, x[rng.permutation(len(x))]), 4) == 0.0
    assert spectrum_shift(plain, x) > 0.2


def kept_times(first: list[Scores], second: list[Scores]) -> tuple[list[Scores], int]:
    """The times :func:`paired_latency` keeps when each row's first and second search take
    the given times, and how many rows it times twice."""
    kept = [f.copy() for f in first]
    twice = np.zeros(len(first[0]), bool)
    while len(todo := np.flatnonzero(tail(kept) & ~twice)):
        for side, s in zip(kept, second, strict=True):
            side[todo] = np.minimum(side[todo], s[todo])
        twice[todo] = True
    return kept, int(twice.sum())


def test_timing_the_tail_again_gives_the_tail_of_timing_every_query_again() -> None:
    """Two sides, the same queries hard on both; first-pass times struck by stalls, of a few
    queries or (a loaded machine) of a fifth of them: timing again only the tail gives the
    p99, its interval and the p99 ratio's interval of keeping every query's faster time."""
    rng = np.random.default_rng(8)
    for trial in range(60):
        n = (200, 50)[trial % 2]
        hard = rng.lognormal(0, 0.4, n)
        first = [hard * rng.lognormal(0, 0.1, n) * f for f in (1.0, 1.3)]
        second = [hard * rng.lognormal(0, 0.1, n) * f for f in (1.0, 1.3)]
        stalled = (4, n // 5)[trial % 3 == 0]
        for side in first:
            side[rng.choice(n, stalled, replace=False)] += 30.0
        full = [np.minimum(f, s) for f, s in zip(first, second, strict=True)]
        kept, twice = kept_times(first, second)
        assert twice < n
        for ours, theirs in zip(kept, full, strict=True):
            assert ours.max() < 30.0  # every stalled query was timed again
            assert np.percentile(ours, 99) == np.percentile(theirs, 99)
            assert quantile_interval(ours, 0.99) == quantile_interval(theirs, 0.99)
            assert np.array_equal(np.sort(ours)[-TAIL_MIN:], np.sort(theirs)[-TAIL_MIN:])
        assert ratio_interval(kept[1], kept[0], 0.99, 1.0) == ratio_interval(
            full[1], full[0], 0.99, 1.0
        )


class Counted:
    """A FAISS index that counts the searches of each query, and stalls the first search of
    the queries named in ``stall`` (as a preemption would)."""

    def __init__(self, vectors: Vectors, queries: Vectors, stall: set[int]) -> None:
        self.index = faiss.IndexFlatL2(vectors.shape[1])
        self.index.add(vectors)
        self.rows = {queries[r].tobytes(): r for r in range(len(queries))}
        self.searches = np.zeros(len(queries), np.int64)
        self.stall = set(stall)

    def search(self, queries: Vectors, k: int) -> tuple[Distances, Ids]:
        row = self.rows[queries[0].tobytes()]
        self.searches[row] += 1
        if row in self.stall:
            self.stall.discard(row)
            time.sleep(0.05)
        d, i = self.index.search(queries, k)
        return d, i.astype(np.int64)


def test_paired_latency_times_the_slower_queries_again_on_both_sides() -> None:
    rng = np.random.default_rng(9)
    vectors = rng.normal(size=(2000, 16)).astype(np.float32)
    queries = rng.normal(size=(100, 16)).astype(np.float32)
    old, new = Counted(vectors, queries, {10, 60}), Counted(vectors, queries, set())
    millis = paired_latency([(new, queries), (old, queries)], 10, timed=100)
    assert [len(m) for m in millis] == [100, 100]
    # Every query once (the first one also untimed first), the slower ones twice, on both sides.
    for side in (old, new):
        side.searches[0] -= 1
        assert set(side.searches.tolist()) <= {1, 2}
    assert np.array_equal(old.searches, new.searches)
    # Every query in either side's tail was timed twice (the rest are faster than all of it).
    assert (old.searches[tail(millis)] == 2).all()
    assert int((old.searches == 2).sum()) >= TAIL_MIN
    # The stalled queries were timed again: their stall is not in the figures.
    assert old.searches[10] == old.searches[60] == 2
    assert millis[1][10] < 50
    assert millis[1][60] < 50


def test_work_ahead_runs_beside_the_caller_or_where_it_is_first_asked_for() -> None:
    """The gate suite's read-ahead: begun at once on a thread of its own when parallel and
    early, else run in the caller when its result is asked for (as the stages one after
    another did); what it raised is raised where its result is used."""
    caller = threading.get_ident()
    began = threading.Event()

    def work(x: int) -> tuple[int, int]:
        began.set()
        return threading.get_ident(), x

    with _Ahead(True) as ahead:
        result = ahead.start(True, work, 7)
        assert began.wait(10)  # before its result is asked for
        thread, x = result()
        assert thread != caller
        assert x == 7
        began.clear()
        later = ahead.start(False, work, 8)  # not early: nothing runs before it is asked for
        ahead.finish()
        assert not began.is_set()
        assert later() == (caller, 8)

        def fail() -> None:
            raise ValueError("the old index cannot be read")

        failing = ahead.start(True, fail)
        ahead.finish()  # waits, raises nothing
        with pytest.raises(ValueError, match="cannot be read"):
            failing()
    began.clear()
    with _Ahead(False) as ahead:
        result = ahead.start(True, work, 9)
        ahead.finish()
        assert not began.is_set()
        assert result() == (caller, 9)
