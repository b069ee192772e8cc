"""pgvector's native index built without blocking writes, on a real PostgreSQL.

``CREATE INDEX CONCURRENTLY`` on a connection of its own: application writes (plain SQL upserts
and deletes on their own connection) go on while it runs, where a plain ``CREATE INDEX`` in a
transaction stops them for the whole build; an invalid index left by a build that timed out or
was cancelled is dropped and built again, a valid one kept; the spec's memory and parallel
workers reach the build's connection; and the build's progress is read from
``pg_stat_progress_create_index``.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import psycopg
import pytest
from rich.console import Console
from sqlalchemy import text

from tests.conftest import postgres_database, status_in
from vecmigrate.catalog.engines import dispose_engines
from vecmigrate.control.report import status_tables
from vecmigrate.errors import VecmigrateError
from vecmigrate.model.lifecycle import Phase
from vecmigrate.model.spec import Metric, PgvectorHnsw, PgvectorIvfflat
from vecmigrate.model.status import IndexBuildProgress, MigrationStatus
from vecmigrate.stores import PgvectorStore, Scope
from vecmigrate.stores.pgvector import index_using, read_build_progress
from vecmigrate.testing.buildload import during, latency, while_building

DIM = 32


def conninfo(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def filled(url: str, rows: int) -> PgvectorStore:
    store = PgvectorStore.open(url, Scope("t", "c", "v"), DIM)
    vectors = np.random.default_rng(0).standard_normal((rows, DIM)).astype(np.float32)
    store.upsert(np.arange(rows), vectors)
    return store


def index_state(store: PgvectorStore, name: str) -> tuple[int, bool] | None:
    with store.engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT i.indexrelid::bigint, i.indisvalid FROM pg_index i "
                "JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relname = :n"
            ),
            {"n": name},
        ).first()
    return None if row is None else (int(row[0]), bool(row[1]))


@pytest.fixture
def pg_url(postgres: Any) -> Iterator[str]:
    yield postgres_database(postgres)
    dispose_engines()


def writes_during_build(url: str, store: PgvectorStore, build: Any) -> dict[str, Any]:
    """Run ``build()`` while an application thread writes to the table and a third connection
    watches ``pg_stat_progress_create_index``; what went through while the build was seen."""
    writes, watch, seconds = while_building(conninfo(url), store.table, DIM, build)
    went = during(writes, watch.window())
    return {
        "seconds": round(seconds, 2),
        "seen": len(watch.seen),
        "commands": {c for _, c, _ in watch.seen},
        "all": latency(writes),
        "during": latency(went),
        "errors": [w.error for w in writes if w.error][:3],
    }


def test_writes_flow_during_a_concurrent_build_and_stop_during_a_plain_one(pg_url: str) -> None:
    store = filled(pg_url, 12_000)
    spec = PgvectorHnsw(parallel_workers=0)  # one backend builds: a build of a few seconds
    progress: list[IndexBuildProgress] = []

    def concurrent() -> None:
        store.create_index(spec, Metric.L2, on_progress=progress.append, every=0.25)

    online = writes_during_build(pg_url, store, concurrent)
    print(f"\nCREATE INDEX CONCURRENTLY: {online}")
    assert online["seen"] > 0, online
    assert online["commands"] == {"CREATE INDEX CONCURRENTLY"}, online
    assert online["all"]["failed"] == 0, online["errors"]
    assert online["during"]["writes"] > 0, online
    assert "p99 ms" in online["during"]
    assert progress, "no progress was read during the build"
    assert progress[0].phase

    with store.engine.begin() as conn:
        conn.execute(text(f"DROP INDEX {store.index_name(spec, Metric.L2)}"))

    def plain() -> None:
        with store.engine.begin() as conn:
            conn.execute(text("SET LOCAL max_parallel_maintenance_workers = 0"))
            using = "hnsw (embedding vector_l2_ops)"
            conn.execute(text(f"CREATE INDEX plain_build ON {store.table} USING {using}"))

    blocked = writes_during_build(pg_url, store, plain)
    print(f"CREATE INDEX in a transaction: {blocked}")
    assert blocked["seen"] > 0, blocked
    assert blocked["commands"] == {"CREATE INDEX"}, blocked
    assert blocked["during"]["writes"] == 0, blocked
    # The writer waited out the build: one write took about as long as the build.
    assert blocked["all"]["max ms"] > 500 * min(online["seconds"], blocked["seconds"]), blocked


def test_an_invalid_index_left_by_a_timed_out_build_is_dropped_and_built_again(
    pg_url: str,
) -> None:
    store = filled(pg_url, 2000)
    spec = PgvectorHnsw(lock_timeout_seconds=1)
    name = store.index_name(spec, Metric.L2)
    # An application transaction that wrote to the table and stays open: the concurrent build
    # waits for it after registering the index, and gives up after its lock timeout.
    with psycopg.connect(conninfo(pg_url)) as app:
        app.execute(f"UPDATE {store.table} SET h = h WHERE id = 1")
        began = time.monotonic()
        with pytest.raises(VecmigrateError, match="lock_timeout_seconds"):
            store.create_index(spec, Metric.L2)
        assert time.monotonic() - began < 30
        app.rollback()
    left = index_state(store, name)
    assert left is not None
    assert left[1] is False  # the timed-out build's leftover

    assert store.create_index(spec, Metric.L2) == name
    rebuilt = index_state(store, name)
    assert rebuilt is not None
    assert rebuilt[1] is True
    assert rebuilt[0] != left[0]  # dropped and built again
    # A valid index is kept as it is, whatever settings the build would use.
    again = PgvectorHnsw(lock_timeout_seconds=1, maintenance_work_mem="64MB", parallel_workers=1)
    assert store.index_name(again, Metric.L2) == name
    assert store.create_index(again, Metric.L2) == name
    assert index_state(store, name) == rebuilt
    _, found = store.search_native(np.zeros((1, DIM), np.float32), 5, spec, Metric.L2)
    assert (found[0] >= 0).all()


def test_a_cancelled_build_leaves_an_invalid_index_the_next_build_replaces(pg_url: str) -> None:
    # Enough rows and lists that the build stays in "building index" for many progress reads
    # (about 1.5 s): with 8,000 rows and 20 lists it lasted some 50 ms, and under the whole
    # suite's load the reads every 50 ms could miss it, the build ending uncancelled.
    store = filled(pg_url, 50_000)
    spec = PgvectorIvfflat(lists=500, parallel_workers=0)
    name = store.index_name(spec, Metric.L2)

    class StopError(Exception):
        pass

    def give_up(progress: IndexBuildProgress) -> None:
        if progress.phase.startswith("building index"):
            raise StopError(progress.phase)  # as a cancelled activity's heartbeat does

    with pytest.raises(StopError):
        store.create_index(spec, Metric.L2, on_progress=give_up, every=0.05)
    left = index_state(store, name)
    assert left is not None
    assert left[1] is False
    with store.engine.connect() as conn:  # the build's backend was cancelled, not left running
        running = conn.execute(text("SELECT count(*) FROM pg_stat_progress_create_index"))
        assert running.scalar_one() == 0

    store.create_index(spec, Metric.L2)
    rebuilt = index_state(store, name)
    assert rebuilt is not None
    assert rebuilt[1] is True
    assert rebuilt[0] != left[0]


def test_the_specs_memory_and_workers_reach_the_build(
    postgres: Any, caplog: pytest.LogCaptureFixture
) -> None:
    db = f"t_{uuid.uuid4().hex[:12]}"
    # Tables this small get parallel workers only below the server's default scan size.
    postgres.psql(f"CREATE DATABASE {db};")
    postgres.psql(f"ALTER DATABASE {db} SET min_parallel_table_scan_size = 0;")
    url = str(postgres.get_uri(db))
    store = filled(url, 10_000)
    workers: list[int] = []

    def count_workers(progress: IndexBuildProgress) -> None:
        with psycopg.connect(conninfo(url), autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_progress_create_index p "
                "ON a.leader_pid = p.pid WHERE a.pid <> p.pid"
            ).fetchone()
        assert row is not None
        workers.append(int(row[0]))

    caplog.set_level(logging.WARNING, "vecmigrate.stores.pgvector")
    parallel = PgvectorHnsw(
        m=8, ef_construction=32, parallel_workers=2, maintenance_work_mem="128MB"
    )
    name = store.create_index(parallel, Metric.L2, on_progress=count_workers, every=0.1)
    assert max(workers, default=0) == 2, workers
    assert "maintenance_work_mem" not in caplog.text

    with store.engine.begin() as conn:
        conn.execute(text(f"DROP INDEX {name}"))
    workers.clear()
    small = PgvectorHnsw(m=8, ef_construction=32, parallel_workers=0, maintenance_work_mem="1MB")
    store.create_index(small, Metric.L2, on_progress=count_workers, every=0.1)
    assert max(workers, default=0) == 0, workers
    # pgvector says so when the graph outgrows the build's memory: 1MB reached the build.
    assert "no longer fits into maintenance_work_mem" in caplog.text
    # None of it stayed on a connection of the pool.
    with store.engine.connect() as conn:
        assert conn.execute(text("SHOW maintenance_work_mem")).scalar_one() != "1MB"
        assert conn.execute(text("SHOW lock_timeout")).scalar_one() == "0"
    dispose_engines()


def test_build_progress_reads_phase_and_fractions_of_a_running_build(pg_url: str) -> None:
    store = filled(pg_url, 12_000)
    seen: list[IndexBuildProgress] = []
    store.create_index(
        PgvectorHnsw(parallel_workers=0), Metric.L2, on_progress=seen.append, every=0.2
    )
    assert seen, "the build ended before its progress was read"
    loading = [p for p in seen if p.phase == "building index: loading tuples"]
    assert loading, [p.phase for p in seen]
    for p in seen:
        # Before PostgreSQL reports the build, the adapter says what it waits for.
        assert p.command == "CREATE INDEX CONCURRENTLY" or p.phase.startswith("waiting for"), p
        assert p.index == store.index_name(PgvectorHnsw(), Metric.L2)
        if p.blocks_total:
            assert p.fraction == pytest.approx(p.blocks_done / p.blocks_total, abs=1e-4)
    fractions = [p.fraction for p in loading if p.fraction is not None]
    assert fractions
    assert fractions == sorted(fractions)
    assert 0 <= fractions[0] < 1
    assert [p.seconds for p in seen] == sorted(p.seconds for p in seen)
    line = loading[-1].line()
    assert "loading tuples" in line, line
    assert re.search(r", \d+% \([\d,]+ of [\d,]+ blocks\)", line), line


def test_read_build_progress_is_none_for_a_backend_building_nothing(pg_url: str) -> None:
    filled(pg_url, 10)
    with psycopg.connect(conninfo(pg_url)) as conn:
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert pid is not None
        assert read_build_progress(conn, int(pid[0]), "x") is None


def test_a_build_of_another_session_is_followed_not_dropped(pg_url: str) -> None:
    store = filled(pg_url, 12_000)
    spec = PgvectorHnsw(parallel_workers=0)
    name = store.index_name(spec, Metric.L2)
    using = index_using(spec, Metric.L2, DIM)

    def build_elsewhere() -> None:
        with psycopg.connect(conninfo(pg_url), autocommit=True) as conn:
            conn.execute("SET max_parallel_maintenance_workers = 0")
            conn.execute(f"CREATE INDEX CONCURRENTLY {name} ON {store.table} USING {using}")

    other = threading.Thread(target=build_elsewhere)
    other.start()
    deadline = time.monotonic() + 10
    while index_state(store, name) is None and time.monotonic() < deadline:
        time.sleep(0.02)
    started = index_state(store, name)
    assert started is not None
    assert started[1] is False
    seen: list[IndexBuildProgress] = []
    assert store.create_index(spec, Metric.L2, on_progress=seen.append, every=0.2) == name
    other.join()
    assert index_state(store, name) == (started[0], True)  # the other session's index, kept
    assert seen
    assert all(p.index == name for p in seen)


def test_status_shows_the_builds_phase_and_percentage() -> None:
    st = status_in(
        Phase.BUILDING_INDEX,
        index_build=IndexBuildProgress(
            index="docs_v2_pgvector_hnsw_1a2b3c4d5e",
            command="CREATE INDEX CONCURRENTLY",
            phase="building index: loading tuples",
            blocks_done=3_101,
            blocks_total=12_404,
            fraction=0.25,
            seconds=42.4,
        ),
    )
    again = MigrationStatus.model_validate_json(st.model_dump_json())  # as a query returns it
    console = Console(record=True, width=200)
    console.print(status_tables(again))
    shown = console.export_text()
    assert (
        "index build  docs_v2_pgvector_hnsw_1a2b3c4d5e: building index: loading tuples, 25% "
        "(3,101 of 12,404 blocks), 42 s"
    ) in shown, shown
    waiting = IndexBuildProgress(
        index="i",
        phase="waiting for old snapshots",
        lockers_done=1,
        lockers_total=3,
        fraction=1 / 3,
    )
    assert waiting.line() == "i: waiting for old snapshots, 33% (waiting for 2 transactions), 0 s"
