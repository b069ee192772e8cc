"""What an application's write waits for while a migration copies into the same SQLite database.

    python bench/copy_write_stalls.py --vectors 500000 --dim 64 --repeat 3

SQLite takes one writer at a time, and a writer of another process that finds the database
busy sleeps in SQLite's busy handler, in steps of up to 100 ms, until it is free. A copy into
the built-in store on SQLite writes batches of ``--batch-size`` records: written in one
transaction, every application write that came meanwhile waited for the whole batch. Under a
latency budget (``budget`` in the spec) the copy writes each batch in turns of about 10 ms
(``BuiltinStore.write`` with ``between_turns``), at least ``TURN_GAP_SECONDS`` and the
budget's pauses between them; without one, in one transaction a batch, at full speed.

An application process upserts one record ``--rate`` times a second into one version while
``--copies`` copies (threads, as a worker copies the shards a migration copies at once) write
``--vectors`` records in all into other versions of the same database, at full pace: with
their batches in one transaction each, and in turns with ``TURN_GAP_SECONDS`` between them (as
under a budget that does not hold the copy back; one that does makes the pauses longer). The
application waits for the database either as vecmigrate's writers do (``engines.begin``: the
write lock taken as the transaction begins, tried again every 0.5-2 ms) or as a plain
SQLAlchemy transaction does (SQLite's busy handler, whose sleeps grow to 100 ms). Each round
runs the four, the order alternating by round. Printed, medians of ``--repeat`` rounds: the
application's write latency (p50, p90, p99, max), and the copies' records a second, each way.
"""

from __future__ import annotations

import multiprocessing
import statistics
import sys
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from bench.common import paired_bar_chart, report, scratch, sized_parser
from vecmigrate.catalog import engines
from vecmigrate.config import sqlite_url
from vecmigrate.data.budget import TURN_GAP_SECONDS
from vecmigrate.data.datasets import clustered
from vecmigrate.records.batch import Records
from vecmigrate.stores.base import Scope
from vecmigrate.stores.builtin import BuiltinStore

COPIES = ("one transaction a batch", "in turns")
WAITS = ("vecmigrate's steps", "SQLite's busy handler")
WAYS = [(copy, wait) for copy in COPIES for wait in WAITS]


def application(
    url: str, dim: int, rate: float, wait: str, ready: Any, done: Any, out: Any
) -> None:
    """Upsert one record ``rate`` times a second until ``done``, waiting for the database the
    ``wait`` way; put the latencies in ``out``."""
    store = BuiltinStore.open(url, Scope("app", "c", "v1"))
    if wait == "SQLite's busy handler":
        # Without the engine's write lock, ``begin`` is SQLAlchemy's: a deferred transaction
        # that meets a busy database in SQLite's busy handler.
        engines._write_locks.pop(id(store.engine))
    rng = np.random.default_rng(2)
    millis: list[float] = []
    store.upsert(np.array([-1]), rng.standard_normal((1, dim)).astype(np.float32))  # warm
    ready.set()
    next_id = 0
    while not done.is_set():
        vector = rng.standard_normal((1, dim)).astype(np.float32)
        began = time.perf_counter()
        store.upsert(np.array([next_id]), vector)
        millis.append((time.perf_counter() - began) * 1000)
        next_id += 1
        time.sleep(1 / rate)
    out.put(millis)


