"""Online migration under load, at any size: failed requests, lost writes, latency per phase.

    python bench/online_load.py --vectors 100000 --clients 8

Seeds a collection, serves it through the HTTP gateway (``vecmigrate serve`` in a process of its
own, as the worker and the clients are), runs N clients (search / upsert /
delete) against it, first alone (the idle baseline, after a few seconds of warm-up), then
through the online-migration drill (shadow, ramp, cut-over, rollback after cut-over, second
cut-over). Prints the table with each phase's search p99 over the idle p99 of the same run,
checks every acknowledged write and delete against the live version, and writes JSON and a PNG
plot. With ``--budget 1.5`` the spec sets a latency budget (search p99 at most 1.5x idle): the
table says whether each phase met it, the ratio's 95 % interval and the verdict on it (a
phase's p99 rests on its few slowest searches), and the lowest pace the budget set in it.
With ``--serving-cores 1`` the gateway and the clients run on a core of their own and the
worker, the Temporal server and this process on the others (Linux), so that what the migration
costs the application is not the cores they share on one machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
from rich.console import Console
from rich.table import Table

from bench.common import (
    gateway_process,
    pinned,
    scratch,
    sized_parser,
    split_cores,
    wide_console,
)
from vecmigrate.catalog.catalog import Catalog
from vecmigrate.catalog.latency import Latencies
from vecmigrate.config import sqlite_url
from vecmigrate.control.client import MigrationClient
from vecmigrate.control.devserver import DevServer, free_port
from vecmigrate.data.backfill import open_source, open_target
from vecmigrate.data.datasets import clustered
from vecmigrate.data.seed import seed_collection, sequential_ids
from vecmigrate.model.lifecycle import LIFECYCLE
from vecmigrate.model.spec import BuiltinStoreRef, parse_spec
from vecmigrate.testing.chaos import builtin_version, worker_command
from vecmigrate.testing.drill import run_drill
from vecmigrate.testing.loadgen import (
    SEARCHES,
    LoadProcess,
    Request,
    answered_millis,
    latency_table,
    verify,
)
from vecmigrate.validation.intervals import quantile_interval
from vecmigrate.workers.connection import connect


async def main_async(args: argparse.Namespace, console: Console) -> dict[str, object]:
    home = args.home or scratch("online")
    catalog_url = sqlite_url(home / "catalog.db")
    catalog = Catalog(catalog_url)
    store = BuiltinStoreRef(url=sqlite_url(home / "store.db"), artifacts=str(home / "artifacts"))
    console.log(f"seeding {args.vectors:,} x {args.dim} clustered vectors")
    v1 = builtin_version(
        "v1", store, args.dim, {"kind": "faiss_ivf_flat", "nlist": 256, "nprobe": 8}
    )
    seed_collection(
        catalog,
        "default",
        "bench",
        v1,
        sequential_ids(args.vectors),
        clustered(args.vectors, args.dim, seed=1),
        shards=4,
    )
    spec = parse_spec(
        {
            "id": "online-bench",
            "collection": "bench",
            "strategy": "online",
            "source": v1.model_dump(mode="json"),
            "target": builtin_version(
                "v2", store, args.dim, {"kind": "hnswlib_hnsw", "m": 16, "ef_search": 64}
            ).model_dump(mode="json"),
            "shards": {"count": args.shards},
            "max_parallel_shards": 2,
            "max_vectors_per_second": args.throttle,
            "gates": {"min_recall": 0.8, "sample_queries": 200},
            "online": {
                "settle_seconds": 2,
                "shadow": {
                    "percent": args.shadow_percent,
                    "seconds": args.step_seconds,
                    "min_samples": args.min_samples,
                    "min_overlap": 0.5,
                    "max_p99_ratio": 10.0,
                },
                "ramp": {"steps": [1, 10, 50], "step_seconds": args.step_seconds},
            },
            "cutover": {"mode": "manual", "bake_seconds": args.step_seconds * 2},
            "budget": {"max_p99_ratio": args.budget} if args.budget else None,
        }
    )
    queries = open_source(spec).sample(1000, seed=5)[1]
    # The first seconds (connections, the index's first pages) are left out of the baseline.
    phase = {"now": "WARMUP"}
    timeline: list[tuple[float, str]] = []  # when each phase was seen to begin

    def enter(now: str) -> None:
        if now != phase["now"]:
            timeline.append((time.time(), now))
        phase["now"] = now

    paces: dict[str, float] = {}  # the lowest pace share the budget set, by phase
    # With --serving-cores, the application's side (the gateway and its clients) and the
    # migration's (the worker, the Temporal server, this process) on cores of their own, as
    # when the migration's fleet and the application's servers are different machines.
    split = split_cores(args.serving_cores)
    serving_cores, migration_cores = split if split is not None else (None, None)
    # The gateway in a process of its own, as `vecmigrate serve` runs in production (with
    # --secure, with TLS and every request with an API key): in this process it shared the GIL
    # with the drill's Temporal client and its polling.
    serving = ExitStack()
    with pinned(serving_cores):
        gateway = serving.enter_context(gateway_process(catalog_url, home, secure=args.secure))
    # The clients in a process of their own, as they run elsewhere in production: in the
    # gateway's process they took turns with its handlers at the GIL.
    load = LoadProcess(
        gateway.url,
        "default",
        "bench",
        queries,
        clients=args.clients,
        rate=args.rate,
        phase=lambda: phase["now"],
        headers=gateway.headers,
        cafile=gateway.cafile,
    )
    # From here this process is on the migration's side: the Temporal server and the worker it
    # starts, and the Temporal client's threads, take this thread's cores.
    if migration_cores is not None:
        os.sched_setaffinity(0, migration_cores)
    server = DevServer(home / "temporal.db", port=free_port(), ui_port=free_port(), ui=False)
    server.start()
    began = time.monotonic()
    # The worker is its own process, as in production: the gateway does not share a GIL with
    # index builds.
    worker = _start_worker(server.address, catalog_url)
    try:
        client = await connect(server.address)
        with pinned(serving_cores):
            load.start()
        cores = _cores_of(
            gateway=gateway.pid, clients=load.pid, worker=worker.pid, temporal=server.process
        )
        await asyncio.sleep(min(3.0, args.idle_seconds / 3))
        enter("IDLE")
        console.log(f"idle baseline for {args.idle_seconds:.0f}s with {args.clients} clients")
        await asyncio.sleep(args.idle_seconds)
        console.log("online migration drill under load")
        watcher = asyncio.create_task(watch_budget(catalog, spec.migration_id, phase, paces))
        try:
            final = await run_drill(MigrationClient(client, "bench"), spec, enter)
        finally:
            watcher.cancel()
        enter("AFTER")
        await asyncio.sleep(2.0)
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        load.stop()
        serving.close()
        server.stop()
    requests = load.requests()
    verdict = verify(load.states, open_target(spec))
    order = ["IDLE", *(str(p) for p in LIFECYCLE["online"].phases), "AFTER"]
    rows = latency_table(requests, order)
    idle = next(r for r in rows if r["phase"] == "IDLE")
    against_idle(rows, idle, args.budget, paces, answered_millis(requests, SEARCHES))
    late = slowest(requests, timeline)
    for row in rows:
        row["slowest_searches"] = late.get(str(row["phase"]), [])
    state = Latencies(catalog).budget(spec.migration_id)
    backfill = next((r for r in rows if r["phase"] == "BACKFILLING"), None)
    ratio = (
        round(backfill["search_p99_ms"] / idle["search_p99_ms"], 2)
        if backfill and backfill["search_p99_ms"] and idle["search_p99_ms"]
        else None
    )
    return {
        "vectors": args.vectors,
        "dim": args.dim,
        "clients": args.clients,
        "rate_per_client": args.rate,
        "throttle": args.throttle,
        "final_phase": str(final.phase),
        "cutovers": final.cutovers,
        "requests": len(requests),
        "failed": sum(r.status != 200 for r in requests),
        "writes_checked": verdict.writes_checked,
        "deletes_checked": verdict.deletes_checked,
        "lost_writes": verdict.lost_writes,
        "wrong_vectors": verdict.wrong_vectors,
        "resurrected_deletes": verdict.resurrected,
        "search_p99_backfill_over_idle": ratio,
        "budget": args.budget,
        "budget_met_in_every_phase": (
            all(r["met_budget"] is not False for r in rows) if args.budget else None
        ),
        "budget_missed_beyond_noise": (
            [r["phase"] for r in rows if r["verdict"] == "missed"] if args.budget else None
        ),
        "budget_last_state": state.line() if state is not None else None,
        "seconds": round(time.monotonic() - began, 1),
        "serving_cores": None if serving_cores is None else sorted(serving_cores),
        "migration_cores": None if migration_cores is None else sorted(migration_cores),
        "cores": cores,
        "phases": rows,
        "timeline": timeline,
    }


def _cores_of(**processes: int | subprocess.Popen[bytes] | None) -> dict[str, list[int]]:
    """The cores each process may run on, as the system has them (Linux; else empty)."""
    if not hasattr(os, "sched_getaffinity"):
        return {}
    pids = {k: p.pid if isinstance(p, subprocess.Popen) else p for k, p in processes.items()}
    return {k: sorted(os.sched_getaffinity(pid)) for k, pid in pids.items() if pid is not None}


def _start_worker(address: str, catalog_url: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        worker_command(address, "bench", catalog_url),
        env={**os.environ, "OMP_NUM_THREADS": "1", "VECMIGRATE_CONCURRENCY": "2"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def watch_budget(
    catalog: Catalog, migration_id: str, phase: dict[str, str], paces: dict[str, float]
) -> None:
    """Read the budget's state (as `vecmigrate status` does) every half second: the lowest
    pace share of each phase, from the states written in it (a pacer writes once a second
    while it runs: the copy, the build, the catch-up, the checks, the gates; a router while
    its shadow reads are throttled or stop being so)."""
    latencies = Latencies(catalog)
    while True:
        state = await asyncio.to_thread(latencies.budget, migration_id)
        now = phase["now"]
        if state is not None and time.time() - state.at <= 2.0:  # written in this phase
            paces[now] = min(paces.get(now, 1.0), state.share)
        await asyncio.sleep(0.5)


def slowest(
    requests: list[Request], timeline: list[tuple[float, str]], n: int = 3
) -> dict[str, list[tuple[float, float]]]:
    """For each phase, its ``n`` slowest answered searches: milliseconds, and
    seconds since the phase was seen to begin (a phase entered twice, from its latest entry
    before the search): whether a phase's p99 comes from its first moments or from all of it."""
    found: dict[str, list[tuple[float, float]]] = {}
    for r in requests:
        if r.kind not in SEARCHES or r.status != 200:
            continue
        entries = [t for t, p in timeline if p == r.phase and t <= r.at]
        since = r.at - entries[-1] if entries else float("nan")
        found.setdefault(r.phase, []).append((round(r.ms, 1), round(since, 2)))
    return {p: sorted(found[p], reverse=True)[:n] for p in found}


