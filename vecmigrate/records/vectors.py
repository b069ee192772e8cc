"""Records as arrays: ids and vectors, the checks every batch passes before it is written,
and exact k-nearest-neighbour search over batches."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt

from vecmigrate.errors import DataError
from vecmigrate.model.spec import Metric

Ids = npt.NDArray[np.int64]
Vectors = npt.NDArray[np.float32]
Distances = npt.NDArray[np.float32]

MAX_ID = (1 << 63) - 2


def normalize_rows(x: Vectors, *, out: Vectors | None = None) -> Vectors:
    """Unit-norm rows (zero rows stay zero); into ``out`` when given (``out=x`` norms ``x`` in
    place, float32 rows only)."""
    if out is None:
        out = np.zeros_like(x)
    # A block of rows at a time: the norm's squares are a temporary as large as its input.
    for lo in range(0, len(x), _NORM_ROWS):
        part = x[lo : lo + _NORM_ROWS]
        norms = np.linalg.norm(part, axis=1, keepdims=True)
        np.divide(part, norms, out=out[lo : lo + _NORM_ROWS], where=norms > 0)
    # No second copy of float32 rows (astype copies unless told not to).
    done: Vectors = out.astype(np.float32, copy=False)
    return done


_NORM_ROWS = 4_096


def grown_rows(a: npt.NDArray[Any], rows: int) -> npt.NDArray[Any]:
    """``a`` with room for ``rows`` rows (its rows kept, the new ones unset).

    Grown in place where numpy owns the memory (a reallocation, so the rows are not held twice
    while they move), else copied once. ``a`` must have no other views: they would dangle.
    """
    if a.flags.owndata and a.flags.c_contiguous:
        a.resize((rows, *a.shape[1:]), refcheck=False)
        return a
    out = np.empty((rows, *a.shape[1:]), a.dtype)
    out[: len(a)] = a
    return out


def row_norms(vectors: Vectors) -> npt.NDArray[np.float64]:
    """Euclidean norm of each (finite) row: summed in float32 (1.4 ms for 50,000 x 128 where a
    float64 copy and ``np.linalg.norm`` took 28; relative difference ~1e-7), again in float64
    for rows whose squares overflow float32."""
    v = np.asarray(vectors, dtype=np.float32)
    norms: npt.NDArray[np.float64] = np.sqrt(np.einsum("ij,ij->i", v, v)).astype(np.float64)
    big = ~np.isfinite(norms)
    if big.any():
        norms[big] = np.linalg.norm(v[big].astype(np.float64), axis=1)
    return norms


def record_norms(vectors: Vectors) -> npt.NDArray[np.float64]:
    """Each row's norm as a shard profile counts it (:func:`row_norms` of the finite rows),
    NaN for a row that is not finite (which a profile counts as such, not by its norm)."""
    finite = np.isfinite(vectors).all(axis=1)
    norms = np.full(len(vectors), np.nan)
    norms[finite] = row_norms(vectors if finite.all() else vectors[finite])
    return norms


def faiss_metric(metric: Metric) -> int:
    """FAISS's metric constant for ``metric`` (cosine is inner product on unit rows)."""
    return int(faiss.METRIC_L2 if metric == Metric.L2 else faiss.METRIC_INNER_PRODUCT)


