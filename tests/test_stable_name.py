"""Stable names on the real engines: a Qdrant alias (qdrant-client's local mode), a Milvus alias
(a Milvus server from the ``milvus`` wheel) and a PostgreSQL view, switched between two
versions while a reader thread hammers the name with the engine's own client (not vecmigrate),
counting every failed read and every version it saw; milvus-lite's refusal (it has no
aliases); migrations through the real workflow that cut over
and roll back after the cut-over under such a reader; the preparation of names applications
already use, what ``plan`` says of it, and its undo.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
from pymilvus import MilvusClient
from sqlalchemy import create_engine
from temporalio.client import Client

from tests.conftest import Sandbox, postgres_database, shadow_all, vecmigrate
from tests.helpers import in_background
from tests.test_workflow import awaiting_cutover, started, wait_for
from vecmigrate.catalog.engines import dispose_engines
from vecmigrate.control.plan import plan_migration
from vecmigrate.data import stablename
from vecmigrate.data.backfill import open_source, open_target
from vecmigrate.data.datasets import clustered
from vecmigrate.errors import PreconditionError, SpecError
from vecmigrate.model.lifecycle import Phase
from vecmigrate.model.spec import MilvusStoreRef, QdrantStoreRef, parse_spec
from vecmigrate.records.sharding import hash_key
from vecmigrate.serving.router import Router
from vecmigrate.stores import MilvusStore, PgvectorStore, QdrantStore, Scope, VectorStore
from vecmigrate.stores.milvus import client_for as milvus_client
from vecmigrate.stores.milvus import close_clients as close_milvus
from vecmigrate.stores.pgvector import LOCK_TIMEOUT
from vecmigrate.stores.qdrant import client_for as qdrant_client
from vecmigrate.stores.qdrant import close_clients as close_qdrant

pytestmark = pytest.mark.integration

DIM = 8
# The two versions differ in size, so a read says which one it reached.
SIZES = {"v1": 120, "v2": 170}
SWITCHES = 12
EMB = {"model_id": "m", "dimension": DIM}
FLAT = {"kind": "faiss_flat"}


@dataclass
class Reader:
    """A thread that reads the stable name as fast as it can, with the engine's own client."""

    read: Callable[[], int]
    pause: float = 0.0
    counts: list[int] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.counts.append(self.read())
            except Exception as exc:  # every failed read is counted, none hidden
                self.failures.append(f"{type(exc).__name__}: {exc}")
            if self.pause:
                time.sleep(self.pause)


@contextmanager
def hammering(read: Callable[[], int], pause: float = 0.0) -> Iterator[Reader]:
    reader = Reader(read, pause)
    with in_background(reader.run, "reader", join=30):
        yield reader


def fill(store: VectorStore, n: int, seed: int) -> None:
    vectors = clustered(n, DIM, clusters=4, seed=seed)
    store.upsert(np.arange(1, n + 1, dtype=np.int64), vectors)


def switch_back_and_forth(
    versions: dict[str, VectorStore], name: str, read: Callable[[], int], gap: float = 0.05
) -> Reader:
    """Point ``name`` at v1, then alternately at v2 and v1 while a reader hammers it, ``gap``
    seconds between switches (more for an engine whose reads take longer); after each switch
    the name reads the version it points at."""
    versions["v1"].point_name(name)
    assert read() == SIZES["v1"]
    with hammering(read) as reader:
        time.sleep(0.2)
        for i in range(SWITCHES):
            to = "v2" if i % 2 == 0 else "v1"
            done = versions[to].point_name(name)
            assert done.changed
            assert read() == SIZES[to]
            again = versions[to].point_name(name)  # pointing where it points: nothing changes
            assert not again.changed
            assert again.before == again.after == done.after
            time.sleep(gap)
        time.sleep(0.2)
    print(f"{SWITCHES} switches: {len(reader.counts)} reads, {len(reader.failures)} failed")
    assert reader.failures == [], reader.failures[:5]
    assert set(reader.counts) == set(SIZES.values())
    assert len(reader.counts) > 2 * SWITCHES
    return reader