def against_idle(
    rows: list[dict[str, object]],
    idle: dict[str, object],
    budget: float | None,
    paces: dict[str, float],
    millis: dict[str, np.ndarray],
) -> None:
    """Add to each phase its search p99 over the idle p99 of the same run, with an interval
    of at least 95 % confidence, whether the ratio meets the budget, the verdict on the
    interval (None without a budget), and the lowest pace the budget set in it.

    A phase's p99 rests on its few slowest searches (the 3rd slowest of 300), so the ratio
    alone passes or fails on a millisecond of scheduling. The interval is distribution-free:
    each p99's order-statistic interval at 97.5 % (:func:`quantile_interval`), the ratio's
    ends the phase's low end over the idle's high end and the phase's high end over the
    idle's low end. Under about 300 searches a p99's high end is the slowest search, which
    covers less than claimed on that side. "missed" is an interval wholly over the budget,
    "met" one wholly within it, "within noise" one across it."""
    base = idle["search_p99_ms"]
    quiet = millis.get("IDLE")
    idle_ci = None if quiet is None else quantile_interval(quiet, 0.99, 0.975)
    for row in rows:
        p99 = row["search_p99_ms"]
        ratio = (
            round(p99 / base, 2)
            if isinstance(p99, float) and isinstance(base, float) and base
            else None
        )
        row["search_p99_over_idle"] = ratio
        row["met_budget"] = None if budget is None or ratio is None else ratio <= budget
        phase = millis.get(str(row["phase"]))
        phase_ci = None if phase is None else quantile_interval(phase, 0.99, 0.975)
        interval = None
        if ratio is not None and phase_ci is not None and idle_ci is not None and idle_ci[0]:
            interval = (phase_ci[0] / idle_ci[1], phase_ci[1] / idle_ci[0])
        row["p99_over_idle_95ci"] = (
            None if interval is None else f"{interval[0]:.2f}-{interval[1]:.2f}"
        )
        row["verdict"] = None
        if budget is not None and interval is not None:
            lo, hi = interval
            row["verdict"] = "met" if hi <= budget else "missed" if lo > budget else "within noise"
        row["lowest_pace"] = paces.get(str(row["phase"]))


