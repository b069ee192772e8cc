"""Cost of the full gate suite against raw FAISS exact search of the same queries.

    python bench/validation_cost.py --sizes 100000,1000000
    python bench/validation_cost.py --sizes 100000 --pairs 3

Streaming (the default since the copy computes the shard checks): the copy folds each shard's
profiles and the recall gate's exact search into its batches, and the suite checks the target
by its count and a read-back sample instead of reading both versions again. Measured in
``--pairs`` rounds after one not counted (each side's cold start: the stores' first reads,
the indexes' first loads, FAISS's first search), each the streamed suite then raw FAISS exact
search of the same queries (``streamed_suite_s``, ``streamed_raw_s``: medians;
``streamed_ratio``: the median of the rounds' ratios, ``streamed_ratios``: each round's), the
full-read suite (``gates.deep``) in
the same rounds (``full_suite_s``, ``full_ratio``), FAISS's own part of the suite's retrieval
in the same rounds (``library_work_s``, ``library_ratio``: loading both indexes, their batch
searches and the latency gate's single queries, with nothing of vecmigrate around them), and
the copy's time with and without the streaming (``copy_streamed_s``, ``copy_plain_s``: what
the streaming moved into the copy).

For each size: v1 and v2 hold the same vectors (v2 copied by vecmigrate, both indexed with IVF),
then the whole validation runs (every shard profiled on both sides, recall@10 of both indexes
against exact search with 1,000 queries, overlap, latency, distribution). The raw figure is
FAISS exact search (IndexFlatL2) of the same 1,000 queries over the same vectors, in the same
run. Target: the suite within 1.2x of the raw exact search. Also printed: the time to read both
versions from the store once (no checks), the floor under any suite that checks stored data,
the suite's time over the raw search plus that read, and the CPU seconds of each. The floor
ratio is the least any suite that does the raw search and that read could reach on this
machine's cores (their CPU seconds spread over every core, or the read alone if longer):
where it is above 1.2, the target cannot be met here by a suite that reads what it checks.
"""

from __future__ import annotations

import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import faiss
import numpy as np

from bench.common import paired_bar_chart, report, scratch, sized_parser
from vecmigrate import validation
from vecmigrate.catalog.catalog import Catalog
from vecmigrate.catalog.journal import Journal
from vecmigrate.config import sqlite_url
from vecmigrate.data.backfill import copy_shard, open_source, open_target, prepare
from vecmigrate.data.datasets import clustered
from vecmigrate.data.seed import seed_collection, sequential_ids
from vecmigrate.indexes.build import artifact_dir, build_shard, register_index
from vecmigrate.model.gates import GateReport, ShardCheck
from vecmigrate.model.spec import BuiltinStoreRef, MigrationSpec, parse_spec
from vecmigrate.model.tasks import ShardRef
from vecmigrate.records.vectors import Distances, Ids, merge_topk
from vecmigrate.testing.chaos import builtin_version
from vecmigrate.validation import stream
from vecmigrate.validation.run import measured_report

CORES = len(os.sched_getaffinity(0))


def streamed_suite(
    catalog: Catalog,
    spec: MigrationSpec,
    shards: list[ShardRef],
    source_index: str | None,
    target_index: str,
) -> tuple[GateReport, float]:
    """The gate suite as the workflow runs it on a streamed copy: each shard's check from the
    copy's figures (count and read-back checked), ``max_parallel_shards`` of them at a time as
    the workflow runs their activities, then the figures from the merged truths; and the
    seconds the shard checks took of it."""
    began = time.perf_counter()
    journal = Journal(catalog)
    source, target = open_source(spec), open_target(spec)
    queries = stream.stored_queries(journal, spec)
    assert queries is not None

    def check_one(shard: ShardRef) -> tuple[ShardCheck, tuple[Distances, Ids] | None]:
        return stream.shard_check(journal, spec, source, target, shard, queries)

    with ThreadPoolExecutor(spec.max_parallel_shards) as pool:
        checked_shards = list(pool.map(check_one, shards))
    checks, truths = [], []
    for check, truth in checked_shards:
        assert check.basis == "streamed", check.basis
        checks.append(check)
        assert truth is not None
        truths.append(truth)
    checked = time.perf_counter() - began
    merged = merge_topk(truths, queries.ask)
    gates = measured_report(
        spec, checks, catalog, source, target, source_index, target_index, queries, merged
    )
    return gates, checked


def raw_exact(vectors: np.ndarray, q: np.ndarray, k: int) -> tuple[float, float]:
    """Wall and CPU seconds of FAISS exact search of ``q`` over ``vectors``."""
    cpu, began = time.process_time(), time.perf_counter()
    flat = faiss.IndexFlatL2(vectors.shape[1])
    flat.add(vectors)
    flat.search(q, k)
    return time.perf_counter() - began, time.process_time() - cpu


