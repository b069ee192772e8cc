"""Scheduled migrations on Temporal Schedules, on a real dev server: a firing resolves what it
migrates, runs it under its own migration id, a trigger during it is skipped, and a firing with
nothing to do ends saying so."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import pytest
from temporalio.client import Client

from tests.conftest import Sandbox, running_worker, vecmigrate
from vecmigrate.control import schedules
from vecmigrate.control.client import MigrationClient
from vecmigrate.data.scheduling import plan_firing, version_order
from vecmigrate.errors import PreconditionError, SpecError
from vecmigrate.model.lifecycle import Phase
from vecmigrate.model.schedule import CalendarSpec, SchedulePolicy, calendar_ranges
from vecmigrate.model.spec import MigrationSpec

T = TypeVar("T")

REBUILD = {"kind": "faiss_hnsw", "m": 16, "ef_search": 64}


def template(sandbox: Sandbox, **schedule: Any) -> MigrationSpec:
    data = sandbox.spec(
        target=sandbox.version("v2", REBUILD).model_dump(mode="json"),
        cutover={"mode": "manual", "bake_seconds": 0.2},
    ).model_dump(mode="json")
    data.pop("id")
    data["schedule"] = {"migrate": "rebuild", "cron": ["0 3 * * *"], **schedule}
    return MigrationSpec.model_validate(data)


def test_calendar_fields_read_ranges_names_and_steps() -> None:
    assert calendar_ranges("day_of_week", "mon-fri") == [(1, 5, 1)]
    assert calendar_ranges("minute", "*/15") == [(0, 59, 15)]
    assert calendar_ranges("hour", "1,3-5") == [(1, 1, 1), (3, 5, 1)]
    with pytest.raises(ValueError, match="not a value from 0 to 23"):
        calendar_ranges("hour", "24")
    with pytest.raises(ValueError, match="has 3 fields"):
        SchedulePolicy(migrate="rebuild", cron=("0 3 *",))
    assert CalendarSpec(hour="3", day_of_week="sat").ranges()["day_of_week"] == [(6, 6, 1)]
    assert version_order("10") > version_order("9")
    assert version_order("2.1") > version_order("2.0.9")


def test_a_scheduled_spec_refuses_what_every_firing_cannot_share(sandbox: Sandbox) -> None:
    data = template(sandbox).model_dump(mode="json")
    data["id"] = "fixed"
    with pytest.raises(ValueError, match="every firing gets its own migration id"):
        MigrationSpec.model_validate(data)


def test_a_firing_migrates_the_version_serving_reads(sandbox: Sandbox) -> None:
    sandbox.seed(2000)
    spec = template(sandbox)
    at = datetime(2025, 6, 7, 3, 0, tzinfo=UTC)
    firing = plan_firing(sandbox.catalog, spec, at)
    assert firing.outcome == "started", firing
    assert firing.source_version == "v1"
    assert firing.target_version == "v2-20250607T030000Z"
    assert firing.migration_id == "default.docs.v1-to-v2-20250607T030000Z"
    assert firing.spec is not None
    assert firing.spec["schedule"] is None
    # The serving version already has the template's index: nothing to rebuild.
    same = template(sandbox, target_prefix="again")
    data = same.model_dump(mode="json")
    data["target"]["index"] = data["source"]["index"]
    nothing = plan_firing(sandbox.catalog, MigrationSpec.model_validate(data), at)
    assert nothing.outcome == "nothing_to_do"
    assert "already serves" in nothing.reason
    # Unless the schedule says always.
    data["schedule"]["when"] = "always"
    assert plan_firing(sandbox.catalog, MigrationSpec.model_validate(data), at).outcome == (
        "started"
    )


async def test_start_refuses_a_schedule_template(client: Client, sandbox: Sandbox) -> None:
    with pytest.raises(PreconditionError, match="schedule create"):
        await MigrationClient(client, "unused").start(template(sandbox), operator="alice")


async def until(check: Callable[[], Awaitable[T | None]], timeout: float = 60) -> T:
    deadline = time.monotonic() + timeout
    while True:
        found = await check()
        if found:
            return found
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.2)


async def test_a_schedule_starts_a_migration_and_skips_a_trigger_during_it(
    client: Client, sandbox: Sandbox
) -> None:
    sandbox.seed(2000)
    spec = template(sandbox)
    async with running_worker(client, sandbox) as queue:
        mc = MigrationClient(client, queue)
        sid, now = await schedules.create_schedule(
            client, sandbox.catalog, spec, task_queue=queue, operator="alice", schedule_id=queue
        )
        assert now.outcome == "started", now
        try:
            await schedules.trigger_schedule(client, sid)

            async def first_firing() -> str | None:
                view = await schedules.describe_schedule(client, sid)
                return view.running[0] if view.running else None

            firing_id = await until(first_firing)
            assert firing_id.startswith(sid + "-")
            mid = await until(lambda: _migration(mc, firing_id))
            assert mid.startswith("default.docs.v1-to-v2-")
            # The firing's id finds the migration: status through the firing, ledger by id.
            waiting = await until(lambda: _awaiting(mc, firing_id))
            assert waiting.migration_id == mid
            # A second trigger while the migration runs is skipped (overlap policy skip).
            await schedules.trigger_schedule(client, sid)

            async def skipped() -> schedules.ScheduleView | None:
                view = await schedules.describe_schedule(client, sid)
                return view if view.skipped_overlap >= 1 else None

            view = await until(skipped)
            assert view.actions == 1
            assert view.running == [firing_id]
            await mc.signal(firing_id, "approve_cutover", operator="alice", reason="scheduled")
            final = await mc.result(mid, timeout=120)
            assert final.phase == Phase.COMPLETED, final
            routing = sandbox.catalog.get_routing("default", "docs")
            assert routing is not None
            assert routing.read_version == final.target_version

            async def ended() -> schedules.FiringView | None:
                found = await schedules.firing_view(client, firing_id)
                return found if found.status == "completed" else None

            done = await until(ended)
            assert (done.outcome, done.migration_id, done.phase) == ("started", mid, "COMPLETED")
            env = {**os.environ, "TEMPORAL_ADDRESS": client.service_client.config.target_host}
            log = await asyncio.to_thread(
                vecmigrate, "log", firing_id, "--verify", "--catalog", sandbox.catalog.url, env=env
            )
            # The firing's id found the ledger and its chain checked out (without a key ring the
            # command says it cannot vouch for more: exit 3, "unverified").
            said = {0: "ledger intact", 3: "nothing found wrong"}
            assert log.returncode in said, log.stderr
            assert said[log.returncode] in log.stderr
            assert mid in sandbox.catalog.entries(mid)[0].migration_id  # type: ignore[operator]

            # The next firing finds the rebuilt version serving: nothing to do, and says so.
            await schedules.trigger_schedule(client, sid)

            async def second() -> schedules.FiringView | None:
                view = await schedules.describe_schedule(client, sid)
                later = [f for f in view.firings if f.workflow_id != firing_id]
                return later[0] if later and later[0].status == "completed" else None

            again = await until(second)
            assert again.outcome == "nothing_to_do", again
            assert "already serves" in again.reason
            assert again.migration_id is None
            listed = await asyncio.to_thread(
                vecmigrate, "schedule", "describe", sid, "--json", env=env
            )
            assert listed.returncode == 0, listed.stderr
            assert '"nothing_to_do"' in listed.stdout
        finally:
            await schedules.delete_schedule(client, sandbox.catalog, sid)
    assert sandbox.catalog.entry_by_key(f"schedule/{firing_id}") is not None


async def _migration(mc: MigrationClient, firing_id: str) -> str | None:
    try:
        return await mc.migration_of(firing_id)
    except Exception:
        return None


async def _awaiting(mc: MigrationClient, firing_id: str) -> Any:
    try:
        st = await mc.status(firing_id)
    except Exception:
        return None
    return st if st.phase == Phase.AWAITING_CUTOVER else None


def test_a_bad_schedule_section_is_refused_before_anything_runs(sandbox: Sandbox) -> None:
    data = template(sandbox).model_dump(mode="json")
    data["schedule"]["timezone"] = "Nowhere/City"
    from vecmigrate.model.spec import parse_spec

    with pytest.raises(SpecError, match="unknown time zone"):
        parse_spec(data)