def plot(result: dict[str, object], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["phases"]
    assert isinstance(rows, list)
    names = [r["phase"] for r in rows]
    fig, ax = plt.subplots(figsize=(11, 4.5))
    xs = range(len(names))
    for offset, key, label in (
        (-0.3, "search_p50_ms", "search p50"),
        (-0.1, "search_p99_ms", "search p99"),
        (0.1, "write_p50_ms", "write p50"),
        (0.3, "write_p99_ms", "write p99"),
    ):
        ax.bar([x + offset for x in xs], [r[key] or 0 for r in rows], width=0.2, label=label)
    ax.set_xticks(list(xs), names, rotation=35, ha="right")
    ax.set_ylabel("ms")
    ax.set_title(
        f"gateway latency per phase: {result['vectors']:,} vectors, {result['clients']} clients, "
        f"{result['failed']} failed, {result['lost_writes']} lost writes"
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# The printed table's columns: (heading, the phase row's key). The JSON keeps every key.
COLUMNS = [
    ("phase", "phase"),
    ("reqs", "requests"),
    ("failed", "failed"),
    ("p50", "search_p50_ms"),
    ("p99", "search_p99_ms"),
    ("w p50", "write_p50_ms"),
    ("w p99", "write_p99_ms"),
    ("p99/idle", "search_p99_over_idle"),
    ("95% CI", "p99_over_idle_95ci"),
    ("verdict", "verdict"),
    ("pace", "lowest_pace"),
]


def cell(value: object) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def phase_table(rows: list[dict[str, Any]], title: str) -> Table:
    """The phases as a table a 120-column terminal shows whole: search (p50, p99) and write
    (w) times in ms, the p99 over idle with its interval and verdict, the lowest pace the
    budget set, and the phase's slowest search with the seconds into the phase it came at
    (the JSON has every key, and the three slowest)."""
    table = Table(title=title, box=None, pad_edge=False, header_style="bold")
    for heading, _ in COLUMNS:
        table.add_column(heading, justify="left" if heading == "phase" else "right", no_wrap=True)
    table.add_column("slowest @ s", justify="right", no_wrap=True)
    for row in rows:
        cells = [cell(row.get(key)) for _, key in COLUMNS]
        slowest = row.get("slowest_searches") or []
        cells.append(f"{slowest[0][0]} @ {slowest[0][1]:.1f}" if slowest else "-")
        table.add_row(*cells)
    return table


def main() -> None:
    p = sized_parser(__doc__, vectors=100_000, dim=64, shards=8)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--rate", type=float, default=25.0, help="requests/s per client")
    p.add_argument("--throttle", type=float, default=50_000.0, help="copy vectors/s")
    p.add_argument("--step-seconds", type=float, default=5.0)
    p.add_argument("--idle-seconds", type=float, default=10.0)
    p.add_argument("--shadow-percent", type=float, default=20.0)
    p.add_argument("--min-samples", type=int, default=20, help="shadow pairs each gate needs")
    p.add_argument(
        "--secure", action="store_true", help="the gateway with TLS and an API key per request"
    )
    p.add_argument(
        "--budget",
        type=float,
        default=None,
        help="latency budget: search p99 at most this times the idle p99 (spec budget)",
    )
    p.add_argument(
        "--serving-cores",
        type=int,
        default=0,
        help="pin the gateway and the clients to this many cores of their own, and the worker, "
        "the Temporal server and this process to the others (Linux; 0: no pinning)",
    )
    p.add_argument("--home", type=Path, default=None)
    args = p.parse_args()
    console = wide_console()
    result = asyncio.run(main_async(args, console))
    rows = result["phases"]
    assert isinstance(rows, list)
    title = f"online migration under load: {args.vectors:,} vectors, {args.clients} clients"
    console.print(phase_table(rows, title))
    for key in (
        "requests",
        "failed",
        "writes_checked",
        "deletes_checked",
        "lost_writes",
        "wrong_vectors",
        "resurrected_deletes",
        "search_p99_backfill_over_idle",
        "budget",
        "budget_met_in_every_phase",
        "budget_missed_beyond_noise",
        "budget_last_state",
        "cutovers",
        "seconds",
        "serving_cores",
        "migration_cores",
    ):
        console.print(f"{key:32} {result[key]}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "online_load.json").write_text(json.dumps(result, indent=2))
    plot(result, args.out / "online_load.png")
    console.print(f"wrote {args.out / 'online_load.json'} and {args.out / 'online_load.png'}")
    bad = result["failed"] or result["lost_writes"] or result["wrong_vectors"]
    sys.exit(1 if bad or result["resurrected_deletes"] else 0)


if __name__ == "__main__":
    main()
