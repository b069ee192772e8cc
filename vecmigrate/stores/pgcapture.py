"""Change capture on PostgreSQL: writes an application makes to an adopted table with plain SQL,
recorded by a trigger into a change table for the migration to replay onto its target.

Why a trigger and not logical decoding: a replication slot needs ``wal_level = logical`` (a
server restart to turn on, and not offered by every managed database nor by the test server),
the ``REPLICATION`` attribute, and it holds back WAL for as long as it exists, so a slot left
behind fills the disk even when nothing reads it. A trigger works on any server where the
migration's role may create a table and a trigger, costs each write of the application one
small insert in its own transaction (``bench/capture_overhead.py`` measures it), and what it
leaves behind is an ordinary table, visible and bounded by the writes made.

One capture per migration and direction, named from its id (the capture of the target's
writes, made when a stable name moves to the target, has the suffix :data:`BACK`):

* the change table ``vm_capture_<id>_<hash>`` (``seq bigserial, op, id text, captured_at``),
  its comment the migration id, the source table and when it was made (what ``doctor`` reads
  to find a capture whose migration ended);
* the trigger function ``<change table>_fn`` and the trigger of the same name as the table,
  ``AFTER INSERT OR UPDATE OR DELETE FOR EACH ROW`` on the source: it records the id and the
  operation (an update that changes the id records a delete of the old id too). A write made
  under ``SET LOCAL vecmigrate.replaying = 'on'`` is not recorded.

Replaying reads a batch of changes in order, hands their ids to the caller (which writes the
rows the source holds *now* to the target and deletes the ids it no longer holds), then deletes
exactly those changes, under a transaction-scoped advisory lock so two replays never interleave.
A replay after a crash re-applies at most one batch, which changes nothing: replay is by the
current row, not by the change.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, text

from vecmigrate.stores.pgvector import REPLAYING, PgvectorStore, quote

PREFIX = "vm_capture_"
COMMENT_KEY = "vecmigrate_capture"


@dataclass(frozen=True)
class Capture:
    """One capture as the database holds it."""

    table: str  # the change table, schema-qualified
    migration_id: str
    source: str
    created_at: datetime
    captured: int  # changes recorded since it was made
    pending: int  # changes not replayed yet
    bytes: int
    # "forward" (the source's writes, replayed onto the target) or BACK (the target's,
    # replayed onto the source after the cut-over moved the stable name).
    direction: str = "forward"

    @property
    def age_seconds(self) -> float:
        return (datetime.now(UTC) - self.created_at).total_seconds()


@dataclass(frozen=True)
class Replayed:
    """What one replay call did."""

    applied: int
    drained: bool


# The direction suffix of the capture of the target's writes, replayed onto the source (the
# capture of the source's writes has none, as before).
BACK = "_t2s"


def change_table(migration_id: str, suffix: str = "") -> str:
    """The change table's name (without schema) for ``migration_id`` and a direction
    ``suffix``: readable, unique by a hash of the id, and short enough for PostgreSQL's 63
    bytes with ``_fn`` added."""
    slug = re.sub(r"[^a-z0-9]+", "_", migration_id.lower()).strip("_")[:32]
    digest = hashlib.sha256(migration_id.encode()).hexdigest()[:8]
    return f"{PREFIX}{slug}_{digest}{suffix}"


def _lock_key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def _lock(conn: Connection, name: str) -> None:
    conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _lock_key(name)})


def _qualified(conn: Connection, migration_id: str, suffix: str = "") -> tuple[str, str]:
    """The change table's schema-qualified name (in the schema the migration's role creates
    in) and its bare name."""
    schema = conn.execute(text("SELECT current_schema()")).scalar_one()
    name = change_table(migration_id, suffix)
    return f"{schema}.{name}", name


def _exists(conn: Connection, table: str) -> bool:
    return conn.execute(text("SELECT to_regclass(:t)"), {"t": quote(table)}).scalar() is not None


def install_problem(store: PgvectorStore) -> str | None:
    """Why the migration's role could not install a capture on ``store``'s table, or None."""
    with store.engine.begin() as conn:
        row = conn.execute(
            text(
                "SELECT current_user, current_schema(), has_table_privilege(:t, 'TRIGGER'), "
                "has_schema_privilege(current_schema(), 'CREATE')"
            ),
            {"t": quote(store.table)},
        ).one()
    user, schema, trigger, create = row
    if not trigger:
        return (
            f"role {user} may not create a trigger on {store.table}: GRANT TRIGGER ON "
            f"{store.table} TO {user}"
        )
    if not create:
        return (
            f"role {user} may not create the change table in schema {schema}: GRANT CREATE ON "
            f"SCHEMA {schema} TO {user}"
        )
    return None


def install(store: PgvectorStore, migration_id: str, suffix: str = "") -> Capture:
    """Start capturing the writes made to ``store``'s table (idempotent: a second install
    finds the first and keeps what it captured).

    Raises:
        sqlalchemy.exc.DBAPIError: the role may not create a table or a trigger there.
    """
    idc = f"{{row}}.{quote(store.layout.id.name)}::text"
    with store.engine.begin() as conn:
        table, name = _qualified(conn, migration_id, suffix)
        _lock(conn, table)
        if not _exists(conn, table):
            conn.execute(
                text(
                    f"CREATE TABLE {quote(table)} (seq bigserial PRIMARY KEY, op char(1) NOT NULL, "
                    "id text NOT NULL, captured_at timestamptz NOT NULL DEFAULT clock_timestamp())"
                )
            )
            note = {
                COMMENT_KEY: {
                    "migration_id": migration_id,
                    "source": store.table,
                    "direction": suffix or "forward",
                    "created_at": datetime.now(UTC).isoformat(),
                }
            }
            # A utility statement takes no parameters: the note is a quoted literal.
            literal = "'" + json.dumps(note).replace("'", "''") + "'"
            conn.execute(text(f"COMMENT ON TABLE {quote(table)} IS {literal}"))
        old, new = idc.format(row="OLD"), idc.format(row="NEW")
        insert = f"INSERT INTO {quote(table)} (op, id) VALUES"
        conn.execute(
            text(
                f"CREATE OR REPLACE FUNCTION {quote(table + '_fn')}() RETURNS trigger "
                "LANGUAGE plpgsql AS $body$\n"
                "BEGIN\n"
                f"  IF current_setting('{REPLAYING}', true) = 'on' THEN RETURN NULL; END IF;\n"
                "  IF TG_OP = 'DELETE' THEN\n"
                f"    {insert} ('D', {old});\n"
                f"  ELSIF TG_OP = 'UPDATE' AND {old} IS DISTINCT FROM {new} THEN\n"
                f"    {insert} ('D', {old}), ('U', {new});\n"
                "  ELSE\n"
                f"    {insert} (left(TG_OP, 1), {new});\n"
                "  END IF;\n"
                "  RETURN NULL;\n"
                "END\n$body$"
            )
        )
        conn.execute(text(f"DROP TRIGGER IF EXISTS {quote(name)} ON {quote(store.table)}"))
        conn.execute(
            text(
                f"CREATE TRIGGER {quote(name)} AFTER INSERT OR UPDATE OR DELETE ON "
                f"{quote(store.table)} FOR EACH ROW EXECUTE FUNCTION {quote(table + '_fn')}()"
            )
        )
    found = find(store.engine, migration_id)
    assert found is not None
    return found


def replay(
    store: PgvectorStore,
    migration_id: str,
    apply: Callable[[list[str]], None],
    *,
    seconds: float,
    batch: int = 1_000,
    on_batch: Callable[[int], None] | None = None,
    suffix: str = "",
) -> Replayed:
    """Hand the captured changes, oldest first, to ``apply`` (the distinct ids of a batch, as
    text) and forget each batch once ``apply`` returns, for at most ``seconds``.

    ``drained`` means a batch found every change there was: the target was current with the
    source as of that batch's reads. A capture that does not exist (removed) is drained.
    """
    began = time.monotonic()
    applied = 0
    while True:
        with store.engine.begin() as conn:
            table, _ = _qualified(conn, migration_id, suffix)
            _lock(conn, table)
            if not _exists(conn, table):
                return Replayed(applied, True)
            rows = conn.execute(
                text(f"SELECT seq, id FROM {quote(table)} ORDER BY seq LIMIT :n"), {"n": batch}
            ).all()
            if rows:
                apply(list(dict.fromkeys(str(r[1]) for r in rows)))
                conn.execute(
                    text(f"DELETE FROM {quote(table)} WHERE seq = ANY(:s)"),
                    {"s": [int(r[0]) for r in rows]},
                )
        applied += len(rows)
        if on_batch is not None and rows:
            on_batch(applied)
        if len(rows) < batch:
            return Replayed(applied, True)
        if time.monotonic() - began > seconds:
            return Replayed(applied, False)


def stop(store: PgvectorStore, migration_id: str, suffix: str = "") -> None:
    """Stop capturing: drop the trigger (with its function); the change table stays for a last
    replay. Idempotent."""
    with store.engine.begin() as conn:
        table, _ = _qualified(conn, migration_id, suffix)
        _lock(conn, table)
        conn.execute(text(f"DROP FUNCTION IF EXISTS {quote(table + '_fn')}() CASCADE"))


def remove(store: PgvectorStore, migration_id: str, suffix: str = "") -> None:
    """Drop the trigger, its function and the change table. Idempotent."""
    stop(store, migration_id, suffix)
    with store.engine.begin() as conn:
        table, _ = _qualified(conn, migration_id, suffix)
        _lock(conn, table)
        conn.execute(text(f"DROP TABLE IF EXISTS {quote(table)}"))


def pending_ids(engine: Engine, migration_id: str, suffix: str = "") -> list[str]:
    """The distinct ids of the changes not replayed yet (none when there is no capture)."""
    with engine.begin() as conn:
        table, _ = _qualified(conn, migration_id, suffix)
        if not _exists(conn, table):
            return []
        rows = conn.execute(text(f"SELECT DISTINCT id FROM {quote(table)}")).all()
    return [str(r[0]) for r in rows]


def find(engine: Engine, migration_id: str, suffix: str = "") -> Capture | None:
    """The capture of ``migration_id``, or None when there is none."""
    for capture in captures(engine):
        if capture.migration_id == migration_id and capture.direction == (suffix or "forward"):
            return capture
    return None


def captures(engine: Engine) -> list[Capture]:
    """Every capture in the database (the change tables vecmigrate's comment marks), with its
    size and how much it holds."""
    found: list[Capture] = []
    with engine.begin() as conn:
        rows = conn.execute(
            text(
                "SELECT n.nspname, c.relname, obj_description(c.oid, 'pg_class') "
                "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE c.relkind = 'r' AND c.relname LIKE :p"
            ),
            {"p": PREFIX + "%"},
        ).all()
        for schema, name, comment in rows:
            note = _note(comment)
            if note is None:
                continue
            table = f"{schema}.{name}"
            figures = conn.execute(
                text(
                    "SELECT count(*), pg_total_relation_size(CAST(:t AS regclass)), "
                    "pg_sequence_last_value(CAST(pg_get_serial_sequence(CAST(:t AS text), "
                    f"'seq') AS regclass)) FROM {quote(table)}"
                ),
                {"t": quote(table)},
            ).one()
            found.append(
                Capture(
                    table=table,
                    migration_id=str(note.get("migration_id", "")),
                    source=str(note.get("source", "")),
                    created_at=datetime.fromisoformat(str(note.get("created_at"))),
                    captured=int(figures[2] or 0),
                    pending=int(figures[0]),
                    bytes=int(figures[1]),
                    direction=str(note.get("direction", "forward")),
                )
            )
    return found


def _note(comment: str | None) -> dict[str, Any] | None:
    if not comment:
        return None
    try:
        data = json.loads(comment)
    except ValueError:
        return None
    note = data.get(COMMENT_KEY) if isinstance(data, dict) else None
    return note if isinstance(note, dict) else None
