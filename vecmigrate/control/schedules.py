"""Scheduled migrations on Temporal Schedules: one small function per schedule action (create,
list, describe, pause, unpause, trigger, delete).

A schedule's action starts ``ScheduledMigrationWorkflow`` with the schedule's id and the hash of
its template (stored in the catalog when the schedule is made): the Temporal UI and CLI show it,
and edit its calendar and policies like any other schedule. Each firing resolves what it
migrates at its time and runs that migration as a child named by its migration id, which
``vecmigrate status`` and ``log`` take, as they take the firing's own workflow id.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from temporalio.api.common.v1 import Payload
from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleCalendarSpec,
    ScheduleDescription,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    ScheduleRange,
    ScheduleSpec,
    ScheduleState,
    WorkflowExecutionStatus,
)
from temporalio.client import SchedulePolicy as TemporalSchedulePolicy
from temporalio.service import RPCError, RPCStatusCode

from vecmigrate.catalog.catalog import Catalog
from vecmigrate.catalog.schedules import ScheduleStore
from vecmigrate.data.scheduling import plan_firing
from vecmigrate.errors import NotFoundError, PreconditionError
from vecmigrate.model.schedule import Firing, FiringInput, FiringResult, SchedulePolicy
from vecmigrate.model.spec import MigrationSpec
from vecmigrate.workflows.scheduled import ScheduledMigrationWorkflow

OVERLAP = {
    "skip": ScheduleOverlapPolicy.SKIP,
    "buffer_one": ScheduleOverlapPolicy.BUFFER_ONE,
    "buffer_all": ScheduleOverlapPolicy.BUFFER_ALL,
    "cancel_other": ScheduleOverlapPolicy.CANCEL_OTHER,
    "terminate_other": ScheduleOverlapPolicy.TERMINATE_OTHER,
    "allow_all": ScheduleOverlapPolicy.ALLOW_ALL,
}
FIRING_WORKFLOW = "ScheduledMigrationWorkflow"


def default_schedule_id(spec: MigrationSpec) -> str:
    """``tenant.collection.migrate``: one schedule of each kind per collection."""
    assert spec.schedule is not None
    return f"{spec.tenant}.{spec.collection}.{spec.schedule.migrate}"


def temporal_spec(policy: SchedulePolicy) -> ScheduleSpec:
    """When the schedule fires, as Temporal takes it."""
    calendars = [
        ScheduleCalendarSpec(
            **{
                name: [ScheduleRange(start=a, end=b, step=c) for a, b, c in ranges]
                for name, ranges in cal.ranges().items()
            },
            comment=cal.comment or None,
        )
        for cal in policy.calendar
    ]
    intervals = (
        [ScheduleIntervalSpec(every=timedelta(seconds=policy.every_seconds))]
        if policy.every_seconds
        else []
    )
    return ScheduleSpec(
        calendars=calendars,
        intervals=intervals,
        cron_expressions=list(policy.cron),
        jitter=timedelta(seconds=policy.jitter_seconds) if policy.jitter_seconds else None,
        time_zone_name=policy.timezone,
    )


async def create_schedule(
    client: Client,
    catalog: Catalog,
    spec: MigrationSpec,
    *,
    task_queue: str,
    operator: str,
    schedule_id: str | None = None,
    paused: bool = False,
) -> tuple[str, Firing]:
    """Store the template, create the Temporal Schedule; returns its id and what a firing
    would do now (nothing is started).

    Raises:
        PreconditionError: the spec has no ``schedule`` section, or the id is taken.
    """
    policy = spec.schedule
    if policy is None:
        raise PreconditionError(
            "the spec has no schedule section: add one (migrate, cron or calendar, ...) or run "
            "it once with `vecmigrate start`"
        )
    sid = schedule_id or default_schedule_id(spec)
    digest = ScheduleStore(catalog).store(sid, spec, operator)
    now = plan_firing(catalog, spec, datetime.now(UTC))
    try:
        await client.create_schedule(
            sid,
            Schedule(
                action=ScheduleActionStartWorkflow(
                    ScheduledMigrationWorkflow.run,
                    FiringInput(schedule_id=sid, spec_hash=digest, requested_by=operator),
                    id=sid,
                    task_queue=task_queue,
                    memo={"schedule_id": sid, "spec_hash": digest},
                    static_summary=f"{spec.tenant}/{spec.collection}: {policy.migrate}",
                ),
                spec=temporal_spec(policy),
                policy=TemporalSchedulePolicy(
                    overlap=OVERLAP[policy.overlap],
                    catchup_window=timedelta(seconds=policy.catchup_window_seconds),
                    pause_on_failure=policy.pause_on_failure,
                ),
                state=ScheduleState(
                    paused=paused,
                    note=f"vecmigrate: {policy.migrate} {spec.tenant}/{spec.collection}, "
                    f"spec {digest[:12]}, by {operator}",
                ),
            ),
        )
    except Exception as exc:
        if "already" in str(exc).lower():
            raise PreconditionError(
                f"schedule {sid} already exists; delete it first or give --id another name"
            ) from None
        raise
    return sid, now


@dataclass
class FiringView:
    """One firing of a schedule as ``describe`` lists it."""

    workflow_id: str
    fired_at: str
    status: str
    outcome: str = ""
    reason: str = ""
    migration_id: str | None = None
    phase: str | None = None


@dataclass
class ScheduleView:
    """A schedule as ``describe`` shows it."""

    schedule_id: str
    paused: bool
    note: str
    calendar: list[str]
    timezone: str
    overlap: str
    catchup_window_seconds: float | None
    jitter_seconds: float | None
    next_runs: list[str]
    spec_hash: str | None
    actions: int
    skipped_overlap: int
    running: list[str]
    firings: list[FiringView] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["firings"] = [f.__dict__ for f in self.firings]
        return data


async def describe_schedule(client: Client, schedule_id: str) -> ScheduleView:
    """The schedule's calendar, state and next runs, and its recent firings with the migration
    each started (or why it started none).

    Raises:
        NotFoundError: no such schedule.
    """
    desc = await _describe(client, schedule_id)
    sched = desc.schedule
    spec = sched.spec
    action = sched.action
    digest = None
    if isinstance(action, ScheduleActionStartWorkflow) and action.args:
        first: Any = action.args[0]
        if isinstance(first, Payload):  # a described action's arguments come undecoded
            (first,) = await client.data_converter.decode([first])
        digest = first.get("spec_hash") if isinstance(first, dict) else None
    calendar = [f"cron {c}" for c in spec.cron_expressions]
    calendar += [f"every {i.every}" for i in spec.intervals]
    calendar += [_calendar_text(c) for c in spec.calendars]
    info = desc.info
    view = ScheduleView(
        schedule_id=schedule_id,
        paused=sched.state.paused,
        note=sched.state.note or "",
        calendar=calendar,
        timezone=spec.time_zone_name or "UTC",
        overlap=sched.policy.overlap.name.lower(),
        catchup_window_seconds=(
            sched.policy.catchup_window.total_seconds() if sched.policy.catchup_window else None
        ),
        jitter_seconds=spec.jitter.total_seconds() if spec.jitter else None,
        next_runs=[t.isoformat() for t in info.next_action_times[:5]],
        spec_hash=digest,
        actions=info.num_actions,
        skipped_overlap=info.num_actions_skipped_overlap,
        running=[str(getattr(a, "workflow_id", "")) for a in info.running_actions],
    )
    for recent in info.recent_actions:
        started = getattr(recent.action, "workflow_id", None)
        if started is not None:
            view.firings.append(await firing_view(client, started, recent.scheduled_at.isoformat()))
    return view


async def firing_view(client: Client, workflow_id: str, fired_at: str = "") -> FiringView:
    """What one firing workflow did, from its memo while it runs and its result once ended."""
    handle = client.get_workflow_handle_for(ScheduledMigrationWorkflow.run, workflow_id)
    desc = await handle.describe()
    status = desc.status.name.lower() if desc.status else "unknown"
    view = FiringView(workflow_id=workflow_id, fired_at=fired_at, status=status)
    view.migration_id = await desc.memo_value("migration_id", None)
    if desc.status == WorkflowExecutionStatus.COMPLETED:
        result: FiringResult = await handle.result()
        view.outcome, view.reason = result.outcome, result.reason
        view.migration_id, view.phase = result.migration_id, result.phase
    elif desc.status == WorkflowExecutionStatus.RUNNING:
        view.outcome = "running" if view.migration_id else "resolving"
    return view


async def list_schedules(client: Client) -> list[ScheduleView]:
    """Every schedule whose action fires vecmigrate migrations."""
    views = []
    async for entry in await client.list_schedules():
        action = entry.schedule.action if entry.schedule else None
        if getattr(action, "workflow", None) != FIRING_WORKFLOW:
            continue
        views.append(await describe_schedule(client, entry.id))
    return views


async def pause_schedule(client: Client, schedule_id: str, note: str) -> None:
    """Stop firing until unpaused (a running firing goes on)."""
    await (await _handle(client, schedule_id)).pause(note=note or "paused with vecmigrate")


async def unpause_schedule(client: Client, schedule_id: str, note: str) -> None:
    """Fire again on the calendar."""
    await (await _handle(client, schedule_id)).unpause(note=note or "unpaused with vecmigrate")


async def trigger_schedule(client: Client, schedule_id: str, overlap: str | None = None) -> None:
    """Fire now, under the schedule's overlap policy unless ``overlap`` names another."""
    handle = await _handle(client, schedule_id)
    await handle.trigger(overlap=OVERLAP[overlap] if overlap else None)


