"""Record workflow histories for the replay tests.

Run after a deliberate, compatible change to the workflow's commands: `python -m
tests.histories.record`. Histories recorded by earlier releases stay in the folder, so a change
that would break migrations already running fails the replay test.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from control.client import MigrationClient
from control.devserver import temporal_binary
from control.drill import run_drill
from tests.conftest import Sandbox, running_worker
from vecmigrate.catalog import Catalog
from vecmigrate.config import sqlite_url
from vecmigrate.lifecycle import Phase
from vecmigrate.routing import Router

HERE = Path(__file__).parent


async def record() -> None:
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_binary(), data_converter=pydantic_data_converter
    )
    try:
        for name, manual in (("blue_green_completed", False), ("blue_green_rolled_back", True)):
            root = Path(tempfile.gettempdir()) / "vecmigrate-history" / name
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir(parents=True)
            sandbox = Sandbox(root, Catalog(sqlite_url(root / "catalog.db")))
            sandbox.seed(2000)
            spec = sandbox.spec(
                cutover={"mode": "manual" if manual else "automatic", "bake_seconds": 0.2}
            )
            async with running_worker(env.client, sandbox) as queue:
                mc = MigrationClient(env.client, queue)
                mid = await mc.start(spec, operator="recorder")
                if manual:
                    while (await mc.status(mid)).phase != Phase.AWAITING_CUTOVER:
                        await asyncio.sleep(0.1)
                    await mc.signal(mid, "pause", operator="recorder")
                    await mc.signal(mid, "rollback", operator="recorder", reason="replay test")
                await mc.result(mid)
                history = await mc.handle(mid).fetch_history()
            (HERE / f"{name}.json").write_text(history.to_json())
            print(f"wrote {name}.json ({len(history.events)} events)")
        await record_continued(env)
        await record_online(env)
    finally:
        await env.shutdown()


async def record_continued(env: WorkflowEnvironment) -> None:
    """A run that starts from carried state: the second run of a migration that continued as
    new (enough shards that the first run's history fills up)."""
    name = "blue_green_continued"
    root = Path(tempfile.gettempdir()) / "vecmigrate-history" / name
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    sandbox = Sandbox(root, Catalog(sqlite_url(root / "catalog.db")))
    sandbox.seed(3000)
    spec = sandbox.spec(
        shards={"count": 300},
        max_parallel_shards=4,
        target=sandbox.version("v2", {"kind": "faiss_flat"}).model_dump(mode="json"),
    )
    async with running_worker(env.client, sandbox) as queue:
        mc = MigrationClient(env.client, queue)
        mid = await mc.start(spec, operator="recorder")
        await mc.result(mid)
        runs = [r async for r in env.client.list_workflows(f"WorkflowId = '{mid}'")]
        runs.sort(key=lambda r: r.start_time)
        assert len(runs) >= 2, f"expected the migration to continue as new, got {len(runs)} runs"
        history = await env.client.get_workflow_handle(mid, run_id=runs[1].run_id).fetch_history()
    (HERE / f"{name}.json").write_text(history.to_json())
    print(f"wrote {name}.json ({len(history.events)} events, run 2 of {len(runs)})")


async def record_online(env: WorkflowEnvironment) -> None:
    """The online drill (shadow, ramp, cut-over, rollback after it, second cut-over) with a
    router searching and writing on the side."""
    name = "online_drill"
    root = Path(tempfile.gettempdir()) / "vecmigrate-history" / name
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    sandbox = Sandbox(root, Catalog(sqlite_url(root / "catalog.db")))
    vectors = sandbox.seed(3000)
    spec = sandbox.spec(
        strategy="online",
        online={
            "settle_seconds": 0.5,
            "shadow": {
                "percent": 100,
                "seconds": 1,
                "min_samples": 5,
                "min_overlap": 0.5,
                "max_p99_ratio": 50.0,
            },
            "ramp": {"steps": [50], "step_seconds": 1},
        },
        cutover={"mode": "manual", "bake_seconds": 2},
    )
    router = Router(sandbox.catalog, refresh_seconds=0.2)
    stop = threading.Event()

    def traffic() -> None:
        n = 0
        while not stop.is_set():
            router.search("default", "docs", vectors[n % 3000], 5, key=f"k{n}")
            if n % 5 == 0:
                router.upsert("default", "docs", np.array([100_000 + n]), vectors[n % 3000][None])
            n += 1
            time.sleep(0.01)

    side = threading.Thread(target=traffic, daemon=True)
    side.start()
    try:
        async with running_worker(env.client, sandbox) as queue:
            mc = MigrationClient(env.client, queue)
            final = await run_drill(mc, spec, lambda _: None, operator="recorder")
            assert final.phase == Phase.COMPLETED, final
            history = await mc.handle(final.migration_id).fetch_history()
    finally:
        stop.set()
        side.join()
        router.close()
    (HERE / f"{name}.json").write_text(history.to_json())
    print(f"wrote {name}.json ({len(history.events)} events)")


if __name__ == "__main__":
    asyncio.run(record())
