"""Copy throughput of records with a payload of about 1 KB of JSON and without, next to
qdrant-client's own ``migrate()`` on the same data in the same run.

    python bench/payload_copy.py --points 20000 --dim 128

The data: ``--points`` points with UUID ids and one vector of ``--dim`` float32 in a Qdrant
collection made by qdrant-client (local mode), once without payload and once with a payload of
about ``--payload-bytes`` of canonical JSON (a title, a year, a timestamp, a list of tags and a
text body under a nested object). Each is copied to a new collection twice:
- vecmigrate: the collection adopted as a migration's source, every shard copied by
  ``copy_shard`` (scan, screening, quarantine, journal write per batch, record write, running
  checksum over ids, vectors and payload) into a new Qdrant collection, no index build;
- qdrant-client ``migrate()`` from the same collection into another local-mode client (its
  default batch size).
Both sides end with every point in the target (checked). ``--repeat`` runs of each, which goes
first alternating; medians reported. The local mode is Python throughout, so both sides are
bound by it: the figures compare the tools, not Qdrant's server.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from bench.common import (
    alternating,
    paired_bar_chart,
    report,
    scratch,
    sized_parser,
    timed_qdrant_migrate,
)
from vecmigrate.catalog.catalog import Catalog
from vecmigrate.catalog.journal import Journal
from vecmigrate.config import sqlite_url
from vecmigrate.data.backfill import copy_shard, open_target, prepare
from vecmigrate.data.datasets import clustered
from vecmigrate.model.spec import MigrationSpec, parse_spec
from vecmigrate.stores.qdrant import close_clients

WORDS = ["vector", "index", "shard", "payload", "record", "tenant", "cutover", "ledger", "gate"]


def payloads(n: int, size: int, seed: int = 3) -> list[dict[str, Any]]:
    """``n`` payloads of about ``size`` bytes of JSON each."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        # About 200 bytes go to the other fields and the JSON around them.
        body_words = max(1, (size - 60) // 6)
        body = " ".join(WORDS[j] for j in rng.integers(0, len(WORDS), body_words))
        out.append(
            {
                "title": f"document {i}",
                "year": 1990 + i % 35,
                "created": f"2024-0{1 + i % 9}-1{i % 10}T08:30:00Z",
                "tags": [WORDS[j] for j in rng.integers(0, len(WORDS), 3)],
                "meta": {"body": body[: max(1, size - 160)], "rank": int(i % 13), "w": 0.25 * i},
            }
        )
    return out


def make_collection(path: Path, vectors: np.ndarray, ids: list[str], with_payload: bool) -> int:
    """The source collection, as an application made it; returns bytes of JSON per point."""
    from qdrant_client import QdrantClient, models

    n, dim = vectors.shape
    client = QdrantClient(path=str(path))
    client.create_collection(
        "docs", vectors_config=models.VectorParams(size=dim, distance=models.Distance.EUCLID)
    )
    bodies = payloads(n, ARGS.payload_bytes) if with_payload else None
    for start in range(0, n, 5_000):
        stop = min(n, start + 5_000)
        client.upsert(
            "docs",
            points=models.Batch(
                ids=ids[start:stop],
                vectors=vectors[start:stop].tolist(),
                payloads=bodies[start:stop] if bodies else None,
            ),
        )
    client.close()
    if not bodies:
        return 0
    return int(np.mean([len(json.dumps(b, separators=(",", ":"))) for b in bodies[:1000]]))


def spec_for(home: Path, source: Path, dim: int, batch: int) -> MigrationSpec:
    embedding = {"model_id": "m", "dimension": dim, "metric": "l2"}
    return parse_spec(
        {
            "id": f"payload-{uuid.uuid4().hex[:6]}",
            "collection": "docs",
            "source": {
                "name": "v1",
                "store": {"kind": "qdrant", "path": str(source), "collection": "docs"},
                "embedding": embedding,
                "index": {"kind": "faiss_flat"},
            },
            "target": {
                "name": "v2",
                "store": {"kind": "qdrant", "path": str(home / "vm-dst"), "collection": "docs"},
                "embedding": embedding,
                "index": {"kind": "faiss_flat"},
            },
            "shards": {"count": 4},
            "batch_size": batch,
        }
    )


def vecmigrate_copy(home: Path, source: Path, n: int, dim: int, batch: int) -> float:
    shutil.rmtree(home / "vm-dst", ignore_errors=True)
    catalog = Catalog(sqlite_url(home / f"catalog-{uuid.uuid4().hex[:6]}.db"))
    spec = spec_for(home, source, dim, batch)
    prep = prepare(catalog, spec, "bench")
    journal = Journal(catalog)
    began = time.perf_counter()
    for shard in prep.shards:
        copy_shard(spec, shard, journal)
    seconds = time.perf_counter() - began
    assert open_target(spec).count() == n
    close_clients()
    catalog.engine.dispose()
    return seconds


def qdrant_migrate(home: Path, source: Path, n: int) -> float:
    from qdrant_client import QdrantClient

    shutil.rmtree(home / "q-dst", ignore_errors=True)
    src = QdrantClient(path=str(source))
    return timed_qdrant_migrate(src, QdrantClient(path=str(home / "q-dst")), "docs", n)


def run(home: Path, vectors: np.ndarray, with_payload: bool) -> dict[str, Any]:
    n, dim = vectors.shape
    rng = np.random.default_rng(7)
    ids = [str(uuid.UUID(bytes=rng.bytes(16), version=4)) for _ in range(n)]
    source = home / ("src-payload" if with_payload else "src-plain")
    size = make_collection(source, vectors, ids, with_payload)
    ours: list[float] = []
    theirs: list[float] = []
    for r in range(ARGS.repeat):
        mine, other = alternating(
            r,
            lambda: vecmigrate_copy(home, source, n, dim, ARGS.batch),
            lambda: qdrant_migrate(home, source, n),
        )
        ours.append(mine)
        theirs.append(other)
    vm, qc = statistics.median(ours), statistics.median(theirs)
    return {
        "payload": f"~{size} B JSON" if with_payload else "none",
        "points": n,
        "vecmigrate s": vm,
        "vecmigrate points/s": n / vm,
        "qdrant-client migrate() s": qc,
        "migrate() points/s": n / qc,
        "vecmigrate / migrate() speed": qc / vm,
    }


ARGS = argparse.Namespace()


def main() -> None:
    p = sized_parser(__doc__, dim=128)
    p.add_argument("--points", type=int, default=20_000)
    p.add_argument("--payload-bytes", type=int, default=1_000, help="JSON per point, about")
    p.add_argument("--batch", type=int, default=2_000)
    p.add_argument("--repeat", type=int, default=3, help="runs of each (medians are reported)")
    p.parse_args(namespace=ARGS)
    vectors = clustered(ARGS.points, ARGS.dim, seed=8)
    home = scratch("payload")
    rows = [run(home, vectors, False), run(home, vectors, True)]

    plot = paired_bar_chart(
        [f"payload: {r['payload']}" for r in rows],
        {
            "vecmigrate": [r["vecmigrate points/s"] for r in rows],
            "migrate()": [r["migrate() points/s"] for r in rows],
        },
        ylabel="points/s",
    )
    report(
        "payload_copy",
        f"Qdrant collection to a new one, {ARGS.points:,} x {ARGS.dim}, UUID ids",
        rows,
        {"repeat": ARGS.repeat, "batch": ARGS.batch},
        plot,
        ARGS.out,
    )


if __name__ == "__main__":
    main()