def library_work(
    catalog: Catalog, index_ids: list[str], q: np.ndarray, k: int, timed: int
) -> float:
    """Seconds of what the suite's retrieval stages ask of FAISS itself, one after another:
    read each version's shard files (no checksum), search each with every query in one batch
    (one ``IndexShards`` a version), and search ``timed`` of the queries one at a time on
    both versions in turn, as the latency gate does (once each, no second timing of the
    tail). What the suite spends beyond it is its own: the checksums, the shard checks, the
    distribution samples, the Python around each call."""
    began = time.perf_counter()
    shards: list[Any] = []  # IndexShards does not own its shards: held here
    versions: list[Any] = []
    for index_id in index_ids:
        library: Any = faiss  # its type stubs lack IndexShards' threaded and ids flags
        joined = library.IndexShards(q.shape[1], False, False)
        for artifact in catalog.get_index(index_id).artifacts:
            manifest = Path(artifact["uri"])
            meta = json.loads(manifest.read_text())
            index = faiss.read_index(str(manifest.parent / meta["file"]))
            if "nprobe" in meta["index"]:
                faiss.extract_index_ivf(index).nprobe = int(meta["index"]["nprobe"])
            joined.add_shard(index)
            shards.append(index)
        joined.search(q, k)
        versions.append(joined)
    rows = np.unique(np.linspace(0, len(q) - 1, timed).round().astype(np.int64))
    for j, row in enumerate(rows.tolist()):
        for joined in versions if j % 2 == 0 else versions[::-1]:
            joined.search(q[row : row + 1], k)
    return time.perf_counter() - began


def copy_all(spec: MigrationSpec, journal: Journal, shards: list[ShardRef], watch: bool) -> float:
    """Copy every shard (with the streamed checks or without); seconds."""
    began = time.perf_counter()
    for shard in shards:
        opener = partial(stream.open_stream, journal, spec, shard) if watch else None
        copy_shard(spec, shard, journal, watch=opener)
    return time.perf_counter() - began


