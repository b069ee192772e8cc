"""Record workflow histories for the replay tests.

`python -m tests.histories.record` records the histories missing from this folder;
`python -m tests.histories.record NAME ...` records those again. Histories recorded by earlier
releases stay in the folder, so a change that would break migrations already running fails the
replay test: after a change to the workflow's commands (behind ``workflow.patched``), add a
recording of the new path under a new name rather than re-recording the old ones.

The ``*_v2`` histories were recorded by the release that brought the lifecycle table (the
``lifecycle-table`` patch): every strategy, a rollback, an abort, a pause and resume, a gate
overridden by an approver. The others are the release before it, which its runs still replay.
The ``*_v3`` histories, the same cases, were recorded by the release that makes each routing
change, its ledger entry and its version states one task (the ``routing-step`` patch).
``blue_green_roles`` was recorded with operator roles (the ``operator-roles`` patch): replaying
it needs the worker's caller interceptor, as every worker has. ``online_capture`` was recorded
with change capture (the ``pg-capture`` patch) on a PostgreSQL server the recorder starts;
``online_stable_capture`` with a stable name over such a table, capture running both ways.
``regional_divergence`` is a regional migration's parent (two regions, a worker each) whose
barrier compares the regions' copies (the ``region-divergence`` patch) before the cut-over.
``blue_green_stable_aborted``: a stable name (a Qdrant alias) and an abort during the bake
(the ``abort-stable-name`` patch).
``blue_green_shared_records``: a migration that changes the index alone (``records: shared``),
each shard built after its pass; ``blue_green_shared_beside`` the same, recorded by the release
that starts each shard's build beside its pass (the ``shared-build-beside-pass`` patch).
``online_tuned``: an online migration with ``online.tuning`` set (candidates tried on mirrored
reads during SHADOWING, the cheapest meeting the gates chosen and recorded).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from tests.conftest import Sandbox, running_worker
from vecmigrate.catalog.catalog import Catalog
from vecmigrate.config import HOME_ENV, sqlite_url
from vecmigrate.control.client import MigrationClient
from vecmigrate.control.compaction import start_compaction
from vecmigrate.control.devserver import temporal_binary
from vecmigrate.model.compaction import CompactionRequest
from vecmigrate.model.lifecycle import Phase
from vecmigrate.model.spec import MigrationSpec
from vecmigrate.model.status import MigrationStatus
from vecmigrate.serving.router import Router
from vecmigrate.testing.drill import run_drill
from vecmigrate.workflows.search import KEYS as SEARCH_KEYS

HERE = Path(__file__).parent


async def record(names: list[str]) -> None:
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_binary(),
        search_attributes=list(SEARCH_KEYS.values()),
        data_converter=pydantic_data_converter,
    )
    try:
        for name in names:
            await RECORDERS[name](env, name)
    finally:
        await env.shutdown()


def fresh_sandbox(name: str) -> Sandbox:
    """An empty catalog and built-in store for one recording, in the temporary directory."""
    root = Path(tempfile.gettempdir()) / "vecmigrate-history" / name
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    return Sandbox(root, Catalog(sqlite_url(root / "catalog.db")))


def save(name: str, history: WorkflowHistory, note: str = "") -> None:
    (HERE / f"{name}.json").write_text(history.to_json())
    print(f"wrote {name}.json ({len(history.events)} events{note})")


# The online settings of the recordings: short shadow and ramp windows, lenient gates.
ONLINE: dict[str, Any] = {
    "settle_seconds": 0.5,
    "shadow": {
        "percent": 100,
        "seconds": 1,
        "min_samples": 5,
        "min_overlap": 0.5,
        "max_p99_ratio": 50.0,
    },
    "ramp": {"steps": [50], "step_seconds": 1},
}


@contextmanager
def live_traffic(catalog: Catalog, vectors: np.ndarray, on: bool = True) -> Iterator[None]:
    """Search, and write every fifth request, through a router on a side thread while the block
    runs (``on=False``: no traffic)."""
    router = Router(catalog, refresh_seconds=0.2)
    stop = threading.Event()

    def traffic() -> None:
        n = 0
        while not stop.is_set():
            router.search("default", "docs", vectors[n % len(vectors)], 5, key=f"k{n}")
            if n % 5 == 0:
                router.upsert(
                    "default", "docs", np.array([100_000 + n]), vectors[n % len(vectors)][None]
                )
            n += 1
            time.sleep(0.01)

    side = threading.Thread(target=traffic, daemon=True)
    if on:
        side.start()
    try:
        yield
    finally:
        stop.set()
        if side.is_alive():
            side.join()
        router.close()


async def completed(
    env: WorkflowEnvironment, sandbox: Sandbox, spec: MigrationSpec
) -> tuple[MigrationStatus, WorkflowHistory]:
    """Run ``spec`` to its end on a worker of its own and check that it completed: its final
    status and its history."""
    async with running_worker(env.client, sandbox) as queue:
        mc = MigrationClient(env.client, queue)
        mid = await mc.start(spec, operator="recorder")
        final = await mc.result(mid)
        assert final.phase == Phase.COMPLETED, final
        return final, await mc.handle(mid).fetch_history()


async def record_blue_green(env: WorkflowEnvironment, name: str) -> None:
    """A blue-green migration to completion, or rolled back at the approval it waits for."""
    manual = name == "blue_green_rolled_back"
    sandbox = fresh_sandbox(name)
    sandbox.seed(2000)
    spec = sandbox.spec(cutover={"mode": "manual" if manual else "automatic", "bake_seconds": 0.2})
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
    save(name, history)


async def record_build_while_copying(env: WorkflowEnvironment, name: str) -> None:
    """A blue-green migration that builds each shard's index while the next shard copies; in
    the ``shared`` ones it changes the index alone (``records: shared``): the target reads the
    source's records, and each shard's pass reads and checks them and writes nothing."""
    sandbox = fresh_sandbox(name)
    sandbox.seed(3000)
    spec = sandbox.spec(
        shards={"count": 4},
        max_parallel_shards=1,
        cutover={"mode": "automatic", "bake_seconds": 0.2},
        **({"records": "shared"} if "shared" in name else {}),
    )
    final, history = await completed(env, sandbox, spec)
    assert final.index_log_position is not None, "the shards were not built during the copy"
    save(name, history)


async def record_continued(env: WorkflowEnvironment, name: str) -> None:
    """A run that starts from carried state: the second run of a migration that continued as
    new (enough shards that the first run's history fills up)."""
    sandbox = fresh_sandbox(name)
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
    save(name, history, f", run 2 of {len(runs)}")


async def record_online(env: WorkflowEnvironment, name: str) -> None:
    """The online drill (shadow, ramp, cut-over, rollback after it, second cut-over) with a
    router searching and writing on the side."""
    sandbox = fresh_sandbox(name)
    vectors = sandbox.seed(3000)
    spec = sandbox.spec(
        strategy="online",
        online=ONLINE,
        cutover={"mode": "manual", "bake_seconds": 2},
    )
    with live_traffic(sandbox.catalog, vectors):
        async with running_worker(env.client, sandbox) as queue:
            mc = MigrationClient(env.client, queue)
            final = await run_drill(mc, spec, lambda _: None, operator="recorder")
            assert final.phase == Phase.COMPLETED, final
            history = await mc.handle(final.migration_id).fetch_history()
    save(name, history)


async def record_online_tuned(env: WorkflowEnvironment, name: str) -> None:
    """An online migration that tunes the target's ef_search on mirrored reads during
    SHADOWING (``online.tuning``: the ``tuning_start`` and ``tuning_choose`` activities and the
    ``tuning.chosen`` ledger entry), then ramps and cuts over."""
    sandbox = fresh_sandbox(name)
    vectors = sandbox.seed(3000)
    spec = sandbox.spec(
        strategy="online",
        online={
            **ONLINE,
            "shadow": {**ONLINE["shadow"], "seconds": 2},
            "tuning": {"parameter": "ef_search", "candidates": [8, 64], "min_recall": 0.5},
        },
    )
    with live_traffic(sandbox.catalog, vectors):
        async with running_worker(env.client, sandbox) as queue:
            mc = MigrationClient(env.client, queue)
            mid = await mc.start(spec, operator="recorder")
            final = await mc.result(mid)
            assert final.phase == Phase.COMPLETED, final
            assert final.tuning is not None, final
            history = await mc.handle(mid).fetch_history()
    save(name, history, f", chose ef_search={final.tuning.chosen}")


async def captured_drill(
    env: WorkflowEnvironment,
    name: str,
    spec_for: Callable[[str], Any],
    application: type[Any],
    cutovers: int | None = None,
) -> None:
    """The online drill on an adopted PostgreSQL table whose writes are captured (patch
    ``pg-capture``), while an ``application`` writes to it with plain SQL: on a PostgreSQL
    server of its own, the migration ``spec_for`` makes from the database's URL."""
    from tests.test_capture import Reader, items_table
    from vecmigrate.testing.postgres import start_postgres

    sandbox = fresh_sandbox(name)
    # The spec's defaults resolve under the sandbox, not the recording user's home.
    os.environ[HOME_ENV] = str(sandbox.root)
    server = start_postgres()
    try:
        server.psql("CREATE DATABASE recorded;")
        url = server.get_uri("recorded").replace("postgresql://", "postgresql+psycopg://", 1)
        items_table(url)
        spec = spec_for(url)
        app, reader = application(url, {"now": "recording"}, rate=50.0), Reader(sandbox, spec)
        app.start()
        reader.start()
        try:
            async with running_worker(env.client, sandbox) as queue:
                mc = MigrationClient(env.client, queue)
                final = await run_drill(mc, spec, lambda _: None, operator="recorder")
                assert final.phase == Phase.COMPLETED, final
                assert cutovers is None or final.cutovers == cutovers, final
                assert final.capture is not None
                assert final.capture.removed, final.capture
                history = await mc.handle(final.migration_id).fetch_history()
        finally:
            app.stopping.set()
            app.join(10)
            reader.close()
        assert not getattr(app, "failures", []), app.failures[:3]
    finally:
        server.cleanup()
    save(name, history)


async def record_online_capture(env: WorkflowEnvironment, name: str) -> None:
    """The capture installed before the snapshot, replayed in the catch-up, before each
    cut-over and through the bake, removed at the finalize."""
    from tests.test_capture import Application, items_spec

    def spec_for(url: str) -> Any:
        return items_spec(url, id="online-capture", cutover={"mode": "manual", "bake_seconds": 2})

    await captured_drill(env, name, spec_for, Application)


async def record_online_stable_capture(env: WorkflowEnvironment, name: str) -> None:
    """With a stable name (a view) in front, the application writing by the name: the
    capture runs both ways from the cut-over, and each move of the view (cut-over, rollback
    after it, second cut-over) replays under a lock. No workflow command is new for it (the
    switch and the replays are activities it already called); the recording keeps that path's
    commands from changing unnoticed."""
    from tests.test_capture_drill import Application, drill_spec
    from vecmigrate.data import stablename

    def spec_for(url: str) -> Any:
        spec = drill_spec(url, id="online-stable-capture")
        stablename.prepare(spec)
        return spec

    await captured_drill(env, name, spec_for, Application, cutovers=2)


async def record_reconciled(env: WorkflowEnvironment, name: str) -> None:
    """An online migration with a router writing on the side, through the reconcile gate after
    the catch-up (writes in flight while it compares are left out, not repaired)."""
    sandbox = fresh_sandbox(name)
    vectors = sandbox.seed(3000)
    spec = sandbox.spec(
        strategy="online", online=ONLINE, cutover={"mode": "automatic", "bake_seconds": 0.5}
    )
    with live_traffic(sandbox.catalog, vectors):
        final, history = await completed(env, sandbox, spec)
    assert final.reconcile is not None, "the reconcile gate did not run"
    assert final.reconcile.passed, final.reconcile
    save(name, history)


async def record_stable_aborted(env: WorkflowEnvironment, name: str) -> None:
    """A blue-green migration with a stable name (a Qdrant alias, local mode), aborted during
    the bake: the abort leaves the name where reads are and says so in the ledger (the
    ``abort-stable-name`` patch)."""
    from vecmigrate.data import stablename
    from vecmigrate.stores.qdrant import close_clients

    sandbox = fresh_sandbox(name)
    os.environ[HOME_ENV] = str(sandbox.root)
    store = {"kind": "qdrant", "path": str(sandbox.root / "qdrant")}
    index = {"kind": "qdrant_hnsw", "m": 16, "ef": 64}
    source = sandbox.version("v1", index, store=store)
    sandbox.seed(600, version=source)
    spec = sandbox.spec(
        id="stable-aborted",
        source=source.model_dump(mode="json"),
        target=sandbox.version("v2", index, store=store).model_dump(mode="json"),
        cutover={"mode": "manual", "bake_seconds": 3600, "stable_name": "docs_live"},
    )
    stablename.prepare(spec)
    try:
        async with running_worker(env.client, sandbox) as queue:
            mc = MigrationClient(env.client, queue)
            mid = await mc.start(spec, operator="recorder")
            await until(mc, mid, lambda s: s.phase == Phase.AWAITING_CUTOVER)
            await mc.signal(mid, "approve_cutover", operator="recorder")
            await until(mc, mid, lambda s: s.phase == Phase.BAKING)
            await mc.signal(mid, "abort", operator="recorder", reason="recorded")
            final = await mc.result(mid)
            assert final.phase == Phase.ABORTED, final
            kinds = [e.kind for e in sandbox.catalog.entries(mid)]
            assert "stable_name.ended" in kinds, kinds
            history = await mc.handle(mid).fetch_history()
    finally:
        close_clients()
    save(name, history)


async def finish(mc: MigrationClient, mid: str, name: str) -> None:
    await mc.result(mid)
    save(name, await mc.handle(mid).fetch_history())


async def record_v2(env: WorkflowEnvironment, name: str) -> None:
    """One of the lifecycle table's cases (``_v2``), or the same case recorded again under the
    ``routing-step`` patch (``_v3``; see the module's docstring)."""
    case = name.rsplit("_", 1)[0]
    sandbox = fresh_sandbox(name)
    vectors = sandbox.seed(3000)
    manual = {"mode": "manual", "bake_seconds": 0.5}
    automatic = {"mode": "automatic", "bake_seconds": 0.5}
    specs = {
        "blue_green_completed": sandbox.spec(cutover=automatic),
        "blue_green_rolled_back": sandbox.spec(cutover=manual),
        "blue_green_aborted": sandbox.spec(cutover=manual, batch_size=100),
        "blue_green_paused_resumed": sandbox.spec(
            cutover=automatic, batch_size=100, max_vectors_per_second=4000
        ),
        "blue_green_gate_overridden": sandbox.spec(
            target=sandbox.poor_target(),
            gates={"min_recall": 0.999, "sample_queries": 50},
            cutover=manual,
        ),
        "offline_completed": sandbox.spec(strategy="offline", cutover=automatic),
        "online_drill": sandbox.spec(strategy="online", online=ONLINE, cutover=manual),
        "shadow_only_completed": sandbox.spec(strategy="shadow_only", online=ONLINE),
    }
    spec = specs[case]
    # Shadow gates need live reads.
    with live_traffic(sandbox.catalog, vectors, on=spec.strategy in ("online", "shadow_only")):
        async with running_worker(env.client, sandbox) as queue:
            mc = MigrationClient(env.client, queue)
            if case == "online_drill":
                final = await run_drill(mc, spec, lambda _: None, operator="recorder")
                assert final.phase == Phase.COMPLETED, final
                save(name, await mc.handle(final.migration_id).fetch_history())
                return
            mid = await mc.start(spec, operator="recorder")
            if case == "blue_green_completed":
                await mc.signal(mid, "approve_cutover", operator="recorder")  # ignored: early
            elif case == "blue_green_rolled_back":
                await until(mc, mid, lambda s: s.phase == Phase.AWAITING_CUTOVER)
                await mc.signal(mid, "pause", operator="recorder")
                await mc.signal(mid, "rollback", operator="recorder", reason="replay test")
            elif case == "blue_green_aborted":
                await until(mc, mid, lambda s: s.phase == Phase.BACKFILLING)
                await mc.signal(mid, "abort", operator="recorder", reason="replay test")
            elif case == "blue_green_paused_resumed":
                await until(mc, mid, lambda s: s.phase == Phase.BACKFILLING)
                await mc.signal(mid, "pause", operator="recorder")
                await until(mc, mid, lambda s: s.paused)
                await asyncio.sleep(1.0)
                await mc.set_throttle(mid, None, operator="recorder")
                await mc.signal(mid, "resume", operator="recorder")
            elif case == "blue_green_gate_overridden":
                await until(mc, mid, lambda s: s.paused and s.gates is not None)
                st = await mc.status(mid)
                assert st.gates is not None
                for line in st.gates.failures():
                    await mc.set_gate(
                        mid, line.split(" = ")[0], override=True, operator="recorder", reason="test"
                    )
                await mc.signal(mid, "resume", operator="recorder")
                await until(mc, mid, lambda s: s.phase == Phase.AWAITING_CUTOVER)
                await mc.signal(mid, "approve_cutover", operator="recorder")
            await finish(mc, mid, name)


async def until(mc: MigrationClient, mid: str, ok: Callable[[Any], bool]) -> None:
    deadline = time.monotonic() + 120
    while not ok(await mc.status(mid)):
        assert time.monotonic() < deadline, f"{mid}: condition not reached"
        await asyncio.sleep(0.1)


V2 = (
    "blue_green_completed",
    "blue_green_rolled_back",
    "blue_green_aborted",
    "blue_green_paused_resumed",
    "blue_green_gate_overridden",
    "offline_completed",
    "online_drill",
    "shadow_only_completed",
)


async def record_roles(env: WorkflowEnvironment, name: str) -> None:
    """A manual blue-green migration under operator roles (the ``operator-roles`` patch): a
    viewer's pause and the starter's own approval (four eyes) recorded and ignored, another
    approver's approval applied."""
    from vecmigrate.model.access import Role
    from vecmigrate.workers.connection import TemporalSettings, connect

    sandbox = fresh_sandbox(name)
    sandbox.catalog.grant_role("viv", Role.VIEWER, "*", "*", "recorder")
    sandbox.catalog.grant_role("*@approvers", Role.APPROVER, "*", "*", "recorder")
    sandbox.catalog.set_four_eyes("*", "*", True, "recorder")
    sandbox.seed(2000)
    spec = sandbox.spec(cutover={"mode": "manual", "bake_seconds": 0.2})
    address = env.client.service_client.config.target_host

    async def as_(who: str, queue: str) -> MigrationClient:
        settings = TemporalSettings(address=address, identity=who, encrypt=False)
        return MigrationClient(await connect(settings=settings), queue)

    async with running_worker(env.client, sandbox) as queue:
        ann, bob, viv = [await as_(w, queue) for w in ("ann@approvers", "bob@approvers", "viv")]
        mid = await ann.start(spec, operator="ann")
        while (await ann.status(mid)).phase != Phase.AWAITING_CUTOVER:
            await asyncio.sleep(0.1)
        await viv.signal(mid, "pause", operator="viv")
        await ann.signal(mid, "approve_cutover", operator="ann")
        while len((await ann.status(mid)).operators) < 2:
            await asyncio.sleep(0.1)
        await bob.signal(mid, "approve_cutover", operator="bob")
        await ann.result(mid)
        save(name, await ann.handle(mid).fetch_history())


async def record_compaction(env: WorkflowEnvironment, name: str) -> None:
    """A compaction of an IVF index after writes through the router."""
    sandbox = fresh_sandbox(name)
    vectors = sandbox.seed(2000)
    router = Router(sandbox.catalog, refresh_seconds=0.2)
    for n in range(20):
        router.upsert(
            "default", "docs", np.arange(100_000 + 10 * n, 100_010 + 10 * n), vectors[:10]
        )
        router.delete("default", "docs", np.array([n]))
    router.close()
    async with running_worker(env.client, sandbox) as queue:
        request = CompactionRequest(
            tenant="default", collection="docs", settle_seconds=0, requested_by="recorder"
        )
        handle = await start_compaction(env.client, request, task_queue=queue)
        await handle.result()
        history = await handle.fetch_history()
    save(name, history)


async def record_regional_divergence(env: WorkflowEnvironment, name: str) -> None:
    """Two regions with the same records, compared at the barrier, then cut over."""
    from tests.test_region_divergence import gated_spec, region_workers, seed_two
    from tests.test_regions import ControlPlane, regional_until

    root = fresh_sandbox(name).root
    seed_two(root, diverged=False)
    spec = gated_spec(root)
    async with region_workers(env.client, root), ControlPlane(env.client, root) as mc:
        mid = await mc.start(spec, operator="recorder")
        final = await regional_until(
            mc, mid, lambda s: s.phase in (Phase.COMPLETED, Phase.ROLLED_BACK)
        )
        assert final.phase == Phase.COMPLETED, final
        assert [d.passed for d in final.divergence] == [True], final.divergence
        history = await mc.handle(mid).fetch_history()
    save(name, history)


RECORDERS: dict[str, Callable[[WorkflowEnvironment, str], Awaitable[None]]] = {
    **{f"{case}_v2": record_v2 for case in V2},
    **{f"{case}_v3": record_v2 for case in V2},
    "blue_green_completed": record_blue_green,
    "blue_green_rolled_back": record_blue_green,
    "blue_green_continued": record_continued,
    "online_drill": record_online,
    "online_tuned": record_online_tuned,
    "online_capture": record_online_capture,
    "online_stable_capture": record_online_stable_capture,
    "blue_green_build_while_copying": record_build_while_copying,
    "blue_green_shared_records": record_build_while_copying,
    "blue_green_shared_beside": record_build_while_copying,
    "blue_green_roles": record_roles,
    "compaction_completed": record_compaction,
    "online_reconciled": record_reconciled,
    "regional_divergence": record_regional_divergence,
    "blue_green_stable_aborted": record_stable_aborted,
}


def main() -> None:
    asked = sys.argv[1:]
    unknown = [n for n in asked if n not in RECORDERS]
    if unknown:
        raise SystemExit(f"unknown histories {unknown}; known: {', '.join(RECORDERS)}")
    names = asked or [n for n in RECORDERS if not (HERE / f"{n}.json").exists()]
    if not names:
        print("every history is recorded; name one to record it again")
        return
    asyncio.run(record(names))


if __name__ == "__main__":
    main()
