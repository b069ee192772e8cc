"""What the catalog knows about versions a migration left behind: when a version stopped being
written (its position in the change log, so a promotion back replays only what it missed), when
it was retired or abandoned and until when its retention keeps it, and when it was pruned."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import BigInteger, Column, ColumnElement, DateTime, String, Table, select

from vecmigrate.catalog import sql
from vecmigrate.catalog.catalog import Catalog, metadata, now, scope_columns

version_retention = Table(
    "version_retention",
    metadata,
    *scope_columns(primary_key=True),
    Column("version", String(64), primary_key=True),
    # The change-log head read before the version was last taken out of the write set: every
    # write after it may be missing from the version.
    Column("written_until", BigInteger),
    # Retired (by a finalize) or abandoned (by a rollback or a failed gate): when, by which
    # migration, and until when the spec's retention keeps it.
    Column("left_as", String(16)),
    Column("left_at", DateTime(timezone=True)),
    Column("left_by", String(200)),
    Column("keep_until", DateTime(timezone=True)),
    Column("pruned_at", DateTime(timezone=True)),
    Column("pruned_by", String(200)),
    Column("freed_bytes", BigInteger),
)


@dataclass(frozen=True)
class Retention:
    """One version's retention record."""

    tenant: str
    collection: str
    version: str
    written_until: int | None = None
    left_as: str | None = None
    left_at: datetime | None = None
    left_by: str | None = None
    keep_until: datetime | None = None
    pruned_at: datetime | None = None
    pruned_by: str | None = None
    freed_bytes: int | None = None


class RetentionLog:
    """The retention records of one catalog."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        sql.create_tables_once(catalog.engine, "retention", version_retention)

    def get(self, tenant: str, collection: str, version: str) -> Retention:
        """The record of a version (an empty one when nothing was recorded)."""
        row = sql.first_row(
            self.catalog.engine,
            select(version_retention).where(self._key(tenant, collection, version)),
        )
        if row is None:
            return Retention(tenant, collection, version)
        return Retention(**dict(row))

    def of_collection(self, tenant: str, collection: str) -> list[Retention]:
        """Every record of a collection."""
        rows = sql.all_rows(
            self.catalog.engine,
            select(version_retention).where(sql.in_scope(version_retention, tenant, collection)),
        )
        return [Retention(**dict(r)) for r in rows]

    def stopped_writing(self, tenant: str, collection: str, version: str, position: int) -> None:
        """``version`` leaves the write set after log position ``position`` (the earliest such
        position is kept: replaying a little more than needed is harmless, less is not)."""
        found = self.get(tenant, collection, version)
        if found.written_until is not None and found.written_until <= position:
            return
        self._set(tenant, collection, version, written_until=position)

    def resumed_writing(self, tenant: str, collection: str, version: str) -> None:
        """``version`` is written again: it misses nothing any more."""
        if self.get(tenant, collection, version).written_until is not None:
            self._set(tenant, collection, version, written_until=None)

    def left(
        self,
        tenant: str,
        collection: str,
        version: str,
        how: str,
        migration_id: str,
        keep_seconds: float | None,
    ) -> Retention:
        """``version`` was retired or abandoned by ``migration_id``; kept ``keep_seconds``
        (None: until ``gc`` names it). A repeat of the same move keeps the first record."""
        found = self.get(tenant, collection, version)
        if found.left_as == how and found.left_by == migration_id:
            return found
        at = now()
        until = None if keep_seconds is None else at + timedelta(seconds=keep_seconds)
        self._set(
            tenant,
            collection,
            version,
            left_as=how,
            left_at=at,
            left_by=migration_id,
            keep_until=until,
        )
        return self.get(tenant, collection, version)

    def back_in_use(self, tenant: str, collection: str, version: str) -> None:
        """``version`` serves or is built again: no retention runs for it."""
        if self.get(tenant, collection, version).left_as is not None:
            self._set(
                tenant,
                collection,
                version,
                left_as=None,
                left_at=None,
                left_by=None,
                keep_until=None,
            )

    def pruned(
        self, tenant: str, collection: str, version: str, by: str, freed_bytes: int
    ) -> Retention:
        """Record the pruning of ``version``."""
        self._set(
            tenant, collection, version, pruned_at=now(), pruned_by=by, freed_bytes=freed_bytes
        )
        return self.get(tenant, collection, version)

    @staticmethod
    def _key(tenant: str, collection: str, version: str) -> ColumnElement[bool]:
        return sql.in_scope(version_retention, tenant, collection) & (
            version_retention.c.version == version
        )

    def _set(self, tenant: str, collection: str, version: str, **values: object) -> None:
        sql.upsert(
            self.catalog.engine,
            version_retention,
            self._key(tenant, collection, version),
            {"tenant": tenant, "collection": collection, "version": version},
            values,
        )
