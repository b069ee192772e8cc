"""Small SQL helpers the catalog's tables share: reading rows by column name (and writing them
from a dataclass), the where clause of a collection's rows, idempotent inserts and upserts, and
creating or upgrading a table once per engine."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import fields
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import ColumnElement, Connection, Engine, RowMapping, Table, inspect, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql import Executable

from vecmigrate.catalog.engines import begin, grouped, once_per_engine

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

R = TypeVar("R", bound="DataclassInstance")


def in_scope(table: Table, tenant: str, collection: str) -> ColumnElement[bool]:
    """The rows of ``tenant``/``collection`` in a table with :func:`scope_columns`."""
    return (table.c.tenant == tenant) & (table.c.collection == collection)


def first_row(engine: Engine, query: Executable) -> RowMapping | None:
    """The first row ``query`` reads, by column name, or None."""
    with engine.connect() as conn:
        return conn.execute(query).mappings().first()


def all_rows(engine: Engine, query: Executable) -> Sequence[RowMapping]:
    """Every row ``query`` reads, by column name."""
    with engine.connect() as conn:
        return conn.execute(query).mappings().all()


def record(cls: type[R], row: Mapping[Any, Any], **given: Any) -> R:
    """A dataclass from a row: each field from the column of its name, unless ``given`` (a
    field whose column the row lacks, one an older catalog does not have, keeps its default)."""
    values = {f.name: row[f.name] for f in fields(cls) if f.name in row}
    return cls(**{**values, **given})


def row_values(record: DataclassInstance) -> dict[str, Any]:
    """A dataclass's fields as the columns of its row, the reverse of :func:`record` (the values
    themselves, not copies as :func:`dataclasses.asdict` makes)."""
    return {f.name: getattr(record, f.name) for f in fields(record)}


def insert_ignoring_duplicate(engine: Engine, stmt: Executable) -> None:
    """Run an insert; a duplicate key means a concurrent writer got there first."""
    try:
        with begin(engine) as conn:
            conn.execute(stmt)
    except IntegrityError:
        pass


def upsert(
    engine: Engine,
    table: Table,
    key: ColumnElement[bool],
    identity: Mapping[str, Any],
    values: Mapping[str, Any],
    inserted: Mapping[str, Any] | None = None,
    also: Callable[[Connection], None] | None = None,
) -> None:
    """Set ``values`` on the row ``key`` selects, inserting it (with ``identity``, the values of
    its key columns, and ``inserted`` where given, else ``values``) when there is none, in one
    transaction (which it may share: see :func:`~vecmigrate.catalog.engines.grouped`);
    ``also`` writes more in that transaction. A concurrent writer's insert (a database without
    SQLite's one writer) is written over."""

    def write(conn: Connection) -> None:
        if not conn.execute(table.update().where(key).values(**values)).rowcount:
            conn.execute(table.insert().values(**identity, **(inserted or values)))
        if also is not None:
            also(conn)

    try:
        grouped(engine, write)
    except IntegrityError:  # another writer made the row first: update it
        grouped(engine, write)


def replace_row(conn: Connection, table: Table, key: ColumnElement[bool], **values: Any) -> None:
    """Replace the row ``key`` selects (if any) with ``values``, in ``conn``'s transaction."""
    conn.execute(table.delete().where(key))
    conn.execute(table.insert().values(**values))


def create_tables_once(engine: Engine, what: str, *tables: Table) -> None:
    """Create ``tables`` (if missing) the first time ``what`` is opened on ``engine``."""
    metadata = tables[0].metadata
    once_per_engine(engine, what, lambda: metadata.create_all(engine, tables=list(tables)))


def add_missing_columns(
    engine: Engine,
    table: str,
    added: Mapping[str, str],
    backfill: Callable[[Connection], None] | None = None,
) -> None:
    """Add the columns of ``added`` (name: DDL) a table made by an earlier release lacks; when
    any was missing, ``backfill`` then fills them in the same transaction."""
    have = {c["name"] for c in inspect(engine).get_columns(table)}
    missing = [name for name in added if name not in have]
    if missing:
        with begin(engine) as conn:
            for name in missing:
                conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {name} {added[name]}"))
            if backfill is not None:
                backfill(conn)
