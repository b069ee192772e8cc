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

With per-region queues (``--queues regions`` or ``both``, the default), the same vectors are
split over ``--regions`` regions, each with its own catalog, store and task queue, and moved by
one regional migration (all regions at once); each region gets N workers started with
``--region`` for N in ``--workers`` (so N times the regions in all), and one control-plane
worker runs the coordinating workflow (its CPU is printed apart). Phase times are the slowest
region's.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil

from bench.common import (
    Sizing,
    builtin_migration,
    regional_builtin_migration,
    report,
    scratch,
    sized_parser,
)
from vecmigrate.config import sqlite_url
from vecmigrate.control.client import MigrationClient
from vecmigrate.control.devserver import DevServer, free_port
from vecmigrate.data.datasets import clustered
from vecmigrate.model.lifecycle import Phase
from vecmigrate.model.regions import region_queue
from vecmigrate.testing.chaos import WorkerPool
from vecmigrate.workers.connection import connect
from vecmigrate.workflows.regional import RegionalMigrationWorkflow

# One worker process is one core's worth: one activity at a time, one build thread.
ONE_CORE = {"VECMIGRATE_CONCURRENCY": "1", "OMP_NUM_THREADS": "1", "VECMIGRATE_BUILD_THREADS": "1"}
TARGET = {"kind": "hnswlib_hnsw", "m": 16, "ef_construction": 100}


