"""Source texts of a collection's records, kept beside the catalog.

Vectors belong to a version (one model's view of the records); the text belongs to the record
itself and outlives every version. Re-embedding reads it here, by id. Writes through the router
update it in the same transaction that appends to the change log, so the text of a record is
always the text of its last acknowledged write.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Table,
    Text,
    func,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite

from vecmigrate.catalog import sql
from vecmigrate.catalog.catalog import Catalog, metadata, scope_columns
from vecmigrate.catalog.engines import begin
from vecmigrate.errors import DataError
from vecmigrate.records.vectors import Ids, check_texts

documents = Table(
    "documents",
    metadata,
    *scope_columns(primary_key=True),
    Column("id", BigInteger, primary_key=True, autoincrement=False),
    Column("text", Text, nullable=False),
)

# SQLite binds at most 32,766 parameters per statement: fetch ids in chunks below that.
_CHUNK = 10_000


class Documents:
    """The texts of every record of every collection in a catalog's database."""

    def __init__(self, catalog: Catalog) -> None:
        self.engine = catalog.engine
        sql.create_tables_once(self.engine, "documents", documents)

    def put(self, tenant: str, collection: str, ids: Ids, texts: Sequence[str]) -> None:
        """Insert or replace the texts of these records."""
        with begin(self.engine) as conn:
            write_texts(conn, tenant, collection, ids, texts)

    def get(self, tenant: str, collection: str, ids: Ids) -> list[str | None]:
        """The texts of these ids, in their order (None where a record has none)."""
        found: dict[int, str] = {}
        wanted = np.asarray(ids, np.int64).tolist()
        with self.engine.connect() as conn:
            for start in range(0, len(wanted), _CHUNK):
                rows = conn.execute(
                    select(documents.c.id, documents.c.text).where(
                        sql.in_scope(documents, tenant, collection)
                        & documents.c.id.in_(wanted[start : start + _CHUNK])
                    )
                ).all()
                found.update((int(r[0]), r[1]) for r in rows)
        return [found.get(i) for i in wanted]

    def require(self, tenant: str, collection: str, ids: Ids) -> list[str]:
        """The texts of these ids, every one of them.

        Raises:
            DataError: naming records that have no text (re-embedding cannot make their vector).
        """
        texts = self.get(tenant, collection, ids)
        missing = [
            int(i) for i, t in zip(np.asarray(ids).tolist(), texts, strict=True) if t is None
        ]
        if missing:
            raise DataError(
                f"{tenant}/{collection}: {len(missing)} records have no source text "
                f"(ids {missing[:5]}{' ...' if len(missing) > 5 else ''}); re-embedding needs "
                "the text of every record: load it with `Documents.put` or write it through "
                "the router"
            )
        return [t for t in texts if t is not None]

    def count(self, tenant: str, collection: str) -> int:
        with self.engine.connect() as conn:
            return int(
                conn.execute(
                    select(func.count()).where(sql.in_scope(documents, tenant, collection))
                ).scalar_one()
            )


def write_texts(
    conn: Connection, tenant: str, collection: str, ids: Ids, texts: Sequence[str]
) -> None:
    """Upsert texts by id inside the caller's transaction.

    Raises:
        DataError: not one text per id, or an empty text.
    """
    texts = check_texts(texts)
    id_list = np.asarray(ids, np.int64).tolist()
    if len(texts) != len(id_list):
        raise DataError(f"{len(id_list)} ids but {len(texts)} texts; pass one text per id")
    rows = [
        {"tenant": tenant, "collection": collection, "id": i, "text": t}
        for i, t in zip(id_list, texts, strict=True)
    ]
    if not rows:
        return
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(documents)
    conn.execute(
        stmt.on_conflict_do_update(
            index_elements=["tenant", "collection", "id"], set_={"text": stmt.excluded.text}
        ),
        rows,
    )


def delete_texts(conn: Connection, tenant: str, collection: str, ids: Ids) -> None:
    """Remove these records' texts inside the caller's transaction."""
    id_list = np.asarray(ids, np.int64).tolist()
    for start in range(0, len(id_list), _CHUNK):
        conn.execute(
            documents.delete().where(
                sql.in_scope(documents, tenant, collection)
                & documents.c.id.in_(id_list[start : start + _CHUNK])
            )
        )
