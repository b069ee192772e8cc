"""One migration on a fleet of worker processes: throughput and CPU per vector by fleet size.

    python bench/fleet.py --vectors 400000 --dim 64 --shards 16 --workers 1 2 4

For each fleet size, a fresh copy of the same collection (built-in store, FAISS IVF-Flat) is
migrated to hnswlib HNSW by that many ``vecmigrate worker`` processes polling one task queue of
a Temporal dev server. Each worker is one core's worth (one activity at a time, one build
thread), so the fleet, not one worker's threads, is what scales. Printed per size: wall
seconds, vectors per second, the speed-up over one worker, the phases, and the CPU seconds the
workers spent per thousand vectors (which should stay flat: work added by more workers is
overhead). The Temporal server's CPU is its own and printed apart. On a machine with fewer
cores than workers, throughput stops growing at the core count: the table says where.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil

from bench.common import builtin_migration, report, scratch, sized_parser
from vecmigrate.control.client import MigrationClient
from vecmigrate.control.devserver import DevServer, free_port
from vecmigrate.data.datasets import clustered
from vecmigrate.model.lifecycle import Phase
from vecmigrate.testing.chaos import WorkerPool
from vecmigrate.workers.connection import connect


@dataclass
class FleetRun:
    workers: int
    seconds: float
    cpu: float  # the workers' CPU seconds
    server_cpu: float  # the Temporal dev server's
    phases: dict[str, float]
    activities: int


def server_cpu(server: DevServer) -> float:
    """CPU seconds of the dev server's process tree so far (0 where it cannot be read)."""
    if server.process is None:
        return 0.0
    try:
        root = psutil.Process(server.process.pid)
        total = 0.0
        for p in [root, *root.children(recursive=True)]:
            t = p.cpu_times()
            total += t.user + t.system
        return total
    except psutil.Error:
        return 0.0


async def run_fleet(home: Path, n: int, dim: int, shards: int, workers: int) -> FleetRun:
    home.mkdir(parents=True, exist_ok=True)
    catalog_url, spec = builtin_migration(
        home,
        "fleet",
        clustered(n, dim, seed=2),
        {"kind": "faiss_ivf_flat", "nlist": int(max(8, min(1024, n // 200)))},
        {"kind": "hnswlib_hnsw", "m": 16, "ef_construction": 100},
        spec_id=f"fleet-{workers}",
        shards=shards,
        parallel=shards,
        batch_size=20_000,
    )
    server = DevServer(home / "temporal.db", port=free_port(), ui=False).start()
    env = {"VECMIGRATE_CONCURRENCY": "1", "OMP_NUM_THREADS": "1", "VECMIGRATE_BUILD_THREADS": "1"}
    pool = WorkerPool(home, server.address, "fleet", catalog_url, workers, env=env)
    try:
        mc = MigrationClient(await connect(server.address), "fleet")
        # The workers' start (imports, connecting) is not the migration's work.
        await asyncio.to_thread(pool.wait_polling)
        worker_began, server_began = pool.cpu_seconds(), server_cpu(server)
        began = time.perf_counter()
        mid = await mc.start(spec, operator="bench")
        final = await mc.result(mid, timeout=3600)
        seconds = time.perf_counter() - began
        cpu = pool.cpu_seconds() - worker_began
        used_by_server = server_cpu(server) - server_began
    finally:
        pool.stop()
        server.stop()
    if final.phase != Phase.COMPLETED:
        raise SystemExit(f"the migration with {workers} workers ended in {final.phase}")
    return FleetRun(workers, seconds, cpu, used_by_server, final.phase_seconds, shards)


def main() -> None:
    p = sized_parser(__doc__, vectors=400_000, dim=64, shards=16)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    args = p.parse_args()
    n = args.vectors
    runs = []
    for count in args.workers:
        run = asyncio.run(run_fleet(scratch(f"fleet{count}"), n, args.dim, args.shards, count))
        runs.append(run)
        print(
            f"{count} worker(s): {run.seconds:.1f} s, {n / run.seconds:,.0f} vectors/s", flush=True
        )
    one = next((r for r in runs if r.workers == min(args.workers)), runs[0])
    rows = [
        {
            "workers": r.workers,
            "seconds": round(r.seconds, 1),
            "vectors/s": round(n / r.seconds),
            f"speed-up vs {one.workers}": round(one.seconds / r.seconds, 2),
            "BACKFILLING s": round(r.phases.get("BACKFILLING", 0.0), 1),
            "VALIDATING s": round(r.phases.get("VALIDATING", 0.0), 1),
            "other phases s": round(
                r.seconds - r.phases.get("BACKFILLING", 0.0) - r.phases.get("VALIDATING", 0.0), 1
            ),
            "worker CPU s / 1k vectors": round(1000 * r.cpu / n, 3),
            "worker cores busy": round(r.cpu / r.seconds, 2),
            "server CPU s": round(r.server_cpu, 1),
        }
        for r in runs
    ]
    cores = os.cpu_count() or 1
    best = max(runs, key=lambda r: n / r.seconds)
    per_k = [1000 * r.cpu / n for r in runs]

    def plot(path: Path) -> None:
        import matplotlib.pyplot as plt

        fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
        counts = [r.workers for r in runs]
        a.plot(counts, [n / r.seconds for r in runs], marker="o")
        a.axvline(cores, color="grey", linestyle=":", label=f"{cores} cores")
        a.set_xlabel("worker processes")
        a.set_ylabel("vectors/s end to end")
        a.legend()
        b.plot(counts, per_k, marker="o")
        b.set_ylim(0, max(per_k) * 1.3)
        b.set_xlabel("worker processes")
        b.set_ylabel("worker CPU s per 1k vectors")
        fig.suptitle(f"{n:,} x {args.dim}, {args.shards} shards, one task queue")
        fig.tight_layout()
        fig.savefig(path, dpi=110)

    report(
        f"fleet_{n}",
        f"One migration of {n:,} x {args.dim} by 1..N worker processes on one task queue",
        rows,
        {
            "dimensions": args.dim,
            "shards": args.shards,
            "cores on this machine": cores,
            "fastest fleet": f"{best.workers} workers ({n / best.seconds:,.0f} vectors/s)",
            "worker CPU s / 1k vectors, spread": f"{min(per_k):.3f} .. {max(per_k):.3f} "
            f"(median {statistics.median(per_k):.3f})",
        },
        plot,
        out=args.out,
    )


if __name__ == "__main__":
    main()
