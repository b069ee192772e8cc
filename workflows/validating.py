"""VALIDATING: profile every shard, measure retrieval and distribution, and judge the figures
against the gates. A failed gate pauses for an operator (or rolls back, as the spec says); an
approver can then override a gate or change its threshold (``set_gate``), which judges the
figures already measured again, and a resume measures again only when the data changed.

Deterministic: temporalio, the standard library and vecmigrate's pure models only.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow

from vecmigrate.workflows.core import MigrationCore, StopRequestedError

with workflow.unsafe.imports_passed_through():
    from vecmigrate.model.gates import (
        GateAdjustment,
        GateReport,
        GateVerdict,
        ReconcileReport,
        ShardCheck,
        ShardReconcile,
        adjust,
        remedies,
    )
    from vecmigrate.model.lifecycle import Message, Phase
    from vecmigrate.model.messages import GateRequest, Interrupt, OperatorMessage
    from vecmigrate.model.status import MigrationInput
    from vecmigrate.model.tasks import (
        ReconcileShardInput,
        ShardRef,
        ValidateInput,
        ValidateResult,
        ValidateShardInput,
    )


class Validating(MigrationCore):
    """The VALIDATING box, and what every gate shares (failing, adjusting, holding)."""

    @workflow.update(name="set_gate")
    async def set_gate(self, req: GateRequest) -> list[str]:
        """Override a failed gate with a reason, or change a gate's threshold.

        The verdicts are judged again on the figures already measured; the migration stays
        paused until a resume. Returns the gates still failing (none: resume to go on).
        """
        adjustment = GateAdjustment(
            gate=req.gate,
            threshold=req.threshold,
            override=req.override,
            operator=req.operator,
            reason=req.reason,
            at=workflow.now().isoformat(),
        )
        self._status.gate_adjustments.append(adjustment)
        failing = self._judge_again()
        await self._note_update(
            Message.SET_GATE,
            req.operator,
            req.reason,
            {"gate": req.gate, "threshold": req.threshold, "override": req.override},
        )
        return failing

    @set_gate.validator
    def _check_gate(self, req: GateRequest) -> None:
        problem = req.problem()
        names = [v.name for v in self._verdicts() if v.judged]
        if problem is None and self._held is not None and req.gate not in names:
            problem = f"no gate named {req.gate!r} was judged here; the gates are {names}"
        self._refuse(Message.SET_GATE, problem)

    def _verdicts(self) -> list[GateVerdict]:
        """The verdicts of the gate the migration stands at."""
        st = self._status
        if st.phase == Phase.VALIDATING:
            return st.gates.verdicts if st.gates else []
        return st.shadow[-1].verdicts if st.shadow else []

    def _judge_again(self) -> list[str]:
        """Apply the adjustments to the held gate's verdicts; returns the failures left."""
        st = self._status
        if st.phase == Phase.VALIDATING and st.gates is not None:
            st.gates = st.gates.adjusted(st.gate_adjustments)
            verdicts = st.gates.verdicts
        elif st.shadow:
            shadow = st.shadow[-1]
            verdicts = adjust(shadow.verdicts, st.gate_adjustments)
            shadow.verdicts = verdicts
            shadow.failures = [v.line() for v in verdicts if not v.passed]
            shadow.passed = not shadow.failures
        else:
            return []
        failing = [v.line() for v in verdicts if not v.passed]
        st.remedies = remedies(verdicts)
        if not failing:
            st.pause_reason = "the gate passes with the adjustments: resume to go on"
        return failing

    def _gate_failed(self, step: str, failures: list[str], policy: str) -> None:
        """A failed gate: roll back (``policy``) or pause, saying what would change it."""
        st = self._status
        reason = f"{step} gate failed: " + "; ".join(failures)
        if policy == "rollback":
            self._interrupt = Interrupt(
                action="rollback",
                message=OperatorMessage(operator="vecmigrate", reason=reason),
                by_gate=True,
            )
            raise StopRequestedError()
        st.paused = True
        if not self._rules:
            again = "validate" if step == "validation" else "measure"
            st.pause_reason = f"{reason}; resume to {again} again, or roll back"
        else:
            st.pause_reason = (
                f"{reason}; set a threshold or override it (set_gate), or roll back"
                + ("" if step == "validation" else "; a resume measures new traffic")
            )

    async def _hold(self) -> bool:
        """Wait at a failed gate for a resume (or a rollback); whether an approver adjusted a
        gate meanwhile (then the figures are judged again, not measured again)."""
        seen = len(self._status.gate_adjustments)
        self._held = seen
        try:
            await self._wait_unpaused()
        finally:
            self._held = None
        return len(self._status.gate_adjustments) > seen

    async def _validating(self, inp: MigrationInput) -> None:
        st = self._status
        index_id = st.index_version
        assert index_id is not None
        while True:
            report = (await self._validate(self._source_index, index_id)).adjusted(
                st.gate_adjustments
            )
            st.gates = report
            await self._record("gate", "vecmigrate", report.model_dump(mode="json"))
            while not report.passed:
                failures = report.failures()
                st.blocked_reason = "gate failed: " + "; ".join(failures) + "; cut-over is blocked"
                st.remedies = remedies(report.verdicts)
                self._gate_failed("validation", failures, self._spec.gates.on_failure)
                if not await self._hold():
                    break
                report = st.gates
                await self._record("gate", "vecmigrate", report.model_dump(mode="json"))
            if report.passed:
                await self._storage("peak")
                st.remedies = []
                # Set before the phase changes, so no status shows AWAITING_CUTOVER without why.
                waits = self._strategy.after(Phase.VALIDATING) == Phase.AWAITING_CUTOVER
                st.blocked_reason = self._cutover_wait_reason() if waits else ""
                return
            # Measured again: a new round profiles every shard again.
            st.validation_round += 1
            for progress in st.shards:
                progress.state = "indexed"

    async def _validate(self, source_index: str | None, index_id: str) -> GateReport:
        """Profile every shard (one activity each, so the work resumes shard by shard), then
        measure retrieval and distribution and judge everything against the gates."""
        round_ = self._status.validation_round

        async def check_one(shard: ShardRef) -> None:
            progress = self._by_shard[shard.index]
            progress.state = "validating"
            await self._work(
                f"validate shard {shard.index}",
                "validate_shard",
                ValidateShardInput(
                    **self._task(),
                    shard=shard,
                    round=round_,
                    volatile_after=self._status.watermark,
                ),
                ShardCheck,
                timedelta(hours=2),
            )
            progress.state = "validated"

        await self._for_each_shard(self._shards_not_in({"indexed", "validating"}), check_one)
        result = await self._work(
            "validate",
            "validate",
            # The shard profiles come from the shard journal, not through this payload.
            ValidateInput(
                **self._task(), source_index=source_index, target_index=index_id, round=round_
            ),
            ValidateResult,
            timedelta(seconds=self._spec.gates.time_budget_seconds * 2),
        )
        return result.report

    async def _reconcile_gate(self) -> None:
        """Compare every shard of the target with the source record by record (ids, vectors
        and payload), repair what differs, and compare it again: the gate passes when that
        second pass finds nothing. A failed gate pauses (or rolls back, as the spec's
        ``gates.on_failure`` says); a resume compares every shard again.

        The report keeps the shards compared so far, so a run continued as new goes on with
        the rest; a shard repaired after its index was built is built again.
        """
        st = self._status
        if st.reconcile is not None and st.reconcile.done and st.reconcile.passed:
            return
        while True:
            if st.reconcile is None or st.reconcile.done:
                st.reconcile = ReconcileReport()
            compared = set(st.reconcile.compared)
            await self._for_each_shard(
                [s for s in self._shards if s.index not in compared], self._reconcile_shard
            )
            report = st.reconcile
            report.finish()
            await self._record("reconcile", "vecmigrate", report.model_dump(mode="json"))
            if report.passed:
                st.blocked_reason = ""
                return
            failures = report.failures()
            st.blocked_reason = "reconcile failed: " + "; ".join(failures)
            self._gate_failed("reconcile", failures, self._spec.gates.on_failure)
            st.pause_reason = (
                f"reconcile gate failed: {'; '.join(failures)}; resume to compare and repair "
                "again, or roll back"
            )
            await self._hold()

    async def _reconcile_shard(self, shard: ShardRef) -> None:
        st = self._status
        rate = st.max_vectors_per_second
        share = None if rate is None else rate / max(1, self._spec.max_parallel_shards)
        result = await self._work(
            f"reconcile shard {shard.index}",
            "reconcile_shard",
            ReconcileShardInput(
                **self._task(),
                shard=shard,
                max_records_per_second=share,
                from_stream=True,
                volatile_after=st.watermark,
            ),
            ShardReconcile,
            timedelta(hours=12),
        )
        assert st.reconcile is not None
        st.reconcile.add(result)
        progress = self._by_shard[shard.index]
        if result.repaired.total() and progress.state == "indexed":
            progress.state = "copied"  # built during the copy: built again
        self._details()
