"""What `plan`'s estimates come from: each store's write and read rate, and each index kind's build
rate, on the same vectors in one run.

    python bench/build_rates.py --vectors 50000 --dim 128

For every store (built-in SQLite, PostgreSQL + pgvector from the test wheel, milvus-lite,
Qdrant's engine in-process): load the vectors as one version (records/s written), read them back
in 10,000-record batches (records/s read), then build every index kind that store can hold on
them - vecmigrate's own (FAISS, hnswlib; from the built-in store only, as the build reads the
same batches from any store) and the store's native ones (records/s indexed, from the call that
builds to the index being ready). The rates in ``vecmigrate.control.plan`` are these figures at
128 dimensions, rounded; the script prints them beside the table's.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from bench.common import report, scratch, sized_parser
from vecmigrate.control.plan import INDEX_ESTIMATES, STORE_RATES
from vecmigrate.data.datasets import clustered
from vecmigrate.indexes.build import build_native, build_shard
from vecmigrate.model.spec import (
    ARTIFACT_INDEX_KINDS,
    NATIVE_INDEX_KINDS,
    STORE_KINDS,
    VersionSpec,
)
from vecmigrate.records.sharding import hash_key, hash_shards
from vecmigrate.stores import WHOLE, Scope, VectorStore, open_store
from vecmigrate.stores.capabilities import SERVER_ONLY_KINDS
from vecmigrate.stores.milvus import close_clients
from vecmigrate.stores.qdrant import close_clients as close_qdrant
from vecmigrate.testing.postgres import start_postgres


def params(index: str, dim: int) -> dict[str, Any]:
    """The defaults, as a spec leaves them, except FAISS's lists (256: 1,024 would train on few
    vectors each here) and PQ's sub-vectors (the largest divisor of the dimension up to 16)."""
    if index == "faiss_ivf_flat":
        return {"nlist": 256}
    if index == "faiss_ivf_pq":
        return {"nlist": 256, "m": max(m for m in range(1, 17) if dim % m == 0)}
    return {}


def store_ref(kind: str, home: Path, pg_url: str | None) -> dict[str, Any]:
    if kind == "pgvector":
        return {"kind": "pgvector", "url": pg_url, "artifacts": str(home / "artifacts")}
    if kind == "milvus":
        return {"kind": "milvus", "uri": str(home / "milvus.db")}
    if kind == "qdrant":
        return {"kind": "qdrant", "path": str(home / "qdrant")}
    return {"kind": "builtin", "url": f"sqlite:///{home / 'store.db'}", "artifacts": str(home)}


def version(kind: str, index: str, dim: int, home: Path, pg_url: str | None) -> VersionSpec:
    return VersionSpec.model_validate(
        {
            "name": f"v-{index}",
            "store": store_ref(kind, home, pg_url),
            "embedding": {"model_id": "bench", "dimension": dim},
            "index": {"kind": index, **params(index, dim)},
        }
    )


def load(store: VectorStore, ids: np.ndarray, vectors: np.ndarray, batch: int) -> float:
    order = np.argsort(hash_key(ids), kind="stable")
    began = time.perf_counter()
    for at in range(0, len(ids), batch):
        rows = order[at : at + batch]
        store.upsert(ids[rows], vectors[rows])
    return time.perf_counter() - began


def read(store: VectorStore, batch: int) -> tuple[float, int]:
    began = time.perf_counter()
    n = sum(len(b) for b in store.iter_shard(WHOLE, batch))
    return time.perf_counter() - began, n


def build(store: VectorStore, spec: VersionSpec, directory: Path) -> float:
    began = time.perf_counter()
    if spec.index.kind in NATIVE_INDEX_KINDS:
        build_native(store, spec)
    else:
        build_shard(store, spec, hash_shards(1)[0], directory)
    return time.perf_counter() - began


def main() -> None:
    ap = sized_parser(__doc__, vectors=50_000, dim=128)
    ap.add_argument("--batch", type=int, default=10_000)
    ap.add_argument("--stores", default=",".join(STORE_KINDS))
    args = ap.parse_args()
    home = scratch("build-rates")
    ids = np.arange(1, args.vectors + 1, dtype=np.int64)
    vectors = clustered(args.vectors, args.dim, seed=11)
    stores = args.stores.split(",")
    server = start_postgres() if "pgvector" in stores else None
    pg_url = server.get_uri("postgres") if server is not None else None
    rows: list[dict[str, Any]] = []
    try:
        for kind in stores:
            # Milvus runs here as milvus-lite, which builds FLAT and IVF_FLAT only.
            natives = [
                k
                for k in NATIVE_INDEX_KINDS
                if k.startswith(kind + "_") and k not in SERVER_ONLY_KINDS
            ]
            indexes = [*natives, *(ARTIFACT_INDEX_KINDS if kind == "builtin" else ())]
            for number, index in enumerate(indexes):
                spec = version(kind, index, args.dim, home, pg_url)
                store = open_store(
                    spec.store, Scope("bench", "rates", spec.name), args.dim, metric="l2"
                )
                wrote = load(store, ids, vectors, args.batch)
                took, n = read(store, args.batch)
                assert n == args.vectors, (kind, n)
                built = build(store, spec, home / "artifacts" / spec.name)
                rows.append(
                    {
                        "store": kind,
                        "index": index,
                        "write/s": round(args.vectors / wrote) if number == 0 else "",
                        "read/s": round(args.vectors / took) if number == 0 else "",
                        "build/s": round(args.vectors / built),
                        "plan's build/s": round(INDEX_ESTIMATES[index].build_rate),
                    }
                )
                print(rows[-1], flush=True)
    finally:
        close_clients()
        close_qdrant()
        if server is not None:
            server.cleanup()
    summary = {
        f"plan's {k} read/write": f"{r.read:,.0f} / {r.write:,.0f}" for k, r in STORE_RATES.items()
    }
    summary["vectors x dim"] = f"{args.vectors:,} x {args.dim}"

    def plot(path: Path) -> None:
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(9, 4))
        labels = [f"{r['store']}\n{r['index']}" for r in rows]
        ax.bar(labels, [r["build/s"] for r in rows])
        ax.set_yscale("log")
        ax.set_ylabel("vectors indexed / s")
        ax.tick_params(axis="x", labelsize=6)
        fig.tight_layout()
        fig.savefig(path)

    report(
        "build_rates",
        f"write, read and index build rates, {args.vectors:,} x {args.dim}",
        rows,
        summary,
        plot,
        out=args.out,
    )


if __name__ == "__main__":
    main()
