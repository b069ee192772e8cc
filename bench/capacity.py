"""A capacity model for large migrations, from the rates measured by the other benchmarks.

    python bench/capacity.py --vectors 100000000 1000000000 --dim 128 --workers 32 --cores 8

For each size, on one task queue and on ``--regions`` regions (each its own catalog, store,
task queue and share of the workers): shards, the memory one shard's build needs, core-seconds
and wall time on the fleet, what Temporal carries (activities, history events, continued runs,
the status carried into each run, heartbeats and activities per second), the catalog's writes
per second, and the change log an online migration keeps over its window; then the first limit
the fleet meets.

The wall time is a fixed part plus the larger of the computing (the workers' CPU over their
cores) and the copy floor (the vectors over the target stores' ingest). The fixed part is what
a migration takes whatever its size: the phases outside the copy and the validation (preparing,
cut-over, finalizing: Temporal round trips and catalog writes), the validation's serial floor
(its last activity, the gate's queries, on one worker), and for a regional migration the
regional workflow's coordination (its barrier and its cut-overs, region by region). The CPU is
a rate a vector (at 128 dimensions, from the end-to-end run at 1M x 128; linear in the
dimension and in the logarithm of the shard size, as an HNSW insert is) plus a fixed cost a
migration, which a regional migration pays once a region (each region plans, opens its source
index, draws and answers its gate's queries and profiles its shards on its own).

The rates come from the results files the benchmarks write (``bench/results``): the
end-to-end run at 1M x 128, the copy's vectors per second, and the fleet's runs
(``fleet_*.json``, one task queue, and ``fleet-regions_*.json``, per-region queues), whose
phase times and CPU give the fixed part and the fixed CPU a migration. The model is then
checked against every one of those runs: for each, the constants are estimated from the other
runs, and the model's wall time and CPU per vector are printed beside the measured ones with
the error.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import RESULTS, add_out_option, report, script_parser
from vecmigrate.workflows.core import EVENTS_PER_SHARD_IN_FLIGHT, HISTORY_LIMIT

# Temporal: what one shard costs in the workflow's history (four activities a shard: copy,
# build, reconcile, checks), the history size at which a run continues as new, and the largest
# payload the server takes by default.
EVENTS_PER_SHARD = EVENTS_PER_SHARD_IN_FLIGHT
CARRIED_BYTES_PER_SHARD = 160  # one ShardProgress in the status carried into the next run
PAYLOAD_LIMIT = 2 * 2**20
PAYLOAD_WARN = 512 * 2**10
# Catalog: one journal write a copy batch, and 10 a shard beside them (counted over a
# blue-green migration of 500 shards: each of the shard's four activities records where it
# ran, 4; its ledger entries, 2; the copy's journal at its start and its end, 1 each; the
# artifact, 1; the checks with their ground truth, 1). On SQLite, writes of a worker's
# activities that come at once share a commit (about 8 commits a shard in that run).
ACTIVITIES_PER_SHARD = 4
WRITES_PER_SHARD = 10
# Memory of one shard's build: the shard read into one pair of arrays (measured: 1.24 times
# its vectors, tests/test_indexes.py) and hnswlib's index (vectors, links of level 0 at 2M
# neighbours of 4 bytes, a label; the upper levels add about 1/M of that).
READ_FACTOR = 1.24

# The end-to-end run at 1M x 128 that gives the rate a vector: 4 shards of 250,000, one
# in-process worker with the machine's cores.
REFERENCE = "migration_throughput_clustered_1000000.json"
REFERENCE_SHARD = 250_000
# The regional workflow's own history a region: starting and ending its child, the child's
# region_update signals (about one a phase), the approve_cutover forwarded to it and the
# ledger record of its cut-over (an estimate from the workflow's code, not a measured count).
REGIONAL_EVENTS_PER_REGION = 30
REGIONAL_EVENTS = 60  # the regional workflow's start, its phases and records, its end
REGIONAL_ACTIVITIES_PER_REGION = 3  # its ledger records (start, update, cut-over)


@dataclass
class Measured:
    """One measured run, as the results files record it."""

    label: str
    vectors: int
    dim: int
    shards: int  # a region's (each region is a migration of ``shards`` shards)
    regions: int  # 0: one task queue, no regional workflow
    processes: int  # data-plane worker processes in all
    cores_a_worker: int
    machine_cores: int
    seconds: float
    backfilling: float
    validating: float
    other: float  # the wall time outside BACKFILLING and VALIDATING
    cpu_per_1k: float  # the workers' CPU seconds a thousand vectors
    batch: int = 20_000  # the spec's batch_size (bench/fleet.py's)

    @property
    def migrations(self) -> int:
        return max(1, self.regions)


@dataclass
class Rates:
    """Measured rates the model scales, and the fixed part of a migration."""

    cpu_per_vector_128: float  # core-seconds a vector at 128 d in shards of REFERENCE_SHARD
    copy_per_second: float  # vectors/s one copy stream moves (built-in store)
    migration_cpu: float  # core-seconds a migration (a region's) costs beside its vectors
    other_seconds: float  # the phases outside the copy and the validation, one migration
    validate_serial: float  # the validation's serial floor (its last activity), seconds
    region_seconds: float  # the regional workflow's coordination, seconds a region
    source: str


def _reference_run(results: Path) -> Measured:
    e2e = json.loads((results / REFERENCE).read_text())
    phases = {r["phase"]: float(r["seconds"]) for r in e2e["rows"]}
    cpu = float(
        e2e["summary"]["CPU seconds (vecmigrate process / raw)"].split("/")[0].replace(",", "")
    )
    seconds = phases["vecmigrate end to end"]
    cores = int(e2e["machine"]["cores"])
    return Measured(
        label="1M x 128, 1 in-process worker",
        vectors=1_000_000,
        dim=128,
        shards=4,
        regions=0,
        processes=1,
        cores_a_worker=cores,
        machine_cores=cores,
        seconds=seconds,
        backfilling=phases["BACKFILLING"],
        validating=phases["VALIDATING"],
        other=seconds - phases["BACKFILLING"] - phases["VALIDATING"],
        cpu_per_1k=cpu / 1000,
        batch=50_000,
    )


def measured_runs(results: Path) -> list[Measured]:
    """The end-to-end run at 1M x 128 and every fleet run in ``results``."""
    runs = [_reference_run(results)]
    for path in sorted(results.glob("fleet_*.json")) + sorted(results.glob("fleet-regions_*.json")):
        fleet = json.loads(path.read_text())
        n = int(path.stem.split("_")[1])
        summary = fleet["summary"]
        regions = int(summary.get("regions", 0))
        for row in fleet["rows"]:
            processes = int(row.get("worker processes", row.get("workers a region", 0)))
            if not regions:
                processes = int(row["workers"])
            queues = f"{regions} regions, {processes} workers" if regions else "one queue"
            runs.append(
                Measured(
                    label=f"fleet {n:,} x {summary['dimensions']}, {queues}"
                    + ("" if regions else f", {processes} workers"),
                    vectors=n,
                    dim=int(summary["dimensions"]),
                    shards=int(summary["shards"]),
                    regions=regions,
                    processes=processes,
                    cores_a_worker=1,
                    machine_cores=int(fleet["machine"]["cores"]),
                    seconds=float(row["seconds"]),
                    backfilling=float(row["BACKFILLING s"]),
                    validating=float(row["VALIDATING s"]),
                    other=float(row["other phases s"]),
                    cpu_per_1k=float(row["worker CPU s / 1k vectors"]),
                )
            )
    return runs


def build_factor(dim: int, shard_vectors: int) -> float:
    """The CPU a vector costs against the reference run's (128 d, shards of 250,000): linear in
    the dimension (distance computations) and in the logarithm of the shard's size (an HNSW
    insert walks about log n levels and hops)."""
    return dim / 128 * math.log(max(2, shard_vectors)) / math.log(REFERENCE_SHARD)


def estimate(
    runs: list[Measured], copy_per_second: float, source: str = "", leave_out: str = ""
) -> Rates:
    """The rates and the fixed part, from ``runs`` (less the one labelled ``leave_out``).

    The rate a vector is the reference run's CPU less the fixed CPU; the fixed CPU a
    migration is the median of what the fleet runs' CPU leaves over the rate a vector, a
    migration (a region's); the phases
    outside the copy and the validation are the median of the one-queue runs'; the
    validation's serial floor is the least VALIDATING any one-queue run took (the run whose
    shard profiles were spread the widest); the coordination a region is the median of what a
    regional run's other phases take beyond one migration's, a region."""
    use = [r for r in runs if r.label != leave_out]
    ref = next(r for r in runs if r.vectors == 1_000_000 and r.dim == 128 and not r.regions)
    fleet = [r for r in use if r is not ref]
    one = [r for r in use if not r.regions]
    regional = [r for r in fleet if r.regions]
    migration_cpu = 0.0
    rate = 0.0
    for _ in range(20):  # the rate and the fixed CPU each depend a little on the other
        rate = (ref.cpu_per_1k * 1000 - migration_cpu) / ref.vectors
        left = [
            (
                r.cpu_per_1k * r.vectors / 1000
                - r.vectors
                * rate
                * build_factor(r.dim, math.ceil(r.vectors / r.migrations / r.shards))
            )
            / r.migrations
            for r in fleet
        ]
        migration_cpu = max(0.0, statistics.median(left)) if left else 0.0
    rate = (ref.cpu_per_1k * 1000 - migration_cpu) / ref.vectors
    other = statistics.median(r.other for r in one) if one else 0.0
    return Rates(
        cpu_per_vector_128=rate,
        copy_per_second=copy_per_second,
        migration_cpu=migration_cpu,
        other_seconds=other,
        validate_serial=min((r.validating for r in one), default=0.0),
        region_seconds=max(0.0, statistics.median((r.other - other) / r.regions for r in regional))
        if regional
        else 0.0,
        source=source,
    )


def load_rates(results: Path) -> Rates:
    copy = json.loads((results / "copy_throughput.json").read_text())
    ours = next(r for r in copy["rows"] if str(r["tool"]).startswith("vecmigrate"))
    files = ", ".join(
        [REFERENCE, "copy_throughput.json", *sorted(p.name for p in results.glob("fleet*_*.json"))]
    )
    return estimate(measured_runs(results), float(ours["points_per_s"]), files)


def hnsw_bytes(dim: int, m: int) -> float:
    level0 = 4 * dim + 2 * m * 4 + 4 + 8
    return level0 * (1 + 1 / m)


@dataclass
class Plan:
    vectors: int
    dim: int
    shard_vectors: int
    workers: int  # a task queue's (a region's, with regions)
    cores: int  # a worker's
    batch: int
    window: int
    m: int
    online_writes_per_second: float
    record_bytes: int
    heartbeat_seconds: float
    store_ingest: float = 0.0  # vectors/s one target store takes (0: one copy stream's)
    regions: int = 0  # 0: one task queue; else that many regions, each its own store and queue
    machine_cores: int = 0  # the cores all workers share (0: each worker has its own)


def model(p: Plan, rates: Rates) -> dict[str, Any]:
    """The model's figures for ``p``. With regions, each region is a migration of its share of
    the vectors on its own catalog, store, task queue and workers (``p.workers`` each), and a
    regional workflow on the control plane starts them, holds them at a barrier and cuts them
    over one region after another; the per-region figures are one region's."""
    regions = max(1, p.regions)
    region_vectors = math.ceil(p.vectors / regions)
    shards = math.ceil(region_vectors / p.shard_vectors)  # a region's
    shard_size = math.ceil(region_vectors / shards)
    all_shards = shards * regions
    # The CPU: a rate a vector (dimension, log of the shard size) and a fixed cost a
    # migration, which each region pays: what makes regions cost more a vector at small sizes.
    vector_seconds = p.vectors * rates.cpu_per_vector_128 * build_factor(p.dim, shard_size)
    core_seconds = vector_seconds + rates.migration_cpu * regions
    cores = p.workers * regions * p.cores
    if p.machine_cores:
        cores = min(cores, p.machine_cores)
    in_flight = min(all_shards, p.window * regions, p.workers * regions * p.cores)
    computing = core_seconds / max(1, min(cores, all_shards * p.cores))
    # The copy and the builds overlap (a shard builds while the next copies); the stores'
    # ingest sets a floor under the whole. One SQLite file takes one writer at a time, so the
    # built-in store's ingest is one copy stream's; regions copy into their own stores at once.
    ingest = p.store_ingest or rates.copy_per_second
    copy_floor = region_vectors / ingest
    fixed = (
        rates.other_seconds
        + rates.validate_serial
        + (rates.region_seconds * regions if p.regions else 0.0)
    )
    wall = fixed + max(computing, copy_floor)
    build_memory = p.shard_vectors * (4 * p.dim * READ_FACTOR + hnsw_bytes(p.dim, p.m))
    events = EVENTS_PER_SHARD * shards + 100  # a region's migration workflow
    per_run = HISTORY_LIMIT - EVENTS_PER_SHARD * p.window
    carried = CARRIED_BYTES_PER_SHARD * shards
    activities = (ACTIVITIES_PER_SHARD * shards + 30) * regions
    if p.regions:
        activities += REGIONAL_ACTIVITIES_PER_REGION * regions
    catalog_writes = region_vectors / p.batch + WRITES_PER_SHARD * shards  # a region's catalog
    log_rows = p.online_writes_per_second * wall / regions  # a region's change log
    return {
        "regions": p.regions,
        "shards": all_shards,
        "shards a region": shards,
        "build memory a shard": build_memory,
        "core-seconds": core_seconds,
        "CPU s / 1k vectors": 1000 * core_seconds / p.vectors,
        "wall seconds": wall,
        "fixed seconds": fixed,
        "activities": activities,
        "history events": events,
        "runs (continue-as-new)": math.ceil(events / max(1, per_run)),
        "regional history events": (
            REGIONAL_EVENTS + REGIONAL_EVENTS_PER_REGION * regions if p.regions else 0
        ),
        "status carried": carried,
        "activities/s": activities / wall,
        "heartbeats/s": in_flight / p.heartbeat_seconds,
        "catalog writes/s": catalog_writes / wall,
        "computing seconds": computing,
        "copy floor seconds": copy_floor,
        "change log rows (online)": log_rows,
        "change log bytes (online)": log_rows * p.record_bytes,
    }