def test_a_qdrant_alias_switches_under_a_reader_with_no_failed_read(tmp_path: Path) -> None:
    ref = QdrantStoreRef(path=str(tmp_path / "qdrant"))
    try:
        versions: dict[str, VectorStore] = {}
        for seed, (version, n) in enumerate(SIZES.items()):
            versions[version] = QdrantStore.open(ref, Scope("default", "docs", version), DIM)
            fill(versions[version], n, seed)
        # The reader uses qdrant-client itself (the local mode allows one client per directory
        # and process: the one vecmigrate opened, without vecmigrate's lock around it).
        raw = qdrant_client(ref)._client
        query = clustered(1, DIM, clusters=1, seed=9)[0].tolist()

        def read() -> int:
            hits = raw.query_points("docs", query=query, using="embedding", limit=3)
            assert len(hits.points) == 3
            return int(raw.count("docs").count)

        switch_back_and_forth(versions, "docs", read)
        assert versions["v1"].name_points_at("docs") == versions["v1"].name  # type: ignore[attr-defined]
        # A collection's own name is not a stable name: refused, typed.
        with pytest.raises(PreconditionError, match="is a Qdrant collection, not an alias"):
            versions["v2"].point_name(versions["v1"].name)  # type: ignore[attr-defined]
    finally:
        close_qdrant()


def _milvus_reader(uri: str, name: str) -> Callable[[], int]:
    """A read of ``name`` with pymilvus's own client: a search, then the count (strong
    consistency: the count is the version's, not a stale one)."""
    raw = MilvusClient(uri)
    query = clustered(1, DIM, clusters=1, seed=9)[0].tolist()

    def read() -> int:
        hits = raw.search(name, data=[query], limit=3, anns_field="embedding")
        assert len(hits[0]) == 3
        rows = raw.query(name, filter="", output_fields=["count(*)"], consistency_level="Strong")
        return int(rows[0]["count(*)"])

    return read


def test_a_milvus_alias_switches_under_a_reader_with_no_failed_read(milvus_server: str) -> None:
    try:
        versions: dict[str, VectorStore] = {}
        for seed, (version, n) in enumerate(SIZES.items()):
            versions[version] = MilvusStore.open(
                milvus_server, Scope("default", "mdocs", version), DIM
            )
            fill(versions[version], n, seed)
        # A search and a strongly consistent count take a server 0.1-0.4 s: longer gaps.
        switch_back_and_forth(versions, "mdocs", _milvus_reader(milvus_server, "mdocs"), gap=1.5)
        assert versions["v1"].name_points_at("mdocs") == versions["v1"].name  # type: ignore[attr-defined]
        # A collection's own name is not a stable name: refused, typed.
        with pytest.raises(PreconditionError, match="not an alias"):
            versions["v2"].point_name(versions["v1"].name)  # type: ignore[attr-defined]
    finally:
        close_milvus()


def test_milvus_lite_has_no_aliases_and_a_stable_name_on_it_is_refused_before_anything(
    tmp_path: Path,
) -> None:
    """milvus-lite (the engine the tests have) answers every alias call UNIMPLEMENTED: a spec
    naming a stable name on it is refused when read, and the adapter's switch says why
    instead of failing inside gRPC. (A Milvus server switches by ``alter_alias``.)"""
    uri = str(tmp_path / "milvus.db")
    store = {"kind": "milvus", "uri": uri}
    with pytest.raises(SpecError, match=r"milvus-lite .* has no aliases"):
        parse_spec(
            {
                "collection": "docs",
                "source": {"name": "v1", "store": store, "embedding": EMB, "index": FLAT},
                "target": {"name": "v2", "store": store, "embedding": EMB, "index": FLAT},
                "cutover": {"stable_name": "docs"},
            }
        )
    try:
        one = MilvusStore.open(uri, Scope("default", "docs", "v1"), DIM)
        fill(one, 10, 1)
        with pytest.raises(PreconditionError, match="has no aliases"):
            one.point_name("docs")
        assert one.count() == 10
        client = milvus_client(MilvusStoreRef(uri=uri).uri)
        assert not client.has_collection("docs")
    finally:
        close_milvus()


