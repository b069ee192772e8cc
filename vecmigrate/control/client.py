"""The programmatic client deploy tooling uses to start and steer migrations."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from temporalio.api.workflow.v1 import PendingActivityInfo
from temporalio.client import (
    Client,
    WorkflowExecutionDescription,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowUpdateFailedError,
)
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from vecmigrate.config import resolve_spec
from vecmigrate.control.schedules import FIRING_WORKFLOW, firing_view
from vecmigrate.errors import (
    MessageRefusedError,
    NotFoundError,
    PreconditionError,
    SpecMismatchError,
    VecmigrateError,
)
from vecmigrate.model.lifecycle import OUTCOME_ERRORS, SIGNALS, Message, Phase
from vecmigrate.model.messages import GateRequest, OperatorMessage, RampRequest, ThrottleRequest
from vecmigrate.model.regions import RegionalStatus
from vecmigrate.model.search import memo, search_values
from vecmigrate.model.spec import MigrationSpec
from vecmigrate.model.status import (
    IndexBuildProgress,
    MigrationInput,
    MigrationStatus,
    RetryingStep,
)
from vecmigrate.workers.connection import default_task_queue
from vecmigrate.workflows.migration import MigrationWorkflow
from vecmigrate.workflows.regional import RegionalMigrationWorkflow
from vecmigrate.workflows.search import typed

S = TypeVar("S", MigrationStatus, RegionalStatus)


def ended_status(err: WorkflowFailureError, kind: type[S]) -> S | None:
    """The final status a migration that rolled back or was aborted failed its execution with
    (``None`` for any other failure)."""
    cause = err.cause
    if isinstance(cause, ApplicationError) and cause.type in OUTCOME_ERRORS and cause.details:
        return kind.model_validate(cause.details[0])
    return None


def retrying(desc: WorkflowExecutionDescription) -> list[RetryingStep]:
    """The activities Temporal is retrying, from an execution's pending activities."""
    steps = []
    for pending in desc.raw_description.pending_activities:
        if pending.attempt <= 1 or not pending.HasField("last_failure"):
            continue
        steps.append(_retrying(pending))
    return steps


