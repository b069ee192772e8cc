"""Storage formats: FAISS indexes over float16 and int8 codes, the size model against the files
written, plan's estimate before and after, and a migration to SQ8 (and one to float16) whose
report carries the bytes beside the recall the gates measured, on a real dev server."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import numpy as np
import pytest
from temporalio.client import Client

from tests.conftest import Sandbox, running_worker, vecmigrate
from tests.index_kinds import write_built
from vecmigrate.control.client import MigrationClient
from vecmigrate.control.plan import plan_migration
from vecmigrate.data.datasets import clustered
from vecmigrate.indexes.artifacts import LoadedIndex, build_key
from vecmigrate.indexes.sizes import index_bytes, uncompressed
from vecmigrate.model.costs import MigrationCosts
from vecmigrate.model.lifecycle import Phase
from vecmigrate.model.spec import (
    FaissFlat,
    FaissHnsw,
    FaissIvfFlat,
    FaissIvfPq,
    IndexSpec,
    Metric,
    MilvusIvfPq,
    MilvusIvfSq8,
)
from vecmigrate.records.vectors import ExactKnn

SPECS: list[IndexSpec] = [
    FaissFlat(),
    FaissFlat(encoding="float16"),
    FaissFlat(encoding="int8"),
    FaissIvfFlat(nlist=32, nprobe=32),
    FaissIvfFlat(nlist=32, nprobe=32, encoding="float16"),
    FaissIvfFlat(nlist=32, nprobe=32, encoding="int8"),
    FaissIvfPq(nlist=32, nprobe=32, m=8, nbits=8),
    FaissHnsw(m=16),
    FaissHnsw(m=16, encoding="float16"),
    FaissHnsw(m=16, encoding="int8"),
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.kind}-{getattr(s, 'encoding', '')}")
@pytest.mark.parametrize("metric", [Metric.L2, Metric.IP])
def test_each_encoding_builds_searches_and_matches_the_size_model(
    spec: IndexSpec, metric: Metric, tmp_path: Path
) -> None:
    x = clustered(6000, 32, clusters=24, seed=5)
    ids = np.arange(100, 6100, dtype=np.int64)
    key = build_key(spec, metric, 32, "data")
    artifact = write_built(spec, metric, ids, x, tmp_path, "shard-0000", key)
    size = artifact.data_file.stat().st_size
    estimate = index_bytes(spec, len(ids), 32)
    assert abs(size - estimate) / size < 0.05, (size, estimate)
    queries = x[:200] + 0.01
    found = LoadedIndex(artifact.manifest).search(queries, 10)[1]
    knn = ExactKnn(queries, 10, str(metric))
    knn.add(ids, x)
    truth = knn.result()[1]
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth, strict=True)])
    floor = {"float32": 0.95, "float16": 0.95, "int8": 0.85}.get(getattr(spec, "encoding", ""), 0.3)
    assert recall >= floor, recall
    plain = uncompressed(spec)
    assert index_bytes(plain, len(ids), 32) >= estimate


def test_compressed_kinds_are_measured_against_their_float32_form() -> None:
    assert uncompressed(FaissIvfPq(nlist=8, nprobe=4, m=4)) == FaissIvfFlat(nlist=8, nprobe=4)
    assert uncompressed(MilvusIvfSq8(nlist=8)).kind == "milvus_ivf_flat"
    assert uncompressed(MilvusIvfPq(nlist=8)).kind == "milvus_ivf_flat"
    sq8 = index_bytes(FaissIvfFlat(nlist=64, encoding="int8"), 100_000, 128)
    f32 = index_bytes(FaissIvfFlat(nlist=64), 100_000, 128)
    assert 0.25 < sq8 / f32 < 0.35


@pytest.mark.integration  # runs the command in a process
def test_plan_estimates_bytes_before_and_after(sandbox: Sandbox) -> None:
    sandbox.seed(3000)
    sq8 = sandbox.version("v2", {"kind": "faiss_ivf_flat", "nlist": 16, "encoding": "int8"})
    plan = plan_migration(sandbox.catalog, sandbox.spec(target=sq8.model_dump(mode="json")))
    est = plan.storage
    assert est is not None
    assert est.source.index_measured  # the source's artifacts are on disk
    assert est.source.count == est.target.count == 3000
    # At 16 dimensions the ids weigh as much as the codes: int8 is 40 % of float32 here.
    assert est.target.index < est.target_index_float32 * 0.45
    assert est.peak == est.before + est.target.total
    assert est.after_prune == est.target.total
    out = vecmigrate(
        "plan",
        str(write_spec(sandbox, sq8.model_dump(mode="json"))),
        "--json",
        "--catalog",
        sandbox.catalog.url,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["storage"]["target"]["index"] == est.target.index


def write_spec(sandbox: Sandbox, target: dict[str, object]) -> Path:
    path = sandbox.root / "spec.json"
    path.write_text(sandbox.spec(target=target).model_dump_json())
    return path


@pytest.mark.parametrize("encoding", ["int8", "float16"])
async def test_a_migration_to_a_cheaper_format_reports_its_bytes_and_recall(
    client: Client, sandbox: Sandbox, encoding: str
) -> None:
    sandbox.seed(4000)
    target = sandbox.version(
        "v2", {"kind": "faiss_ivf_flat", "nlist": 16, "nprobe": 16, "encoding": encoding}
    )
    spec = sandbox.spec(
        target=target.model_dump(mode="json"),
        gates={"min_recall": 0.8, "sample_queries": 100, "max_recall_drop": 0.1},
    )
    async with running_worker(client, sandbox) as queue:
        mc = MigrationClient(client, queue)
        final = await mc.result(await mc.start(spec, operator="alice"))
    assert final.phase == Phase.COMPLETED, final
    gates = final.gates
    assert gates is not None
    verdicts = {v.name: v for v in gates.verdicts}
    ratio = verdicts["index_bytes_ratio"].value
    assert ratio is not None
    # 16 dimensions: the ids (16 bytes a vector) weigh as much as int8 codes.
    assert ratio < (0.45 if encoding == "int8" else 0.65)
    assert "bytes a vector" in verdicts["index_bytes_new"].detail
    assert gates.target_recall is not None
    assert gates.target_recall >= 0.8
    assert f"recall@10 {gates.source_recall} -> {gates.target_recall}" in (
        verdicts["index_bytes_ratio"].detail
    )
    env = {**os.environ}
    shown = await asyncio.to_thread(
        vecmigrate, "report", final.migration_id, "--catalog", sandbox.catalog.url, env=env
    )
    assert shown.returncode == 0, shown.stderr
    for text in ("index_bytes_ratio", "storage over the migration's life", "cost per shard"):
        assert text in shown.stdout
    raw = await asyncio.to_thread(
        vecmigrate,
        "report",
        final.migration_id,
        "--costs",
        "--catalog",
        sandbox.catalog.url,
        env=env,
    )
    costs = MigrationCosts.model_validate_json(raw.stdout)
    assert costs.estimate is not None
    assert [s.stage for s in costs.snapshots] == ["peak", "finalized"]
    peak = costs.snapshots[0]
    assert peak.target.index_measured
    # The plan's estimate of the new index against the files written: within 5 %.
    assert abs(peak.target.index - costs.estimate.target.index) / peak.target.index < 0.05
    assert len(costs.shards) == 3
    for shard in costs.shards:
        assert shard.build_seconds is not None
        assert shard.build_peak_memory is not None
        assert shard.build_bytes_read == shard.copy_bytes_written
        assert shard.build_bytes_written
        assert shard.copy_bytes_read