async def delete_schedule(client: Client, catalog: Catalog, schedule_id: str) -> None:
    """Delete the Temporal Schedule (a running firing and its migration go on) and mark its
    template deleted in the catalog (no longer protected from ``gc``)."""
    await (await _handle(client, schedule_id)).delete()
    ScheduleStore(catalog).delete(schedule_id)


async def _handle(client: Client, schedule_id: str) -> Any:
    await _describe(client, schedule_id)
    return client.get_schedule_handle(schedule_id)


async def _describe(client: Client, schedule_id: str) -> ScheduleDescription:
    try:
        return await client.get_schedule_handle(schedule_id).describe()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            raise NotFoundError(
                f"no schedule {schedule_id!r}; `vecmigrate schedule list` shows them"
            ) from None
        raise


def _calendar_text(cal: ScheduleCalendarSpec) -> str:
    def part(ranges: Any) -> str:
        out = []
        for r in ranges:
            end = max(r.end, r.start)
            text = str(r.start) if end == r.start else f"{r.start}-{end}"
            out.append(text + (f"/{r.step}" if r.step > 1 else ""))
        return ",".join(out) or "*"

    return (
        f"calendar {part(cal.hour)}:{part(cal.minute)}:{part(cal.second)} day "
        f"{part(cal.day_of_month)} month {part(cal.month)} weekday {part(cal.day_of_week)}"
    )
