"""Filtered search through the router and the gateway, over the indexes vecmigrate builds.

A pgvector table made by plain SQL (UUID ids, text, integer and timestamp payload) is migrated
to the built-in store with a FAISS HNSW index and with an hnswlib one; the router and the HTTP
gateway then answer 200 filtered queries (equality, set membership, ranges, and/or), judged
against PostgreSQL's own exact filtered search on the source table. A filter that matches few
records is searched exactly; one that matches many goes through the index, which skips every
other record as it searches. (The databases' own indexes filter natively: ``test_adopt``.)
"""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np
import psycopg
import pytest
from temporalio.client import Client

from tests.conftest import Sandbox, postgres_database, running_worker
from tests.test_adopt import DIM, _psycopg_url, documents_spec, documents_table, filters
from vecmigrate.control.client import MigrationClient
from vecmigrate.errors import DataError
from vecmigrate.model.lifecycle import Phase
from vecmigrate.model.records import IdKind, parse_filter
from vecmigrate.records.ids import id_array, labels
from vecmigrate.serving import plan
from vecmigrate.serving.gateway import Gateway
from vecmigrate.serving.router import Router

pytestmark = pytest.mark.integration


def sql_where(flt: dict[str, Any]) -> tuple[str, list[Any]]:
    """The test's own translation of a filter into SQL (not vecmigrate's)."""
    if "and" in flt or "or" in flt:
        joiner = " AND " if "and" in flt else " OR "
        parts = [sql_where(p) for p in flt.get("and", flt.get("or"))]
        return "(" + joiner.join(p[0] for p in parts) + ")", [v for p in parts for v in p[1]]
    field = flt["field"]
    if "eq" in flt:
        return f"{field} = %s", [flt["eq"]]
    if "in" in flt:
        return f"{field} = ANY(%s)", [list(flt["in"])]
    ops = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
    parts = [(f"{field} {ops[k]} %s", [v]) for k, v in flt.items() if k in ops]
    return "(" + " AND ".join(p[0] for p in parts) + ")", [v for p in parts for v in p[1]]


def truth(conn: psycopg.Connection[Any], q: np.ndarray, flt: dict[str, Any]) -> list[str]:
    """The 10 nearest rows matching ``flt``, by exact cosine distance in PostgreSQL."""
    where, args = sql_where(flt)
    vector = "[" + ",".join(repr(float(x)) for x in q) + "]"
    rows = conn.execute(
        f"SELECT id::text FROM documents WHERE embedding IS NOT NULL AND {where} "
        "ORDER BY embedding <=> %s::vector, id LIMIT 10",
        [*args, vector],
    ).fetchall()
    return [r[0] for r in rows]


def label_of(ids: list[str]) -> list[int]:
    return labels(id_array(ids, IdKind.UUID), IdKind.UUID).tolist()


@pytest.mark.parametrize("index", ["faiss_hnsw", "hnswlib_hnsw"])
async def test_filtered_search_through_the_router_and_the_gateway_matches_postgres(
    client: Client,
    sandbox: Sandbox,
    postgres: Any,
    index: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = postgres_database(postgres)
    documents_table(url)
    target = sandbox.version(
        "v2", {"kind": index, "m": 16, "ef_construction": 100, "ef_search": 100}, DIM, "cosine"
    ).model_dump(mode="json")
    target["embedding"]["model_id"] = "e5-small"
    spec = documents_spec(url, target, quarantine={"max_records": None})
    async with running_worker(client, sandbox) as queue:
        mc = MigrationClient(client, queue)
        final = await mc.result(await mc.start(spec), timeout=600)
    assert final.phase == Phase.COMPLETED, final.error
    router = Router(sandbox.catalog, refresh_seconds=0)
    rng = np.random.default_rng(9)
    with psycopg.connect(_psycopg_url(url)) as conn:
        stored = conn.execute(
            "SELECT embedding::text FROM documents WHERE embedding IS NOT NULL ORDER BY id"
        ).fetchall()
        pool = np.array([np.fromstring(r[0][1:-1], sep=",") for r in stored], np.float32)
        queries = pool[rng.choice(len(pool), 200, replace=False)]
        queries += rng.normal(0, 0.05, queries.shape).astype(np.float32)
        cases = [(q, f, truth(conn, q, f)) for q, f in zip(queries, filters(200), strict=True)]
    assert all(len(t) == 10 for _, _, t in cases)
    # Every filter here matches at most 1,700 records: searched exactly, the very answer SQL
    # gives (ties broken alike), then through the index, which must keep the recall.
    for among, floor in ((plan.EXACT_AMONG, 1.0), (0, 0.95)):
        monkeypatch.setattr(plan, "EXACT_AMONG", among)
        monkeypatch.setattr(plan, "EXACT_SHARE", 0.02 if among else 0.0)
        recalls = []
        for q, flt, want in cases:
            found = router.search("default", "documents", q, 10, flt=parse_filter(flt))
            got = found.ids[0].tolist()
            expected = label_of(want)
            if among:
                assert set(got) == set(expected), flt
            # Ten answers, and nothing outside the filter, ever.
            assert -1 not in got, flt
            assert set(got) <= set(label_of(matching_ids(url, flt))), flt
            recalls.append(len(set(got) & set(expected)) / 10)
        assert np.mean(recalls) >= floor, (among, np.mean(recalls))
    q = cases[0][0]
    # A filter on a field the collection does not have is refused, naming it.
    with pytest.raises(DataError, match="colour"):
        router.search("default", "documents", q, 10, flt=parse_filter({"field": "colour", "eq": 1}))
    router.close()
    # The gateway: the filter in the request's JSON, the same answer as the router's.
    monkeypatch.setattr(plan, "EXACT_AMONG", 2048)
    monkeypatch.setattr(plan, "EXACT_SHARE", 0.02)
    gateway = Gateway(sandbox.catalog.url, port=0, refresh=0.2).start()
    try:
        with httpx.Client(base_url=gateway.url) as http:
            for q, flt, want in cases[1:21]:
                reply = http.post(
                    "/v1/default/documents/search",
                    json={"vector": q.tolist(), "k": 10, "filter": flt},
                )
                assert reply.status_code == 200, reply.text
                assert set(reply.json()["ids"][0]) == set(label_of(want)), flt
            bad = http.post(
                "/v1/default/documents/search",
                json={"vector": q.tolist(), "filter": {"field": "year", "eq": "nineteen"}},
            )
            assert bad.status_code == 400, bad.text
            assert "year" in bad.text
    finally:
        gateway.stop()


def matching_ids(url: str, flt: dict[str, Any]) -> list[str]:
    """Every row matching ``flt`` (with a vector), by SQL."""
    where, args = sql_where(flt)
    with psycopg.connect(_psycopg_url(url)) as conn:
        rows = conn.execute(
            f"SELECT id::text FROM documents WHERE embedding IS NOT NULL AND {where}", args
        ).fetchall()
    return [r[0] for r in rows]
