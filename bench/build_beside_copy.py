"""What a copy's streamed exact search costs an index build running beside it, by the search's
FAISS threads.

    python bench/build_beside_copy.py --vectors 250000 --dim 128 --repeat 3

Where each shard's index is built as its copy ends (blue-green, offline), the next shard's copy
runs beside a build that takes the cores it is given. The copy folds the exact search of the
gate's queries over each batch it reads (``ExactKnn``, FAISS brute force, the copy activity's
code). This runs one hnswlib build of ``--vectors`` vectors on every core, alone and beside that
fold over as many other vectors (``--queries`` queries, batches of ``--batch-size``) with 1
and with 2 OpenMP threads, the order rotating from pair to pair, and prints each build's time
over the build alone in the same pair, and the search's own time. The copy activity gives its
search one thread where builds run beside it (``vecmigrate.data.backfill.copy_search_threads``).
"""

from __future__ import annotations

import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from bench.common import bar_chart, report, sized_parser
from vecmigrate.data.datasets import clustered
from vecmigrate.data.seed import sequential_ids
from vecmigrate.indexes.artifacts import build_index, cpu_share, set_openmp_threads
from vecmigrate.model.spec import HnswlibHnsw, Metric
from vecmigrate.records.vectors import ExactKnn


def fold(
    queries: np.ndarray, data: np.ndarray, batch: int, threads: int, took: list[float]
) -> None:
    """The copy's streamed exact search over ``data``, on ``threads`` OpenMP threads."""
    set_openmp_threads(threads)
    began = time.perf_counter()
    knn = ExactKnn(queries, 10, Metric.L2)
    ids = sequential_ids(len(data))
    for start in range(0, len(data), batch):
        knn.add(ids[start : start + batch], data[start : start + batch])
    took.append(time.perf_counter() - began)


def main() -> None:
    p = sized_parser(__doc__, vectors=250_000, dim=128, batch_size=10_000)
    p.add_argument("--queries", type=int, default=1_000, help="the gate's sample")
    p.add_argument("--repeat", type=int, default=3, help="pairs (each: alone, 1 thread, 2)")
    args = p.parse_args()
    n, dim = args.vectors, args.dim
    vectors = clustered(n, dim, seed=4)
    copied = clustered(n, dim, seed=5)
    queries = copied[: args.queries].copy()
    ids = sequential_ids(n)
    spec = HnswlibHnsw(m=16, ef_construction=200, ef_search=64)
    cores = cpu_share(1)

    def build(search_threads: int | None) -> tuple[float, float | None]:
        took: list[float] = []
        beside = None
        if search_threads is not None:
            beside = threading.Thread(
                target=fold, args=(queries, copied, args.batch_size, search_threads, took)
            )
        began = time.perf_counter()
        if beside is not None:
            beside.start()
        build_index(spec, Metric.L2, ids, vectors, threads=cores, prepared=True)
        seconds = time.perf_counter() - began
        if beside is not None:
            beside.join()
        return seconds, (took[0] if took else None)

    modes: list[int | None] = [None, 1, 2]
    runs: dict[int | None, list[tuple[float, float | None]]] = {m: [] for m in modes}
    for pair in range(args.repeat):
        order = modes[pair % 3 :] + modes[: pair % 3]
        for mode in order:
            runs[mode].append(build(mode))
        print(
            f"pair {pair + 1}: alone {runs[None][-1][0]:.2f} s, beside 1 thread "
            f"{runs[1][-1][0]:.2f} s, beside 2 {runs[2][-1][0]:.2f} s",
            flush=True,
        )
    median = statistics.median
    rows: list[dict[str, Any]] = []
    for mode in modes:
        over = [b[0] / a[0] for a, b in zip(runs[None], runs[mode], strict=True)]
        searches = [s for _, s in runs[mode] if s is not None]
        rows.append(
            {
                "build": "alone" if mode is None else f"beside a search on {mode} thread(s)",
                "build seconds": round(median(b for b, _ in runs[mode]), 2),
                "over alone (pairs)": f"{median(over):.3f} ({', '.join(f'{x:.3f}' for x in over)})",
                "search seconds": round(median(searches), 2) if searches else "",
            }
        )
    report(
        f"build_beside_copy_{n}",
        f"hnswlib build of {n:,} x {dim} on {cores} thread(s), beside a copy's exact search",
        rows,
        {
            "queries, batch": f"{args.queries:,}, {args.batch_size:,}",
            "cores": str(cores),
        },
        bar_chart(
            [str(r["build"]) for r in rows],
            [float(r["build seconds"]) for r in rows],
            value_label="build seconds (median)",
            title=f"hnswlib build of {n:,} x {dim} beside a copy's exact search",
            figsize=(7, 3),
            horizontal=True,
        ),
        out=args.out,
    )


if __name__ == "__main__":
    main()
