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

Signals (the names of a single migration, handled by the same code): ``pause``, ``resume``,
``approve_cutover``, ``abort``, and ``rollback``, whose payload may name a ``region`` (then only
its children roll back). Children report to the parent with ``region_update``, a child's gate
failure as a flag, never as words to parse. The ``status`` query returns each child's phase and
progress. Like a single migration, a regional one that rolled back or was aborted fails its
execution with a typed error carrying its final status.

Deterministic: imports only temporalio, the standard library and vecmigrate's pure models.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError, ChildWorkflowError

from vecmigrate.workflows.calls import RETRY, append_ledger, event_key, short_call
from vecmigrate.workflows.search import SEARCH_ATTRIBUTES, typed, updates
from vecmigrate.workflows.signals import ROLES, RULES, OperatorSignals

with workflow.unsafe.imports_passed_through():
    from vecmigrate.errors import summary
    from vecmigrate.model.access import AccessPolicy, RoleBinding
    from vecmigrate.model.divergence import (
        AnswersInput,
        CopyAnswers,
        CopyDigest,
        CopyEntries,
        DigestInput,
        EntriesInput,
        RegionDivergence,
        compare_copies,
        differing_cells,
        verdict,
    )
    from vecmigrate.model.lifecycle import (
        OUTCOME_ERRORS,
        OUTCOMES,
        REGIONAL,
        TERMINAL,
        Message,
        Phase,
        Ruling,
        Situation,
        rule,
    )
    from vecmigrate.model.messages import OperatorMessage
    from vecmigrate.model.regions import (
        ChildPlan,
        RegionalStatus,
        RegionState,
        RegionUpdate,
        child_plans,
        region_queue,
    )
    from vecmigrate.model.search import memo, search_values
    from vecmigrate.model.spec import DivergenceBound
    from vecmigrate.model.status import MigrationInput, MigrationStatus, OperatorAction
    from vecmigrate.model.tasks import AccessPolicyInput, LedgerInput, TenantsInput
    from vecmigrate.workflows.identity import caller

# A child in one of these phases has switched its reads: its cut-over went through.
SWITCHED = frozenset({Phase.BAKING, Phase.FINALIZING, Phase.COMPLETED})

# The regions' copies compared at the barrier (when region_policy.divergence sets a bound).
DIVERGENCE = "region-divergence"
# How long one region's part of the comparison may take (it reads the region's whole copy).
DIVERGENCE_TIMEOUT = timedelta(hours=12)


