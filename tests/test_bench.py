"""Every benchmark script runs, at a tiny size, and writes its JSON and its plot.

The figures themselves are not asserted (speed lives in the scripts' output, not in tests);
what is asserted is that each script works from a clone and checks what it claims to check.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent

RUNS = {
    "applier_stalls": ["--vectors", "4000", "--dim", "16", "--writes", "2000", "--repeat", "1"],
    "copy_write_stalls": ["--vectors", "20000", "--dim", "16", "--rate", "200", "--repeat", "1"],
    "load_stalls": ["--vectors", "4000", "--dim", "16", "--shards", "2", "--repeat", "1"],
    "capture_overhead": ["--rows", "2000", "--dim", "16", "--writes", "300", "--pairs", "2"],
    "router_overhead": ["--vectors", "3000", "--queries", "200", "--pairs", "3"],
    "write_latency": [
        "--vectors",
        "3000",
        "--dim",
        "16",
        "--writes",
        "1500",
        "--batch",
        "300",
        "--queries",
        "200",
    ],
    "validation_cost": ["--sizes", "4000", "--dim", "16", "--queries", "100"],
    "copy_throughput": ["--vectors", "5000", "--dim", "16", "--batch", "1000"],
    "counted_cost": ["--vectors", "4000", "--dim", "16", "--batch-size", "500", "--rounds", "1"],
    "payload_copy": ["--points", "600", "--dim", "8", "--repeat", "1", "--batch", "200"],
    "reembed_throughput": ["--records", "1500", "--models", "lsa"],
    "migration_throughput": ["--data", "clustered", "--vectors", "6000", "--dim", "16"],
    "build_rates": ["--vectors", "600", "--dim", "8"],
    "blas_kernels": ["--vectors", "2000", "--dim", "16", "--rounds", "1"],
    "build_beside_copy": ["--vectors", "2000", "--dim", "8", "--queries", "50", "--repeat", "1"],
    "capacity": ["--vectors", "1000000", "100000000"],
    "milvus_pages": [
        "--records",
        "600",
        "--dims",
        "8",
        "--pages",
        "100,300",
        "--upsert-records",
        "300",
    ],
    "tuning": [
        "--vectors",
        "4000",
        "--build-vectors",
        "2000",
        "--dim",
        "16",
        "--sizes",
        "500,2000",
    ],
    "telemetry_overhead": [
        "--vectors",
        "4000",
        "--dim",
        "16",
        "--batch",
        "1000",
        "--requests",
        "300",
        "--repeat",
        "1",
        "--micro",
        "500",
    ],
    "resume_cost": [
        "--vectors",
        "12000",
        "--dim",
        "16",
        "--shards",
        "4",
        "--batch-size",
        "1000",
        "--kills",
        "2",
        "--throttle",
        "6000",
    ],
}


def run_script(name: str, *args: str, out: Path) -> str:
    """Run ``bench/NAME.py`` with ``args`` and ``--out out`` from the clone's root, as a user
    would; what it printed (a failure shows the end of it)."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / f"{name}.py"), *args, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=580,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", sorted(RUNS))
def test_benchmark_script_runs(name: str, tmp_path: Path) -> None:
    run_script(name, *RUNS[name], out=tmp_path)
    written = sorted(p.name for p in tmp_path.iterdir())
    assert any(n.endswith(".json") for n in written), written
    assert any(n.endswith(".png") for n in written), written
    result = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert result["rows"]
    assert result["machine"]["cores"]


@pytest.mark.timeout(600)
def test_fleet_script_runs_on_one_queue_and_on_per_region_queues(tmp_path: Path) -> None:
    run_script(
        "fleet",
        *("--vectors", "4000", "--dim", "8", "--shards", "2", "--workers", "1", "2"),
        *("--queues", "both", "--regions", "2"),
        out=tmp_path,
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "fleet-regions_4000.json",
        "fleet-regions_4000.png",
        "fleet_4000.json",
        "fleet_4000.png",
    ]
    one = json.loads((tmp_path / "fleet_4000.json").read_text())
    assert [r["workers"] for r in one["rows"]] == [1, 2]
    regions = json.loads((tmp_path / "fleet-regions_4000.json").read_text())
    assert regions["summary"]["regions"] == 2
    # N workers a region: 2N processes in all, each having spent CPU on the migration.
    assert [(r["workers a region"], r["worker processes"]) for r in regions["rows"]] == [
        (1, 2),
        (2, 4),
    ]
    for result in (one, regions):
        assert all(
            r["vectors/s"] > 0 and r["worker CPU s / 1k vectors"] > 0 for r in result["rows"]
        )
        assert result["summary"]["stops scaling"]
        # Every phase of every run, for bench/capacity.py's model of the fixed part.
        phases = result["summary"]["phases s, each run"]
        assert len(phases) == len(result["rows"])
        assert all(p["BACKFILLING"] > 0 and p["VALIDATING"] > 0 for p in phases)
    assert len(regions["summary"]["coordination s, each run"]) == 2
    assert "coordination s, each run" not in one["summary"]


