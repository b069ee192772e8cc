"""Scheduled specs: the template each Temporal Schedule fires, stored once by its hash.

A schedule's action names its template by hash (what the Temporal UI shows and lets you edit);
the firing loads the template from here and refuses one whose stored form no longer hashes to
its name. A deleted schedule keeps its row (``deleted_at``): the firings it made still name it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from pydantic import ValidationError
from sqlalchemy import JSON, Column, ColumnElement, DateTime, RowMapping, String, Table, select
from sqlalchemy.exc import IntegrityError

from vecmigrate.catalog import sql
from vecmigrate.catalog.catalog import Catalog, metadata, now, scope_columns
from vecmigrate.catalog.engines import begin
from vecmigrate.errors import SpecMismatchError
from vecmigrate.model.spec import MigrationSpec

scheduled_specs = Table(
    "scheduled_specs",
    metadata,
    Column("schedule_id", String(200), primary_key=True),
    Column("spec_hash", String(64), primary_key=True),
    *scope_columns(primary_key=False),
    Column("spec", JSON, nullable=False),
    Column("created_by", String(200), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("deleted_at", DateTime(timezone=True)),
)


@dataclass(frozen=True)
class ScheduledSpec:
    """One schedule's template as stored."""

    schedule_id: str
    spec_hash: str
    spec: MigrationSpec
    created_by: str
    created_at: datetime
    deleted_at: datetime | None


class ScheduleStore:
    """The scheduled specs of one catalog."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        sql.create_tables_once(catalog.engine, "scheduled-specs", scheduled_specs)

    def store(self, schedule_id: str, spec: MigrationSpec, created_by: str) -> str:
        """Keep ``spec`` as the template of ``schedule_id`` (idempotent); returns its hash."""
        digest = spec.spec_hash()
        try:
            with begin(self.catalog.engine) as conn:
                conn.execute(
                    scheduled_specs.insert().values(
                        schedule_id=schedule_id,
                        spec_hash=digest,
                        tenant=spec.tenant,
                        collection=spec.collection,
                        spec=spec.model_dump(mode="json"),
                        created_by=created_by,
                        created_at=now(),
                    )
                )
        except IntegrityError:
            with begin(self.catalog.engine) as conn:  # created again after a delete
                conn.execute(
                    scheduled_specs.update()
                    .where(_key(schedule_id, digest))
                    .values(deleted_at=None)
                )
        return digest

    def template(self, schedule_id: str, spec_hash: str) -> ScheduledSpec:
        """The template ``schedule_id`` fires under ``spec_hash``.

        Raises:
            SpecMismatchError: none stored here, or what is stored no longer hashes to its name.
        """
        row = sql.first_row(
            self.catalog.engine, select(scheduled_specs).where(_key(schedule_id, spec_hash))
        )
        if row is None:
            raise SpecMismatchError(
                f"the catalog holds no spec {spec_hash[:12]} for schedule {schedule_id}: the "
                "schedule was made against another catalog, or its action was edited to name "
                "another spec; create it again with `vecmigrate schedule create` and this "
                "worker's --catalog"
            )
        found = _record(row)
        if found.spec.spec_hash() != spec_hash:
            raise SpecMismatchError(
                f"the spec of schedule {schedule_id} stored as {spec_hash[:12]} now hashes to "
                f"{found.spec.spec_hash()[:12]}: it was altered in the catalog; create the "
                "schedule again from its file"
            )
        return found

    def delete(self, schedule_id: str) -> None:
        """Mark every template of ``schedule_id`` deleted (the rows stay for the record)."""
        with begin(self.catalog.engine) as conn:
            conn.execute(
                scheduled_specs.update()
                .where(
                    (scheduled_specs.c.schedule_id == schedule_id)
                    & scheduled_specs.c.deleted_at.is_(None)
                )
                .values(deleted_at=now())
            )

    def active(
        self, tenant: str | None = None, collection: str | None = None
    ) -> list[ScheduledSpec]:
        """Templates of schedules not deleted, of one collection when named."""
        query = select(scheduled_specs).where(scheduled_specs.c.deleted_at.is_(None))
        if tenant is not None:
            query = query.where(scheduled_specs.c.tenant == tenant)
        if collection is not None:
            query = query.where(scheduled_specs.c.collection == collection)
        rows = sql.all_rows(self.catalog.engine, query.order_by(scheduled_specs.c.created_at))
        return [_record(r) for r in rows]


def _key(schedule_id: str, spec_hash: str) -> ColumnElement[bool]:
    return (scheduled_specs.c.schedule_id == schedule_id) & (
        scheduled_specs.c.spec_hash == spec_hash
    )


def _record(row: RowMapping) -> ScheduledSpec:
    data = dict(row)
    try:
        spec = MigrationSpec.model_validate(data["spec"])
    except ValidationError as exc:
        raise SpecMismatchError(
            f"the spec stored for schedule {data['schedule_id']} is no longer a valid spec "
            f"({exc.error_count()} problems): it was altered in the catalog"
        ) from None
    return ScheduledSpec(
        schedule_id=data["schedule_id"],
        spec_hash=data["spec_hash"],
        spec=spec,
        created_by=data["created_by"],
        created_at=data["created_at"],
        deleted_at=data["deleted_at"],
    )