def _psycopg(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def _relkinds(conn: psycopg.Connection[Any]) -> dict[str, str]:
    """What the relations documents and documents_v1 are now ("r" a table, "v" a view)."""
    return dict(
        conn.execute(
            "SELECT relname, relkind::text FROM pg_class "
            "WHERE relname IN ('documents', 'documents_v1')"
        ).fetchall()
    )


def test_a_postgres_view_switches_under_a_plain_sql_reader_with_no_failed_read(
    postgres: Any,
) -> None:
    url = postgres_database(postgres)
    try:
        versions: dict[str, VectorStore] = {}
        for seed, (version, n) in enumerate(SIZES.items()):
            versions[version] = PgvectorStore.open(url, Scope("default", "docs", version), DIM)
            fill(versions[version], n, seed)
        conn = psycopg.connect(_psycopg(url), autocommit=True)
        query = "[" + ",".join(str(float(x)) for x in clustered(1, DIM, 1, seed=9)[0]) + "]"

        def read() -> int:
            near = conn.execute(
                "SELECT id FROM docs ORDER BY embedding <-> %s::vector LIMIT 3", (query,)
            ).fetchall()
            assert len(near) == 3
            row = conn.execute("SELECT count(*) FROM docs").fetchone()
            assert row is not None
            return int(row[0])

        try:
            switch_back_and_forth(versions, "docs", read)
        finally:
            conn.close()
        # The view shows the records, not vecmigrate's shard key.
        with psycopg.connect(_psycopg(url)) as check:
            columns = [
                r[0]
                for r in check.execute(
                    "SELECT column_name FROM information_schema.columns "
                    "WHERE table_name = 'docs' ORDER BY ordinal_position"
                ).fetchall()
            ]
        assert columns == ["id", "embedding"]
    finally:
        dispose_engines()


def test_a_postgres_switch_gives_up_on_a_held_lock_instead_of_queueing_readers(
    postgres: Any,
) -> None:
    url = postgres_database(postgres)
    try:
        one = PgvectorStore.open(url, Scope("default", "docs", "v1"), DIM)
        two = PgvectorStore.open(url, Scope("default", "docs", "v2"), DIM)
        fill(one, 10, 1)
        fill(two, 20, 2)
        one.point_name("docs")
        with psycopg.connect(_psycopg(url)) as long_one:
            long_one.execute("SELECT count(*) FROM docs").fetchone()  # holds its lock
            began = time.monotonic()
            with pytest.raises(TimeoutError, match="held by another transaction"):
                two.point_name("docs")
            waited = time.monotonic() - began
            long_one.rollback()
        assert waited < float(LOCK_TIMEOUT.removesuffix("s")) + 3
        assert one.name_points_at("docs") == one.table  # type: ignore[attr-defined]
        assert two.point_name("docs").changed  # free again: it goes through
    finally:
        dispose_engines()


def test_writes_through_the_view_reach_an_adopted_table_and_a_table_vecmigrate_made(
    postgres: Any,
) -> None:
    """INSERT ... ON CONFLICT and DELETE through the view of an application's own table work
    (PostgreSQL writes through a simple view); a table vecmigrate made keeps a shard key the
    view does not show, which its trigger computes for a row inserted through the view."""
    url = postgres_database(postgres)
    try:
        with psycopg.connect(_psycopg(url), autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            conn.execute("CREATE TABLE items (id bigint PRIMARY KEY, embedding vector(8))")
        engine = create_engine(url)
        from vecmigrate.stores.pgvector import point_view

        point_view(engine, "items_live", "items")
        own = PgvectorStore.open(url, Scope("default", "items", "v2"), DIM)
        fill(own, 5, 1)
        vec = "[" + ",".join(["0.5"] * 8) + "]"
        upsert = (
            "INSERT INTO items_live (id, embedding) VALUES (%s, %s::vector) "
            "ON CONFLICT (id) DO UPDATE SET embedding = EXCLUDED.embedding"
        )
        with psycopg.connect(_psycopg(url), autocommit=True) as conn:
            conn.execute(upsert, (1, vec))
            conn.execute(upsert, (1, vec))
            conn.execute(upsert, (2, vec))
            conn.execute("DELETE FROM items_live WHERE id = 2")
            left = conn.execute("SELECT id FROM items").fetchall()
            assert left == [(1,)]
            own.point_name("items_live")
            # The table's trigger gives the row the shard key vecmigrate would have (in "h",
            # the key column of a table of vecmigrate's first release).
            conn.execute(upsert, (99, vec))
            conn.execute("DELETE FROM items_live WHERE id = 5")
            key = conn.execute(f"SELECT h FROM {own.table} WHERE id = 99").fetchone()
        assert key is not None
        assert key[0] == int(hash_key(np.array([99]))[0])
        assert own.count() == 5
        engine.dispose()
    finally:
        dispose_engines()


# -- through the real workflow ----------------------------------------------------------------

E2E = 1500
MARK = 1_000_000  # a record only the target holds, written there after the gates


def _engine_reader(kind: str, store: dict[str, Any], name: str) -> tuple[Callable[[], int], Any]:
    """A read of the stable name with the engine's own client (count of records), and what
    to close after."""
    if kind == "qdrant":
        raw = qdrant_client(QdrantStoreRef.model_validate(store))._client
        return lambda: int(raw.count(name, exact=True).count), None
    if kind == "milvus":
        raw = MilvusClient(store["uri"])

        def count() -> int:
            rows = raw.query(
                name, filter="", output_fields=["count(*)"], consistency_level="Strong"
            )
            return int(rows[0]["count(*)"])

        return count, None
    conn = psycopg.connect(_psycopg(store["url"]), autocommit=True)

    def read() -> int:
        row = conn.execute(f"SELECT count(*) FROM {name}").fetchone()
        assert row is not None
        return int(row[0])

    return read, conn


@pytest.mark.parametrize("kind", ["qdrant", "milvus", "pgvector"])
async def test_a_migration_switches_the_stable_name_and_a_rollback_after_cut_over_switches_it_back(
    client: Client, sandbox: Sandbox, request: pytest.FixtureRequest, kind: str
) -> None:
    if kind == "qdrant":
        store: dict[str, Any] = {"kind": "qdrant", "path": str(sandbox.root / "qdrant")}
        index: dict[str, Any] = {"kind": "qdrant_hnsw", "m": 16, "ef": 64}
    elif kind == "milvus":
        store = {"kind": "milvus", "uri": request.getfixturevalue("milvus_server")}
        index = {"kind": "milvus_flat"}
    else:
        store = {"kind": "pgvector", "url": postgres_database(request.getfixturevalue("postgres"))}
        index = {"kind": "pgvector_hnsw", "m": 16, "ef_construction": 64, "ef_search": 64}
    source = sandbox.version("v1", index, store=store)
    sandbox.seed(E2E, version=source)
    spec = sandbox.spec(
        source=source.model_dump(mode="json"),
        target=sandbox.version("v2", index, store=store).model_dump(mode="json"),
        cutover={"mode": "manual", "bake_seconds": 3600, "stable_name": "docs_live"},
    )
    # Applications move to the stable name before the migration: prepared over the source.
    prepared = stablename.prepare(spec)
    assert prepared.changed
    src = open_source(spec)
    physical = {"v1": str(getattr(src, "name", None) or getattr(src, "table", ""))}
    read, conn = _engine_reader(kind, store, "docs_live")
    assert read() == E2E
    try:
        # A read every few milliseconds: the worker runs in this process too (Qdrant's local
        # mode allows one), and a reader that never yields would starve it.
        with hammering(read, pause=0.002) as reader:
            async with started(client, sandbox, spec, awaiting_cutover, 180) as (mc, mid, _):
                target = open_target(spec)
                physical["v2"] = str(getattr(target, "name", None) or getattr(target, "table", ""))
                target.upsert(np.array([MARK]), clustered(1, sandbox.dim, 1, seed=5))
                assert read() == E2E  # still the source
                await mc.signal(mid, "approve_cutover", operator="dba")
                await wait_for(mc, mid, lambda s: s.phase == Phase.BAKING, 60)
                assert read() == E2E + 1  # the target, at once
                assert src.name_points_at("docs_live") == physical["v2"]
                await mc.signal(mid, "rollback", operator="oncall", reason="p99")
                final = await mc.result(mid)
                assert read() == E2E  # the source again
                assert src.name_points_at("docs_live") == physical["v1"]
            time.sleep(0.2)
    finally:
        if conn is not None:
            conn.close()
    try:
        check_the_switches(sandbox, spec, src, mid, final, reader, physical)
    finally:
        close_qdrant()
        close_milvus()
        dispose_engines()


def check_the_switches(
    sandbox: Sandbox,
    spec: Any,
    src: VectorStore,
    mid: str,
    final: Any,
    reader: Reader,
    physical: dict[str, str],
) -> None:
    assert final.phase == Phase.ROLLED_BACK, final.error
    assert final.error == ""
    print(f"migration: {len(reader.counts)} reads, {len(reader.failures)} failed")
    assert reader.failures == [], reader.failures[:5]
    assert set(reader.counts) == {E2E, E2E + 1}
    switched = [e for e in sandbox.catalog.entries(mid) if e.kind == "stable_name.switched"]
    assert [(e.actor, e.data["from"], e.data["to"]) for e in switched] == [
        ("dba", physical["v1"], physical["v2"]),
        ("oncall", physical["v2"], physical["v1"]),
    ]
    assert switched[1].data["reason"] == "rollback: p99"
    # The router's applications were switched back as well.
    routing = sandbox.catalog.get_routing("default", "docs")
    assert routing is not None
    assert routing.read_version == "v1"
    assert sandbox.catalog.verify_ledger() == []
    # The preparation is undone: the name is gone, the source as it was.
    undone = stablename.prepare(spec, undo=True)
    assert undone.changed
    assert src.name_points_at("docs_live") is None
    assert src.count() == E2E


# -- the preparation, and what plan says ------------------------------------------------------


def test_plan_shows_the_preparation_of_a_table_applications_use_and_the_cli_does_and_undoes_it(
    sandbox: Sandbox, postgres: Any, tmp_path: Path
) -> None:
    url = postgres_database(postgres)
    with psycopg.connect(_psycopg(url), autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        conn.execute(
            "CREATE TABLE documents (id bigint PRIMARY KEY, title text, embedding vector(8))"
        )
        for i in range(1, 51):
            conn.execute(
                "INSERT INTO documents VALUES (%s, %s, %s::vector)",
                (i, f"doc {i}", "[" + ",".join([str(i / 50)] * 8) + "]"),
            )
    store = {"kind": "pgvector", "url": url}
    spec = {
        "id": "docs-stable",
        "collection": "documents",
        "source": {
            "name": "v1",
            "store": {**store, "table": "documents_v1"},
            "embedding": EMB,
            "index": FLAT,
        },
        "target": {
            "name": "v2",
            "store": {**store, "table": "documents_v2"},
            "embedding": EMB,
            "index": FLAT,
        },
        "cutover": {"stable_name": "documents"},
    }
    path = tmp_path / "spec.yaml"
    path.write_text(json.dumps(spec))
    catalog = ["--catalog", sandbox.catalog.url]

    def plan() -> dict[str, Any]:
        shown = vecmigrate("plan", str(path), *catalog, "--json")
        planned: dict[str, Any] = json.loads(shown.stdout)
        return planned

    before = plan()
    steps = dict(before["steps"])
    assert "documents is a table applications use by its name" in steps["PREPARE"]
    assert "renames it to documents_v1" in steps["PREPARE"]
    assert "the view documents points at v2 in one atomic step" in steps["STABLE NAME"]
    assert "WRITES" not in steps  # PostgreSQL: no warning of engines without change capture
    checks = {c["name"]: c for c in before["checks"]}
    assert not checks["stable name"]["passed"]
    assert not before["ok"]

    done = vecmigrate("stable-name", "prepare", str(path), *catalog, "--operator", "dba")
    assert done.returncode == 0, done.stderr
    assert "view documents now points at documents_v1" in done.stdout
    with psycopg.connect(_psycopg(url), autocommit=True) as conn:
        assert _relkinds(conn) == {"documents": "v", "documents_v1": "r"}
        row = conn.execute("SELECT count(*), max(title) FROM documents").fetchone()
        assert row == (50, "doc 9")
        # Applications keep writing through the name: PostgreSQL writes through the view.
        conn.execute(
            "INSERT INTO documents (id, title, embedding) VALUES (51, 'new', %s::vector) "
            "ON CONFLICT (id) DO UPDATE SET title = EXCLUDED.title",
            ("[" + ",".join(["0.1"] * 8) + "]",),
        )
    again = vecmigrate("stable-name", "prepare", str(path), *catalog)
    assert again.returncode == 0, again.stderr
    assert "nothing to do" in again.stdout
    after = plan()
    checks = {c["name"]: c for c in after["checks"]}
    assert checks["stable name"]["passed"], checks["stable name"]
    assert "the view documents points at documents_v1" in checks["stable name"]["detail"]

    undone = vecmigrate("stable-name", "prepare", str(path), *catalog, "--undo")
    assert undone.returncode == 0, undone.stderr
    with psycopg.connect(_psycopg(url), autocommit=True) as conn:
        assert _relkinds(conn) == {"documents": "r"}
        assert conn.execute("SELECT count(*) FROM documents").fetchone() == (51,)
    prepared = [
        e for e in sandbox.catalog.entries("docs-stable") if e.kind == "stable_name.prepared"
    ]
    assert [(e.actor, e.data["undo"]) for e in prepared][:1] == [("dba", False)]
    assert [e.data["undo"] for e in prepared] == [False, True]


def test_plan_tells_qdrant_users_that_writes_must_go_through_the_router(sandbox: Sandbox) -> None:
    store = {"kind": "qdrant", "path": str(sandbox.root / "qdrant")}
    index = {"kind": "qdrant_hnsw"}
    source = sandbox.version("v1", index, store=store)
    sandbox.seed(300, version=source)
    spec = sandbox.spec(
        source=source.model_dump(mode="json"),
        target=sandbox.version("v2", index, store=store).model_dump(mode="json"),
        cutover={"stable_name": "docs_live"},
    )
    try:
        planned = plan_migration(sandbox.catalog, spec)
        steps = dict(planned.steps)
        assert planned.steps[0][0] == "PREPARE"
        assert "no alias docs_live yet" in steps["PREPARE"]
        assert "stable-name prepare" in steps["PREPARE"]
        assert "not captured" in steps["WRITES"]
        assert "through the router or the gateway" in steps["WRITES"]
        assert planned.ok, planned.problems
        # Prepared: the alias reads the source; plan says where it points.
        stablename.prepare(spec)
        steps = dict(plan_migration(sandbox.catalog, spec).steps)
        src = open_source(spec)
        assert f"the alias docs_live points at {src.name}" in steps["PREPARE"]  # type: ignore[attr-defined]
    finally:
        close_qdrant()


async def test_an_online_rollback_after_cut_over_points_the_view_back_and_a_second_cut_over_again(
    client: Client, sandbox: Sandbox, postgres: Any
) -> None:
    """Online: the rollback after the cut-over goes back to AWAITING_CUTOVER (dual-write on);
    the view follows it back to the source, and the next approved cut-over to the target, which
    it keeps once the migration completes. Searches through the router feed the shadow gate."""
    store = {"kind": "pgvector", "url": postgres_database(postgres)}
    index = {"kind": "pgvector_hnsw", "m": 16, "ef_construction": 64, "ef_search": 64}
    source = sandbox.version("v1", index, store=store)
    vectors = sandbox.seed(E2E, version=source)
    spec = sandbox.spec(
        strategy="online",
        source=source.model_dump(mode="json"),
        target=sandbox.version("v2", index, store=store).model_dump(mode="json"),
        cutover={"mode": "manual", "bake_seconds": 8, "stable_name": "docs_live"},
        online={
            "settle_seconds": 0.3,
            "shadow": shadow_all(seconds=0.5, min_samples=3),
            "ramp": {"steps": []},
        },
    )
    stablename.prepare(spec)
    read, conn = _engine_reader("pgvector", store, "docs_live")
    router = Router(sandbox.catalog, refresh_seconds=0.1)

    def search(stop: threading.Event) -> None:
        while not stop.is_set():
            router.search("default", "docs", vectors[:2], 3)
            time.sleep(0.02)

    try:
        with in_background(search, "searcher", join=10), hammering(read, pause=0.002) as reader:
            async with started(client, sandbox, spec, awaiting_cutover, 180) as (mc, mid, _):
                open_target(spec).upsert(np.array([MARK]), clustered(1, sandbox.dim, 1, seed=5))
                await mc.signal(mid, "approve_cutover", operator="dba")
                await wait_for(mc, mid, lambda s: s.phase == Phase.BAKING, 60)
                assert read() == E2E + 1
                await mc.signal(mid, "rollback", operator="oncall", reason="p99")
                await wait_for(
                    mc, mid, lambda s: s.phase == Phase.AWAITING_CUTOVER and s.cutovers == 1, 60
                )
                assert read() == E2E  # back on the source, which dual-write kept current
                await mc.signal(mid, "approve_cutover", operator="dba")
                final = await mc.result(mid)
                assert read() == E2E + 1
    finally:
        conn.close()
        dispose_engines()
    assert final.phase == Phase.COMPLETED, final.error
    assert final.cutovers == 2
    print(f"online: {len(reader.counts)} reads, {len(reader.failures)} failed")
    assert reader.failures == [], reader.failures[:5]
    assert set(reader.counts) == {E2E, E2E + 1}
    switched = [e for e in sandbox.catalog.entries(mid) if e.kind == "stable_name.switched"]
    assert [(e.actor, e.data["version"]) for e in switched] == [
        ("dba", "v2"),
        ("oncall", "v1"),
        ("dba", "v2"),
    ]
    assert switched[1].data["reason"] == "rollback after cut-over: p99"
