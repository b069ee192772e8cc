"""``vecmigrate list``: migrations found through their search attributes.

The filters become one Temporal visibility query, the same one ``temporal workflow list
--query`` takes (printed with ``--show-query``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from rich.table import Table
from temporalio.client import Client, WorkflowExecution

from vecmigrate.errors import VecmigrateError
from vecmigrate.model.lifecycle import Phase
from vecmigrate.model.search import (
    COLLECTION,
    PHASE,
    REGION,
    SOURCE_VERSION,
    STRATEGY,
    TARGET_VERSION,
    TENANT,
)
from vecmigrate.workflows.search import KEYS

WORKFLOW_TYPES = ("MigrationWorkflow", "RegionalMigrationWorkflow")


@dataclass(frozen=True)
class Filters:
    """What ``vecmigrate list`` narrows the migrations to; None means any."""

    phase: str | None = None
    collection: str | None = None
    tenant: str | None = None
    strategy: str | None = None
    region: str | None = None
    running: bool | None = None


def _quoted(name: str, value: str) -> str:
    if any(c in value for c in "'\"\\\n"):
        raise VecmigrateError(f"--{name} {value!r}: a value cannot hold quotes or backslashes")
    return f"'{value}'"


def list_query(filters: Filters) -> str:
    """The visibility query selecting the migrations ``filters`` describe.

    Raises:
        VecmigrateError: an unknown phase, or a value with quotes.
    """
    types = " OR ".join(f"WorkflowType = '{t}'" for t in WORKFLOW_TYPES)
    parts = [f"({types})"]
    if filters.phase is not None:
        phase = filters.phase.upper()
        if phase not in Phase.__members__:
            raise VecmigrateError(
                f"--phase {filters.phase!r} is not a phase; use one of {', '.join(Phase)}"
            )
        parts.append(f"{PHASE.name} = '{phase}'")
    for flag, attribute, value in (
        ("collection", COLLECTION, filters.collection),
        ("tenant", TENANT, filters.tenant),
        ("strategy", STRATEGY, filters.strategy),
        ("region", REGION, filters.region),
    ):
        if value is not None:
            parts.append(f"{attribute.name} = {_quoted(flag, value)}")
    if filters.running is True:
        parts.append("ExecutionStatus = 'Running'")
    elif filters.running is False:
        parts.append("ExecutionStatus != 'Running'")
    return " AND ".join(parts)


@dataclass
class MigrationRow:
    """One migration as ``vecmigrate list`` prints it."""

    id: str
    kind: str
    status: str
    phase: str
    tenant: str
    collection: str
    source_version: str
    target_version: str
    strategy: str
    region: str
    started: datetime | None
    closed: datetime | None
    requested_by: str


def _keyword(execution: WorkflowExecution, name: str) -> str:
    return execution.typed_search_attributes.get(KEYS[name]) or ""


async def _row(execution: WorkflowExecution) -> MigrationRow:
    memo: Mapping[str, Any] = {}
    try:
        memo = await execution.memo()
    except Exception:
        memo = {}  # a memo this release cannot read shows as blank, never as a failure
    return MigrationRow(
        id=execution.id,
        kind="regional" if execution.workflow_type == WORKFLOW_TYPES[1] else "migration",
        status=execution.status.name.lower() if execution.status else "unknown",
        phase=_keyword(execution, PHASE.name),
        tenant=_keyword(execution, TENANT.name),
        collection=_keyword(execution, COLLECTION.name),
        source_version=_keyword(execution, SOURCE_VERSION.name),
        target_version=_keyword(execution, TARGET_VERSION.name),
        strategy=_keyword(execution, STRATEGY.name),
        region=_keyword(execution, REGION.name),
        started=execution.start_time,
        closed=execution.close_time,
        requested_by=str(memo.get("requested_by", "")),
    )


async def list_migrations(client: Client, filters: Filters, limit: int = 50) -> list[MigrationRow]:
    """The newest ``limit`` migrations matching ``filters``, newest first."""
    rows = []
    async for execution in client.list_workflows(list_query(filters), limit=limit):
        rows.append(await _row(execution))
    return rows


def migrations_table(rows: list[MigrationRow]) -> Table:
    """The migrations as ``vecmigrate list`` prints them."""
    table = Table(title=f"{len(rows)} migration(s)")
    for column in ("id", "phase", "status", "collection", "versions", "strategy", "started"):
        table.add_column(column)
    for r in rows:
        where = f"{r.tenant}/{r.collection}" + (f" ({r.region})" if r.region else "")
        table.add_row(
            r.id + (" [regional]" if r.kind == "regional" else ""),
            r.phase or "-",
            r.status,
            where,
            f"{r.source_version} -> {r.target_version}",
            r.strategy,
            r.started.isoformat(timespec="seconds") if r.started else "",
        )
    return table
