"""Router search against the raw library's search: same index, same queries, same process.

    python bench/router_overhead.py --vectors 200000 --dims 64,128,384

The router resolves routing, versions and indexes once per routing generation; a search then
checks the query, reaches the plan and calls the index. The target is ``Router.search`` at most
3 % over hnswlib's own ``knn_query`` at p50 and at p99, called on the very index object the
router serves from, the fastest way (the query as the router gets it, one 1-D row, and k by
position: a keyword costs pybind11 ~0.9 us, a 2-D view of the row ~0.4 us).

With ``--kind ivf`` each collection is instead an IVF-Flat index in ``--shards`` shards (4 by
default; nlist 4 sqrt(n / shards), nprobe 16), and the raw search is FAISS's own
``IndexShards`` over the very shard index objects the router serves from, given the query as
a 2-D row made beforehand: what a sharded FAISS collection costs through the router. With
``--kind hnsw --shards N`` (N > 1) the raw search is each shard's ``knn_query`` in turn, the
answers not merged: hnswlib has no search over several indexes, so the router's merge counts
against it.

Each query is searched both ways back to back, the order alternating from query to query, and
each search is timed on its own: a pair is one pass over the queries, giving each path's p50
and p99 and their ratios. The figure is the median ratio over the pairs (at least 3), and every
pair is printed. Each dimension is measured on its own collection (64 is the hardest case for
the ratio: the router takes the same steps whatever the dimension, and the search is shortest).
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import faiss
import numpy as np

from bench.common import report, scratch, sized_parser
from vecmigrate.catalog.catalog import Catalog
from vecmigrate.config import sqlite_url
from vecmigrate.data.datasets import clustered
from vecmigrate.data.seed import seed_collection, sequential_ids
from vecmigrate.indexes.live import LiveIndex
from vecmigrate.model.spec import BuiltinStoreRef
from vecmigrate.records.vectors import merge_topk
from vecmigrate.serving.router import Router
from vecmigrate.testing.chaos import builtin_version

TARGET = 0.03
# The raw library each kind of collection is measured against, as the figures name it.
LIBRARY = {"hnsw": "hnswlib", "ivf": "faiss"}


@dataclass
class Pair:
    """One pass over the queries: each path's p50 and p99 in us."""

    raw_p50: float
    raw_p99: float
    router_p50: float
    router_p99: float

    @property
    def p50(self) -> float:
        return self.router_p50 / self.raw_p50 - 1

    @property
    def p99(self) -> float:
        return self.router_p99 / self.raw_p99 - 1


@dataclass
class Timings:
    dim: int
    pairs: list[Pair]

    @property
    def p50(self) -> float:
        return statistics.median(p.p50 for p in self.pairs)

    @property
    def p99(self) -> float:
        return statistics.median(p.p99 for p in self.pairs)


