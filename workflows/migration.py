"""The migration workflow: one execution is one migration, from PLANNED to a terminal phase.

Deterministic: it imports only temporalio, the standard library and vecmigrate's pure models.
Data never flows through it; activities get ids, shard ranges and URIs and return counts and
checksums.

Operators steer it by signal (``pause``, ``resume``, ``approve_cutover``, ``rollback``,
``abort``), each carrying who sent it and why, and read it with the ``status`` query.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

from vecmigrate.workflows.common import (
    RETRY,
    append_ledger,
    event_key,
    operator_action,
    operator_data,
    short_call,
)

with workflow.unsafe.imports_passed_through():
    from vecmigrate.model.lifecycle import (
        READING_TARGET,
        STRATEGY_PHASES,
        TERMINAL,
        Carried,
        GateReport,
        Interrupt,
        MigrationInput,
        MigrationStatus,
        OperatorMessage,
        Phase,
        RampRequest,
        RoutingView,
        ShardCheck,
        ShardProgress,
        ThrottleRequest,
        check_transition,
        selected_hash_shards,
    )
    from vecmigrate.model.regions import RegionUpdate
    from vecmigrate.model.spec import is_native
    from vecmigrate.model.tasks import (
        ArtifactRef,
        BuildIndexInput,
        BuildNativeIndexInput,
        CatchUpInput,
        CatchUpResult,
        ControlInput,
        CopyShardInput,
        CopyShardResult,
        IndexRegistered,
        LedgerAck,
        LedgerInput,
        LogHeadInput,
        PrepareInput,
        PrepareResult,
        RegisterIndexInput,
        RoutingChangeInput,
        ShadowInput,
        ShadowResult,
        ShardRef,
        ValidateInput,
        ValidateResult,
        ValidateShardInput,
        VersionStateInput,
    )

T = TypeVar("T")


# Continue as new before the history reaches this many events, less what draining the shard
# window may add (about a dozen events a shard).
HISTORY_LIMIT = 2_000

# The shadow latency gate compares p99s against at least this many milliseconds.
LATENCY_FLOOR_MS = 1.0
EVENTS_PER_SHARD_IN_FLIGHT = 12


class _InterruptedError(Exception):
    """An operator asked to roll back or abort while a step was running."""


class _ContinueAsNewError(Exception):
    """The history is long: carry the state into a new run at a point with nothing in flight."""


@workflow.defn(name="MigrationWorkflow")
class MigrationWorkflow:
    """Lifecycle of one migration (strategy ``blue_green`` in this release)."""

    @workflow.init
    def __init__(self, inp: MigrationInput) -> None:
        spec = inp.spec
        self._spec = spec
        self._lock = asyncio.Lock()
        self._control_lock = asyncio.Lock()
        self._routing_lock = asyncio.Lock()
        carried = inp.carried
        if carried is None:
            self._status = MigrationStatus(
                migration_id=spec.migration_id,
                tenant=spec.tenant,
                collection=spec.collection,
                strategy=spec.strategy,
                source_version=spec.source.name,
                target_version=spec.target.name,
                max_vectors_per_second=spec.max_vectors_per_second,
            )
            self._interrupt: Interrupt | None = None
            self._events = 0
            self._phase_began = workflow.now()
            self._source_index: str | None = None
            self._target_registered = False
            self._shards: list[ShardRef] = []
        else:
            self._status = carried.status
            self._status.runs += 1
            self._interrupt = carried.interrupt
            self._events = carried.events
            self._phase_began = (
                datetime.fromisoformat(self._status.phase_started_at)
                if self._status.phase_started_at
                else workflow.now()
            )
            self._source_index = carried.source_index
            self._target_registered = carried.target_registered
            self._shards = carried.shards or selected_hash_shards(spec.shards)
        self._by_shard = {p.shard: p for p in self._status.shards}

    # -- messages ------------------------------------------------------------------------------

    @workflow.query(name="status")
    def status(self) -> MigrationStatus:
        """Phase, pause flag, per-shard progress, gates, routing and operator actions."""
        current = self._status.model_copy(deep=True)
        if current.phase not in TERMINAL:
            current.phase_seconds[current.phase] = self._phase_seconds()
            current.as_of = workflow.now().isoformat()
        current.estimate()
        return current

    def _phase_seconds(self) -> float:
        """Seconds spent in the current phase so far (earlier runs' and this one's), by
        workflow time."""
        spent = (workflow.now() - self._phase_began).total_seconds()
        return round(self._status.phase_seconds.get(self._status.phase, 0.0) + spent, 3)

    @workflow.signal(name="pause")
    async def pause(self, msg: OperatorMessage | None = None) -> None:
        """Stop starting new work after the steps in flight finish."""
        msg = msg or OperatorMessage()
        self._status.paused = True
        self._status.pause_reason = f"paused by {msg.operator}" + (
            f": {msg.reason}" if msg.reason else ""
        )
        await self._sync_control()  # running copies stop before their next batch
        await self._operator("pause", msg)

    @workflow.signal(name="resume")
    async def resume(self, msg: OperatorMessage | None = None) -> None:
        """Continue after a pause (a failed step or gate is tried again)."""
        msg = msg or OperatorMessage()
        self._status.paused = False
        self._status.pause_reason = ""
        await self._operator("resume", msg)
        await self._sync_control()
        await self._report()

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
            self._interrupt = Interrupt(action="rollback", message=msg)
        await self._operator("rollback", msg)

    @workflow.signal(name="abort")
    async def abort(self, msg: OperatorMessage | None = None) -> None:
        """Stop where the migration stands; routing is left as it is."""
        msg = msg or OperatorMessage()
        if self._interrupt is None:
            self._interrupt = Interrupt(action="abort", message=msg)
        await self._operator("abort", msg)

    @workflow.update(name="set_throttle")
    async def set_throttle(self, req: ThrottleRequest) -> float | None:
        """Change the copy throttle (vectors/s over all shards; null lifts it) while running.

        Running copies pick it up before their next batch. Returns the throttle now in force.
        """
        self._status.max_vectors_per_second = req.max_vectors_per_second
        await self._operator(
            "set_throttle",
            OperatorMessage(operator=req.operator, reason=req.reason),
            {"max_vectors_per_second": req.max_vectors_per_second},
        )
        await self._sync_control()
        return self._status.max_vectors_per_second

    @set_throttle.validator
    def _check_throttle(self, req: ThrottleRequest) -> None:
        problem = req.problem()
        if problem is not None:
            raise ValueError(problem)
        if self._status.phase in TERMINAL:
            raise ValueError(f"the migration has ended ({self._status.phase}); nothing to throttle")

    @workflow.update(name="set_ramp")
    async def set_ramp(self, req: RampRequest) -> float:
        """Set the share of reads the new version serves now (online migrations).

        The ramp then goes on with its steps above this share; 0 sends every read back to the
        old version. 100 is the cut-over: approve it instead.
        """
        self._status.ramp_percent = req.percent
        await self._operator(
            "set_ramp",
            OperatorMessage(operator=req.operator, reason=req.reason),
            {"percent": req.percent},
        )
        await self._route_candidate(req.operator, f"ramp set to {req.percent}% by {req.operator}")
        return self._status.ramp_percent

    @set_ramp.validator
    def _check_ramp(self, req: RampRequest) -> None:
        problem = req.problem()
        if problem is not None:
            raise ValueError(problem)
        if self._spec.strategy != "online":
            raise ValueError(f"a {self._spec.strategy} migration has no canary ramp")
        if self._status.phase not in READING_TARGET:
            raise ValueError(
                f"the ramp can be set while SHADOWING, RAMPING or AWAITING_CUTOVER, "
                f"not in {self._status.phase}"
            )

    async def _sync_control(self) -> None:
        """Tell running copies the pause flag and throttle (they read it before every batch)."""
        async with self._control_lock:
            await short_call(
                "set_control",
                ControlInput(
                    migration_id=self._status.migration_id,
                    paused=self._status.paused,
                    max_vectors_per_second=self._status.max_vectors_per_second,
                    region=self._spec.region,
                ),
            )

    async def _operator(
        self, action: str, msg: OperatorMessage, extra: dict[str, Any] | None = None
    ) -> None:
        self._status.operators.append(operator_action(action, msg))
        await self._record(
            "operator",
            msg.operator,
            operator_data(action, msg, {"phase": self._status.phase, **(extra or {})}),
        )

    # -- helpers -------------------------------------------------------------------------------

    async def _record(self, kind: str, actor: str, data: dict[str, Any]) -> None:
        self._events += 1
        ack = await append_ledger(
            LedgerInput(
                migration_id=self._status.migration_id,
                tenant=self._spec.tenant,
                collection=self._spec.collection,
                event_key=event_key(self._status.migration_id, self._events),
                kind=kind,
                actor=actor,
                data=data,
                region=self._spec.region,
            )
        )
        self._anchor(ack)

    def _anchor(self, ack: LedgerAck) -> None:
        """Keep the newest ledger entry this migration wrote (a cut tail loses it)."""
        self._status.ledger_entries += 1
        if ack.seq > self._status.ledger_seq:
            self._status.ledger_seq, self._status.ledger_head = ack.seq, ack.hash

    async def _report(self) -> None:
        """Tell the parent (a regional migration) this child's phase, pause and progress.

        Only a child has a parent: a migration started on its own sends nothing.
        """
        parent = workflow.info().parent
        if parent is None:
            return
        st = self._status
        reason = st.pause_reason if st.paused else st.blocked_reason
        if st.phase == Phase.ROLLED_BACK and self._interrupt is not None:
            reason = self._interrupt.message.reason
        update = RegionUpdate(
            workflow_id=st.migration_id,
            phase=st.phase,
            paused=st.paused,
            reason=reason,
            copied=sum(p.copied for p in st.shards),
            total=sum(p.total for p in st.shards),
            cutovers=st.cutovers,
        )
        # A parent that has ended cannot hear it: the child goes on by itself.
        with contextlib.suppress(Exception):
            await workflow.get_external_workflow_handle(parent.workflow_id).signal(
                "region_update", update
            )

    async def _enter(self, phase: Phase, actor: str = "vecmigrate") -> None:
        async with self._lock:
            old = self._status.phase
            check_transition(self._spec.strategy, old, phase)
            now = workflow.now()
            self._status.phase_seconds[old] = self._phase_seconds()
            self._phase_began = now
            self._status.phase = phase
            self._status.phase_started_at = now.isoformat()
        await self._record("phase", actor, {"from": old, "to": phase})
        await self._report()

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
        if self._status.paused:
            await self._report()
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
                await self._sync_control()  # the other shards stop after their batch too
                continue
            self._status.error = ""
            return result

    # -- the lifecycle -------------------------------------------------------------------------

    @workflow.run
    async def run(self, inp: MigrationInput) -> MigrationStatus:
        spec = self._spec
        src, dst = spec.source.embedding, spec.target.embedding
        if inp.carried is None:
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
        except _ContinueAsNewError:
            await workflow.wait_condition(workflow.all_handlers_finished)
            workflow.continue_as_new(
                MigrationInput(spec=spec, requested_by=inp.requested_by, carried=self._carry())
            )
        except _InterruptedError:
            assert self._interrupt is not None
            if self._interrupt.action == "rollback":
                await self._roll_back(self._interrupt.message)
            else:
                await self._abort(self._interrupt.message)
        await workflow.wait_condition(workflow.all_handlers_finished)
        return self.status()

    def _carry(self) -> Carried:
        return Carried(
            status=self._status,
            shards=self._shards if self._spec.shards.by == "range" else [],
            source_index=self._source_index,
            target_registered=self._target_registered,
            events=self._events,
            interrupt=self._interrupt,
        )

    def _history_full(self, window: int | None = None) -> bool:
        """Whether to continue as new, leaving room for ``window`` shard tasks to drain
        (``max_parallel_shards`` unless given)."""
        info = workflow.info()
        in_flight = window or self._spec.max_parallel_shards
        budget = HISTORY_LIMIT - EVENTS_PER_SHARD_IN_FLIGHT * in_flight
        return info.is_continue_as_new_suggested() or info.get_current_history_length() > budget

    async def _lifecycle(self, inp: MigrationInput) -> None:
        """Run each phase's work, then move on; a continued run starts at the phase it left."""
        work: dict[Phase, Callable[[MigrationInput], Awaitable[None]]] = {
            Phase.PREPARING: self._prepare,
            Phase.BACKFILLING: self._backfill,
            Phase.CATCHING_UP: self._catching_up,
            Phase.BUILDING_INDEX: self._build_index,
            Phase.VALIDATING: self._validating,
            Phase.SHADOWING: self._shadowing,
            Phase.RAMPING: self._ramping,
            Phase.AWAITING_CUTOVER: self._await_cutover,
            Phase.CUT_OVER: self._cut_over,
            Phase.BAKING: self._bake,
            Phase.FINALIZING: self._finalize,
        }
        order = STRATEGY_PHASES[self._spec.strategy]
        if self._status.phase == Phase.PLANNED:
            await self._enter(Phase.PREPARING)
        while self._status.phase not in TERMINAL:
            if self._interrupt is not None:
                if self._reversible():
                    await self._reverse(self._interrupt.message)
                    continue
                raise _InterruptedError()
            if self._history_full():
                raise _ContinueAsNewError()
            phase = self._status.phase
            try:
                await work[phase](inp)
            except _InterruptedError:
                if not self._reversible():
                    raise
                assert self._interrupt is not None
                await self._reverse(self._interrupt.message)
                continue
            await self._enter(order[order.index(phase) + 1], actor=self._phase_actor(phase))

    def _reversible(self) -> bool:
        """A rollback of an online migration that reads from the target: reverse the traffic
        (the old version is current), do not abandon the new one."""
        return (
            self._spec.strategy == "online"
            and self._status.phase in (Phase.CUT_OVER, Phase.BAKING)
            and self._interrupt is not None
            and self._interrupt.action == "rollback"
        )

    def _phase_actor(self, phase: Phase) -> str:
        """Who moves the migration out of ``phase`` (the approver starts the cut-over)."""
        if phase != Phase.AWAITING_CUTOVER:
            return "vecmigrate"
        return self._approver()

    def _approver(self) -> str:
        return next(
            (a.operator for a in reversed(self._status.operators) if a.action == "approve_cutover"),
            "vecmigrate",
        )

    async def _prepare(self, inp: MigrationInput) -> None:
        spec = self._spec
        prep: PrepareResult = await self._step(
            "prepare",
            lambda: workflow.execute_activity(
                "prepare",
                PrepareInput(migration_id=spec.migration_id, spec=spec, operator=inp.requested_by),
                result_type=PrepareResult,
                start_to_close_timeout=timedelta(minutes=10),
                heartbeat_timeout=timedelta(seconds=spec.heartbeat_seconds),
                retry_policy=RETRY,
            ),
        )
        self._status.routing = prep.routing
        self._source_index = prep.source_index
        self._target_registered = True
        self._shards = prep.shards
        self._status.shards = [
            ShardProgress(shard=s.index, total=prep.source_counts.get(s.index, 0))
            for s in prep.shards
        ]
        self._by_shard = {p.shard: p for p in self._status.shards}
        await self._sync_control()
        if spec.strategy == "online":
            # The watermark comes first: every write logged after it is replayed after the
            # backfill, including writes in flight while routers learn of dual-write.
            self._status.watermark = await self._log_head()
            await self._set_routing(
                write_versions=[spec.source.name, spec.target.name],
                candidate_version=spec.target.name,
                operator=inp.requested_by,
                reason="online: dual-write on before the snapshot",
                key="dual-write",
            )
        elif spec.strategy == "offline":
            await self._set_routing(
                writes_paused=True,
                operator=inp.requested_by,
                reason="offline: writes paused until the switch",
                key="pause-writes",
            )
        if spec.strategy != "blue_green":
            # Routers follow the routing row within this bound; after it, all of them do.
            await self._guarded(
                lambda: workflow.sleep(timedelta(seconds=spec.online.settle_seconds))
            )

    async def _log_head(self) -> int:
        spec = self._spec
        head: int = await short_call(
            "log_head",
            LogHeadInput(
                tenant=spec.tenant,
                collection=spec.collection,
                region=spec.region,
                migration_id=spec.migration_id,
            ),
            int,
        )
        return head

    async def _catching_up(self, inp: MigrationInput) -> None:
        """Replay the change log from the watermark until a pass finds nothing newer."""
        spec = self._spec
        assert self._status.watermark is not None
        while True:
            result: CatchUpResult = await self._step(
                "catch up",
                lambda: workflow.execute_activity(
                    "catch_up",
                    CatchUpInput(
                        migration_id=spec.migration_id,
                        spec=spec,
                        after=self._status.watermark or 0,
                        seconds=60.0,
                    ),
                    result_type=CatchUpResult,
                    start_to_close_timeout=timedelta(minutes=30),
                    heartbeat_timeout=timedelta(seconds=spec.heartbeat_seconds),
                    retry_policy=RETRY,
                ),
            )
            self._status.catchup_lag = result.lag
            if result.drained and result.lag <= spec.online.max_catchup_lag:
                await self._record("catchup", "vecmigrate", result.model_dump(mode="json"))
                return

    async def _backfill(self, inp: MigrationInput) -> None:
        if not self._builds_while_copying():
            await self._for_each_shard(self._shards_not_in({"pending", "copying"}), self._copy)
            return
        # Each shard's index is built as soon as its copy is done, while the next shard copies:
        # the copy (one core, mostly in the store) and the build (every core the worker gives
        # it) overlap, and the migration takes less than copy + build. At most
        # ``max_parallel_shards`` copies and as many builds at once, so the window is twice that.
        await self._index_position()
        parallel = self._spec.max_parallel_shards
        copies, builds = asyncio.Semaphore(parallel), asyncio.Semaphore(parallel)

        async def copy_then_build(shard: ShardRef) -> None:
            if self._by_shard[shard.index].state in ("pending", "copying"):
                async with copies:
                    await self._copy(shard)
            async with builds:
                await self._build(shard)

        await self._for_each_shard(
            self._shards_not_in({"pending", "copying", "copied", "indexing"}),
            copy_then_build,
            window=2 * parallel,
        )

    def _builds_while_copying(self) -> bool:
        """Whether this migration builds each shard's index during the backfill.

        Only where the build comes right after the backfill (no catch-up in between to change
        the target) and builds per shard (a native index is built once, over everything).
        Migrations started before this existed keep building after the backfill (the patch
        marker keeps their replay deterministic).
        """
        order = STRATEGY_PHASES[self._spec.strategy]
        follows = order[order.index(Phase.BACKFILLING) + 1] == Phase.BUILDING_INDEX
        return (
            follows
            and not is_native(self._spec.target.index)
            and workflow.patched("build-while-copying")
        )

    def _shards_not_in(self, states: set[str]) -> list[ShardRef]:
        """The shards whose state is one of ``states`` (their work is not done yet)."""
        return [s for s in self._shards if self._by_shard[s.index].state in states]

    async def _index_position(self) -> int:
        """The change-log position of the index being built, taken before its first shard is
        built (writes after it may be missing from the index; readers overlay them).

        Kept in the status, so a run continued in the middle of the builds uses the same one: a
        later position would claim writes for the shards the earlier run built.
        """
        if self._status.index_log_position is None:
            self._status.index_log_position = await self._log_head()
        return self._status.index_log_position

    async def _build_index(self, inp: MigrationInput) -> None:
        spec = self._spec
        mid = spec.migration_id
        native: ArtifactRef | None = None
        position = await self._index_position()
        if is_native(spec.target.index):
            # The target database builds its own index over the whole version, once.
            built: ArtifactRef = await self._step(
                "build native index",
                lambda: workflow.execute_activity(
                    "build_native_index",
                    BuildNativeIndexInput(migration_id=mid, spec=spec),
                    result_type=ArtifactRef,
                    start_to_close_timeout=timedelta(hours=24),
                    heartbeat_timeout=timedelta(seconds=spec.heartbeat_seconds),
                    retry_policy=RETRY,
                ),
            )
            native = built
            for progress in self._status.shards:
                progress.state = "indexed"
            await self._record("index.native", "vecmigrate", built.model_dump(mode="json"))
        else:
            await self._for_each_shard(self._shards_not_in({"copied", "indexing"}), self._build)
        registered: IndexRegistered = await self._step(
            "register_index",
            lambda: workflow.execute_activity(
                "register_index",
                # Without artifacts the activity takes every shard's from the shard journal.
                RegisterIndexInput(
                    migration_id=mid,
                    spec=spec,
                    artifacts=[native] if native else [],
                    log_position=position,
                ),
                result_type=IndexRegistered,
                start_to_close_timeout=timedelta(hours=1),
                heartbeat_timeout=timedelta(seconds=spec.heartbeat_seconds),
                retry_policy=RETRY,
            ),
        )
        self._status.index_version = registered.index_id
        await self._record("index.registered", "vecmigrate", registered.model_dump(mode="json"))

    async def _validating(self, inp: MigrationInput) -> None:
        spec = self._spec
        index_id = self._status.index_version
        assert index_id is not None
        while True:
            report = await self._validate(self._source_index, index_id)
            self._status.gates = report
            await self._record("gate", "vecmigrate", report.model_dump(mode="json"))
            if report.passed:
                # Set before the phase changes, so no status shows AWAITING_CUTOVER without why.
                waits = spec.strategy == "blue_green"
                self._status.blocked_reason = self._cutover_wait_reason() if waits else ""
                return
            reason = "gate failed: " + "; ".join(report.failures())
            self._status.blocked_reason = reason + "; cut-over is blocked"
            if spec.gates.on_failure == "rollback":
                self._interrupt = Interrupt(
                    action="rollback", message=OperatorMessage(operator="vecmigrate", reason=reason)
                )
                raise _InterruptedError()
            self._status.paused = True
            self._status.pause_reason = reason + "; resume to validate again, or roll back"
            await self._wait_unpaused()
            # A new round profiles every shard again.
            self._status.validation_round += 1
            for progress in self._status.shards:
                progress.state = "indexed"

    def _cutover_wait_reason(self) -> str:
        if self._spec.cutover.mode == "manual" and not self._status.cutover_approved:
            return "waiting for approve_cutover"
        return ""

    async def _await_cutover(self, inp: MigrationInput) -> None:
        spec = self._spec
        self._status.blocked_reason = self._cutover_wait_reason()
        await self._guarded(
            lambda: workflow.wait_condition(
                lambda: (
                    not self._status.paused
                    and (spec.cutover.mode == "automatic" or self._status.cutover_approved)
                )
            )
        )
        self._status.blocked_reason = ""

    async def _cut_over(self, inp: MigrationInput) -> None:
        spec = self._spec
        approver = self._approver()
        offline = spec.strategy == "offline"
        await self._set_routing(
            read_version=spec.target.name,
            read_index=self._status.index_version,
            # Blue-green and online keep the source current for a rollback; offline does not.
            write_versions=[spec.target.name] if offline else [spec.target.name, spec.source.name],
            operator=approver,
            reason="cut-over: reads move to the target"
            + ("; writes resume" if offline else "; the source stays current for rollback"),
            key="cutover",
        )
        self._status.cutovers += 1
        self._status.ramp_percent = 0.0
        await self._set_state(spec.target.name, "serving", approver)
        await self._set_state(spec.source.name, "retained" if offline else "standby", approver)

    async def _bake(self, inp: MigrationInput) -> None:
        spec = self._spec
        began = datetime.fromisoformat(self._status.phase_started_at)
        left = timedelta(seconds=spec.cutover.bake_seconds) - (workflow.now() - began)
        if left > timedelta(0):
            await self._guarded(lambda: workflow.sleep(left))
        await self._wait_unpaused()

    async def _finalize(self, inp: MigrationInput) -> None:
        spec = self._spec
        await self._set_routing(
            read_version=spec.target.name,
            read_index=self._status.index_version,
            write_versions=[spec.target.name],
            operator="vecmigrate",
            reason="finalize: the source is retained but no longer written",
            key="finalize",
        )
        await self._set_state(spec.source.name, "retained", "vecmigrate")

    # -- online: shadow reads, canary ramp, reversal -------------------------------------------

    async def _route_candidate(self, operator: str, reason: str) -> None:
        """Routing while the target is evaluated: dual-write, shadow reads, the current ramp."""
        spec = self._spec
        await self._set_routing(
            write_versions=[spec.source.name, spec.target.name],
            candidate_version=spec.target.name,
            candidate_index=self._status.index_version,
            ramp_percent=self._status.ramp_percent,
            shadow_percent=spec.online.shadow.percent,
            operator=operator,
            reason=reason,
            key="candidate",
        )

    async def _shadow_mark(self) -> int:
        result = await self._shadow_result(1 << 62)
        return result.last_id

    async def _shadow_result(self, after: int) -> ShadowResult:
        spec = self._spec
        result: ShadowResult = await short_call(
            "shadow_figures",
            ShadowInput(
                tenant=spec.tenant,
                collection=spec.collection,
                candidate=spec.target.name,
                after=after,
                region=spec.region,
                migration_id=spec.migration_id,
            ),
            ShadowResult,
        )
        return result

    async def _shadow_gate(self, step: str, hold: timedelta) -> None:
        """Hold the current routing for ``hold``, then judge the shadow pairs it produced.

        A breach pauses for an operator (resume measures again) or rolls back, as
        ``online.on_breach`` says.
        """
        policy = self._spec.online.shadow
        while True:
            mark = await self._shadow_mark()
            await self._guarded(lambda: workflow.sleep(hold))
            figures = (await self._shadow_result(mark)).figures
            figures.step = step
            failures = []
            if figures.samples < policy.min_samples:
                failures.append(
                    f"{figures.samples} shadow pairs, needs {policy.min_samples} "
                    "(no traffic is not a pass)"
                )
            if policy.min_overlap is not None and (
                figures.overlap is None or figures.overlap < policy.min_overlap
            ):
                failures.append(f"overlap@k {figures.overlap} < {policy.min_overlap}")
            if policy.max_p99_ratio is not None and figures.samples:
                old, new = figures.p99_ms_old or 0.0, figures.p99_ms_new or 0.0
                # Below a millisecond a ratio measures scheduler noise, not the index.
                if new > policy.max_p99_ratio * max(old, LATENCY_FLOOR_MS):
                    failures.append(
                        f"p99 {new:.2f} ms on the new version vs {old:.2f} ms "
                        f"(allowed {policy.max_p99_ratio}x)"
                    )
            figures.failures = failures
            figures.passed = not failures
            self._status.shadow.append(figures)
            await self._record("shadow.gate", "vecmigrate", figures.model_dump(mode="json"))
            if figures.passed:
                self._status.blocked_reason = ""
                return
            reason = f"{step} gate failed: " + "; ".join(failures)
            if self._spec.online.on_breach == "rollback":
                self._interrupt = Interrupt(
                    action="rollback", message=OperatorMessage(operator="vecmigrate", reason=reason)
                )
                raise _InterruptedError()
            self._status.blocked_reason = reason
            self._status.paused = True
            self._status.pause_reason = reason + "; resume to measure again, or roll back"
            await self._wait_unpaused()

    async def _shadowing(self, inp: MigrationInput) -> None:
        spec = self._spec
        await self._route_candidate("vecmigrate", "shadow reads on the new version")
        settle = timedelta(seconds=spec.online.settle_seconds)
        await self._guarded(lambda: workflow.sleep(settle))
        await self._shadow_gate("shadow", timedelta(seconds=spec.online.shadow.seconds))

    async def _ramping(self, inp: MigrationInput) -> None:
        spec = self._spec
        for step in spec.online.ramp.steps:
            if step <= self._status.ramp_percent:
                continue  # already there (a continued run, or set_ramp moved ahead)
            await self._wait_unpaused()
            self._status.ramp_percent = step
            await self._route_candidate("vecmigrate", f"canary: {step}% of reads on the target")
            await self._shadow_gate(
                f"ramp {step}%", timedelta(seconds=spec.online.ramp.step_seconds)
            )
        self._status.blocked_reason = self._cutover_wait_reason()

    async def _reverse(self, msg: OperatorMessage) -> None:
        """Online rollback after cut-over: reads back to the source, which dual-write kept
        current; dual-write stays on and the migration waits for a new approval."""
        self._interrupt = None
        self._status.paused = False
        self._status.cutover_approved = False
        self._status.ramp_percent = 0.0
        spec = self._spec
        await self._set_routing(
            read_version=spec.source.name,
            read_index=self._source_index,
            write_versions=[spec.source.name, spec.target.name],
            candidate_version=spec.target.name,
            candidate_index=self._status.index_version,
            shadow_percent=spec.online.shadow.percent,
            operator=msg.operator,
            reason=f"rollback after cut-over: {msg.reason or 'requested'}; dual-write stays on",
            key="reverse",
        )
        await self._set_state(spec.source.name, "serving", msg.operator)
        await self._set_state(spec.target.name, "building", msg.operator)
        self._status.blocked_reason = self._cutover_wait_reason()
        await self._enter(Phase.AWAITING_CUTOVER, actor=msg.operator)

    async def _validate(self, source_index: str | None, index_id: str) -> GateReport:
        """Profile every shard (one activity each, so the work resumes shard by shard), then
        measure retrieval and distribution and judge everything against the gates."""
        spec = self._spec
        round_ = self._status.validation_round

        async def check_one(shard: ShardRef) -> None:
            progress = self._by_shard[shard.index]
            progress.state = "validating"
            await self._step(
                f"validate shard {shard.index}",
                lambda: workflow.execute_activity(
                    "validate_shard",
                    ValidateShardInput(
                        migration_id=spec.migration_id,
                        spec=spec,
                        shard=shard,
                        round=round_,
                        volatile_after=self._status.watermark,
                    ),
                    result_type=ShardCheck,
                    start_to_close_timeout=timedelta(hours=2),
                    heartbeat_timeout=timedelta(seconds=spec.heartbeat_seconds),
                    retry_policy=RETRY,
                ),
            )
            progress.state = "validated"

        await self._for_each_shard(self._shards_not_in({"indexed", "validating"}), check_one)
        result: ValidateResult = await self._step(
            "validate",
            lambda: workflow.execute_activity(
                "validate",
                # The shard profiles come from the shard journal, not through this payload.
                ValidateInput(
                    migration_id=spec.migration_id,
                    spec=spec,
                    source_index=source_index,
                    target_index=index_id,
                    round=round_,
                ),
                result_type=ValidateResult,
                start_to_close_timeout=timedelta(seconds=spec.gates.time_budget_seconds * 2),
                heartbeat_timeout=timedelta(seconds=spec.heartbeat_seconds),
                retry_policy=RETRY,
            ),
        )
        return result.report

    async def _for_each_shard(
        self,
        shards: list[ShardRef],
        work: Callable[[ShardRef], Awaitable[None]],
        window: int | None = None,
    ) -> None:
        """Run ``work`` per shard in a sliding window of ``window`` shards
        (``max_parallel_shards`` unless given).

        A pause stops new shards from starting (and running copies stop after their batch).
        When the history grows long, no new shard starts; once the window has drained the run
        continues as new and the next run takes the shards still to do.
        """
        window = window or self._spec.max_parallel_shards
        pending = deque(shards)
        running: set[asyncio.Task[None]] = set()
        try:
            while pending or running:
                while pending and len(running) < window:
                    if self._history_full(window):
                        break
                    await self._wait_unpaused()
                    running.add(asyncio.ensure_future(work(pending.popleft())))
                if not running:
                    raise _ContinueAsNewError()
                done, _ = await workflow.wait(list(running), return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    running.discard(task)
                    task.result()
        finally:
            for task in running:
                task.cancel()

    async def _copy(self, shard: ShardRef) -> None:
        spec = self._spec
        progress = self._by_shard[shard.index]
        progress.state = "copying"
        while True:
            result: CopyShardResult = await self._step(
                f"copy shard {shard.index}",
                lambda: workflow.execute_activity(
                    "copy_shard",
                    CopyShardInput(migration_id=spec.migration_id, spec=spec, shard=shard),
                    result_type=CopyShardResult,
                    start_to_close_timeout=timedelta(hours=12),
                    heartbeat_timeout=timedelta(seconds=spec.heartbeat_seconds),
                    retry_policy=RETRY,
                ),
            )
            progress.copied = result.copied
            progress.recopied = result.recopied
            if result.complete:
                break
            await self._wait_unpaused()  # paused between batches: go on from the journal
        progress.total = max(progress.total, result.total)
        progress.checksum = result.checksum
        progress.state = "copied"
        # The last copy done (shards start in order: from the end, one still to copy is found
        # at once until the last few), builds may go on in the phase: the copy's time is kept.
        if self._status.phase == Phase.BACKFILLING and not any(
            p.state in ("pending", "copying") for p in reversed(self._status.shards)
        ):
            self._status.copy_seconds = self._phase_seconds()
        if result.ledger is not None:
            self._anchor(result.ledger)

    async def _build(self, shard: ShardRef) -> None:
        spec = self._spec
        progress = self._by_shard[shard.index]
        progress.state = "indexing"
        await self._step(
            f"build index of shard {shard.index}",
            lambda: workflow.execute_activity(
                "build_shard_index",
                BuildIndexInput(migration_id=spec.migration_id, spec=spec, shard=shard),
                result_type=ArtifactRef,
                start_to_close_timeout=timedelta(hours=12),
                heartbeat_timeout=timedelta(seconds=spec.heartbeat_seconds),
                retry_policy=RETRY,
            ),
        )
        progress.state = "indexed"
        self._status.ledger_entries += 1  # the activity wrote "shard.indexed"

    async def _set_routing(
        self,
        *,
        operator: str,
        reason: str,
        key: str,
        read_version: str | None = None,
        read_index: str | None = None,
        write_versions: list[str] | None = None,
        candidate_version: str | None = None,
        candidate_index: str | None = None,
        ramp_percent: float = 0.0,
        shadow_percent: float = 0.0,
        writes_paused: bool = False,
    ) -> None:
        """Set the whole routing row by compare-and-set (reads default to the source).

        Changes are made one at a time, each against the generation the last one left.
        """
        spec = self._spec
        async with self._routing_lock:
            routing = self._status.routing
            assert routing is not None
            self._events += 1
            change = RoutingChangeInput(
                migration_id=spec.migration_id,
                tenant=spec.tenant,
                collection=spec.collection,
                expected_generation=routing.generation,
                read_version=read_version or spec.source.name,
                read_index=read_index if read_version else self._source_index,
                write_versions=write_versions or [spec.source.name],
                operator=operator,
                reason=reason,
                change_key=(
                    f"{spec.migration_id}/{workflow.info().first_execution_run_id}/"
                    f"{key}/{self._events}"
                ),
                candidate_version=candidate_version,
                candidate_index=candidate_index,
                ramp_percent=ramp_percent,
                shadow_percent=shadow_percent,
                writes_paused=writes_paused,
                region=spec.region,
            )
            view: RoutingView = await short_call(
                "change_routing",
                change,
                RoutingView,
            )
            self._status.routing = view
        await self._record("routing.changed", operator, {"reason": reason, **view.model_dump()})

    async def _set_state(self, version: str, state: str, operator: str) -> None:
        spec = self._spec
        await short_call(
            "set_version_state",
            VersionStateInput(
                migration_id=spec.migration_id,
                tenant=spec.tenant,
                collection=spec.collection,
                version=version,
                state=state,
                operator=operator,
                region=spec.region,
            ),
        )
        await self._record("version.state", operator, {"version": version, "state": state})

    async def _roll_back(self, msg: OperatorMessage) -> None:
        spec = self._spec
        await self._enter(Phase.ROLLING_BACK, actor=msg.operator)
        self._status.paused = False
        routing = self._status.routing
        back = RoutingView(
            read_version=spec.source.name,
            read_index=self._source_index,
            write_versions=[spec.source.name],
            generation=routing.generation if routing else 0,
        )
        if routing is not None and routing != back:
            await self._set_routing(
                operator=msg.operator,
                reason=f"rollback: {msg.reason or 'requested'}",
                key="rollback",
            )
        if self._status.cutovers:
            await self._set_state(spec.source.name, "serving", msg.operator)
        if self._target_registered:
            await self._set_state(spec.target.name, "abandoned", msg.operator)
        await self._enter(Phase.ROLLED_BACK, actor=msg.operator)

    async def _abort(self, msg: OperatorMessage) -> None:
        self._status.paused = False
        routing = self._status.routing
        if routing is not None and routing.writes_paused:
            # Stop where it stands, but never leave the collection refusing writes.
            await self._set_routing(
                read_version=routing.read_version,
                read_index=routing.read_index,
                write_versions=routing.write_versions,
                operator=msg.operator,
                reason="abort: writes resume",
                key="abort",
            )
        await self._enter(Phase.ABORTED, actor=msg.operator)
