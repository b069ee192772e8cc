"""The copy phase alone: vecmigrate's shard copy against a raw SQLite copy and peer tools.

    python bench/copy_throughput.py --vectors 200000 --dim 128

Same vectors, same run:
- vecmigrate: every shard of a built-in-store migration copied by ``copy_shard`` (keyset scan,
  checks, journal write per batch, upsert, running checksum), no index build, as the copy
  activity runs it: with the shard checks streamed from its batches (both profiles, each
  record's share of them, the exact search of the gate's queries); and the same copy without
  them, for what they cost;
- raw SQLite: the same rows read from the store's table and inserted into a table of the same
  shape in another SQLite database with executemany, same pragmas (WAL, synchronous=FULL),
  same batch size;
- qdrant-client ``migrate()`` between two local-mode clients (its default batch size);
- vector-io (``vdf-io``): ``export_vdf`` from one LanceDB table to its Parquet format, then
  ``import_vdf`` into another LanceDB database, run with ``--vector-io PYTHON``, a Python with
  vdf-io installed (``bench/peers/setup_vector_io.sh`` makes one; it cannot share
  vecmigrate's environment). Reported twice: the whole commands as a user runs them, and the
  times the tool itself prints (its start-up, about 10 s of importing every database client
  it supports, left out).
vecmigrate (both ways) and the raw copy run ``--repeat`` rounds on fresh databases, the order
rotating, and the medians are compared (the ratio of each round is printed too).
Targets: vecmigrate (with its streamed checks) at least 0.9 of the raw copy, and at least
twice the best peer's points/s.
"""

from __future__ import annotations

import sqlite3
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from bench.common import (
    bar_chart,
    report,
    scratch,
    sized_parser,
    timed_qdrant_migrate,
)
from vecmigrate.catalog.catalog import Catalog
from vecmigrate.catalog.journal import Journal
from vecmigrate.config import sqlite_url
from vecmigrate.data.backfill import copy_search_threads, copy_shard, prepare
from vecmigrate.data.datasets import clustered
from vecmigrate.data.seed import seed_collection, sequential_ids
from vecmigrate.indexes.artifacts import set_openmp_threads
from vecmigrate.model.spec import BuiltinStoreRef, parse_spec
from vecmigrate.testing.chaos import builtin_version
from vecmigrate.validation import stream


def vecmigrate_copy(home: Path, vectors: np.ndarray, batch: int) -> float:
    """Seed v1 in ``home`` and time vecmigrate copying it to v2."""
    return seeded_copy(home, vectors, batch)()


def seeded_copy(
    home: Path, vectors: np.ndarray, batch: int, checks: bool = False
) -> Callable[[], float]:
    """Seed v1 in ``home``; the returned call times vecmigrate copying it to v2 (with
    ``checks``, streaming the shard checks from its batches as the copy activity does)."""
    n, dim = vectors.shape
    catalog = Catalog(sqlite_url(home / "catalog.db"))
    src = BuiltinStoreRef(url=sqlite_url(home / "source.db"), artifacts=str(home / "a"))
    dst = BuiltinStoreRef(url=sqlite_url(home / "target.db"), artifacts=str(home / "b"))
    v1 = builtin_version("v1", src, dim, {"kind": "faiss_flat"})
    seed_collection(catalog, "default", "bench", v1, sequential_ids(n), vectors, shards=1)
    spec = parse_spec(
        {
            "id": "copy-bench",
            "collection": "bench",
            "source": v1.model_dump(mode="json"),
            "target": builtin_version("v2", dst, dim, {"kind": "faiss_flat"}).model_dump(
                mode="json"
            ),
            "shards": {"count": 4},
            "batch_size": batch,
        }
    )
    prep = prepare(catalog, spec, "bench")
    journal = Journal(catalog)

    def copy() -> float:
        # FAISS's threads for the streamed exact search, as the copy activity sets them on a
        # worker of the default concurrency (4 activities).
        set_openmp_threads(copy_search_threads(spec, 4))
        began = time.perf_counter()
        for shard in prep.shards:
            watch = partial(stream.open_stream, journal, spec, shard) if checks else None
            copy_shard(spec, shard, journal, watch=watch)
        return time.perf_counter() - began

    return copy


