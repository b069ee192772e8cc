"""One firing of a scheduled migration: what a Temporal Schedule's action starts.

Temporal appends the firing time to the action's workflow id, so a firing cannot be the
migration itself (vecmigrate treats a workflow id as a migration id). The firing resolves what
it migrates against the catalog (an activity: the serving version, a fresh target version name,
the preconditions), then runs that migration as a child whose id is its migration id, and waits
for it: with the schedule's ``skip`` overlap policy, a firing due while a migration still runs is
skipped. With nothing to do, or a spec that fails its preconditions, it ends with the reason and
starts nothing. The ``firing`` query (and the ``migration_id`` memo) name the migration.

The migration is abandoned, not cancelled, when the firing is terminated: a migration stops only
by its own signals. A firing cancelled (the ``cancel_other`` overlap policy) aborts its migration
where it stands.

Deterministic: temporalio, the standard library and vecmigrate's pure models only.
"""

from __future__ import annotations

import asyncio
from typing import Any

from temporalio import workflow
from temporalio.common import SearchAttributeKey
from temporalio.exceptions import ApplicationError, ChildWorkflowError

from vecmigrate.workflows.calls import short_call

with workflow.unsafe.imports_passed_through():
    from vecmigrate.model.lifecycle import OUTCOME_ERRORS
    from vecmigrate.model.messages import OperatorMessage
    from vecmigrate.model.regions import RegionUpdate
    from vecmigrate.model.schedule import Firing, FiringInput, FiringResult, ResolveFiringInput
    from vecmigrate.model.spec import MigrationSpec
    from vecmigrate.model.status import MigrationInput, MigrationStatus

# Set by Temporal on every workflow a schedule starts: the time the firing was due.
SCHEDULED_AT = SearchAttributeKey.for_datetime("TemporalScheduledStartTime")


@workflow.defn(name="ScheduledMigrationWorkflow")
class ScheduledMigrationWorkflow:
    """One firing of a schedule (see the module's docstring)."""

    @workflow.init
    def __init__(self, inp: FiringInput) -> None:
        fired_at = workflow.info().typed_search_attributes.get(SCHEDULED_AT)
        self._fired_at = fired_at or workflow.info().start_time
        self._result = FiringResult(
            schedule_id=inp.schedule_id, fired_at=self._fired_at.isoformat()
        )

    @workflow.query(name="firing")
    def firing(self) -> FiringResult:
        """What this firing resolved to, and its migration's phase."""
        return self._result

    @workflow.signal(name="region_update")
    def region_update(self, update: RegionUpdate) -> None:
        """The migration's phase, as every child migration reports it to its parent."""
        self._result.phase = str(update.phase)

    @workflow.run
    async def run(self, inp: FiringInput) -> FiringResult:
        info = workflow.info()
        resolved: Firing = await short_call(
            "resolve_firing",
            ResolveFiringInput(
                schedule_id=inp.schedule_id,
                spec_hash=inp.spec_hash,
                fired_at=self._fired_at.isoformat(),
                firing_id=info.workflow_id,
                requested_by=inp.requested_by,
            ),
            Firing,
            summary="what this firing migrates",
        )
        result = self._result
        result.outcome = resolved.outcome
        result.reason = resolved.reason
        result.migration_id = resolved.migration_id
        result.source_version = resolved.source_version
        result.target_version = resolved.target_version
        if resolved.outcome != "started" or resolved.spec is None:
            return result
        spec = MigrationSpec.model_validate(resolved.spec)
        workflow.upsert_memo({"migration_id": spec.migration_id})
        handle = await workflow.start_child_workflow(
            "MigrationWorkflow",
            MigrationInput(spec=spec, requested_by=f"schedule {inp.schedule_id}"),
            id=spec.migration_id,
            task_queue=info.task_queue,
            result_type=MigrationStatus,
            parent_close_policy=workflow.ParentClosePolicy.ABANDON,
            memo={"spec_hash": spec.spec_hash(), "schedule_id": inp.schedule_id},
            static_summary=f"{spec.tenant}/{spec.collection}: {resolved.reason} "
            f"(schedule {inp.schedule_id})",
        )
        result.outcome = "running"
        try:
            final = await handle
        except ChildWorkflowError as err:
            final = _ended(err)
        except asyncio.CancelledError:
            await handle.signal(
                "abort",
                OperatorMessage(
                    operator=f"schedule {inp.schedule_id}",
                    reason="the firing was cancelled (the schedule's overlap policy)",
                ),
            )
            raise
        result.outcome = "started"
        result.phase = str(final.phase)
        return result


def _ended(err: ChildWorkflowError) -> MigrationStatus:
    """The final status a migration that rolled back or was aborted failed with."""
    cause: Any = err.cause
    if isinstance(cause, ApplicationError) and cause.type in OUTCOME_ERRORS and cause.details:
        return MigrationStatus.model_validate(cause.details[0])
    raise err