@pytest.mark.timeout(600)
def test_online_load_script_checks_every_write(tmp_path: Path) -> None:
    # With two cores or more, the application's side on a core of its own (--serving-cores).
    mine = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    apart = len(mine) >= 2
    printed = run_script(
        "online_load",
        *("--vectors", "5000", "--dim", "16", "--shards", "2", "--clients", "2", "--rate", "20"),
        *("--step-seconds", "1.5", "--idle-seconds", "1", "--shadow-percent", "100"),
        *("--min-samples", "3"),
        *(("--serving-cores", "1") if apart else ()),
        out=tmp_path,
    )
    result = json.loads((tmp_path / "online_load.json").read_text())
    if apart:  # each process ran where it was put: the two sides share no core
        cores = result["cores"]
        assert cores["gateway"] == cores["clients"] == result["serving_cores"] == mine[-1:]
        assert cores["worker"] == cores["temporal"] == result["migration_cores"] == mine[:-1]
    assert result["failed"] == 0
    assert result["lost_writes"] == 0
    assert result["writes_checked"] > 0
    for phase in result["phases"]:  # each with its slowest searches and when they came
        assert len(phase["slowest_searches"]) <= 3, phase
        assert all(ms > 0 and since >= 0 for ms, since in phase["slowest_searches"]), phase
    assert next(p for p in result["phases"] if p["phase"] == "IDLE")["slowest_searches"]
    assert (tmp_path / "online_load.png").exists()
    # When each phase was seen to begin, in order; the lifecycle's phases each in it.
    seen = [phase for _, phase in result["timeline"]]
    assert seen[0] == "IDLE"
    assert seen[-1] == "AFTER"
    assert {"BACKFILLING", "CUT_OVER", "BAKING"} <= set(seen)
    assert [t for t, _ in result["timeline"]] == sorted(t for t, _ in result["timeline"])
    # The table shows every phase whole in the 120 columns a pipe gets: nothing cut short.
    assert "slowest @ s" in printed
    assert "…" not in printed
    for phase in result["phases"]:
        assert f"\n{phase['phase']} " in printed, phase["phase"]


def test_gateway_footprint_script_starts_the_gateway_each_way(tmp_path: Path) -> None:
    # HEAD as the code of before: a clone of any depth holds it.
    run_script(
        "gateway_footprint",
        *("--vectors", "2000", "--dim", "16", "--rounds", "1", "--searches", "20"),
        *("--old-ref", "HEAD"),
        out=tmp_path,
    )
    result = json.loads((tmp_path / "gateway_footprint.json").read_text())
    rows = {r["way"]: r for r in result["rows"]}
    assert set(rows) == {"now", "through the whole command", "before"}
    assert not rows["now"]["temporalio"]
    assert rows["through the whole command"]["temporalio"]
    assert rows["before"]["temporalio"]
    # Every object either way, tracked or frozen out of the collector's passes at start.
    held = {w: r["tracked_objects"] + r["frozen_objects"] for w, r in rows.items()}
    assert held["now"] < held["through the whole command"]
    assert rows["now"]["frozen_objects"] > rows["now"]["tracked_objects"]
    assert (tmp_path / "gateway_footprint.png").exists()


