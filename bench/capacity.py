"""A capacity model for large migrations, from the rates measured by the other benchmarks.

    python bench/capacity.py --vectors 100000000 1000000000 --dim 128 --workers 32 --cores 8

For each size: shards, the memory one shard's build needs, core-seconds and wall time on the
fleet, what Temporal carries (activities, history events, continued runs, the status carried
into each run, heartbeats and activities per second), the catalog's writes per second, and the
change log an online migration keeps over its window; then the first limit the fleet meets.

The rates come from the results files the benchmarks write (``bench/results``): the
end-to-end run at 1M x 128 (its CPU seconds per vector: copy, builds and gates together, in
the process that runs every activity), the copy's vectors per second, and the fleet's worker
CPU per vector. The model is checked against those runs: it predicts each measured run's wall
time from its own parameters and prints both.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import RESULTS, add_out_option, report, script_parser
from vecmigrate.workflows.core import EVENTS_PER_SHARD_IN_FLIGHT, HISTORY_LIMIT

# Temporal: what one shard costs in the workflow's history (three activities a shard for
# blue-green: copy, build, checks; four online with the reconcile), the history size at which
# a run continues as new, and the largest payload the server takes by default.
EVENTS_PER_SHARD = EVENTS_PER_SHARD_IN_FLIGHT
CARRIED_BYTES_PER_SHARD = 160  # one ShardProgress in the status carried into the next run
PAYLOAD_LIMIT = 2 * 2**20
PAYLOAD_WARN = 512 * 2**10
# Catalog: one journal write a copy batch, and about five a shard (begin, end, artifact,
# checks, ground truth).
WRITES_PER_SHARD = 5
# Memory of one shard's build: the shard read into one pair of arrays (measured: 1.24 times
# its vectors, tests/test_indexes.py) and hnswlib's index (vectors, links of level 0 at 2M
# neighbours of 4 bytes, a label; the upper levels add about 1/M of that).
READ_FACTOR = 1.24


@dataclass
class Rates:
    """Measured rates the model scales."""

    cpu_per_vector_128: float  # core-seconds a vector, end to end, at 128 dimensions
    copy_per_second: float  # vectors/s one copy stream moves (built-in store)
    source: str


def load_rates(results: Path) -> Rates:
    e2e = json.loads((results / "migration_throughput_clustered_1000000.json").read_text())
    cpu = float(
        e2e["summary"]["CPU seconds (vecmigrate process / raw)"].split("/")[0].replace(",", "")
    )
    copy = json.loads((results / "copy_throughput.json").read_text())
    ours = next(r for r in copy["rows"] if str(r["tool"]).startswith("vecmigrate"))
    return Rates(
        cpu_per_vector_128=cpu / 1_000_000,
        copy_per_second=float(ours["points_per_s"]),
        source="migration_throughput_clustered_1000000.json, copy_throughput.json",
    )


def hnsw_bytes(dim: int, m: int) -> float:
    level0 = 4 * dim + 2 * m * 4 + 4 + 8
    return level0 * (1 + 1 / m)


@dataclass
class Plan:
    vectors: int
    dim: int
    shard_vectors: int
    workers: int
    cores: int
    batch: int
    window: int
    m: int
    online_writes_per_second: float
    record_bytes: int
    heartbeat_seconds: float
    store_ingest: float = 0.0  # vectors/s the target store takes in all (0: one copy stream's)


def model(p: Plan, rates: Rates) -> dict[str, Any]:
    shards = math.ceil(p.vectors / p.shard_vectors)
    cores = p.workers * p.cores
    # The build dominates and its cost grows with the dimension (distance computations); the
    # copy and the gates grow with it too. Linear in the dimension from the 128-d figure.
    core_seconds = p.vectors * rates.cpu_per_vector_128 * p.dim / 128
    in_flight = min(shards, p.window, cores)
    computing = core_seconds / max(1, min(cores, shards * p.cores))
    # The copy and the builds overlap (a shard builds while the next copies); the store's
    # ingest sets a floor under the whole. One SQLite file takes one writer at a time, so the
    # built-in store's ingest is one copy stream's.
    ingest = p.store_ingest or rates.copy_per_second
    copy_floor = p.vectors / ingest
    wall = max(computing, copy_floor)
    build_memory = p.shard_vectors * (4 * p.dim * READ_FACTOR + hnsw_bytes(p.dim, p.m))
    events = EVENTS_PER_SHARD * shards + 100
    per_run = HISTORY_LIMIT - EVENTS_PER_SHARD * p.window
    carried = CARRIED_BYTES_PER_SHARD * shards
    catalog_writes = p.vectors / p.batch + WRITES_PER_SHARD * shards
    return {
        "shards": shards,
        "build memory a shard": build_memory,
        "core-seconds": core_seconds,
        "wall seconds": wall,
        "activities": 3 * shards + 30,
        "history events": events,
        "runs (continue-as-new)": math.ceil(events / max(1, per_run)),
        "status carried": carried,
        "activities/s": (3 * shards + 30) / wall,
        "heartbeats/s": in_flight / p.heartbeat_seconds,
        "catalog writes/s": catalog_writes / wall,
        "computing seconds": computing,
        "copy floor seconds": copy_floor,
        "change log rows (online)": p.online_writes_per_second * wall,
        "change log bytes (online)": p.online_writes_per_second * wall * p.record_bytes,
    }


def first_limit(p: Plan, m: dict[str, Any], worker_memory: float) -> str:
    if m["status carried"] > PAYLOAD_LIMIT:
        return "Temporal: the status carried into each run passes the 2 MB payload limit"
    if m["build memory a shard"] > worker_memory:
        return "worker memory: one shard's build does not fit; use smaller shards"
    if m["copy floor seconds"] >= m["computing seconds"]:
        return "the target store's ingest (the copy), not the cores"
    return "the cores (the index builds)"


def gb(n: float) -> str:
    return f"{n / 2**30:,.1f} GB"


def main() -> None:
    ap = script_parser(__doc__)
    ap.add_argument("--vectors", type=int, nargs="+", default=[100_000_000, 1_000_000_000])
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--shard-vectors", type=int, default=2_000_000)
    ap.add_argument("--workers", type=int, default=32)
    ap.add_argument("--cores", type=int, default=8, help="cores a worker")
    ap.add_argument("--worker-memory-gb", type=float, default=32.0)
    ap.add_argument("--batch", type=int, default=10_000, help="the spec's batch_size")
    ap.add_argument("--window", type=int, default=64, help="the spec's max_parallel_shards")
    ap.add_argument("--m", type=int, default=16, help="HNSW M")
    ap.add_argument("--online-writes", type=float, default=500.0, help="writes/s, online")
    ap.add_argument("--heartbeat-seconds", type=float, default=10.0)
    ap.add_argument(
        "--store-ingest",
        type=float,
        default=0.0,
        help="vectors/s the target store takes in all (default: one copy stream's, measured)",
    )
    ap.add_argument("--results", type=Path, default=RESULTS, help="where the measured runs are")
    add_out_option(ap)
    args = ap.parse_args()
    rates = load_rates(args.results)
    columns: dict[str, dict[str, Any]] = {}
    figures: dict[int, dict[str, Any]] = {}
    for n in args.vectors:
        plan = Plan(
            vectors=n,
            dim=args.dim,
            shard_vectors=args.shard_vectors,
            workers=args.workers,
            cores=args.cores,
            batch=args.batch,
            window=args.window,
            m=args.m,
            online_writes_per_second=args.online_writes,
            record_bytes=4 * args.dim + 200,
            heartbeat_seconds=args.heartbeat_seconds,
            store_ingest=args.store_ingest,
        )
        m = model(plan, rates)
        figures[n] = m
        columns[f"{n:,}"] = {
            "shards": f"{m['shards']:,}",
            "memory of one shard's build": gb(m["build memory a shard"]),
            "core-hours": f"{m['core-seconds'] / 3600:,.1f}",
            "computing (h)": f"{m['computing seconds'] / 3600:,.2f}",
            "copy floor, store ingest (h)": f"{m['copy floor seconds'] / 3600:,.2f}",
            "wall (h)": f"{m['wall seconds'] / 3600:,.2f}",
            "activities": f"{m['activities']:,}",
            "history events / runs": f"{m['history events']:,} / {m['runs (continue-as-new)']}",
            "status carried into a run": f"{m['status carried'] / 2**10:,.0f} KB "
            f"(limit {PAYLOAD_LIMIT / 2**20:.0f} MB, warned at {PAYLOAD_WARN / 2**10:.0f} KB)",
            "activities/s": f"{m['activities/s']:.2f}",
            "heartbeats/s": f"{m['heartbeats/s']:.1f}",
            "catalog writes/s": f"{m['catalog writes/s']:,.1f}",
            "change log over the window (online)": f"{m['change log rows (online)']:,.0f} rows, "
            + gb(m["change log bytes (online)"]),
            "first limit": first_limit(plan, m, args.worker_memory_gb * 2**30),
        }
    measures = list(next(iter(columns.values())))
    rows = [{"": name, **{size: col[name] for size, col in columns.items()}} for name in measures]
    checks = check_measured(args.results, rates)

    def plot(path: Path) -> None:
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 3.5))
        labels = [f"{n:,}" for n in figures]
        ax.bar(
            labels,
            [f["computing seconds"] / 3600 for f in figures.values()],
            0.35,
            label="computing on the fleet",
        )
        ax.bar(
            labels,
            [f["copy floor seconds"] / 3600 for f in figures.values()],
            0.35,
            align="edge",
            label="copy at the store's ingest",
        )
        ax.set_ylabel("hours")
        ax.set_yscale("log")
        ax.set_title(f"{args.workers} workers x {args.cores} cores, {args.dim} dimensions")
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=110)

    report(
        "capacity",
        f"Capacity model: {args.workers} workers x {args.cores} cores, {args.dim} dimensions, "
        f"shards of {args.shard_vectors:,}",
        rows,
        {
            "rates from": rates.source,
            "core-seconds a vector at 128 d": f"{rates.cpu_per_vector_128 * 1e6:,.0f} us",
            "copy, one stream": f"{rates.copy_per_second:,.0f} vectors/s",
            **checks,
        },
        plot,
        out=args.out,
    )


def check_measured(results: Path, rates: Rates) -> dict[str, str]:
    """The model's wall time for each measured run beside the measured one."""
    out = {}
    e2e = json.loads((results / "migration_throughput_clustered_1000000.json").read_text())
    measured = next(r["seconds"] for r in e2e["rows"] if r["phase"] == "vecmigrate end to end")
    cores = int(e2e["machine"]["cores"])
    # The run's own parameters: 4 shards, one in-process worker with the machine's cores.
    plan = Plan(
        vectors=1_000_000,
        dim=128,
        shard_vectors=250_000,
        workers=1,
        cores=cores,
        batch=50_000,
        window=4,
        m=16,
        online_writes_per_second=0.0,
        record_bytes=4 * 128 + 200,
        heartbeat_seconds=10.0,
    )
    out["1M x 128, 1 worker, model / measured"] = (
        f"{model(plan, rates)['wall seconds']:.0f} s / {measured:.0f} s"
    )
    for path in sorted(results.glob("fleet_*.json")):
        fleet = json.loads(path.read_text())
        n = int(path.stem.split("_")[1])
        dim = int(fleet["summary"]["dimensions"])
        shards = int(fleet["summary"]["shards"])
        for row in fleet["rows"]:
            # Each worker is one core's worth; the machine has only so many.
            w = min(int(row["workers"]), int(fleet["machine"]["cores"]))
            fp = Plan(
                vectors=n,
                dim=dim,
                shard_vectors=math.ceil(n / shards),
                workers=w,
                cores=1,
                batch=20_000,
                window=shards,
                m=16,
                online_writes_per_second=0.0,
                record_bytes=4 * dim + 200,
                heartbeat_seconds=10.0,
            )
            out[f"fleet {n:,} x {dim}, {row['workers']} workers, model / measured"] = (
                f"{model(fp, rates)['wall seconds']:.0f} s / {row['seconds']:.0f} s"
            )
    return out


if __name__ == "__main__":
    main()
