"""Durable sharded backfill on the real dev server: bad data, throttle, pause, many shards."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import numpy as np
import pytest
from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from tests.conftest import Sandbox, running_worker
from tests.test_backfill import poison
from tests.test_workflow import activity_events, activity_results, wait_for
from vecmigrate.catalog.changelog import ChangeLog
from vecmigrate.catalog.journal import Journal
from vecmigrate.control.client import MigrationClient
from vecmigrate.control.devserver import temporal_binary
from vecmigrate.data.backfill import open_source, open_target
from vecmigrate.model.lifecycle import Phase
from vecmigrate.model.messages import ThrottleRequest
from vecmigrate.stores import WHOLE
from vecmigrate.workflows.search import KEYS as SEARCH_KEYS


async def until(ok: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.05)


async def test_bad_data_is_quarantined_and_holds_the_migration_at_its_gate(
    client: Client, sandbox: Sandbox
) -> None:
    """A record no store can hold (a NaN vector) is left out of the copy, named in the
    quarantine with its reason, and the quarantine gate (no record left out, by default) holds
    the migration before cut-over; an approver who accepts it overrides the gate with a reason,
    and the migration completes with every other record copied exactly."""
    from vecmigrate.data.quarantine import Quarantine

    sandbox.seed(3000)
    spec = sandbox.spec(shards={"count": 1}, batch_size=200)
    poison(sandbox, spec, 1500)
    async with running_worker(client, sandbox) as queue:
        mc = MigrationClient(client, queue)
        mid = await mc.start(spec, operator="alice")
        st = await wait_for(mc, mid, lambda s: s.paused and s.gates is not None)
        assert st.phase == Phase.VALIDATING
        held = next(v for v in st.gates.verdicts if v.name == "quarantine")
        assert not held.passed
        assert held.value == 1.0
        assert "nonfinite 1" in held.detail
        assert any(r.startswith("quarantine is 1") for r in st.remedies)
        report = Quarantine(sandbox.catalog).report(mid)
        assert report.counts == {"nonfinite": 1}
        assert report.ids == {"nonfinite": ["1500"]}
        # Copied in one attempt, nothing retried, and every other record there.
        state = Journal(sandbox.catalog).copy_state(mid, 0)
        assert state is not None
        assert state.attempts == 1
        assert open_target(spec).count(WHOLE) == 2999

        failing = await mc.set_gate(
            mid, "quarantine", override=True, operator="alice", reason="record 1500 is known bad"
        )
        assert not [f for f in failing if f.startswith("quarantine")]
        await mc.signal(mid, "resume", operator="alice", reason="quarantine accepted")
        final = await mc.result(mid)  # the sandbox's specs cut over automatically
    assert final.phase == Phase.COMPLETED
    source, target = open_source(spec), open_target(spec)
    ids = np.array([i for i in range(1, 3001) if i != 1500], np.int64)
    assert np.array_equal(source.fetch(ids)[1], target.fetch(ids)[1])


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
async def test_status_counts_a_long_copy_by_the_clock_not_the_last_event(
    client: Client, sandbox: Sandbox
) -> None:
    """A workflow's clock stands still between its events: during one long shard copy the
    status query's BACKFILLING seconds stay at the copy's start. The status a reader gets
    counts them to the reader's clock, so the live rate is the throttled copy's and the time to
    go follows from it (before: 2,174 vectors/s against a throttle of 300)."""
    sandbox.seed(3000)
    spec = sandbox.spec(shards={"count": 1}, batch_size=100, max_vectors_per_second=300.0)
    async with running_worker(client, sandbox) as queue:
        mc = MigrationClient(client, queue)
        mid = await mc.start(spec, operator="alice")
        await wait_for(mc, mid, lambda s: s.phase == Phase.BACKFILLING)
        await asyncio.sleep(1.0)
        before = await mc.status(mid)
        await asyncio.sleep(4.0)
        # The live count is the copy's latest heartbeat: at most 2 s old (the worker's
        # heartbeat throttle), 600 vectors at this rate.
        after = await mc.status(mid, live=True)
        await mc.signal(mid, "abort", operator="alice", reason="test done")
        await mc.result(mid)
    assert before.phase == after.phase == Phase.BACKFILLING
    assert after.shards[0].state == "copying"
    spent = after.phase_seconds[Phase.BACKFILLING] - before.phase_seconds[Phase.BACKFILLING]
    assert 3.9 < spent < 6.0
    copied, total = after.copied()
    assert 0 < copied < total
    assert after.rate is not None
    assert 150 < after.rate < 450
    assert after.eta_seconds == pytest.approx((total - copied) / after.rate, abs=0.1)


# About 4.5 minutes on a quiet 2-core machine before the reconcile gate (now three activities a
# shard: copy, reconcile, checks), 13.5 on a loaded one with it: the timeout leaves room.
@pytest.mark.slow
@pytest.mark.long
@pytest.mark.timeout(1500)
async def test_five_thousand_shards_keep_every_history_small(
    client: Client, sandbox: Sandbox
) -> None:
    sandbox.seed(15_000)
    spec = sandbox.spec(
        shards={"by": "hash", "count": 5000},
        max_parallel_shards=8,
        target=sandbox.version("v2", {"kind": "faiss_flat"}).model_dump(mode="json"),
        # 5,000 shards of three records answer a query in 5,000 searches, hundreds of times
        # slower than the two-shard source: the latency gate rightly fails it, and this test is
        # about histories, not about that layout.
        gates={"sample_queries": 100, "max_p99_ratio": None},
    )
    async with running_worker(client, sandbox, concurrency=8) as queue:
        mc = MigrationClient(client, queue)
        mid = await mc.start(spec, operator="alice")
        final = await mc.result(mid, timeout=1400)
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


@pytest.mark.integration  # its own dev server
async def test_an_online_build_continued_as_new_keeps_its_log_position(sandbox: Sandbox) -> None:
    """The index's change-log position is taken once, before the first shard is built, and a
    run continued in the middle of the builds keeps it: a later position would claim that the
    shards built in the earlier run hold writes they were read before, and reads would not lay
    those writes over them."""
    sandbox.seed(3000)
    spec = sandbox.spec(
        strategy="online",
        shards={"by": "hash", "count": 6},
        max_parallel_shards=1,
        online={"settle_seconds": 0.2},
        cutover={"mode": "manual"},
    )
    # The server suggests continuing as new once a history passes 40 events: every run does a
    # few shards, so the builds are spread over several runs.
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_binary(),
        search_attributes=list(SEARCH_KEYS.values()),
        data_converter=pydantic_data_converter,
        dev_server_log_level="error",
        dev_server_extra_args=[
            "--dynamic-config-value",
            "limit.historyCount.suggestContinueAsNew=40",
        ],
    )
    try:
        async with running_worker(env.client, sandbox) as queue:
            mc = MigrationClient(env.client, queue)
            mid = await mc.start(spec, operator="alice")
            # Until the index is registered (the builds are over) or something stops it.
            st = await wait_for(
                mc, mid, lambda s: s.index_version is not None or s.paused, timeout=120
            )
            assert not st.paused, st.pause_reason
            await mc.signal(mid, "abort", operator="alice", reason="test done")
            await mc.result(mid, timeout=60)
            listed = [r async for r in env.client.list_workflows(f"WorkflowId = '{mid}'")]
            runs = [
                await env.client.get_workflow_handle(mid, run_id=r.run_id).fetch_history()
                for r in sorted(listed, key=lambda r: r.start_time)
            ]
    finally:
        await env.shutdown()
    building = [
        run for run in runs if any(e[1] == "build_shard_index" for e in activity_events(run))
    ]
    assert len(building) > 1, "the builds did not span a continue-as-new"
    # One log head for the watermark (prepare), one for the index, whatever the runs.
    heads = [head for run in runs for head in activity_results(run, "log_head")]
    assert len(heads) == 2, heads
    assert st.index_version is not None
    assert ChangeLog(sandbox.catalog).index_position(st.index_version) == heads[-1]