def paired_copies(
    vectors: np.ndarray, batch: int, repeat: int
) -> tuple[list[float], list[float], list[float]]:
    """Seconds of vecmigrate's copy with the streamed shard checks (as the copy activity runs
    it), of the same copy without them, and of the raw copy: ``repeat`` rounds on fresh
    databases, which goes first rotating."""
    runs: dict[str, list[float]] = {"checks": [], "plain": [], "raw": []}
    for r in range(repeat):
        home, other = scratch("copy"), scratch("copy-plain")
        calls: dict[str, Callable[[], float]] = {
            "checks": seeded_copy(home, vectors, batch, checks=True),
            "plain": seeded_copy(other, vectors, batch),
            "raw": partial(raw_copy, home, batch),
        }
        names = list(calls)
        for name in names[r % 3 :] + names[: r % 3]:
            runs[name].append(calls[name]())
    return runs["checks"], runs["plain"], runs["raw"]


def raw_copy(home: Path, batch: int) -> float:
    """Read the source rows and insert them into a fresh SQLite database, batch by batch."""
    src = sqlite3.connect(home / "source.db")
    dst = sqlite3.connect(home / "raw.db")
    for conn in (src, dst):
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
    # The same table shape as the built-in store (clustered by shard key, a unique id index),
    # so both do the same work in SQLite.
    dst.execute(
        "CREATE TABLE v (ns INTEGER NOT NULL, id INTEGER NOT NULL, h INTEGER NOT NULL, "
        "vec BLOB NOT NULL, PRIMARY KEY (ns, h, id)) WITHOUT ROWID"
    )
    dst.execute("CREATE UNIQUE INDEX v_id ON v (ns, id)")
    began = time.perf_counter()
    cursor = src.execute("SELECT 1, id, h, vec FROM vm_vectors ORDER BY h, id")
    while True:
        rows = cursor.fetchmany(batch)
        if not rows:
            break
        with dst:
            dst.executemany("INSERT OR REPLACE INTO v (ns, id, h, vec) VALUES (?, ?, ?, ?)", rows)
    seconds = time.perf_counter() - began
    src.close()
    dst.close()
    return seconds


def qdrant_migrate(home: Path, vectors: np.ndarray) -> float | None:
    try:
        from qdrant_client import QdrantClient, models
    except ImportError:
        return None
    n, dim = vectors.shape
    source = QdrantClient(path=str(home / "qdrant-src"))
    source.create_collection(
        "bench", vectors_config=models.VectorParams(size=dim, distance=models.Distance.EUCLID)
    )
    for start in range(0, n, 10_000):
        stop = min(n, start + 10_000)
        source.upload_collection("bench", vectors[start:stop], ids=list(range(start + 1, stop + 1)))
    return timed_qdrant_migrate(source, QdrantClient(path=str(home / "qdrant-dst")), "bench", n)


_MAKE_LANCE = """
import sys, lancedb, numpy as np, pyarrow as pa
vectors = np.load(sys.argv[2])
n, dim = vectors.shape
table = pa.table({
    "id": pa.array(np.arange(1, n + 1, dtype=np.int64)),
    "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim),
})
lancedb.connect(sys.argv[1]).create_table("bench", data=table)
"""

_COUNT_LANCE = """
import sys, lancedb
db = lancedb.connect(sys.argv[1])
print(sum(db.open_table(t).count_rows() for t in db.table_names()))
"""


def _tool_seconds(output: str) -> float:
    """The duration vector-io prints ("Time taken: 0.20 seconds" or "... 00:01:02")."""
    total = 0.0
    for line in output.splitlines():
        if "Time taken" not in line:
            continue
        value = line.split(":", 1)[1].strip().removesuffix("seconds").strip()
        if value.count(":") == 2:
            h, m, sec = (float(x) for x in value.split(":"))
            total += h * 3600 + m * 60 + sec
        else:
            total += float(value)
    return total


