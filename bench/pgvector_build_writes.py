"""Application writes while pgvector builds its HNSW index: idle, during the adapter's
concurrent build, and during a plain ``CREATE INDEX`` in a transaction, in one run.

    python bench/pgvector_build_writes.py --vectors 100000 --dim 128

On PostgreSQL with pgvector from the test wheel, a version's table of ``--vectors`` vectors.
One application thread upserts (``INSERT ... ON CONFLICT``) and deletes rows with plain SQL on
its own connection, one autocommitted statement at a time, without pause, for the three
phases: ``--idle-seconds`` with no build, then while the adapter builds the index
(``create_index``: ``CREATE INDEX CONCURRENTLY`` on a connection of its own), then while a
plain ``CREATE INDEX`` builds the same index in a transaction. A third connection watches
``pg_stat_progress_create_index``; a write counts for a build when it began after the build was
first seen and ended before it was last seen. Printed per phase: writes, writes a second,
failures, p50/p99/max milliseconds.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
from sqlalchemy import text

from bench.common import report, sized_parser
from vecmigrate.catalog.engines import dispose_engines
from vecmigrate.data.datasets import clustered
from vecmigrate.model.spec import Metric, PgvectorHnsw
from vecmigrate.stores import PgvectorStore, Scope
from vecmigrate.stores.pgvector import index_using
from vecmigrate.testing.buildload import Write, Writer, during, latency, while_building
from vecmigrate.testing.postgres import start_postgres


def phase(
    name: str, timed: list[Write], committed: int, seconds: float, build_s: float | None
) -> dict[str, Any]:
    """A row: writes committed (and a second) in the phase, and the latency of every write that
    ran in it (a write a build blocked ends after it, so it counts among these, not those)."""
    figures = latency(timed)
    return {
        "phase": name,
        "build s": round(build_s, 2) if build_s is not None else "",
        "writes committed": committed,
        "writes/s": round(committed / seconds) if seconds > 0 else 0,
        "failed": figures["failed"],
        "p50 ms": figures.get("p50 ms", ""),
        "p99 ms": figures.get("p99 ms", ""),
        "max ms": figures.get("max ms", ""),
    }


def under_build(uri: str, store: PgvectorStore, dim: int, name: str, build: Any) -> dict[str, Any]:
    """Write while ``build()`` runs; the phase's row."""
    writes, watch, took = while_building(uri, store.table, dim, build, pause=0)
    window = watch.window()
    if window is None:
        raise SystemExit("the build was never seen in pg_stat_progress_create_index: add --vectors")
    lo, hi = window
    overlapping = [w for w in writes if w.ended > lo and w.began < hi]
    return phase(name, overlapping, len(during(writes, window)), hi - lo, took)


def main() -> None:
    p = sized_parser(__doc__, vectors=100_000, dim=128)
    p.add_argument("--m", type=int, default=16)
    p.add_argument("--ef-construction", type=int, default=64)
    p.add_argument("--workers", type=int, default=0, help="parallel maintenance workers")
    p.add_argument("--memory", default="256MB", help="maintenance_work_mem of the build")
    p.add_argument("--idle-seconds", type=float, default=5.0)
    args = p.parse_args()
    server = start_postgres()
    try:
        server.psql("CREATE DATABASE bench;")
        uri = server.get_uri("bench")
        store = PgvectorStore.open(uri, Scope("bench", "build", "v1"), args.dim)
        data = clustered(args.vectors, args.dim, seed=5)
        for at in range(0, args.vectors, 20_000):
            store.upsert(np.arange(at, min(at + 20_000, args.vectors)), data[at : at + 20_000])
        spec = PgvectorHnsw(
            m=args.m,
            ef_construction=args.ef_construction,
            parallel_workers=args.workers,
            maintenance_work_mem=args.memory,
        )
        rows: list[dict[str, Any]] = []

        writer = Writer(uri, store.table, args.dim, pause=0).start()
        time.sleep(args.idle_seconds)
        idle = writer.stop()
        rows.append(phase("idle", idle, len(idle), args.idle_seconds, None))

        seen: list[Any] = []
        rows.append(
            under_build(
                uri,
                store,
                args.dim,
                "CREATE INDEX CONCURRENTLY",
                lambda: store.create_index(spec, Metric.L2, seen.append, 1.0),
            )
        )

        with store.engine.begin() as conn:
            conn.execute(text(f"DROP INDEX {store.index_name(spec, Metric.L2)}"))
        using = index_using(spec, Metric.L2, args.dim)

        def plain() -> None:
            with store.engine.begin() as conn:
                conn.execute(text(f"SET LOCAL max_parallel_maintenance_workers = {args.workers}"))
                conn.execute(text(f"SET LOCAL maintenance_work_mem = '{args.memory}'"))
                conn.execute(text(f"CREATE INDEX plain_build ON {store.table} USING {using}"))

        rows.append(under_build(uri, store, args.dim, "CREATE INDEX in a transaction", plain))
        dispose_engines()
    finally:
        server.cleanup()

    def plot(path: Path) -> None:
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6.5, 3.2))
        names = ["idle", "CREATE INDEX\nCONCURRENTLY", "CREATE INDEX\nin a transaction"]
        ax.bar(names, [r["writes/s"] for r in rows], color=["grey", "tab:green", "tab:red"])
        ax.set_ylabel("writes/s committed")
        for i, r in enumerate(rows):
            ax.annotate(
                f"{r['writes committed']:,} writes, p99 {r['p99 ms']:,} ms",
                (i, r["writes/s"]),
                ha="center",
                va="bottom",
                fontsize=8,
            )
        ax.set_title(f"{args.vectors:,} x {args.dim}: writes during an HNSW build", fontsize=9)
        fig.tight_layout()
        fig.savefig(path, dpi=110)

    report(
        "pgvector_build_writes",
        f"writes to a {args.vectors:,} x {args.dim} table while pgvector builds HNSW "
        f"(m {args.m}, ef_construction {args.ef_construction}, {args.workers} workers)",
        rows,
        {
            "progress readings during the concurrent build": len(seen),
            "last one": seen[-1].line() if seen else "none (the build took under a second)",
        },
        plot,
        out=args.out,
    )


if __name__ == "__main__":
    main()
