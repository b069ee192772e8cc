"""AWAITING_CUTOVER, CUT_OVER, BAKING and FINALIZING: wait for the approval (or go on, when the
cut-over is automatic), switch reads by one compare-and-set on the routing row, keep the source
current while the target bakes, then stop writing the source. An online rollback after the
cut-over moves reads back (dual-write kept the source current) and waits for a new approval.

Deterministic: temporalio, the standard library and vecmigrate's pure models only.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from temporalio import workflow

from vecmigrate.workflows.core import MigrationCore

with workflow.unsafe.imports_passed_through():
    from vecmigrate.model.lifecycle import Phase
    from vecmigrate.model.messages import OperatorMessage
    from vecmigrate.model.status import MigrationInput


class CuttingOver(MigrationCore):
    """The AWAITING_CUTOVER, CUT_OVER, BAKING and FINALIZING boxes."""

    async def _await_cutover(self, inp: MigrationInput) -> None:
        self._status.blocked_reason = self._cutover_wait_reason()
        await self._guarded(
            lambda: workflow.wait_condition(
                lambda: (
                    not self._status.paused
                    and (not self._approval_needed() or self._status.cutover_approved)
                )
            )
        )
        self._status.blocked_reason = ""

    async def _cut_over(self, inp: MigrationInput) -> None:
        spec = self._spec
        approver = self._approver()
        await self._replay_captured("replay captured writes before the cut-over")
        # The source stays current through the bake, so a rollback loses no write; a run of the
        # offline strategy started before it baked switches writes with reads.
        keeps_source = self._strategy.has(Phase.BAKING)
        paused_writes = self._strategy.writes == "paused"
        if spec.cutover.stable_name is not None:
            # Applications that query the engine by the stable name switch first, in one
            # atomic step; a failure pauses here (resume retries it) before routing moves.
            await self._step(
                "stable name",
                lambda: self._point_stable_name("target", approver, "cut-over"),
            )
        await self._set_routing(
            read_version=spec.target.name,
            read_index=self._status.index_version,
            write_versions=[spec.target.name, spec.source.name]
            if keeps_source
            else [spec.target.name],
            operator=approver,
            reason="cut-over: reads move to the target"
            + ("; the source stays current for rollback" if keeps_source else "")
            + ("; writes resume" if paused_writes else ""),
            key="cutover",
            states=[
                (spec.target.name, "serving"),
                (spec.source.name, "standby" if keeps_source else "retained"),
            ],
        )
        self._status.cutovers += 1
        self._status.ramp_percent = 0.0

    async def _bake(self, inp: MigrationInput) -> None:
        began = datetime.fromisoformat(self._status.phase_started_at)
        bake = timedelta(seconds=self._spec.cutover.bake_seconds)
        # While writes to the source table are captured, the target that now serves reads is
        # kept current through the bake: a replay every 30 s (or a 50th of the bake).
        every = max(timedelta(seconds=30), bake / 50)
        while self._capturing():
            left = bake - (workflow.now() - began)
            if left <= timedelta(0):
                break
            await self._guarded(lambda: workflow.sleep(min(left, every)))  # noqa: B023
            await self._replay_captured("replay captured writes during the bake")
        left = bake - (workflow.now() - began)
        if left > timedelta(0):
            await self._guarded(lambda: workflow.sleep(left))
        await self._wait_unpaused()

    async def _finalize(self, inp: MigrationInput) -> None:
        spec = self._spec
        # Capture stops, what it holds is replayed, and the trigger and change table go.
        await self._remove_capture(replay=True)
        if not self._strategy.switches:
            # shadow_only: reads never moved; the target is kept, no longer written.
            await self._set_routing(
                operator="vecmigrate",
                reason="finalize: shadow reads and dual-write off; the target is retained",
                key="finalize",
                states=[(spec.target.name, "retained")],
            )
            await self._storage("finalized")
            return
        await self._set_routing(
            read_version=spec.target.name,
            read_index=self._status.index_version,
            write_versions=[spec.target.name],
            operator="vecmigrate",
            reason="finalize: the source is retained but no longer written",
            key="finalize",
            states=[(spec.source.name, "retained")],
        )
        await self._storage("finalized")
        keep = spec.retention.retired_seconds if spec.retention else None
        await self._retain(spec.source.name, "retired", keep)

    def _reversible(self) -> bool:
        """A rollback where the table sends it back to AWAITING_CUTOVER (online, reading from
        the target): reverse the traffic (the old version is current), keep the new one."""
        interrupt = self._interrupt
        phase = self._status.phase
        return (
            interrupt is not None
            and interrupt.action == "rollback"
            and self._strategy.has(phase)
            and self._strategy.step(phase).rollback == Phase.AWAITING_CUTOVER
        )

    async def _reverse(self, msg: OperatorMessage) -> None:
        """Reads back to the source, which dual-write kept current; dual-write stays on and the
        migration waits for a new approval."""
        self._interrupt = None
        st = self._status
        st.paused = False
        st.cutover_approved = False
        st.approved_by = ""
        st.ramp_percent = 0.0
        spec = self._spec
        if spec.cutover.stable_name is not None:
            reason = f"rollback after cut-over: {msg.reason or 'requested'}"
            await self._step(
                "stable name",
                lambda: self._point_stable_name("source", msg.operator, reason, create=False),
            )
        await self._set_routing(
            read_version=spec.source.name,
            read_index=self._source_index,
            write_versions=[spec.source.name, spec.target.name],
            candidate_version=spec.target.name,
            candidate_index=st.index_version,
            shadow_percent=spec.online.shadow.percent,
            operator=msg.operator,
            reason=f"rollback after cut-over: {msg.reason or 'requested'}; dual-write stays on",
            key="reverse",
            states=[(spec.source.name, "serving"), (spec.target.name, "building")],
        )
        st.blocked_reason = self._cutover_wait_reason()
        await self._enter(Phase.AWAITING_CUTOVER, actor=msg.operator)
