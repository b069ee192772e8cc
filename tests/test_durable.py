"""Durable sharded backfill on the real dev server: bad data, throttle, pause, many shards."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
from temporalio.client import Client, WorkflowUpdateFailedError

from control.client import MigrationClient
from tests.conftest import Sandbox, running_worker
from tests.test_backfill import poison
from tests.test_workflow import wait_for
from vecmigrate.backfill import open_source, open_target
from vecmigrate.journal import Journal
from vecmigrate.lifecycle import Phase, ThrottleRequest
from vecmigrate.stores import WHOLE


async def until(ok: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.05)


async def test_bad_data_pauses_the_migration_with_its_reason_until_fixed(
    client: Client, sandbox: Sandbox
) -> None:
    vectors = sandbox.seed(3000)
    spec = sandbox.spec(shards={"count": 1}, batch_size=200)
    poison(sandbox, spec, 1500)
    async with running_worker(client, sandbox) as queue:
        mc = MigrationClient(client, queue)
        mid = await mc.start(spec, operator="alice")
        st = await wait_for(mc, mid, lambda s: s.paused and "copy shard 0" in s.error)
        assert st.phase == Phase.BACKFILLING
        assert "DataError" in st.error
        assert "[1500]" in st.error
        assert "NaN" in st.error
        assert "resume to retry" in st.pause_reason

        def failed_entries() -> list[Any]:
            return [e for e in sandbox.catalog.entries(mid) if e.kind == "step.failed"]

        await until(lambda: len(failed_entries()) > 0)  # written just after the status changed
        failed = failed_entries()
        assert len(failed) == 1
        assert "[1500]" in failed[0].data["error"]
        assert failed[0].data["type"] == "DataError"
        # Not retried (the error is not transient), and nothing of the bad batch was written.
        journal = Journal(sandbox.catalog)
        state = journal.copy_state(mid, 0)
        assert state is not None
        assert state.attempts == 1
        assert open_target(spec).count(WHOLE) == state.copied < 3000
        await until(lambda: journal.control(mid).paused)

        # The operator repairs the record at the source and resumes.
        open_source(spec).upsert(__import__("numpy").array([1500]), vectors[1499:1500])
        await mc.signal(mid, "resume", operator="alice", reason="record 1500 repaired")
        final = await mc.result(mid)
    assert final.phase == Phase.COMPLETED
    assert open_target(spec).checksum(WHOLE) == open_source(spec).checksum(WHOLE)
    assert final.shards[0].recopied == 0


async def test_throttle_update_and_pause_hold_a_running_copy(
    client: Client, sandbox: Sandbox
) -> None:
    sandbox.seed(20_000)
    spec = sandbox.spec(
        shards={"count": 2}, batch_size=250, max_vectors_per_second=4000.0, heartbeat_seconds=5
    )
    async with running_worker(client, sandbox) as queue:
        mc = MigrationClient(client, queue)
        mid = await mc.start(spec, operator="alice")
        journal = Journal(sandbox.catalog)

        def copied() -> int:
            return sum(s.copied for s in journal.copy_states(mid).values())

        await wait_for(mc, mid, lambda s: s.phase == Phase.BACKFILLING)
        # Refused updates change nothing and name the problem.
        for bad in (0.0, -1.0):
            with pytest.raises(WorkflowUpdateFailedError) as exc:
                await mc.handle(mid).execute_update(
                    "set_throttle", ThrottleRequest(max_vectors_per_second=bad, operator="bob")
                )
            assert "positive, finite" in str(exc.value.cause)
            with pytest.raises(ValueError, match="positive, finite"):
                await mc.set_throttle(mid, bad, operator="bob")
        # JSON has no NaN: sent raw it would arrive as null, "no throttle". The client refuses it.
        with pytest.raises(ValueError, match="positive, finite"):
            await mc.set_throttle(mid, float("nan"), operator="bob")
        assert (await mc.status(mid)).max_vectors_per_second == 4000.0

        while copied() < 2000:
            await asyncio.sleep(0.05)
        await mc.signal(mid, "pause", operator="bob", reason="peak traffic")
        await wait_for(mc, mid, lambda s: s.paused)
        await until(lambda: journal.control(mid).paused)
        await asyncio.sleep(1.0)  # copies in flight see the pause before their next batch
        held = copied()
        await asyncio.sleep(1.5)
        assert copied() == held < 20_000
        st = await mc.status(mid)
        assert st.phase == Phase.BACKFILLING
        assert st.rate is not None

        assert await mc.set_throttle(mid, None, operator="bob", reason="off-peak") is None
        await until(lambda: journal.control(mid).max_vectors_per_second is None)
        await mc.signal(mid, "resume", operator="bob")
        final = await mc.result(mid)
    assert final.phase == Phase.COMPLETED
    assert final.max_vectors_per_second is None
    assert sum(s.recopied for s in final.shards) == 0
    assert open_target(spec).checksum(WHOLE) == open_source(spec).checksum(WHOLE)
    actions = [
        (e.data["action"], e.data.get("max_vectors_per_second"))
        for e in sandbox.catalog.entries(mid)
        if e.kind == "operator"
    ]
    assert ("pause", None) in actions
    assert ("set_throttle", None) in actions
    assert not any(a == "set_throttle" and v in (0.0, -1.0) for a, v in actions)


@pytest.mark.timeout(1200)
async def test_five_thousand_shards_keep_every_history_small(
    client: Client, sandbox: Sandbox
) -> None:
    sandbox.seed(15_000)
    spec = sandbox.spec(
        shards={"by": "hash", "count": 5000},
        max_parallel_shards=8,
        target=sandbox.version("v2", {"kind": "faiss_flat"}).model_dump(mode="json"),
        gates={"sample_queries": 100},
    )
    async with running_worker(client, sandbox, concurrency=8) as queue:
        mc = MigrationClient(client, queue)
        mid = await mc.start(spec, operator="alice")
        final = await mc.result(mid, timeout=1100)
    assert final.phase == Phase.COMPLETED, final.error
    assert len(final.shards) == 5000
    assert sum(s.copied for s in final.shards) == 15_000
    assert open_target(spec).checksum(WHOLE) == open_source(spec).checksum(WHOLE)
    assert final.gates is not None
    assert final.gates.passed

    lengths = []
    async for run in client.list_workflows(f"WorkflowId = '{mid}'"):
        lengths.append(run.history_length)
    print(f"\n{len(lengths)} runs; largest history {max(lengths)} events")
    assert final.runs == len(lengths) > 1
    assert max(lengths) < 2_000
    assert sandbox.catalog.verify_ledger() == []
