"""How the workflows call activities: one retry policy, one call for short bookkeeping and one
for long heartbeated work, and the ledger.

Deterministic: temporalio, the standard library and vecmigrate's pure models only.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from vecmigrate.errors import NON_RETRYABLE_NAMES
    from vecmigrate.model.tasks import LedgerAck, LedgerInput

T = TypeVar("T")

# Activities mark the errors a retry cannot fix as non-retryable themselves; the names are
# listed too, so an activity of an older worker is not retried for them either.
RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=10,
    non_retryable_error_types=list(NON_RETRYABLE_NAMES),
)

# Short bookkeeping calls (ledger, routing, version state) against the catalog. A worker killed
# during one costs this long before another worker retries it.
SHORT_TIMEOUT = timedelta(seconds=10)


async def short_call(
    activity: str,
    arg: Any,
    result_type: type | None = None,
    task_queue: str | None = None,
    *,
    summary: str,
) -> Any:
    """One short bookkeeping activity (ledger, routing, control, lookups) with the common
    timeout and retry policy. ``summary`` is what the Web UI's timeline shows for it (every
    call has one: a timeline of bare activity names says nothing)."""
    return await workflow.execute_activity(
        activity,
        arg,
        result_type=result_type,
        task_queue=task_queue,
        start_to_close_timeout=SHORT_TIMEOUT,
        retry_policy=RETRY,
        summary=summary,
    )


async def long_call(
    activity: str,
    arg: Any,
    result_type: type[T],
    *,
    timeout: timedelta,
    heartbeat_seconds: float,
    summary: str,
) -> T:
    """One long data-plane activity: it heartbeats (its resume cursor where it has one) at
    least every ``heartbeat_seconds``, or Temporal presumes its worker dead and runs it again
    elsewhere, from its last cursor."""
    result: T = await workflow.execute_activity(
        activity,
        arg,
        result_type=result_type,
        start_to_close_timeout=timeout,
        heartbeat_timeout=timedelta(seconds=heartbeat_seconds),
        retry_policy=RETRY,
        summary=summary,
    )
    return result


async def append_ledger(entry: LedgerInput) -> LedgerAck:
    """Append one ledger entry through the ``record`` activity (idempotent by event key)."""
    ack: LedgerAck = await short_call("record", entry, LedgerAck, summary=ledger_summary(entry))
    return ack


def ledger_summary(entry: LedgerInput) -> str:
    """What a ledger entry records, in the words the Web UI's timeline shows."""
    data = entry.data
    if entry.kind == "phase":
        return f"phase {data.get('from')} -> {data.get('to')}"
    if entry.kind == "operator":
        return f"{data.get('action')} by {entry.actor}"
    if entry.kind == "gate":
        return "gate suite " + ("passed" if data.get("passed") else "failed")
    if entry.kind == "shadow.gate":
        return f"{data.get('step') or 'shadow'} gate " + (
            "passed" if data.get("passed") else "failed"
        )
    if entry.kind == "reconcile":
        return "reconcile gate " + ("passed" if data.get("passed") else "failed")
    if entry.kind == "version.state":
        return f"record: {data.get('version')} is {data.get('state')}"
    if entry.kind == "routing.changed":
        return f"record: routing {data.get('reason', '')}"[:200]
    return f"record: {entry.kind}"


def event_key(migration_id: str, n: int) -> str:
    """The ledger key of a workflow's ``n``-th entry: stable across replays and new runs."""
    return f"{migration_id}/{workflow.info().first_execution_run_id}/{n}"