def one_round(
    home: Path, way: tuple[str, str], vectors: np.ndarray, batch: int, rate: float, copies: int
) -> dict[str, Any]:
    """The copies' seconds and the application's write latencies for one way of writing and
    of waiting."""
    name, wait = way
    url = sqlite_url(home / f"round-{time.monotonic_ns()}.db")
    n, dim = vectors.shape
    BuiltinStore.open(url, Scope("app", "c", "v1"), dim)
    # Each copy writes its share of the records into a version of its own, as the shards of a
    # migration copied at once (threads of one worker process) do.
    shares = np.array_split(np.arange(n), copies)
    targets = [BuiltinStore.open(url, Scope("app", "c", f"v{2 + c}"), dim) for c in range(copies)]
    spawn = multiprocessing.get_context("spawn")
    ready, done, out = spawn.Event(), spawn.Event(), spawn.Queue()
    app = spawn.Process(target=application, args=(url, dim, rate, wait, ready, done, out))
    app.start()
    ready.wait(60)
    turns = [0] * copies

    def between_turns(copy: int, rows: int) -> None:
        turns[copy] += 1
        time.sleep(TURN_GAP_SECONDS)  # as under a budget at full pace

    def copy(c: int) -> None:
        ids = shares[c]
        for at in range(0, len(ids), batch):
            part = ids[at : at + batch]
            records = Records.from_numpy(part, vectors[part])
            if name == "in turns":
                targets[c].write(records, between_turns=partial(between_turns, c))
            else:
                targets[c].write(records)

    began = time.perf_counter()
    threads = [threading.Thread(target=copy, args=(c,)) for c in range(copies)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - began
    done.set()
    millis = np.asarray(out.get(timeout=60))
    app.join(60)
    p50, p90, p99 = np.percentile(millis, [50, 90, 99]).tolist()
    batches = sum(-(-len(share) // batch) for share in shares)
    return {
        "seconds": seconds,
        "writes": len(millis),
        "p50": p50,
        "p90": p90,
        "p99": p99,
        "max": float(millis.max()),
        "turns_per_batch": (sum(turns) + batches) / batches,
    }


def main() -> None:
    p = sized_parser(__doc__, vectors=500_000, dim=64, batch_size=10_000)
    p.add_argument("--rate", type=float, default=50.0, help="application writes a second")
    p.add_argument("--copies", type=int, default=2, help="copies at once (max_parallel_shards)")
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    home = scratch("copy-write-stalls")
    vectors = clustered(args.vectors, args.dim, seed=3)
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {way: [] for way in WAYS}
    for round_ in range(args.repeat):
        for way in WAYS if round_ % 2 == 0 else reversed(WAYS):
            runs[way].append(one_round(home, way, vectors, args.batch_size, args.rate, args.copies))
    med = statistics.median
    rows = [
        {
            "copies write": way[0],
            "application waits": way[1],
            "app writes": int(med(r["writes"] for r in runs[way])),
            "write p50 ms": round(med(r["p50"] for r in runs[way]), 2),
            "write p90 ms": round(med(r["p90"] for r in runs[way]), 2),
            "write p99 ms": round(med(r["p99"] for r in runs[way]), 2),
            "write max ms": round(med(r["max"] for r in runs[way]), 1),
            "copy records/s": round(med(args.vectors / r["seconds"] for r in runs[way])),
            "transactions a batch": round(med(r["turns_per_batch"] for r in runs[way]), 1),
        }
        for way in WAYS
    ]
    row_of = dict(zip(WAYS, rows, strict=True))
    whole, turns = row_of[COPIES[0], WAITS[0]], row_of[COPIES[1], WAITS[0]]
    turns_handler = row_of[COPIES[1], WAITS[1]]
    report(
        "copy_write_stalls",
        f"an application's writes while {args.copies} copies of {args.vectors:,} x {args.dim} "
        "in all run (SQLite)",
        rows,
        {
            "write p99, one transaction / turns": round(
                whole["write p99 ms"] / turns["write p99 ms"], 1
            ),
            "write p99 in turns, SQLite's busy handler / vecmigrate's steps": round(
                turns_handler["write p99 ms"] / turns["write p99 ms"], 1
            ),
            "copy records/s, turns / one transaction": round(
                turns["copy records/s"] / whole["copy records/s"], 2
            ),
            "rounds": args.repeat,
        },
        plot=paired_bar_chart(
            ["p50", "p90", "p99", "max"],
            {
                f"waiting in {wait}": [
                    row_of[COPIES[1], wait][f"write {q} ms"] for q in ("p50", "p90", "p99", "max")
                ]
                for wait in WAITS
            },
            ylabel="ms an application's write took",
            xlabel="while the copies wrote their batches in turns",
        ),
        out=args.out,
    )


if __name__ == "__main__":
    main()
