"""What both workflows share: retry policy, timeouts, ledger entries and operator records.

Deterministic: temporalio, the standard library and vecmigrate's pure models only.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from vecmigrate.errors import NON_RETRYABLE_NAMES
    from vecmigrate.model.lifecycle import OperatorAction, OperatorMessage
    from vecmigrate.model.tasks import LedgerAck, LedgerInput

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


def operator_action(action: str, msg: OperatorMessage) -> OperatorAction:
    """An operator's message as the status lists it, stamped with workflow time."""
    return OperatorAction(
        at=workflow.now().isoformat(),
        operator=msg.operator,
        action=action,
        reason=msg.reason,
    )


async def short_call(
    activity: str, arg: Any, result_type: type | None = None, task_queue: str | None = None
) -> Any:
    """One short bookkeeping activity (ledger, routing, control, lookups) with the common
    timeout and retry policy."""
    return await workflow.execute_activity(
        activity,
        arg,
        result_type=result_type,
        task_queue=task_queue,
        start_to_close_timeout=SHORT_TIMEOUT,
        retry_policy=RETRY,
    )


async def append_ledger(entry: LedgerInput) -> LedgerAck:
    """Append one ledger entry through the ``record`` activity (idempotent by event key)."""
    ack: LedgerAck = await short_call("record", entry, LedgerAck)
    return ack


def event_key(migration_id: str, n: int) -> str:
    """The ledger key of a workflow's ``n``-th entry: stable across replays and new runs."""
    return f"{migration_id}/{workflow.info().first_execution_run_id}/{n}"


def operator_data(action: str, msg: OperatorMessage, extra: dict[str, Any]) -> dict[str, Any]:
    return {"action": action, "reason": msg.reason, **extra}
