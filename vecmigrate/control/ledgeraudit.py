"""The anchors Temporal holds for a migration's ledger entries, for ``vecmigrate log --verify``.

Every ledger entry a migration appends is appended by an activity whose result, the entry's
(seq, hash), Temporal records in the workflow's history; so is each run's final status, with the
newest entry's. Those are anchors no one with only catalog access can change. They are read
from every run of the workflow id (continued-as-new runs included).
"""

from __future__ import annotations

from typing import Any

from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from vecmigrate.errors import NotFoundError


def _acks(value: Any, found: list[tuple[int, str]]) -> None:
    """Collect (seq, hash) pairs from a decoded activity or workflow result."""
    if not isinstance(value, dict):
        return
    if isinstance(value.get("seq"), int) and isinstance(value.get("hash"), str):
        found.append((value["seq"], value["hash"]))
    ledger = value.get("ledger")
    if isinstance(ledger, dict):
        _acks(ledger, found)
    seq, head = value.get("ledger_seq"), value.get("ledger_head")
    if isinstance(seq, int) and seq > 0 and isinstance(head, str) and head:
        found.append((seq, head))


async def history_anchors(client: Client, migration_id: str) -> list[tuple[int, str]]:
    """(seq, hash) of every ledger entry the histories of ``migration_id`` recorded.

    Raises:
        NotFoundError: Temporal has no workflow with that id (never started there, or its
            histories are past the namespace's retention).
        temporalio.service.RPCError: Temporal cannot be reached or refuses.
    """
    quoted = migration_id.replace("\\", "\\\\").replace("'", "\\'")
    runs = [wf.run_id async for wf in client.list_workflows(f"WorkflowId = '{quoted}'")]
    if not runs:
        raise NotFoundError(f"Temporal has no workflow {migration_id!r}")
    found: list[tuple[int, str]] = []
    wanted = (
        EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED,
        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED,
        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW,
    )
    for run_id in runs:
        history = await client.get_workflow_handle(migration_id, run_id=run_id).fetch_history()
        for event in history.events:
            if event.event_type not in wanted:
                continue
            if event.HasField("activity_task_completed_event_attributes"):
                payloads = event.activity_task_completed_event_attributes.result.payloads
            elif event.HasField("workflow_execution_completed_event_attributes"):
                payloads = event.workflow_execution_completed_event_attributes.result.payloads
            else:
                attrs = event.workflow_execution_continued_as_new_event_attributes
                payloads = attrs.input.payloads
            if not payloads:
                continue
            for value in await client.data_converter.decode(payloads):
                _acks(value, found)
                if isinstance(value, dict):
                    carried = value.get("carried")
                    if isinstance(carried, dict):
                        _acks(carried.get("status"), found)
    return sorted(set(found))
