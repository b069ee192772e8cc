"""The shard key computed in PostgreSQL for rows an application inserts through a stable-name
view equals the one vecmigrate computes, for integer, text and UUID ids; a row inserted through
the view is found in its shard by a scan."""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np
import psycopg
import pyarrow as pa
import pytest

from tests.conftest import postgres_database
from vecmigrate.catalog.engines import dispose_engines
from vecmigrate.model.records import FieldKind, IdKind, PayloadField, RecordSchema, VectorField
from vecmigrate.records.batch import assemble
from vecmigrate.records.ids import id_array, labels
from vecmigrate.records.sharding import hash_key, hash_shards
from vecmigrate.stores import PgvectorStore, Scope, pgshardkey


def _pg(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def _values(kind: IdKind) -> list[Any]:
    rng = np.random.default_rng(7)
    if kind == IdKind.INT:
        edge = [0, 1, -1, -2, 2**63 - 2, -(2**63) + 2, 2**32, -(2**31)]
        return edge + [int(v) for v in rng.integers(-(2**62), 2**62, 300, dtype=np.int64)]
    if kind == IdKind.UUID:
        return [str(uuid.UUID(int=int(v))) for v in rng.integers(0, 2**62, 200)] + [
            str(uuid.UUID(int=0)),
            str(uuid.UUID(int=2**128 - 1)),
        ]
    # Every length from 0 to 40 (word boundaries), and non-ASCII text.
    texts = ["", "é", "日本語の文", "x" * 7, "y" * 8, "z" * 9] + [
        "".join(chr(97 + int(c)) for c in rng.integers(0, 26, n)) for n in range(1, 41)
    ]
    return list(dict.fromkeys(texts))


@pytest.mark.parametrize("kind", [IdKind.INT, IdKind.STRING, IdKind.UUID])
def test_the_sql_shard_key_equals_the_python_one(postgres: Any, kind: IdKind) -> None:
    url = postgres_database(postgres)
    values = _values(kind)
    expected = hash_key(labels(id_array(values, kind), kind))
    sqltype = {IdKind.INT: "bigint", IdKind.STRING: "text", IdKind.UUID: "uuid"}[kind]
    with psycopg.connect(_pg(url), autocommit=True) as conn:
        for stmt in pgshardkey.function_sql("public"):
            conn.execute(stmt)
        got = [
            conn.execute(
                f"SELECT vm_shard_key(vm_label(%s::{sqltype})), vm_label(%s::{sqltype})", (v, v)
            ).fetchone()
            for v in values
        ]
    assert [int(g[0]) for g in got if g] == [int(x) for x in expected]
    assert [int(g[1]) for g in got if g] == [int(x) for x in labels(id_array(values, kind), kind)]


@pytest.mark.parametrize("kind", [IdKind.INT, IdKind.STRING, IdKind.UUID])
def test_a_row_inserted_through_the_view_is_in_its_shard(postgres: Any, kind: IdKind) -> None:
    """vecmigrate writes half the records, the application inserts the rest through the view
    with plain SQL: every row holds the key vecmigrate computes, and a scan of the hash shards
    finds each record once."""
    url = postgres_database(postgres)
    schema = RecordSchema(
        id_kind=kind,
        vectors=(VectorField(name="embedding", dimension=3),),
        payload=(PayloadField(name="title", kind=FieldKind.TEXT),),
    )
    store = PgvectorStore.open(url, Scope("default", "docs", "v2"), schema=schema)
    values = _values(kind)[:40]
    ids = id_array(values[:20], kind)
    records, faults = assemble(
        schema,
        ids,
        {"embedding": np.ones((20, 3), np.float32)},
        {"title": pa.nulls(20, pa.string())},
    )
    assert not len(faults)
    try:
        store.write(records)
        store.point_name("live")
        with psycopg.connect(_pg(url), autocommit=True) as conn:
            for v in values[20:]:
                conn.execute(
                    "INSERT INTO live (id, embedding, title) VALUES (%s, '[1,1,1]', 'app')", (v,)
                )
            held = dict(conn.execute(f"SELECT id::text, _vm_h FROM {store.table}").fetchall())
        want = hash_key(labels(id_array(values, kind), kind))
        assert held == {str(v): int(k) for v, k in zip(values, want, strict=True)}
        found: list[str] = []
        for shard in hash_shards(4):
            batch = store.scan(shard, None, 1000)
            found += [str(v) for v in batch.records.id_values()]
        assert sorted(found) == sorted(str(v) for v in values)
    finally:
        dispose_engines()
