"""The measurements behind the defaults: copy batch size, and threads per concurrent index build.

    python bench/tuning.py --vectors 200000 --build-vectors 100000

1. Copy batch size: every shard of a built-in-store migration copied by ``copy_shard`` (as in
   ``copy_throughput``) with each batch size; vectors/s. The default (``batch_size`` in the
   spec) weighs this against what one batch costs: a kill re-copies up to one batch, and a
   pause or a throttle change waits for the batch in flight.
2. Threads per build: two shards' indexes (FAISS IVF-Flat and hnswlib HNSW) built at once in
   one process (as a worker's activity slots do) with every core each, with the cores split
   between them, and one after the other with every core. The default (``cpu_share``) splits
   the cores among the shards a migration builds or checks at once.
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
from pydantic import TypeAdapter

from bench.common import paired_bars, report, scratch, sized_parser
from bench.copy_throughput import vecmigrate_copy
from vecmigrate.data.datasets import clustered
from vecmigrate.indexes.artifacts import build_index, cpu_share
from vecmigrate.model.spec import IndexSpec, Metric

INDEXES = {
    "faiss_ivf_flat": {"kind": "faiss_ivf_flat", "nlist": 1024, "nprobe": 8},
    "hnswlib_hnsw": {"kind": "hnswlib_hnsw", "m": 16, "ef_construction": 200},
}


def batch_sizes(vectors: np.ndarray, sizes: list[int]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for size in sizes:
        seconds = vecmigrate_copy(scratch("tuning"), vectors, size)
        rows.append(
            {
                "batch size": size,
                "seconds": round(seconds, 2),
                "vectors/s": round(len(vectors) / seconds),
            }
        )
        print(f"batch {size:,}: {len(vectors) / seconds:,.0f} vectors/s", flush=True)
    return rows


def build_threads(vectors: np.ndarray) -> list[dict[str, Any]]:
    half = len(vectors) // 2
    ids = np.arange(len(vectors), dtype=np.int64)
    parts = [(ids[:half], vectors[:half]), (ids[half:], vectors[half:])]
    cores = cpu_share(1)
    plans = [
        ("two at once, every core each", 2, cores),
        ("two at once, cores split (default)", 2, cpu_share(2)),
        ("one after the other, every core", 1, cores),
    ]
    rows: list[dict[str, Any]] = []
    for name, raw in INDEXES.items():
        spec: IndexSpec = TypeAdapter(IndexSpec).validate_python(raw)
        for label, parallel, threads in plans:
            began = time.perf_counter()
            with ThreadPoolExecutor(parallel) as pool:
                jobs = [
                    pool.submit(build_index, spec, Metric.L2, i, v, threads=threads)
                    for i, v in parts
                ]
                for job in jobs:
                    job.result()
            seconds = time.perf_counter() - began
            rows.append(
                {
                    "index": name,
                    "plan": label,
                    "threads each": threads,
                    "seconds": round(seconds, 2),
                }
            )
            print(f"{name}, {label}: {seconds:.2f} s", flush=True)
    return rows


def main() -> None:
    p = sized_parser(__doc__, dim=128)
    p.add_argument("--vectors", type=int, default=200_000, help="for the batch-size sweep")
    p.add_argument("--build-vectors", type=int, default=100_000, help="per shard, two shards")
    p.add_argument("--sizes", default="1000,5000,10000,50000")
    args = p.parse_args()
    copy_rows = batch_sizes(
        clustered(args.vectors, args.dim, seed=3), [int(s) for s in args.sizes.split(",")]
    )
    build_rows = build_threads(clustered(2 * args.build_vectors, args.dim, seed=1))

    def plot(path: Path) -> None:
        import matplotlib.pyplot as plt

        fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
        left.plot(
            [r["batch size"] for r in copy_rows], [r["vectors/s"] for r in copy_rows], marker="o"
        )
        left.set_xscale("log")
        left.set_xlabel("copy batch size")
        left.set_ylabel("vectors/s")
        left.set_title("copy throughput by batch size")
        labels = [str(r["plan"]) for r in build_rows if r["index"] == "faiss_ivf_flat"]
        paired_bars(
            right,
            [lab.replace(", ", ",\n") for lab in labels],
            {
                name: [r["seconds"] for r in build_rows if r["index"] == name]
                for name in ("faiss_ivf_flat", "hnswlib_hnsw")
            },
            fontsize=7,
        )
        right.set_ylabel("seconds for two shards")
        right.set_title("threads per concurrent build")
        right.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(path, dpi=110)

    rows = [
        {"measure": f"copy, batch {r['batch size']:,}", "value": f"{r['vectors/s']:,} vectors/s"}
        for r in copy_rows
    ] + [
        {
            "measure": f"{r['index']}: {r['plan']} ({r['threads each']} each)",
            "value": f"{r['seconds']} s",
        }
        for r in build_rows
    ]
    report(
        "tuning",
        "what the defaults were chosen from",
        rows,
        {
            "copy batch default": "10,000 (spec batch_size)",
            "threads per build or check": f"cores / shards at once = {cpu_share(2)} here",
        },
        plot,
        out=args.out,
    )


if __name__ == "__main__":
    main()
