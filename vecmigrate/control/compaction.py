"""Start compactions (the change log folded into an index's artifacts), once or on a schedule.

Routers apply writes to the indexes they serve, so search latency does not depend on
compactions; a compaction bounds what a router applies when it loads an index, and folds in
what an index cannot take in place (FAISS HNSW, records of another model). Run one when the log
behind an index grows (``min_entries``), or schedule one per collection.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleHandle,
    ScheduleIntervalSpec,
    SchedulePolicy,
    ScheduleSpec,
    WorkflowHandle,
)
from temporalio.client import ScheduleOverlapPolicy as Overlap
from temporalio.common import WorkflowIDConflictPolicy

from vecmigrate.model.compaction import CompactionRequest, CompactionResult
from vecmigrate.workers.connection import default_task_queue
from vecmigrate.workflows.compaction import CompactionWorkflow, compaction_id


async def start_compaction(
    client: Client, request: CompactionRequest, task_queue: str | None = None
) -> WorkflowHandle[CompactionWorkflow, CompactionResult]:
    """Start a compaction of a collection; one already running is returned as is."""
    return await client.start_workflow(
        CompactionWorkflow.run,
        request,
        id=compaction_id(request.tenant, request.collection),
        task_queue=task_queue or default_task_queue(),
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        static_summary=f"compact {request.tenant}/{request.collection}",
    )


async def schedule_compaction(
    client: Client,
    request: CompactionRequest,
    every: timedelta,
    task_queue: str | None = None,
) -> ScheduleHandle:
    """Compact a collection every ``every`` (set ``request.min_entries`` so that a run with
    little to fold does nothing); a run still going when the next is due makes it skip.

    The schedule's id is the compaction's workflow id; creating it again raises
    ``ScheduleAlreadyRunningError``.
    """
    wid = compaction_id(request.tenant, request.collection)
    return await client.create_schedule(
        wid,
        Schedule(
            action=ScheduleActionStartWorkflow(
                CompactionWorkflow.run,
                request,
                id=wid,
                task_queue=task_queue or default_task_queue(),
            ),
            spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=every)]),
            policy=SchedulePolicy(overlap=Overlap.SKIP),
        ),
    )
