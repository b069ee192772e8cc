"""Applied specs: every migration's spec, stored once in the catalog and keyed by its hash.

Tasks name a migration's spec by its hash instead of carrying it (it would be more than half of
every task's payload, and history would grow with it). The spec is stored when the migration's
first ledger entry is written, in the catalog of the workers that run it (a region's own
catalog for a region's child). A spec loaded back is hashed again: one altered in the catalog,
or a task naming a spec its catalog does not hold, is refused, never run.
"""

from __future__ import annotations

import threading

from pydantic import ValidationError
from sqlalchemy import JSON, Column, DateTime, String, Table, select

from vecmigrate.catalog import sql
from vecmigrate.catalog.catalog import Catalog, metadata, now
from vecmigrate.errors import SpecMismatchError
from vecmigrate.model.spec import MigrationSpec

applied_specs = Table(
    "applied_specs",
    metadata,
    Column("spec_hash", String(64), primary_key=True),
    Column("migration_id", String(200), nullable=False, index=True),
    Column("spec", JSON, nullable=False),
    Column("stored_at", DateTime(timezone=True), nullable=False),
)


class SpecStore:
    """The applied specs of one catalog, with a cache of the specs already verified."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self._verified: dict[str, MigrationSpec] = {}
        self._lock = threading.Lock()
        sql.create_tables_once(catalog.engine, "applied-specs", applied_specs)

    def store(self, migration_id: str, spec: MigrationSpec) -> str:
        """Store ``spec`` under its hash (idempotent); returns the hash."""
        digest = spec.spec_hash()
        if self._stored(digest) is not None:
            return digest
        # A duplicate: another worker stored it first, the same spec by its hash.
        sql.insert_ignoring_duplicate(
            self.catalog.engine,
            applied_specs.insert().values(
                spec_hash=digest,
                migration_id=migration_id,
                spec=spec.model_dump(mode="json"),
                stored_at=now(),
            ),
        )
        return digest

    def load(self, migration_id: str, spec_hash: str) -> MigrationSpec:
        """The spec of ``migration_id`` whose hash is ``spec_hash``.

        Raises:
            SpecMismatchError: no such spec here, it belongs to another migration, or what is
                stored no longer hashes to ``spec_hash`` (edited since it was stored).
        """
        with self._lock:
            cached = self._verified.get(spec_hash)
        if cached is not None and cached.migration_id == migration_id:
            return cached
        spec = self._stored(spec_hash) or self._from_ledger(migration_id, spec_hash)
        if spec is None:
            held = self._hashes(migration_id)
            raise SpecMismatchError(
                f"the catalog holds no spec {spec_hash[:12]} for migration {migration_id}"
                + (f" (it holds {', '.join(h[:12] for h in held)})" if held else "")
                + ": the task was scheduled for another spec or another catalog; check that "
                "this worker's --catalog is the migration's, or roll the migration back"
            )
        if spec.spec_hash() != spec_hash:
            raise SpecMismatchError(
                f"the spec stored as {spec_hash[:12]} for migration {migration_id} now hashes "
                f"to {spec.spec_hash()[:12]}: it was altered in the catalog; restore it (the "
                "migration.started ledger entry holds the original) or roll the migration back"
            )
        if spec.migration_id != migration_id:
            raise SpecMismatchError(
                f"spec {spec_hash[:12]} belongs to migration {spec.migration_id}, not "
                f"{migration_id}; refused"
            )
        with self._lock:
            self._verified[spec_hash] = spec
        return spec

    def _stored(self, spec_hash: str) -> MigrationSpec | None:
        row = sql.first_row(
            self.catalog.engine,
            select(applied_specs.c.spec).where(applied_specs.c.spec_hash == spec_hash),
        )
        if row is None:
            return None
        try:
            return MigrationSpec.model_validate(row["spec"])
        except ValidationError as exc:
            raise SpecMismatchError(
                f"the spec stored as {spec_hash[:12]} is no longer a valid spec "
                f"({exc.error_count()} problems): it was altered in the catalog; restore it or "
                "roll the migration back"
            ) from None

    def _from_ledger(self, migration_id: str, spec_hash: str) -> MigrationSpec | None:
        """A migration started by an earlier release: its spec is in its first ledger entry."""
        for entry in self.catalog.entries(migration_id):
            if entry.kind != "migration.started" or "spec" not in entry.data:
                continue
            try:
                spec = MigrationSpec.model_validate(entry.data["spec"])
            except ValidationError:
                continue
            if spec.spec_hash() == spec_hash:
                self.store(migration_id, spec)
                return spec
        return None

    def _hashes(self, migration_id: str) -> list[str]:
        rows = sql.all_rows(
            self.catalog.engine,
            select(applied_specs.c.spec_hash).where(applied_specs.c.migration_id == migration_id),
        )
        return [r["spec_hash"] for r in rows]
