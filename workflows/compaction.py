"""Compaction of an index version: the change log folded into new artifacts, durably.

One activity does the work and heartbeats its position; a retry after a worker was killed
resumes from its latest checkpoint (see ``vecmigrate.indexes.compaction``). Started by id
``compact/TENANT/COLLECTION``, so two requests for one collection share a run.

Deterministic: temporalio, the standard library and vecmigrate's pure models only.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from vecmigrate.model.compaction import CompactionRequest, CompactionResult
    from vecmigrate.workflows.calls import long_call


@workflow.defn(name="compact_index")
class CompactionWorkflow:
    """Compact one index version of a collection."""

    @workflow.run
    async def run(self, request: CompactionRequest) -> CompactionResult:
        return await long_call(
            "compact_index",
            request,
            CompactionResult,
            timeout=timedelta(hours=12),
            heartbeat_seconds=request.heartbeat_seconds,
            summary=f"compact {request.tenant}/{request.collection}",
        )


def compaction_id(tenant: str, collection: str) -> str:
    """The workflow id of a collection's compaction."""
    return f"compact/{tenant}/{collection}"
