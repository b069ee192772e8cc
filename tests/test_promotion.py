"""A retained version promoted back into service by a migration that replays the writes it
missed, re-validates it and switches routing, without copying or rebuilding (dev server)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from temporalio.client import Client

from tests.conftest import Sandbox, running_worker
from tests.test_online import drill_load, online_spec
from vecmigrate.catalog.retention import RetentionLog
from vecmigrate.control.client import MigrationClient
from vecmigrate.control.plan import plan_migration
from vecmigrate.data.backfill import open_source, open_target
from vecmigrate.model.lifecycle import Phase
from vecmigrate.serving.gateway import Gateway
from vecmigrate.serving.router import Router
from vecmigrate.stores import open_store
from vecmigrate.stores.base import Scope
from vecmigrate.testing.drill import run_drill
from vecmigrate.testing.loadgen import LoadGenerator, verify

IVF = {"kind": "faiss_ivf_flat", "nlist": 16, "nprobe": 4}


# shadow_only keeps its target out of service by design: nothing to promote into. online
# needs live reads for its shadow gates: the test below.
@pytest.mark.parametrize("strategy", ["blue_green", "offline"])
async def test_a_retained_version_is_promoted_back_without_a_copy(
    client: Client, sandbox: Sandbox, strategy: str
) -> None:
    vectors = sandbox.seed(3000)
    async with running_worker(client, sandbox) as queue:
        mc = MigrationClient(client, queue)
        first = await mc.result(await mc.start(sandbox.spec(), operator="alice"))
        assert first.phase == Phase.COMPLETED
        stopped = RetentionLog(sandbox.catalog).get("default", "docs", "v1").written_until
        assert stopped is not None

        # Writes while v2 serves: v1, retained, misses them.
        router = Router(sandbox.catalog, refresh_seconds=0.1)
        try:
            router.upsert("default", "docs", np.array([50_001, 50_002]), vectors[:2] * 2)
            router.upsert("default", "docs", np.array([7]), vectors[8:9])
            router.delete("default", "docs", np.array([11]))
        finally:
            router.close()
        v1 = open_store(sandbox.store, Scope("default", "docs", "v1"))
        assert v1.count() == 3000

        back = sandbox.spec(
            source=sandbox.version(
                "v2", {"kind": "hnswlib_hnsw", "m": 16, "ef_search": 64}
            ).model_dump(mode="json"),
            target=sandbox.version("v1", IVF).model_dump(mode="json"),
            strategy=strategy,
        )
        plan = plan_migration(sandbox.catalog, back)
        assert plan.ok, plan.problems
        check = next(c for c in plan.checks if c.name == "promotion of a retained version")
        assert f"after position {stopped}" in check.detail
        # Another index on the retained version is a new version, not a promotion.
        other = sandbox.spec(
            source=back.source.model_dump(mode="json"),
            target=sandbox.version("v1", {"kind": "faiss_flat"}).model_dump(mode="json"),
        )
        refused = plan_migration(sandbox.catalog, other)
        assert any("a promotion reuses that index" in p for p in refused.problems)
        # Nor is the same name in another store: the missed writes go into the version's own.
        elsewhere = back.target.store.model_dump(mode="json") | {
            "url": f"sqlite:///{sandbox.root / 'other.db'}"
        }
        moved = sandbox.spec(
            source=back.source.model_dump(mode="json"),
            target=back.target.model_dump(mode="json") | {"store": elsewhere},
        )
        refused = plan_migration(sandbox.catalog, moved)
        assert any("set target.store to it" in p for p in refused.problems)

        final = await mc.result(await mc.start(back, operator="alice"))
    assert final.phase == Phase.COMPLETED, final
    assert final.promotion is not None
    assert final.promotion.written_until == stopped
    kinds = [e.kind for e in sandbox.catalog.entries(final.migration_id)]
    assert "promotion.resynced" in kinds
    assert "shard.copied" not in kinds
    assert "shard.indexed" not in kinds
    routing = sandbox.catalog.get_routing("default", "docs")
    assert routing is not None
    assert routing.read_version == "v1"
    assert routing.read_index == final.promotion.index_id
    ids, got = v1.fetch(np.array([7, 11, 50_001, 50_002]))
    assert ids.tolist() == [7, 50_001, 50_002]
    assert np.allclose(got[0], vectors[8])
    assert v1.count() == 3001
    gates = final.gates
    assert gates is not None
    assert gates.passed
    # Re-validated against the serving version: the same records (parity) and the recall gate.
    names = {v.name for v in gates.verdicts if v.passed}
    assert names & {"checksum_parity", "id_parity"}, gates.verdicts
    assert gates.target_recall is not None
    found = sandbox.catalog.find_version("default", "docs", "v1")
    assert found is not None
    assert found.state == "serving"
    assert RetentionLog(sandbox.catalog).get("default", "docs", "v1").left_as is None


async def test_an_online_promotion_under_load_loses_no_write(
    client: Client, sandbox: Sandbox
) -> None:
    """Writes land on the serving v2 while v1 is retained, then go on through the promotion's
    dual-write, shadow reads and ramp: v1 ends with every acknowledged write, without a copy."""
    sandbox.seed(3000)
    gateway = Gateway(sandbox.catalog.url, port=0, refresh=0.5).start()
    phase = {"now": "BEFORE"}
    load: LoadGenerator | None = None
    try:
        async with running_worker(client, sandbox) as queue:
            mc = MigrationClient(client, queue)
            first = await mc.result(await mc.start(sandbox.spec(), operator="alice"))
            assert first.phase == Phase.COMPLETED
            v2 = sandbox.version("v2", {"kind": "hnswlib_hnsw", "m": 16, "ef_search": 64})
            back = online_spec(
                sandbox,
                source=v2.model_dump(mode="json"),
                target=sandbox.version("v1", IVF).model_dump(mode="json"),
            )
            queries = open_source(back).sample(200, seed=3)[1]
            load = drill_load(gateway, queries, phase)
            load.start()
            await asyncio.sleep(1.5)  # writes to v2 alone, which the retained v1 misses
            final = await run_drill(mc, back, lambda p: phase.update(now=p), operator="alice")
        phase["now"] = "AFTER"
        await asyncio.sleep(1.0)
    finally:
        if load is not None:
            load.stop()
        gateway.stop()

    assert final.phase == Phase.COMPLETED, final.error
    assert final.promotion is not None
    assert [g.passed for g in final.shadow] == [True, True, True]  # shadow, 10 %, 50 %
    kinds = [e.kind for e in sandbox.catalog.entries(final.migration_id)]
    assert "promotion.resynced" in kinds
    assert "shard.copied" not in kinds
    assert load is not None
    failed = [r for r in load.requests() if r.status != 200]
    assert failed == [], failed[:5]
    verdict = verify(load.states, open_target(back))
    assert verdict.writes_checked > 50
    assert verdict.ok, verdict
    routing = sandbox.catalog.get_routing("default", "docs")
    assert routing is not None
    assert routing.read_version == "v1"
    assert routing.read_index == final.promotion.index_id
