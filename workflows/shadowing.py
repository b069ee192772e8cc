"""SHADOWING and RAMPING (online): mirror a share of live reads to the target and compare, then
move a canary share of reads to it step by step, each step held and judged on its shadow pairs.

Deterministic: temporalio, the standard library and vecmigrate's pure models only.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow

from vecmigrate.workflows.calls import long_call, short_call
from vecmigrate.workflows.validating import Validating

with workflow.unsafe.imports_passed_through():
    from vecmigrate.model.gates import (
        PAIRS_STRETCH,
        ShadowFigures,
        pairs_arrive_in_time,
        remedies,
        shadow_verdicts,
    )
    from vecmigrate.model.lifecycle import Message
    from vecmigrate.model.messages import RampRequest
    from vecmigrate.model.status import MigrationInput
    from vecmigrate.model.tasks import ShadowInput, ShadowResult
    from vecmigrate.model.tuning import TuningInput, TuningResult


# The patch after which a step whose hold ended short of the shadow pairs its gate needs goes on
# collecting them for a while before it is judged (runs recorded before it judged at once).
PAIRS_WAIT = "shadow-waits-for-pairs"
# The patch after which such a step, still short when that wait ends, goes on collecting while
# the pairs' rate says the rest come within PAIRS_STRETCH times the wait (runs recorded before
# it judged when the first wait ended).
PAIRS_RATE = "shadow-waits-at-pair-rate"


class Shadowing(Validating):
    """The SHADOWING and RAMPING boxes."""

    @workflow.update(name="set_ramp")
    async def set_ramp(self, req: RampRequest) -> float:
        """Set the share of reads the new version serves now (online migrations).

        The ramp then goes on with its steps above this share; 0 sends every read back to the
        old version. 100 is the cut-over: approve it instead.
        """
        self._status.ramp_percent = req.percent
        await self._note_update(
            Message.SET_RAMP, req.operator, req.reason, {"percent": req.percent}
        )
        await self._route_candidate(req.operator, f"ramp set to {req.percent}% by {req.operator}")
        return self._status.ramp_percent

    @set_ramp.validator
    def _check_ramp(self, req: RampRequest) -> None:
        self._refuse(Message.SET_RAMP, req.problem())

    async def _shadowing(self, inp: MigrationInput) -> None:
        spec = self._spec
        # Only with ``online.tuning`` set: recorded histories without it replay unchanged.
        tuning = spec.online.tuning is not None and self._status.tuning is None
        if tuning:
            await short_call(
                "tuning_start",
                TuningInput(**self._task(), index_id=self._status.index_version),
                summary="tuning: try the candidates on mirrored reads",
            )
        await self._route_candidate("vecmigrate", "shadow reads on the new version")
        settle = timedelta(seconds=spec.online.settle_seconds)
        await self._guarded(lambda: workflow.sleep(settle))
        await self._shadow_gate("shadow", timedelta(seconds=spec.online.shadow.seconds))
        if tuning:
            await self._tune()

    async def _tune(self) -> None:
        """Judge the candidates on the mirrored reads and serve the target with the cheapest
        that meets the gates (routers take it with their next plan: the ramp's, then the
        cut-over's); none meeting them leaves the index's own value, which the shadow gate
        just judged, and says so."""
        spec = self._spec
        result: TuningResult = await long_call(
            "tuning_choose",
            TuningInput(**self._task(), index_id=self._status.index_version),
            TuningResult,
            timeout=timedelta(hours=1),
            heartbeat_seconds=spec.heartbeat_seconds,
            summary="tuning: judge the candidates against exact search",
        )
        self._status.tuning = result
        await self._record("tuning.chosen", "vecmigrate", result.model_dump(mode="json"))

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
            summary="shadow-read figures",
        )
        return result

    async def _more_pairs(
        self, step: str, mark: int, hold: timedelta, figures: ShadowFigures
    ) -> ShadowFigures:
        """The hold ended with fewer shadow pairs than the gate needs (light traffic, a router
        that refreshed its routing late, a latency budget that cut the share of reads mirrored):
        too few pairs is missing evidence, not a breach, so collect for up to
        ``max(hold, 10 s)`` more, looking every ``max(1 s, hold / 4)``. Still short then, go on
        while the pairs' rate since the hold began says the rest come within
        ``PAIRS_STRETCH`` times that wait in all. Return the figures as soon as there are
        enough, else as they are when the wait ends (the gate fails on them as before)."""
        need = self._spec.online.shadow.min_samples
        budget = max(hold, timedelta(seconds=10))
        limit = budget * PAIRS_STRETCH if workflow.patched(PAIRS_RATE) else budget
        poll = max(timedelta(seconds=1), hold / 4)
        waited = timedelta(0)
        while figures.samples < need and waited < limit:
            left = limit - waited
            if waited >= budget:
                watched = (hold + waited).total_seconds()
                if not pairs_arrive_in_time(need, figures.samples, watched, left.total_seconds()):
                    break
                rate = 60 * figures.samples / watched
                self._status.blocked_reason = (
                    f"{step}: {figures.samples} of {need} shadow pairs, "
                    f"{rate:.3g} a minute; collecting for up to {left.total_seconds():g} s more"
                )
            else:
                self._status.blocked_reason = (
                    f"{step}: {figures.samples} of {need} shadow pairs when the hold ended; "
                    f"collecting for up to {(budget - waited).total_seconds():g} s more"
                )
            await self._guarded(lambda: workflow.sleep(poll))
            waited += poll
            figures = (await self._shadow_result(mark)).figures
        return figures

    async def _shadow_gate(self, step: str, hold: timedelta) -> None:
        """Hold the current routing for ``hold``, then judge the shadow pairs it produced.

        A breach pauses for an operator or rolls back, as ``online.on_breach`` says. A resume
        measures again (the traffic since is new data); an adjustment judges the same pairs
        again.
        """
        st = self._status
        policy = self._spec.online.shadow
        while True:
            mark = (await self._shadow_result(1 << 62)).last_id
            await self._guarded(lambda: workflow.sleep(hold))
            figures = (await self._shadow_result(mark)).figures
            if figures.samples < policy.min_samples and workflow.patched(PAIRS_WAIT):
                figures = await self._more_pairs(step, mark, hold, figures)
            figures.step = step
            st.shadow.append(figures)
            while True:
                figures.verdicts = shadow_verdicts(figures, policy, st.gate_adjustments)
                figures.failures = [v.line() for v in figures.verdicts if not v.passed]
                figures.passed = not figures.failures
                await self._record("shadow.gate", "vecmigrate", figures.model_dump(mode="json"))
                if figures.passed:
                    st.blocked_reason = ""
                    st.remedies = []
                    return
                st.blocked_reason = f"{step} gate failed: " + "; ".join(figures.failures)
                st.remedies = remedies(figures.verdicts)
                self._gate_failed(step, figures.failures, self._spec.online.on_breach)
                if not await self._hold():
                    break
