"""Rows per call against milvus-lite's time: where the Milvus adapter's page size comes from.

    python bench/milvus_pages.py --records 40000 --dims 64,384

For each dimension, on a fresh milvus-lite collection: one query returning N rows with their
vectors, for each page size N (records/s), one upsert of ``--upsert-records`` records in pages
of N rows (a fresh collection each), and the adapter's own shard scan and id scan of every
record. milvus-lite's time per call grows with the square of its rows, so the adapter reads and
writes vectors in pages of ``VECTOR_PAGE`` rows (ids alone page at ``MAX_QUERY``). Pages of
10,000 rows take minutes (``--dims 384 --pages 10000 --upsert-records 20000``: 185 s to upsert
20,000 records in one run, against 2.1 s in the adapter's pages).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from bench.common import add_out_option, report, scratch, script_parser
from vecmigrate.data.datasets import clustered
from vecmigrate.model.tasks import ShardRef
from vecmigrate.records.sharding import hash_shards
from vecmigrate.stores import MilvusStore, Scope
from vecmigrate.stores.milvus import VECTOR_PAGE, close_clients


def rows_of(ids: np.ndarray, vectors: np.ndarray) -> list[dict[str, Any]]:
    return [{"id": int(i), "h": 0, "embedding": v} for i, v in zip(ids, vectors, strict=True)]


def measure(home: Path, n: int, dim: int, pages: list[int], upsert_n: int) -> list[dict[str, Any]]:
    data = clustered(n, dim, seed=3)
    ids = np.arange(n, dtype=np.int64)
    store = MilvusStore.open(str(home / f"scan-{dim}.db"), Scope("t", "c", "v1"), dim)
    store.upsert(ids, data)
    out: list[dict[str, Any]] = []
    for page in pages:
        began = time.perf_counter()
        got = store.client.query(
            store.name,
            filter="id >= 0",
            output_fields=["id", "h", "embedding"],
            limit=min(page, n),
        )
        query_s = time.perf_counter() - began
        fresh = MilvusStore.open(str(home / f"up-{dim}-{page}.db"), Scope("t", "c", "v1"), dim)
        began = time.perf_counter()
        for at in range(0, upsert_n, page):
            fresh.client.upsert(fresh.name, data=rows_of(ids[at : at + page], data[at : at + page]))
        upsert_s = time.perf_counter() - began
        out.append(
            {
                "dim": dim,
                "rows per call": page,
                "query (ms)": round(query_s * 1000, 1),
                "query records/s": round(len(got) / query_s),
                f"upsert {upsert_n:,} (s)": round(upsert_s, 2),
                "upsert records/s": round(upsert_n / upsert_s),
            }
        )
    shards: list[ShardRef] = hash_shards(2)
    began = time.perf_counter()
    scanned = sum(len(b) for s in shards for b in store.iter_shard(s, 10_000))
    scan_s = time.perf_counter() - began
    began = time.perf_counter()
    listed = sum(len(b) for s in shards for b in store.iter_ids(s, 10_000))
    ids_s = time.perf_counter() - began
    assert scanned == listed == n, (scanned, listed, n)
    out.append(
        {
            "dim": dim,
            "rows per call": f"adapter ({VECTOR_PAGE})",
            "query (ms)": f"scan of {n:,}: {scan_s:.2f} s",
            "query records/s": round(n / scan_s),
            f"upsert {upsert_n:,} (s)": f"ids alone: {ids_s:.2f} s",
            "upsert records/s": "",
        }
    )
    return out


def main() -> None:
    p = script_parser(__doc__)
    p.add_argument("--records", type=int, default=40_000)
    p.add_argument("--dims", default="64,384")
    p.add_argument("--pages", default="256,512,2000,4000", help="rows per call, comma-separated")
    p.add_argument(
        "--upsert-records",
        type=int,
        default=10_000,
        help="records upserted per page size (large pages take minutes: keep it small)",
    )
    add_out_option(p)
    args = p.parse_args()
    home = scratch("milvus_pages")
    pages = [int(x) for x in args.pages.split(",")]
    rows: list[dict[str, Any]] = []
    try:
        for dim in (int(d) for d in args.dims.split(",")):
            rows += measure(home, args.records, dim, pages, min(args.upsert_records, args.records))
    finally:
        close_clients()
    measured = [r for r in rows if isinstance(r["rows per call"], int)]

    def plot(path: Path) -> None:
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5))
        for dim in sorted({r["dim"] for r in measured}):
            mine = [r for r in measured if r["dim"] == dim]
            xs = [r["rows per call"] for r in mine]
            ax.plot(xs, [r["query records/s"] for r in mine], "o-", label=f"query, d={dim}")
            ax.plot(xs, [r["upsert records/s"] for r in mine], "s--", label=f"upsert, d={dim}")
        ax.axvline(VECTOR_PAGE, color="grey", lw=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("rows per call")
        ax.set_ylabel("records/s")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(path, dpi=110)

    report(
        "milvus_pages",
        f"milvus-lite: rows per call against records/s ({args.records:,} records)",
        rows,
        {"adapter's page for vectors": VECTOR_PAGE},
        plot,
        out=args.out,
    )


if __name__ == "__main__":
    main()
