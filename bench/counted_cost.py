"""What the copy's file of what it counted costs: the copy's throughput with the streamed shard
checks and that file, with the streamed checks alone, and with neither, in the same run, and
the file's size per million records.

    python bench/counted_cost.py --vectors 100000 --dim 64 --rounds 3

The copy keeps, with its streamed figures, each record's share of both profiles as it counted
it (``vecmigrate.validation.stream.Counted``: one numpy file per batch and side), so that the
shard check can leave records written through the router out of the figures without a full
read. Each round copies the same collection (built-in store, 4 shards, batches of 10,000) into
a new version three ways, in an order that rotates between rounds; the medians are reported.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from bench.common import bar_chart, report, scratch, sized_parser
from vecmigrate.catalog.catalog import Catalog
from vecmigrate.catalog.journal import Journal
from vecmigrate.config import sqlite_url
from vecmigrate.data.backfill import copy_shard, open_source, prepare
from vecmigrate.data.datasets import clustered
from vecmigrate.data.seed import seed_collection, sequential_ids
from vecmigrate.model.spec import BuiltinStoreRef, MigrationSpec, parse_spec
from vecmigrate.model.tasks import ShardRef
from vecmigrate.testing.chaos import builtin_version
from vecmigrate.validation import stream

SHARDS = 4


def _without_file(
    journal: Journal, spec: MigrationSpec, shard: ShardRef, fresh: bool, *stores: Any
) -> stream.ShardStream | None:
    """The copy's stream as it was before the file: the streamed figures alone."""
    found = stream.open_stream(journal, spec, shard, fresh, *stores)
    if found is not None:
        found.counted = None
    return found


def copy_all(catalog: Catalog, spec: MigrationSpec, mode: str) -> float:
    """Seconds to copy every shard of ``spec``: ``counted`` (streamed figures and the file),
    ``streamed`` (the figures alone) or ``plain`` (neither)."""
    journal = Journal(catalog)
    shards = prepare(catalog, spec, "bench").shards
    began = time.perf_counter()
    for shard in shards:
        opener: Callable[..., Any] | None = None
        if mode == "counted":
            opener = partial(stream.open_stream, journal, spec, shard)
        elif mode == "streamed":
            opener = partial(_without_file, journal, spec, shard)
        copy_shard(spec, shard, journal, watch=opener)
    return time.perf_counter() - began


def main() -> None:
    p = sized_parser(__doc__, vectors=100_000, dim=64, batch_size=10_000)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    n, dim = args.vectors, args.dim
    home = scratch("counted")
    catalog = Catalog(sqlite_url(home / "catalog.db"))
    store = BuiltinStoreRef(url=sqlite_url(home / "store.db"), artifacts=str(home / "artifacts"))
    ivf = {"kind": "faiss_ivf_flat", "nlist": 64, "nprobe": 8}
    v1 = builtin_version("v1", store, dim, ivf)
    seed_collection(
        catalog, "default", "bench", v1, sequential_ids(n), clustered(n, dim, seed=6), shards=4
    )
    modes = ["counted", "streamed", "plain"]
    seconds: dict[str, list[float]] = {m: [] for m in modes}
    size = 0
    for r in range(args.rounds):
        order = modes[r % 3 :] + modes[: r % 3]
        for mode in order:
            name = f"v{2 + r * 3 + modes.index(mode)}"
            spec = parse_spec(
                {
                    "id": f"counted-{name}",
                    "collection": "bench",
                    "source": v1.model_dump(mode="json"),
                    "target": builtin_version(name, store, dim, ivf).model_dump(mode="json"),
                    "shards": {"count": SHARDS},
                    "batch_size": args.batch_size,
                    "gates": {"sample_queries": 1000, "k": 10, "min_recall": 0.5},
                }
            )
            seconds[mode].append(copy_all(catalog, spec, mode))
            if mode == "counted" and not size:
                journal = Journal(catalog)
                for i in range(SHARDS):
                    row = journal.stream(spec.migration_id, i)
                    assert row is not None
                    assert row.state["counted"] is not None
                    c = row.state["counted"]
                    root = stream.Counted.shard_root(spec, i)
                    size += stream.Counted(root, c["gen"], c["parts"]).nbytes()
    med = {m: float(np.median(seconds[m])) for m in modes}
    # The file's own part, alone: every batch's shares computed and written (both sides).
    source = open_source(spec)
    batches = [
        b.records
        for s in prepare(catalog, spec, "bench").shards
        for b in source.iter_shard(s, args.batch_size)
    ]
    writes = []
    for r in range(args.rounds):
        counted = stream.Counted(home / "alone" / str(r), "gen")
        began = time.perf_counter()
        for records in batches:
            counted.write(stream.shares(records), stream.shares(records))
        writes.append(time.perf_counter() - began)
    alone = float(np.median(writes))
    rows = [
        {
            "copy": m,
            "seconds": round(med[m], 2),
            "vectors_per_s": round(n / med[m]),
            "rounds_s": [round(x, 2) for x in seconds[m]],
        }
        for m in modes
    ]
    report(
        "counted_cost",
        f"copy with and without the file of what it counted ({n:,} x {dim}, built-in store)",
        rows,
        {
            "file_cost": f"{(med['counted'] / med['streamed'] - 1) * 100:.1f} % of the copy",
            "file_write_alone_s": round(alone, 3),
            "file_write_share": f"{alone / med['counted'] * 100:.1f} % of the copy with the file",
            "file_bytes": size,
            "file_mb_per_million_records": round(size / n * 1e6 / 1e6, 1),
        },
        plot=bar_chart(
            ["streamed figures and the file", "streamed figures alone", "neither"],
            [med[m] for m in modes],
            value_label="seconds to copy (median of the rounds)",
            title=f"copy of {n:,} x {dim}: what the streamed figures and their file cost",
            figsize=(7.5, 4),
        ),
        out=args.out,
    )


if __name__ == "__main__":
    main()