def vector_io(home: Path, vectors: np.ndarray, python: Path) -> tuple[float, float] | None:
    """Export one LanceDB table with vector-io and import it into another: (wall, tool) s."""
    import subprocess

    bindir = python.parent
    work = home / "vector-io"
    work.mkdir()
    np.save(work / "vectors.npy", vectors)
    subprocess.run(
        [str(python), "-c", _MAKE_LANCE, str(work / "src"), str(work / "vectors.npy")],
        check=True,
    )

    def run_tool(*argv: str) -> subprocess.CompletedProcess[str]:
        """One vector-io command in the work folder; its output, which holds its own timing."""
        return subprocess.run(
            list(argv),
            cwd=work,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            check=True,
        )

    began = time.perf_counter()
    export = run_tool(
        str(bindir / "export_vdf"),
        "-m",
        "none",
        "--no-push_to_hub",
        "lancedb",
        "--endpoint",
        str(work / "src"),
        "--tables",
        "bench",
        "--lancedb_api_key",
        "none",
    )
    folder = next(p for p in work.iterdir() if p.name.startswith("vdf_"))
    imported = run_tool(
        str(bindir / "import_vdf"),
        "-d",
        str(folder),
        "--create_new",
        "lancedb",
        "--endpoint",
        str(work / "dst"),
        "--lancedb_api_key",
        "none",
    )
    wall = time.perf_counter() - began
    count = subprocess.run(
        [str(python), "-c", _COUNT_LANCE, str(work / "dst")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert int(count.stdout.strip().splitlines()[-1]) == len(vectors), count.stdout
    tool = _tool_seconds(export.stdout + export.stderr) + _tool_seconds(
        imported.stdout + imported.stderr
    )
    return wall, tool


def main() -> None:
    p = sized_parser(__doc__, vectors=200_000, dim=128)
    p.add_argument("--batch", type=int, default=10_000)
    p.add_argument(
        "--repeat", type=int, default=3, help="vecmigrate / raw pairs (medians are reported)"
    )
    p.add_argument(
        "--vector-io",
        type=Path,
        default=None,
        help="a Python with vdf-io, lancedb and pylance (bench/peers/setup_vector_io.sh)",
    )
    args = p.parse_args()
    vectors = clustered(args.vectors, args.dim, seed=8)
    ours_runs, plain_runs, raw_runs = paired_copies(vectors, args.batch, args.repeat)
    ours, raw = statistics.median(ours_runs), statistics.median(raw_runs)
    plain = statistics.median(plain_runs)
    home = scratch("copy")
    peer = qdrant_migrate(home, vectors)
    vio = vector_io(home, vectors, args.vector_io) if args.vector_io else None
    n = args.vectors
    rows = [
        {
            "tool": f"vecmigrate copy_shard, streamed checks (median of {args.repeat})",
            "seconds": round(ours, 2),
            "points_per_s": round(n / ours),
        },
        {
            "tool": f"vecmigrate copy_shard, no checks (median of {args.repeat})",
            "seconds": round(plain, 2),
            "points_per_s": round(n / plain),
        },
        {
            "tool": f"raw SQLite executemany (median of {args.repeat})",
            "seconds": round(raw, 2),
            "points_per_s": round(n / raw),
        },
    ]
    if peer is not None:
        rows.append(
            {
                "tool": "qdrant-client migrate()",
                "seconds": round(peer, 2),
                "points_per_s": round(n / peer),
            }
        )

    if vio is not None:
        rows.append(
            {
                "tool": "vector-io LanceDB->LanceDB (commands)",
                "seconds": round(vio[0], 2),
                "points_per_s": round(n / vio[0]),
            }
        )
        rows.append(
            {
                "tool": "vector-io LanceDB->LanceDB (its own timer)",
                "seconds": round(vio[1], 2),
                "points_per_s": round(n / max(vio[1], 1e-3)),
            }
        )
    peers = [r["points_per_s"] for r in rows[3:]]

    summary = {
        "vecmigrate / raw SQLite": f"{raw / ours:.2f} (target >= 0.9)",
        "each round": ", ".join(f"{w / o:.2f}" for o, w in zip(ours_runs, raw_runs, strict=True)),
        "without the streamed checks / raw SQLite": f"{raw / plain:.2f}",
        "each round, without": ", ".join(
            f"{w / o:.2f}" for o, w in zip(plain_runs, raw_runs, strict=True)
        ),
        "vecmigrate / best peer": (
            f"{n / ours / max(peers):.2f}x (target >= 2)" if peers else "no peer installed"
        ),
    }
    report(
        "copy_throughput",
        f"copy phase alone: {n:,} x {args.dim}",
        rows,
        summary,
        bar_chart(
            [r["tool"] for r in rows],
            [r["points_per_s"] for r in rows],
            value_label="points per second",
            title=f"copy of {n:,} x {args.dim} vectors",
            figsize=(7, 3),
            horizontal=True,
        ),
        out=args.out,
    )


if __name__ == "__main__":
    main()
