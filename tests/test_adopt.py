"""Migrating the collections people already have, on the real engines and through Temporal.

A pgvector table made by plain SQL (UUID ids, text, jsonb, timestamptz, vector(384), an HNSW
index) with poisoned rows is inspected, then migrated to a new table with other HNSW parameters,
to a Qdrant collection (qdrant-client's local mode) and to a Milvus collection with a VARCHAR
primary key (milvus-lite); a Qdrant collection with UUID ids and two named vectors is migrated
to pgvector; a legacy table (text ids that repeat, ``real[]`` vectors) shows every other kind of
bad record. Results are compared in the engines themselves (SQL, qdrant-client, pymilvus), not
through vecmigrate.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
from sqlalchemy import create_engine, text
from temporalio.client import Client

from tests.conftest import Sandbox, postgres_database, running_worker, vecmigrate
from vecmigrate.catalog.engines import dispose_engines
from vecmigrate.control.client import MigrationClient
from vecmigrate.data.backfill import open_source, open_target
from vecmigrate.data.datasets import clustered
from vecmigrate.data.quarantine import Quarantine
from vecmigrate.model.gates import GateReport
from vecmigrate.model.lifecycle import Phase
from vecmigrate.model.records import parse_filter
from vecmigrate.model.spec import Metric, QdrantStoreRef, parse_spec
from vecmigrate.serving.router import Router
from vecmigrate.stores import Scope, open_store
from vecmigrate.stores.milvus import close_clients as close_milvus
from vecmigrate.stores.qdrant import close_clients as close_qdrant

DIM = 384
GOOD = 1500
POISON = 100
LANGS = ("en", "de", "fr", "ja")
BIG = 70_000  # bytes of body: over the spec's payload cap, and over Milvus's VARCHAR


def _psycopg_url(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def documents_table(url: str, seed: int = 3) -> dict[str, Any]:
    """The table a team runs, made by plain SQL: good rows, then 100 rows with a NULL vector and
    100 with a body over 65,000 bytes. Returns the ids of each kind."""
    rng = np.random.default_rng(seed)
    vectors = clustered(GOOD + 2 * POISON, DIM, clusters=24, seed=seed)
    ids = [uuid.UUID(bytes=rng.bytes(16), version=4) for _ in range(GOOD + 2 * POISON)]
    start = datetime(2020, 1, 1, tzinfo=UTC)
    rows = []
    for i, record_id in enumerate(ids):
        kind = "good" if i < GOOD else ("null" if i < GOOD + POISON else "big")
        rows.append(
            (
                record_id,
                None if i % 11 == 0 else f"document {i}",
                BIG * "x" if kind == "big" else f"body of {i} " * (1 + i % 7),
                None
                if i % 5 == 0
                else json.dumps(
                    {"source": "crawl", "rank": i % 13, "tags": ["a", "b"][: i % 3], "w": 0.25 * i}
                ),
                start + timedelta(minutes=17 * i, microseconds=i),
                LANGS[i % 4],
                1990 + i % 35,
                None
                if kind == "null"
                else "[" + ",".join(repr(float(x)) for x in vectors[i]) + "]",
            )
        )
    with psycopg.connect(_psycopg_url(url)) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        conn.execute(
            "CREATE TABLE documents (id uuid PRIMARY KEY, title text, body text, meta jsonb, "
            "created_at timestamptz, lang text, year integer, embedding vector(384))"
        )
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO documents VALUES (%s, %s, %s, %s::jsonb, %s, %s, %s, %s::vector)",
                rows,
            )
        conn.execute(
            "CREATE INDEX documents_embedding ON documents USING hnsw (embedding "
            "vector_cosine_ops) WITH (m = 16, ef_construction = 64)"
        )
        for column in ("lang", "year", "created_at"):
            conn.execute(f"CREATE INDEX documents_{column} ON documents ({column})")
    return {
        "good": {str(i) for i in ids[:GOOD]},
        "null": {str(i) for i in ids[GOOD : GOOD + POISON]},
        "big": {str(i) for i in ids[GOOD + POISON :]},
    }


def between_engines(**fields: Any) -> dict[str, Any]:
    """The gates of a move between engines: no latency gate, since the engines' round trips
    (an SQL query over a socket against a local Qdrant or milvus-lite in the process), not the
    indexes, would be compared, on a few queries timed on a loaded machine: these tests are
    about the data."""
    return {"min_recall": 0.8, "latency_queries": 5, "max_p99_ratio": None, **fields}


def documents_spec(
    url: str, target: dict[str, Any], source: dict[str, Any] | None = None, **more: Any
) -> Any:
    return parse_spec(
        {
            "id": f"adopt-{uuid.uuid4().hex[:8]}",
            "collection": "documents",
            "source": source
            or {
                "name": "v1",
                "store": {"kind": "pgvector", "url": url, "table": "documents"},
                "embedding": {"model_id": "e5-small", "dimension": DIM, "metric": "cosine"},
                "index": {"kind": "pgvector_hnsw", "m": 16, "ef_construction": 64},
            },
            "target": target,
            "shards": {"by": "hash", "count": 2},
            "batch_size": 500,
            "gates": between_engines(sample_queries=40, latency_queries=10),
            "quarantine": {"max_records": None},
            "cutover": {"mode": "automatic", "bake_seconds": 0.2},
            **more,
        }
    )


def verdicts(report: GateReport) -> dict[str, Any]:
    return {v.name: v for v in report.verdicts}


async def test_an_existing_pgvector_table_is_inspected_then_migrated_byte_for_byte(
    client: Client, sandbox: Sandbox, postgres: Any
) -> None:
    url = postgres_database(postgres)
    kinds = documents_table(url)
    # Inspected as a user would, in another process.
    shown = vecmigrate("inspect", url, "--table", "documents", "--json")
    assert shown.returncode == 0, shown.stderr
    inventory = json.loads(shown.stdout)
    assert inventory["count"] == GOOD + 2 * POISON
    assert inventory["id"] == {"name": "id", "kind": "uuid"}
    (vector,) = inventory["vectors"]
    assert (vector["name"], vector["dimension"], vector["metric"]) == ("embedding", DIM, "cosine")
    assert vector["index"] == {"kind": "pgvector_hnsw", "m": 16, "ef_construction": 64}
    payload = {f["name"]: (f["kind"], f["index"]) for f in inventory["payload"]}
    assert payload == {
        "title": ("text", None),
        "body": ("text", None),
        "meta": ("json", None),
        "created_at": ("timestamp", "btree"),
        "lang": ("text", "btree"),
        "year": ("int", "btree"),
    }
    assert inventory["size_bytes"] > 0
    assert len(inventory["samples"]) == 3
    human = vecmigrate("inspect", url, "--table", "documents")
    assert human.returncode == 0, human.stderr
    assert "source:" in human.stdout
    assert "pgvector_hnsw" in human.stdout
    with psycopg.connect(_psycopg_url(url)) as conn:  # inspecting wrote nothing, anywhere
        tables = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        assert [r[0] for r in tables.fetchall()] == ["documents"]
    # The spec uses inspect's fragment as its source, as is (the model named).
    source = inventory["source"]
    source["embedding"]["model_id"] = "e5-small"
    target = {
        "name": "v2",
        "store": {"kind": "pgvector", "url": url, "table": "documents_v2"},
        "embedding": {"model_id": "e5-small", "dimension": DIM, "metric": "cosine"},
        "index": {"kind": "pgvector_hnsw", "m": 32, "ef_construction": 128, "ef_search": 100},
    }
    spec = documents_spec(
        url, target, source, quarantine={"max_records": None, "max_payload_bytes": 65_000}
    )
    async with running_worker(client, sandbox) as queue:
        mc = MigrationClient(client, queue)
        final = await mc.result(await mc.start(spec), timeout=600)
    assert final.phase == Phase.COMPLETED, final.error
    # Compared in PostgreSQL itself: every good row, byte for byte, and nothing else.
    engine = create_engine(url)
    with engine.connect() as conn:
        same = conn.execute(
            text(
                "SELECT count(*) FROM documents s JOIN documents_v2 t USING (id) "
                "WHERE s.embedding = t.embedding AND s.embedding::text = t.embedding::text "
                "AND s.title IS NOT DISTINCT FROM t.title AND s.body = t.body "
                "AND s.meta IS NOT DISTINCT FROM t.meta AND s.created_at = t.created_at "
                "AND s.lang = t.lang AND s.year = t.year"
            )
        ).scalar_one()
        target_ids = {str(r[0]) for r in conn.execute(text("SELECT id FROM documents_v2")).all()}
        source_rows = conn.execute(text("SELECT count(*) FROM documents")).scalar_one()
        index = conn.execute(
            text(
                "SELECT ic.reloptions FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid "
                "JOIN pg_am am ON am.oid = ic.relam "
                "WHERE i.indrelid = 'documents_v2'::regclass AND am.amname = 'hnsw'"
            )
        ).scalar_one()
        btrees = conn.execute(
            text(
                "SELECT count(*) FROM pg_indexes WHERE tablename = 'documents_v2' "
                "AND (indexdef LIKE '%btree (lang)%' OR indexdef LIKE '%btree (year)%' "
                "OR indexdef LIKE '%btree (created_at)%')"
            )
        ).scalar_one()
        types = dict(
            conn.execute(
                text(
                    "SELECT column_name, data_type FROM information_schema.columns "
                    "WHERE table_name = 'documents_v2'"
                )
            ).all()
        )
    engine.dispose()
    assert same == GOOD
    assert target_ids == kinds["good"]
    assert source_rows == GOOD + 2 * POISON  # the source was not written to
    assert sorted(index) == ["ef_construction=128", "m=32"]
    assert btrees == 3
    assert types["meta"] == "jsonb"
    assert types["created_at"] == "timestamp with time zone"
    # The quarantine: exact counts, and the very ids.
    report = Quarantine(sandbox.catalog).report(spec.migration_id, listed=1000)
    assert report.counts == {"null_vector": POISON, "payload_too_large": POISON}
    assert set(report.ids["null_vector"]) == kinds["null"]
    assert set(report.ids["payload_too_large"]) == kinds["big"]
    # The gates show the payload's checksums and the quarantine's figures.
    assert final.gates is not None
    found = verdicts(final.gates)
    assert found["checksum_parity"].passed
    assert found["payload_parity"].passed
    assert "identical" in found["payload_parity"].detail
    assert found["quarantine"].value == 2 * POISON
    assert "null_vector 100, payload_too_large 100" in found["quarantine"].detail
    # The report the CLI prints says the same.
    shown = vecmigrate("report", spec.migration_id, "--catalog", sandbox.catalog.url, "--json")
    assert shown.returncode == 0, shown.stderr
    printed = {v["name"]: v for v in json.loads(shown.stdout)["verdicts"]}
    assert printed["quarantine"]["value"] == 2 * POISON
    kinds_seen = [e.kind for e in sandbox.catalog.entries(spec.migration_id)]
    assert "collection.adopted" in kinds_seen


def _milvus_expr(flt: dict[str, Any]) -> str:
    """A test's own translation of its filters into Milvus expressions (not vecmigrate's)."""
    if "and" in flt:
        return " and ".join(f"({_milvus_expr(p)})" for p in flt["and"])
    if "or" in flt:
        return " or ".join(f"({_milvus_expr(p)})" for p in flt["or"])
    field = flt["field"]
    if "eq" in flt:
        return (
            f'{field} == "{flt["eq"]}"' if isinstance(flt["eq"], str) else f"{field} == {flt['eq']}"
        )
    if "in" in flt:
        return f"{field} in {json.dumps(flt['in'])}"
    parts = [f"{field} {op} {flt[k]}" for k, op in (("gte", ">="), ("lt", "<")) if k in flt]
    return " and ".join(parts)


def _qdrant_filter(flt: dict[str, Any]) -> Any:
    """The same filters, written for qdrant-client by hand."""
    from qdrant_client import models

    if "and" in flt:
        return models.Filter(must=[_qdrant_filter(p) for p in flt["and"]])
    if "or" in flt:
        return models.Filter(should=[_qdrant_filter(p) for p in flt["or"]])
    field = flt["field"]
    if "eq" in flt:
        cond = models.FieldCondition(key=field, match=models.MatchValue(value=flt["eq"]))
    elif "in" in flt:
        cond = models.FieldCondition(key=field, match=models.MatchAny(any=flt["in"]))
    else:
        cond = models.FieldCondition(
            key=field, range=models.Range(gte=flt.get("gte"), lt=flt.get("lt"))
        )
    return models.Filter(must=[cond])


def filters(n: int, seed: int = 1) -> list[dict[str, Any]]:
    """``n`` filters of every shape: equality, set membership, ranges, and/or."""
    rng = np.random.default_rng(seed)
    out: list[dict[str, Any]] = []
    for i in range(n):
        lang = str(rng.choice(LANGS))
        year = int(rng.integers(1990, 2025))
        shape = i % 5
        if shape == 0:
            out.append({"field": "lang", "eq": lang})
        elif shape == 1:
            out.append({"field": "year", "in": sorted({year, year + 3, year + 7})})
        elif shape == 2:
            out.append({"field": "year", "gte": year - 5, "lt": year + 5})
        elif shape == 3:
            out.append({"and": [{"field": "lang", "eq": lang}, {"field": "year", "gte": year}]})
        else:
            out.append(
                {"or": [{"field": "lang", "eq": lang}, {"field": "year", "lt": 1990 + i % 30}]}
            )
    return out


@pytest.mark.parametrize("engine", ["qdrant", "milvus"])
async def test_the_table_moves_to_qdrant_and_milvus_with_payload_indexes_and_filtered_search(
    client: Client, sandbox: Sandbox, postgres: Any, engine: str
) -> None:
    url = postgres_database(postgres)
    kinds = documents_table(url)
    if engine == "qdrant":
        store = {"kind": "qdrant", "path": str(sandbox.root / "qdrant"), "collection": "documents"}
        # Qdrant rewrites cosine vectors: the target ranks by ip on normalised vectors.
        embedding = {"model_id": "e5-small", "dimension": DIM, "metric": "ip", "normalized": True}
        index = {"kind": "qdrant_hnsw", "m": 16, "ef_construct": 64, "ef": 64}
    else:
        store = {"kind": "milvus", "uri": str(sandbox.root / "m.db"), "collection": "documents"}
        embedding = {"model_id": "e5-small", "dimension": DIM, "metric": "cosine"}
        index = {"kind": "milvus_flat"}
    target = {"name": "v2", "store": store, "embedding": embedding, "index": index}
    spec = documents_spec(url, target)
    try:
        async with running_worker(client, sandbox) as queue:
            mc = MigrationClient(client, queue)
            final = await mc.result(await mc.start(spec), timeout=900)
        assert final.phase == Phase.COMPLETED, final.error
        assert final.gates is not None
        found = verdicts(final.gates)
        assert found["payload_parity"].passed
        expected = {"null_vector": POISON}
        # Milvus's VARCHAR holds 65,535 bytes: the big bodies cannot be stored there.
        expected |= {"value_unstorable": POISON} if engine == "milvus" else {}
        report = Quarantine(sandbox.catalog).report(spec.migration_id, listed=1000)
        assert report.counts == expected
        good = kinds["good"] | (kinds["big"] if engine == "qdrant" else set())
        dst = open_target(spec)
        assert dst.count() == len(good)
        # Payload indexes where the source had them.
        if engine == "milvus":
            names = set(dst.client.list_indexes(dst.name))  # type: ignore[attr-defined]
            assert {"lang", "year", "created_at"} <= names
            fields = {f["name"]: f for f in dst.client.describe_collection(dst.name)["fields"]}  # type: ignore[attr-defined]
            assert fields["id"]["params"]["max_length"] == 36  # a VARCHAR primary key
        else:
            made = dst.client.get_collection(dst.name).config.metadata["vecmigrate"]  # type: ignore[attr-defined]
            indexed = {f["name"] for f in made["schema"]["payload"] if f["indexed"]}
            assert indexed == {"lang", "year", "created_at"}
        # Filtered search: vecmigrate's answer equals the engine's own, on 200 filters.
        src = open_source(spec)
        queries = src.sample(200, seed=9)[1]
        queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
        metric = Metric(str(embedding["metric"]))
        index_spec = spec.target.index
        router = Router(sandbox.catalog, refresh_seconds=0)
        for q, flt in zip(queries, filters(200), strict=True):
            _, labels, got = dst.native_search(q[None], 10, index_spec, metric, parse_filter(flt))  # type: ignore[attr-defined]
            # The router (and so the gateway) asks the engine's own filter the same.
            served = router.search("default", "documents", q, 10, flt=parse_filter(flt))
            assert served.ids[0].tolist() == labels[0].tolist(), flt
            if engine == "qdrant":
                hits = dst.client.query_points(  # type: ignore[attr-defined]
                    dst.name,
                    query=q.tolist(),
                    using="embedding",
                    limit=10,
                    query_filter=_qdrant_filter(flt),
                ).points
                own = [str(h.id) for h in hits]
            else:
                hits = dst.client.search(  # type: ignore[attr-defined]
                    dst.name,
                    data=[q],
                    anns_field="embedding",
                    limit=10,
                    filter=_milvus_expr(flt),
                    search_params={"metric_type": "COSINE"},
                    output_fields=["id"],
                )[0]
                own = [h["id"] for h in hits]
            assert [str(i) for i in got[0]] == own, flt
            assert own, flt
        router.close()
    finally:
        close_qdrant()
        close_milvus()


def qdrant_collection(path: Path, n: int = 600, poison: int = 100) -> dict[str, Any]:
    """A Qdrant collection (local mode) with UUID ids, two named vectors and JSON payloads, 100
    of them holding a NUL character PostgreSQL text cannot store."""
    from qdrant_client import QdrantClient, models

    client = QdrantClient(path=str(path))
    client.create_collection(
        "products",
        vectors_config={
            "text": models.VectorParams(size=64, distance=models.Distance.DOT),
            "image": models.VectorParams(size=32, distance=models.Distance.EUCLID),
        },
    )
    rng = np.random.default_rng(4)
    text_v = clustered(n, 64, seed=4)
    image_v = rng.standard_normal((n, 32)).astype(np.float32)
    ids = [str(uuid.UUID(bytes=rng.bytes(16), version=4)) for _ in range(n)]
    payloads = []
    for i in range(n):
        payload: dict[str, Any] = {
            "name": f"product {i}" + ("\x00" if i >= n - poison else ""),
            "price": round(1.5 * i, 2),
            "stock": i % 17,
            "listed": f"2024-03-0{1 + i % 9}T10:00:00.000123Z",
            "specs": {"color": ["red", "blue"][i % 2], "sizes": [1, 2, 3][: i % 4]},
        }
        if i % 4 == 0:
            payload["discount"] = None
        if i % 10 == 0:
            payload["rare key"] = {"nested": i}  # not a field name: kept in the extra object
        payloads.append(payload)
    client.upsert(
        "products",
        points=models.Batch(
            ids=ids,
            vectors={"text": text_v.tolist(), "image": image_v.tolist()},
            payloads=payloads,
        ),
    )
    client.close()
    return {"ids": ids, "nul": set(ids[n - poison :]), "text": text_v, "image": image_v}


async def test_a_qdrant_collection_with_uuids_and_two_named_vectors_moves_to_pgvector(
    client: Client, sandbox: Sandbox, postgres: Any
) -> None:
    made = qdrant_collection(sandbox.root / "qdrant")
    url = postgres_database(postgres)
    qref = {"kind": "qdrant", "path": str(sandbox.root / "qdrant"), "collection": "products"}
    shown = vecmigrate(
        "inspect", str(sandbox.root / "qdrant"), "--collection", "products", "--json"
    )
    assert shown.returncode == 0, shown.stderr
    inventory = json.loads(shown.stdout)
    assert inventory["id"]["kind"] == "uuid"
    assert [(v["name"], v["dimension"], v["metric"]) for v in inventory["vectors"]] == [
        ("text", 64, "ip"),
        ("image", 32, "l2"),
    ]
    assert inventory["payload_sampled"] is True
    kinds = {f["name"]: f["kind"] for f in inventory["payload"]}
    assert kinds == {
        "discount": "text",  # only ever null in the sample
        "listed": "timestamp",
        "name": "text",
        "price": "float",
        "specs": "json",
        "stock": "int",
    }
    source = inventory["source"]
    assert source["store"]["payload_kinds"] == kinds  # the fragment pins them
    source["embedding"]["model_id"] = "clip-text"
    spec = parse_spec(
        {
            "id": f"q2pg-{uuid.uuid4().hex[:8]}",
            "collection": "products",
            "source": source,
            "target": {
                "name": "v2",
                "store": {"kind": "pgvector", "url": url, "table": "products"},
                "embedding": {"model_id": "clip-text", "dimension": 64, "metric": "ip"},
                "index": {"kind": "pgvector_hnsw", "m": 16, "ef_construction": 64},
            },
            "shards": {"count": 2},
            "batch_size": 200,
            "gates": between_engines(sample_queries=30),
            "quarantine": {"max_records": None},
            "cutover": {"mode": "automatic", "bake_seconds": 0.2},
        }
    )
    assert spec.source.store == QdrantStoreRef.model_validate(qref | {"payload_kinds": kinds})
    try:
        async with running_worker(client, sandbox) as queue:
            mc = MigrationClient(client, queue)
            final = await mc.result(await mc.start(spec), timeout=600)
        assert final.phase == Phase.COMPLETED, final.error
        report = Quarantine(sandbox.catalog).report(spec.migration_id, listed=1000)
        assert report.counts == {"value_unstorable": 100}
        assert set(report.ids["value_unstorable"]) == made["nul"]
        assert final.gates is not None
        assert verdicts(final.gates)["checksum_parity"].passed
        # In PostgreSQL: UUID ids, both vectors exact, the payload typed.
        row = {i: n for n, i in enumerate(made["ids"])}
        with psycopg.connect(_psycopg_url(url)) as conn:
            rows = conn.execute(
                "SELECT id, text::text, image::text, price, stock, listed, specs, _extra, name "
                "FROM products"
            ).fetchall()
            types = dict(
                conn.execute(
                    "SELECT column_name, data_type FROM information_schema.columns "
                    "WHERE table_name = 'products'"
                ).fetchall()
            )
        assert len(rows) == 500
        assert types["id"] == "uuid"
        assert types["listed"] == "timestamp with time zone"
        assert types["specs"] == types["_extra"] == "jsonb"
        for rid, text_v, image_v, price, stock, listed, specs, extra, name in rows:
            n = row[str(rid)]
            assert np.array_equal(np.array(json.loads(text_v), np.float32), made["text"][n])
            assert np.array_equal(np.array(json.loads(image_v), np.float32), made["image"][n])
            assert price == round(1.5 * n, 2)
            assert stock == n % 17
            assert listed == datetime(2024, 3, 1 + n % 9, 10, 0, 0, 123, tzinfo=UTC)
            assert specs == {"color": ["red", "blue"][n % 2], "sizes": [1, 2, 3][: n % 4]}
            assert extra == ({"rare key": {"nested": n}} if n % 10 == 0 else None)
            assert name == f"product {n}"
    finally:
        close_qdrant()


def legacy_table(url: str) -> dict[str, set[str]]:
    """A table of the kind kept before pgvector: text ids without a unique index, vectors in a
    real[] column. Every kind of bad record, 100 each (50 ids that occur twice)."""
    vectors = clustered(800, 16, seed=5)
    rows: list[tuple[Any, ...]] = []
    out: dict[str, set[str]] = {
        k: set() for k in ("good", "null", "dim", "nan", "dup", "id", "big")
    }
    for i in range(400):
        rows.append((str(10_000 + i), vectors[i].tolist(), "ok"))
        out["good"].add(str(10_000 + i))
    for i in range(100):
        out["null"].add(str(20_000 + i))
        rows.append((str(20_000 + i), None, "ok"))
        out["dim"].add(str(30_000 + i))
        rows.append((str(30_000 + i), vectors[i, :12].tolist(), "ok"))
        out["nan"].add(str(40_000 + i))
        bad = vectors[i].tolist()
        bad[3] = float("nan") if i % 2 else float("inf")
        rows.append((str(40_000 + i), bad, "ok"))
        out["id"].add(f"doc-{i}")  # not an unsigned integer nor a UUID: no Qdrant point id
        rows.append((f"doc-{i}", vectors[400 + i].tolist(), "ok"))
        out["big"].add(str(60_000 + i))
        rows.append((str(60_000 + i), vectors[500 + i].tolist(), "y" * 5_000))
    for i in range(50):
        out["dup"].add(str(50_000 + i))
        rows.append((str(50_000 + i), vectors[600 + i].tolist(), "first"))
        rows.append((str(50_000 + i), vectors[700 + i].tolist(), "second"))
    with psycopg.connect(_psycopg_url(url)) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        conn.execute("CREATE TABLE legacy (doc_id text NOT NULL, vec real[], note text)")
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO legacy VALUES (%s, %s, %s)", rows)
    return out


async def test_every_kind_of_bad_record_is_quarantined_and_counted_exactly(
    client: Client, sandbox: Sandbox, postgres: Any
) -> None:
    url = postgres_database(postgres)
    kinds = legacy_table(url)
    spec = parse_spec(
        {
            "id": f"legacy-{uuid.uuid4().hex[:8]}",
            "collection": "legacy",
            "source": {
                "name": "v1",
                "store": {
                    "kind": "pgvector",
                    "url": url,
                    "table": "legacy",
                    "id_column": "doc_id",
                    "vector_columns": ["vec"],
                },
                "embedding": {"model_id": "m", "dimension": 16},
                "index": {"kind": "faiss_flat"},
            },
            "target": {
                "name": "v2",
                "store": {
                    "kind": "qdrant",
                    "path": str(sandbox.root / "q"),
                    "collection": "legacy",
                },
                "embedding": {"model_id": "m", "dimension": 16},
                "index": {"kind": "qdrant_hnsw"},
            },
            "shards": {"count": 3},
            "batch_size": 97,  # batches end inside runs of a repeated id
            "gates": between_engines(sample_queries=20),
            "quarantine": {"max_records": 0, "max_payload_bytes": 4_000},
            "cutover": {"mode": "automatic", "bake_seconds": 0.2},
        }
    )
    plan = vecmigrate("plan", "--catalog", sandbox.catalog.url, "--json", _spec_file(sandbox, spec))
    assert plan.returncode == 0, plan.stdout + plan.stderr
    # The plan's estimate: the whole of so small a table is its sample, so it is exact.
    estimate = next(
        c for c in json.loads(plan.stdout)["checks"] if c["name"] == "quarantine estimate"
    )
    assert estimate["detail"].startswith("about 550 records left out (550 of a sample of 1,000")
    assert "it will hold the migration" in estimate["detail"]
    try:
        async with running_worker(client, sandbox) as queue:
            mc = MigrationClient(client, queue)
            mid = await mc.start(spec)
            from tests.test_workflow import wait_for

            status = await wait_for(mc, mid, lambda s: s.paused, timeout=600)
            assert status.gates is not None
            gate = verdicts(status.gates)["quarantine"]
            assert not gate.passed  # max_records 0: the gate holds the migration
            await mc.signal(mid, "abort", operator="test", reason="bad source data")
            await mc.result(mid)
        report = Quarantine(sandbox.catalog).report(spec.migration_id, listed=1000)
        assert report.counts == {
            "null_vector": 100,
            "wrong_dimension": 100,
            "nonfinite": 100,
            "duplicate_id": 50,
            "id_unstorable": 100,
            "payload_too_large": 100,
        }
        assert set(report.ids["duplicate_id"]) == kinds["dup"]
        assert set(report.ids["id_unstorable"]) == kinds["id"]
        assert set(report.ids["wrong_dimension"]) == kinds["dim"]
        assert gate.value == 550
        target = open_store(spec.target.store, Scope("default", "legacy", "v2"))
        assert target.count() == len(kinds["good"])
    finally:
        close_qdrant()
        dispose_engines()


def _spec_file(sandbox: Sandbox, spec: Any) -> str:
    path = sandbox.root / f"{spec.migration_id}.json"
    path.write_text(spec.model_dump_json())
    return str(path)
