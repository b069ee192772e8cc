"""What authentication and TLS cost the gateway: latency and throughput under the same load.

    python bench/gateway_compare.py --vectors 20000 --clients 8 --seconds 10 --rounds 3

Seeds one collection, then serves it in turn with ``vecmigrate serve`` twice: with
authentication (an API key) and TLS, and without either. Each server runs in its own process;
the same closed-loop clients (``vecmigrate.testing.loadgen``: searches, upserts and deletes)
drive each for ``--seconds``, the servers taking turns for ``--rounds`` rounds so that drift on a
shared machine hits all of them. Prints search and write p50/p99 and requests per second per
server, the medians over rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
from rich.table import Table

from bench.common import gateway_process, scratch, seeded_collection, sized_parser, wide_console
from vecmigrate.data.datasets import clustered
from vecmigrate.testing.loadgen import LoadGenerator


def cpu_seconds(pid: int) -> float:
    """User and system CPU seconds a process has used (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(kind: str, setup: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    secure = kind == "asgi+auth+tls"
    with gateway_process(setup["catalog"], setup["home"], secure=secure) as gateway:
        pid = gateway.pid
        context = ssl.create_default_context(cafile=gateway.cafile) if gateway.cafile else None
        load = LoadGenerator(
            gateway.url,
            "default",
            "bench",
            setup["queries"],
            clients=args.clients,
            mix=(args.search_share, (1 - args.search_share) * 0.75, (1 - args.search_share) / 4),
            headers=gateway.headers,
            tls=context,
            seed=int(time.time()),
        )
        load.start()
        time.sleep(args.warmup)
        began = len(load.requests())
        start, cpu_start = time.monotonic(), cpu_seconds(pid)
        time.sleep(args.seconds)
        stop, cpu_stop = time.monotonic(), cpu_seconds(pid)
        load.stop()
    requests = load.requests()[began:]
    searches = np.array([r.ms for r in requests if r.kind == "search" and r.status == 200])
    writes = np.array([r.ms for r in requests if r.kind != "search" and r.status == 200])
    return {
        "server": kind,
        "requests": len(requests),
        "failed": sum(r.status != 200 for r in requests),
        "per_second": round(len(requests) / (stop - start), 1),
        # The server's own CPU per request: what the machine's other load does not change.
        "server_cpu_ms_per_request": round(
            1000 * (cpu_stop - cpu_start) / max(1, len(requests)), 3
        ),
        "search_p50_ms": round(float(np.percentile(searches, 50)), 2),
        "search_p99_ms": round(float(np.percentile(searches, 99)), 2),
        "write_p50_ms": round(float(np.percentile(writes, 50)), 2) if writes.size else None,
        "write_p99_ms": round(float(np.percentile(writes, 99)), 2) if writes.size else None,
    }


def main() -> None:
    p = sized_parser(__doc__, vectors=20_000, dim=64)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--search-share", type=float, default=0.8)
    args = p.parse_args()
    console = wide_console()
    home = scratch("gateway")
    vectors = clustered(args.vectors, args.dim, seed=1)
    console.log(f"seeding {args.vectors:,} x {args.dim}")
    catalog_url, _ = seeded_collection(home, "bench", vectors, {"kind": "hnswlib_hnsw", "m": 16})
    setup = {
        "catalog": catalog_url,
        "home": home,
        "queries": vectors[np.random.default_rng(3).choice(args.vectors, 1000, replace=False)],
    }
    kinds = ["asgi+auth+tls", "asgi"]
    runs: list[dict[str, Any]] = []
    for n in range(args.rounds):
        order = kinds[n % len(kinds) :] + kinds[: n % len(kinds)]
        for kind in order:
            console.log(f"round {n + 1}: {kind}")
            runs.append({**measure(kind, setup, args), "round": n + 1})
    table = Table(
        title=f"gateway under {args.clients} closed-loop clients, {args.vectors:,} x {args.dim}, "
        f"{args.search_share:.0%} searches ({args.rounds} rounds of {args.seconds:g} s; medians)"
    )
    columns = [
        "server",
        "requests/s",
        "server CPU ms/request",
        "search p50",
        "search p99",
        "write p50",
        "write p99",
    ]
    for col in (*columns, "failed"):
        table.add_column(col, justify="right")
    summary = []
    for kind in kinds:
        mine = [r for r in runs if r["server"] == kind]

        def med(key: str, mine: list[dict[str, Any]] = mine) -> float | None:
            values = [r[key] for r in mine if r[key] is not None]
            return round(statistics.median(values), 2) if values else None

        row = {
            "server": kind,
            "per_second": med("per_second"),
            "server_cpu_ms_per_request": med("server_cpu_ms_per_request"),
            "search_p50_ms": med("search_p50_ms"),
            "search_p99_ms": med("search_p99_ms"),
            "write_p50_ms": med("write_p50_ms"),
            "write_p99_ms": med("write_p99_ms"),
            "failed": sum(r["failed"] for r in mine),
        }
        summary.append(row)
        table.add_row(*(str(v) for v in row.values()))
    console.print(table)
    for r in runs:
        console.print(json.dumps(r))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gateway_compare.json").write_text(
        json.dumps(
            {"summary": summary, "runs": runs, "args": vars(args) | {"out": str(args.out)}},
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