def first_limit(p: Plan, m: dict[str, Any], worker_memory: float) -> str:
    if m["status carried"] > PAYLOAD_LIMIT:
        return "Temporal: the status carried into each run passes the 2 MB payload limit"
    if m["build memory a shard"] > worker_memory:
        return "worker memory: one shard's build does not fit; use smaller shards"
    stores = "each region's store's ingest" if p.regions else "the target store's ingest"
    if m["copy floor seconds"] >= m["computing seconds"]:
        return f"{stores} (the copy), not the cores"
    return "the cores (the index builds)"


def gb(n: float) -> str:
    return f"{n / 2**30:,.1f} GB"


def column(plan: Plan, m: dict[str, Any], worker_memory: float) -> dict[str, str]:
    region = " (a region's)"  # with regions, these figures are one region's
    return {
        "regions x workers": f"{plan.regions} x {plan.workers}"
        if plan.regions
        else f"one queue, {plan.workers}",
        "shards (a region's)": f"{m['shards']:,}"
        + (f" ({m['shards a region']:,})" if plan.regions else ""),
        "memory of one shard's build": gb(m["build memory a shard"]),
        "core-hours": f"{m['core-seconds'] / 3600:,.1f}",
        "computing (h)": f"{m['computing seconds'] / 3600:,.2f}",
        "copy floor, store ingest (h)": f"{m['copy floor seconds'] / 3600:,.2f}",
        "fixed part (s)": f"{m['fixed seconds']:,.0f}",
        "wall (h)": f"{m['wall seconds'] / 3600:,.2f}",
        "activities": f"{m['activities']:,}",
        f"history events / runs{region}": f"{m['history events']:,} / "
        f"{m['runs (continue-as-new)']}",
        "regional workflow's history events": f"{m['regional history events']:,}"
        if plan.regions
        else "-",
        f"status carried into a run{region}": f"{m['status carried'] / 2**10:,.0f} KB "
        f"(limit {PAYLOAD_LIMIT / 2**20:.0f} MB, warned at {PAYLOAD_WARN / 2**10:.0f} KB)",
        "activities/s": f"{m['activities/s']:.2f}",
        "heartbeats/s": f"{m['heartbeats/s']:.1f}",
        f"catalog writes/s{region}": f"{m['catalog writes/s']:,.1f}",
        f"change log over the window (online){region}": f"{m['change log rows (online)']:,.0f} "
        "rows, " + gb(m["change log bytes (online)"]),
        "first limit": first_limit(plan, m, worker_memory),
    }


