"""Writes an application makes with plain SQL to its adopted PostgreSQL table during an online
migration, captured by a trigger and replayed onto the target, on a real PostgreSQL server and
through real Temporal workflows. Results are compared in PostgreSQL itself, not through
vecmigrate.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections import Counter
from typing import Any

import numpy as np
import psycopg
import pytest
from rich.console import Console
from temporalio.client import Client

from tests.conftest import Sandbox, postgres_database, running_worker, shadow_all, status_in
from vecmigrate.catalog.latency import Latencies, LatencyReading
from vecmigrate.control.client import MigrationClient
from vecmigrate.control.doctor import Finding
from vecmigrate.control.doctor import _catalog as doctor_catalog
from vecmigrate.control.plan import plan_migration
from vecmigrate.control.report import status_tables
from vecmigrate.data import capture
from vecmigrate.data.backfill import run_checks
from vecmigrate.data.datasets import clustered
from vecmigrate.errors import SpecError
from vecmigrate.indexes.build import register_version
from vecmigrate.model.lifecycle import TERMINAL, Phase
from vecmigrate.model.spec import MigrationSpec, canonical, parse_spec
from vecmigrate.model.status import CaptureStatus
from vecmigrate.serving.router import Router
from vecmigrate.stores import pgcapture
from vecmigrate.testing.drill import until_phase

DIM = 16
ROWS = 3_000
EARLY = {Phase.PLANNED, Phase.PREPARING, Phase.BACKFILLING, Phase.CATCHING_UP}


def _pg(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def _vec(v: np.ndarray) -> str:
    return "[" + ",".join(repr(float(x)) for x in v) + "]"


def items_table(url: str, rows: int = ROWS) -> None:
    """The application's table, made by plain SQL: integer ids, two payload columns, a vector
    and its HNSW index."""
    vectors = clustered(rows, DIM, clusters=8, seed=5)
    with psycopg.connect(_pg(url)) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        conn.execute(
            f"CREATE TABLE items (id bigint PRIMARY KEY, title text, score integer, "
            f"embedding vector({DIM}))"
        )
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO items VALUES (%s, %s, %s, %s::vector)",
                [(i, f"item {i}", i % 97, _vec(vectors[i])) for i in range(rows)],
            )
        conn.execute(
            "CREATE INDEX items_embedding ON items USING hnsw (embedding vector_cosine_ops) "
            "WITH (m = 16, ef_construction = 64)"
        )


def items_spec(url: str, source_store: dict[str, Any] | None = None, **more: Any) -> MigrationSpec:
    """An online migration of the table ``items`` to ``items_v2`` (``source_store`` adds to or
    replaces the source's store fields; ``more`` the spec's top-level fields)."""
    version = {
        "embedding": {"model_id": "m", "dimension": DIM, "metric": "cosine"},
        "index": {"kind": "pgvector_hnsw", "m": 16, "ef_construction": 64},
    }
    data: dict[str, Any] = {
        "id": f"cap-{uuid.uuid4().hex[:8]}",
        "collection": "items",
        "strategy": "online",
        "source": {
            "name": "v1",
            "store": {"kind": "pgvector", "url": url, "table": "items"} | (source_store or {}),
        }
        | version,
        "target": {"name": "v2", "store": {"kind": "pgvector", "url": url, "table": "items_v2"}}
        | version,
        "shards": {"by": "hash", "count": 2},
        "batch_size": 200,
        "max_vectors_per_second": 1_000.0,
        # 20 queries cannot decide a 0.02 drop in recall against the old index (the gate then
        # pauses, "the sample cannot tell"), and 5 queries timed on a loaded machine should not
        # pause them on a p99 ratio: these tests are about the capture, not those gates.
        "gates": {
            "min_recall": 0.5,
            "sample_queries": 20,
            "latency_queries": 5,
            "max_recall_drop": None,
            "max_p99_ratio": None,
        },
        "online": {
            "settle_seconds": 0.5,
            "shadow": shadow_all(seconds=1, min_samples=5),
            "ramp": {"steps": [50], "step_seconds": 0.5},
        },
        "cutover": {"mode": "automatic", "bake_seconds": 1},
    }
    data.update(more)
    return parse_spec(data)


def leftovers(url: str) -> dict[str, list[str]]:
    """Whatever change capture could leave in the database: tables, functions, triggers."""
    with psycopg.connect(_pg(url)) as conn:
        tables = conn.execute(
            "SELECT relname FROM pg_class WHERE relname LIKE 'vm_capture_%'"
        ).fetchall()
        functions = conn.execute(
            "SELECT proname FROM pg_proc WHERE proname LIKE 'vm_capture_%'"
        ).fetchall()
        triggers = conn.execute(
            "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal AND tgname LIKE 'vm_capture_%'"
        ).fetchall()
    return {
        "tables": [r[0] for r in tables],
        "functions": [r[0] for r in functions],
        "triggers": [r[0] for r in triggers],
    }


NOTHING: dict[str, list[str]] = {"tables": [], "functions": [], "triggers": []}


def differences(url: str) -> dict[str, int]:
    """Rows the target lacks or holds stale, and rows it holds that the source does not."""
    with psycopg.connect(_pg(url)) as conn:
        missing_or_stale = conn.execute(
            "SELECT count(*) FROM items s LEFT JOIN items_v2 t USING (id) WHERE t.id IS NULL "
            "OR s.embedding::text <> t.embedding::text OR s.title IS DISTINCT FROM t.title "
            "OR s.score IS DISTINCT FROM t.score"
        ).fetchone()
        extra = conn.execute(
            "SELECT count(*) FROM items_v2 t WHERE NOT EXISTS "
            "(SELECT 1 FROM items s WHERE s.id = t.id)"
        ).fetchone()
    assert missing_or_stale is not None
    assert extra is not None
    return {"missing_or_stale": int(missing_or_stale[0]), "resurrected": int(extra[0])}


class Application(threading.Thread):
    """An application writing to its table with plain SQL, about ``rate`` writes a second:
    inserts, updates of the vector and payload, updates of the payload alone, deletes. Each
    write is acknowledged (committed) before the next; the ids of each kind are kept."""

    def __init__(self, url: str, phase: dict[str, str], rate: float = 200.0) -> None:
        super().__init__(daemon=True)
        self.url, self.phase, self.rate = _pg(url), phase, rate
        self.stopping = threading.Event()
        self.ops: Counter[str] = Counter()
        self.by_phase: Counter[str] = Counter()
        self.deleted: set[int] = set()
        self.payload_only: set[int] = set()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:
            self.error = exc

    def _run(self) -> None:
        rng = np.random.default_rng(11)
        alive = set(range(ROWS))
        next_id = ROWS
        with psycopg.connect(self.url, autocommit=True) as conn:
            began, n = time.monotonic(), 0
            while not self.stopping.is_set():
                kind = rng.choice(["insert", "update", "payload", "delete"], p=[0.3, 0.2, 0.3, 0.2])
                vector = _vec(rng.standard_normal(DIM).astype(np.float32))
                if kind == "insert":
                    conn.execute(
                        "INSERT INTO items VALUES (%s, %s, %s, %s::vector)",
                        (next_id, f"new {next_id}", 1, vector),
                    )
                    alive.add(next_id)
                    next_id += 1
                else:
                    victim = int(rng.choice(sorted(alive)[:: max(1, len(alive) // 500)]))
                    if kind == "update":
                        conn.execute(
                            "UPDATE items SET embedding = %s::vector, score = score + 1 "
                            "WHERE id = %s",
                            (vector, victim),
                        )
                    elif kind == "payload":
                        conn.execute(
                            "UPDATE items SET title = %s, score = %s WHERE id = %s",
                            (f"retitled {n}", n, victim),
                        )
                        self.payload_only.add(victim)
                    else:
                        conn.execute("DELETE FROM items WHERE id = %s", (victim,))
                        alive.discard(victim)
                        self.deleted.add(victim)
                        self.payload_only.discard(victim)
                self.ops[str(kind)] += 1
                self.by_phase[self.phase["now"]] += 1
                n += 1
                wait = began + n / self.rate - time.monotonic()
                if wait > 0:
                    time.sleep(wait)


class Reader(threading.Thread):
    """Searches through the router, so the shadow and ramp gates have pairs to judge."""

    def __init__(self, sandbox: Sandbox, spec: MigrationSpec) -> None:
        super().__init__(daemon=True)
        self.router = Router(sandbox.catalog, refresh_seconds=0.2)
        self.spec = spec
        self.stopping = threading.Event()

    def run(self) -> None:
        rng = np.random.default_rng(3)
        n = 0
        while not self.stopping.is_set():
            try:
                query = rng.standard_normal((1, DIM)).astype(np.float32)
                self.router.search(self.spec.tenant, "items", query, 5, key=f"user-{n}")
            except Exception:
                pass
            n += 1
            time.sleep(0.02)

    def close(self) -> None:
        self.stopping.set()
        self.join(10)
        self.router.close()


def test_capture_applies_only_to_online_migrations_of_an_adopted_table() -> None:
    url = "postgresql://app@localhost/db"
    assert items_spec(url).captures_writes
    assert not items_spec(url, online={"capture": "off"}).captures_writes
    assert not items_spec(url, strategy="blue_green").captures_writes
    with pytest.raises(SpecError, match=r"online\.capture is on, but strategy blue_green"):
        items_spec(url, strategy="blue_green", online={"capture": "on"})
    # A spec that leaves it at its default hashes as it did before the field existed.
    assert '"capture"' not in canonical(items_spec(url))
    assert '"capture":"off"' in canonical(items_spec(url, online={"capture": "off"}))


def test_the_trigger_captures_every_kind_of_write_and_replay_converges(
    postgres: Any,
) -> None:
    url = postgres_database(postgres)
    items_table(url, rows=300)
    spec = items_spec(url)
    installed = capture.install(spec)
    assert installed.table.endswith(pgcapture.change_table(spec.migration_id))
    assert capture.install(spec).table == installed.table  # idempotent
    with psycopg.connect(_pg(url), autocommit=True) as conn:
        conn.execute("UPDATE items SET title = 'payload only' WHERE id = 1")
        conn.execute("DELETE FROM items WHERE id = 2")
        conn.execute(f"INSERT INTO items VALUES (5000, 'new', 1, '{_vec(np.ones(DIM))}')")
        conn.execute("UPDATE items SET id = 5001 WHERE id = 3")  # an id that changes
        with conn.transaction():  # vecmigrate's own replay is not captured
            conn.execute("SET LOCAL vecmigrate.replaying = 'on'")
            conn.execute("UPDATE items SET score = -1 WHERE id = 4")
        rows = conn.execute(f"SELECT op, id FROM {installed.table} ORDER BY seq").fetchall()
    assert rows == [("U", "1"), ("D", "2"), ("I", "5000"), ("D", "3"), ("U", "5001")]
    first = capture.replay(spec, seconds=10)
    assert (first.applied, first.lag, first.drained) == (5, 0, True)
    assert (first.upserted, first.deleted) == (3, 2)
    assert capture.replay(spec, seconds=10).applied == 0  # nothing left: harmless
    with psycopg.connect(_pg(url)) as conn:
        target = dict(conn.execute("SELECT id, title FROM items_v2").fetchall())
    assert target == {1: "payload only", 5000: "new", 5001: "item 3"}
    (found,) = pgcapture.captures(pgvector_engine(spec))
    assert (found.migration_id, found.source, found.pending) == (spec.migration_id, "items", 0)
    assert found.captured == 5
    removed = capture.remove(spec, replay_first=True)
    assert removed.removed
    assert leftovers(url) == NOTHING
    capture.remove(spec, replay_first=False)  # idempotent
    with psycopg.connect(_pg(url), autocommit=True) as conn:
        conn.execute("UPDATE items SET title = 'after' WHERE id = 1")  # the application goes on


def test_a_replay_under_a_latency_budget_pauses_between_batches(
    postgres: Any, sandbox: Sandbox
) -> None:
    """The routers' p99 is over the spec's budget: the replay waits after each batch it has
    committed (the copy's duty cycle), and still replays every change."""
    url = postgres_database(postgres)
    items_table(url, rows=300)
    spec = items_spec(url, budget={"max_search_p99_ms": 1e-6})
    reading = LatencyReading(p50_ms=1.0, p99_ms=3.0, count=100, at=time.time())
    Latencies(sandbox.catalog).publish("a-router", spec.tenant, spec.collection, reading)
    capture.install(spec)
    with psycopg.connect(_pg(url), autocommit=True) as conn:
        conn.execute("UPDATE items SET title = 'again' WHERE id < 250")
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        time.sleep(seconds)

    done = capture.replay(spec, seconds=60, batch=50, catalog=sandbox.catalog, sleep=sleep)
    assert (done.applied, done.lag, done.drained) == (250, 0, True)
    assert len(sleeps) == 5  # after each batch of 50
    assert all(s > 0 for s in sleeps)
    state = Latencies(sandbox.catalog).budget(spec.migration_id)
    assert state is not None
    assert state.throttled
    with psycopg.connect(_pg(url)) as conn:
        again = conn.execute("SELECT count(*) FROM items_v2 WHERE title = 'again'").fetchone()
    assert again == (250,)
    capture.remove(spec, replay_first=False)
    assert leftovers(url) == NOTHING


def pgvector_engine(spec: MigrationSpec) -> Any:
    return capture.captured_source(spec).engine


async def test_plain_sql_writes_during_an_online_migration_reach_the_target(
    client: Client, sandbox: Sandbox, postgres: Any
) -> None:
    url = postgres_database(postgres)
    items_table(url)
    spec = items_spec(url)
    phase = {"now": "PLANNED"}
    app = Application(url, phase)
    reader = Reader(sandbox, spec)
    captured_during: dict[str, int] = {}
    async with running_worker(client, sandbox) as queue:
        mc = MigrationClient(client, queue)
        await mc.start(spec)
        app.start()
        reader.start()
        try:
            while True:
                st = await mc.status_if_started(spec.migration_id)
                if st is not None:
                    phase["now"] = str(st.phase)
                    if st.capture is not None:
                        captured_during[str(st.phase)] = st.capture.captured
                    if st.phase not in EARLY:
                        break
                await asyncio.sleep(0.1)
            app.stopping.set()
            app.join(10)
            final = await mc.result(spec.migration_id, timeout=600)
        finally:
            app.stopping.set()
            reader.close()
    assert app.error is None, app.error
    assert final.phase == Phase.COMPLETED, final.error
    assert app.by_phase["BACKFILLING"] > 100, app.by_phase
    assert app.ops["payload"] > 50, app.ops
    assert app.ops["delete"] > 30, app.ops
    # Checked in PostgreSQL: every acknowledged write is on the target, no delete came back.
    assert differences(url) == {"missing_or_stale": 0, "resurrected": 0}
    with psycopg.connect(_pg(url)) as conn:
        held = {r[0] for r in conn.execute("SELECT id FROM items_v2").fetchall()}
        titles = dict(conn.execute("SELECT id, title FROM items_v2").fetchall())
        source_titles = dict(conn.execute("SELECT id, title FROM items").fetchall())
    assert not (app.deleted & held)
    assert app.payload_only
    assert all(titles[i] == source_titles[i] for i in app.payload_only)
    assert leftovers(url) == NOTHING
    assert final.capture is not None
    assert final.capture.removed
    assert final.capture.alert(final.phase) == ""
    # Every write from the snapshot on was captured (earlier ones were copied).
    after_install = sum(n for p, n in app.by_phase.items() if p not in ("PLANNED", "PREPARING"))
    assert final.capture.captured >= after_install
    kinds = [e.kind for e in sandbox.catalog.entries(spec.migration_id)]
    assert "capture.installed" in kinds
    assert "capture.removed" in kinds
    assert kinds.index("capture.installed") < kinds.index("capture.removed")


@pytest.mark.parametrize("stop", ["rollback", "abort"])
async def test_a_rollback_or_an_abort_removes_the_capture(
    client: Client, sandbox: Sandbox, postgres: Any, stop: str
) -> None:
    url = postgres_database(postgres)
    items_table(url)
    spec = items_spec(url, max_vectors_per_second=300.0)
    async with running_worker(client, sandbox) as queue:
        mc = MigrationClient(client, queue)
        await mc.start(spec)
        st = await until_phase(mc, spec.migration_id, Phase.BACKFILLING, 120)
        assert st.capture is not None
        assert st.capture.installed
        assert leftovers(url)["triggers"] != []
        with psycopg.connect(_pg(url), autocommit=True) as conn:
            conn.execute("DELETE FROM items WHERE id < 10")
        await mc.signal(spec.migration_id, stop, operator="ops", reason="test")
        final = await mc.result(spec.migration_id, timeout=120)
    assert final.phase in TERMINAL
    assert final.phase == (Phase.ROLLED_BACK if stop == "rollback" else Phase.ABORTED)
    assert leftovers(url) == NOTHING
    assert final.capture is not None
    assert final.capture.removed
    with psycopg.connect(_pg(url), autocommit=True) as conn:  # the application goes on
        conn.execute("DELETE FROM items WHERE id = 10")


def test_doctor_flags_a_capture_whose_migration_ended_or_is_unknown(
    sandbox: Sandbox, postgres: Any
) -> None:
    url = postgres_database(postgres)
    items_table(url, rows=50)
    spec = items_spec(url)
    table = capture.install(spec).table
    catalog = sandbox.catalog
    register_version(catalog, spec.tenant, spec.collection, spec.source, "serving")

    def finding() -> Finding:
        _, found = doctor_catalog(catalog.url)
        (cap,) = [f for f in found if f.check == f"change capture {table}"]
        return cap

    unknown = finding()
    assert not unknown.ok
    assert "unknown to this catalog" in unknown.detail
    assert f"DROP TABLE {table}" in unknown.fix
    catalog.record_migration(spec, "BACKFILLING", "ops")
    assert finding().ok
    catalog.set_migration_phase(spec.migration_id, "ABORTED")
    ended = finding()
    assert not ended.ok
    assert "(ABORTED)" in ended.detail
    capture.remove(spec, replay_first=False)
    _, found = doctor_catalog(catalog.url)
    assert not [f for f in found if f.check.startswith("change capture")]


def test_status_alerts_on_a_change_table_that_outlived_its_migration() -> None:
    cap = CaptureStatus(table="public.vm_capture_m_1234abcd", installed=True, captured=40, lag=3)
    assert cap.alert(Phase.BACKFILLING) == ""
    alert = cap.alert(Phase.ABORTED)
    assert "outlived the migration" in alert
    assert "DROP FUNCTION public.vm_capture_m_1234abcd_fn() CASCADE" in alert
    assert CaptureStatus(table=cap.table, installed=True, removed=True).alert(Phase.ABORTED) == ""
    status = status_in(
        Phase.ABORTED, tenant="default", collection="items", strategy="online", capture=cap
    )
    console = Console(width=200, record=True)
    console.print(status_tables(status))
    shown = console.export_text()
    assert "capturing: public.vm_capture_m_1234abcd, 40 writes captured, 3 not replayed" in shown
    assert "outlived the migration" in shown


def test_plan_names_the_grants_a_capture_needs_before_anything_is_written(
    sandbox: Sandbox, postgres: Any
) -> None:
    url = postgres_database(postgres)
    items_table(url, rows=50)
    role = f"app_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(_pg(url), autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN")
        conn.execute(f"GRANT SELECT ON items TO {role}")
    user = url.split("://", 1)[1].split("@", 1)[0]
    spec = items_spec(url.replace(f"://{user}@", f"://{role}@", 1))

    def capture_check() -> str | None:
        found = [c for c in run_checks(sandbox.catalog, spec) if c.name == "change capture"]
        assert len(found) == 1
        return None if found[0].passed else found[0].detail

    assert f"GRANT TRIGGER ON items TO {role}" in (capture_check() or "")
    assert "online.capture: off" in (capture_check() or "")
    with psycopg.connect(_pg(url), autocommit=True) as conn:
        conn.execute(f"GRANT TRIGGER ON items TO {role}")
        public_create = conn.execute(
            f"SELECT has_schema_privilege('{role}', 'public', 'CREATE')"
        ).fetchone()
    assert public_create is not None
    if not public_create[0]:  # PostgreSQL 15 on: the public schema is the owner's
        assert f"GRANT CREATE ON SCHEMA public TO {role}" in (capture_check() or "")
        with psycopg.connect(_pg(url), autocommit=True) as conn:
            conn.execute(f"GRANT CREATE ON SCHEMA public TO {role}")
    assert capture_check() is None
    steps = dict(plan_migration(sandbox.catalog, spec).steps)
    assert steps["CAPTURE"].startswith("a trigger on items records every write made with plain")
    assert "replayed onto the source" not in steps["CAPTURE"]  # no stable name: one way
    assert leftovers(url) == NOTHING  # planning wrote nothing
