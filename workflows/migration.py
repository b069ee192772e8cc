"""The migration workflow: one execution is one migration, from PLANNED to a terminal phase.

Deterministic: it imports only temporalio, the standard library and vecmigrate's pure models.
Data never flows through it; activities get ids, shard ranges and URIs and return counts and
checksums.

Operators steer it by signal (``pause``, ``resume``, ``approve_cutover``, ``rollback``,
``abort``), each carrying who sent it and why, and read it with the ``status`` query.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from vecmigrate.errors import NON_RETRYABLE_NAMES
    from vecmigrate.lifecycle import (
        SERVING_TARGET,
        GateReport,
        MigrationInput,
        MigrationStatus,
        OperatorAction,
        OperatorMessage,
        Phase,
        RoutingView,
        ShardCheck,
        ShardProgress,
        check_transition,
    )
    from vecmigrate.spec import is_native
    from vecmigrate.tasks import (
        ArtifactRef,
        BuildIndexInput,
        BuildNativeIndexInput,
        CopyShardInput,
        CopyShardResult,
        IndexRegistered,
        LedgerAck,
        LedgerInput,
        PrepareInput,
        PrepareResult,
        RegisterIndexInput,
        RoutingChangeInput,
        ShardRef,
        ValidateInput,
        ValidateResult,
        ValidateShardInput,
        VersionStateInput,
    )

T = TypeVar("T")


RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=10,
    non_retryable_error_types=list(NON_RETRYABLE_NAMES),
)

# Short bookkeeping calls (ledger, routing, version state) against the catalog.
SHORT_TIMEOUT = timedelta(seconds=60)


class _InterruptedError(Exception):
    """An operator asked to roll back or abort while a step was running."""


@workflow.defn(name="MigrationWorkflow")
class MigrationWorkflow:
    """Lifecycle of one migration (strategy ``blue_green`` in this release)."""

    @workflow.init
    def __init__(self, inp: MigrationInput) -> None:
        spec = inp.spec
        self._spec = spec
        self._status = MigrationStatus(
            migration_id=spec.migration_id,
            tenant=spec.tenant,
            collection=spec.collection,
            strategy=spec.strategy,
            source_version=spec.source.name,
            target_version=spec.target.name,
        )
        self._interrupt: tuple[str, OperatorMessage] | None = None
        self._events = 0
        self._phase_began = workflow.now()
        self._lock = asyncio.Lock()
        self._source_index: str | None = None
        self._target_registered = False

    # -- messages ------------------------------------------------------------------------------

    @workflow.query(name="status")
    def status(self) -> MigrationStatus:
        """Phase, pause flag, per-shard progress, gates, routing and operator actions."""
        current = self._status.model_copy(deep=True)
        if current.phase not in (Phase.COMPLETED, Phase.ROLLED_BACK, Phase.ABORTED):
            elapsed = (workflow.now() - self._phase_began).total_seconds()
            current.phase_seconds[current.phase] = round(
                current.phase_seconds.get(current.phase, 0.0) + elapsed, 3
            )
        return current

    @workflow.signal(name="pause")
    async def pause(self, msg: OperatorMessage | None = None) -> None:
        """Stop starting new work after the steps in flight finish."""
        msg = msg or OperatorMessage()
        self._status.paused = True
        self._status.pause_reason = f"paused by {msg.operator}" + (
            f": {msg.reason}" if msg.reason else ""
        )
        await self._operator("pause", msg)

    @workflow.signal(name="resume")
    async def resume(self, msg: OperatorMessage | None = None) -> None:
        """Continue after a pause (a failed step or gate is tried again)."""
        msg = msg or OperatorMessage()
        self._status.paused = False
        self._status.pause_reason = ""
        await self._operator("resume", msg)

    @workflow.signal(name="approve_cutover")
    async def approve_cutover(self, msg: OperatorMessage | None = None) -> None:
        """Allow the switch of reads to the target once its gates pass."""
        msg = msg or OperatorMessage()
        self._status.cutover_approved = True
        await self._operator("approve_cutover", msg)

    @workflow.signal(name="rollback")
    async def rollback(self, msg: OperatorMessage | None = None) -> None:
        """Return reads to the source version and abandon the target."""
        msg = msg or OperatorMessage()
        if self._interrupt is None:
            self._interrupt = ("rollback", msg)
        await self._operator("rollback", msg)

    @workflow.signal(name="abort")
    async def abort(self, msg: OperatorMessage | None = None) -> None:
        """Stop where the migration stands; routing is left as it is."""
        msg = msg or OperatorMessage()
        if self._interrupt is None:
            self._interrupt = ("abort", msg)
        await self._operator("abort", msg)

    async def _operator(self, action: str, msg: OperatorMessage) -> None:
        self._status.operators.append(
            OperatorAction(
                at=workflow.now().isoformat(),
                operator=msg.operator,
                action=action,
                reason=msg.reason,
            )
        )
        await self._record(
            "operator",
            msg.operator,
            {"action": action, "reason": msg.reason, "phase": self._status.phase},
        )

    # -- helpers -------------------------------------------------------------------------------

    async def _record(self, kind: str, actor: str, data: dict[str, Any]) -> None:
        self._events += 1
        key = f"{self._status.migration_id}/{workflow.info().first_execution_run_id}/{self._events}"
        ack: LedgerAck = await workflow.execute_activity(
            "record",
            LedgerInput(
                migration_id=self._status.migration_id,
                tenant=self._spec.tenant,
                collection=self._spec.collection,
                event_key=key,
                kind=kind,
                actor=actor,
                data=data,
            ),
            result_type=LedgerAck,
            start_to_close_timeout=SHORT_TIMEOUT,
            retry_policy=RETRY,
        )
        self._status.ledger_entries += 1
        if ack.seq > self._status.ledger_seq:
            self._status.ledger_seq, self._status.ledger_head = ack.seq, ack.hash

    async def _enter(self, phase: Phase, actor: str = "vecmigrate") -> None:
        async with self._lock:
            old = self._status.phase
            check_transition(self._spec.strategy, old, phase)
            now = workflow.now()
            spent = (now - self._phase_began).total_seconds()
            self._status.phase_seconds[old] = round(
                self._status.phase_seconds.get(old, 0.0) + spent, 3
            )
            self._phase_began = now
            self._status.phase = phase
            self._status.phase_started_at = now.isoformat()
        await self._record("phase", actor, {"from": old, "to": phase})

    async def _guarded(self, make: Callable[[], Awaitable[T]]) -> T:
        """Run a step; cancel it and raise `_InterruptedError` on a rollback or abort."""
        if self._interrupt is not None:
            raise _InterruptedError()
        task = asyncio.ensure_future(make())
        stop = asyncio.ensure_future(workflow.wait_condition(lambda: self._interrupt is not None))
        await workflow.wait([task, stop], return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            stop.cancel()
            return task.result()
        task.cancel()
        raise _InterruptedError()

    async def _wait_unpaused(self) -> None:
        await workflow.wait_condition(
            lambda: not self._status.paused or self._interrupt is not None
        )
        if self._interrupt is not None:
            raise _InterruptedError()

    async def _step(self, name: str, make: Callable[[], Awaitable[T]]) -> T:
        """Run a step until it succeeds; a failure pauses for an operator, who may resume it."""
        while True:
            await self._wait_unpaused()
            try:
                result = await self._guarded(make)
            except ActivityError as err:
                cause = err.cause
                kind = cause.type if isinstance(cause, ApplicationError) else type(cause).__name__
                message = cause.message if isinstance(cause, ApplicationError) else str(cause)
                self._status.error = f"{name} failed ({kind}): {message}"
                self._status.paused = True
                self._status.pause_reason = f"{name} failed: {message}; resume to retry"
                await self._record(
                    "step.failed", "vecmigrate", {"step": name, "error": message, "type": kind}
                )
                continue
            self._status.error = ""
            return result

    # -- the lifecycle -------------------------------------------------------------------------

    @workflow.run
    async def run(self, inp: MigrationInput) -> MigrationStatus:
        spec = self._spec
        src, dst = spec.source.embedding, spec.target.embedding
        await self._record(
            "migration.started",
            inp.requested_by,
            {
                "spec": spec.model_dump(mode="json"),
                "spec_hash": spec.spec_hash(),
                "source": spec.source.name,
                "target": spec.target.name,
                "source_model": f"{src.model_id}@{src.model_version}",
                "target_model": f"{dst.model_id}@{dst.model_version}",
                "target_index": spec.target.index.model_dump(mode="json"),
            },
        )
        try:
            await self._lifecycle(inp)
        except _InterruptedError:
            assert self._interrupt is not None
            action, msg = self._interrupt
            if action == "rollback":
                await self._roll_back(msg)
            else:
                await self._abort(msg)
        await workflow.wait_condition(workflow.all_handlers_finished)
        return self.status()

    async def _lifecycle(self, inp: MigrationInput) -> None:
        spec = self._spec
        mid = spec.migration_id

        await self._enter(Phase.PREPARING)
        prep: PrepareResult = await self._step(
            "prepare",
            lambda: workflow.execute_activity(
                "prepare",
                PrepareInput(migration_id=mid, spec=spec, operator=inp.requested_by),
                result_type=PrepareResult,
                start_to_close_timeout=timedelta(minutes=10),
                retry_policy=RETRY,
            ),
        )
        self._status.routing = prep.routing
        self._source_index = prep.source_index
        self._target_registered = True
        self._status.shards = [
            ShardProgress(shard=s.index, total=prep.source_counts.get(s.index, 0))
            for s in prep.shards
        ]
        shards = prep.shards

        await self._enter(Phase.BACKFILLING)
        await self._for_each_shard(shards, self._copy)

        await self._enter(Phase.BUILDING_INDEX)
        built: list[ArtifactRef]
        if is_native(spec.target.index):
            # The target database builds its own index over the whole version, once.
            native: ArtifactRef = await self._step(
                "build native index",
                lambda: workflow.execute_activity(
                    "build_native_index",
                    BuildNativeIndexInput(migration_id=mid, spec=spec),
                    result_type=ArtifactRef,
                    start_to_close_timeout=timedelta(hours=24),
                    retry_policy=RETRY,
                ),
            )
            for progress in self._status.shards:
                progress.state = "indexed"
            await self._record("index.native", "vecmigrate", native.model_dump(mode="json"))
            built = [native]
        else:
            artifacts: dict[int, ArtifactRef] = {}

            async def build_one(shard: ShardRef) -> None:
                artifacts[shard.index] = await self._build(shard)

            await self._for_each_shard(shards, build_one)
            built = [artifacts[s.index] for s in shards]
        registered: IndexRegistered = await self._step(
            "register_index",
            lambda: workflow.execute_activity(
                "register_index",
                RegisterIndexInput(migration_id=mid, spec=spec, artifacts=built),
                result_type=IndexRegistered,
                start_to_close_timeout=SHORT_TIMEOUT,
                retry_policy=RETRY,
            ),
        )
        index_id = registered.index_id
        self._status.index_version = index_id
        await self._record("index.registered", "vecmigrate", registered.model_dump(mode="json"))

        await self._enter(Phase.VALIDATING)
        while True:
            report = await self._validate(shards, prep.source_index, index_id)
            self._status.gates = report
            await self._record("gate", "vecmigrate", report.model_dump(mode="json"))
            if report.passed:
                self._status.blocked_reason = ""
                break
            reason = "gate failed: " + "; ".join(report.failures())
            self._status.blocked_reason = reason + "; cut-over is blocked"
            if spec.gates.on_failure == "rollback":
                self._interrupt = (
                    "rollback",
                    OperatorMessage(operator="vecmigrate", reason=reason),
                )
                raise _InterruptedError()
            self._status.paused = True
            self._status.pause_reason = reason + "; resume to validate again, or roll back"
            await self._wait_unpaused()

        if spec.cutover.mode == "manual" and not self._status.cutover_approved:
            self._status.blocked_reason = "waiting for approve_cutover"
        await self._enter(Phase.AWAITING_CUTOVER)
        await self._guarded(
            lambda: workflow.wait_condition(
                lambda: (
                    not self._status.paused
                    and (spec.cutover.mode == "automatic" or self._status.cutover_approved)
                )
            )
        )
        self._status.blocked_reason = ""
        approver = next(
            (a.operator for a in reversed(self._status.operators) if a.action == "approve_cutover"),
            "vecmigrate",
        )

        await self._enter(Phase.CUT_OVER, actor=approver)
        routing = self._status.routing
        assert routing is not None
        self._status.routing = await self._change_routing(
            routing.generation,
            read_version=spec.target.name,
            read_index=index_id,
            write_versions=[spec.target.name, spec.source.name],
            operator=approver,
            reason="cut-over: reads move to the target; the source stays current for rollback",
            key="cutover",
        )
        await self._set_state(spec.target.name, "serving", approver)
        await self._set_state(spec.source.name, "standby", approver)

        await self._enter(Phase.BAKING)
        await self._guarded(lambda: workflow.sleep(timedelta(seconds=spec.cutover.bake_seconds)))
        await self._wait_unpaused()

        await self._enter(Phase.FINALIZING)
        routing = self._status.routing
        self._status.routing = await self._change_routing(
            routing.generation,
            read_version=spec.target.name,
            read_index=index_id,
            write_versions=[spec.target.name],
            operator="vecmigrate",
            reason="finalize: the source is retained but no longer written",
            key="finalize",
        )
        await self._set_state(spec.source.name, "retained", "vecmigrate")
        await self._enter(Phase.COMPLETED)

    async def _validate(
        self, shards: list[ShardRef], source_index: str | None, index_id: str
    ) -> GateReport:
        """Profile every shard (one activity each, so the work resumes shard by shard), then
        measure retrieval and distribution and judge everything against the gates."""
        spec = self._spec
        checks: dict[int, ShardCheck] = {}

        async def check_one(shard: ShardRef) -> None:
            checks[shard.index] = await self._step(
                f"validate shard {shard.index}",
                lambda: workflow.execute_activity(
                    "validate_shard",
                    ValidateShardInput(migration_id=spec.migration_id, spec=spec, shard=shard),
                    result_type=ShardCheck,
                    start_to_close_timeout=timedelta(hours=2),
                    retry_policy=RETRY,
                ),
            )
            self._progress(shard.index).state = "validated"

        await self._for_each_shard(shards, check_one)
        result: ValidateResult = await self._step(
            "validate",
            lambda: workflow.execute_activity(
                "validate",
                ValidateInput(
                    migration_id=spec.migration_id,
                    spec=spec,
                    shards=shards,
                    source_index=source_index,
                    target_index=index_id,
                    checks=[checks[s.index] for s in shards],
                ),
                result_type=ValidateResult,
                start_to_close_timeout=timedelta(seconds=spec.gates.time_budget_seconds * 2),
                retry_policy=RETRY,
            ),
        )
        return result.report

    async def _for_each_shard(
        self, shards: list[ShardRef], work: Callable[[ShardRef], Awaitable[None]]
    ) -> None:
        """Run ``work`` per shard in a sliding window of ``max_parallel_shards``.

        A pause stops new shards from starting; shards in flight finish.
        """
        pending = list(shards)
        running: set[asyncio.Task[None]] = set()
        try:
            while pending or running:
                while pending and len(running) < self._spec.max_parallel_shards:
                    await self._wait_unpaused()
                    shard = pending.pop(0)
                    running.add(asyncio.ensure_future(work(shard)))
                done, _ = await workflow.wait(list(running), return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    running.discard(task)
                    task.result()
        finally:
            for task in running:
                task.cancel()

    def _progress(self, shard: int) -> ShardProgress:
        return next(p for p in self._status.shards if p.shard == shard)

    async def _copy(self, shard: ShardRef) -> None:
        progress = self._progress(shard.index)
        progress.state = "copying"
        result: CopyShardResult = await self._step(
            f"copy shard {shard.index}",
            lambda: workflow.execute_activity(
                "copy_shard",
                CopyShardInput(migration_id=self._spec.migration_id, spec=self._spec, shard=shard),
                result_type=CopyShardResult,
                start_to_close_timeout=timedelta(hours=12),
                heartbeat_timeout=timedelta(seconds=60),
                retry_policy=RETRY,
            ),
        )
        progress.copied = result.copied
        progress.total = max(progress.total, result.total)
        progress.checksum = result.checksum
        progress.seconds = round(result.seconds, 3)
        progress.state = "copied"
        await self._record("shard.copied", "vecmigrate", result.model_dump(mode="json"))

    async def _build(self, shard: ShardRef) -> ArtifactRef:
        progress = self._progress(shard.index)
        progress.state = "indexing"
        ref: ArtifactRef = await self._step(
            f"build index of shard {shard.index}",
            lambda: workflow.execute_activity(
                "build_shard_index",
                BuildIndexInput(migration_id=self._spec.migration_id, spec=self._spec, shard=shard),
                result_type=ArtifactRef,
                start_to_close_timeout=timedelta(hours=12),
                heartbeat_timeout=timedelta(minutes=5),
                retry_policy=RETRY,
            ),
        )
        progress.artifact = ref.uri
        progress.state = "indexed"
        await self._record("shard.indexed", "vecmigrate", ref.model_dump(mode="json"))
        return ref

    async def _change_routing(
        self,
        expected_generation: int,
        *,
        read_version: str | None,
        read_index: str | None,
        write_versions: list[str],
        operator: str,
        reason: str,
        key: str,
    ) -> RoutingView:
        spec = self._spec
        change = RoutingChangeInput(
            migration_id=spec.migration_id,
            tenant=spec.tenant,
            collection=spec.collection,
            expected_generation=expected_generation,
            read_version=read_version,
            read_index=read_index,
            write_versions=write_versions,
            operator=operator,
            reason=reason,
            change_key=f"{spec.migration_id}/{workflow.info().first_execution_run_id}/{key}",
        )
        view: RoutingView = await workflow.execute_activity(
            "change_routing",
            change,
            result_type=RoutingView,
            start_to_close_timeout=SHORT_TIMEOUT,
            retry_policy=RETRY,
        )
        await self._record("routing.changed", operator, {"reason": reason, **view.model_dump()})
        return view

    async def _set_state(self, version: str, state: str, operator: str) -> None:
        spec = self._spec
        await workflow.execute_activity(
            "set_version_state",
            VersionStateInput(
                migration_id=spec.migration_id,
                tenant=spec.tenant,
                collection=spec.collection,
                version=version,
                state=state,
                operator=operator,
            ),
            start_to_close_timeout=SHORT_TIMEOUT,
            retry_policy=RETRY,
        )
        await self._record("version.state", operator, {"version": version, "state": state})

    async def _roll_back(self, msg: OperatorMessage) -> None:
        spec = self._spec
        was = self._status.phase
        await self._enter(Phase.ROLLING_BACK, actor=msg.operator)
        self._status.paused = False
        routing = self._status.routing
        if was in SERVING_TARGET and routing is not None:
            self._status.routing = await self._change_routing(
                routing.generation,
                read_version=spec.source.name,
                read_index=self._source_index,
                write_versions=[spec.source.name],
                operator=msg.operator,
                reason=f"rollback: {msg.reason or 'requested'}",
                key="rollback",
            )
            await self._set_state(spec.source.name, "serving", msg.operator)
        if self._target_registered:
            await self._set_state(spec.target.name, "abandoned", msg.operator)
        await self._enter(Phase.ROLLED_BACK, actor=msg.operator)

    async def _abort(self, msg: OperatorMessage) -> None:
        self._status.paused = False
        await self._enter(Phase.ABORTED, actor=msg.operator)