def _retrying(pending: PendingActivityInfo) -> RetryingStep:
    failure = pending.last_failure
    next_retry = ""
    if pending.HasField("next_attempt_schedule_time"):
        next_retry = pending.next_attempt_schedule_time.ToDatetime(UTC).isoformat()
    return RetryingStep(
        activity=pending.activity_type.name,
        attempt=pending.attempt,
        maximum_attempts=pending.maximum_attempts,
        last_error=failure.message,
        error_type=failure.application_failure_info.type,
        next_retry=next_retry,
    )


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
        if spec.schedule is not None:
            raise PreconditionError(
                "this spec is a schedule's template (it has a schedule section): create the "
                "schedule with `vecmigrate schedule create`, or leave the section out to run "
                "it once"
            )
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
        digest = spec.spec_hash()
        try:
            handle = await self.client.start_workflow(
                run,
                MigrationInput(spec=spec, requested_by=operator),
                id=spec.migration_id,
                task_queue=self.task_queue,
                id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                static_summary=summary,
                search_attributes=typed(search_values(spec, Phase.PLANNED)),
                memo={**memo(spec, operator), "spec_hash": digest},
            )
        except RPCError as exc:
            if exc.status == RPCStatusCode.INVALID_ARGUMENT and "search attribute" in exc.message:
                raise VecmigrateError(
                    f"{' '.join(exc.message.split())}: the namespace lacks vecmigrate's search "
                    "attributes, so the migration was not started; `vecmigrate doctor` names "
                    "each missing one and the command that registers it"
                ) from None
            raise
        found = await (await handle.describe()).memo_value("spec_hash", None)
        if found is not None and found != digest:
            raise SpecMismatchError(
                f"migration {spec.migration_id} is already running spec {str(found)[:12]}; "
                f"this spec is {digest[:12]}: a running migration's spec cannot change. Give "
                "this one another id, or roll the running one back first"
            )
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

    async def migration_of(self, workflow_id: str) -> str:
        """The migration id behind ``workflow_id``: itself, or the migration a schedule's
        firing started (Temporal names a firing after its schedule and the firing time).

        Raises:
            NotFoundError: the firing started no migration (nothing to do, refused, or still
                resolving); the message says why.
        """
        desc = await self.client.get_workflow_handle(workflow_id).describe()
        if desc.workflow_type != FIRING_WORKFLOW:
            return workflow_id
        view = await firing_view(self.client, workflow_id)
        if view.migration_id and view.outcome in ("started", "running", ""):
            return view.migration_id
        raise NotFoundError(
            f"{workflow_id} is a firing of a schedule that started no migration"
            + (f" ({view.outcome}: {view.reason})" if view.outcome else f" ({view.status})")
        )

    def handle(self, migration_id: str) -> WorkflowHandle[MigrationWorkflow, MigrationStatus]:
        """The workflow handle of a migration."""
        return self.client.get_workflow_handle_for(MigrationWorkflow.run, migration_id)

    async def status(self, migration_id: str, live: bool = False) -> MigrationStatus:
        """The ``status`` query while the migration runs; its final status once it has ended.

        A query of a closed workflow needs a worker to replay it; the final status is in the
        history itself (the result, or the details of the typed failure of a migration that
        rolled back or was aborted), so an ended migration is readable with no worker running.
        While it runs, the steps Temporal is retrying are added from the execution's pending
        activities (the workflow hears of a step only when it succeeds or gives up). With
        ``live``, the counts of shards being copied come from their latest heartbeats (the
        workflow learns a shard's count when its copy finishes), and rate and ETA with them.
        """
        migration_id = await self.migration_of(migration_id)
        handle = self.handle(migration_id)
        desc = await handle.describe()
        if desc.status is not None and desc.status != WorkflowExecutionStatus.RUNNING:
            try:
                return await self.result(migration_id)
            except WorkflowFailureError:
                pass  # failed otherwise, or terminated: only a replay can tell where it stood
        st = await handle.query(MigrationWorkflow.status)
        st.caught_up(datetime.now(UTC))
        beats = await self._heartbeats(desc)
        st.index_build = await self._index_build(desc)
        st.retrying = retrying(desc)
        for step in st.retrying:
            shard = next((s for (a, s) in beats if a == step.activity), None)
            step.shard = shard
        if live and st.phase == "BACKFILLING" and st.copy_seconds is None:
            for shard_progress in st.shards:
                beat = beats.get(("copy_shard", shard_progress.shard))
                if shard_progress.state in ("copying", "paused") and beat is not None:
                    shard_progress.copied = max(shard_progress.copied, int(beat["copied"]))
        st.estimate()
        return st

    async def status_if_started(self, migration_id: str) -> MigrationStatus | None:
        """:meth:`status`, or None while Temporal knows no such workflow yet (just started)."""
        try:
            return await self.status(migration_id)
        except RPCError as exc:
            if exc.status != RPCStatusCode.NOT_FOUND:
                raise
            return None

    async def signal(
        self,
        migration_id: str,
        name: str,
        operator: str = "unknown",
        reason: str = "",
        region: str | None = None,
        *,
        preapprove: bool = False,
        revalidate: bool = False,
    ) -> None:
        """Send one of ``pause``, ``resume``, ``approve_cutover``, ``rollback``, ``abort``.

        ``region`` (a regional migration's ``rollback`` only) rolls back that region alone;
        ``preapprove`` holds an ``approve_cutover`` sent before the gates passed;
        ``revalidate`` makes a ``resume`` after a failed gate measure again. A signal that
        means nothing where the migration stands is recorded and ignored: ``status`` says why.
        """
        if name not in SIGNALS:
            raise ValueError(f"unknown signal {name!r}; use one of {', '.join(SIGNALS)}")
        if region is not None and name != Message.ROLLBACK:
            raise ValueError("only rollback can name a region")
        message = OperatorMessage(
            operator=operator,
            reason=reason,
            region=region,
            preapprove=preapprove,
            revalidate=revalidate,
        )
        target = await self.migration_of(migration_id)
        await self.client.get_workflow_handle(target).signal(name, message)

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
            except WorkflowFailureError as err:
                ended = ended_status(err, RegionalStatus)
                if ended is not None:
                    return ended
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
            MessageRefusedError: the workflow refused it (nothing is being copied, or the
                migration has ended); nothing changed.
        """
        request = ThrottleRequest(
            max_vectors_per_second=max_vectors_per_second, operator=operator, reason=reason
        )
        problem = request.problem()
        if problem is not None:
            raise ValueError(problem)
        result = await self._update(migration_id, Message.SET_THROTTLE, request)
        return None if result is None else float(result)

    async def set_ramp(
        self, migration_id: str, percent: float, operator: str = "unknown", reason: str = ""
    ) -> float:
        """Set the share of reads an online migration's new version serves now.

        Raises:
            MessageRefusedError: not an online migration in SHADOWING, RAMPING or
                AWAITING_CUTOVER, or not a share below 100; nothing changed.
        """
        request = RampRequest(percent=percent, operator=operator, reason=reason)
        return float(await self._update(migration_id, Message.SET_RAMP, request))

    async def set_gate(
        self,
        migration_id: str,
        gate: str,
        *,
        threshold: float | None = None,
        override: bool = False,
        operator: str = "unknown",
        reason: str = "",
    ) -> list[str]:
        """Change a failed gate's threshold, or override it with a reason; returns the gates
        still failing (none: ``resume`` goes on).

        Raises:
            MessageRefusedError: no gate has failed, no such gate, or not exactly one of a
                threshold and an override (an override needs a reason); nothing changed.
        """
        request = GateRequest(
            gate=gate, threshold=threshold, override=override, operator=operator, reason=reason
        )
        problem = request.problem()
        if problem is not None:
            raise MessageRefusedError(f"set_gate refused: {problem}")
        failing = await self._update(migration_id, Message.SET_GATE, request)
        return [str(f) for f in failing]

    async def _update(self, migration_id: str, name: Message, request: Any) -> Any:
        try:
            return await self.handle(migration_id).execute_update(str(name), request)
        except WorkflowUpdateFailedError as exc:
            cause = exc.cause
            message = cause.message if isinstance(cause, ApplicationError) else str(cause)
            raise MessageRefusedError(message) from None

    async def live_progress(self, migration_id: str) -> dict[tuple[str, int], dict[str, Any]]:
        """Heartbeats of the activities in flight, keyed by (activity, shard).

        The workflow learns a shard's count when its copy finishes; the heartbeats show it
        batch by batch.
        """
        return await self._heartbeats(await self.handle(migration_id).describe())

    async def _heartbeats(
        self, desc: WorkflowExecutionDescription
    ) -> dict[tuple[str, int], dict[str, Any]]:
        live: dict[tuple[str, int], dict[str, Any]] = {}
        for pending in desc.raw_description.pending_activities:
            if not pending.heartbeat_details.payloads:
                continue
            decoded = await self.client.data_converter.decode(pending.heartbeat_details.payloads)
            if decoded and isinstance(decoded[0], dict) and "shard" in decoded[0]:
                live[(pending.activity_type.name, int(decoded[0]["shard"]))] = decoded[0]
        return live

    async def _index_build(self, desc: WorkflowExecutionDescription) -> IndexBuildProgress | None:
        """The progress of a native index build in flight, from its activity's heartbeat."""
        for pending in desc.raw_description.pending_activities:
            if pending.activity_type.name != "build_native_index":
                continue
            if not pending.heartbeat_details.payloads:
                continue
            decoded = await self.client.data_converter.decode(pending.heartbeat_details.payloads)
            if decoded and isinstance(decoded[0], dict) and "index_build" in decoded[0]:
                return IndexBuildProgress.model_validate(decoded[0]["index_build"])
        return None

    async def result(self, migration_id: str, timeout: float | None = None) -> MigrationStatus:
        """Wait for the migration to end and return its final status, whatever the outcome
        (``phase`` says it: COMPLETED, ROLLED_BACK or ABORTED).

        Raises:
            temporalio.client.WorkflowFailureError: the execution failed otherwise (a bug, or
                terminated by hand).
        """
        handle = self.handle(migration_id)
        rpc_timeout = None if timeout is None else timedelta(seconds=timeout)
        try:
            return await handle.result(rpc_timeout=rpc_timeout)
        except WorkflowFailureError as err:
            ended = ended_status(err, MigrationStatus)
            if ended is None:
                raise
            return ended
