"""Migrations between backends with the same lifecycle: built-in, pgvector, Milvus, Qdrant.

Real Temporal dev server, real PostgreSQL 18 with pgvector 0.8, the real Milvus engine
(milvus-lite 2.5.1), the real Qdrant engine (qdrant-edge-py), real FAISS and hnswlib.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from temporalio.client import Client

from tests.conftest import Sandbox, postgres_database, running_worker
from tests.test_workflow import wait_for
from vecmigrate.control.client import MigrationClient
from vecmigrate.model.lifecycle import Phase
from vecmigrate.serving.router import Router
from vecmigrate.stores import WHOLE, PgvectorStore, Scope, open_store
from vecmigrate.stores.milvus import close_clients
from vecmigrate.stores.qdrant import close_clients as close_qdrant


def pg(postgres: Any) -> dict[str, Any]:
    return {"kind": "pgvector", "url": postgres_database(postgres)}


async def test_builtin_to_pgvector_with_hnswlib_artifacts(
    client: Client, sandbox: Sandbox, postgres: Any
) -> None:
    vectors = sandbox.seed(3000)
    target = sandbox.version("v2", {"kind": "hnswlib_hnsw", "m": 16}, store=pg(postgres))
    spec = sandbox.spec(target=target.model_dump(mode="json"))
    async with running_worker(client, sandbox) as queue:
        mc = MigrationClient(client, queue)
        final = await mc.result(await mc.start(spec))
    assert final.phase == Phase.COMPLETED, final.error
    assert final.gates is not None
    names = {v.name for v in final.gates.verdicts if v.passed}
    # The same bytes landed in another database: parity holds across adapters.
    assert {"count_parity", "checksum_parity", "recall@10"} <= names
    pg_store = open_store(target.store, Scope("default", "docs", "v2"))
    assert isinstance(pg_store, PgvectorStore)
    assert pg_store.count() == 3000
    result = Router(sandbox.catalog).search("default", "docs", vectors[:5], 3)
    assert result.version == "v2"
    assert result.ids[:, 0].tolist() == [1, 2, 3, 4, 5]


async def test_builtin_to_pgvector_native_hnsw_then_rollback_after_cutover(
    client: Client, sandbox: Sandbox, postgres: Any
) -> None:
    vectors = sandbox.seed(3000)
    target = sandbox.version(
        "v2",
        {"kind": "pgvector_hnsw", "m": 16, "ef_construction": 64, "ef_search": 64},
        store=pg(postgres),
    )
    spec = sandbox.spec(
        target=target.model_dump(mode="json"),
        gates={"min_recall": 0.9, "max_recall_drop": 0.0},
        cutover={"mode": "manual", "bake_seconds": 3600},
    )
    router = Router(sandbox.catalog, refresh_seconds=0.0)
    async with running_worker(client, sandbox) as queue:
        mc = MigrationClient(client, queue)
        mid = await mc.start(spec)
        st = await wait_for(mc, mid, lambda s: s.phase == Phase.AWAITING_CUTOVER, timeout=120)
        assert st.gates is not None
        assert st.gates.passed, st.gates.failures()
        assert st.index_version is not None
        assert "pgvector_hnsw" in st.index_version
        await mc.signal(mid, "approve_cutover", operator="dba")
        await wait_for(mc, mid, lambda s: s.phase == Phase.BAKING)
        served = router.search("default", "docs", vectors[:20], 5)
        assert served.version == "v2"
        assert served.ids[:, 0].tolist() == list(range(1, 21))  # through pgvector's own index
        await mc.signal(mid, "rollback", operator="dba", reason="p99 on the new cluster")
        final = await mc.result(mid)
    assert final.phase == Phase.ROLLED_BACK
    back = router.search("default", "docs", vectors[:5], 3)
    assert back.version == "v1"
    kinds = [e.kind for e in sandbox.catalog.entries(mid)]
    assert "index.native" in kinds


async def test_pgvector_to_builtin(client: Client, sandbox: Sandbox, postgres: Any) -> None:
    store = pg(postgres)
    source = sandbox.version(
        "v1", {"kind": "pgvector_ivfflat", "lists": 16, "probes": 4}, store=store
    )
    vectors = sandbox.seed(2500, version=source)
    target = sandbox.version("v2", {"kind": "hnswlib_hnsw", "m": 16})
    spec = sandbox.spec(
        source=source.model_dump(mode="json"), target=target.model_dump(mode="json")
    )
    async with running_worker(client, sandbox) as queue:
        mc = MigrationClient(client, queue)
        final = await mc.result(await mc.start(spec))
    assert final.phase == Phase.COMPLETED, final.error
    assert final.gates is not None
    assert final.gates.source_recall is not None  # the old pgvector index was measured too
    src = open_store(source.store, Scope("default", "docs", "v1"))
    dst = open_store(target.store, Scope("default", "docs", "v2"))
    assert dst.checksum(WHOLE) == src.checksum(WHOLE)
    result = Router(sandbox.catalog).search("default", "docs", vectors[:3], 2)
    assert result.version == "v2"
    assert np.array_equal(result.ids[:, 0], [1, 2, 3])


async def test_pgvector_to_milvus_native_ivf_then_rollback(
    client: Client, sandbox: Sandbox, postgres: Any
) -> None:
    source = sandbox.version(
        "v1", {"kind": "pgvector_hnsw", "m": 16, "ef_construction": 64}, store=pg(postgres)
    )
    vectors = sandbox.seed(3000, version=source)
    milvus = {"kind": "milvus", "uri": str(sandbox.root / "milvus.db")}
    target = sandbox.version(
        "v2", {"kind": "milvus_ivf_flat", "nlist": 16, "nprobe": 8}, store=milvus
    )
    spec = sandbox.spec(
        source=source.model_dump(mode="json"),
        target=target.model_dump(mode="json"),
        gates={"min_recall": 0.85},
        cutover={"mode": "automatic", "bake_seconds": 3600},
    )
    router = Router(sandbox.catalog, refresh_seconds=0.0)
    try:
        async with running_worker(client, sandbox) as queue:
            mc = MigrationClient(client, queue)
            mid = await mc.start(spec)
            st = await wait_for(mc, mid, lambda s: s.phase == Phase.BAKING, timeout=120)
            assert st.gates is not None
            assert {"count_parity", "checksum_parity"} <= {
                v.name for v in st.gates.verdicts if v.passed
            }
            served = router.search("default", "docs", vectors[:10], 3)
            assert served.version == "v2"
            assert served.ids[:, 0].tolist() == list(range(1, 11))  # through Milvus's own index
            await mc.signal(mid, "rollback", operator="sre")
            final = await mc.result(mid)
        assert final.phase == Phase.ROLLED_BACK
        assert router.search("default", "docs", vectors[:3], 2).version == "v1"
    finally:
        close_clients()


async def test_milvus_to_builtin(client: Client, sandbox: Sandbox) -> None:
    milvus = {"kind": "milvus", "uri": str(sandbox.root / "milvus.db")}
    source = sandbox.version("v1", {"kind": "milvus_flat"}, store=milvus)
    sandbox.seed(2500, version=source)
    target = sandbox.version("v2", {"kind": "hnswlib_hnsw", "m": 16})
    spec = sandbox.spec(
        source=source.model_dump(mode="json"),
        target=target.model_dump(mode="json"),
        shards={"by": "range", "count": 3},
    )
    try:
        async with running_worker(client, sandbox) as queue:
            mc = MigrationClient(client, queue)
            final = await mc.result(await mc.start(spec))
        assert final.phase == Phase.COMPLETED, final.error
        src = open_store(source.store, Scope("default", "docs", "v1"))
        dst = open_store(target.store, Scope("default", "docs", "v2"))
        assert dst.count() == 2500
        assert dst.checksum(WHOLE) == src.checksum(WHOLE)
        assert final.gates is not None
        assert final.gates.source_recall == 1.0  # a FLAT index is exact
    finally:
        close_clients()


async def test_builtin_to_qdrant_native_hnsw(client: Client, sandbox: Sandbox) -> None:
    vectors = sandbox.seed(3000)
    qdrant = {"kind": "qdrant", "path": str(sandbox.root / "qdrant")}
    target = sandbox.version(
        "v2", {"kind": "qdrant_hnsw", "m": 16, "ef_construct": 64, "ef": 64}, store=qdrant
    )
    spec = sandbox.spec(target=target.model_dump(mode="json"))
    try:
        async with running_worker(client, sandbox) as queue:
            mc = MigrationClient(client, queue)
            final = await mc.result(await mc.start(spec))
        assert final.phase == Phase.COMPLETED, final.error
        assert final.gates is not None
        assert {"count_parity", "checksum_parity", "recall@10"} <= {
            v.name for v in final.gates.verdicts if v.passed
        }
        served = Router(sandbox.catalog).search("default", "docs", vectors[:5], 3)
        assert served.version == "v2"
        assert served.ids[:, 0].tolist() == [1, 2, 3, 4, 5]
    finally:
        close_qdrant()


async def test_status_shows_where_the_pgvector_index_build_stands(
    client: Client, sandbox: Sandbox, postgres: Any
) -> None:
    sandbox.seed(30_000)
    # A graph this dense on one backend takes several seconds: the status sees it under way.
    index = {"kind": "pgvector_hnsw", "m": 32, "ef_construction": 200, "parallel_workers": 0}
    target = sandbox.version("v2", index, store=pg(postgres))
    spec = sandbox.spec(target=target.model_dump(mode="json"), cutover={"mode": "manual"})
    async with running_worker(client, sandbox) as queue:
        mc = MigrationClient(client, queue)
        mid = await mc.start(spec)
        st = await wait_for(
            mc,
            mid,
            lambda s: s.index_build is not None and s.index_build.fraction is not None,
            timeout=240,
        )
        build = st.index_build
        assert build is not None
        assert build.command == "CREATE INDEX CONCURRENTLY", build
        assert build.phase, build
        assert build.fraction is not None
        assert 0 <= build.fraction <= 1
        assert build.index.startswith("vm_vec_")
        assert st.phase == Phase.BUILDING_INDEX or st.phase == Phase.BACKFILLING, st.phase
        st = await wait_for(mc, mid, lambda s: s.phase == Phase.AWAITING_CUTOVER, timeout=240)
        assert st.index_build is None  # the build is over: nothing in flight to show
        await mc.signal(mid, "abort", operator="dba", reason="seen what it shows")
        final = await mc.result(mid)
    assert final.phase == Phase.ABORTED
