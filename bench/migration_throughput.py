"""End-to-end migration speed against the raw library building the same indexes.

    python bench/migration_throughput.py --data glove --vectors 400000
    python bench/migration_throughput.py --data clustered --vectors 1000000 --dim 128 --repeat 3
    python bench/migration_throughput.py --data clustered --vectors 1000000 --dim 128 --repeat 3 \
        --records shared

Seeds v1 (FAISS IVF-Flat), then runs a real blue-green migration to hnswlib HNSW on the Temporal
dev server with an in-process worker: copy, per-shard index build, validation gates, cut-over.
In the same process, the raw run builds the same hnswlib indexes (same shards, same M and
ef_construction, all cores) straight from the numpy array. The ratio is vecmigrate's wall time
over the raw build's; the target is 1.10 at 1M vectors. Also printed: the CPU seconds each spent
(vecmigrate's counted for this process, where the worker runs every activity; the Temporal
server's own and the memory sampler's are not counted), how many cores the raw build kept busy,
and the resident memory each added to this process at its highest, the migration's in each
phase too, beside the size of the index it built.

``--records shared`` runs the migration that changes the index alone as such (the spec's
``records: shared``): the target reads the source's records where they are, the copy's pass
reads and checks every shard and writes nothing.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import hnswlib
import numpy as np

from bench.common import Sizing, alternating, builtin_migration, report, scratch, sized_parser
from vecmigrate.catalog.catalog import Catalog, LedgerEntry
from vecmigrate.control.client import MigrationClient
from vecmigrate.control.devserver import DevServer, free_port
from vecmigrate.data.datasets import clustered, glove
from vecmigrate.data.seed import sequential_ids
from vecmigrate.model.lifecycle import LIFECYCLE, Phase
from vecmigrate.model.spec import parse_spec
from vecmigrate.records.sharding import hash_key, hash_shards
from vecmigrate.telemetry.resources import PeakMemory
from vecmigrate.workers.connection import connect
from vecmigrate.workers.main import run_worker

M, EF_CONSTRUCTION, EF_SEARCH = 16, 200, 64


def mb(n: float) -> str:
    return f"{n / 2**20:,.0f} MB"


class Resident(PeakMemory):
    """This process's resident memory over the block's start, sampled every ``every`` seconds
    with the time of each sample, so the peak can be split by the phases the migration went
    through (FAISS and hnswlib allocate outside Python's view: tracemalloc would miss them)."""

    def __init__(self, every: float = 0.02) -> None:
        super().__init__(every, keep=True)

    def by_phase(self, entries: list[LedgerEntry]) -> dict[str, int]:
        """The peak within each phase, from the times the migration's ledger recorded it
        entering each (its "phase" entries; before the first, PLANNED)."""
        began = self.samples[0][0] if self.samples else 0.0
        marks = [(began, "PLANNED")] + [
            (datetime.fromisoformat(e.at).timestamp(), str(e.data["to"]))
            for e in entries
            if e.kind == "phase"
        ]
        peaks: dict[str, int] = {}
        for (start, phase), (end, _) in zip(marks, [*marks[1:], (float("inf"), "")], strict=True):
            inside = [g for t, g in self.samples if start <= t < end]
            peaks[phase] = max([peaks.get(phase, 0), *inside])
        return peaks


@dataclass
class Run:
    """One migration and one raw build of the same data: wall and CPU seconds."""

    total: float
    cpu: float
    phases: dict[str, float]
    raw: float
    raw_cpu: float
    raw_peak: int  # resident memory the raw build added to this process at its highest
    peak: int  # resident memory the migration added to this process at its highest
    phase_peaks: dict[str, int]  # the same, within each phase
    index_bytes: int  # the target's index artifacts on disk


def raw_build(ids: np.ndarray, vectors: np.ndarray, shards: int) -> tuple[float, float, int]:
    """Seconds hnswlib takes to build one index per hash shard from the array, the CPU
    seconds it spends doing so and the resident memory it adds at its highest."""
    keys = hash_key(ids)
    cpu = time.process_time()
    began = time.perf_counter()
    with Resident() as memory:
        for shard in hash_shards(shards):
            mask = (keys >= shard.lo) & (keys < shard.hi)
            index = hnswlib.Index(space="l2", dim=vectors.shape[1])
            index.init_index(max_elements=int(mask.sum()), M=M, ef_construction=EF_CONSTRUCTION)
            index.add_items(vectors[mask], ids[mask], num_threads=-1)
    cpu = time.process_time() - cpu - memory.cpu
    return time.perf_counter() - began, cpu, memory.peak or 0


Migrated = tuple[float, float, dict[str, float], int, dict[str, int], int]


async def migrate(
    home: Path, vectors: np.ndarray, shards: int, parallel: int, records: str = "copy"
) -> Migrated:
    """Seconds of a full blue-green migration, the CPU seconds of this process (the worker's
    activities, the client) meanwhile, the time per phase, the resident memory the migration
    added to this process at its highest and within each phase (the worker runs every activity
    here; the data set was loaded before) and the bytes of the target's index on disk."""
    nlist = int(max(8, min(4096, 4 * np.sqrt(len(vectors)), len(vectors) // 39)))
    hnsw = {
        "kind": "hnswlib_hnsw",
        "m": M,
        "ef_construction": EF_CONSTRUCTION,
        "ef_search": EF_SEARCH,
    }
    catalog_url, spec = builtin_migration(
        home,
        "bench",
        vectors,
        {"kind": "faiss_ivf_flat", "nlist": nlist, "nprobe": 8},
        hnsw,
        sizing=Sizing("throughput", shards=shards, parallel=parallel, batch_size=50_000),
    )
    spec = parse_spec({**spec.model_dump(mode="json"), "records": records})
    server = DevServer(home / "temporal.db", port=free_port(), ui=False).start()
    stop = asyncio.Event()
    worker = asyncio.create_task(
        run_worker(server.address, "bench", catalog_url, stop=stop, handle_signals=False)
    )
    try:
        mc = MigrationClient(await connect(server.address), "bench")
        cpu = time.process_time()
        began = time.perf_counter()
        with Resident() as memory:
            mid = await mc.start(spec, operator="bench")
            final = await mc.result(mid)
        seconds = time.perf_counter() - began
        cpu = time.process_time() - cpu - memory.cpu
    finally:
        stop.set()
        await asyncio.wait_for(worker, timeout=60)
        server.stop()
    if final.phase != Phase.COMPLETED:
        raise SystemExit(f"the migration ended in {final.phase}: {final.error}")
    index = home / "artifacts" / "default" / "bench" / "v2"
    index_bytes = sum(f.stat().st_size for f in index.rglob("*") if f.is_file())
    by_phase = memory.by_phase(Catalog(catalog_url).entries(mid))
    return seconds, cpu, final.phase_seconds, memory.peak or 0, by_phase, index_bytes


def main() -> None:
    p = sized_parser(__doc__, vectors=400_000, shards=4)
    p.add_argument("--data", choices=["glove", "clustered"], default="glove")
    p.add_argument("--dim", type=int, default=128, help="clustered data only")
    p.add_argument(
        "--parallel",
        type=int,
        default=1,
        help="shards worked on at once (each build then gets its share of the cores)",
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="migration / raw build pairs, which goes first alternating (medians are reported)",
    )
    p.add_argument(
        "--records",
        choices=["copy", "shared"],
        default="copy",
        help="the target's records: a copy of its own, or the source's (an index-only change)",
    )
    args = p.parse_args()
    if args.data == "glove":
        vectors = glove(args.vectors)
    else:
        vectors = clustered(args.vectors, args.dim, seed=4)
    n, dim = vectors.shape
    ids = sequential_ids(n)

    def migrate_once() -> Migrated:
        return asyncio.run(
            migrate(scratch("throughput"), vectors, args.shards, args.parallel, args.records)
        )

    runs: list[Run] = []
    for r in range(args.repeat):
        # The same build moves by 10 % and more from run to run on a shared machine: single
        # pairs at 1M gave ratios from 1.12 to 1.42.
        mine, theirs = alternating(r, migrate_once, lambda: raw_build(ids, vectors, args.shards))
        total, cpu, phases, peak, phase_peaks, index_bytes = mine
        run = Run(total, cpu, phases, *theirs, peak, phase_peaks, index_bytes)
        runs.append(run)
        print(f"pair {r + 1}: vecmigrate {run.total:.1f} s, raw {run.raw:.1f} s", flush=True)
    median = statistics.median
    phases = {ph: median(run.phases.get(ph, 0.0) for run in runs) for ph in runs[0].phases}
    total = median(run.total for run in runs)
    raw = median(run.raw for run in runs)
    order = [str(ph) for ph in LIFECYCLE["blue_green"].phases if str(ph) in phases]
    # Each phase's peak resident memory over the migration's start (median of the pairs).
    held = {ph: median(run.phase_peaks.get(ph, 0) for run in runs) for ph in phases}
    peak_added = median(run.peak for run in runs)
    raw_peak = median(run.raw_peak for run in runs)
    rows: list[dict[str, Any]] = [
        {"phase": ph, "seconds": round(phases[ph], 2), "peak memory added": mb(held[ph])}
        for ph in order
        if ph != "PLANNED"
    ]
    rows.append(
        {
            "phase": "vecmigrate end to end",
            "seconds": round(total, 2),
            "peak memory added": mb(peak_added),
        }
    )
    rows.append(
        {
            "phase": "raw hnswlib build, same shards",
            "seconds": round(raw, 2),
            "peak memory added": mb(raw_peak),
        }
    )
    ratio = median(run.total / run.raw for run in runs)
    cpu = median(run.cpu for run in runs)
    raw_cpu = median(run.raw_cpu for run in runs)

    def plot(path: Path) -> None:
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(8, 3.5))
        left = 0.0
        for row in rows[:-2]:
            ax.barh(["vecmigrate"], [float(row["seconds"])], left=left, label=row["phase"])
            left += float(row["seconds"])
        ax.barh(["raw hnswlib"], [raw], color="grey")
        ax.set_xlabel("seconds")
        ax.set_title(f"{n:,} x {dim} ({args.data}): ratio {ratio:.2f}")
        ax.legend(fontsize=7, ncol=3, loc="lower right")
        fig.tight_layout()
        fig.savefig(path, dpi=110)

    report(
        f"migration_throughput_{args.data}_{n}" + ("-shared" if args.records == "shared" else ""),
        f"IVF -> HNSW migration of {n:,} x {dim} ({args.data}, records: {args.records}) vs raw "
        "hnswlib",
        rows,
        {
            "vectors/s end to end": f"{n / total:,.0f}",
            "vectors/s raw build": f"{n / raw:,.0f}",
            "ratio (vecmigrate / raw)": f"{ratio:.2f}"
            + (" (median of pairs)" if len(runs) > 1 else ""),
            "each pair": ", ".join(f"{run.total / run.raw:.2f}" for run in runs),
            "target at 1M": "<= 1.10",
            # The work each did, whatever the cores: when the raw build keeps every core busy,
            # no scheduling brings the wall-clock ratio below the CPU ratio.
            "CPU seconds (vecmigrate process / raw)": f"{cpu:,.1f} / {raw_cpu:,.1f}",
            "CPU ratio": f"{cpu / raw_cpu:.2f}",
            "CPU ratio, each pair": ", ".join(f"{run.cpu / run.raw_cpu:.2f}" for run in runs),
            "raw build's cores kept busy": f"{raw_cpu / raw:.2f} of {os.cpu_count()}",
            # Memory: what the migration added to this process's resident set at its highest
            # (the worker runs every activity here; the data set was loaded before), beside the
            # index it built. The Temporal server's memory is its own.
            "worker's peak memory added": mb(peak_added),
            "raw build's peak memory added": mb(raw_peak),
            "target index on disk": mb(median(run.index_bytes for run in runs)),
            "vectors (float32)": mb(vectors.nbytes),
        },
        plot,
        out=args.out,
    )


if __name__ == "__main__":
    main()