def prepare_for_metric(x: Vectors, metric: Metric) -> Vectors:
    """Contiguous float32 rows, unit-normed for cosine."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    return normalize_rows(x) if metric == Metric.COSINE else x


def to_distance(d: Distances, metric: Metric) -> Distances:
    """FAISS similarities as distances (smaller is closer for every metric)."""
    if metric == Metric.L2:
        return d
    out: Distances = (1.0 - d).astype(np.float32)
    return out


def merge_topk(parts: list[tuple[Distances, Ids]], k: int) -> tuple[Distances, Ids]:
    """Merge (distances, ids) result sets row by row in one sort, keeping the k smallest
    (-1 ids at an infinite distance, and an infinite distance's id -1)."""
    d = np.concatenate([p[0] for p in parts], axis=1)
    i = np.concatenate([p[1] for p in parts], axis=1)
    if (
        d.shape[0] == 1
        and d.size
        and d.dtype == np.float32
        and i.dtype == np.int64
        and d.max() < np.inf  # every distance finite (NaN fails this too)
        and -1 not in i
    ):
        # One query, nothing to rewrite (a served search over several shards): the same
        # answer in the fewest numpy calls, each about a microsecond after a search.
        order = np.argsort(d[0], kind="stable")[:k]
        return d[:, order], i[:, order]
    d = np.where(i == -1, np.inf, d)
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    dd = np.take_along_axis(d, order, axis=1).astype(np.float32)
    ii = np.take_along_axis(i, order, axis=1)
    ii = np.where(np.isinf(dd), -1, ii)
    return dd, ii.astype(np.int64)


def empty_results(n: int, k: int) -> tuple[Distances, Ids]:
    """``n`` rows of ``k`` empty results (infinite distance, id -1)."""
    return np.full((n, k), np.inf, np.float32), np.full((n, k), -1, np.int64)


class ExactKnn:
    """Exact k-NN over data fed in batches, in bounded memory (FAISS brute force per batch)."""

    def __init__(self, queries: Vectors, k: int, metric: str | Metric) -> None:
        self.metric = Metric(metric)
        self.queries = prepare_for_metric(queries, self.metric)
        self.k = k
        self.d, self.i = empty_results(self.queries.shape[0], k)

    def add(self, ids: Ids, vectors: Vectors) -> None:
        """Fold one batch of the searched data in."""
        if ids.shape[0] == 0:
            return
        kk = min(self.k, ids.shape[0])
        d, pos = faiss.knn(
            self.queries,
            prepare_for_metric(vectors, self.metric),
            kk,
            metric=faiss_metric(self.metric),
        )
        found = np.where(pos >= 0, ids[np.clip(pos, 0, None)], -1)
        self.d, self.i = merge_topk(
            [(self.d, self.i), (to_distance(d, self.metric), found)], self.k
        )

    def result(self) -> tuple[Distances, Ids]:
        """Distances and ids of the k nearest neighbours seen so far, -1 padded."""
        return self.d, self.i


def check_vectors(
    ids: object, vectors: object, dimension: int, scope: object
) -> tuple[Ids, Vectors]:
    """Coerce and check a batch before anything is written.

    Raises:
        DataError: wrong shape or dimension, NaN or infinity, ids out of range or repeated.
    """
    ids_arr = np.asarray(ids)
    if ids_arr.ndim != 1 or not np.issubdtype(ids_arr.dtype, np.integer):
        raise DataError(f"{scope}: ids must be a 1-D array of integers, got {ids_arr.dtype}")
    vec_arr = np.asarray(vectors)
    if vec_arr.ndim != 2:
        raise DataError(f"{scope}: vectors must be a 2-D array, got shape {vec_arr.shape}")
    if vec_arr.shape[0] != ids_arr.shape[0]:
        raise DataError(
            f"{scope}: {ids_arr.shape[0]} ids but {vec_arr.shape[0]} vectors; "
            "pass one id per vector"
        )
    if vec_arr.shape[1] != dimension:
        raise DataError(
            f"{scope}: vectors have dimension {vec_arr.shape[1]} but this version holds "
            f"{dimension}-dimensional vectors"
        )
    vec32 = np.ascontiguousarray(vec_arr, dtype=np.float32)
    finite = np.isfinite(vec32).all(axis=1)
    if not finite.all():
        bad = ids_arr[~finite][:5].tolist()
        raise DataError(f"{scope}: vectors for ids {bad} contain NaN or infinity; nothing written")
    ids64 = ids_arr.astype(np.int64)
    if ids64.size and (ids64.min() < -MAX_ID or ids64.max() > MAX_ID):
        raise DataError(f"{scope}: ids must lie within +-{MAX_ID}")
    if repeated_ids(ids64):
        raise DataError(f"{scope}: a batch repeats an id; send each id once per batch")
    return ids64, vec32


def repeated_ids(ids: Ids) -> int:
    """How many ids repeat an earlier one (n minus the distinct count): a sort and a compare of
    neighbours, 13 ms for 250,000 ids where ``np.unique`` took 103."""
    if ids.size < 2:
        return 0
    s = np.sort(ids)
    return int(np.count_nonzero(s[1:] == s[:-1]))


def check_texts(texts: Sequence[object], what: str = "texts") -> list[str]:
    """The texts as a list of strings.

    Raises:
        DataError: a text that is not a string, or is empty.
    """
    out = list(texts)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise DataError(f"{what}[{i}] is {type(t).__name__}, not a string")
        if not t.strip():
            raise DataError(f"{what}[{i}] is empty; every record needs some text to embed")
    return out  # type: ignore[return-value]
