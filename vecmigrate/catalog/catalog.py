"""The catalog: schema registry, versions, routing, migrations and the provenance ledger.

SQLAlchemy 2 Core over any URL; SQLite by default. Every write is idempotent or guarded:

* registrations are upserts keyed by natural ids;
* the routing row changes only by compare-and-set on its ``generation``, and a change carries a
  ``change_key`` so a retried change that already applied is recognised, not repeated;
* the ledger is append-only (database triggers refuse UPDATE and DELETE) and hash-chained: each
  entry stores the hash of the previous one, and ``prev_hash`` is unique, so two concurrent
  appends cannot both extend the same entry. An ``event_key`` makes an append idempotent.

With a key ring (``$VECMIGRATE_KEYRING``) every entry is also MACed with the ring's ledger key
(the key id is recorded, so rotation keeps old entries checkable), and after every append a
signed anchor goes to the anchor files outside the catalog (:mod:`vecmigrate.catalog.anchors`):
rewriting the chain and recomputing its hashes then needs the key, and cutting its tail is seen
against the anchors. :meth:`Catalog.audit_ledger` checks all of it and fails closed.
"""

from __future__ import annotations

import hashlib
import json
import threading
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Engine,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    event,
    false,
    select,
    text,
)
from sqlalchemy.exc import IntegrityError

from vecmigrate.catalog import sql
from vecmigrate.catalog.anchors import AnchorFiles, anchor_root
from vecmigrate.catalog.engines import begin, catalog_access, engine_for, once_per_engine
from vecmigrate.errors import NotFoundError, PreconditionError, RoutingConflictError
from vecmigrate.model.access import AccessPolicy, Role, RoleBinding
from vecmigrate.model.routing import RoutingView
from vecmigrate.model.spec import EmbeddingSchema, IndexSpec, Metric, MigrationSpec
from vecmigrate.security.keyring import LEDGER_MAC, KeyRing, environment_keyring

metadata = MetaData()


def scope_columns(*, primary_key: bool) -> tuple[Column[str], Column[str]]:
    """The tenant and collection a row belongs to: the first columns of its primary key, or
    required columns beside a key of its own."""
    if primary_key:
        return (
            Column("tenant", String(64), primary_key=True),
            Column("collection", String(64), primary_key=True),
        )
    return (
        Column("tenant", String(64), nullable=False),
        Column("collection", String(64), nullable=False),
    )


def sequence_key(name: str) -> Column[int]:
    """An ever-growing 64-bit primary key the database assigns (INTEGER on SQLite, which only
    auto-increments its rowid alias)."""
    return Column(
        name, BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )


def schema_columns(*, primary_key: bool) -> tuple[Column[Any], ...]:
    """The columns of an embedding schema (what :func:`schema_values` fills): the model's id and
    version (the primary key, or required columns beside a key of their own), then the shape of
    its vectors: their dimension, metric and whether they are normalised."""
    return (
        Column("model_id", String(200), primary_key=primary_key, nullable=False),
        Column("model_version", String(64), primary_key=primary_key, nullable=False),
        Column("dimension", Integer, nullable=False),
        Column("metric", String(16), nullable=False),
        Column("normalized", Boolean, nullable=False),
    )


def schema_values(schema: EmbeddingSchema) -> dict[str, Any]:
    """An embedding schema's fields as the columns that store it hold them."""
    return {
        "model_id": schema.model_id,
        "model_version": schema.model_version,
        "dimension": schema.dimension,
        "metric": str(schema.metric),
        "normalized": schema.normalized,
    }


def schema_from_row(row: Mapping[Any, Any]) -> EmbeddingSchema:
    """The embedding schema a row stores (the columns :func:`schema_values` fills)."""
    return EmbeddingSchema(
        model_id=row["model_id"],
        model_version=row["model_version"],
        dimension=row["dimension"],
        metric=Metric(row["metric"]),
        normalized=bool(row["normalized"]),
    )


