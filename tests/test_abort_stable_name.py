"""An abort during the bake, with a stable name: routing stays where the abort found it (reads
on the target, writes to both), so the name stays on the target too, the ledger says where it
ended, and on PostgreSQL the capture drains both ways before it goes: both tables hold every
write the application made by the name until the abort. On Qdrant's local mode and a real
PostgreSQL server, through the real workflow.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from temporalio.client import Client

from tests.conftest import Sandbox, postgres_database, running_worker
from tests.test_capture import NOTHING, Reader, items_spec, items_table, leftovers
from tests.test_capture_drill import NAME, Application, mismatches
from tests.test_workflow import wait_for
from vecmigrate.catalog.engines import dispose_engines
from vecmigrate.control.client import MigrationClient
from vecmigrate.data import stablename
from vecmigrate.data.backfill import open_source, open_target
from vecmigrate.model.lifecycle import Phase
from vecmigrate.stores.qdrant import close_clients as close_qdrant

pytestmark = pytest.mark.integration

CLEAN: dict[str, list[int]] = {"lost": [], "resurrected": []}


def ended(sandbox: Sandbox, mid: str) -> list[dict[str, Any]]:
    return [e.data for e in sandbox.catalog.entries(mid) if e.kind == "stable_name.ended"]


async def test_an_abort_during_the_bake_keeps_the_qdrant_alias_where_reads_are(
    client: Client, sandbox: Sandbox
) -> None:
    store: dict[str, Any] = {"kind": "qdrant", "path": str(sandbox.root / "qdrant")}
    index: dict[str, Any] = {"kind": "qdrant_hnsw", "m": 16, "ef": 64}
    source = sandbox.version("v1", index, store=store)
    sandbox.seed(600, version=source)
    spec = sandbox.spec(
        source=source.model_dump(mode="json"),
        target=sandbox.version("v2", index, store=store).model_dump(mode="json"),
        cutover={"mode": "manual", "bake_seconds": 3600, "stable_name": "docs_live"},
    )
    stablename.prepare(spec)
    try:
        async with running_worker(client, sandbox) as queue:
            mc = MigrationClient(client, queue)
            mid = await mc.start(spec)
            await wait_for(mc, mid, lambda s: s.phase == Phase.AWAITING_CUTOVER, 180)
            await mc.signal(mid, "approve_cutover", operator="dba")
            await wait_for(mc, mid, lambda s: s.phase == Phase.BAKING, 60)
            await mc.signal(mid, "abort", operator="oncall", reason="stop here")
            final = await mc.result(mid)
        target = open_target(spec)
        assert final.phase == Phase.ABORTED, final.error
        assert final.error == ""
        routing = sandbox.catalog.get_routing("default", "docs")
        assert routing is not None
        assert routing.read_version == "v2"
        assert open_source(spec).name_points_at("docs_live") == target.name
        assert ended(sandbox, mid) == [
            {
                "name": "docs_live",
                "version": "v2",
                "moved": False,
                "error": "",
                "reason": "abort: stop here; reads stay on v2",
            }
        ]
        assert sandbox.catalog.verify_ledger() == []
    finally:
        close_qdrant()


async def test_an_abort_during_the_bake_drains_the_capture_both_ways_and_keeps_the_view_there(
    client: Client, sandbox: Sandbox, postgres: Any
) -> None:
    url = postgres_database(postgres)
    items_table(url)
    # The bake is long: its own replays (every 30 s) never run, so only the abort's drain can
    # bring the writes the application made by the name into the target back to the source.
    spec = items_spec(
        url,
        source_store={"table": "items_v1", "writable": True},
        cutover={"mode": "manual", "bake_seconds": 600, "stable_name": NAME},
    )
    stablename.prepare(spec)
    phase = {"now": "PLANNED"}
    app = Application(url, phase)
    router_reader = Reader(sandbox, spec)  # feeds the shadow and ramp gates
    mid = spec.migration_id
    try:
        async with running_worker(client, sandbox) as queue:
            mc = MigrationClient(client, queue)
            app.start()
            router_reader.start()
            await mc.start(spec)
            await wait_for(mc, mid, lambda s: s.phase == Phase.AWAITING_CUTOVER, 300)
            await mc.signal(mid, "approve_cutover", operator="dba")
            await wait_for(mc, mid, lambda s: s.phase == Phase.BAKING, 60)
            phase["now"] = "BAKING"
            await asyncio.sleep(3)  # the application writes into the target by the name
            app.pause()
            await mc.signal(mid, "abort", operator="oncall", reason="stop here")
            final = await mc.result(mid, timeout=120)
            phase["now"] = "ABORTED"
            both = {
                "v1": mismatches(url, "items_v1", app.state),
                "v2": mismatches(url, "items_v2", app.state),
            }
            # After the abort, the application's writes by the name land where reads are.
            app.paused.clear()
            time.sleep(1)
            app.pause()
            after = mismatches(url, "items_v2", app.state)
    finally:
        app.stopping.set()
        app.join(10)
        router_reader.close()
        dispose_engines()
    assert final.phase == Phase.ABORTED, final.error
    assert final.error == ""
    assert app.failures == [], app.failures[:5]
    assert app.latency["BAKING"], "the application wrote nothing during the bake"
    assert both == {"v1": CLEAN, "v2": CLEAN}, both
    assert after == CLEAN
    routing = sandbox.catalog.get_routing("default", "items")
    assert routing is not None
    assert routing.read_version == "v2"
    assert open_source(spec).name_points_at(NAME) == "items_v2"
    [entry] = ended(sandbox, mid)
    assert (entry["version"], entry["moved"], entry["error"]) == ("v2", False, "")
    removed = [e.data for e in sandbox.catalog.entries(mid) if e.kind == "capture.removed"]
    assert removed == [{"table": removed[0]["table"], "replayed": True}]
    assert leftovers(url) == NOTHING
