"""What every phase of a migration works with: its state, its ledger, routing changes, steps
that pause on failure, pauses and interrupts, and the operator's signals judged where it stands.

The phases themselves are the other modules of this package, one box of the lifecycle each;
:class:`~vecmigrate.workflows.migration.MigrationWorkflow` puts them together.

Deterministic: temporalio, the standard library and vecmigrate's pure models only.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    WorkflowAlreadyStartedError,
)

from vecmigrate.workflows.calls import append_ledger, event_key, long_call, short_call
from vecmigrate.workflows.search import SEARCH_ATTRIBUTES, updates
from vecmigrate.workflows.signals import ROLES, RULES, OperatorSignals

with workflow.unsafe.imports_passed_through():
    from vecmigrate.model.access import AccessPolicy
    from vecmigrate.model.costs import StorageSnapshot
    from vecmigrate.model.lifecycle import (
        LIFECYCLE,
        OUTCOMES,
        TERMINAL,
        Message,
        Phase,
        Ruling,
        Situation,
        check_transition,
        describe,
        figures,
        rule,
    )
    from vecmigrate.model.messages import Interrupt, OperatorMessage
    from vecmigrate.model.regions import RegionUpdate
    from vecmigrate.model.routing import RoutingView
    from vecmigrate.model.search import current_details, search_values
    from vecmigrate.model.status import (
        CaptureStatus,
        MigrationInput,
        MigrationStatus,
        OperatorAction,
    )
    from vecmigrate.model.tasks import (
        AccessPolicyInput,
        CaptureInput,
        CaptureResult,
        ControlInput,
        DataStateInput,
        LedgerAck,
        LedgerInput,
        LogHeadInput,
        RetentionInput,
        RoutingChangeInput,
        RoutingStepInput,
        RoutingStepResult,
        ShardRef,
        StableNameInput,
        StableNameSwitch,
        StorageInput,
        VersionStateInput,
        VersionStateStep,
        selected_hash_shards,
    )

T = TypeVar("T")

# Patches of this release: the storage figures a migration records at its peak and once
# finalized, and the retention timer a spec's retention starts for the version it leaves.
STORAGE_FIGURES = "storage-figures"
RETENTION_TIMER = "retention-timer"
# Writes made to an adopted PostgreSQL source with plain SQL, captured by a trigger.
PG_CAPTURE = "pg-capture"
# An abort after a cut-over leaves the stable name where reads are, and drains the capture.
ABORT_NAME = "abort-stable-name"
# A routing change, its ledger entry and the version states that go with it in one task.
ROUTING_STEP = "routing-step"

# Continue as new before the history reaches this many events, less what draining the shard
# window may add (about a dozen events a shard).
HISTORY_LIMIT = 2_000
EVENTS_PER_SHARD_IN_FLIGHT = 12


class StopRequestedError(Exception):
    """An operator (or a gate's policy) asked to roll back or abort while a step was running."""


class HistoryFullError(Exception):
    """The history is long: carry the state into a new run at a point with nothing in flight."""


class MigrationCore(OperatorSignals):
    """The state of one migration and the moves its phases share."""

    def _setup(self, inp: MigrationInput) -> None:
        spec = inp.spec
        self._spec = spec
        self._spec_hash = spec.spec_hash()
        self._rules = workflow.patched(RULES)
        self._roles = workflow.patched(ROLES)
        self._policy = AccessPolicy()
        # Runs from before this release keep their history: no attribute changes there.
        self._searchable = workflow.patched(SEARCH_ATTRIBUTES)
        self._one_step = workflow.patched(ROUTING_STEP)
        self._strategy = LIFECYCLE[spec.strategy].variant(lambda _: self._rules)
        self._lock = asyncio.Lock()
        self._control_lock = asyncio.Lock()
        self._routing_lock = asyncio.Lock()
        # Set while the migration waits at a failed gate, with the adjustments it had then.
        self._held: int | None = None
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
        self._status.spec_hash = self._spec_hash
        self._by_shard = {p.shard: p for p in self._status.shards}
        # Outside every maintenance window (when the spec has windows): the heavy phases wait.
        windows = spec.windows
        self._window_closed = windows is not None and windows.open_until(workflow.now()) is None

    def _task(self) -> dict[str, Any]:
        """What names this migration's work in every data-plane task (never the spec itself)."""
        spec = self._spec
        return {
            "migration_id": spec.migration_id,
            "spec_hash": self._spec_hash,
            "tenant": spec.tenant,
            "region": spec.region,
        }

    def _scope(self) -> dict[str, Any]:
        """What names this migration's collection in its bookkeeping calls to the catalog
        (access policy, routing, version states, the change log, retention)."""
        spec = self._spec
        return {
            "migration_id": spec.migration_id,
            "tenant": spec.tenant,
            "collection": spec.collection,
            "region": spec.region,
        }

    # -- status -------------------------------------------------------------------------------

    def _phase_seconds(self) -> float:
        """Seconds spent in the current phase so far (earlier runs' and this one's), by
        workflow time."""
        spent = (workflow.now() - self._phase_began).total_seconds()
        return round(self._status.phase_seconds.get(self._status.phase, 0.0) + spent, 3)

    def _shown(self) -> MigrationStatus:
        """The status as the ``status`` query answers it."""
        current = self._status.model_copy(deep=True)
        if current.phase not in TERMINAL:
            current.phase_seconds[current.phase] = self._phase_seconds()
            current.as_of = workflow.now().isoformat()
        if not self._window_holds():
            current.window_until = current.window_note = ""
        if current.paused or self._window_holds():
            # A copy stops between batches when paused: it is not copying any more.
            for shard in current.shards:
                if shard.state == "copying":
                    shard.state = "paused"
        current.estimate()
        return current

    def _operators(self) -> list[OperatorAction]:
        return self._status.operators

    def _tenants_in_scope(self) -> list[str]:
        return [self._spec.tenant]

    def _collection(self) -> str:
        return self._spec.collection

    def _started_by(self) -> str:
        return self._status.started_by

    async def _load_policy(self) -> None:
        """Read the operator roles in force now (at the start of a run and at each phase, so a
        grant or a revocation takes effect within a phase); the answer is in the history."""
        if not self._roles:
            return
        self._policy = await short_call(
            "access_policy",
            AccessPolicyInput(**self._scope()),
            AccessPolicy,
            summary="operator roles in force",
        )

    def _phase_now(self) -> str:
        return str(self._status.phase)

    def _approver(self) -> str:
        return self._status.approved_by or next(
            (
                a.operator
                for a in reversed(self._status.operators)
                if a.action == "approve_cutover" and a.outcome == "applied"
            ),
            "vecmigrate",
        )

    def _approval_needed(self) -> bool:
        """Whether the cut-over waits for an approval: in manual mode, and (this release on)
        after an online cut-over was reversed, whatever the mode."""
        manual = self._spec.cutover.mode == "manual"
        return manual or (self._rules and self._status.cutovers > 0)

    def _cutover_wait_reason(self) -> str:
        if self._approval_needed() and not self._status.cutover_approved:
            return "waiting for approve_cutover"
        return ""

    # -- the operator's signals ---------------------------------------------------------------

    def _situation(self) -> Situation:
        st = self._status
        return Situation(
            phase=st.phase,
            paused=st.paused,
            stopping=self._interrupt is not None,
            gate_failed=self._held is not None,
            cutover_approved=st.cutover_approved,
            approval_needed=self._approval_needed(),
        )

    async def _ruling(self, message: Message, msg: OperatorMessage) -> Ruling:
        if msg.region is not None and msg.region != self._spec.region:
            return Ruling(
                False,
                f"this migration is in region {self._spec.region or 'none'}, not {msg.region}: "
                "send a region's rollback to its regional migration",
            )
        now = self._situation()
        if message == Message.RESUME and await self._gate_unchanged(msg):
            now = replace(now, gate_unchanged=True)
        return rule(self._strategy, message, now, preapprove=msg.preapprove)

    async def _gate_unchanged(self, msg: OperatorMessage) -> bool:
        """Held at a failed validation gate with nothing changed since its verdict: no new
        adjustment, no ``revalidate``, and the data as they were measured."""
        st = self._status
        if self._held is None or st.phase != Phase.VALIDATING or msg.revalidate:
            return False
        if len(st.gate_adjustments) != self._held or st.gates is None:
            return False
        now: str = await short_call(
            "data_state",
            DataStateInput(**self._task()),
            str,
            summary="has the data changed since the gate?",
        )
        return now == st.gates.data_state

    async def _apply(self, message: Message, msg: OperatorMessage, ruling: Ruling) -> None:
        st = self._status
        if message == Message.PAUSE:
            st.paused = True
            st.pause_reason = f"paused by {msg.operator}" + (
                f": {msg.reason}" if msg.reason else ""
            )
            await self._sync_control()  # running copies stop before their next batch
        elif message == Message.RESUME:
            st.paused = False
            st.pause_reason = ""
        elif message == Message.APPROVE_CUTOVER:
            st.cutover_approved = True
            st.approved_by = msg.operator
        elif self._interrupt is None:
            action = "rollback" if message == Message.ROLLBACK else "abort"
            self._interrupt = Interrupt(action=action, message=msg)

    async def _follow_up(self, message: Message, msg: OperatorMessage) -> None:
        if message == Message.RESUME:
            await self._sync_control()
            await self._report()

    def _refuse(self, message: Message, problem: str | None = None) -> None:
        """An update's validator: refuse ``message`` (which leaves no history) when its payload
        has a ``problem`` or it means nothing where the migration stands. Retrying the same
        message cannot help: the refusal is non-retryable."""
        denied = self._access(str(message))
        if denied is not None:
            problem = denied.reason
        if problem is None:
            ruling = rule(self._strategy, message, self._situation())
            problem = None if ruling.accepted else ruling.reason
        if problem is not None:
            raise ApplicationError(
                f"{message} refused: {problem}", type="MessageRefusedError", non_retryable=True
            )

    async def _sync_control(self) -> None:
        """Tell running copies the pause flag and throttle (they read it before every batch)."""
        async with self._control_lock:
            await short_call(
                "set_control",
                ControlInput(
                    migration_id=self._status.migration_id,
                    paused=self._status.paused or self._window_holds(),
                    max_vectors_per_second=self._status.max_vectors_per_second,
                    region=self._spec.region,
                ),
                summary="copies: "
                + ("pause" if self._status.paused else "run")
                + (
                    f", at most {self._status.max_vectors_per_second:,.0f} vectors/s"
                    if self._status.max_vectors_per_second
                    else ""
                ),
            )

    # -- ledger and parent --------------------------------------------------------------------

    async def _record(
        self, kind: str, actor: str, data: dict[str, Any], caller: str | None = None
    ) -> None:
        self._events += 1
        self._details()
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
                caller=caller,
            )
        )
        self._anchor(ack)

    def _details(self) -> None:
        """What the Web UI shows on the workflow's page: phase, progress, last gate, and why
        it waits (a query-time value, not an event: update it as often as it changes)."""
        workflow.set_current_details(current_details(self._status))

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
        interrupt = self._interrupt
        if st.phase in (Phase.ROLLING_BACK, Phase.ROLLED_BACK) and interrupt is not None:
            reason = interrupt.message.reason
        update = RegionUpdate(
            workflow_id=st.migration_id,
            phase=st.phase,
            paused=st.paused,
            reason=reason,
            copied=sum(p.copied for p in st.shards),
            total=sum(p.total for p in st.shards),
            cutovers=st.cutovers,
            gate_failed=interrupt is not None and interrupt.by_gate,
        )
        # A parent that has ended cannot hear it: the child goes on by itself.
        with contextlib.suppress(Exception):
            await workflow.get_external_workflow_handle(parent.workflow_id).signal(
                "region_update", update
            )

    # -- moving through the lifecycle ---------------------------------------------------------

    async def _enter(self, phase: Phase, actor: str = "vecmigrate") -> None:
        async with self._lock:
            st = self._status
            old = st.phase
            check_transition(self._strategy, old, phase)
            now = workflow.now()
            st.phase_seconds[old] = self._phase_seconds()
            self._phase_began = now
            st.phase = phase
            st.phase_started_at = now.isoformat()
            if phase in TERMINAL:
                self._settle(phase)
            else:
                total = sum(p.total for p in st.shards) or None
                st.doing = describe(self._strategy, phase, figures(self._spec, total))
            if self._rules:
                workflow.upsert_memo({"phase": str(phase)})
            if self._searchable:
                workflow.upsert_search_attributes(updates(search_values(self._spec, phase)))
        self._details()
        await self._record("phase", actor, {"from": old, "to": phase})
        await self._report()
        if phase not in TERMINAL:
            await self._load_policy()

    def _settle(self, phase: Phase) -> None:
        """An ended migration's status says how it ended, and nothing that no longer holds."""
        st = self._status
        stop = self._interrupt.message if self._interrupt is not None else None
        by = ""
        if stop is not None:
            by = f" by {stop.operator}" + (f" ({stop.reason})" if stop.reason else "")
        st.outcome = OUTCOMES[phase].sentence.format(
            by=by, source=self._spec.source.name, target=self._spec.target.name
        )
        if st.error:
            st.outcome += f"; the last error was: {st.error}"
        st.doing = ""
        st.paused = False
        st.pause_reason = st.blocked_reason = st.error = ""
        st.remedies = []

    async def _guarded(self, make: Callable[[], Awaitable[T]]) -> T:
        """Run a step; cancel it and raise `StopRequestedError` on a rollback or abort."""
        if self._interrupt is not None:
            raise StopRequestedError()
        task = asyncio.ensure_future(make())
        stop = asyncio.ensure_future(workflow.wait_condition(lambda: self._interrupt is not None))
        await workflow.wait([task, stop], return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            stop.cancel()
            return task.result()
        task.cancel()
        raise StopRequestedError()

    async def _wait_unpaused(self) -> None:
        if self._status.paused:
            await self._report()
        await workflow.wait_condition(
            lambda: (
                (not self._status.paused and not self._window_holds())
                or self._interrupt is not None
            )
        )
        if self._interrupt is not None:
            raise StopRequestedError()

    # -- maintenance windows ------------------------------------------------------------------

    def _window_holds(self) -> bool:
        """Whether the maintenance windows hold the current phase back now."""
        windows = self._spec.windows
        return windows is not None and self._window_closed and windows.holds(self._status.phase)

    async def _keep_windows(self) -> None:
        """Follow the spec's maintenance windows on durable timers: at each closing, running
        copies stop after their batch and no heavy work starts; at the next opening it goes
        on. Runs beside the lifecycle for as long as the run does."""
        windows = self._spec.windows
        assert windows is not None
        while True:
            now = workflow.now()
            closes = windows.open_until(now)
            opens = None if closes is not None else windows.next_opening(now)
            await self._window_changed(closes is None, opens)
            wake = closes or opens
            if wake is None:
                return  # no window opens again: the held phases wait for an operator's abort
            await workflow.sleep(max(timedelta(seconds=1), wake - now))

    async def _window_changed(self, closed: bool, opens: datetime | None) -> None:
        st = self._status
        until = opens.isoformat() if closed and opens is not None else ""
        if closed == self._window_closed and until == st.window_until:
            return
        self._window_closed = closed
        st.window_until = until
        if closed:
            note = f"until {until}" if until else "and no window opens again"
            st.window_note = (
                f"outside the maintenance window {note}: "
                + ", ".join(self._spec.windows.phases if self._spec.windows else ())
                + " wait on a durable timer"
            )
        else:
            st.window_note = ""
        await self._record(
            "window.closed" if closed else "window.opened",
            "vecmigrate",
            {"phase": str(st.phase), "until": until},
        )
        await self._sync_control()

    async def _step(self, name: str, make: Callable[[], Awaitable[T]]) -> T:
        """Run a step until it succeeds; a failure pauses for an operator, who may resume it.

        Temporal retries a step by its retry policy first (``status`` shows the attempts): the
        step fails here only when a retry cannot help or the attempts ran out.
        """
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

    async def _work(
        self, name: str, activity: str, arg: Any, result_type: type[T], timeout: timedelta
    ) -> T:
        """A long data-plane step (see :meth:`_step` and ``calls.long_call``)."""
        return await self._step(
            name,
            lambda: long_call(
                activity,
                arg,
                result_type,
                timeout=timeout,
                heartbeat_seconds=self._spec.heartbeat_seconds,
                summary=name,
            ),
        )

    def _history_full(self, window: int | None = None) -> bool:
        """Whether to continue as new, leaving room for ``window`` shard tasks to drain
        (``max_parallel_shards`` unless given)."""
        info = workflow.info()
        in_flight = window or self._spec.max_parallel_shards
        budget = HISTORY_LIMIT - EVENTS_PER_SHARD_IN_FLIGHT * in_flight
        return info.is_continue_as_new_suggested() or info.get_current_history_length() > budget

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
                    raise HistoryFullError()
                done, _ = await workflow.wait(list(running), return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    running.discard(task)
                    task.result()
        finally:
            for task in running:
                task.cancel()

    def _shards_not_in(self, states: set[str]) -> list[ShardRef]:
        """The shards whose state is one of ``states`` (their work is not done yet)."""
        return [s for s in self._shards if self._by_shard[s.index].state in states]

    # -- routing, version states, the change log ----------------------------------------------

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
        states: Sequence[tuple[str, str]] = (),
    ) -> None:
        """Set the whole routing row by compare-and-set (reads default to the source), record
        it, then set each ``(version, state)`` of ``states``.

        Changes are made one at a time, each against the generation the last one left. A run
        with the ``routing-step`` patch makes them all in one task; a run from before it, one
        task per write.
        """
        spec = self._spec
        async with self._routing_lock:
            routing = self._status.routing
            assert routing is not None
            self._events += 1
            change = RoutingChangeInput(
                **self._scope(),
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
            )
            if self._one_step:
                await self._routing_step(change, states)
                return
            view: RoutingView = await short_call(
                "change_routing", change, RoutingView, summary=f"routing: {reason}"[:200]
            )
            self._status.routing = view
        await self._record("routing.changed", operator, {"reason": reason, **view.model_dump()})
        for version, state in states:
            await self._set_state(version, state, operator)

    async def _routing_step(
        self, change: RoutingChangeInput, states: Sequence[tuple[str, str]]
    ) -> None:
        """The routing change, its entry and the states' in one task, each entry under the
        event key the separate calls would have used."""
        mid = self._status.migration_id
        self._events += 1
        key = event_key(mid, self._events)
        steps: list[VersionStateStep] = []
        for version, state in states:
            self._events += 1
            entry = event_key(mid, self._events)
            steps.append(VersionStateStep(version=version, state=state, event_key=entry))
        self._details()
        summary = f"routing: {change.reason}"
        if steps:  # the states after at most 150 characters of the reason
            summary = f"{summary[:150]}; " + ", ".join(f"{s.version}: {s.state}" for s in steps)
        result: RoutingStepResult = await short_call(
            "routing_step",
            RoutingStepInput(**change.model_dump(), event_key=key, states=steps),
            RoutingStepResult,
            summary=summary[:200],
        )
        self._status.routing = result.routing
        for ack in result.acks:
            self._anchor(ack)

    async def _point_stable_name(
        self, side: str, operator: str, reason: str, *, create: bool = True
    ) -> bool:
        """Point the spec's stable name (an alias, a view applications query directly) at the
        ``side`` version, and record the switch in the ledger: who, from what, to what. Whether
        it moved.

        Only a spec that sets ``cutover.stable_name`` calls it, so the histories of every other
        run replay unchanged.
        """
        spec = self._spec
        name = spec.cutover.stable_name
        assert name is not None
        version = spec.target.name if side == "target" else spec.source.name
        switch: StableNameSwitch = await short_call(
            "point_stable_name",
            StableNameInput(**self._task(), side=side, operator=operator, create=create),
            StableNameSwitch,
            summary=f"stable name {name} -> {version}",
        )
        if switch.changed:
            await self._record(
                "stable_name.switched",
                operator,
                {
                    "name": name,
                    "kind": switch.kind,
                    "version": version,
                    "from": switch.before,
                    "to": switch.after,
                    "reason": reason,
                },
            )
        return switch.changed

    async def _set_state(self, version: str, state: str, operator: str) -> None:
        await short_call(
            "set_version_state",
            VersionStateInput(**self._scope(), version=version, state=state, operator=operator),
            summary=f"version {version}: {state}",
        )
        await self._record("version.state", operator, {"version": version, "state": state})

    async def _log_head(self) -> int:
        head: int = await short_call(
            "log_head",
            LogHeadInput(**self._scope()),
            int,
            summary="change-log head",
        )
        return head

    # -- storage and retention ----------------------------------------------------------------

    async def _storage(self, stage: str) -> None:
        """Measure both versions and the change log at ``stage`` into the ledger (once
        finalized, the log and artifacts nothing needs go first). Runs started before this
        release record none."""
        if not workflow.patched(STORAGE_FIGURES):
            return
        snapshot: StorageSnapshot = await short_call(
            "record_storage",
            StorageInput(**self._task(), stage=stage),
            StorageSnapshot,
            summary=f"storage: {stage}",
        )
        self._status.ledger_entries += 1  # the activity wrote "storage"
        self._status.storage_bytes[stage] = snapshot.total

    async def _retain(self, version: str, left_as: str, seconds: float | None) -> None:
        """Start the retention timer of a version this migration leaves (abandoned by the
        migration, so it outlives it)."""
        if seconds is None or not workflow.patched(RETENTION_TIMER):
            return
        spec = self._spec
        child = f"retention.{spec.migration_id}.{version}"
        # Already started (a retried command of this run): the timer runs once.
        with contextlib.suppress(WorkflowAlreadyStartedError):
            await workflow.start_child_workflow(
                "RetentionWorkflow",
                RetentionInput(
                    **self._scope(), version=version, left_as=left_as, keep_seconds=seconds
                ),
                id=child,
                task_queue=workflow.info().task_queue,
                parent_close_policy=workflow.ParentClosePolicy.ABANDON,
            )
        await self._record(
            "retention.started",
            "vecmigrate",
            {"version": version, "left_as": left_as, "keep_seconds": seconds, "timer": child},
        )

    # -- writes captured from the source table ----------------------------------------------

    async def _install_capture(self) -> None:
        """Capture the writes made to the source table with plain SQL, from before the snapshot
        (only a spec that captures, in a run that has this release's patch)."""
        if not self._spec.captures_writes or not workflow.patched(PG_CAPTURE):
            return
        # Set first: a rollback during the install still removes what it made.
        self._status.capture = CaptureStatus()
        result = await self._work(
            "install change capture",
            "capture_install",
            CaptureInput(**self._task()),
            CaptureResult,
            timedelta(minutes=10),
        )
        self._captured(result)
        self._status.capture.installed = True
        await self._record(
            "capture.installed",
            "vecmigrate",
            {"table": result.table, "created_at": result.created_at},
        )

    def _captured(self, result: CaptureResult) -> None:
        cap = self._status.capture
        assert cap is not None
        cap.table = result.table or cap.table
        cap.captured, cap.lag, cap.bytes = result.captured, result.lag, result.bytes
        cap.created_at = result.created_at or cap.created_at
        cap.removed = result.removed
        self._details()

    def _capturing(self) -> bool:
        cap = self._status.capture
        return cap is not None and not cap.removed

    async def _replay_captured(self, name: str) -> None:
        """Replay the captured writes onto the target until at most ``max_catchup_lag`` are
        left after a pass that reached the newest."""
        if not self._capturing():
            return
        max_lag = self._spec.online.max_catchup_lag
        applied = 0
        while True:
            result = await self._work(
                name,
                "capture_replay",
                CaptureInput(**self._task(), seconds=60.0),
                CaptureResult,
                timedelta(minutes=30),
            )
            self._captured(result)
            applied += result.applied
            if result.drained and result.lag <= max_lag:
                break
        await self._record(
            "capture.replayed",
            "vecmigrate",
            {"step": name, "applied": applied, "lag": result.lag, "captured": result.captured},
        )

    async def _remove_capture(self, replay: bool, *, ending: bool = False) -> None:
        """Stop capturing and drop the change table (after a last replay when ``replay``).

        A rollback or an abort (``ending``, or no replay) goes on when the removal fails: the
        status then says the change table outlived the migration (see ``CaptureStatus.alert``).
        """
        if not self._capturing():
            return
        arg = CaptureInput(**self._task(), remove=True, replay=replay)
        name = "remove change capture" + (" after a last replay" if replay else "")
        if replay and not ending:
            result = await self._work(
                name, "capture_replay", arg, CaptureResult, timedelta(hours=1)
            )
        else:
            try:
                result = await long_call(
                    "capture_replay",
                    arg,
                    CaptureResult,
                    timeout=timedelta(hours=1) if replay else timedelta(minutes=10),
                    heartbeat_seconds=self._spec.heartbeat_seconds,
                    summary=name,
                )
            except ActivityError as err:
                self._status.error = f"{name} failed: {err.cause or err}"
                await self._record("capture.left", "vecmigrate", {"error": self._status.error})
                return
        self._captured(result)
        await self._record(
            "capture.removed", "vecmigrate", {"table": result.table, "replayed": replay}
        )

    # -- work one box hands to another --------------------------------------------------------

    async def _build(self, shard: ShardRef) -> None:
        """Build one shard's index (BUILDING_INDEX, or during the backfill)."""
        raise NotImplementedError

    async def _index_position(self) -> int:
        """The change-log position the target's index covers (taken once)."""
        raise NotImplementedError

    async def _reconcile_gate(self) -> None:
        """Compare the target with the source record by record, repair, and judge (VALIDATING's
        module holds the gates)."""
        raise NotImplementedError