def source_index(n: int) -> dict[str, object]:
    # At least the default nprobe (16) lists, which a tiny region would go under.
    return {"kind": "faiss_ivf_flat", "nlist": int(max(16, min(1024, n // 200)))}


def fleet_sizing(spec_id: str, shards: int) -> Sizing:
    """Every shard at once, in batches of 20,000: how many run is the fleet's to decide."""
    return Sizing(spec_id, shards=shards, parallel=shards, batch_size=20_000)


@dataclass
class FleetRun:
    workers: int  # per task queue
    processes: int  # data-plane workers in all
    seconds: float
    cpu: float  # the data-plane workers' CPU seconds
    server_cpu: float  # the Temporal dev server's
    phases: dict[str, float]
    control_cpu: float = 0.0  # the control-plane worker's (per-region queues only)
    # Per-region queues: the wall time outside the slowest region's own phases (the regional
    # workflow starting the regions and ending after them).
    coordination: float = 0.0


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
        source_index(n),
        TARGET,
        sizing=fleet_sizing(f"fleet-{workers}", shards),
    )
    server = DevServer(home / "temporal.db", port=free_port(), ui=False).start()
    pool = WorkerPool(home, server.address, "fleet", catalog_url, workers, env=ONE_CORE)
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
    return FleetRun(workers, workers, seconds, cpu, used_by_server, final.phase_seconds)


async def run_regions(
    home: Path, n: int, dim: int, shards: int, workers: int, regions: int
) -> FleetRun:
    """One regional migration of ``n`` vectors split over ``regions`` regions, each with its
    own task queue polled by ``workers`` region workers, and one control-plane worker."""
    home.mkdir(parents=True, exist_ok=True)
    names = [f"r{i + 1}" for i in range(regions)]
    sizes = [n // regions + (1 if i < n % regions else 0) for i in range(regions)]
    catalogs, spec = regional_builtin_migration(
        home,
        "fleet",
        {
            r: clustered(m, dim, seed=2 + i)
            for i, (r, m) in enumerate(zip(names, sizes, strict=True))
        },
        source_index(min(sizes)),
        TARGET,
        sizing=fleet_sizing(f"fleet-regions-{workers}", shards),
    )
    server = DevServer(home / "temporal.db", port=free_port(), ui=False).start()
    control = WorkerPool(
        home, server.address, "fleet-control", sqlite_url(home / "control.db"), 1, env=ONE_CORE
    )
    pools = [
        WorkerPool(
            home, server.address, region_queue(r), catalogs[r.name], workers, ONE_CORE, r.name
        )
        for r in spec.regions
    ]
    try:
        mc = MigrationClient(await connect(server.address), "fleet-control")
        for pool in [control, *pools]:
            await asyncio.to_thread(pool.wait_polling)
        worker_began = sum(p.cpu_seconds() for p in pools)
        control_began, server_began = control.cpu_seconds(), server_cpu(server)
        began = time.perf_counter()
        mid = await mc.start(spec, operator="bench")
        handle = mc.client.get_workflow_handle_for(RegionalMigrationWorkflow.run, mid)
        final = await asyncio.wait_for(handle.result(), timeout=3600)
        seconds = time.perf_counter() - began
        cpu = sum(p.cpu_seconds() for p in pools) - worker_began
        used_by_control = control.cpu_seconds() - control_began
        used_by_server = server_cpu(server) - server_began
        children = [await mc.result(child.workflow_id) for child in final.regions]
    finally:
        for pool in [*pools, control]:
            pool.stop()
        server.stop()
    if final.phase != Phase.COMPLETED:
        raise SystemExit(
            f"the regional migration with {workers} workers a region ended in {final.phase}"
        )
    phases: dict[str, float] = {}
    for child in children:
        for phase, took in child.phase_seconds.items():
            phases[phase] = max(phases.get(phase, 0.0), took)
    slowest = max(sum(child.phase_seconds.values()) for child in children)
    return FleetRun(
        workers,
        workers * regions,
        seconds,
        cpu,
        used_by_server,
        phases,
        used_by_control,
        max(0.0, seconds - slowest),
    )


def stops_scaling(runs: list[FleetRun], n: int) -> str:
    """Where throughput stops growing: the first fleet size that adds under 10 % over the one
    before it."""
    for before, after in itertools.pairwise(runs):
        if n / after.seconds < 1.1 * n / before.seconds:
            return (
                f"from {before.processes} to {after.processes} worker processes "
                f"({n / before.seconds:,.0f} -> {n / after.seconds:,.0f} vectors/s)"
            )
    return f"not within {runs[-1].processes} worker processes"


def table(runs: list[FleetRun], n: int, regional: bool) -> list[dict[str, object]]:
    one = runs[0]
    return [
        {
            "workers" + (" a region" if regional else ""): r.workers,
            **({"worker processes": r.processes} if regional else {}),
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
            **({"control worker CPU s": round(r.control_cpu, 1)} if regional else {}),
            "server CPU s": round(r.server_cpu, 1),
        }
        for r in runs
    ]


def write(runs: list[FleetRun], n: int, dim: int, shards: int, regions: int, out: Path) -> None:
    regional = regions > 0
    cores = os.cpu_count() or 1
    best = max(runs, key=lambda r: n / r.seconds)
    per_k = [1000 * r.cpu / n for r in runs]
    queues = f"{regions} regions' queues" if regional else "one task queue"

    def plot(path: Path) -> None:
        import matplotlib.pyplot as plt

        fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
        counts = [r.processes for r in runs]
        a.plot(counts, [n / r.seconds for r in runs], marker="o")
        a.axvline(cores, color="grey", linestyle=":", label=f"{cores} cores")
        a.set_xlabel("worker processes" + (" (all regions)" if regional else ""))
        a.set_ylabel("vectors/s end to end")
        a.legend()
        b.plot(counts, per_k, marker="o")
        b.set_ylim(0, max(per_k) * 1.3)
        b.set_xlabel("worker processes")
        b.set_ylabel("worker CPU s per 1k vectors")
        fig.suptitle(f"{n:,} x {dim}, {shards} shards{' a region' if regional else ''}, {queues}")
        fig.tight_layout()
        fig.savefig(path, dpi=110)

    # The one-queue results keep their name: bench/capacity.py checks its model against them.
    report(
        f"fleet-regions_{n}" if regional else f"fleet_{n}",
        f"One migration of {n:,} x {dim} by 1..N worker processes"
        + (f" a region on {queues}" if regional else " on one task queue"),
        table(runs, n, regional),
        {
            "dimensions": dim,
            "shards": shards,
            **({"regions": regions, "vectors a region": n // regions} if regional else {}),
            "cores on this machine": cores,
            "fastest fleet": f"{best.processes} worker processes "
            f"({n / best.seconds:,.0f} vectors/s)",
            "stops scaling": stops_scaling(runs, n),
            "worker CPU s / 1k vectors, spread": f"{min(per_k):.3f} .. {max(per_k):.3f} "
            f"(median {statistics.median(per_k):.3f})",
            # Every phase's seconds (the slowest region's), for bench/capacity.py's model of
            # the fixed part of a migration.
            "phases s, each run": [
                {phase: round(took, 2) for phase, took in r.phases.items()} for r in runs
            ],
            **(
                {"coordination s, each run": [round(r.coordination, 2) for r in runs]}
                if regional
                else {}
            ),
        },
        plot,
        out=out,
    )


def main() -> None:
    p = sized_parser(__doc__, vectors=400_000, dim=64, shards=16)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument(
        "--queues",
        choices=["one", "regions", "both"],
        default="both",
        help="one task queue, per-region queues, or both (default)",
    )
    p.add_argument("--regions", type=int, default=2, help="regions of the per-region runs")
    args = p.parse_args()
    if args.regions < 1:
        p.error(f"--regions must be at least 1, not {args.regions}")
    if any(w < 1 for w in args.workers):
        p.error(f"--workers takes counts of at least 1, not {args.workers}")
    n = args.vectors
    counts = sorted(set(args.workers))
    if args.queues in ("one", "both"):
        runs = []
        for count in counts:
            run = asyncio.run(run_fleet(scratch(f"fleet{count}"), n, args.dim, args.shards, count))
            runs.append(run)
            print(
                f"one queue, {count} worker(s): {run.seconds:.1f} s, "
                f"{n / run.seconds:,.0f} vectors/s",
                flush=True,
            )
        write(runs, n, args.dim, args.shards, 0, args.out)
    if args.queues in ("regions", "both"):
        runs = []
        for count in counts:
            home = scratch(f"fleet-regions{count}")
            run = asyncio.run(run_regions(home, n, args.dim, args.shards, count, args.regions))
            runs.append(run)
            print(
                f"{args.regions} region queues, {count} worker(s) each: {run.seconds:.1f} s, "
                f"{n / run.seconds:,.0f} vectors/s",
                flush=True,
            )
        write(runs, n, args.dim, args.shards, args.regions, args.out)


if __name__ == "__main__":
    main()
