"""Residency: a region's work runs only on that region's workers, and each run is recorded.

Every activity of a migration names the region its data lives in (``None`` outside a regional
migration); a worker knows its own region (``vecmigrate worker --region``). :func:`admit`
refuses work meant for another region before it touches anything, and writes one row per run
in the worker's own catalog (which region asked, which worker ran it), so residency can be
audited from the workers' records rather than assumed from the routing of task queues.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, fields

from sqlalchemy import Column, Connection, DateTime, Integer, String, Table, select

from vecmigrate.catalog import sql
from vecmigrate.catalog.catalog import Catalog, metadata, now
from vecmigrate.catalog.engines import grouped
from vecmigrate.errors import ResidencyError

runs = Table(
    "activity_runs",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("activity", String(64), nullable=False),
    Column("migration_id", String(200)),
    Column("tenant", String(64)),
    Column("region", String(64)),
    Column("worker_region", String(64)),
    Column("worker", String(200), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
)


@dataclass(frozen=True)
class Run:
    """One recorded activity run (its row, but for the time it was recorded at)."""

    activity: str
    migration_id: str | None
    tenant: str | None
    region: str | None
    worker_region: str | None
    worker: str


class Residency:
    """The residency guard of one worker: its region and its catalog's run records."""

    def __init__(self, catalog: Catalog, region: str | None, worker: str | None = None) -> None:
        self.engine = catalog.engine
        self.region = region
        self.worker = worker or f"{socket.gethostname()}:{region or 'global'}"
        sql.create_tables_once(self.engine, "activity-runs", runs)

    def admit(
        self, activity: str, region: str | None, migration_id: str | None, tenant: str | None
    ) -> None:
        """Record this run, or refuse it when it belongs to another region.

        Raises:
            ResidencyError: ``region`` is not this worker's region.
        """
        if region != self.region:
            raise ResidencyError(
                f"{activity} of {migration_id} belongs to region {region or 'none'} but reached "
                f"a worker of region {self.region or 'none'}; refused (data stays in its "
                "region): check the task queues of the region's workers"
            )
        run = Run(
            activity=activity,
            migration_id=migration_id,
            tenant=tenant,
            region=region,
            worker_region=self.region,
            worker=self.worker,
        )
        row = runs.insert().values(**sql.row_values(run), at=now())

        def write(conn: Connection) -> None:
            conn.execute(row)

        # Every activity writes one as it starts: concurrent ones share a commit.
        grouped(self.engine, write)

    def recorded(self) -> list[Run]:
        """Every run recorded in this catalog, oldest first."""
        columns = (runs.c[f.name] for f in fields(Run))
        rows = sql.all_rows(self.engine, select(*columns).order_by(runs.c.seq))
        return [Run(**r) for r in rows]