@workflow.defn(name="RegionalMigrationWorkflow")
class RegionalMigrationWorkflow(OperatorSignals):
    """One migration across regions and tenants (see the module's docstring)."""

    @workflow.init
    def __init__(self, inp: MigrationInput) -> None:
        spec = inp.spec
        self._spec = spec
        self._rules = workflow.patched(RULES)
        self._roles = workflow.patched(ROLES)
        self._policy = AccessPolicy()
        self._starter = ""
        self._searchable = workflow.patched(SEARCH_ATTRIBUTES)
        self._status = RegionalStatus(
            migration_id=spec.migration_id, collection=spec.collection, strategy=spec.strategy
        )
        self._plans: dict[str, ChildPlan] = {}
        self._handles: dict[str, workflow.ChildWorkflowHandle[Any, MigrationStatus]] = {}
        self._rollback_all: OperatorMessage | None = None
        self._aborted: OperatorMessage | None = None
        self._events = 0
        # The regions' copies differ beyond the policy's bound: the cut-over waits for an
        # operator's approve_cutover, as it does when a region is out.
        self._diverged = False

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
        if upd.gate_failed:
            state.failed = True

    async def _ruling(self, message: Message, msg: OperatorMessage) -> Ruling:
        st = self._status
        if msg.region is not None and message != Message.ROLLBACK:
            return Ruling(False, f"only a rollback can name a region, not {message}")
        if msg.region is not None and msg.region not in {s.region for s in st.regions}:
            known = ", ".join(sorted({s.region or "-" for s in st.regions})) or "none yet"
            return Ruling(False, f"no region {msg.region} in this migration (regions: {known})")
        out = any(s.started and s.ended for s in st.regions)
        now = Situation(
            phase=st.phase,
            paused=st.paused,
            stopping=self._stopping(),
            cutover_approved=st.cutover_approved,
            approval_needed=self._spec.cutover.mode == "manual" or out or self._diverged,
        )
        return rule(REGIONAL, message, now, preapprove=msg.preapprove)

    async def _apply(self, message: Message, msg: OperatorMessage, ruling: Ruling) -> None:
        if message == Message.PAUSE:
            self._status.paused = True
        elif message == Message.RESUME:
            self._status.paused = False
        elif message == Message.APPROVE_CUTOVER:
            self._status.cutover_approved = True
        elif message == Message.ABORT:
            self._aborted = msg

    async def _follow_up(self, message: Message, msg: OperatorMessage) -> None:
        plain = OperatorMessage(operator=msg.operator, reason=msg.reason)
        if message in (Message.PAUSE, Message.RESUME, Message.ABORT):
            await self._forward(str(message), plain, self._live())
        elif message == Message.ROLLBACK and msg.region is None:
            if self._rollback_all is None:
                self._rollback_all = plain
        elif message == Message.ROLLBACK:
            here = [s for s in self._live() if s.region == msg.region]
            await self._forward("rollback", plain, here)

    def _operators(self) -> list[OperatorAction]:
        return self._status.operators

    def _phase_now(self) -> str:
        return str(self._status.phase)

    def _tenants_in_scope(self) -> list[str]:
        spec = self._spec
        if isinstance(spec.tenants, tuple):
            return list(spec.tenants)
        found = sorted({s.tenant for s in self._status.regions})
        return found or [spec.tenant]

    def _collection(self) -> str:
        return self._spec.collection

    def _started_by(self) -> str:
        return self._starter

    async def _load_policy(self) -> None:
        """The roles in force on the migration's tenants (every tenant's bindings: a message
        needs its role on each), read at the start and at each phase."""
        if not self._roles:
            return
        spec = self._spec
        bindings: list[RoleBinding] = []
        four_eyes = False
        for tenant in self._tenants_in_scope():
            policy: AccessPolicy = await short_call(
                "access_policy",
                AccessPolicyInput(
                    migration_id=spec.migration_id, tenant=tenant, collection=spec.collection
                ),
                AccessPolicy,
                summary=f"operator roles in force for {tenant}",
            )
            bindings.extend(b for b in policy.bindings if b not in bindings)
            four_eyes = four_eyes or policy.four_eyes
        self._policy = AccessPolicy(bindings=tuple(bindings), four_eyes=four_eyes)

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

    async def _record(
        self, kind: str, actor: str, data: dict[str, Any], caller: str | None = None
    ) -> None:
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
                caller=caller,
            )
        )

    async def _phase(self, phase: Phase, blocked: str = "") -> None:
        old = self._status.phase
        self._status.phase = phase
        self._status.blocked_reason = blocked
        if self._searchable:
            workflow.upsert_search_attributes(updates(search_values(self._spec, phase)))
        workflow.set_current_details(f"**{phase}**" + (f"\n\n{blocked}" if blocked else ""))
        await self._record("phase", "vecmigrate", {"from": old, "to": phase, "why": blocked})
        if phase not in TERMINAL:
            await self._load_policy()

    # -- the run -------------------------------------------------------------------------------

    @workflow.run
    async def run(self, inp: MigrationInput) -> RegionalStatus:
        spec = self._spec
        if self._roles:
            self._starter = caller()
        await self._record(
            "migration.started",
            inp.requested_by,
            {
                "spec": spec.model_dump(mode="json"),
                "spec_hash": self._spec.spec_hash(),
                "regions": [r.name for r in spec.regions],
                "tenants": spec.tenants,
            },
            caller=self._starter or None,
        )
        await self._load_policy()
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
        return await self._finished(spec.migration_id, self.status)

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
                summary=f"tenants holding {spec.collection}@{spec.source.name} in {name}",
            )
        await self._record("tenants", "vecmigrate", {str(k): v for k, v in found.items()})
        return found

    async def _start_region(
        self, region: str | None, requested_by: str
    ) -> list[asyncio.Task[None]]:
        tasks = []
        for state in self._of(region):
            plan = self._plans[state.workflow_id]
            searchable: dict[str, Any] = {}
            if self._searchable:
                searchable = {
                    "search_attributes": typed(search_values(plan.spec, Phase.PLANNED)),
                    "memo": memo(plan.spec, requested_by),
                    "static_summary": f"{plan.region or 'one region'}, tenant {plan.tenant}",
                }
            handle = await workflow.start_child_workflow(
                "MigrationWorkflow",
                MigrationInput(spec=plan.spec, requested_by=requested_by),
                id=plan.workflow_id,
                task_queue=plan.task_queue,
                result_type=MigrationStatus,
                **searchable,
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
        except ChildWorkflowError as err:
            cause = err.cause
            if not (
                isinstance(cause, ApplicationError)
                and cause.type in OUTCOME_ERRORS
                and cause.details
            ):
                state.phase = Phase.ABORTED
                state.reason = f"child failed: {summary(cause or err)}"
                return
            # Rolled back or aborted: the failure's details are the child's final status.
            final = MigrationStatus.model_validate(cause.details[0])
        state.phase = final.phase

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
        diverged = ""
        if policy.divergence is not None and workflow.patched(DIVERGENCE):
            diverged = await self._divergence(policy.divergence)
            if self._stopping():
                return
        if diverged:
            self._diverged = True
            names = ", ".join(f"{s.region}/{s.tenant} ({s.phase})" for s in out)
            why = (f"{names} out of the migration; " if out else "") + diverged
        elif out:
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

    async def _in_region(self, name: str, arg: Any, result_type: type, state: RegionState) -> Any:
        """One part of the regions' comparison, run by ``state``'s region on its own queue."""
        return await workflow.execute_activity(
            name,
            arg,
            result_type=result_type,
            task_queue=state.task_queue,
            start_to_close_timeout=DIVERGENCE_TIMEOUT,
            heartbeat_timeout=timedelta(seconds=self._spec.heartbeat_seconds),
            retry_policy=RETRY,
            summary=f"{name.removeprefix('region_')} of {state.region}/{state.tenant}'s copy",
        )

    def _task(self, state: RegionState) -> dict[str, Any]:
        plan = self._plans[state.workflow_id]
        return {
            "migration_id": state.workflow_id,
            "spec_hash": plan.spec.spec_hash(),
            "tenant": state.tenant,
            "region": state.region,
        }

    async def _divergence(self, bound: DivergenceBound) -> str:
        """Compare every ready region's copy of the target with the reference region's (the
        first region ready, in the spec's order), tenant by tenant; the figures go to the
        status and the ledger. Returns the blocked reason ("" when within the bound)."""
        self._status.blocked_reason = "every region passed its gates; comparing their copies"
        order = [r.name for r in self._spec.regions]
        ready = sorted(
            (s for s in self._status.regions if s.ready),
            key=lambda s: order.index(s.region) if s.region in order else len(order),
        )
        tenants = list(dict.fromkeys(s.tenant for s in ready))
        reports: list[RegionDivergence] = []
        try:
            for tenant in tenants:
                mine = [s for s in ready if s.tenant == tenant]
                if len(mine) < 2:
                    continue
                reports += await self._compare_tenant(bound, mine[0], mine[1:])
        except (ActivityError, ValueError) as err:
            # A region's part failed for good, or two regions' workers digest differently.
            cause = err.cause if isinstance(err, ActivityError) else None
            why = (
                f"the regions' copies could not be compared ({summary(cause or err)}); "
                "approve_cutover cuts over anyway, rollback ends all"
            )
            await self._record("region.divergence.failed", "vecmigrate", {"why": why})
            return why
        return verdict(reports)

    async def _compare_tenant(
        self, bound: DivergenceBound, ref: RegionState, others: list[RegionState]
    ) -> list[RegionDivergence]:
        everyone = [ref, *others]
        digests: list[CopyDigest] = await asyncio.gather(
            *(
                self._in_region(
                    "region_digest",
                    DigestInput(**self._task(s), sample=bound.queries if s is ref else 0),
                    CopyDigest,
                    s,
                )
                for s in everyone
            )
        )
        sample = digests[0].sample
        answers: list[CopyAnswers] = await asyncio.gather(
            *(
                self._in_region(
                    "region_answers",
                    AnswersInput(**self._task(s), labels=sample, k=bound.k),
                    CopyAnswers,
                    s,
                )
                for s in everyone
            )
        )
        reports = []
        for state, digest, answer in zip(others, digests[1:], answers[1:], strict=True):
            cells = differing_cells(digests[0], digest)
            entries = (CopyEntries(), CopyEntries())
            if cells:
                a, b = await asyncio.gather(
                    *(
                        self._in_region(
                            "region_entries",
                            EntriesInput(**self._task(s), cells=cells),
                            CopyEntries,
                            s,
                        )
                        for s in (ref, state)
                    )
                )
                entries = (a, b)
            report = compare_copies(
                bound,
                reference=ref.region or "-",
                region=state.region or "-",
                tenant=state.tenant,
                digests=(digests[0], digest),
                entries=entries,
                answers=(answers[0], answer),
                cells=cells,
            )
            self._status.divergence.append(report)
            await self._record("region.divergence", "vecmigrate", report.model_dump(mode="json"))
            reports.append(report)
        return reports

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
        stop = self._aborted or self._rollback_all
        by = ""
        if stop is not None and final != Phase.COMPLETED:
            by = f" by {stop.operator}" + (f" ({stop.reason})" if stop.reason else "")
        names = f"{len(done)} of {len(self._status.regions)} children"
        self._status.outcome = OUTCOMES[final].sentence.format(
            by=by, source=self._spec.source.name, target=f"{self._spec.target.name} in {names}"
        )
        self._status.paused = False
        self._status.blocked_reason = ""
        await self._phase(final)