def test_router_overhead_script_measures_sharded_collections(tmp_path: Path) -> None:
    """``--kind ivf``: the router over a 4-shard IVF-Flat collection against FAISS's own
    IndexShards over the very shard objects it serves from; ``--shards 4``: hnswlib in 4
    shards (the script checks the answers match before it times them)."""
    run_script(
        "router_overhead",
        *("--vectors", "3000", "--queries", "200", "--pairs", "3", "--kind", "ivf"),
        *("--dims", "16,32"),
        out=tmp_path,
    )
    written = json.loads((tmp_path / "router_overhead_ivf4.json").read_text())
    assert [r["dim"] for r in written["rows"]] == [16, 32]
    for row in written["rows"]:
        assert row["faiss_p50_us"] > 0
        assert row["router_p50_us"] > 0
    assert (tmp_path / "router_overhead_ivf4.png").is_file()
    # hnswlib in 4 shards: against each shard's own knn_query, the answers checked merged.
    run_script(
        "router_overhead",
        *("--vectors", "3000", "--queries", "200", "--pairs", "3", "--shards", "4"),
        *("--dims", "16"),
        out=tmp_path,
    )
    written = json.loads((tmp_path / "router_overhead_hnsw4.json").read_text())
    assert written["rows"][0]["hnswlib_p50_us"] > 0


@pytest.mark.timeout(600)
@pytest.mark.timeout(600)
def test_storage_formats_script_measures_every_format_against_raw_faiss(tmp_path: Path) -> None:
    run_script(
        "storage_formats",
        *("--data", "clustered", "--vectors", "12000", "--dim", "16", "--queries", "200"),
        *("--threads", "2"),
        out=tmp_path,
    )
    assert (tmp_path / "storage_formats_clustered_12000.png").is_file()
    written = json.loads((tmp_path / "storage_formats_clustered_12000.json").read_text())
    rows = {r["format"]: r for r in written["rows"]}
    assert set(rows) == {
        "flat float32",
        "flat float16",
        "flat SQ8",
        "IVF SQ8",
        "IVF-PQ",
        "HNSW float32",
        "HNSW float16",
        "HNSW SQ8",
    }
    assert rows["flat float32"]["recall@10"] == 1.0
    for name, row in rows.items():
        # The size model plan estimates from holds for every file written.
        assert 0.97 <= row["measured/estimate"] <= 1.1, (name, row)
        # vecmigrate's build is FAISS's own index: the same recall as raw FAISS builds it.
        assert abs(row["recall@10"] - row["raw recall@10"]) <= 0.03, (name, row)
        assert row["build s"] > 0
    flat = [rows[f"flat {e}"]["bytes/vector"] for e in ("float32", "float16", "SQ8")]
    assert flat == sorted(flat, reverse=True)
    assert rows["IVF-PQ"]["x smaller"] > 2
    assert rows["flat SQ8"]["recall@10"] > 0.9


@pytest.mark.timeout(600)
def test_pgvector_build_writes_script_shows_writes_flowing_only_during_the_concurrent_build(
    tmp_path: Path,
) -> None:
    run_script(
        "pgvector_build_writes",
        "--vectors",
        "10000",
        "--dim",
        "32",
        "--idle-seconds",
        "1",
        out=tmp_path,
    )
    assert (tmp_path / "pgvector_build_writes.png").is_file()
    written = json.loads((tmp_path / "pgvector_build_writes.json").read_text())
    rows = {r["phase"]: r for r in written["rows"]}
    idle, online = rows["idle"], rows["CREATE INDEX CONCURRENTLY"]
    blocked = rows["CREATE INDEX in a transaction"]
    assert idle["writes committed"] > 0
    assert online["writes committed"] > 0
    assert online["p99 ms"] < 1000 * online["build s"]
    assert blocked["writes committed"] == 0
    # The plain build held every write back for about the whole build.
    assert blocked["max ms"] > 500 * blocked["build s"]
    assert idle["failed"] == online["failed"] == blocked["failed"] == 0


@pytest.mark.timeout(600)
def test_migration_throughput_runs_the_index_only_migration_with_shared_records(
    tmp_path: Path,
) -> None:
    run_script(
        "migration_throughput", *RUNS["migration_throughput"], "--records", "shared", out=tmp_path
    )
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == [
        "migration_throughput_clustered_6000-shared.json",
        "migration_throughput_clustered_6000-shared.png",
    ]
    result = json.loads((tmp_path / written[0]).read_text())
    phases = {r["phase"]: r["seconds"] for r in result["rows"]}
    assert phases["vecmigrate end to end"] > 0
    assert float(result["summary"]["ratio (vecmigrate / raw)"]) > 0
