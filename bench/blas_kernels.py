"""What the OpenBLAS kernel FAISS loads costs the BLAS work of a migration, per choice of kernel.

    python bench/blas_kernels.py --vectors 100000 --dim 128 --rounds 3

Each choice runs in a fresh process (OpenBLAS reads ``OPENBLAS_CORETYPE`` once, when it
loads): OpenBLAS's own (the variable unset), this environment's (when it sets one), and the
``vecmigrate`` program's (:mod:`vecmigrate.blas`; none on most machines, where OpenBLAS's own
is kept). Each process times, on one thread, the exact search of the gate's 1,000 queries over
the vectors in batches of 10,000 as a copy streams them (``ExactKnn``, 22 neighbours: the gate's
k of 10, plus one, twice), and the k-means of a FAISS IVF index's training (256 lists, 20
iterations, on 256 x 39 points); the rounds rotate the order of the choices. The figure is
each choice's median over the rounds against OpenBLAS's own; the summary says whether every
process found the same neighbours.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import paired_bar_chart, report, sized_parser
from vecmigrate.blas import SWITCH, VARIABLE, chosen_core, this_cpu

QUERIES = 1000
K = 22
BATCH = 10_000
LISTS = 256


def child(n: int, dim: int) -> dict[str, Any]:
    """One process's figures: its FAISS OpenBLAS kernel, the two timings, the ids' digest."""
    import faiss
    import numpy as np
    from threadpoolctl import threadpool_info  # type: ignore[import-untyped]

    from vecmigrate.data.datasets import clustered
    from vecmigrate.records.vectors import ExactKnn

    faiss.omp_set_num_threads(1)
    data = clustered(n, dim, seed=3)
    queries = data[np.random.default_rng(4).choice(n, QUERIES, replace=False)]
    ids = np.arange(n, dtype=np.int64)
    t = time.perf_counter()
    knn = ExactKnn(queries, K, "l2")
    for start in range(0, n, BATCH):
        knn.add(ids[start : start + BATCH], data[start : start + BATCH])
    search = time.perf_counter() - t
    train = data[: min(n, LISTS * 39)]
    t = time.perf_counter()
    kmeans = faiss.Kmeans(dim, LISTS, niter=20, seed=5)
    kmeans.train(train)
    kmeans_seconds = time.perf_counter() - t
    kernels = [
        lib.get("architecture")
        for lib in threadpool_info()
        if lib.get("internal_api") == "openblas" and "faiss" in str(lib.get("filepath"))
    ]
    return {
        "kernel": kernels[0] if kernels else "unknown",
        "exact_search_s": search,
        "kmeans_s": kmeans_seconds,
        "ids": hashlib.sha256(knn.result()[1].tobytes()).hexdigest(),
    }


def choices() -> dict[str, str | None]:
    """The kernels to compare, by who chooses them (None: OpenBLAS's own)."""
    env = {k: v for k, v in os.environ.items() if k not in (VARIABLE, SWITCH)}
    out: dict[str, str | None] = {"OpenBLAS's own": None}
    if os.environ.get(VARIABLE):
        out[f"this environment's ({VARIABLE})"] = os.environ[VARIABLE]
    ours = chosen_core(this_cpu(), env)
    if ours is not None:
        out["vecmigrate's"] = ours
    return out


def run_child(core: str | None, n: int, dim: int) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k != VARIABLE}
    env["OMP_NUM_THREADS"] = "1"
    if core is not None:
        env[VARIABLE] = core
    done = subprocess.run(
        [sys.executable, __file__, "--child", "--vectors", str(n), "--dim", str(dim)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    p = sized_parser(__doc__, vectors=100_000, dim=128)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.vectors, args.dim)))
        return
    options = choices()
    names = list(options)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            got = run_child(options[name], args.vectors, args.dim)
            runs[name].append(got)
            print(
                f"round {r + 1} {name}: kernel {got['kernel']}, exact search "
                f"{got['exact_search_s']:.3f} s, k-means {got['kmeans_s']:.3f} s",
                flush=True,
            )
    # Kernels round differently: a different neighbour would be a tie broken otherwise.
    digests = {run["ids"] for name in names for run in runs[name]}
    base = runs[names[0]]
    base_search = statistics.median(x["exact_search_s"] for x in base)
    base_kmeans = statistics.median(x["kmeans_s"] for x in base)
    rows = []
    for name in names:
        search = statistics.median(x["exact_search_s"] for x in runs[name])
        kmeans = statistics.median(x["kmeans_s"] for x in runs[name])
        rows.append(
            {
                "choice": name,
                "kernel": runs[name][0]["kernel"],
                "exact search (s)": search,
                "vs OpenBLAS's own": base_search / search,
                "k-means (s)": kmeans,
                "k-means vs own": base_kmeans / kmeans,
            }
        )
    report(
        f"blas_kernels_{args.vectors}",
        f"FAISS's BLAS work by OpenBLAS kernel: exact search of {QUERIES:,} queries over "
        f"{args.vectors:,} x {args.dim}, k-means of {LISTS} lists (medians of {args.rounds})",
        rows,
        {
            "vecmigrate's choice": options.get("vecmigrate's") or "none (OpenBLAS's own kept)",
            "same neighbours in every process": len(digests) == 1,
        },
        paired_bar_chart(
            [f"{r['choice'].split(' (')[0]}\n{r['kernel']}" for r in rows],
            {
                "exact search": [r["exact search (s)"] for r in rows],
                "k-means": [r["k-means (s)"] for r in rows],
            },
            ylabel="seconds (median)",
            figsize=(7, 3.5),
        ),
        out=args.out,
    )


if __name__ == "__main__":
    main()
