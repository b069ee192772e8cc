"""Router search against direct index search: same index, same queries, same process.

    python bench/router_overhead.py --vectors 200000 --queries 2000

The router adds the routing lookup, input checks, the canary decision and the change-log
overlay to every search; the target is at most 5 % over searching the index directly. Every
query is searched both ways back to back (which goes first alternates); the overhead is the
median over rounds of the router's time over the direct time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from bench.common import RESULTS, report
from control.chaos import builtin_version
from vecmigrate.catalog import Catalog
from vecmigrate.config import sqlite_url
from vecmigrate.datasets import clustered
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
    home = Path(tempfile.mkdtemp(prefix="vecmigrate-router-"))
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
    rng = np.random.default_rng(0)
    queries = data[rng.choice(args.vectors, args.queries, replace=False)] + 0.01

    def one_round() -> tuple[float, float]:
        """Each query searched both ways back to back, the order alternating (the second
        search of a query finds the index's memory warm): paired timings cancel the drift of
        a shared machine that whole rounds of one kind pick up."""
        direct_s = router_s = 0.0
        clock = time.perf_counter
        for n, q in enumerate(queries):
            key = f"user-{n}"
            if n % 2:
                t0 = clock()
                direct.search(q[None, :], args.k)
                t1 = clock()
                router.search("default", "bench", q, args.k, key=key)
                t2 = clock()
                direct_s += t1 - t0
                router_s += t2 - t1
            else:
                t0 = clock()
                router.search("default", "bench", q, args.k, key=key)
                t1 = clock()
                direct.search(q[None, :], args.k)
                t2 = clock()
                router_s += t1 - t0
                direct_s += t2 - t1
        return direct_s / len(queries) * 1e6, router_s / len(queries) * 1e6

    one_round()  # warm up (index load, caches)
    same = router.search("default", "bench", queries[:50], args.k).ids
    assert np.array_equal(same, direct.search(queries[:50], args.k)[1]), "router changed results"
    direct_us, router_us = [], []
    for _ in range(args.rounds):
        d_us, r_us = one_round()
        direct_us.append(d_us)
        router_us.append(r_us)
    d, r = statistics.median(direct_us), statistics.median(router_us)
    overhead = statistics.median(ru / du for du, ru in zip(direct_us, router_us, strict=True)) - 1
    rows = [
        {"path": "index.search (direct)", "us_per_query": round(d, 1), "rounds": args.rounds},
        {"path": "Router.search", "us_per_query": round(r, 1), "rounds": args.rounds},
    ]

    def plot(path: Path) -> None:
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.boxplot([direct_us, router_us], tick_labels=["direct", "router"])
        ax.set_ylabel("µs per query")
        ax.set_title(f"router overhead {overhead:+.1%} ({args.vectors:,} x {args.dim}, HNSW)")
        fig.tight_layout()
        fig.savefig(path, dpi=110)

    report(
        "router_overhead",
        f"router vs direct index search: {args.vectors:,} x {args.dim}, {args.queries:,} queries",
        rows,
        {"overhead": f"{overhead:+.2%}", "target": "<= +5%", "met": overhead <= 0.05},
        plot,
        out=args.out,
    )


if __name__ == "__main__":
    main()
