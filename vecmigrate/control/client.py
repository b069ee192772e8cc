"""The programmatic client deploy tooling uses to start and steer migrations."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
)
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.service import RPCError, RPCStatusCode

from vecmigrate.config import resolve_spec
from vecmigrate.errors import VecmigrateError
from vecmigrate.model.lifecycle import (
    MigrationInput,
    MigrationStatus,
    OperatorMessage,
    Phase,
    ThrottleRequest,
)
from vecmigrate.model.regions import RegionalStatus, RegionRollback
from vecmigrate.model.search import memo, search_values
from vecmigrate.model.spec import MigrationSpec
from vecmigrate.workers.connection import default_task_queue
from vecmigrate.workflows.migration import MigrationWorkflow
from vecmigrate.workflows.regional import RegionalMigrationWorkflow
from vecmigrate.workflows.search import typed

SIGNALS = ("pause", "resume", "approve_cutover", "rollback", "abort")


class MigrationClient:
    """Start, steer and watch migrations.

    Example:
        client = MigrationClient(await connect())
        mid = await client.start(load_spec("spec.yaml"), operator="deploy-bot")
        await client.signal(mid, "approve_cutover", operator="alice", reason="gates green")
    """

    def __init__(self, client: Client, task_queue: str | None = None) -> None:
        self.client = client
        self.task_queue = task_queue or default_task_queue()

    async def start(self, spec: MigrationSpec, operator: str = "unknown") -> str:
        """Start a migration and return its id; an id already running is returned as is.

        A spec with ``regions`` or ``tenants`` starts the regional workflow, which runs one
        child migration per region and tenant on the regions' task queues.

        Raises:
            VecmigrateError: the namespace lacks vecmigrate's search attributes (nothing started).
        """
        spec = resolve_spec(spec)
        if spec.regional:
            run: Any = RegionalMigrationWorkflow.run
            summary = (
                f"{spec.collection}: {spec.source.name} -> {spec.target.name} in "
                f"{', '.join(r.name for r in spec.regions) or 'one region'} "
                f"({spec.strategy}, tenants {spec.tenants or spec.tenant})"
            )
        else:
            run = MigrationWorkflow.run
            summary = (
                f"{spec.tenant}/{spec.collection}: {spec.source.name} -> {spec.target.name} "
                f"({spec.strategy}, {spec.target.index.kind})"
            )
        try:
            handle = await self.client.start_workflow(
                run,
                MigrationInput(spec=spec, requested_by=operator),
                id=spec.migration_id,
                task_queue=self.task_queue,
                id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                static_summary=summary,
                search_attributes=typed(search_values(spec, Phase.PLANNED)),
                memo=memo(spec, operator),
            )
        except RPCError as exc:
            if exc.status == RPCStatusCode.INVALID_ARGUMENT and "search attribute" in exc.message:
                raise VecmigrateError(
                    f"{' '.join(exc.message.split())}: the namespace lacks vecmigrate's search "
                    "attributes, so the migration was not started; `vecmigrate doctor` names "
                    "each missing one and the command that registers it"
                ) from None
            raise
        return handle.id

    async def has_workers(self) -> bool:
        """Whether any worker polled this client's task queue recently."""
        from temporalio.api.enums.v1 import TaskQueueType
        from temporalio.api.taskqueue.v1 import TaskQueue
        from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest

        response = await self.client.workflow_service.describe_task_queue(
            DescribeTaskQueueRequest(
                namespace=self.client.namespace,
                task_queue=TaskQueue(name=self.task_queue),
                task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
            )
        )
        return len(response.pollers) > 0

    def handle(self, migration_id: str) -> WorkflowHandle[MigrationWorkflow, MigrationStatus]:
        """The workflow handle of a migration."""
        return self.client.get_workflow_handle_for(MigrationWorkflow.run, migration_id)

    async def status(self, migration_id: str, live: bool = False) -> MigrationStatus:
        """The ``status`` query while the migration runs; its final status once it has ended.

        A query of a closed workflow needs a worker to replay it; the final status is in the
        history itself, so an ended migration is readable with no worker running. With
        ``live``, the counts of shards being copied come from their latest heartbeats (the
        workflow learns a shard's count when its copy finishes), and rate and ETA with them.
        """
        if live:
            st = await self.status(migration_id)
            if st.phase == "BACKFILLING" and st.copy_seconds is None:
                beats = await self.live_progress(migration_id)
                for shard in st.shards:
                    beat = beats.get(("copy_shard", shard.shard))
                    if shard.state == "copying" and beat is not None:
                        shard.copied = max(shard.copied, int(beat["copied"]))
                st.estimate()
            return st
        handle = self.handle(migration_id)
        desc = await handle.describe()
        if desc.status is not None and desc.status != WorkflowExecutionStatus.RUNNING:
            try:
                return await handle.result()
            except WorkflowFailureError:
                pass  # failed or terminated: only a replay can tell where it stood
        st = await handle.query(MigrationWorkflow.status)
        st.caught_up(datetime.now(UTC))
        st.estimate()
        return st

    async def signal(
        self,
        migration_id: str,
        name: str,
        operator: str = "unknown",
        reason: str = "",
        region: str | None = None,
    ) -> None:
        """Send one of ``pause``, ``resume``, ``approve_cutover``, ``rollback``, ``abort``.

        ``region`` (a regional migration's ``rollback`` only) rolls back that region alone.
        """
        if name not in SIGNALS:
            raise ValueError(f"unknown signal {name!r}; use one of {', '.join(SIGNALS)}")
        if region is not None:
            if name != "rollback":
                raise ValueError("only rollback can name a region")
            await self.handle(migration_id).signal(
                name, RegionRollback(operator=operator, reason=reason, region=region)
            )
            return
        await self.handle(migration_id).signal(
            name, OperatorMessage(operator=operator, reason=reason)
        )

    async def is_regional(self, migration_id: str) -> bool:
        """Whether ``migration_id`` is a regional migration (the parent of per-region ones)."""
        desc = await self.client.get_workflow_handle(migration_id).describe()
        return desc.workflow_type == "RegionalMigrationWorkflow"

    async def regional_status(self, migration_id: str) -> RegionalStatus:
        """The regional workflow's status: every child's phase and progress, the barrier."""
        handle = self.client.get_workflow_handle_for(RegionalMigrationWorkflow.run, migration_id)
        desc = await handle.describe()
        if desc.status is not None and desc.status != WorkflowExecutionStatus.RUNNING:
            try:
                return await handle.result()
            except WorkflowFailureError:
                pass
        return await handle.query(RegionalMigrationWorkflow.status)

    async def set_throttle(
        self,
        migration_id: str,
        max_vectors_per_second: float | None,
        operator: str = "unknown",
        reason: str = "",
    ) -> float | None:
        """Change the copy throttle of a running migration (``None`` lifts it).

        Raises:
            ValueError: not a positive finite rate (checked here too: JSON has no NaN, so a NaN
                would arrive as null and lift the throttle).
            temporalio.client.WorkflowUpdateFailedError: the workflow's validator refused it
                (not a positive finite rate, or the migration has ended); nothing changed.
        """
        request = ThrottleRequest(
            max_vectors_per_second=max_vectors_per_second, operator=operator, reason=reason
        )
        problem = request.problem()
        if problem is not None:
            raise ValueError(problem)
        result = await self.handle(migration_id).execute_update("set_throttle", request)
        return None if result is None else float(result)

    async def live_progress(self, migration_id: str) -> dict[tuple[str, int], dict[str, Any]]:
        """Heartbeats of the activities in flight, keyed by (activity, shard).

        The workflow learns a shard's count when its copy finishes; the heartbeats show it
        batch by batch.
        """
        desc = await self.handle(migration_id).describe()
        live: dict[tuple[str, int], dict[str, Any]] = {}
        for pending in desc.raw_description.pending_activities:
            if not pending.heartbeat_details.payloads:
                continue
            decoded = await self.client.data_converter.decode(pending.heartbeat_details.payloads)
            if decoded and isinstance(decoded[0], dict) and "shard" in decoded[0]:
                live[(pending.activity_type.name, int(decoded[0]["shard"]))] = decoded[0]
        return live

    async def result(self, migration_id: str, timeout: float | None = None) -> MigrationStatus:
        """Wait for the migration to end and return its final status."""
        handle = self.handle(migration_id)
        if timeout is None:
            return await handle.result()
        return await handle.result(rpc_timeout=timedelta(seconds=timeout))