def plan_of(run: Measured) -> Plan:
    """A measured run's own parameters as a plan: its shards, its workers of one slot (the
    in-process worker of the reference run has the machine's cores), the cores of its machine
    shared by every worker, the batch and window the benchmarks use."""
    region_vectors = math.ceil(run.vectors / run.migrations)
    return Plan(
        vectors=run.vectors,
        dim=run.dim,
        shard_vectors=math.ceil(region_vectors / run.shards),
        workers=max(1, run.processes // run.migrations),
        cores=run.cores_a_worker,
        batch=run.batch,
        window=run.shards,
        m=16,
        online_writes_per_second=0.0,
        record_bytes=4 * run.dim + 200,
        heartbeat_seconds=10.0,
        regions=run.regions,
        machine_cores=run.machine_cores,
    )


@dataclass
class Check:
    run: Measured
    wall: float  # the model's
    cpu_per_1k: float  # the model's

    @property
    def error(self) -> float:
        """The model's wall time over the measured one, less one (-0.2: 20 % under)."""
        return self.wall / self.run.seconds - 1


def check_measured(runs: list[Measured], copy_per_second: float) -> list[Check]:
    """The model of each measured run, its constants estimated from the other runs."""
    checks = []
    for run in runs:
        rates = estimate(runs, copy_per_second, leave_out=run.label)
        m = model(plan_of(run), rates)
        checks.append(Check(run, m["wall seconds"], m["CPU s / 1k vectors"]))
    return checks


def main() -> None:
    ap = script_parser(__doc__)
    ap.add_argument("--vectors", type=int, nargs="+", default=[100_000_000, 1_000_000_000])
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--shard-vectors", type=int, default=2_000_000)
    ap.add_argument("--workers", type=int, default=32, help="workers in all")
    ap.add_argument("--cores", type=int, default=8, help="cores a worker")
    ap.add_argument(
        "--regions",
        type=int,
        default=3,
        help="regions of the regional fleet, which splits the workers among them (0: none)",
    )
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
        help="vectors/s one target store takes in all (default: one copy stream's, measured)",
    )
    ap.add_argument("--results", type=Path, default=RESULTS, help="where the measured runs are")
    add_out_option(ap)
    args = ap.parse_args()
    if args.regions < 0 or (args.regions and args.workers < args.regions):
        ap.error(f"--regions must be 0 or at most --workers ({args.workers}), not {args.regions}")
    rates = load_rates(args.results)
    columns: dict[str, dict[str, str]] = {}
    figures: dict[str, dict[str, Any]] = {}
    worker_memory = args.worker_memory_gb * 2**30
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
        plans = {f"{n:,}, one queue": plan}
        if args.regions:
            plans[f"{n:,}, {args.regions} regions"] = replace(
                plan, regions=args.regions, workers=args.workers // args.regions
            )
        for name, each in plans.items():
            figures[name] = model(each, rates)
            columns[name] = column(each, figures[name], worker_memory)
    measures = list(next(iter(columns.values())))
    rows = [{"": name, **{size: col[name] for size, col in columns.items()}} for name in measures]
    checks = check_measured(measured_runs(args.results), rates.copy_per_second)

    def plot(path: Path) -> None:
        import matplotlib.pyplot as plt

        fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.8))
        labels = [name.replace(", ", "\n") for name in figures]
        a.bar(
            labels,
            [f["computing seconds"] / 3600 for f in figures.values()],
            0.35,
            label="computing on the fleet",
        )
        a.bar(
            labels,
            [f["copy floor seconds"] / 3600 for f in figures.values()],
            0.35,
            align="edge",
            label="copy at the stores' ingest",
        )
        a.set_ylabel("hours")
        a.set_yscale("log")
        a.set_title(f"{args.workers} workers x {args.cores} cores, {args.dim} dimensions")
        a.legend(fontsize=8)
        b.scatter(
            [c.run.seconds for c in checks],
            [c.wall for c in checks],
            c=["tab:orange" if c.run.regions else "tab:blue" for c in checks],
        )
        top = max(max(c.run.seconds, c.wall) for c in checks) * 1.1
        b.plot([0, top], [0, top], color="grey", linestyle=":")
        b.set_xlabel("measured s (orange: per-region queues)")
        b.set_ylabel("model s")
        b.set_title("the model against the measured runs")
        fig.tight_layout()
        fig.savefig(path, dpi=110)

    report(
        "capacity",
        f"Capacity model: {args.workers} workers x {args.cores} cores, {args.dim} dimensions, "
        f"shards of {args.shard_vectors:,}",
        rows,
        {
            "rates from": rates.source,
            "core-seconds a vector at 128 d, shards of 250,000": (
                f"{rates.cpu_per_vector_128 * 1e6:,.0f} us"
            ),
            "core-seconds a migration (a region's) beside its vectors": (
                f"{rates.migration_cpu:.1f} s"
            ),
            "copy, one stream": f"{rates.copy_per_second:,.0f} vectors/s",
            "fixed part, a migration": f"{rates.other_seconds:.1f} s outside the copy and "
            f"the validation + {rates.validate_serial:.1f} s of serial validation",
            "regional coordination, a region": f"{rates.region_seconds:.1f} s",
            **{
                f"{c.run.label}: model / measured": f"{c.wall:.1f} s / {c.run.seconds:.1f} s "
                f"({c.error:+.0%}); CPU s / 1k vectors {c.cpu_per_1k:.3f} / "
                f"{c.run.cpu_per_1k:.3f}"
                for c in checks
            },
        },
        plot,
        out=args.out,
    )


if __name__ == "__main__":
    main()
