"""Maintenance windows: the pure calendar, and a migration held and let go by durable timers on a
real Temporal dev server (the time-skipping test server does not install here, so the windows
are seconds long)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError
from temporalio.client import Client

from tests.conftest import Sandbox, running_worker
from tests.test_workflow import wait_for
from vecmigrate.control.client import MigrationClient
from vecmigrate.model.lifecycle import Phase
from vecmigrate.model.windows import MaintenanceWindows


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def test_a_clock_window_opens_on_its_days_and_wraps_past_midnight() -> None:
    w = MaintenanceWindows.model_validate(
        {"allow": [{"days": ["sat"], "start": "22:00", "end": "04:00", "timezone": "UTC"}]}
    )
    # 2025-06-07 is a Saturday.
    assert w.open_until(at("2025-06-07T23:30:00+00:00")) == at("2025-06-08T04:00:00+00:00")
    assert w.open_until(at("2025-06-08T03:59:59+00:00")) == at("2025-06-08T04:00:00+00:00")
    assert w.open_until(at("2025-06-08T04:00:00+00:00")) is None
    assert w.next_opening(at("2025-06-08T04:00:00+00:00")) == at("2025-06-14T22:00:00+00:00")
    assert w.next_opening(at("2025-06-07T21:00:00+00:00")) == at("2025-06-07T22:00:00+00:00")


def test_clock_windows_follow_their_time_zone_across_daylight_saving() -> None:
    w = MaintenanceWindows.model_validate(
        {"allow": [{"start": "01:00", "end": "05:00", "timezone": "Europe/Paris"}]}
    )
    # Winter: Paris is UTC+1; summer: UTC+2.
    assert w.next_opening(at("2025-01-10T12:00:00+00:00")) == at("2025-01-11T00:00:00+00:00")
    assert w.next_opening(at("2025-07-10T12:00:00+00:00")) == at("2025-07-10T23:00:00+00:00")


def test_touching_windows_merge_and_one_off_windows_end() -> None:
    w = MaintenanceWindows.model_validate(
        {
            "allow": [
                {"opens": "2025-06-01T22:00:00Z", "closes": "2025-06-02T02:00:00Z"},
                {"opens": "2025-06-02T02:00:00Z", "closes": "2025-06-02T04:00:00Z"},
            ]
        }
    )
    assert w.open_until(at("2025-06-01T23:00:00+00:00")) == at("2025-06-02T04:00:00+00:00")
    assert w.next_opening(at("2025-06-01T12:00:00+00:00")) == at("2025-06-01T22:00:00+00:00")
    assert w.next_opening(at("2025-06-02T05:00:00+00:00")) is None
    assert w.holds("BACKFILLING")
    assert w.holds("BUILDING_INDEX")
    assert not w.holds("VALIDATING")


@pytest.mark.parametrize(
    ("window", "problem"),
    [
        ({"start": "01:00", "end": "01:00"}, "give it a length"),
        ({"start": "01:00", "end": "02:00", "timezone": "Mars/Olympus"}, "unknown time zone"),
        ({"start": "01:00", "end": "02:00", "days": ["someday"]}, "days"),
        ({"opens": "2025-06-02T02:00:00Z", "closes": "2025-06-01T02:00:00Z"}, "before it opens"),
        ({"opens": "2025-06-01T02:00:00", "closes": "2025-06-02T02:00:00"}, "UTC offset"),
    ],
)
def test_bad_windows_are_refused_naming_the_problem(window: dict[str, str], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        MaintenanceWindows.model_validate({"allow": [window]})


async def test_a_window_pauses_and_resumes_a_migration_by_durable_timer(
    client: Client, sandbox: Sandbox
) -> None:
    sandbox.seed(3000)
    t0 = datetime.now(UTC)

    def iso(seconds: float) -> str:
        return (t0 + timedelta(seconds=seconds)).isoformat()

    # Closed at the start; open for 6 s (the throttled copy needs about 8 s); closed for 10 s;
    # then open for good.
    spec = sandbox.spec(
        shards={"count": 2},
        batch_size=200,
        max_parallel_shards=2,
        max_vectors_per_second=400,
        windows={
            "allow": [
                {"opens": iso(6), "closes": iso(12)},
                {"opens": iso(22), "closes": iso(3600)},
            ]
        },
    )
    async with running_worker(client, sandbox) as queue:
        mc = MigrationClient(client, queue)
        mid = await mc.start(spec, operator="alice")
        held = await wait_for(mc, mid, lambda s: s.phase == Phase.BACKFILLING, timeout=30.0)
        assert held.window_until == iso(6), held
        assert "outside the maintenance window" in held.window_note
        assert held.copied()[0] == 0
        # Inside the first window the copy runs; once it closes the copies stop after a batch.
        closed = await wait_for(mc, mid, lambda s: s.window_until == iso(22), timeout=40)
        assert closed.phase == Phase.BACKFILLING
        await asyncio.sleep(3.0)
        before = await mc.status(mid, live=True)
        await asyncio.sleep(3.0)
        after = await mc.status(mid, live=True)
        assert 0 < before.copied()[0] == after.copied()[0] < 3000, (before, after)
        final = await mc.result(mid, timeout=120)
    assert final.phase == Phase.COMPLETED, final
    entries = sandbox.catalog.entries(mid)
    windows = [(e.kind, e.at) for e in entries if e.kind.startswith("window.")]
    assert [k for k, _ in windows] == [
        "window.closed",
        "window.opened",
        "window.closed",
        "window.opened",
    ]
    opened_at = [at(a) for k, a in windows if k == "window.opened"]
    assert opened_at[0] >= t0 + timedelta(seconds=6)
    assert opened_at[1] >= t0 + timedelta(seconds=22)
    copied = [at(e.at) for e in entries if e.kind == "shard.copied"]
    assert copied
    assert min(copied) >= opened_at[0]
    # The last shard finished only after the second window opened.
    assert max(copied) >= opened_at[1]
