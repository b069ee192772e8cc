"""Search latency as writes accumulate: an index that takes 60,000 writes against its twin.

    python bench/write_latency.py --vectors 200000 --dim 64 --writes 60000 --kind hnswlib_hnsw

Two collections are seeded with the same records and the same index: ``written`` takes the
writes through the router (upserts of new and existing records and deletes, in batches), its
``twin`` none. Searches alternate between the two, query by query, so that both see the same
machine at the same moment, and each phase reports both sides' p50 and p99 and their ratio:

* ``before``: no write yet (the ratio shows what two copies of one index differ by);
* ``during``: between write batches, while the router's applier catches up (writes not yet in
  the index are laid over it);
* ``after``: once the applier has caught up (the target: within 1.2x of the twin at p50 and
  p99);
* ``new router``: a router started after the writes, which loads the artifact and applies the
  60,000 log entries to its copy before serving (its load time is printed);
* ``compacted``: after a compaction folded the log into new artifacts, a new router loads them
  (nothing to apply).

For ``--kind faiss_hnsw`` (which cannot remove a vector) the writes stay laid over the index
until the compaction: ``after`` shows what that costs and ``compacted`` what it recovers.
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from bench.common import (
    alternating,
    paired_bars,
    report,
    scratch,
    sized_parser,
)
from vecmigrate.catalog.catalog import Catalog
from vecmigrate.catalog.changelog import ChangeLog
from vecmigrate.config import sqlite_url
from vecmigrate.data.datasets import clustered
from vecmigrate.data.seed import seed_collection, sequential_ids
from vecmigrate.embedding.registry import model_key
from vecmigrate.indexes.compaction import compact
from vecmigrate.indexes.live import LiveIndex
from vecmigrate.model.spec import BuiltinStoreRef
from vecmigrate.serving.router import Router
from vecmigrate.testing.chaos import builtin_version

TARGET = 1.2
INDEXES = {
    "hnswlib_hnsw": {"kind": "hnswlib_hnsw", "m": 16, "ef_construction": 100, "ef_search": 64},
    "faiss_hnsw": {"kind": "faiss_hnsw", "m": 16, "ef_construction": 100, "ef_search": 64},
    "faiss_ivf_flat": {"kind": "faiss_ivf_flat", "nlist": 256, "nprobe": 8},
}


@dataclass
class Phase:
    name: str
    twin_p50: float
    twin_p99: float
    written_p50: float
    written_p99: float
    laid_over: int
    note: str = ""

    @property
    def p50(self) -> float:
        return self.written_p50 / self.twin_p50

    @property
    def p99(self) -> float:
        return self.written_p99 / self.twin_p99


def search_us(router: Router, collection: str, query: np.ndarray, k: int) -> float:
    """Microseconds one search took."""
    began = time.perf_counter()
    router.search("default", collection, query, k)
    return (time.perf_counter() - began) * 1e6


def timed(
    twin: Router, written: Router, queries: np.ndarray, k: int
) -> tuple[list[float], list[float]]:
    """Each query on both collections back to back, the order alternating; us per search."""
    a, b = [], []
    for j, q in enumerate(queries):
        on_written, on_twin = alternating(
            j,
            partial(search_us, written, "written", q, k),
            partial(search_us, twin, "twin", q, k),
        )
        a.append(on_twin)
        b.append(on_written)
    return a, b


def phase(
    name: str,
    twin: Router,
    written: Router,
    queries: np.ndarray,
    k: int,
    live: LiveIndex,
    note: str = "",
) -> Phase:
    a, b = timed(twin, written, queries, k)
    got = Phase(
        name,
        float(np.percentile(a, 50)),
        float(np.percentile(a, 99)),
        float(np.percentile(b, 50)),
        float(np.percentile(b, 99)),
        live.laid_over,
        note,
    )
    print(
        f"{name:>11}: twin p50 {got.twin_p50:7.1f} p99 {got.twin_p99:8.1f} us | written p50 "
        f"{got.written_p50:7.1f} p99 {got.written_p99:8.1f} us | x{got.p50:.2f} p50, "
        f"x{got.p99:.2f} p99 | laid over {got.laid_over:,} {note}",
        flush=True,
    )
    return got


def served(router: Router, collection: str) -> LiveIndex:
    view = router.routing("default", collection)
    assert view.read_index is not None
    live = router.searcher(view.read_index)
    assert isinstance(live, LiveIndex)
    return live


def loaded_router(catalog: Catalog, query: np.ndarray, k: int) -> tuple[Router, float]:
    """A new router and the seconds its first search took: loading the index and applying the
    change log since its build."""
    began = time.monotonic()
    router = Router(catalog, refresh_seconds=1.0)
    router.search("default", "written", query, k)
    return router, time.monotonic() - began


def main() -> None:
    p = sized_parser(__doc__, vectors=200_000, dim=64)
    p.add_argument("--writes", type=int, default=60_000)
    p.add_argument("--batch", type=int, default=1_000, help="records per write request")
    p.add_argument("--kind", choices=sorted(INDEXES), default="hnswlib_hnsw")
    p.add_argument("--queries", type=int, default=3_000)
    p.add_argument("--k", type=int, default=10)
    args = p.parse_args()
    home = scratch("write-latency")
    catalog = Catalog(sqlite_url(home / "catalog.db"))
    store = BuiltinStoreRef(url=sqlite_url(home / "store.db"), artifacts=str(home / "artifacts"))
    version = builtin_version("v1", store, args.dim, INDEXES[args.kind])
    data = clustered(args.vectors, args.dim, seed=2)
    ids = sequential_ids(args.vectors)
    for name in ("twin", "written"):
        began = time.monotonic()
        seed_collection(catalog, "default", name, version, ids, data, shards=1)
        print(f"seeded {name}: {time.monotonic() - began:.1f} s", flush=True)
    rng = np.random.default_rng(0)
    queries = data[rng.choice(args.vectors, args.queries, replace=False)] + np.float32(0.01)
    twin = Router(catalog, refresh_seconds=1.0)
    written = Router(catalog, refresh_seconds=1.0)
    for router, name in ((twin, "twin"), (written, "written")):
        router.search("default", name, queries[0], args.k)
    live = served(written, "written")
    phases = [phase("before", twin, written, queries, args.k, live)]

    # Writes: new records, new vectors for old ones, deletes; searches between the batches.
    during_a: list[float] = []
    during_b: list[float] = []
    next_id = args.vectors
    done = 0
    began = time.monotonic()
    while done < args.writes:
        n = min(args.batch, args.writes - done)
        kind = rng.random()
        if kind < 0.1:
            written.delete("default", "written", rng.choice(next_id, n, replace=False))
        else:
            if kind < 0.7:
                batch_ids = np.arange(next_id, next_id + n)
                next_id += n
            else:
                batch_ids = rng.choice(args.vectors, n, replace=False)
            vectors = data[rng.choice(args.vectors, n)] + rng.normal(size=(n, args.dim)).astype(
                np.float32
            )
            written.upsert("default", "written", batch_ids, vectors.astype(np.float32))
        done += n
        a, b = timed(twin, written, queries[rng.choice(args.queries, 20)], args.k)
        during_a += a
        during_b += b
    write_seconds = time.monotonic() - began
    phases.append(
        Phase(
            "during",
            float(np.percentile(during_a, 50)),
            float(np.percentile(during_a, 99)),
            float(np.percentile(during_b, 50)),
            float(np.percentile(during_b, 99)),
            live.laid_over,
            f"{args.writes:,} writes in {write_seconds:.1f} s",
        )
    )
    print(f"{args.writes:,} records written in {write_seconds:.1f} s", flush=True)
    began = time.monotonic()
    written.settle("default", "written", timeout=3600)
    applied = time.monotonic() - began
    phases.append(
        phase("after", twin, written, queries, args.k, live, f"applier done {applied:.1f} s later")
    )
    written.close()

    fresh, loaded = loaded_router(catalog, queries[0], args.k)
    phases.append(
        phase(
            "new router",
            twin,
            fresh,
            queries,
            args.k,
            served(fresh, "written"),
            f"loaded and applied the log in {loaded:.1f} s",
        )
    )
    fresh.close()

    log = ChangeLog(catalog)
    view = catalog.get_routing("default", "written")
    assert view is not None
    assert view.read_index is not None
    record = catalog.find_version("default", "written", "v1")
    assert record is not None
    began = time.monotonic()
    outcome = compact(
        catalog,
        view.read_index,
        log.head("default", "written"),
        space=model_key(record.embedding),
        normalized=record.embedding.normalized,
        fetch=served(fresh, "written").fetch,
    )
    compacted = time.monotonic() - began
    after, loaded = loaded_router(catalog, queries[0], args.k)
    phases.append(
        phase(
            "compacted",
            twin,
            after,
            queries,
            args.k,
            served(after, "written"),
            f"compacted {outcome.applied:,} entries in {compacted:.1f} s, loaded in {loaded:.1f} s",
        )
    )
    after.close()
    twin.close()

    rows = [
        {
            "phase": ph.name,
            "twin_p50_us": round(ph.twin_p50, 1),
            "written_p50_us": round(ph.written_p50, 1),
            "p50_ratio": round(ph.p50, 2),
            "twin_p99_us": round(ph.twin_p99, 1),
            "written_p99_us": round(ph.written_p99, 1),
            "p99_ratio": round(ph.p99, 2),
            "laid_over": ph.laid_over,
            "note": ph.note,
        }
        for ph in phases
    ]
    final = next(ph for ph in phases if ph.name == "after")

    def plot(path: Path) -> None:
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 3.6))
        paired_bars(
            ax,
            [ph.name for ph in phases],
            {"p50": [ph.p50 for ph in phases], "p99": [ph.p99 for ph in phases]},
        )
        ax.axhline(TARGET, color="grey", linestyle="--", linewidth=1)
        ax.set_ylabel("written / twin")
        ax.set_title(
            f"{args.kind}, {args.vectors:,} x {args.dim}: search latency after "
            f"{args.writes:,} writes"
        )
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=110)

    report(
        f"write_latency_{args.kind}",
        f"search latency as writes accumulate: {args.kind}, {args.vectors:,} x {args.dim}, "
        f"{args.writes:,} writes in batches of {args.batch:,}",
        rows,
        {
            "target": f"after the writes, within {TARGET}x of the twin at p50 and p99",
            "met": final.p50 <= TARGET and final.p99 <= TARGET,
            "median twin p50 over phases (us)": round(
                statistics.median(ph.twin_p50 for ph in phases), 1
            ),
        },
        plot,
        out=args.out,
    )


if __name__ == "__main__":
    main()
