"""Migrations kept as code: which spec files of an application's migration directory have been
applied, by the hash of the spec each file held, and how each ended.

The key is the file's name without its extension (``0002_hnsw``): the name a repository keeps
for one step. The spec is stored as written (before store paths are filled in for the machine
that runs it), so the same file hashes the same in CI and on the machine that applies it, and a
file edited after it was applied is told apart and shown as a diff.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import JSON, Column, DateTime, String, Table, select

from vecmigrate.catalog import sql
from vecmigrate.catalog.catalog import Catalog, metadata, now
from vecmigrate.catalog.engines import begin

code_migrations = Table(
    "code_migrations",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("spec_hash", String(64), nullable=False),
    Column("spec", JSON, nullable=False),
    Column("migration_id", String(200), nullable=False),
    Column("directory", String(1000), nullable=False),
    Column("applied_by", String(200), nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True)),
    # "running", then the migration's final phase (COMPLETED, ROLLED_BACK, ABORTED).
    Column("outcome", String(32), nullable=False),
)


@dataclass(frozen=True)
class AppliedSpec:
    """One spec file applied from a migration directory: a row of ``code_migrations``."""

    name: str
    spec_hash: str
    spec: dict[str, object]
    migration_id: str
    directory: str
    applied_by: str
    started_at: datetime
    finished_at: datetime | None
    outcome: str


class AppliedSpecs:
    """The record of migration directories applied against one catalog."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        sql.create_tables_once(catalog.engine, "code-migrations", code_migrations)

    def get(self, name: str) -> AppliedSpec | None:
        """The record of spec file ``name``, or None when it was never applied."""
        row = sql.first_row(
            self.catalog.engine, select(code_migrations).where(code_migrations.c.name == name)
        )
        return None if row is None else AppliedSpec(**dict(row))

    def started(
        self,
        name: str,
        spec_hash: str,
        spec: dict[str, object],
        migration_id: str,
        directory: str,
        applied_by: str,
    ) -> None:
        """Record that ``name`` was started (a second call for the same spec changes nothing)."""
        if self.get(name) is not None:
            return
        record = AppliedSpec(
            name=name,
            spec_hash=spec_hash,
            spec=spec,
            migration_id=migration_id,
            directory=directory,
            applied_by=applied_by,
            started_at=now(),
            finished_at=None,
            outcome="running",
        )
        with begin(self.catalog.engine) as conn:
            conn.execute(code_migrations.insert().values(**sql.row_values(record)))

    def finished(self, name: str, outcome: str) -> None:
        """Record how ``name``'s migration ended."""
        with begin(self.catalog.engine) as conn:
            conn.execute(
                code_migrations.update()
                .where(code_migrations.c.name == name)
                .values(outcome=outcome, finished_at=now())
            )

    def all(self) -> list[AppliedSpec]:
        """Every applied spec file, in the order they were started."""
        rows = sql.all_rows(
            self.catalog.engine, select(code_migrations).order_by(code_migrations.c.started_at)
        )
        return [AppliedSpec(**dict(r)) for r in rows]
