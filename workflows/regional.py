"""The regional workflow: one migration across regions and tenants.

It runs one child ``MigrationWorkflow`` per (region, tenant), each on its region's task queue
(so only that region's workers touch its data), in the spec's order: the canary region alone
first until its gates pass, then the others, at most ``region_policy.max_parallel`` regions at a
time. Every child stops at a global barrier (its cut-over is manual); once every child passed
its gates, the parent cuts them over region by region in ``region_policy.cutover_order``, with
``pause_between_seconds`` between regions. A child whose gates fail rolls itself back; the
others then wait for an operator (``approve_cutover`` goes on without it, ``rollback`` ends all)
or roll back too, as ``region_policy.on_region_failure`` says. A canary that fails stops the
rollout: no other region starts.

Signals (the names of a single migration): ``pause``, ``resume``, ``approve_cutover``, ``abort``,
and ``rollback``, whose payload may name a ``region`` (then only its children roll back).
Children report to the parent with ``region_update``. The ``status`` query returns each child's
phase and progress.

Deterministic: imports only temporalio, the standard library and vecmigrate's pure models.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ChildWorkflowError

from vecmigrate.workflows.common import (
    append_ledger,
    event_key,
    operator_action,
    operator_data,
    short_call,
)

with workflow.unsafe.imports_passed_through():
    from vecmigrate.model.lifecycle import (
        MigrationInput,
        MigrationStatus,
        OperatorMessage,
        Phase,
    )
    from vecmigrate.model.regions import (
        ChildPlan,
        RegionalStatus,
        RegionRollback,
        RegionState,
        RegionUpdate,
        child_plans,
        region_queue,
    )
    from vecmigrate.model.tasks import LedgerInput, TenantsInput

# A child in one of these phases has switched its reads: its cut-over went through.
SWITCHED = frozenset({Phase.BAKING, Phase.FINALIZING, Phase.COMPLETED})


@workflow.defn(name="RegionalMigrationWorkflow")
class RegionalMigrationWorkflow:
    """One migration across regions and tenants (see the module's docstring)."""

    @workflow.init
    def __init__(self, inp: MigrationInput) -> None:
        spec = inp.spec
        self._spec = spec
        self._status = RegionalStatus(
            migration_id=spec.migration_id, collection=spec.collection, strategy=spec.strategy
        )
        self._plans: dict[str, ChildPlan] = {}
        self._handles: dict[str, workflow.ChildWorkflowHandle[Any, MigrationStatus]] = {}
        self._rollback_all: OperatorMessage | None = None
        self._aborted: OperatorMessage | None = None
        self._events = 0

    # -- messages ------------------------------------------------------------------------------

    @workflow.query(name="status")
    def status(self) -> RegionalStatus:
        """Each child's phase and progress, the barrier, and who did what."""
        return self._status.model_copy(deep=True)

    @workflow.signal(name="region_update")
    def region_update(self, upd: RegionUpdate) -> None:
        """A child's phase, pause state and progress (sent by the child itself)."""
        state = self._state(upd.workflow_id)
        if state is None:
            return
        state.phase, state.paused, state.reason = upd.phase, upd.paused, upd.reason
        state.copied, state.total, state.cutovers = upd.copied, upd.total, upd.cutovers
        if upd.phase == Phase.ROLLED_BACK and "gate failed" in upd.reason:
            state.failed = True

    @workflow.signal(name="pause")
    async def pause(self, msg: OperatorMessage | None = None) -> None:
        """Pause every running child."""
        msg = msg or OperatorMessage()
        self._status.paused = True
        await self._operator("pause", msg)
        await self._forward("pause", msg, self._live())

    @workflow.signal(name="resume")
    async def resume(self, msg: OperatorMessage | None = None) -> None:
        """Resume every paused child."""
        msg = msg or OperatorMessage()
        self._status.paused = False
        await self._operator("resume", msg)
        await self._forward("resume", msg, self._live())

    @workflow.signal(name="approve_cutover")
    async def approve_cutover(self, msg: OperatorMessage | None = None) -> None:
        """Allow the cut-over (with a region out, the cut-over of the others)."""
        msg = msg or OperatorMessage()
        self._status.cutover_approved = True
        await self._operator("approve_cutover", msg)

    @workflow.signal(name="rollback")
    async def rollback(self, msg: RegionRollback | None = None) -> None:
        """Roll back one region's children (``region`` set) or every child."""
        msg = msg or RegionRollback()
        await self._operator("rollback", msg, {"region": msg.region})
        plain = OperatorMessage(operator=msg.operator, reason=msg.reason)
        if msg.region is None:
            if self._rollback_all is None:
                self._rollback_all = plain
            return
        await self._forward("rollback", plain, [s for s in self._live() if s.region == msg.region])

    @workflow.signal(name="abort")
    async def abort(self, msg: OperatorMessage | None = None) -> None:
        """Abort every child where it stands; children not started never start."""
        msg = msg or OperatorMessage()
        self._aborted = msg
        await self._operator("abort", msg)
        await self._forward("abort", msg, self._live())

    # -- helpers -------------------------------------------------------------------------------

    def _state(self, workflow_id: str) -> RegionState | None:
        return next((s for s in self._status.regions if s.workflow_id == workflow_id), None)

    def _live(self) -> list[RegionState]:
        return [s for s in self._status.regions if s.started and not s.ended]

    def _of(self, region: str | None) -> list[RegionState]:
        return [s for s in self._status.regions if s.region == region]

    def _stopping(self) -> bool:
        return self._rollback_all is not None or self._aborted is not None

    async def _forward(self, signal: str, msg: OperatorMessage, to: list[RegionState]) -> None:
        for state in to:
            handle = self._handles.get(state.workflow_id)
            if handle is not None:
                await handle.signal(signal, msg)

    async def _operator(
        self, action: str, msg: OperatorMessage, extra: dict[str, Any] | None = None
    ) -> None:
        self._status.operators.append(operator_action(action, msg))
        await self._record("operator", msg.operator, operator_data(action, msg, extra or {}))

    async def _record(self, kind: str, actor: str, data: dict[str, Any]) -> None:
        self._events += 1
        spec = self._spec
        await append_ledger(
            LedgerInput(
                migration_id=spec.migration_id,
                # The control plane's entries speak for every tenant of the migration.
                tenant=spec.tenant if spec.tenants is None else "*",
                collection=spec.collection,
                event_key=event_key(spec.migration_id, self._events),
                kind=kind,
                actor=actor,
                data=data,
            )
        )

    async def _phase(self, phase: Phase, blocked: str = "") -> None:
        old = self._status.phase
        self._status.phase = phase
        self._status.blocked_reason = blocked
        await self._record("phase", "vecmigrate", {"from": old, "to": phase, "why": blocked})

    # -- the run -------------------------------------------------------------------------------

    @workflow.run
    async def run(self, inp: MigrationInput) -> RegionalStatus:
        spec = self._spec
        await self._record(
            "migration.started",
            inp.requested_by,
            {
                "spec": spec.model_dump(mode="json"),
                "spec_hash": spec.spec_hash(),
                "regions": [r.name for r in spec.regions],
                "tenants": spec.tenants,
            },
        )
        plans = child_plans(
            spec, spec.migration_id, await self._tenants(), workflow.info().task_queue
        )
        self._plans = {p.workflow_id: p for p in plans}
        self._status.regions = [
            RegionState(
                region=p.region, tenant=p.tenant, workflow_id=p.workflow_id, task_queue=p.task_queue
            )
            for p in plans
        ]
        await self._phase(Phase.BACKFILLING)
        results = await self._rollout(inp)
        if not self._stopping():
            await self._barrier()
        if not self._stopping():
            await self._cut_over()
        if self._rollback_all is not None:
            await self._roll_back_all(self._rollback_all)
        for task in results:
            await task
        await self._finish()
        await workflow.wait_condition(workflow.all_handlers_finished)
        return self.status()

    async def _tenants(self) -> dict[str | None, list[str]]:
        """The tenants migrated in each region (looked up there when the spec says "all")."""
        spec = self._spec
        regions: list[str | None] = [r.name for r in spec.regions] or [None]
        if isinstance(spec.tenants, tuple):
            return {key: list(spec.tenants) for key in regions}
        if spec.tenants is None:
            return {key: [spec.tenant] for key in regions}
        found: dict[str | None, list[str]] = {}
        for region in spec.regions or [None]:
            name = region.name if region is not None else None
            queue = region_queue(region) if region is not None else workflow.info().task_queue
            found[name] = await short_call(
                "list_tenants",
                TenantsInput(collection=spec.collection, version=spec.source.name, region=name),
                list[str],
                task_queue=queue,
            )
        await self._record("tenants", "vecmigrate", {str(k): v for k, v in found.items()})
        return found

    async def _start_region(
        self, region: str | None, requested_by: str
    ) -> list[asyncio.Task[None]]:
        tasks = []
        for state in self._of(region):
            plan = self._plans[state.workflow_id]
            handle = await workflow.start_child_workflow(
                "MigrationWorkflow",
                MigrationInput(spec=plan.spec, requested_by=requested_by),
                id=plan.workflow_id,
                task_queue=plan.task_queue,
                result_type=MigrationStatus,
            )
            self._handles[plan.workflow_id] = handle
            state.started = True
            await self._record(
                "region.started",
                "vecmigrate",
                {
                    "region": region,
                    "tenant": state.tenant,
                    "child": plan.workflow_id,
                    "task_queue": plan.task_queue,
                },
            )
            tasks.append(asyncio.ensure_future(self._follow(state, handle)))
        return tasks

    async def _follow(
        self, state: RegionState, handle: workflow.ChildWorkflowHandle[Any, MigrationStatus]
    ) -> None:
        """Wait for a child's end; its result is the last word on its phase."""
        try:
            final = await handle
            state.phase = final.phase
        except ChildWorkflowError as err:
            state.phase = Phase.ABORTED
            state.reason = f"child failed: {err.cause or err}"

    def _settled(self, region: str | None) -> bool:
        return all(s.settled for s in self._of(region))

    def _done_or_stopping(self, region: str | None) -> bool:
        return self._stopping() or self._settled(region)

    def _switched_or_stopping(self, states: list[RegionState]) -> bool:
        return self._stopping() or all(s.phase in SWITCHED or s.ended for s in states)

    async def _rollout(self, inp: MigrationInput) -> list[asyncio.Task[None]]:
        """Start the regions in order: the canary alone until it settles, then the others
        with at most ``max_parallel`` regions running towards the barrier at once."""
        policy = self._spec.region_policy
        order: list[str | None] = [r.name for r in self._spec.regions] or [None]
        tasks: list[asyncio.Task[None]] = []
        started: list[str | None] = []
        for i, region in enumerate(order):
            await workflow.wait_condition(
                lambda: (
                    self._stopping()
                    or sum(not self._settled(r) for r in started) < policy.max_parallel
                )
            )
            if self._stopping():
                break
            tasks.extend(await self._start_region(region, inp.requested_by))
            started.append(region)
            if i == 0 and policy.canary and len(order) > 1:
                await workflow.wait_condition(functools.partial(self._done_or_stopping, region))
                canary = self._of(region)
                if any(not s.ready for s in canary):
                    self._status.error = f"canary region {region} did not pass: " + "; ".join(
                        f"{s.tenant} {s.phase} {s.reason}" for s in canary
                    )
                    await self._record(
                        "canary.failed", "vecmigrate", {"region": region, "why": self._status.error}
                    )
                    if self._rollback_all is None:
                        self._rollback_all = OperatorMessage(
                            operator="vecmigrate", reason=self._status.error
                        )
                    break
        return tasks

    async def _barrier(self) -> None:
        """Hold every child before its cut-over until all of them passed their gates."""
        await self._phase(Phase.AWAITING_CUTOVER, "waiting for every region to pass its gates")
        await workflow.wait_condition(
            lambda: self._stopping() or all(s.settled for s in self._status.regions if s.started)
        )
        if self._stopping():
            return
        out = [s for s in self._status.regions if s.started and not s.ready]
        policy = self._spec.region_policy
        if any(s.failed for s in out) and policy.on_region_failure == "rollback_all":
            names = ", ".join(f"{s.region}/{s.tenant}" for s in out if s.failed)
            self._rollback_all = OperatorMessage(
                operator="vecmigrate", reason=f"{names} failed its gates; policy rollback_all"
            )
            return
        if out:
            names = ", ".join(f"{s.region}/{s.tenant} ({s.phase})" for s in out)
            why = (
                f"{names} out of the migration; the other regions passed and wait: "
                "approve_cutover cuts them over without it, rollback ends all"
            )
        elif self._spec.cutover.mode == "manual":
            why = "every region passed its gates; waiting for approve_cutover"
        else:
            return
        self._status.blocked_reason = why
        await self._record("barrier", "vecmigrate", {"why": why})
        await workflow.wait_condition(lambda: self._stopping() or self._status.cutover_approved)

    async def _cut_over(self) -> None:
        """Cut the ready children over, region by region, in the policy's order."""
        spec = self._spec
        policy = spec.region_policy
        approver = next(
            (a.operator for a in reversed(self._status.operators) if a.action == "approve_cutover"),
            "vecmigrate",
        )
        await self._phase(Phase.CUT_OVER)
        order: list[str | None] = list(policy.cutover_order or [r.name for r in spec.regions])
        order = order or [None]
        for n, region in enumerate(order):
            ready = [s for s in self._of(region) if s.ready]
            if not ready:
                continue
            if n and policy.pause_between_seconds:
                # A timer that a rollback or abort cuts short.
                with contextlib.suppress(asyncio.TimeoutError):
                    await workflow.wait_condition(
                        self._stopping, timeout=timedelta(seconds=policy.pause_between_seconds)
                    )
            if self._stopping():
                return
            await self._forward(
                "approve_cutover",
                OperatorMessage(operator=approver, reason=f"barrier passed; region {region}"),
                ready,
            )
            await workflow.wait_condition(functools.partial(self._switched_or_stopping, ready))
            for s in ready:
                self._status.cut_over.append(s.workflow_id)
            await self._record(
                "region.cut_over",
                approver,
                {"region": region, "children": [s.workflow_id for s in ready]},
            )
        await self._phase(Phase.BAKING)

    async def _roll_back_all(self, msg: OperatorMessage) -> None:
        """Roll every running child back. An online child that had cut over first reverses its
        traffic and waits at AWAITING_CUTOVER: a second rollback abandons its target."""
        await self._phase(Phase.ROLLING_BACK, msg.reason)
        signalled: dict[str, Phase] = {}  # child -> its phase when last told to roll back

        def due(s: RegionState) -> bool:
            told = signalled.get(s.workflow_id)
            return told is None or (
                s.phase == Phase.AWAITING_CUTOVER and told != Phase.AWAITING_CUTOVER
            )

        while self._live():
            now_due = [s for s in self._live() if due(s)]
            await self._forward("rollback", msg, now_due)
            for s in now_due:
                signalled[s.workflow_id] = s.phase
            await workflow.wait_condition(
                lambda: not self._live() or any(due(s) for s in self._live())
            )

    async def _finish(self) -> None:
        states = [s for s in self._status.regions if s.started]
        done = [s for s in states if s.phase == Phase.COMPLETED]
        if self._aborted is not None:
            final = Phase.ABORTED
        elif done:
            final = Phase.COMPLETED
        else:
            final = Phase.ROLLED_BACK
        missing = [
            f"{s.region or '-'}/{s.tenant} ({s.phase if s.started else 'not started'})"
            for s in self._status.regions
            if s.phase != Phase.COMPLETED
        ]
        if final == Phase.COMPLETED and missing:
            self._status.error = "not migrated: " + ", ".join(missing)
        await self._phase(final)