def one(n: int, dim: int, queries: int, pairs: int = 3) -> dict[str, Any]:
    home = scratch("validation")
    catalog = Catalog(sqlite_url(home / "catalog.db"))
    store = BuiltinStoreRef(url=sqlite_url(home / "store.db"), artifacts=str(home / "artifacts"))
    vectors = clustered(n, dim, seed=6)
    nlist = int(max(8, min(4096, 4 * np.sqrt(n // 4))))
    ivf = {"kind": "faiss_ivf_flat", "nlist": nlist, "nprobe": 16}
    v1 = builtin_version("v1", store, dim, ivf)
    seed_collection(catalog, "default", "bench", v1, sequential_ids(n), vectors, shards=4)
    spec = parse_spec(
        {
            "id": f"validation-{n}",
            "collection": "bench",
            "source": v1.model_dump(mode="json"),
            "target": builtin_version("v2", store, dim, ivf).model_dump(mode="json"),
            "shards": {"count": 4},
            "gates": {"sample_queries": queries, "k": 10, "min_recall": 0.5},
        }
    )
    prep = prepare(catalog, spec, "bench")
    journal = Journal(catalog)
    target = open_target(spec)
    directory = artifact_dir(spec.target.store, "default", "bench", "v2")
    copy_streamed = copy_all(spec, journal, prep.shards, watch=True)
    artifacts = [build_shard(target, spec.target, shard, directory) for shard in prep.shards]
    record = register_index(catalog, "default", "bench", spec.target, artifacts, spec.migration_id)
    source = open_source(spec)
    # The same copy without the streaming, into a version of its own: what streaming costs it.
    plain = parse_spec(
        {
            **spec.model_dump(mode="json"),
            "id": f"validation-{n}-plain",
            "target": builtin_version("v3", store, dim, ivf).model_dump(mode="json"),
        }
    )
    plain_prep = prepare(catalog, plain, "bench")
    copy_plain = copy_all(plain, journal, plain_prep.shards, watch=False)

    # Rounds of three, under the same load: the streamed suite, the full-read suite (what
    # gates.deep runs), then raw exact search of the same (stored) queries.
    fixed = stream.stored_queries(journal, spec)
    assert fixed is not None
    source_index = prep.source_index
    assert source_index is not None
    streamed, full, raws, ratios, full_ratios, checking = [], [], [], [], [], []
    library_runs: list[float] = []
    # One round first, not counted: the first reads of the stores, the indexes' first loads
    # and FAISS's first search of the run are each side's cold start, not its cost.
    for counted in [False] + [True] * pairs:
        began = time.perf_counter()
        streamed_gate, checked = streamed_suite(
            catalog, spec, prep.shards, prep.source_index, record.id
        )
        streamed_s = time.perf_counter() - began
        began = time.perf_counter()
        validation.validate_migration(
            catalog, spec, source, target, prep.shards, prep.source_index, record.id
        )
        full_s = time.perf_counter() - began
        raw_s = raw_exact(vectors, fixed.source, fixed.ask)[0]
        library_s = library_work(
            catalog,
            [record.id, source_index],
            fixed.source,
            fixed.ask,
            spec.gates.latency_queries,
        )
        if counted:
            library_runs.append(library_s)
            streamed.append(streamed_s)
            checking.append(checked)
            full.append(full_s)
            raws.append(raw_s)
            ratios.append(streamed_s / raw_s)
            full_ratios.append(full_s / raw_s)

    cpu, began = time.process_time(), time.perf_counter()
    gate = validation.validate_migration(
        catalog, spec, source, target, prep.shards, prep.source_index, record.id
    )
    suite, suite_cpu = time.perf_counter() - began, time.process_time() - cpu
    # The floor under any suite that checks the stored data: reading both versions once.
    cpu, began = time.process_time(), time.perf_counter()
    for side in (source, target):
        for shard in prep.shards:
            for _batch in side.iter_shard(shard, 50_000, read_ahead=True):
                pass
    reads, reads_cpu = time.perf_counter() - began, time.process_time() - cpu
    _, q = source.sample(queries, seed=0)
    raw, raw_cpu = raw_exact(vectors, q, 11)
    return {
        "vectors": n,
        "queries": queries,
        "streamed_suite_s": round(float(np.median(streamed)), 2),
        "streamed_raw_s": round(float(np.median(raws)), 2),
        "streamed_ratio": round(float(np.median(ratios)), 2),
        # Each round's ratio: the load of a shared machine moves them more than any change.
        "streamed_ratios": [round(float(r), 2) for r in ratios],
        # Of the streamed suite, the shard checks (counts, read-back): the rest is retrieval.
        "streamed_checks_s": round(float(np.median(checking)), 2),
        # FAISS's own part of the suite's retrieval (see library_work), against the raw search.
        "library_work_s": round(float(np.median(library_runs)), 2),
        "library_ratio": round(float(np.median(library_runs) / np.median(raws)), 2),
        "full_suite_s": round(float(np.median(full)), 2),
        "full_ratio": round(float(np.median(full_ratios)), 2),
        "streamed_passed": streamed_gate.passed,
        "copy_streamed_s": round(copy_streamed, 2),
        "copy_plain_s": round(copy_plain, 2),
        "gate_suite_s": round(suite, 2),
        "raw_exact_s": round(raw, 2),
        "ratio": round(suite / raw, 2),
        "suite_cpu_s": round(suite_cpu, 2),
        "raw_cpu_s": round(raw_cpu, 2),
        "read_both_s": round(reads, 2),
        "read_both_cpu_s": round(reads_cpu, 2),
        "raw_plus_reads_ratio": round(suite / (raw + reads), 2),
        # No suite that searches and reads both versions can take less wall time than their
        # CPU time spread over every core, nor less than the read alone.
        "floor_ratio": round(max((raw_cpu + reads_cpu) / CORES, reads, raw) / raw, 2),
        "passed": gate.passed,
        "target_recall": gate.target_recall,
    }


def main() -> None:
    p = sized_parser(__doc__, dim=128)
    p.add_argument("--sizes", default="100000,1000000")
    p.add_argument("--queries", type=int, default=1_000)
    p.add_argument(
        "--pairs", type=int, default=3, help="rounds of streamed suite, full suite, raw search"
    )
    args = p.parse_args()
    rows = [one(int(s), args.dim, args.queries, args.pairs) for s in args.sizes.split(",")]

    plot = paired_bar_chart(
        [f"{r['vectors']:,}" for r in rows],
        {
            "streamed gate suite": [r["streamed_suite_s"] for r in rows],
            "raw FAISS exact search": [r["streamed_raw_s"] for r in rows],
        },
        ylabel="seconds",
        xlabel="vectors",
        dpi=110,
    )

    report(
        "validation_cost",
        f"validation gates vs raw exact search ({args.queries:,} queries, k=10)",
        rows,
        {"target": "ratio <= 1.2", "cores": CORES},
        plot,
        out=args.out,
    )


if __name__ == "__main__":
    main()
