"""The retention of one version a migration left behind: a durable timer, then the pruning.

Started (and abandoned) by the migration that retired or abandoned the version, so it outlives
it. When the timer fires, the version is pruned with a ledger entry, unless something still
needs it (routing reads it again after a promotion, a running migration or a schedule uses it,
or a later retirement keeps it longer): then it is kept and the ledger says why; ``vecmigrate
gc`` prunes it later when nothing needs it any more.

Deterministic: temporalio, the standard library and vecmigrate's pure models only.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow

from vecmigrate.workflows.calls import RETRY

with workflow.unsafe.imports_passed_through():
    from vecmigrate.model.tasks import PruneInput, PruneResult, RetentionInput


@workflow.defn(name="RetentionWorkflow")
class RetentionWorkflow:
    """Keep a version for its retention period, then prune it (see the module's docstring)."""

    @workflow.init
    def __init__(self, inp: RetentionInput) -> None:
        self._until = workflow.now() + timedelta(seconds=inp.keep_seconds)
        self._result: PruneResult | None = None

    @workflow.query(name="retention")
    def retention(self) -> dict[str, str]:
        """Until when the version is kept, and what pruning did once it ran."""
        done = self._result
        return {
            "until": self._until.isoformat(),
            "action": done.action if done else "waiting",
            "reason": done.reason if done else "",
        }

    @workflow.run
    async def run(self, inp: RetentionInput) -> PruneResult:
        await workflow.sleep(self._until - workflow.now())
        self._result = await workflow.execute_activity(
            "prune_version",
            PruneInput(
                tenant=inp.tenant,
                collection=inp.collection,
                version=inp.version,
                actor="retention",
                reason=f"{inp.left_as} {inp.keep_seconds:g} s ago by {inp.migration_id}",
                migration_id=inp.migration_id,
                region=inp.region,
            ),
            result_type=PruneResult,
            # Dropping a table or a collection and removing its files: minutes at most.
            start_to_close_timeout=timedelta(minutes=30),
            retry_policy=RETRY,
            summary=f"prune {inp.version}",
        )
        return self._result