def measure(
    home: Path, n: int, dim: int, queries: int, k: int, pairs: int, kind: str, shards: int
) -> Timings:
    """Seed ``n`` x ``dim`` into a version indexed as ``kind`` says (a one-shard hnswlib HNSW,
    or IVF-Flat in ``shards`` shards) and time every query both ways."""
    catalog = Catalog(sqlite_url(home / f"catalog-{dim}.db"))
    store = BuiltinStoreRef(
        url=sqlite_url(home / f"store-{dim}.db"), artifacts=str(home / f"artifacts-{dim}")
    )
    index: dict[str, Any] = {
        "kind": "hnswlib_hnsw",
        "m": 16,
        "ef_construction": 100,
        "ef_search": 64,
    }
    if kind == "ivf":
        nlist = int(max(8, min(4096, 4 * np.sqrt(n // shards))))
        index = {"kind": "faiss_ivf_flat", "nlist": nlist, "nprobe": 16}
    v1 = builtin_version("v1", store, dim, index)
    data = clustered(n, dim, seed=2)
    seed_collection(catalog, "default", "bench", v1, sequential_ids(n), data, shards=shards)
    routing = catalog.get_routing("default", "bench")
    assert routing is not None
    assert routing.read_index is not None
    router = Router(catalog, refresh_seconds=1.0)
    rng = np.random.default_rng(0)
    sample = data[rng.choice(n, queries, replace=False)] + np.float32(0.01)
    router.search("default", "bench", sample[0], k)  # the plan, built once
    # The very index object the router serves from: two loads of one artifact sit in different
    # memory, and which of them the caches favour is not the router's doing.
    live = router.searcher(routing.read_index)
    assert isinstance(live, LiveIndex)
    assert len(live.shards) == shards
    rows = [sample[j : j + 1] for j in range(len(sample))]  # FAISS's queries: 2-D, made now
    if kind == "ivf":
        library: Any = faiss  # its type stubs lack IndexShards' threaded and ids flags
        joined = library.IndexShards(dim, False, False)
        for shard in live.shards:
            joined.add_shard(shard.native)  # the shards' own FAISS objects: no wrapper
        knn: Any = joined.search
    elif shards == 1:
        knn = live.shards[0].native.knn_query  # hnswlib's own index object, no wrapper
    else:
        # hnswlib has no search over several indexes: each shard's own knn_query in turn,
        # their answers not merged (what any merge costs counts against the router).
        queries_of = [s.native.knn_query for s in live.shards]

        def knn(x: Any, k: int) -> list[Any]:
            return [each(x, k) for each in queries_of]

    raw = rows if kind == "ivf" else list(sample)
    search = router.search

    def one_pair() -> Pair:
        raw_ns = np.empty(len(sample), np.int64)
        router_ns = np.empty(len(sample), np.int64)
        clock = time.perf_counter_ns
        for j, q in enumerate(sample):
            x = raw[j]
            if j % 2:
                t0 = clock()
                knn(x, k)
                t1 = clock()
                search("default", "bench", q, k)
                t2 = clock()
                raw_ns[j], router_ns[j] = t1 - t0, t2 - t1
            else:
                t0 = clock()
                search("default", "bench", q, k)
                t1 = clock()
                knn(x, k)
                t2 = clock()
                router_ns[j], raw_ns[j] = t1 - t0, t2 - t1
        r50, r99 = np.percentile(raw_ns, [50, 99]) / 1000
        s50, s99 = np.percentile(router_ns, [50, 99]) / 1000
        return Pair(float(r50), float(r99), float(s50), float(s99))

    one_pair()  # warm up (caches, the interpreter's specialisation of the hot path)
    got = np.stack([search("default", "bench", q, k).ids[0] for q in sample[:50]])
    if kind == "ivf":
        want = knn(sample[:50], k)[1]
    elif shards == 1:
        want = knn(sample[:50], k)[0]
    else:
        answers = [(d, labels.view(np.int64)) for labels, d in knn(sample[:50], k)]
        want = merge_topk(answers, k)[1]
    assert np.array_equal(got, want.astype(np.int64)), "router changed results"
    timed = []
    for n_pair in range(pairs):
        pair = one_pair()
        timed.append(pair)
        library_name = LIBRARY[kind]
        print(
            f"d={dim} pair {n_pair + 1}: p50 {library_name} {pair.raw_p50:.1f} us router "
            f"{pair.router_p50:.1f} us ({pair.p50:+.2%}); p99 {library_name} "
            f"{pair.raw_p99:.1f} us router {pair.router_p99:.1f} us ({pair.p99:+.2%})",
            flush=True,
        )
    router.close()
    return Timings(dim, timed)


def main() -> None:
    p = sized_parser(__doc__, vectors=200_000)
    p.add_argument(
        "--dims", default="64,128,384", help="comma-separated dimensions, each its own collection"
    )
    p.add_argument("--queries", type=int, default=5_000)
    p.add_argument("--pairs", type=int, default=5, help="passes over the queries (at least 3)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument(
        "--kind",
        choices=sorted(LIBRARY),
        default="hnsw",
        help="hnsw: hnswlib HNSW (one shard: the target's case); ivf: IVF-Flat",
    )
    p.add_argument(
        "--shards", type=int, default=None, help="shards of the collection (hnsw 1, ivf 4)"
    )
    args = p.parse_args()
    if args.pairs < 3:
        p.error("--pairs must be at least 3: the figure is the median pair")
    shards = args.shards or (4 if args.kind == "ivf" else 1)
    name = LIBRARY[args.kind]
    dims = [int(d) for d in args.dims.split(",")]
    home = scratch("router")
    runs = [
        measure(home, args.vectors, d, args.queries, args.k, args.pairs, args.kind, shards)
        for d in dims
    ]
    rows = []
    for t in runs:
        rows.append(
            {
                "dim": t.dim,
                f"{name}_p50_us": round(statistics.median(p.raw_p50 for p in t.pairs), 1),
                "router_p50_us": round(statistics.median(p.router_p50 for p in t.pairs), 1),
                "p50_over": f"{t.p50:+.2%}",
                f"{name}_p99_us": round(statistics.median(p.raw_p99 for p in t.pairs), 1),
                "router_p99_us": round(statistics.median(p.router_p99 for p in t.pairs), 1),
                "p99_over": f"{t.p99:+.2%}",
                "pairs_p50": " ".join(f"{p.p50:+.1%}" for p in t.pairs),
                "pairs_p99": " ".join(f"{p.p99:+.1%}" for p in t.pairs),
            }
        )

    def plot(path: Path) -> None:
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(runs), figsize=(3.4 * len(runs), 3.5), squeeze=False)
        for ax, t in zip(axes[0], runs, strict=True):
            ax.plot([p.p50 * 100 for p in t.pairs], "o-", label="p50")
            ax.plot([p.p99 * 100 for p in t.pairs], "s-", label="p99")
            ax.axhline(TARGET * 100, color="grey", linestyle="--", linewidth=1)
            ax.set_title(f"d={t.dim}: p50 {t.p50:+.1%}, p99 {t.p99:+.1%}")
            ax.set_xlabel("pair")
            ax.set_ylabel(f"router over {name} (%)")
            ax.legend()
        what = f"{'HNSW' if args.kind == 'hnsw' else 'IVF-Flat'} in {shards} shard(s)"
        fig.suptitle(f"router overhead, {args.vectors:,} vectors, {what}")
        fig.tight_layout()
        fig.savefig(path, dpi=110)

    call = {
        "hnsw": "knn_query" if shards == 1 else f"knn_query of each of {shards} shards",
        "ivf": f"IndexShards.search over {shards} shards",
    }[args.kind]
    one_hnsw = (args.kind, shards) == ("hnsw", 1)
    report(
        "router_overhead" if one_hnsw else f"router_overhead_{args.kind}{shards}",
        f"router vs {name} {call}: {args.vectors:,} vectors, {args.queries:,} queries, "
        f"{args.pairs} pairs (median pair)",
        rows,
        {
            "target": f"<= +{TARGET:.0%} over {name} at p50 and p99",
            "met": {str(t.dim): t.p50 <= TARGET and t.p99 <= TARGET for t in runs},
        },
        plot,
        out=args.out,
    )


if __name__ == "__main__":
    main()
