"""Router search against the raw library's search: same index, same queries, same process.

    python bench/router_overhead.py --vectors 200000 --queries 2000

The router adds the routing lookup, input checks, the canary decision and the change-log
overlay to every search, and vecmigrate's index object adds its own handling of hnswlib's
answer (types, padding, shards); the target is the whole path at most 5 % over hnswlib's
``knn_query`` on the very same index object. Every query is searched the three ways back to
back (the order rotating); an overhead is the median over rounds of one path's time over
another's.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from bench.common import RESULTS, report, scratch
from control.chaos import builtin_version
from vecmigrate.catalog import Catalog
from vecmigrate.config import sqlite_url
from vecmigrate.datasets import clustered
from vecmigrate.indexes import ShardedIndex
from vecmigrate.routing import Router
from vecmigrate.seed import seed_collection, sequential_ids
from vecmigrate.spec import BuiltinStoreRef


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--vectors", type=int, default=200_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--queries", type=int, default=2_000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--out", type=Path, default=RESULTS, help="where JSON and PNG go")
    args = p.parse_args()
    home = scratch("router")
    catalog = Catalog(sqlite_url(home / "catalog.db"))
    store = BuiltinStoreRef(url=sqlite_url(home / "store.db"), artifacts=str(home / "artifacts"))
    index = {"kind": "hnswlib_hnsw", "m": 16, "ef_construction": 100, "ef_search": 64}
    v1 = builtin_version("v1", store, args.dim, index)
    data = clustered(args.vectors, args.dim, seed=2)
    seed_collection(catalog, "default", "bench", v1, sequential_ids(args.vectors), data, shards=1)
    routing = catalog.get_routing("default", "bench")
    assert routing is not None
    assert routing.read_index is not None
    router = Router(catalog, refresh_seconds=1.0)
    # The very index object the router serves from: two loads of one artifact sit in different
    # memory, and which of them the caches favour is not the router's doing.
    direct = router._searcher(routing.read_index)
    assert isinstance(direct, ShardedIndex)
    assert len(direct.shards) == 1
    raw = direct.shards[0]._hnsw  # hnswlib's own index object: the library, no wrapper
    rng = np.random.default_rng(0)
    queries = data[rng.choice(args.vectors, args.queries, replace=False)] + 0.01
    k = args.k

    def one_round() -> tuple[float, float, float]:
        """Each query searched three ways back to back (raw hnswlib, vecmigrate's index
        object, the router), the order rotating (a later search of a query finds the index's
        memory warm): paired timings cancel the drift of a shared machine that whole rounds of
        one kind pick up."""
        paths = [
            lambda q, key: raw.knn_query(q[None, :], k=k),
            lambda q, key: direct.search(q[None, :], k),
            lambda q, key: router.search("default", "bench", q, k, key=key),
        ]
        spent = [0.0, 0.0, 0.0]
        clock = time.perf_counter
        for n, q in enumerate(queries):
            key = f"user-{n}"
            for j in range(3):
                which = (n + j) % 3
                t0 = clock()
                paths[which](q, key)
                spent[which] += clock() - t0
        return tuple(s / len(queries) * 1e6 for s in spent)  # type: ignore[return-value]

    one_round()  # warm up (index load, caches)
    same = router.search("default", "bench", queries[:50], k).ids
    assert np.array_equal(same, direct.search(queries[:50], k)[1]), "router changed results"
    assert np.array_equal(same, raw.knn_query(queries[:50], k=k)[0]), "index changed results"
    rounds = [one_round() for _ in range(args.rounds)]
    raw_us, direct_us, router_us = (list(col) for col in zip(*rounds, strict=True))

    def over(base: list[float], path: list[float]) -> float:
        return statistics.median(p / b for b, p in zip(base, path, strict=True)) - 1

    overhead = over(raw_us, router_us)
    rows = [
        {
            "path": "hnswlib knn_query (raw)",
            "us_per_query": round(statistics.median(raw_us), 1),
            "over_raw": "",
        },
        {
            "path": "vecmigrate index.search",
            "us_per_query": round(statistics.median(direct_us), 1),
            "over_raw": f"{over(raw_us, direct_us):+.2%}",
        },
        {
            "path": "Router.search",
            "us_per_query": round(statistics.median(router_us), 1),
            "over_raw": f"{overhead:+.2%}",
        },
    ]

    def plot(path: Path) -> None:
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.boxplot([raw_us, direct_us, router_us], tick_labels=["hnswlib", "index", "router"])
        ax.set_ylabel("µs per query")
        ax.set_title(f"router overhead {overhead:+.1%} ({args.vectors:,} x {args.dim}, HNSW)")
        fig.tight_layout()
        fig.savefig(path, dpi=110)

    report(
        "router_overhead",
        f"router vs direct index search: {args.vectors:,} x {args.dim}, {args.queries:,} queries",
        rows,
        {
            "overhead": f"{overhead:+.2%}",
            "router_over_index": f"{over(direct_us, router_us):+.2%}",
            "target": "<= +5% over hnswlib",
            "met": overhead <= 0.05,
        },
        plot,
        out=args.out,
    )


if __name__ == "__main__":
    main()
