"""Search latencies the routers publish, and the latency budget's state, kept in the catalog.

Each router publishes, about once a second, a summary of the searches it served on each
collection over its recent window (p50, p99, count): one row per router and collection,
written over in place, so the table stays as small as the fleet. A migration with a latency
budget reads the freshest rows of its collection (the worst p99 of the routers) and writes
where its throttle stands, one row per migration, which ``vecmigrate status`` shows.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import Boolean, Column, Float, Integer, String, Table, delete, select

from vecmigrate.catalog import sql
from vecmigrate.catalog.catalog import Catalog, metadata
from vecmigrate.catalog.engines import begin, once_per_engine
from vecmigrate.model.status import BudgetState

search_latency = Table(
    "search_latency",
    metadata,
    Column("router", String(64), primary_key=True),
    Column("tenant", String(200), primary_key=True),
    Column("collection", String(200), primary_key=True),
    Column("p50_ms", Float, nullable=False),
    Column("p99_ms", Float, nullable=False),
    Column("count", Integer, nullable=False),
    Column("at", Float, nullable=False),  # seconds since the epoch
    # The p99 over the router's longer window (``BASELINE_SECONDS``): a budget's idle p99.
    Column("p99_baseline_ms", Float),
)
# Columns added to search_latency since its first release (name: DDL).
_LATENCY_ADDED = {"p99_baseline_ms": "FLOAT"}

latency_budgets = Table(
    "latency_budgets",
    metadata,
    Column("migration_id", String(200), primary_key=True),
    Column("idle_p99_ms", Float),
    Column("limit_ms", Float),
    Column("p99_ms", Float),
    Column("share", Float, nullable=False),
    Column("throttled", Boolean, nullable=False),
    Column("why", String(500), nullable=False),
    Column("at", Float, nullable=False),
)

# Rows of routers silent for this long are removed when a router first publishes.
FORGET_SECONDS = 3600.0


@dataclass(frozen=True)
class LatencyReading:
    """The search latency of a collection, as the routers last published it."""

    p50_ms: float
    p99_ms: float
    count: int
    at: float  # seconds since the epoch
    # The p99 over the longer window the routers also keep (None: a router that keeps none);
    # steadier than the short window's, for a budget's idle baseline.
    p99_baseline_ms: float | None = None


class Latencies:
    """The routers' published search latencies and the budgets' states in one catalog."""

    def __init__(self, catalog: Catalog) -> None:
        self.engine = catalog.engine
        sql.create_tables_once(self.engine, "latency", search_latency, latency_budgets)
        once_per_engine(
            self.engine,
            "latency-columns",
            lambda: sql.add_missing_columns(self.engine, "search_latency", _LATENCY_ADDED),
        )

    def publish(self, router: str, tenant: str, collection: str, reading: LatencyReading) -> None:
        """Write one router's latest summary for a collection over its previous one."""
        key = (
            (search_latency.c.router == router)
            & (search_latency.c.tenant == tenant)
            & (search_latency.c.collection == collection)
        )
        values = {
            "p50_ms": reading.p50_ms,
            "p99_ms": reading.p99_ms,
            "count": reading.count,
            "at": reading.at,
            "p99_baseline_ms": reading.p99_baseline_ms,
        }
        identity = {"router": router, "tenant": tenant, "collection": collection}
        sql.upsert(self.engine, search_latency, key, identity, values)

    def forget_silent(self, now: float | None = None) -> None:
        """Remove the rows of routers that have published nothing for an hour."""
        cutoff = (time.time() if now is None else now) - FORGET_SECONDS
        with begin(self.engine) as conn:
            conn.execute(delete(search_latency).where(search_latency.c.at < cutoff))

    def latest(
        self, tenant: str, collection: str, max_age: float, now: float | None = None
    ) -> LatencyReading | None:
        """The collection's search latency over the routers that published in the last
        ``max_age`` seconds: the worst p50 and p99 (a budget holds for every router), the
        searches summed, the newest time. None when no router published that recently."""
        cutoff = (time.time() if now is None else now) - max_age
        rows = sql.all_rows(
            self.engine,
            select(search_latency).where(
                sql.in_scope(search_latency, tenant, collection) & (search_latency.c.at >= cutoff)
            ),
        )
        if not rows:
            return None
        baselines = [r["p99_baseline_ms"] for r in rows if r["p99_baseline_ms"] is not None]
        return LatencyReading(
            p50_ms=max(r["p50_ms"] for r in rows),
            p99_ms=max(r["p99_ms"] for r in rows),
            count=sum(r["count"] for r in rows),
            at=max(r["at"] for r in rows),
            p99_baseline_ms=max(baselines) if baselines else None,
        )

    def budget(self, migration_id: str) -> BudgetState | None:
        """Where the migration's latency budget stands, or None (no budget, or not started)."""
        row = sql.first_row(
            self.engine,
            select(latency_budgets).where(latency_budgets.c.migration_id == migration_id),
        )
        if row is None:
            return None
        values = dict(row)
        values.pop("migration_id")
        return BudgetState(**values)

    def set_budget(self, migration_id: str, state: BudgetState) -> None:
        """Write where the migration's latency budget stands over what was there."""
        key = latency_budgets.c.migration_id == migration_id
        sql.upsert(
            self.engine,
            latency_budgets,
            key,
            {"migration_id": migration_id},
            state.model_dump(),
        )