collections = Table(
    "collections",
    metadata,
    Column("tenant", String(64), primary_key=True),
    Column("name", String(64), primary_key=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

embedding_schemas = Table(
    "embedding_schemas",
    metadata,
    Column("id", String(64), primary_key=True),
    *schema_columns(primary_key=False),
)

vector_versions = Table(
    "vector_versions",
    metadata,
    *scope_columns(primary_key=True),
    Column("version", String(64), primary_key=True),
    Column("embedding_schema", String(64), nullable=False),
    Column("store", JSON, nullable=False),
    Column("state", String(16), nullable=False),
    Column("migration_id", String(200)),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

index_versions = Table(
    "index_versions",
    metadata,
    Column("id", String(200), primary_key=True),
    *scope_columns(primary_key=False),
    Column("version", String(64), nullable=False),
    Column("spec", JSON, nullable=False),
    Column("artifacts", JSON, nullable=False),
    Column("checksum", String(64), nullable=False),
    Column("migration_id", String(200)),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

routing = Table(
    "routing",
    metadata,
    *scope_columns(primary_key=True),
    Column("read_version", String(64)),
    Column("read_index", String(200)),
    Column("write_versions", JSON, nullable=False),
    Column("generation", Integer, nullable=False),
    Column("change_key", String(300)),
    Column("updated_by", String(200)),
    Column("reason", Text),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("candidate_version", String(64)),
    Column("candidate_index", String(200)),
    Column("ramp_percent", Float, nullable=False, server_default="0"),
    Column("shadow_percent", Float, nullable=False, server_default="0"),
    Column("writes_paused", Boolean, nullable=False, server_default=false()),
)

# Columns added after the first release, with their DDL: an older catalog gains them on open.
_ROUTING_ADDED = {
    "candidate_version": "VARCHAR(64)",
    "candidate_index": "VARCHAR(200)",
    "ramp_percent": "FLOAT NOT NULL DEFAULT 0",
    "shadow_percent": "FLOAT NOT NULL DEFAULT 0",
    "writes_paused": "BOOLEAN NOT NULL DEFAULT FALSE",
}

_LEDGER_ADDED = {
    "region": "VARCHAR(64)",
    "caller": "VARCHAR(200)",
    "key_id": "VARCHAR(64)",
    "mac": "VARCHAR(64)",
}

migrations = Table(
    "migrations",
    metadata,
    Column("id", String(200), primary_key=True),
    *scope_columns(primary_key=False),
    Column("source_version", String(64), nullable=False),
    Column("target_version", String(64), nullable=False),
    Column("spec", JSON, nullable=False),
    Column("spec_hash", String(64), nullable=False),
    Column("phase", String(32), nullable=False),
    Column("requested_by", String(200)),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

ledger = Table(
    "ledger",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("migration_id", String(200)),
    *scope_columns(primary_key=False),
    Column("at", String(40), nullable=False),
    Column("actor", String(200), nullable=False),
    Column("kind", String(64), nullable=False),
    Column("event_key", String(300), unique=True),
    Column("data", Text, nullable=False),
    Column("prev_hash", String(64), nullable=False, unique=True),
    Column("hash", String(64), nullable=False, unique=True),
    # The region whose worker wrote the entry (None: no region, or the control plane).
    Column("region", String(64)),
    # Who the connection that caused the entry authenticated as, beside ``actor``, the operator
    # name its message declared (None: no message, or written before this was recorded).
    Column("caller", String(200)),
    # The key ring key and HMAC of the entry (None: written without a key ring).
    Column("key_id", String(64)),
    Column("mac", String(64)),
)

# Operator roles (``vecmigrate roles``): who may steer migrations of which collection.
access_roles = Table(
    "access_roles",
    metadata,
    *scope_columns(primary_key=True),
    Column("identity", String(200), primary_key=True),
    Column("role", String(16), nullable=False),
    Column("granted_by", String(200), nullable=False),
    Column("granted_at", DateTime(timezone=True), nullable=False),
)

access_settings = Table(
    "access_settings",
    metadata,
    *scope_columns(primary_key=True),
    Column("four_eyes", Boolean, nullable=False),
)

catalog_info = Table(
    "catalog_info",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", String(200), nullable=False),
)

GENESIS = "0" * 64

_append_lock = threading.Lock()

_APPEND_ONLY_SQLITE = [
    "CREATE TRIGGER IF NOT EXISTS ledger_no_update BEFORE UPDATE ON ledger "
    "BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END",
    "CREATE TRIGGER IF NOT EXISTS ledger_no_delete BEFORE DELETE ON ledger "
    "BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END",
]
_APPEND_ONLY_POSTGRES = [
    "CREATE OR REPLACE FUNCTION vecmigrate_ledger_append_only() RETURNS trigger AS $$ "
    "BEGIN RAISE EXCEPTION 'the ledger is append-only'; END $$ LANGUAGE plpgsql",
    "DROP TRIGGER IF EXISTS ledger_append_only ON ledger",
    "CREATE TRIGGER ledger_append_only BEFORE UPDATE OR DELETE ON ledger "
    "FOR EACH ROW EXECUTE FUNCTION vecmigrate_ledger_append_only()",
]


@event.listens_for(ledger, "after_create")
def _ledger_append_only(target: Table, connection: Any, **_: Any) -> None:
    name = connection.dialect.name
    statements = {"sqlite": _APPEND_ONLY_SQLITE, "postgresql": _APPEND_ONLY_POSTGRES}.get(name, [])
    for stmt in statements:
        connection.execute(text(stmt))


def now() -> datetime:
    """Current UTC time (the catalog's clock; never used inside workflows)."""
    return datetime.now(UTC)


def schema_id(schema: EmbeddingSchema) -> str:
    """Content id of an embedding schema."""
    canonical = json.dumps(schema.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def entry_hash(prev_hash: str, body: dict[str, Any]) -> str:
    """Hash of a ledger entry: its canonical body chained to the previous entry's hash."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256((prev_hash + canonical).encode()).hexdigest()


@dataclass(frozen=True)
class LedgerEntry:
    """One ledger row."""

    seq: int
    migration_id: str | None
    tenant: str
    collection: str
    at: str
    actor: str
    kind: str
    event_key: str | None
    data: dict[str, Any]
    prev_hash: str
    hash: str
    region: str | None = None
    caller: str | None = None
    key_id: str | None = None
    mac: str | None = None

    def body(self) -> dict[str, Any]:
        """The hashed part of the entry (region and caller only when set, so entries written
        before they existed keep their hashes)."""
        body = {
            "migration_id": self.migration_id,
            "tenant": self.tenant,
            "collection": self.collection,
            "at": self.at,
            "actor": self.actor,
            "kind": self.kind,
            "event_key": self.event_key,
            "data": self.data,
        }
        if self.region is not None:
            body["region"] = self.region
        if self.caller is not None:
            body["caller"] = self.caller
        return body


def mac_input(key_id: str, entry_hash_: str) -> bytes:
    """What an entry's MAC covers: its hash (which covers its body and, through the chain, every
    entry before it) and the id of the key."""
    return f"vecmigrate ledger entry|{key_id}|{entry_hash_}".encode()


@dataclass
class LedgerVerdict:
    """What :meth:`Catalog.audit_ledger` found.

    ``problems`` is tampering seen; ``unverified`` is what could not be checked (no key, an
    anchor unreachable). Only a verdict with neither is ``intact``.
    """

    entries: int = 0
    problems: list[str] = field(default_factory=list)
    unverified: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def intact(self) -> bool:
        return not self.problems and not self.unverified


@dataclass(frozen=True)
class VersionRecord:
    """A registered vector version."""

    tenant: str
    collection: str
    version: str
    embedding: EmbeddingSchema
    store: dict[str, Any]
    state: str
    migration_id: str | None


@dataclass(frozen=True)
class IndexVersionRecord:
    """A registered index version: its spec and per-shard artifacts."""

    id: str
    tenant: str
    collection: str
    version: str
    spec: dict[str, Any]
    artifacts: list[dict[str, Any]]
    checksum: str


class Catalog:
    """The catalog at one SQLAlchemy URL."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine: Engine = engine_for(url, catalog_access())
        metadata.create_all(self.engine)
        self._upgrade()
        self.catalog_id = self._catalog_id()
        self.anchors = AnchorFiles(anchor_root(url, self.catalog_id), self.catalog_id)

    def _catalog_id(self) -> str:
        """This catalog's id (made on first open): it names its anchor directory."""
        query = select(catalog_info.c.value).where(catalog_info.c.name == "catalog_id")
        row = sql.first_row(self.engine, query)
        if row is None:
            sql.insert_ignoring_duplicate(
                self.engine,
                catalog_info.insert().values(name="catalog_id", value=uuid.uuid4().hex),
            )
            row = sql.first_row(self.engine, query)
        assert row is not None
        return str(row["value"])

    def _upgrade(self) -> None:
        """Add the columns later releases introduced to a catalog an earlier one created."""
        sql.add_missing_columns(self.engine, "routing", _ROUTING_ADDED)
        sql.add_missing_columns(self.engine, "ledger", _LEDGER_ADDED)

    # -- collections and versions -------------------------------------------------------------

    def ensure_collection(self, tenant: str, name: str) -> None:
        """Register a collection (no-op if it exists)."""
        exists = sql.first_row(
            self.engine,
            select(collections.c.name).where(
                (collections.c.tenant == tenant) & (collections.c.name == name)
            ),
        )
        if exists is None:
            sql.insert_ignoring_duplicate(
                self.engine,
                collections.insert().values(tenant=tenant, name=name, created_at=now()),
            )

    def register_version(
        self,
        tenant: str,
        collection: str,
        version: str,
        embedding: EmbeddingSchema,
        store: dict[str, Any],
        state: str,
        migration_id: str | None = None,
    ) -> VersionRecord:
        """Register a vector version and its schema; an existing version is returned unchanged.

        Raises:
            PreconditionError: the version exists with another embedding schema.
        """
        self.ensure_collection(tenant, collection)
        sid = schema_id(embedding)
        known = sql.first_row(
            self.engine, select(embedding_schemas.c.id).where(embedding_schemas.c.id == sid)
        )
        if known is None:
            sql.insert_ignoring_duplicate(
                self.engine,
                embedding_schemas.insert().values(id=sid, **schema_values(embedding)),
            )
        existing = self.find_version(tenant, collection, version)
        if existing is not None:
            if existing.embedding != embedding:
                raise PreconditionError(
                    f"version {version!r} of {tenant}/{collection} is registered with "
                    f"{_describe(existing.embedding)}, not {_describe(embedding)}: "
                    "fix the spec or choose a new version name"
                )
            return existing
        sql.insert_ignoring_duplicate(
            self.engine,
            vector_versions.insert().values(
                tenant=tenant,
                collection=collection,
                version=version,
                embedding_schema=sid,
                store=store,
                state=state,
                migration_id=migration_id,
                created_at=now(),
                updated_at=now(),
            ),
        )
        found = self.find_version(tenant, collection, version)
        assert found is not None
        return found

    def tenants_with(self, collection: str, version: str) -> list[str]:
        """Tenants whose ``collection`` has ``version`` registered, sorted."""
        rows = sql.all_rows(
            self.engine,
            select(vector_versions.c.tenant)
            .where(
                (vector_versions.c.collection == collection)
                & (vector_versions.c.version == version)
            )
            .order_by(vector_versions.c.tenant),
        )
        return [r["tenant"] for r in rows]

    def find_version(self, tenant: str, collection: str, version: str) -> VersionRecord | None:
        """A registered version, or None."""
        q = (
            select(vector_versions, embedding_schemas)
            .join(embedding_schemas, embedding_schemas.c.id == vector_versions.c.embedding_schema)
            .where(
                sql.in_scope(vector_versions, tenant, collection)
                & (vector_versions.c.version == version)
            )
        )
        row = sql.first_row(self.engine, q)
        if row is None:
            return None
        return sql.record(
            VersionRecord, row, embedding=schema_from_row(row), store=dict(row["store"])
        )

    def list_collections(self) -> list[tuple[str, str]]:
        """Every (tenant, collection) registered, sorted."""
        rows = sql.all_rows(
            self.engine,
            select(collections.c.tenant, collections.c.name).order_by(
                collections.c.tenant, collections.c.name
            ),
        )
        return [(r["tenant"], r["name"]) for r in rows]

    def versions_of(self, tenant: str, collection: str) -> list[VersionRecord]:
        """Every registered version of a collection, oldest first."""
        rows = sql.all_rows(
            self.engine,
            select(vector_versions.c.version)
            .where(sql.in_scope(vector_versions, tenant, collection))
            .order_by(vector_versions.c.created_at),
        )
        found = [self.find_version(tenant, collection, r["version"]) for r in rows]
        return [v for v in found if v is not None]

    def indexes_of(self, tenant: str, collection: str, version: str) -> list[IndexVersionRecord]:
        """Every index registered for a version, oldest first."""
        rows = sql.all_rows(
            self.engine,
            select(index_versions.c.id)
            .where(
                sql.in_scope(index_versions, tenant, collection)
                & (index_versions.c.version == version)
            )
            .order_by(index_versions.c.created_at),
        )
        return [self.get_index(r["id"]) for r in rows]

    def set_version_state(self, tenant: str, collection: str, version: str, state: str) -> None:
        """Move a version to a new state (building, ready, serving, retained, abandoned)."""
        with begin(self.engine) as conn:
            n = conn.execute(
                vector_versions.update()
                .where(
                    sql.in_scope(vector_versions, tenant, collection)
                    & (vector_versions.c.version == version)
                )
                .values(state=state, updated_at=now())
            ).rowcount
        if n == 0:
            raise NotFoundError(f"version {version!r} of {tenant}/{collection} is not registered")

    # -- index versions ----------------------------------------------------------------------

    def register_index(
        self,
        index_id: str,
        tenant: str,
        collection: str,
        version: str,
        spec: IndexSpec,
        artifacts: list[dict[str, Any]],
        migration_id: str | None = None,
    ) -> IndexVersionRecord:
        """Register an index version (idempotent on ``index_id``)."""
        digest = hashlib.sha256(
            json.dumps(sorted(a["sha256"] for a in artifacts)).encode()
        ).hexdigest()
        row = sql.first_row(
            self.engine, select(index_versions.c.id).where(index_versions.c.id == index_id)
        )
        if row is None:
            sql.insert_ignoring_duplicate(
                self.engine,
                index_versions.insert().values(
                    id=index_id,
                    tenant=tenant,
                    collection=collection,
                    version=version,
                    spec=spec.model_dump(mode="json"),
                    artifacts=artifacts,
                    checksum=digest,
                    migration_id=migration_id,
                    created_at=now(),
                ),
            )
        return self.get_index(index_id)

    def get_index(self, index_id: str) -> IndexVersionRecord:
        """A registered index version.

        Raises:
            NotFoundError: no such index version.
        """
        row = sql.first_row(
            self.engine, select(index_versions).where(index_versions.c.id == index_id)
        )
        if row is None:
            raise NotFoundError(f"index version {index_id!r} is not registered")
        return sql.record(
            IndexVersionRecord, row, spec=dict(row["spec"]), artifacts=list(row["artifacts"])
        )

    # -- routing -----------------------------------------------------------------------------

    def get_routing(self, tenant: str, collection: str) -> RoutingView | None:
        """The routing row of a collection, or None if it has none yet."""
        row = sql.first_row(
            self.engine, select(routing).where(sql.in_scope(routing, tenant, collection))
        )
        if row is None:
            return None
        return self._view(row)

    def init_routing(
        self,
        tenant: str,
        collection: str,
        read_version: str,
        read_index: str | None,
        actor: str,
    ) -> RoutingView:
        """Create the routing row of a new collection (generation 1); existing rows win."""
        sql.insert_ignoring_duplicate(
            self.engine,
            routing.insert().values(
                tenant=tenant,
                collection=collection,
                read_version=read_version,
                read_index=read_index,
                write_versions=[read_version],
                generation=1,
                change_key=f"init:{tenant}/{collection}",
                updated_by=actor,
                reason="collection created",
                updated_at=now(),
            ),
        )
        view = self.get_routing(tenant, collection)
        assert view is not None
        return view

    def compare_and_set_routing(
        self,
        tenant: str,
        collection: str,
        expected_generation: int,
        read_version: str | None,
        read_index: str | None,
        write_versions: list[str],
        actor: str,
        reason: str,
        change_key: str,
        *,
        candidate_version: str | None = None,
        candidate_index: str | None = None,
        ramp_percent: float = 0.0,
        shadow_percent: float = 0.0,
        writes_paused: bool = False,
    ) -> RoutingView:
        """Switch routing atomically if nobody changed it since ``expected_generation``.

        Every field is set (a change states the whole row), so a retried change is exact.

        Raises:
            RoutingConflictError: the row moved on (someone else changed routing).
            NotFoundError: the collection has no routing row.
        """
        where = sql.in_scope(routing, tenant, collection)
        with begin(self.engine) as conn:
            current = conn.execute(select(routing).where(where)).mappings().first()
            if current is None:
                raise NotFoundError(f"{tenant}/{collection} has no routing row; seed it first")
            if current["change_key"] == change_key:
                return self._view(current)
            n = conn.execute(
                routing.update()
                .where(where & (routing.c.generation == expected_generation))
                .values(
                    read_version=read_version,
                    read_index=read_index,
                    write_versions=write_versions,
                    generation=expected_generation + 1,
                    change_key=change_key,
                    updated_by=actor,
                    reason=reason,
                    updated_at=now(),
                    candidate_version=candidate_version,
                    candidate_index=candidate_index,
                    ramp_percent=ramp_percent,
                    shadow_percent=shadow_percent,
                    writes_paused=writes_paused,
                )
            ).rowcount
            if n != 1:
                raise RoutingConflictError(
                    f"routing of {tenant}/{collection} is at generation {current['generation']}, "
                    f"not {expected_generation}: someone else changed it ({current['updated_by']}: "
                    f"{current['reason']}); check `vecmigrate status` before retrying"
                )
        view = self.get_routing(tenant, collection)
        assert view is not None
        return view

    @staticmethod
    def _view(row: Any) -> RoutingView:
        return RoutingView(
            read_version=row["read_version"],
            read_index=row["read_index"],
            write_versions=list(row["write_versions"]),
            generation=row["generation"],
            candidate_version=row["candidate_version"],
            candidate_index=row["candidate_index"],
            ramp_percent=float(row["ramp_percent"] or 0.0),
            shadow_percent=float(row["shadow_percent"] or 0.0),
            writes_paused=bool(row["writes_paused"]),
        )

    # -- migrations --------------------------------------------------------------------------

    def record_migration(self, spec: MigrationSpec, phase: str, requested_by: str) -> None:
        """Register a migration (idempotent) or update its phase."""
        mid = spec.migration_id
        with begin(self.engine) as conn:
            row = conn.execute(select(migrations.c.id).where(migrations.c.id == mid)).first()
            if row is None:
                conn.execute(
                    migrations.insert().values(
                        id=mid,
                        tenant=spec.tenant,
                        collection=spec.collection,
                        source_version=spec.source.name,
                        target_version=spec.target.name,
                        spec=spec.model_dump(mode="json"),
                        spec_hash=spec.spec_hash(),
                        phase=phase,
                        requested_by=requested_by,
                        created_at=now(),
                        updated_at=now(),
                    )
                )
            else:
                conn.execute(
                    migrations.update()
                    .where(migrations.c.id == mid)
                    .values(phase=phase, updated_at=now())
                )

    def set_migration_phase(self, migration_id: str, phase: str) -> None:
        """Record a migration's current phase."""
        with begin(self.engine) as conn:
            conn.execute(
                migrations.update()
                .where(migrations.c.id == migration_id)
                .values(phase=phase, updated_at=now())
            )

    def get_migration(self, migration_id: str) -> dict[str, Any]:
        """A migration row as a mapping.

        Raises:
            NotFoundError: unknown migration id.
        """
        row = sql.first_row(self.engine, select(migrations).where(migrations.c.id == migration_id))
        if row is None:
            raise NotFoundError(f"no migration {migration_id!r} in the catalog")
        return dict(row)

    def migrations_of(self, tenant: str, collection: str) -> list[dict[str, Any]]:
        """Every migration of a collection as recorded here, oldest first."""
        rows = sql.all_rows(
            self.engine,
            select(migrations)
            .where(sql.in_scope(migrations, tenant, collection))
            .order_by(migrations.c.created_at),
        )
        return [dict(r) for r in rows]

    def stable_names(self) -> dict[str, set[tuple[str, str]]]:
        """Each stable name the catalog knows, with the collections (tenant, collection) it
        fronts: the ``cutover.stable_name`` of every migration recorded here, and the names
        ``vecmigrate stable-name prepare`` set up (and did not undo) before any migration."""
        found: dict[str, set[tuple[str, str]]] = {}
        rows = sql.all_rows(
            self.engine, select(migrations.c.tenant, migrations.c.collection, migrations.c.spec)
        )
        for r in rows:
            spec = r["spec"] if isinstance(r["spec"], dict) else json.loads(r["spec"])
            name = (spec.get("cutover") or {}).get("stable_name")
            if name:
                found.setdefault(name, set()).add((r["tenant"], r["collection"]))
        prepared: dict[tuple[str, str, str], bool] = {}
        q = (
            select(ledger.c.tenant, ledger.c.collection, ledger.c.data)
            .where(ledger.c.kind == "stable_name.prepared")
            .order_by(ledger.c.seq)
        )
        for r in sql.all_rows(self.engine, q):
            data = json.loads(r["data"])
            if data.get("name"):
                prepared[(data["name"], r["tenant"], r["collection"])] = not data.get("undo")
        for (name, tenant, collection), kept in prepared.items():
            if kept:
                found.setdefault(name, set()).add((tenant, collection))
        return found

    # -- ledger ------------------------------------------------------------------------------

    def append(
        self,
        *,
        tenant: str,
        collection: str,
        kind: str,
        actor: str,
        data: dict[str, Any] | None = None,
        migration_id: str | None = None,
        event_key: str | None = None,
        at: datetime | None = None,
        region: str | None = None,
        caller: str | None = None,
    ) -> LedgerEntry:
        """Append one entry; with an ``event_key`` already present, return that entry instead.

        ``region`` names the region whose worker writes it (every entry of a regional
        migration's child says where it happened); ``caller`` the identity the message's
        connection authenticated as, beside ``actor``, the operator it declared. With a key
        ring the entry is MACed; either way it is anchored in the anchor files.

        Appends from one process take turns (activities run on many threads): only appends
        from other processes can race for the chain's head, and the loser reads it again.
        """
        ring = environment_keyring()
        # The entry as it will read, but for its time and its place in the chain, which each
        # attempt sets afresh.
        draft = LedgerEntry(
            seq=0,
            migration_id=migration_id,
            tenant=tenant,
            collection=collection,
            at="",
            actor=actor,
            kind=kind,
            event_key=event_key,
            data=json.loads(json.dumps(data or {}, default=str)),
            prev_hash=GENESIS,
            hash="",
            region=region,
            caller=caller,
        )
        with _append_lock:
            entry = self._append(draft, at, ring)
        # Anchored again when a retry finds the entry already there: an anchor only says the
        # entry exists with its hash, and the first attempt may have died before writing it.
        self.anchors.write("catalog", entry.seq, entry.hash, entry.at, ring)
        if entry.migration_id is not None and entry.kind in ("phase", "migration.started"):
            self.anchors.write(entry.migration_id, entry.seq, entry.hash, entry.at, ring)
        return entry

    def _append(self, draft: LedgerEntry, at: datetime | None, ring: KeyRing | None) -> LedgerEntry:
        for _ in range(50):
            if draft.event_key is not None:
                existing = self._entry_by_key(draft.event_key)
                if existing is not None:
                    return existing
            last = sql.first_row(
                self.engine, select(ledger.c.hash).order_by(ledger.c.seq.desc()).limit(1)
            )
            prev = last["hash"] if last is not None else GENESIS
            entry = replace(draft, at=(at or now()).isoformat(), prev_hash=prev)
            body = entry.body()
            digest = entry_hash(prev, body)
            key_id = mac = None
            if ring is not None:
                key_id = ring.active
                _, mac = ring.mac(LEDGER_MAC, mac_input(key_id, digest), key_id)
            try:
                with begin(self.engine) as conn:
                    seq = conn.execute(
                        ledger.insert().values(
                            **{**body, "data": json.dumps(entry.data, sort_keys=True)},
                            prev_hash=prev,
                            hash=digest,
                            key_id=key_id,
                            mac=mac,
                        )
                    ).inserted_primary_key
            except IntegrityError:
                continue  # another writer extended the chain (or wrote this key): read again
            assert seq is not None
            return replace(entry, seq=int(seq[0]), hash=digest, key_id=key_id, mac=mac)
        raise RuntimeError("could not append to the ledger after 50 attempts")

    def entry_by_key(self, event_key: str) -> LedgerEntry | None:
        """The entry appended with ``event_key``, or None."""
        return self._entry_by_key(event_key)

    def _entry_by_key(self, event_key: str) -> LedgerEntry | None:
        row = sql.first_row(self.engine, select(ledger).where(ledger.c.event_key == event_key))
        return _entry(row) if row is not None else None

    def entries(self, migration_id: str | None = None) -> list[LedgerEntry]:
        """Ledger entries in order, all or one migration's."""
        q = select(ledger).order_by(ledger.c.seq)
        if migration_id is not None:
            q = q.where(ledger.c.migration_id == migration_id)
        return [_entry(r) for r in sql.all_rows(self.engine, q)]

    def verify_ledger(self) -> list[str]:
        """The tampering :meth:`audit_ledger` finds (empty when none; what it could not check
        is not listed here)."""
        return self.audit_ledger().problems

    def audit_ledger(
        self,
        *,
        history: Iterable[tuple[int, str]] | None = None,
        migration_id: str | None = None,
        ring: KeyRing | None = None,
    ) -> LedgerVerdict:
        """Check the whole ledger and say what is intact, what was tampered with, and what could
        not be checked. Fails closed: whatever cannot be checked is ``unverified``.

        * the chain: an entry edited, removed, inserted or moved anywhere but at the end;
        * the MACs (with ``ring``, default the configured one): a chain rewritten and re-hashed
          by someone without the key; without a ring nothing vouches for the hashes, and the
          verdict says so;
        * the signed anchors outside the catalog: a cut or rewritten tail, an entry of no
          migration removed; entries no anchor covers are reported;
        * ``history``: the (seq, hash) Temporal's history of ``migration_id`` recorded for each
          entry the migration appended (None: not consulted, which the caller reports).
        """
        ring = ring or environment_keyring()
        verdict = LedgerVerdict()
        entries = self.entries()
        verdict.entries = len(entries)
        by_seq = {e.seq: e for e in entries}
        self._check_chain(entries, verdict)
        self._check_macs(entries, ring, verdict)
        anchored = self._check_anchors("catalog", by_seq, ring, verdict)
        if migration_id is not None:
            anchored |= self._check_anchors(migration_id, by_seq, ring, verdict)
        for seq, digest in history or ():
            anchored.add(seq)
            found = by_seq.get(seq)
            if found is None:
                verdict.problems.append(
                    f"entry {seq}, which the workflow's history recorded, is missing: the "
                    "ledger was cut"
                )
            elif found.hash != digest:
                verdict.problems.append(
                    f"entry {seq} is not the one the workflow's history recorded "
                    f"({digest[:12]}): it was rewritten"
                )
        newest = max(anchored, default=0)
        loose = [e.seq for e in entries if e.seq > newest]
        if loose:
            verdict.unverified.append(
                f"entries {loose[0]}..{loose[-1]} come after every anchor (written by a process "
                "that stopped before anchoring them, or appended by someone else)"
            )
        return verdict

    @staticmethod
    def _check_chain(entries: list[LedgerEntry], verdict: LedgerVerdict) -> None:
        prev = GENESIS
        for e in entries:
            if e.prev_hash != prev:
                verdict.problems.append(
                    f"entry {e.seq}: does not follow the entry before it "
                    "(an entry was removed, inserted or moved)"
                )
            if entry_hash(e.prev_hash, e.body()) != e.hash:
                verdict.problems.append(f"entry {e.seq}: content does not match its hash (edited)")
            prev = e.hash

    @staticmethod
    def _check_macs(
        entries: list[LedgerEntry], ring: KeyRing | None, verdict: LedgerVerdict
    ) -> None:
        keyed = [e for e in entries if e.mac is not None]
        if ring is None:
            verdict.unverified.append(
                "no key ring (VECMIGRATE_KEYRING): the hashes were checked, but anyone who can "
                "write to the catalog could have rewritten entries and recomputed them"
            )
            return
        if not keyed:
            if entries:
                verdict.unverified.append("no ledger entry is MACed: nothing vouches for them")
            return
        first = keyed[0].seq
        legacy = sum(1 for e in entries if e.seq < first)
        if legacy:
            verdict.notes.append(f"{legacy} entries predate the ledger key (chain only)")
        for e in entries:
            if e.seq < first:
                continue
            if e.mac is None or e.key_id is None:
                verdict.problems.append(f"entry {e.seq}: its MAC was removed")
            elif e.key_id not in ring.keys:
                verdict.unverified.append(
                    f"entry {e.seq} is MACed with key {e.key_id}, which the key ring lacks"
                )
            elif not ring.verify_mac(LEDGER_MAC, e.key_id, mac_input(e.key_id, e.hash), e.mac):
                verdict.problems.append(
                    f"entry {e.seq}: its MAC does not match (rewritten without the key)"
                )

    def _check_anchors(
        self,
        scope: str,
        by_seq: dict[int, LedgerEntry],
        ring: KeyRing | None,
        verdict: LedgerVerdict,
    ) -> set[int]:
        anchored: set[int] = set()
        if not self.anchors.exists(scope):
            if scope == "catalog" and by_seq:
                verdict.unverified.append(
                    f"no anchor file for this catalog in {self.anchors.root}: nothing outside "
                    "the catalog vouches for its tail"
                )
            return anchored
        for anchor in self.anchors.read(scope):
            if isinstance(anchor, str):
                verdict.problems.append(anchor)
                continue
            bad = self.anchors.signature_problem(anchor, ring)
            if bad is not None:
                (verdict.problems if "bad signature" in bad else verdict.unverified).append(bad)
                continue
            anchored.add(anchor.seq)
            found = by_seq.get(anchor.seq)
            if found is None:
                verdict.problems.append(
                    f"entry {anchor.seq}, anchored at {anchor.at}, is missing: the ledger was cut "
                    "or an entry removed"
                )
            elif found.hash != anchor.hash:
                verdict.problems.append(
                    f"entry {anchor.seq} does not match its anchor ({anchor.hash[:12]}): it was "
                    "rewritten"
                )
        return anchored

    # -- operator roles ----------------------------------------------------------------------

    def grant_role(
        self, identity: str, role: Role, tenant: str, collection: str, actor: str
    ) -> None:
        """Give ``identity`` (exact or a pattern) ``role`` on ``tenant``/``collection`` (``*``
        for any), replacing a role it held there; the ledger records the grant."""
        RoleBinding(identity=identity, role=role, tenant=tenant, collection=collection)
        key = sql.in_scope(access_roles, tenant, collection) & (access_roles.c.identity == identity)
        with begin(self.engine) as conn:
            sql.replace_row(
                conn,
                access_roles,
                key,
                tenant=tenant,
                collection=collection,
                identity=identity,
                role=str(role),
                granted_by=actor,
                granted_at=now(),
            )
        self._access_changed(
            "granted", tenant, collection, actor, identity=identity, role=str(role)
        )

    def revoke_role(self, identity: str, tenant: str, collection: str, actor: str) -> bool:
        """Take ``identity``'s role on ``tenant``/``collection`` away; whether it held one."""
        key = sql.in_scope(access_roles, tenant, collection) & (access_roles.c.identity == identity)
        with begin(self.engine) as conn:
            gone = conn.execute(access_roles.delete().where(key)).rowcount
        if gone:
            self._access_changed("revoked", tenant, collection, actor, identity=identity)
        return bool(gone)

    def set_four_eyes(self, tenant: str, collection: str, on: bool, actor: str) -> None:
        """Require (or not) that a cut-over's approver differ from the migration's starter."""
        key = sql.in_scope(access_settings, tenant, collection)
        with begin(self.engine) as conn:
            sql.replace_row(
                conn, access_settings, key, tenant=tenant, collection=collection, four_eyes=on
            )
        self._access_changed("four_eyes", tenant, collection, actor, four_eyes=on)

    def _access_changed(
        self, change: str, tenant: str, collection: str, actor: str, **data: Any
    ) -> None:
        """Record a change of who may steer ``tenant``/``collection`` (``roles.<change>``)."""
        self.append(
            tenant=tenant, collection=collection, kind=f"roles.{change}", actor=actor, data=data
        )

    def access_policy(self, tenant: str, collection: str) -> AccessPolicy:
        """The roles and four-eyes rule in force on ``tenant``/``collection``."""
        tenants, collections = (tenant, "*"), (collection, "*")
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(access_roles)
                .where(access_roles.c.tenant.in_(tenants))
                .where(access_roles.c.collection.in_(collections))
                .order_by(access_roles.c.tenant, access_roles.c.collection, access_roles.c.identity)
            ).mappings()
            bindings = tuple(
                RoleBinding(
                    identity=r["identity"],
                    role=Role(r["role"]),
                    tenant=r["tenant"],
                    collection=r["collection"],
                )
                for r in rows
            )
            four_eyes = conn.execute(
                select(access_settings.c.four_eyes)
                .where(access_settings.c.tenant.in_(tenants))
                .where(access_settings.c.collection.in_(collections))
            ).all()
        return AccessPolicy(bindings=bindings, four_eyes=any(r[0] for r in four_eyes))

    def knows_migration(self, migration_id: str) -> bool:
        """Whether the catalog has a migration row or any ledger entry for ``migration_id``."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(migrations.c.id).where(migrations.c.id == migration_id)
            ).first()
            if row is None:
                row = conn.execute(
                    select(ledger.c.seq).where(ledger.c.migration_id == migration_id).limit(1)
                ).first()
        return row is not None

    def latest(self, migration_id: str, kind: str) -> LedgerEntry | None:
        """The newest entry of ``kind`` for a migration."""
        row = sql.first_row(
            self.engine,
            select(ledger)
            .where((ledger.c.migration_id == migration_id) & (ledger.c.kind == kind))
            .order_by(ledger.c.seq.desc())
            .limit(1),
        )
        return _entry(row) if row is not None else None


def _entry(row: Any) -> LedgerEntry:
    return sql.record(LedgerEntry, row, data=json.loads(row["data"]))


def _describe(e: EmbeddingSchema) -> str:
    return f"{e.model_id}@{e.model_version} ({e.dimension}d, {e.metric})"


class CatalogTables:
    """Tables of a part of vecmigrate (the journal, the change log, the model registry) in a
    catalog's database: :meth:`_create` makes or upgrades them once per engine, on first use."""

    part: str = ""
    """The part's name, what the engine remembers its tables by."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.engine = catalog.engine
        once_per_engine(self.engine, self.part, self._create)

    def _create(self) -> None:
        raise NotImplementedError
